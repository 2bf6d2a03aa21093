"""The encoder's hyper-parameters (:class:`HubertConfig`) and HuBERT-base's values."""

from __future__ import annotations

import dataclasses
import math

from ...constants import SR_16K

__all__ = ["SAMPLE_RATE", "HUBERT_BASE_CONV_LAYERS", "GELU_APPROXIMATE", "HubertConfig"]

#: Input sample rate of the content encoder.
SAMPLE_RATE = SR_16K

#: The conv feature extractor of HuBERT-base / ContentVec: (channels, kernel, stride) per layer.
HUBERT_BASE_CONV_LAYERS: tuple[tuple[int, int, int], ...] = (
    ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
)

#: Activation names (fairseq / transformers) -> the ``approximate`` argument of ``F.gelu``.
GELU_APPROXIMATE = {
    "gelu": "none",
    "gelu_accurate": "tanh",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
}


@dataclasses.dataclass(frozen=True)
class HubertConfig:
    """Hyper-parameters of a HuBERT-style encoder. The defaults are HuBERT-base / ContentVec.

    ``extractor_mode`` is ``"default"`` (GroupNorm after the first conv only) or
    ``"layer_norm"`` (LayerNorm over channels after every conv). ``layer_norm_first``
    selects pre-LN layers with a final LayerNorm (HuBERT-large style) instead of the
    post-LN layers with a LayerNorm before the first layer. ``activation`` is the
    transformer FFN activation, ``feat_activation`` the one of the conv stack and the
    positional conv (``"gelu"`` = exact erf form; tanh variants are accepted).
    ``final_proj_dim`` is ``None`` when the weights have no ``final_proj``.
    """

    conv_layers: tuple[tuple[int, int, int], ...] = HUBERT_BASE_CONV_LAYERS
    conv_bias: bool = False
    extractor_mode: str = "default"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    conv_pos: int = 128
    conv_pos_groups: int = 16
    layer_norm_first: bool = False
    layer_norm_eps: float = 1e-5
    feature_layer_norm: bool = True
    has_projection: bool = True
    final_proj_dim: int | None = 256
    activation: str = "gelu"
    feat_activation: str = "gelu"

    def validate(self) -> None:
        """Raise :class:`ValueError` when the values cannot describe a network."""
        if not self.conv_layers:
            raise ValueError("conv_layers is empty")
        for layer in self.conv_layers:
            if len(layer) != 3 or any(not isinstance(v, int) or v <= 0 for v in layer):
                raise ValueError(f"conv layer {layer!r} is not three positive ints (dim, kernel, stride)")
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode {self.extractor_mode!r} is not 'default' or 'layer_norm'")
        for name in ("hidden_size", "num_layers", "num_heads", "ffn_dim", "conv_pos", "conv_pos_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % self.conv_pos_groups:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by conv_pos_groups {self.conv_pos_groups}"
            )
        if not self.has_projection and self.conv_dim != self.hidden_size:
            raise ValueError("a model without projection needs conv_dim == hidden_size")
        if self.final_proj_dim is not None and self.final_proj_dim <= 0:
            raise ValueError(f"final_proj_dim must be positive, got {self.final_proj_dim}")
        for name in ("activation", "feat_activation"):
            if getattr(self, name) not in GELU_APPROXIMATE:
                raise ValueError(f"{name} {getattr(self, name)!r} is not supported (only GELU variants)")
        if not (self.layer_norm_eps > 0):
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")

    @property
    def conv_dim(self) -> int:
        """Channels of the last conv layer."""
        return self.conv_layers[-1][0]

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for HuBERT-base)."""
        field = 1
        for _, kernel, stride in reversed(self.conv_layers):
            field = (field - 1) * stride + kernel
        return field

    @property
    def hop(self) -> int:
        """Samples between output frames (320 for HuBERT-base)."""
        return math.prod(stride for _, _, stride in self.conv_layers)

    def num_frames(self, n_samples: int) -> int:
        """Output frames for ``n_samples`` input samples (``(N - 400) // 320 + 1`` for HuBERT-base)."""
        n = int(n_samples)
        for _, kernel, stride in self.conv_layers:
            n = (n - kernel) // stride + 1
            if n <= 0:
                return 0
        return n


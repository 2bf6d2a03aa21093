"""HuBERT / ContentVec content encoder ("FeatureEncoder") in plain PyTorch.

The network is built from a :class:`HubertConfig` and runs without fairseq or
transformers. Two file layouts of the same weights load through
:func:`load_encoder`:

* fairseq (``hubert_base.pt``): ``{'model': state_dict, 'cfg': {'model': ..., 'task': ...}}``
  (or the legacy ``args``), read with :func:`rvcfast.safe_load.load_torch_file`;
* a Hugging Face ``HubertModel`` folder (Applio's embedder layout): ``config.json``
  plus ``model.safetensors`` (preferred) or ``pytorch_model.bin``, optionally with
  Applio's ``final_proj`` (768 -> 256).

Forward pass (fairseq ``HubertModel.extract_features``): a stack of strided
convolutions without padding (GroupNorm on the first layer in ``"default"`` mode,
LayerNorm on every layer in ``"layer_norm"`` mode, exact GELU), LayerNorm over the
conv channels, a linear projection, a grouped positional convolution (+ GELU) added
to its input, then post-LN (``layer_norm_first=False``, LayerNorm before the
layers) or pre-LN transformer layers.

Batches of zero-padded audio with per-item ``lengths`` give, for every item, the
result of encoding that item alone: the first-layer GroupNorm statistics are taken
over each item's valid frames, padded frames are zeroed before the positional
convolution and padded keys are masked in attention. Unpadded convolutions only
let padded samples reach output frames past an item's own frame count, so the
rest of the conv stack needs no masking.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import types
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AudioError, ModelLoadError, ParameterError
from ..safe_load import InertObject, check_file, load_json, load_safetensors, load_torch_file
from .weightnorm import fold_weight_norm

__all__ = [
    "HUBERT_BASE_CONV_LAYERS",
    "HubertConfig",
    "HubertEncoder",
    "load_encoder",
    "parse_conv_layers",
    "random_hubert_state_dict",
    "save_random_hubert",
]

SAMPLE_RATE = 16000

#: The conv feature extractor of HuBERT-base / ContentVec: (channels, kernel, stride) per layer.
HUBERT_BASE_CONV_LAYERS: tuple[tuple[int, int, int], ...] = (
    ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
)

_GELU_APPROX = {
    "gelu": "none",
    "gelu_accurate": "tanh",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
}

# Tensors in the files that inference never reads.
_IGNORED_FAIRSEQ = frozenset({"mask_emb", "label_embs_concat"})
_IGNORED_HF = frozenset({"masked_spec_embed"})


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


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
            if getattr(self, name) not in _GELU_APPROX:
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


# --------------------------------------------------------------------------------------
# conv_feature_layers: a tiny parser for "[(512,10,5)] + [(512,3,2)] * 4" (no eval)
# --------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([\[\]\(\),+*]))")
_MAX_ITEMS = 10_000
_MAX_INT = 1_000_000_000


class _ConvSpecParser:
    """Recursive-descent evaluator for int literals, lists, tuples, ``+`` and ``*``."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN_RE.match(stripped, pos)
            if m is None:
                raise ValueError(f"unexpected character {stripped[pos:].lstrip()[:1]!r} at offset {pos}")
            if m.group(1) is not None:
                value = int(m.group(1))
                if value > _MAX_INT:
                    raise ValueError(f"number {value} is too large")
                self.tokens.append(("int", value))
            else:
                self.tokens.append(("op", m.group(2)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, op: str | None = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end of expression")
        if op is not None and tok != ("op", op):
            raise ValueError(f"expected {op!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.expr()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()[1]!r} after the expression")  # type: ignore[index]
        return value

    def expr(self) -> Any:
        value = self.term()
        while self.peek() == ("op", "+"):
            self.take("+")
            value = self._add(value, self.term())
        return value

    def term(self) -> Any:
        value = self.atom()
        while self.peek() == ("op", "*"):
            self.take("*")
            value = self._mul(value, self.atom())
        return value

    def atom(self) -> Any:
        kind, value = self.take()
        if kind == "int":
            return value
        if value == "[":
            items, _ = self._items("]")
            return items
        if value == "(":
            items, had_comma = self._items(")")
            if len(items) == 1 and not had_comma:
                return items[0]
            return tuple(items)
        raise ValueError(f"unexpected {value!r}")

    def _items(self, close: str) -> tuple[list[Any], bool]:
        items: list[Any] = []
        had_comma = False
        while True:
            if self.peek() == ("op", close):
                self.take(close)
                return items, had_comma
            items.append(self.expr())
            if len(items) > _MAX_ITEMS:
                raise ValueError("too many items")
            if self.peek() == ("op", ","):
                self.take(",")
                had_comma = True
            elif self.peek() != ("op", close):
                raise ValueError(f"expected ',' or {close!r}")

    @staticmethod
    def _add(a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        if isinstance(a, list) and isinstance(b, list) or isinstance(a, tuple) and isinstance(b, tuple):
            if len(a) + len(b) > _MAX_ITEMS:
                raise ValueError("too many items")
            return a + b
        raise ValueError(f"cannot add {type(a).__name__} and {type(b).__name__}")

    @staticmethod
    def _mul(a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            if a * b > _MAX_INT:
                raise ValueError("number too large")
            return a * b
        seq, n = (a, b) if isinstance(b, int) else (b, a)
        if not isinstance(seq, (list, tuple)) or not isinstance(n, int):
            raise ValueError(f"cannot multiply {type(a).__name__} by {type(b).__name__}")
        if len(seq) * n > _MAX_ITEMS:
            raise ValueError("too many items")
        return seq * n


def _check_conv_layers(value: Any) -> tuple[tuple[int, int, int], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("conv layers must be a non-empty list of (dim, kernel, stride) tuples")
    layers = []
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in item)
        ):
            raise ValueError(f"conv layer {item!r} is not (dim, kernel, stride) with positive ints")
        layers.append((int(item[0]), int(item[1]), int(item[2])))
    return tuple(layers)


def parse_conv_layers(spec: str | Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], ...]:
    """Parse fairseq's ``conv_feature_layers`` without ``eval``.

    Accepts the Python-expression string fairseq stores, e.g.
    ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"`` (int literals, lists,
    tuples, ``+`` and ``*`` only), or an already-parsed sequence. Returns a tuple of
    ``(dim, kernel, stride)``. Raises :class:`ValueError` for anything else.
    """
    if isinstance(spec, str):
        value = _ConvSpecParser(spec).parse()
    else:
        value = spec
    return _check_conv_layers(value)


def _format_conv_layers(layers: Sequence[tuple[int, int, int]]) -> str:
    """The fairseq string for ``layers``, with runs written as ``[(d,k,s)] * n``."""
    parts: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        while j < len(layers) and tuple(layers[j]) == tuple(layers[i]):
            j += 1
        d, k, s = layers[i]
        parts.append(f"[({d},{k},{s})]" + (f" * {j - i}" if j - i > 1 else ""))
        i = j
    return " + ".join(parts)


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class _ConvBlock(nn.Module):
    """Conv1d (no padding) + optional GroupNorm/LayerNorm + GELU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.norm_kind = norm
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm: nn.Module | None
        if norm == "group":
            self.norm = nn.GroupNorm(c_out, c_out, eps=1e-5, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(c_out, eps=1e-5)
        else:
            self.norm = None


class _EncoderLayer(nn.Module):
    """One transformer layer: self-attention and FFN, post-LN or pre-LN."""

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        d = c // self.heads
        q = self.q_proj(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))

    def ffn(self, x: torch.Tensor, approximate: str) -> torch.Tensor:
        h = self.fc1(x)
        # fairseq runs the FFN GELU in float32 when the model is half.
        h = (
            F.gelu(h.float(), approximate=approximate).to(h.dtype)
            if h.dtype != torch.float32
            else F.gelu(h, approximate=approximate)
        )
        return self.fc2(h)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, pre_ln: bool, approximate: str
    ) -> torch.Tensor:
        if pre_ln:
            x = x + self.attention(self.attn_norm(x), mask)
            return x + self.ffn(self.ffn_norm(x), approximate)
        x = self.attn_norm(x + self.attention(x, mask))
        return self.ffn_norm(x + self.ffn(x, approximate))


class HubertEncoder(nn.Module):
    """HuBERT / ContentVec content encoder (implements :class:`rvcfast.protocols.FeatureEncoder`).

    Build it from a :class:`HubertConfig` (random weights) or, usually, with
    :func:`load_encoder`. Call :meth:`encode` for features; ``nn.Module.forward`` is
    the same as :meth:`encode` without ``inference_mode``.

    Attributes: ``hidden_size``, ``num_layers``, ``has_final_proj``, ``final_proj_dim``
    (``None`` without ``final_proj``), ``receptive_field`` (400) and ``hop`` (320) in
    samples, ``config``; models from :func:`load_encoder` also carry ``source_path``
    and ``source_format`` (``"fairseq"`` or ``"hf"``).
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_layers
        self.has_final_proj = config.final_proj_dim is not None
        self.final_proj_dim = config.final_proj_dim
        self.receptive_field = config.receptive_field
        self.hop = config.hop

        blocks = []
        c_in = 1
        for i, (dim, kernel, stride) in enumerate(config.conv_layers):
            if config.extractor_mode == "layer_norm":
                norm: str | None = "layer"
            else:
                norm = "group" if i == 0 else None
            blocks.append(_ConvBlock(c_in, dim, kernel, stride, config.conv_bias, norm))
            c_in = dim
        self.conv_layers = nn.ModuleList(blocks)
        h = config.hidden_size
        self.feature_norm = (
            nn.LayerNorm(config.conv_dim, eps=config.layer_norm_eps) if config.feature_layer_norm else None
        )
        self.projection = nn.Linear(config.conv_dim, h) if config.has_projection else None
        self.pos_conv = nn.Conv1d(
            h, h, config.conv_pos, padding=config.conv_pos // 2, groups=config.conv_pos_groups
        )
        self.encoder_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            _EncoderLayer(h, config.num_heads, config.ffn_dim, config.layer_norm_eps)
            for _ in range(config.num_layers)
        )
        self.final_proj = nn.Linear(h, config.final_proj_dim) if config.final_proj_dim is not None else None
        self._ffn_approx = _GELU_APPROX[config.activation]
        self._feat_approx = _GELU_APPROX[config.feat_activation]

    # ---- helpers -----------------------------------------------------------------

    def num_frames(self, n_samples: int) -> int:
        """Output frames for ``n_samples`` samples at 16 kHz (0 when too short)."""
        return self.config.num_frames(n_samples)

    def _param(self) -> torch.Tensor:
        return self.pos_conv.bias if self.pos_conv.bias is not None else self.pos_conv.weight

    def _prepare(
        self, audio16k: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None
    ) -> tuple[torch.Tensor, list[int] | None]:
        ref = self._param()
        audio = torch.as_tensor(audio16k)
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2:
            raise AudioError(
                None, f"the content encoder expects audio shaped [batch, samples], got {tuple(audio.shape)}"
            )
        if not audio.is_floating_point():
            raise AudioError(None, f"the content encoder expects float audio, got {audio.dtype}")
        n = audio.shape[1]
        if n < self.receptive_field:
            raise AudioError(
                None,
                f"audio of {n} samples is too short: the content encoder needs at least {self.receptive_field}",
            )
        lens: list[int] | None = None
        if lengths is not None:
            lens = [int(v) for v in torch.as_tensor(lengths).reshape(-1).tolist()]
            if len(lens) != audio.shape[0]:
                raise ParameterError(f"lengths has {len(lens)} entries for a batch of {audio.shape[0]}")
            for v in lens:
                if v > n:
                    raise ParameterError(f"length {v} exceeds the padded audio length {n}")
                if v < self.receptive_field:
                    raise AudioError(
                        None,
                        f"an item of {v} samples is too short: the content encoder needs at least {self.receptive_field}",
                    )
            if all(v == n for v in lens):
                lens = None
        return audio.to(device=ref.device, dtype=ref.dtype), lens

    def _group_norm(self, block: _ConvBlock, x: torch.Tensor, lens: list[int] | None) -> torch.Tensor:
        norm = block.norm
        assert isinstance(norm, nn.GroupNorm)
        w = norm.weight.float() if norm.weight is not None else None
        b = norm.bias.float() if norm.bias is not None else None
        if lens is None:  # fairseq's Fp32GroupNorm
            return F.group_norm(x.float(), norm.num_groups, w, b, norm.eps).to(x.dtype)
        out = torch.zeros_like(x)
        for i, n in enumerate(lens):
            out[i, :, :n] = F.group_norm(x[i : i + 1, :, :n].float(), norm.num_groups, w, b, norm.eps)[0].to(
                x.dtype
            )
        return out

    def _conv_stack(
        self, audio: torch.Tensor, lens: list[int] | None
    ) -> tuple[torch.Tensor, list[int] | None]:
        x = audio.unsqueeze(1)
        for block in self.conv_layers:
            x = block.conv(x)
            if lens is not None:
                lens = [(v - block.kernel) // block.stride + 1 for v in lens]
            if block.norm_kind == "group":
                x = self._group_norm(block, x, lens)
            elif block.norm_kind == "layer":
                norm = block.norm
                assert isinstance(norm, nn.LayerNorm)
                y = F.layer_norm(
                    x.transpose(1, 2).float(),
                    norm.normalized_shape,
                    norm.weight.float() if norm.weight is not None else None,
                    norm.bias.float() if norm.bias is not None else None,
                    norm.eps,
                )
                x = y.to(x.dtype).transpose(1, 2)
            x = F.gelu(x, approximate=self._feat_approx)
        return x, lens

    def _run(
        self,
        audio16k: torch.Tensor,
        output_layer: int | None,
        final_proj: bool,
        lengths: torch.Tensor | Sequence[int] | None,
    ) -> torch.Tensor:
        if output_layer is not None and (isinstance(output_layer, bool) or int(output_layer) < 0):
            raise ParameterError(f"output_layer must be None or a non-negative int, got {output_layer!r}")
        if final_proj and self.final_proj is None:
            raise ParameterError("final_proj=True, but this content encoder has no final_proj weights")
        audio, lens = self._prepare(audio16k, lengths)
        x, lens = self._conv_stack(audio, lens)
        x = x.transpose(1, 2)
        if self.feature_norm is not None:
            x = self.feature_norm(x)
        if self.projection is not None:
            x = self.projection(x)
        b, t, _ = x.shape
        pad: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        if lens is not None:
            pad = torch.arange(t, device=x.device)[None, :] >= torch.tensor(lens, device=x.device)[:, None]
            x = x.masked_fill(pad[..., None], 0.0)
            mask = (~pad)[:, None, None, :]
        pos = self.pos_conv(x.transpose(1, 2))
        if self.config.conv_pos % 2 == 0:
            pos = pos[..., :-1]
        x = x + F.gelu(pos, approximate=self._feat_approx).transpose(1, 2)
        pre_ln = self.config.layer_norm_first
        if not pre_ln:
            x = self.encoder_norm(x)
        n_run = self.num_layers if output_layer is None else min(int(output_layer), self.num_layers)
        for layer in self.layers[:n_run]:
            x = layer(x, mask, pre_ln, self._ffn_approx)
        if pre_ln and output_layer is None:
            x = self.encoder_norm(x)
        if final_proj:
            assert self.final_proj is not None
            x = self.final_proj(x)
        if pad is not None:
            x = x.masked_fill(pad[..., None], 0.0)
        return x

    # ---- public API --------------------------------------------------------------

    def forward(
        self,
        audio16k: torch.Tensor,
        output_layer: int | None = None,
        final_proj: bool = False,
        lengths: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Same as :meth:`encode` but without ``torch.inference_mode``."""
        return self._run(audio16k, output_layer, final_proj, lengths)

    @torch.inference_mode()
    def encode(
        self,
        audio16k: torch.Tensor,
        output_layer: int | None = None,
        final_proj: bool = False,
        lengths: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Encode ``[B, N]`` float audio at 16 kHz into ``[B, T, C]`` features.

        ``T = (N - 400) // 320 + 1`` for HuBERT-base. No waveform normalisation is
        applied (RVC/Applio pass raw samples).

        Args:
            audio16k: ``[B, N]`` (or ``[N]``) float samples; moved to the model's device and dtype.
            output_layer: ``None`` for the last layer (with the final LayerNorm of a
                pre-LN model); ``k >= 1`` for the output of transformer layer ``k``
                (fairseq ``extract_features(output_layer=k)``: when ``k`` exceeds the
                number of layers all run and the last is returned); ``0`` for the input
                to the first layer (transformers' ``hidden_states[0]``).
            final_proj: apply ``final_proj`` (768 -> 256, RVC v1 features) to that output.
            lengths: valid samples per item for right-zero-padded batches. Each item's
                features then equal encoding it alone; frames past its own count
                ``(len - 400) // 320 + 1`` are zero.

        Raises:
            AudioError: audio of the wrong shape/dtype, or shorter than one frame.
            ParameterError: bad ``output_layer``/``lengths``, or ``final_proj`` without weights.
        """
        return self._run(audio16k, output_layer, final_proj, lengths)

    @torch.inference_mode()
    def conv_features(
        self, audio16k: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None
    ) -> torch.Tensor:
        """Output of the conv feature extractor, ``[B, C, T]``, before the feature LayerNorm."""
        audio, lens = self._prepare(audio16k, lengths)
        x, lens = self._conv_stack(audio, lens)
        if lens is not None:
            pad = (
                torch.arange(x.shape[-1], device=x.device)[None, :]
                >= torch.tensor(lens, device=x.device)[:, None]
            )
            x = x.masked_fill(pad[:, None, :], 0.0)
        return x


# --------------------------------------------------------------------------------------
# Key layouts
# --------------------------------------------------------------------------------------


class _Key(NamedTuple):
    internal: str
    fairseq: str
    hf: str
    shape: tuple[int, ...]


def _key_table(cfg: HubertConfig) -> list[_Key]:
    """Every tensor of the model: internal name, fairseq name, transformers name, shape."""
    rows: list[_Key] = []
    c_in = 1
    for i, (dim, kernel, _) in enumerate(cfg.conv_layers):
        fs, hf, me = (
            f"feature_extractor.conv_layers.{i}",
            f"feature_extractor.conv_layers.{i}",
            f"conv_layers.{i}",
        )
        rows.append(_Key(f"{me}.conv.weight", f"{fs}.0.weight", f"{hf}.conv.weight", (dim, c_in, kernel)))
        if cfg.conv_bias:
            rows.append(_Key(f"{me}.conv.bias", f"{fs}.0.bias", f"{hf}.conv.bias", (dim,)))
        if cfg.extractor_mode == "layer_norm":
            norm_fs: str | None = f"{fs}.2.1"
        else:
            norm_fs = f"{fs}.2" if i == 0 else None
        if norm_fs is not None:
            for p in ("weight", "bias"):
                rows.append(_Key(f"{me}.norm.{p}", f"{norm_fs}.{p}", f"{hf}.layer_norm.{p}", (dim,)))
        c_in = dim
    h = cfg.hidden_size
    if cfg.feature_layer_norm:
        for p in ("weight", "bias"):
            rows.append(
                _Key(
                    f"feature_norm.{p}",
                    f"layer_norm.{p}",
                    f"feature_projection.layer_norm.{p}",
                    (cfg.conv_dim,),
                )
            )
    if cfg.has_projection:
        rows.append(
            _Key(
                "projection.weight",
                "post_extract_proj.weight",
                "feature_projection.projection.weight",
                (h, cfg.conv_dim),
            )
        )
        rows.append(
            _Key("projection.bias", "post_extract_proj.bias", "feature_projection.projection.bias", (h,))
        )
    rows.append(
        _Key(
            "pos_conv.weight",
            "encoder.pos_conv.0.weight",
            "encoder.pos_conv_embed.conv.weight",
            (h, h // cfg.conv_pos_groups, cfg.conv_pos),
        )
    )
    rows.append(_Key("pos_conv.bias", "encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias", (h,)))
    for p in ("weight", "bias"):
        rows.append(_Key(f"encoder_norm.{p}", f"encoder.layer_norm.{p}", f"encoder.layer_norm.{p}", (h,)))
    for i in range(cfg.num_layers):
        me, fs, hf = f"layers.{i}", f"encoder.layers.{i}", f"encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rows.append(
                _Key(
                    f"{me}.{proj}.weight",
                    f"{fs}.self_attn.{proj}.weight",
                    f"{hf}.attention.{proj}.weight",
                    (h, h),
                )
            )
            rows.append(
                _Key(f"{me}.{proj}.bias", f"{fs}.self_attn.{proj}.bias", f"{hf}.attention.{proj}.bias", (h,))
            )
        for p in ("weight", "bias"):
            rows.append(
                _Key(f"{me}.attn_norm.{p}", f"{fs}.self_attn_layer_norm.{p}", f"{hf}.layer_norm.{p}", (h,))
            )
        rows.append(
            _Key(
                f"{me}.fc1.weight",
                f"{fs}.fc1.weight",
                f"{hf}.feed_forward.intermediate_dense.weight",
                (cfg.ffn_dim, h),
            )
        )
        rows.append(
            _Key(
                f"{me}.fc1.bias",
                f"{fs}.fc1.bias",
                f"{hf}.feed_forward.intermediate_dense.bias",
                (cfg.ffn_dim,),
            )
        )
        rows.append(
            _Key(
                f"{me}.fc2.weight",
                f"{fs}.fc2.weight",
                f"{hf}.feed_forward.output_dense.weight",
                (h, cfg.ffn_dim),
            )
        )
        rows.append(_Key(f"{me}.fc2.bias", f"{fs}.fc2.bias", f"{hf}.feed_forward.output_dense.bias", (h,)))
        for p in ("weight", "bias"):
            rows.append(
                _Key(f"{me}.ffn_norm.{p}", f"{fs}.final_layer_norm.{p}", f"{hf}.final_layer_norm.{p}", (h,))
            )
    if cfg.final_proj_dim is not None:
        rows.append(
            _Key("final_proj.weight", "final_proj.weight", "final_proj.weight", (cfg.final_proj_dim, h))
        )
        rows.append(_Key("final_proj.bias", "final_proj.bias", "final_proj.bias", (cfg.final_proj_dim,)))
    return rows


def _name_list(names: Iterable[str], limit: int = 25) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _map_state(state: Mapping[str, Any], cfg: HubertConfig, fmt: str, path: Path) -> dict[str, torch.Tensor]:
    """Strictly map a file's state dict onto internal names; weight norm is folded first."""
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(path, f"the weights hold non-tensor entries: {_name_list(map(str, bad))}")
    folded = fold_weight_norm(state)
    # sizes the weights cannot have are refused before the key table is built from them
    present = {k.split(".")[2] for k in folded if k.startswith("encoder.layers.") and k.count(".") >= 3}
    if len(present) != cfg.num_layers:
        raise ModelLoadError(
            path, f"the config says {cfg.num_layers} transformer layers but the weights hold {len(present)}"
        )
    if len(cfg.conv_layers) > 64 or cfg.num_layers > 256:
        raise ModelLoadError(path, f"implausible encoder size ({len(cfg.conv_layers)} conv layers, {cfg.num_layers} layers)")
    table = _key_table(cfg)
    by_source = {(row.fairseq if fmt == "fairseq" else row.hf): row for row in table}
    ignored = _IGNORED_FAIRSEQ if fmt == "fairseq" else _IGNORED_HF
    unknown = [k for k in folded if k not in by_source and k not in ignored]
    missing = [k for k in by_source if k not in folded]
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_list(missing)}")
    if unknown:
        problems.append(f"unexpected keys: {_name_list(unknown)}")
    if problems:
        layout = "fairseq HuBERT" if fmt == "fairseq" else "transformers HubertModel"
        raise ModelLoadError(
            path,
            f"the weights do not match the {layout} layout of the configured model; " + "; ".join(problems),
        )
    out: dict[str, torch.Tensor] = {}
    mismatched = []
    for name, row in by_source.items():
        t = folded[name]
        if tuple(t.shape) != row.shape:
            mismatched.append(f"{name}: {list(t.shape)} in the file, {list(row.shape)} expected")
            continue
        if not t.is_floating_point():
            mismatched.append(f"{name}: dtype {t.dtype} is not floating point")
            continue
        out[row.internal] = t.float()
    if mismatched:
        raise ModelLoadError(
            path, "tensor shapes do not match the configuration: " + "; ".join(mismatched[:25])
        )
    return out


# --------------------------------------------------------------------------------------
# Reading configurations
# --------------------------------------------------------------------------------------


def _plain(obj: Any, depth: int = 0) -> Any:
    """Turn plain containers and the inert stand-ins of safe_load (Namespace, omegaconf) into dicts/lists."""
    if depth > 40:
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, InertObject):
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, Mapping):
            if "_content" in state:  # omegaconf DictConfig / ListConfig
                return _plain(state["_content"], depth + 1)
            if "_val" in state:  # omegaconf value node
                return _plain(state["_val"], depth + 1)
            return _plain(dict(state), depth + 1)  # argparse.Namespace: its __dict__
        if state is None and getattr(obj, "__dict__", None):
            extra = {k: v for k, v in vars(obj).items() if k not in ("args", "kwargs", "state")}
            if extra:
                return _plain(extra, depth + 1)
        kwargs = getattr(obj, "kwargs", None)
        if kwargs:
            return _plain(dict(kwargs), depth + 1)
    return None


class _Fields:
    """Typed access to a configuration dict; errors name the file and the field."""

    def __init__(self, values: Mapping[str, Any], path: Path, what: str) -> None:
        self.values = values
        self.path = path
        self.what = what

    def _fail(self, name: str, expected: str) -> ModelLoadError:
        return ModelLoadError(
            self.path, f"{self.what} field {name!r} must be {expected}, got {self.values.get(name)!r}"
        )

    def get_int(self, name: str, default: int) -> int:
        v = self.values.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v <= 0:
            raise self._fail(name, "a positive integer")
        return int(v)

    def get_float(self, name: str, default: float) -> float:
        v = self.values.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise self._fail(name, "a positive number")
        return float(v)

    def get_bool(self, name: str, default: bool) -> bool:
        v = self.values.get(name)
        if v is None:
            return default
        if not isinstance(v, (bool, int)):
            raise self._fail(name, "true or false")
        return bool(v)

    def get_str(self, name: str, default: str) -> str:
        v = self.values.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._fail(name, "a string")
        return v

    def get_int_list(self, name: str) -> list[int] | None:
        v = self.values.get(name)
        if v is None:
            return None
        if not isinstance(v, (list, tuple)) or any(
            isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in v
        ):
            raise self._fail(name, "a list of positive integers")
        return [int(x) for x in v]


def _final_proj_dim(state: Mapping[str, Any]) -> int | None:
    for key in ("final_proj.weight", "final_proj.bias"):
        t = state.get(key)
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            return int(t.shape[0])
    return None


def _infer_fairseq_defaults(state: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters read off tensor shapes, used where the checkpoint's cfg is silent."""
    folded = fold_weight_norm({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    out: dict[str, Any] = {}
    convs = []
    i = 0
    while f"feature_extractor.conv_layers.{i}.0.weight" in folded:
        w = folded[f"feature_extractor.conv_layers.{i}.0.weight"]
        if w.dim() != 3:
            break
        convs.append((int(w.shape[0]), int(w.shape[2])))
        i += 1
    if convs:
        base = [(d, k) for d, k, _ in HUBERT_BASE_CONV_LAYERS]
        if [k for _, k in convs] == [k for _, k in base]:
            strides = [s for _, _, s in HUBERT_BASE_CONV_LAYERS]
            out["conv_feature_layers"] = [(d, k, s) for (d, k), s in zip(convs, strides)]
        out["conv_bias"] = "feature_extractor.conv_layers.0.0.bias" in folded
    if "feature_extractor.conv_layers.0.2.1.weight" in folded:
        out["extractor_mode"] = "layer_norm"
    n_layers = 0
    while f"encoder.layers.{n_layers}.fc1.weight" in folded:
        n_layers += 1
    if n_layers:
        out["encoder_layers"] = n_layers
        out["encoder_ffn_embed_dim"] = int(folded["encoder.layers.0.fc1.weight"].shape[0])
    norm = folded.get("encoder.layer_norm.weight")
    if isinstance(norm, torch.Tensor) and norm.dim() == 1:
        h = int(norm.shape[0])
        out["encoder_embed_dim"] = h
        if h % 64 == 0:
            out["encoder_attention_heads"] = h // 64
        pos = folded.get("encoder.pos_conv.0.weight")
        if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[1] and h % int(pos.shape[1]) == 0:
            out["conv_pos"] = int(pos.shape[2])
            out["conv_pos_groups"] = h // int(pos.shape[1])
    return out


def _config_from_fairseq(ckpt: Mapping[str, Any], state: Mapping[str, Any], path: Path) -> HubertConfig:
    values: dict[str, Any] = dict(_infer_fairseq_defaults(state))
    args = _plain(ckpt.get("args"))
    if isinstance(args, Mapping):
        values.update({k: v for k, v in args.items() if v is not None})
    cfg = _plain(ckpt.get("cfg"))
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        values.update({k: v for k, v in cfg["model"].items() if v is not None})
    f = _Fields(values, path, "cfg.model")
    layer_type = f.get_str("layer_type", "transformer")
    if layer_type != "transformer":
        raise ModelLoadError(path, f"encoder layer_type {layer_type!r} is not supported (only 'transformer')")
    if f.get_str("pos_enc_type", "abs") != "abs":
        raise ModelLoadError(
            path, f"pos_enc_type {values.get('pos_enc_type')!r} is not supported (only 'abs')"
        )
    if f.get_bool("conv_pos_batch_norm", False):
        raise ModelLoadError(path, "conv_pos_batch_norm=True is not supported")
    spec = values.get("conv_feature_layers", HUBERT_BASE_CONV_LAYERS)
    try:
        conv_layers = parse_conv_layers(spec)
    except ValueError as exc:
        raise ModelLoadError(
            path, f"cfg.model.conv_feature_layers {spec!r} is not a list of (dim, kernel, stride): {exc}"
        ) from None
    hidden = f.get_int("encoder_embed_dim", 768)
    config = HubertConfig(
        conv_layers=conv_layers,
        conv_bias=f.get_bool("conv_bias", False),
        extractor_mode=f.get_str("extractor_mode", "default"),
        hidden_size=hidden,
        num_layers=f.get_int("encoder_layers", 12),
        num_heads=f.get_int("encoder_attention_heads", 12),
        ffn_dim=f.get_int("encoder_ffn_embed_dim", 3072),
        conv_pos=f.get_int("conv_pos", 128),
        conv_pos_groups=f.get_int("conv_pos_groups", 16),
        layer_norm_first=f.get_bool("layer_norm_first", False),
        layer_norm_eps=1e-5,
        feature_layer_norm=True,
        has_projection=conv_layers[-1][0] != hidden,
        final_proj_dim=_final_proj_dim(state),
        activation=f.get_str("activation_fn", "gelu"),
        feat_activation="gelu",
    )
    _validate(config, path)
    return config


def _config_from_hf(values: Mapping[str, Any], state: Mapping[str, Any], path: Path) -> HubertConfig:
    f = _Fields(values, path, "config.json")
    model_type = values.get("model_type", "hubert")
    if model_type != "hubert":
        raise ModelLoadError(path, f"model_type {model_type!r} is not supported (expected 'hubert')")
    if f.get_bool("conv_pos_batch_norm", False):
        raise ModelLoadError(path, "conv_pos_batch_norm=true is not supported")
    dims = f.get_int_list("conv_dim") or [d for d, _, _ in HUBERT_BASE_CONV_LAYERS]
    kernels = f.get_int_list("conv_kernel") or [k for _, k, _ in HUBERT_BASE_CONV_LAYERS]
    strides = f.get_int_list("conv_stride") or [s for _, _, s in HUBERT_BASE_CONV_LAYERS]
    if not (len(dims) == len(kernels) == len(strides)):
        raise ModelLoadError(
            path,
            f"conv_dim, conv_kernel and conv_stride have different lengths ({len(dims)}, {len(kernels)}, {len(strides)})",
        )
    norm = f.get_str("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise ModelLoadError(path, f"feat_extract_norm {norm!r} is not 'group' or 'layer'")
    config = HubertConfig(
        conv_layers=tuple(zip(dims, kernels, strides)),
        conv_bias=f.get_bool("conv_bias", False),
        extractor_mode="default" if norm == "group" else "layer_norm",
        hidden_size=f.get_int("hidden_size", 768),
        num_layers=f.get_int("num_hidden_layers", 12),
        num_heads=f.get_int("num_attention_heads", 12),
        ffn_dim=f.get_int("intermediate_size", 3072),
        conv_pos=f.get_int("num_conv_pos_embeddings", 128),
        conv_pos_groups=f.get_int("num_conv_pos_embedding_groups", 16),
        layer_norm_first=f.get_bool("do_stable_layer_norm", False),
        layer_norm_eps=f.get_float("layer_norm_eps", 1e-5),
        feature_layer_norm=f.get_bool("feat_proj_layer_norm", True),
        has_projection=True,
        final_proj_dim=_final_proj_dim(state),
        activation=f.get_str("hidden_act", "gelu"),
        feat_activation=f.get_str("feat_extract_activation", "gelu"),
    )
    _validate(config, path)
    return config


def _validate(config: HubertConfig, path: Path) -> None:
    try:
        config.validate()
    except ValueError as exc:
        raise ModelLoadError(path, f"unsupported content-encoder configuration: {exc}") from None


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _build(
    config: HubertConfig,
    weights: dict[str, torch.Tensor],
    path: Path,
    device: str | torch.device,
    dtype: torch.dtype,
) -> HubertEncoder:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ParameterError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    with torch.device("meta"):
        model = HubertEncoder(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:  # pragma: no cover - _map_state already checked names and shapes
        raise ModelLoadError(path, f"weights do not fit the model: {exc}") from None
    model = model.to(device=torch.device(device), dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    model.source_path = str(path)  # type: ignore[attr-defined]
    return model


def _load_fairseq(
    path: Path, ckpt: Mapping[str, Any], device: str | torch.device, dtype: torch.dtype
) -> HubertEncoder:
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise ModelLoadError(path, "the fairseq checkpoint's 'model' entry is not a state dict")
    config = _config_from_fairseq(ckpt, state, path)
    weights = _map_state(state, config, "fairseq", path)
    model = _build(config, weights, path, device, dtype)
    model.source_format = "fairseq"  # type: ignore[attr-defined]
    return model


def _load_hf(
    folder: Path,
    device: str | torch.device,
    dtype: torch.dtype,
    config_path: Path | None = None,
    weights_path: Path | None = None,
    state: Mapping[str, Any] | None = None,
) -> HubertEncoder:
    config_path = config_path or folder / "config.json"
    values = load_json(config_path, "content encoder config")
    if state is None:
        if weights_path is None:
            for name in ("model.safetensors", "pytorch_model.bin"):
                if (folder / name).is_file():
                    weights_path = folder / name
                    break
            else:
                raise ModelLoadError(
                    folder, "content encoder folder has neither model.safetensors nor pytorch_model.bin"
                )
        if weights_path.suffix.lower() == ".safetensors":
            state = load_safetensors(weights_path, "content encoder weights")
        else:
            state = load_torch_file(weights_path, "content encoder weights")
    assert weights_path is not None
    if not isinstance(state, Mapping):
        raise ModelLoadError(weights_path, "content encoder weights are not a state dict")
    config = _config_from_hf(values, state, config_path)
    weights = _map_state(state, config, "hf", weights_path)
    model = _build(config, weights, weights_path, device, dtype)
    model.source_format = "hf"  # type: ignore[attr-defined]
    return model


def load_encoder(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HubertEncoder:
    """Load a HuBERT / ContentVec content encoder from a fairseq ``.pt`` or a Hugging Face folder.

    ``path`` may be a fairseq checkpoint (``hubert_base.pt``: ``{'model', 'cfg'}`` or
    legacy ``{'model', 'args'}``), a transformers ``HubertModel`` folder (or its
    ``config.json``, or a ``.safetensors``/``.bin`` weights file next to a
    ``config.json``). Nothing in the files runs code; weights are checked strictly
    (every missing or unexpected tensor is reported), weight norm is folded and
    fp16 weights are cast to float32 and then to ``dtype``.

    Raises:
        ModelLoadError: the file is missing, truncated, of another layout, or its
            tensors do not match the configuration (the message names the file).
        UnsafeFileError: the pickle would build objects that are not plain data.
    """
    p = Path(path)
    if p.is_dir():
        return _load_hf(p, device, dtype)
    suffix = p.suffix.lower()
    if suffix == ".json":
        check_file(p, "content encoder config")
        return _load_hf(p.parent, device, dtype, config_path=p)
    if suffix == ".safetensors":
        check_file(p, "content encoder weights")
        return _load_hf(p.parent, device, dtype, weights_path=p)
    obj = load_torch_file(p, "content encoder")
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj.get("model"), Mapping):
        return _load_fairseq(p, obj, device, dtype)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if (p.parent / "config.json").is_file():
            return _load_hf(p.parent, device, dtype, weights_path=p, state=obj)
        raise ModelLoadError(
            p,
            "this is a bare state dict without a config.json beside it; pass the Hugging Face folder instead",
        )
    raise ModelLoadError(
        p,
        "not a content-encoder checkpoint: expected a fairseq dict with 'model' and 'cfg' (or 'args'), "
        "or a Hugging Face HubertModel folder",
    )


# --------------------------------------------------------------------------------------
# Random weights in the real file formats (tests, benchmarks)
# --------------------------------------------------------------------------------------


def random_hubert_state_dict(
    config: HubertConfig,
    fmt: str = "fairseq",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    weight_norm_keys: str = "legacy",
) -> OrderedDict[str, torch.Tensor]:
    """Random weights for ``config`` with the exact key names and shapes of ``fmt``.

    ``fmt`` is ``"fairseq"`` (``hubert_base.pt``'s ``model`` dict, including the
    training-only ``mask_emb`` and ``label_embs_concat [504, final_dim]``) or ``"hf"``
    (transformers ``HubertModel`` + ``final_proj``, including ``masked_spec_embed``).
    The positional conv is weight-normed (``dim=2``) with ``weight_g``/``weight_v``
    (``weight_norm_keys="legacy"``) or ``parametrizations.weight.original0/1``.
    Values are scaled so activations stay in a realistic range.
    """
    if fmt not in ("fairseq", "hf"):
        raise ValueError(f"fmt must be 'fairseq' or 'hf', got {fmt!r}")
    if weight_norm_keys not in ("legacy", "parametrizations"):
        raise ValueError(f"weight_norm_keys must be 'legacy' or 'parametrizations', got {weight_norm_keys!r}")
    config.validate()
    gen = torch.Generator().manual_seed(int(seed))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    h = config.hidden_size
    for row in _key_table(config):
        name = row.fairseq if fmt == "fairseq" else row.hf
        shape = row.shape
        is_norm = "norm." in row.internal
        if row.internal == "pos_conv.weight":
            std = math.sqrt(4.0 / (config.conv_pos * h))
            v = randn(*shape) * std
            g = v.double().pow(2).sum(dim=(0, 1), keepdim=True).sqrt().float() * (
                1.0 + 0.05 * randn(1, 1, shape[2])
            )
            base = name[: -len(".weight")]
            if weight_norm_keys == "legacy":
                out[f"{base}.weight_g"], out[f"{base}.weight_v"] = g, v
            else:
                out[f"{base}.parametrizations.weight.original0"] = g
                out[f"{base}.parametrizations.weight.original1"] = v
            continue
        if is_norm and name.endswith("weight"):
            t = 1.0 + 0.1 * randn(*shape)
        elif name.endswith("bias"):
            t = 0.02 * randn(*shape)
        else:
            fan_in = math.prod(shape[1:])
            t = randn(*shape) / math.sqrt(fan_in)
        out[name] = t
    if fmt == "fairseq" and config.final_proj_dim is not None:
        out["label_embs_concat"] = randn(504, config.final_proj_dim) * 0.1
    mask_emb = torch.rand(h, generator=gen)
    if fmt == "hf":
        out["masked_spec_embed"] = mask_emb
    else:
        out["mask_emb"] = mask_emb
        out.move_to_end("mask_emb", last=False)
    for key in out:
        out[key] = out[key].to(dtype).contiguous()
    return out


def _fairseq_model_cfg(config: HubertConfig) -> dict[str, Any]:
    return {
        "_name": "hubert",
        "label_rate": 50.0,
        "extractor_mode": config.extractor_mode,
        "encoder_layers": config.num_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.ffn_dim,
        "encoder_attention_heads": config.num_heads,
        "activation_fn": config.activation,
        "layer_type": "transformer",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": config.final_proj_dim or 256,
        "untie_final_proj": True,
        "layer_norm_first": config.layer_norm_first,
        "conv_feature_layers": _format_conv_layers(config.conv_layers),
        "conv_bias": config.conv_bias,
        "logit_temp": 0.1,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.8,
        "mask_selection": "static",
        "mask_other": 0.0,
        "no_mask_overlap": False,
        "mask_min_space": 1,
        "mask_channel_length": 10,
        "mask_channel_prob": 0.0,
        "mask_channel_selection": "static",
        "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False,
        "mask_channel_min_space": 1,
        "conv_pos": config.conv_pos,
        "conv_pos_groups": config.conv_pos_groups,
        "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False,
        "skip_nomask": False,
        "checkpoint_activations": False,
        "required_seq_len_multiple": 2,
    }


def _fairseq_task_cfg() -> dict[str, Any]:
    return {
        "_name": "hubert_pretraining",
        "data": "",
        "fine_tuning": False,
        "labels": ["km"],
        "label_dir": None,
        "label_rate": 50.0,
        "sample_rate": SAMPLE_RATE,
        "normalize": False,
        "enable_padding": False,
        "max_keep_size": None,
        "max_sample_size": 250000,
        "min_sample_size": 32000,
        "single_target": False,
        "random_crop": True,
        "pad_audio": False,
    }


def _hf_config_dict(config: HubertConfig) -> dict[str, Any]:
    act = {"none": "gelu", "tanh": "gelu_new"}
    return {
        "activation_dropout": 0.1,
        "apply_spec_augment": True,
        "attention_dropout": 0.1,
        "bos_token_id": 1,
        "classifier_proj_size": config.final_proj_dim or 256,
        "conv_bias": config.conv_bias,
        "conv_dim": [d for d, _, _ in config.conv_layers],
        "conv_kernel": [k for _, k, _ in config.conv_layers],
        "conv_pos_batch_norm": False,
        "conv_stride": [s for _, _, s in config.conv_layers],
        "do_stable_layer_norm": config.layer_norm_first,
        "eos_token_id": 2,
        "feat_extract_activation": act[_GELU_APPROX[config.feat_activation]],
        "feat_extract_norm": "group" if config.extractor_mode == "default" else "layer",
        "feat_proj_dropout": 0.0,
        "feat_proj_layer_norm": config.feature_layer_norm,
        "final_dropout": 0.1,
        "hidden_act": act[_GELU_APPROX[config.activation]],
        "hidden_dropout": 0.1,
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.ffn_dim,
        "layer_norm_eps": config.layer_norm_eps,
        "layerdrop": 0.1,
        "mask_time_length": 10,
        "mask_time_prob": 0.05,
        "model_type": "hubert",
        "num_attention_heads": config.num_heads,
        "num_conv_pos_embedding_groups": config.conv_pos_groups,
        "num_conv_pos_embeddings": config.conv_pos,
        "num_feat_extract_layers": len(config.conv_layers),
        "num_hidden_layers": config.num_layers,
        "pad_token_id": 0,
        "use_weighted_layer_sum": False,
        "vocab_size": 32,
    }


def _fairseq_pickle_module(stub_classes: tuple[type, ...]) -> types.ModuleType:
    """A pickle 'module' for ``torch.save`` that writes ``stub_classes`` under their fake names.

    Pickle normally refuses a class whose ``__module__`` cannot be imported; this
    pure-Python pickler writes the GLOBAL opcode for those classes directly, so no
    fake module has to be put into ``sys.modules``.
    """

    class _Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
        def save_global(self, obj: Any, name: str | None = None) -> None:
            if any(obj is cls for cls in stub_classes):
                self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
                self.memoize(obj)
                return
            super().save_global(obj, name)

    module = types.ModuleType("rvcfast_fairseq_pickle")
    module.Pickler = _Pickler  # type: ignore[attr-defined]
    return module


def _fairseq_dictionary(dict_cls: type, num_labels: int) -> Any:
    """An instance with the ``__dict__`` of fairseq's label ``Dictionary`` for ``num_labels`` k-means classes."""
    d = dict_cls.__new__(dict_cls)
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(num_labels)]
    d.__dict__.update(
        {
            "bos_word": "<s>",
            "unk_word": "<unk>",
            "pad_word": "<pad>",
            "eos_word": "</s>",
            "symbols": symbols,
            "count": [1, 1, 1, 1] + [1000] * num_labels,
            "indices": {s: i for i, s in enumerate(symbols)},
            "bos_index": 0,
            "pad_index": 1,
            "eos_index": 2,
            "unk_index": 3,
            "nspecial": 4,
        }
    )
    return d


def save_random_hubert(
    path_or_dir: str | os.PathLike[str],
    fmt: str = "fairseq",
    *,
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    conv_layers: Sequence[tuple[int, int, int]] = HUBERT_BASE_CONV_LAYERS,
    conv_pos: int = 128,
    conv_pos_groups: int = 16,
    final_dim: int | None = 256,
    extractor_mode: str = "default",
    layer_norm_first: bool = False,
    conv_bias: bool = False,
    seed: int = 0,
    weight_norm_keys: str = "legacy",
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a random-weight HuBERT / ContentVec in a real file format; returns what to pass to :func:`load_encoder`.

    ``fmt="fairseq"``: a ``hubert_base.pt``-style checkpoint (``path_or_dir`` is the
    file, or a folder that receives ``hubert_base.pt``) with ``model`` (fp16 tensors,
    legacy weight-norm keys, ``label_embs_concat``, ``mask_emb``), ``cfg`` (plain dicts:
    ``model``, ``task``), ``args=None``, ``optimizer_history``, ``extra_state`` and
    ``task_state`` whose ``dictionaries`` hold one pickled
    ``fairseq.data.dictionary.Dictionary`` (so ``weights_only`` loading needs the same
    allow-listing as the real file).

    ``fmt="hf"``: a folder (``path_or_dir``) with ``config.json`` (transformers
    ``HubertConfig`` fields) and ``pytorch_model.bin`` (plain state dict, Applio's
    ``final_proj`` included when ``final_dim`` is not None).

    The defaults are full-size HuBERT-base. The same ``seed`` and sizes give the
    same weights in both formats.
    """
    config = HubertConfig(
        conv_layers=_check_conv_layers(conv_layers),
        conv_bias=conv_bias,
        extractor_mode=extractor_mode,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        ffn_dim=ffn,
        conv_pos=conv_pos,
        conv_pos_groups=conv_pos_groups,
        layer_norm_first=layer_norm_first,
        has_projection=True if fmt == "hf" else conv_layers[-1][0] != hidden,
        final_proj_dim=final_dim,
    )
    state = random_hubert_state_dict(config, fmt, seed=seed, dtype=dtype, weight_norm_keys=weight_norm_keys)
    p = Path(path_or_dir)
    if fmt == "hf":
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(_hf_config_dict(config), indent=2) + "\n", encoding="utf-8")
        torch.save(state, p / "pytorch_model.bin")
        return p
    if p.is_dir():
        p = p / "hubert_base.pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    dict_cls = type("Dictionary", (), {"__module__": "fairseq.data.dictionary", "__qualname__": "Dictionary"})
    ckpt = {
        "args": None,
        "cfg": {
            "_name": None,
            "common": {"_name": None, "fp16": True, "seed": 1337, "log_interval": 200},
            "model": _fairseq_model_cfg(config),
            "task": _fairseq_task_cfg(),
            "criterion": {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0},
        },
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 100000,
            }
        ],
        "task_state": {"dictionaries": [_fairseq_dictionary(dict_cls, 500)]},
        "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}, "val_loss": 2.5},
    }
    torch.save(ckpt, p, pickle_module=_fairseq_pickle_module((dict_cls,)))
    return p

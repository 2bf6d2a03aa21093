"""The HuBERT / ContentVec network (:class:`HubertEncoder`), built from a :class:`HubertConfig`.

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

import operator
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AudioError, ParameterError
from .config import GELU_APPROXIMATE, SAMPLE_RATE, HubertConfig

__all__ = ["HubertEncoder"]


def _output_layer(value: Any) -> int | None:
    """``output_layer`` as an int (``None`` stays ``None``); anything but a non-negative integer is refused."""
    if value is None:
        return None
    try:
        layer = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        layer = None
    if layer is None or layer < 0:
        raise ParameterError(f"output_layer must be None or a non-negative int, got {value!r}")
    return layer


def _lengths(lengths: Any, batch: int) -> list[int]:
    """``lengths`` as one int per item; NaN, fractions, text or a wrong count are a ParameterError."""
    try:
        raw = torch.as_tensor(lengths).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError):
        raw = None
    values: list[int] = []
    for v in raw if raw is not None else [None]:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ParameterError(
                f"lengths must be whole numbers of samples, one per batch item; got {lengths!r}"
            )
        values.append(v)
    if len(values) != batch:
        raise ParameterError(f"lengths has {len(values)} entries for a batch of {batch}")
    return values


def _shape_hint(shape: tuple[int, ...], field: int) -> str:
    """A hint for audio that looks like ``[samples, channels]`` instead of ``[batch, samples]``."""
    if len(shape) == 2 and shape[1] <= 8 and shape[0] >= field:
        return (
            f"; shape {shape} looks like [samples, channels]: pass mono audio shaped [batch, samples] "
            "(average the channels, then add a batch axis)"
        )
    return f" (audio shape {shape})"


def _mixed_norm(x: torch.Tensor) -> bool:
    """Whether torch normalises ``x`` itself in float32 (statistics and affine) and rounds once.

    fairseq runs the feature extractor's norms in float32 for half-precision models. On a
    CPU, torch's group/layer norm kernels take a bfloat16 input with float32 weights and
    compute in float32 internally: the same result (to one bfloat16 rounding) without two
    float32 copies of the largest activation (2 x 46 MB for 7 s of audio; 60 -> 7 ms).
    """
    return x.device.type == "cpu" and x.dtype == torch.bfloat16


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
    # set by load_encoder only (absent on a model built from a config)
    source_path: str
    source_format: str

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
        self._ffn_approx = GELU_APPROXIMATE[config.activation]
        self._feat_approx = GELU_APPROXIMATE[config.feat_activation]

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
                f"audio of {n} samples is too short: the content encoder needs at least {self.receptive_field}"
                + _shape_hint(tuple(audio.shape), self.receptive_field),
            )
        lens: list[int] | None = None
        if lengths is not None:
            lens = _lengths(lengths, audio.shape[0])
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
            if _mixed_norm(x):
                return F.group_norm(x, norm.num_groups, w, b, norm.eps)
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
        for block in cast("Iterable[_ConvBlock]", self.conv_layers):
            x = block.conv(x)
            if lens is not None:
                lens = [(v - block.kernel) // block.stride + 1 for v in lens]
            if block.norm_kind == "group":
                x = self._group_norm(block, x, lens)
            elif block.norm_kind == "layer":
                norm = block.norm
                assert isinstance(norm, nn.LayerNorm)
                y = F.layer_norm(
                    x.transpose(1, 2) if _mixed_norm(x) else x.transpose(1, 2).float(),
                    norm.normalized_shape,
                    norm.weight.float() if norm.weight is not None else None,
                    norm.bias.float() if norm.bias is not None else None,
                    norm.eps,
                )
                x = y.to(x.dtype).transpose(1, 2)
            # in place: x is this block's own output (one large activation fewer per layer)
            x = torch.ops.aten.gelu_(x, approximate=self._feat_approx)
        return x, lens

    def _run(
        self,
        audio16k: torch.Tensor,
        output_layer: int | None,
        final_proj: bool,
        lengths: torch.Tensor | Sequence[int] | None,
    ) -> torch.Tensor:
        output_layer = _output_layer(output_layer)
        if final_proj and self.final_proj is None:
            where = getattr(self, "source_path", None)
            raise ParameterError(
                f"final_proj=True (the 256-d features v1 voice models take), but the content encoder "
                f"{where or '(in memory)'} has no final_proj weights (a plain HubertModel folder); "
                "use a v2 model with it, or an encoder with final_proj (e.g. ContentVec / hubert_base.pt) for v1"
            )
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
        n_run = self.num_layers if output_layer is None else min(output_layer, self.num_layers)
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

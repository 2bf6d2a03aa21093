"""The RVC synthesizer: content features (+ pitch) to a waveform.

This is an independent PyTorch implementation of RVC's ``SynthesizerTrnMs{256,768}NSFsid``
(and the ``_nono`` variants without pitch), as RVC WebUI and Applio run it at inference:

* ``enc_p``: the text (content) encoder -- a post-LayerNorm transformer with relative
  position attention (window 10, one table shared by all heads) that gives the prior
  mean ``m_p`` and log-scale ``logs_p``;
* ``flow``: four mean-only residual coupling layers (WaveNet), run in reverse;
* ``dec``: HiFi-GAN, with a neural source-filter excitation (``GeneratorNSF``) for
  pitch-guided models;
* ``emb_g``: the speaker embedding.

Module and parameter names follow RVC's state-dict keys, so a voice ``.pth`` loads with
strict key checking once weight norm is folded (:func:`load_vocoder`).

Exactness notes
---------------
* ``noise=False`` removes every random draw (prior noise, NSF noise; the fundamental's
  initial phase is 0 in RVC and Applio anyway). This is the mode of the golden fixtures.
* Batches of different lengths: the text encoder and the flow are masked exactly as in
  the reference. The reference HiFi-GAN decoder is not masked; here, whenever some item is
  shorter than the padded length, every decoder convolution input is zeroed beyond that
  item's valid length, which is exactly what the zero padding of a solo run does. Each
  item's output therefore equals its solo output for *every* valid sample, up to float
  rounding of batch-size dependent kernels; samples beyond ``lengths[b] * hop_length``
  are returned as 0. When all items have the full length no mask is applied and the
  computation is the reference's.
* The NSF sine phase is the inclusive running sum of ``f0 / sr`` per output sample with
  ``f0`` held per frame. Frame-start phases are accumulated in float64 and wrapped to
  [0, 1), so the phase stays accurate for inputs of any length.
"""

from __future__ import annotations

import collections
import math
import operator
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError, ParameterError
from ..safe_load import load_torch_file
from .weightnorm import fold_weight_norm

__all__ = [
    "Synthesizer",
    "load_vocoder",
    "rvc_config",
    "save_random_voice_model",
    "RVC_SAMPLE_RATE_CONFIGS",
]

# --------------------------------------------------------------------------- constants

_LRELU_SLOPE = 0.1  # every leaky ReLU except the one before conv_post (default 0.01)
_ATTN_WINDOW = 10  # relative attention window of the text encoder
_PRIOR_NOISE_SCALE = 0.66666  # z_p = m_p + exp(logs_p) * randn * 0.66666
_SINE_AMP = 0.1
_NSF_NOISE_VOICED = 0.003
_NSF_NOISE_UNVOICED = _SINE_AMP / 3
_MASK_FILL = -1e4  # attention score given to padded keys, as in the reference

#: Decoder geometry of the real RVC configs, per ``(version, sample_rate)``:
#: ``(spec_channels, upsample_rates, upsample_kernel_sizes)`` (rvc.md §3.5; v2 40k uses
#: the v1 40k file).
RVC_SAMPLE_RATE_CONFIGS: Mapping[tuple[str, int], tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    ("v1", 32000): (513, (10, 4, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v1", 40000): (1025, (10, 10, 2, 2), (16, 16, 4, 4)),
    ("v1", 48000): (1025, (10, 6, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v2", 32000): (513, (10, 8, 2, 2), (20, 16, 4, 4)),
    ("v2", 40000): (1025, (10, 10, 2, 2), (16, 16, 4, 4)),
    ("v2", 48000): (1025, (12, 10, 2, 2), (24, 20, 4, 4)),
}

# Extra geometry seen in forks (Applio's 24 kHz pretrain), used only to recognise
# training checkpoints that carry no config.
_OTHER_GEOMETRIES: tuple[tuple[int, int, tuple[int, ...], tuple[int, ...]], ...] = (
    (24000, 513, (10, 6, 2, 2), (20, 12, 4, 4)),
)

_FEATURE_DIMS = {"v1": 256, "v2": 768}

GeneratorArg = None | torch.Generator | Sequence[torch.Generator]


# --------------------------------------------------------------------------- config


#: Score-matrix elements per attention block (16M floats = 64 MB in float32).
_ATTN_BLOCK_ELEMENTS = 1 << 24

# Decoder windows. The HiFi-GAN decoder is convolutional, so it can run on bounded time
# windows whose edges sit further from the kept samples than its receptive field (the
# margin, :func:`_decoder_margin_frames`, 16-19 frames for RVC's configs); kept
# samples then equal one whole pass. oneDNN caches a set of kernels *per input shape*,
# and on an AVX-512 CPU each channels-last convolution kernel keeps a scratch buffer
# that grows with the shape: about 0.12 MB per window frame for the whole 40 kHz
# decoder, held until the cache (1024 kernels) evicts it. The window sizes below are
# therefore few and small (docs/benchmarks.md, "Long files").

#: An item whose needed frames plus margins fit in this many frames is decoded in one
#: window, widened to one of 16 sizes per octave (:func:`_bucket_frames`).
DECODER_SINGLE_FRAMES = 1088
#: Longer items are decoded in windows of exactly this many frames (margins included);
#: the last, partial piece uses a multiple of a quarter of it.
DECODER_WINDOW_FRAMES = 544
#: On accelerators, windows are batched up to (windows x longest window) frames per
#: decoder call; on a CPU every window is its own call (several windows' activations
#: spill out of the caches, and memory stays bounded by one window).
DECODER_BATCH_FRAMES = 8192


@dataclass(frozen=True)
class _Arch:
    """The 18 positional synthesizer arguments of a voice file, validated."""

    spec_channels: int
    segment_size: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sr: int


def _parse_sr(value: Any) -> int:
    """``40000``, ``"40000"``, ``"40k"`` or ``40000.0`` -> 40000; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"sample rate {value!r} is not a number")
    if isinstance(value, int):
        sr = value
    elif isinstance(value, float) and value.is_integer():
        sr = int(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*k(?:hz)?", text)
        if m:
            sr = int(round(float(m.group(1)) * 1000))
        elif re.fullmatch(r"\d+", text):
            sr = int(text)
        else:
            raise ValueError(f"sample rate {value!r} is not understood")
    else:
        raise ValueError(f"sample rate {value!r} is not a number")
    if not 1000 <= sr <= 384000:
        raise ValueError(f"sample rate {sr} is out of range")
    return sr


def _as_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _as_int_list(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a non-empty list of integers, got {value!r}")
    return tuple(_as_int(v, name) for v in value)


def _parse_config(config: Any) -> _Arch:
    """Validate RVC's 18-element config list; raises ValueError naming the bad entry."""
    if not isinstance(config, (list, tuple)):
        raise ValueError(f"config must be a list of 18 values, got {type(config).__name__}")
    if len(config) != 18:
        raise ValueError(f"config must have 18 values, got {len(config)}")
    resblock = str(config[9])
    if resblock not in ("1", "2"):
        raise ValueError(f"config[9] (resblock) must be '1' or '2', got {config[9]!r}")
    kernels = _as_int_list(config[10], "config[10] (resblock_kernel_sizes)")
    dil_raw = config[11]
    if not isinstance(dil_raw, (list, tuple)) or len(dil_raw) != len(kernels):
        raise ValueError(
            f"config[11] (resblock_dilation_sizes) must be a list of {len(kernels)} lists, got {dil_raw!r}"
        )
    dilations = tuple(_as_int_list(d, "config[11] (resblock_dilation_sizes)") for d in dil_raw)
    if resblock == "2" and any(len(d) < 2 for d in dilations):
        raise ValueError("config[11]: resblock '2' needs two dilations per block")
    rates = _as_int_list(config[12], "config[12] (upsample_rates)")
    up_kernels = _as_int_list(config[14], "config[14] (upsample_kernel_sizes)")
    if len(up_kernels) != len(rates):
        raise ValueError(
            f"config[12] and config[14] must have the same length, got {list(rates)} and {list(up_kernels)}"
        )
    for u, k in zip(rates, up_kernels):
        if u % 2 == 0 and (k - u) % 2 != 0:
            raise ValueError(f"upsample kernel {k} with rate {u} would not upsample exactly {u}x")
        if u % 2 == 1 and k - u - 2 * (u // 2 + 1) + 1 != 0:
            raise ValueError(f"upsample kernel {k} with odd rate {u} would not upsample exactly {u}x")
    hidden = _as_int(config[3], "config[3] (hidden_channels)")
    n_heads = _as_int(config[5], "config[5] (n_heads)")
    if hidden % n_heads:
        raise ValueError(f"hidden_channels {hidden} is not divisible by n_heads {n_heads}")
    inter = _as_int(config[2], "config[2] (inter_channels)")
    if inter % 2:
        raise ValueError(f"inter_channels must be even, got {inter}")
    up_init = _as_int(config[13], "config[13] (upsample_initial_channel)")
    if up_init >> len(rates) < 1:
        raise ValueError(f"upsample_initial_channel {up_init} is too small for {len(rates)} upsampling stages")
    p_dropout = config[8]
    if isinstance(p_dropout, bool) or not isinstance(p_dropout, (int, float)):
        raise ValueError(f"config[8] (p_dropout) must be a number, got {p_dropout!r}")
    return _Arch(
        spec_channels=_as_int(config[0], "config[0] (spec_channels)"),
        segment_size=_as_int(config[1], "config[1] (segment_size)"),
        inter_channels=inter,
        hidden_channels=hidden,
        filter_channels=_as_int(config[4], "config[4] (filter_channels)"),
        n_heads=n_heads,
        n_layers=_as_int(config[6], "config[6] (n_layers)"),
        kernel_size=_as_int(config[7], "config[7] (kernel_size)"),
        p_dropout=float(p_dropout),
        resblock=resblock,
        resblock_kernel_sizes=kernels,
        resblock_dilation_sizes=dilations,
        upsample_rates=rates,
        upsample_initial_channel=up_init,
        upsample_kernel_sizes=up_kernels,
        spk_embed_dim=_as_int(config[15], "config[15] (spk_embed_dim)"),
        gin_channels=_as_int(config[16], "config[16] (gin_channels)"),
        sr=_parse_sr(config[17]),
    )


def rvc_config(
    version: str = "v2",
    sr: int | str = 40000,
    *,
    inter_channels: int = 192,
    hidden_channels: int = 192,
    filter_channels: int = 768,
    n_heads: int = 2,
    n_layers: int = 6,
    upsample_initial_channel: int = 512,
    num_speakers: int = 109,
    gin_channels: int = 256,
) -> list[Any]:
    """The 18-element config list RVC writes for ``(version, sr)``.

    With the default widths this is exactly the list in RVC's ``configs/{v1,v2}/*.json``;
    the keyword arguments shrink the model (e.g. for fast tests) while keeping the real
    decoder geometry (upsample rates and kernels, resblocks, gin channels).
    """
    rate = _parse_sr(sr)
    key = (str(version), rate)
    if key not in RVC_SAMPLE_RATE_CONFIGS:
        raise ValueError(f"no RVC config for version {version!r} at {rate} Hz; known: {sorted(RVC_SAMPLE_RATE_CONFIGS)}")
    spec, rates, kernels = RVC_SAMPLE_RATE_CONFIGS[key]
    return [
        spec,
        32,
        inter_channels,
        hidden_channels,
        filter_channels,
        n_heads,
        n_layers,
        3,
        0,
        "1",
        [3, 7, 11],
        [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        list(rates),
        upsample_initial_channel,
        list(kernels),
        num_speakers,
        gin_channels,
        rate,
    ]


# --------------------------------------------------------------------------- layers


def _weight_normed(module: nn.Module) -> nn.Module:
    """Mark a layer whose weight RVC stores as a weight-norm (g, v) pair."""
    module._rvc_weight_norm = True  # type: ignore[attr-defined]
    return module


def _same_padding(kernel_size: int) -> tuple[int, int]:
    return (kernel_size - 1) // 2, kernel_size // 2


class _ChannelLayerNorm(nn.Module):
    """RVC's LayerNorm over channels (parameters ``gamma``/``beta``, eps 1e-5), on ``[B, T, C]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.gamma, self.beta, 1e-5)


class _RelativeAttention(nn.Module):
    """Multi-head self-attention with relative position keys and values (VITS style).

    ``conv_q/k/v/o`` are 1x1 convolutions (kept as Conv1d for the state-dict names);
    at run time q, k and v come from one fused matmul whose q part carries the
    ``1/sqrt(k_channels)`` scale (see :meth:`prepare`). ``emb_rel_k``/``emb_rel_v`` hold
    one ``[2*window+1, k_channels]`` table shared by all heads. The relative value term
    needs the attention probabilities themselves, so the softmax is computed explicitly
    rather than with ``scaled_dot_product_attention``.
    """

    def __init__(self, channels: int, n_heads: int, window: int = _ATTN_WINDOW) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        std = self.k_channels**-0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window + 1, self.k_channels) * std)
        self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window + 1, self.k_channels) * std)
        self.prepare()

    def prepare(self) -> None:
        """(Re)compute the fused, pre-scaled qkv projection from the current weights."""
        with torch.no_grad():
            scale = 1.0 / math.sqrt(self.k_channels)
            w = torch.cat(
                [self.conv_q.weight[:, :, 0] * scale, self.conv_k.weight[:, :, 0], self.conv_v.weight[:, :, 0]]
            )
            b = torch.cat([self.conv_q.bias * scale, self.conv_k.bias, self.conv_v.bias])
        self.register_buffer("qkv_weight", w.detach().clone(), persistent=False)
        self.register_buffer("qkv_bias", b.detach().clone(), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        band_index: torch.Tensor,
        band_valid: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x`` ``[B, T, C]``; ``band_index``/``band_valid`` ``[T, 2W+1]``; ``key_mask`` ``[B, T]`` bool or None."""
        b, t, c = x.shape
        h, d = self.n_heads, self.k_channels
        qkv = F.linear(x, self.qkv_weight, self.qkv_bias).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, T, d]; q already divided by sqrt(d)
        kt = k.transpose(-2, -1)
        # Rows of the [T, T] score matrix are independent: long inputs are processed in
        # blocks of query rows so memory stays bounded (same arithmetic per row).
        rows = max(64, _ATTN_BLOCK_ELEMENTS // max(1, b * h * t))
        outs = []
        for i0 in range(0, t, rows):
            i1 = min(t, i0 + rows)
            qi = q[:, :, i0:i1]
            scores = torch.matmul(qi, kt)  # [B, H, rows, T]
            rel_logits = torch.matmul(qi, self.emb_rel_k[0].transpose(0, 1))  # [B, H, rows, 2W+1]
            index = band_index[i0:i1].expand(b, h, i1 - i0, band_index.shape[-1])
            valid = band_valid[i0:i1]
            # scores[i, i + r - W] += q_i . emb_rel_k[r]; out-of-range offsets add exactly 0.
            scores.scatter_add_(-1, index, rel_logits * valid)
            if key_mask is not None:
                scores.masked_fill_(~key_mask[:, None, None, :], _MASK_FILL)
            p = torch.softmax(scores, dim=-1)
            out = torch.matmul(p, v)
            p_band = p.gather(-1, index) * valid  # p[i, i + r - W]
            outs.append(out + torch.matmul(p_band, self.emb_rel_v[0]))
            del scores, p
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        out = out.transpose(1, 2).reshape(b, t, c)
        return F.linear(out, self.conv_o.weight[:, :, 0], self.conv_o.bias)


class _FFN(nn.Module):
    """Two "same"-padded convolutions with a ReLU between them, masked like the reference."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.pad = _same_padding(kernel_size)

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        if self.pad[0] == self.pad[1]:
            return F.conv1d(x, conv.weight, conv.bias, padding=self.pad[0])
        return conv(F.pad(x, self.pad))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, C, T]``; ``mask`` ``[B, 1, T]`` or None (no padding)."""
        if mask is not None:
            x = x * mask
        x = torch.relu(self._conv(self.conv_1, x))
        if mask is not None:
            x = x * mask
        x = self._conv(self.conv_2, x)
        if mask is not None:
            x = x * mask
        return x


class _AttentionEncoder(nn.Module):
    def __init__(self, hidden: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(_RelativeAttention(hidden, n_heads) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(_ChannelLayerNorm(hidden) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(_FFN(hidden, filter_channels, kernel_size) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(_ChannelLayerNorm(hidden) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, T, C]`` (already masked) -> ``[B, T, C]``."""
        t = x.shape[1]
        window = _ATTN_WINDOW
        pos = torch.arange(t, device=x.device)
        offsets = torch.arange(-window, window + 1, device=x.device)
        j = pos[:, None] + offsets[None, :]
        band_valid = ((j >= 0) & (j < t)).to(x.dtype)
        band_index = j.clamp(0, t - 1)
        mask_ct = None if key_mask is None else key_mask[:, None, :].to(x.dtype)
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = norm1(x + attn(x, band_index, band_valid, key_mask))
            y = ffn(x.transpose(1, 2), mask_ct).transpose(1, 2)
            x = norm2(x + y)
        if key_mask is not None:
            x = x * key_mask[:, :, None].to(x.dtype)
        return x


class _TextEncoder(nn.Module):
    """RVC's ``enc_p``: content features (+ coarse pitch) to the prior ``(m_p, logs_p)``."""

    def __init__(self, arch: _Arch, feature_dim: int, has_f0: bool) -> None:
        super().__init__()
        hidden = arch.hidden_channels
        self.hidden = hidden
        self.inter = arch.inter_channels
        self.emb_phone = nn.Linear(feature_dim, hidden)
        if has_f0:
            self.emb_pitch = nn.Embedding(256, hidden)
        self.encoder = _AttentionEncoder(hidden, arch.filter_channels, arch.n_heads, arch.n_layers, arch.kernel_size)
        self.proj = nn.Conv1d(hidden, 2 * arch.inter_channels, 1)

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.emb_phone(phone)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden), _LRELU_SLOPE)
        if key_mask is not None:
            x = x * key_mask[:, :, None].to(x.dtype)
        x = self.encoder(x, key_mask)
        stats = F.linear(x, self.proj.weight[:, :, 0], self.proj.bias)
        if key_mask is not None:
            stats = stats * key_mask[:, :, None].to(x.dtype)
        stats = stats.transpose(1, 2)
        return stats[:, : self.inter], stats[:, self.inter :]


class _WaveNet(nn.Module):
    """The gated, conditioned WaveNet stack of a coupling layer (RVC's ``WN``)."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.cond_layer = _weight_normed(nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                _weight_normed(nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=dilation, padding=padding))
            )
            out = 2 * hidden if i < n_layers - 1 else hidden
            self.res_skip_layers.append(_weight_normed(nn.Conv1d(hidden, out, 1)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        h = self.hidden
        g_all = self.cond_layer(g)  # [B, 2h*n, 1]
        output: torch.Tensor | None = None
        for i in range(self.n_layers):
            a = self.in_layers[i](x) + g_all[:, 2 * h * i : 2 * h * (i + 1)]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = x + rs[:, :h]
                if mask is not None:
                    x = x * mask
                skip = rs[:, h:]
            else:
                skip = rs
            output = skip if output is None else output + skip
        assert output is not None
        if mask is not None:
            output = output * mask
        return output


class _Coupling(nn.Module):
    """Mean-only residual coupling layer; only the reverse direction is implemented."""

    def __init__(self, channels: int, hidden: int, gin_channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.enc = _WaveNet(hidden, 5, 1, 3, gin_channels)
        self.post = nn.Conv1d(hidden, self.half, 1)

    def reverse(self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, : self.half], x[:, self.half :]
        h = self.pre(x0)
        if mask is not None:
            h = h * mask
        h = self.enc(h, mask, g)
        m = self.post(h)
        if mask is not None:
            m = m * mask
        x1 = x1 - m
        if mask is not None:
            x1 = x1 * mask
        return torch.cat([x0, x1], dim=1)


class _Flip(nn.Module):
    """Placeholder for RVC's channel flip (no parameters; keeps the coupling indices 0, 2, 4, 6)."""


class _Flow(nn.Module):
    def __init__(self, channels: int, hidden: int, gin_channels: int, n_flows: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_flows):
            layers.append(_Coupling(channels, hidden, gin_channels))
            layers.append(_Flip())
        self.flows = nn.ModuleList(layers)

    def reverse(self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.flows):
            if isinstance(layer, _Flip):
                x = torch.flip(x, [1])
            else:
                x = layer.reverse(x, mask, g)
        return x


# The HiFi-GAN decoder runs its 1-D convolutions as 2-D ones on ``[B, C, 1, T]`` tensors in
# channels-last memory (``[B, T, C]`` in memory): oneDNN picks faster kernels for that
# layout, and the whole decoder takes 10 % (float32) to 16 % (bfloat16) less CPU time on an
# AVX-512 machine than with ``[B, C, T]`` (docs/benchmarks.md); cuDNN also prefers NHWC for
# half precision. The parameters keep their 1-D shapes (the state dict is RVC's);
# :func:`_to_channels_last_1d` only changes how their elements are laid out.


def _to_channels_last_1d(weight: torch.Tensor) -> torch.Tensor:
    """The same ``[O, I, K]`` values, stored as a channels-last ``[O, I, 1, K]`` tensor.

    ``weight.unsqueeze(2)`` of the result is then already in the layout the 2-D
    convolution wants, so no copy is made per call.
    """
    return weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2)


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` -> channels-last ``[B, C, 1, T]``."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _conv(m: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` for a channels-last ``[B, C, 1, T]`` input (symmetric integer padding)."""
    return F.conv2d(
        x, m.weight.unsqueeze(2), m.bias, (1, m.stride[0]), (0, m.padding[0]), (1, m.dilation[0]), m.groups
    )


def _conv_transpose(m: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` for a channels-last ``[B, C, 1, T]`` input."""
    return F.conv_transpose2d(
        x,
        m.weight.unsqueeze(2),
        m.bias,
        (1, m.stride[0]),
        (0, m.padding[0]),
        (0, m.output_padding[0]),
        m.groups,
        (1, m.dilation[0]),
    )


class _ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            _weight_normed(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            _weight_normed(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # Inference only: the in-place ops below touch only tensors made here, never ``x``.
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu(x, _LRELU_SLOPE)
            if mask is not None:
                xt.mul_(mask)
            xt = F.leaky_relu_(_conv(c1, xt), _LRELU_SLOPE)
            if mask is not None:
                xt.mul_(mask)
            x = _conv(c2, xt).add_(x)
        return x


class _ResBlock2(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            _weight_normed(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2))
            for d in dilations[:2]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for c in self.convs:
            xt = F.leaky_relu(x, _LRELU_SLOPE)
            if mask is not None:
                xt.mul_(mask)
            x = _conv(c, xt).add_(x)
        return x


class _SourceModule(nn.Module):
    """``SourceModuleHnNSF`` with ``harmonic_num = 0``: only its ``Linear(1, 1)`` has weights."""

    def __init__(self) -> None:
        super().__init__()
        self.l_linear = nn.Linear(1, 1)

    def forward(self, excitation: torch.Tensor) -> torch.Tensor:
        """``[B, 1, N]`` sine excitation -> ``tanh(l_linear(.))``, same shape."""
        e = excitation.to(self.l_linear.weight.dtype)
        return torch.tanh(e * self.l_linear.weight[0, 0] + self.l_linear.bias[0])


class _HiFiGAN(nn.Module):
    """RVC's ``Generator`` (no pitch) or ``GeneratorNSF`` (with the sine source)."""

    def __init__(self, arch: _Arch, nsf: bool) -> None:
        super().__init__()
        self.nsf = nsf
        self.sr = arch.sr
        self.rates = arch.upsample_rates
        self.upp = math.prod(arch.upsample_rates)
        c0 = arch.upsample_initial_channel
        self.conv_pre = nn.Conv1d(arch.inter_channels, c0, 7, padding=3)
        self.cond = nn.Conv1d(arch.gin_channels, c0, 1)
        self.ups = nn.ModuleList()
        if nsf:
            self.m_source = _SourceModule()
            self.noise_convs = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        self.num_kernels = len(arch.resblock_kernel_sizes)
        block = _ResBlock1 if arch.resblock == "1" else _ResBlock2
        n = len(arch.upsample_rates)
        ch = c0
        for i, (u, k) in enumerate(zip(arch.upsample_rates, arch.upsample_kernel_sizes)):
            ch = c0 // (2 ** (i + 1))
            if u % 2 == 0:
                pad, out_pad = (k - u) // 2, 0
            else:  # Applio's handling of odd rates; RVC has no odd-rate config
                pad, out_pad = u // 2 + u % 2, u % 2
            self.ups.append(
                _weight_normed(nn.ConvTranspose1d(c0 // (2**i), ch, k, u, padding=pad, output_padding=out_pad))
            )
            if nsf:
                stride = math.prod(arch.upsample_rates[i + 1 :]) if i + 1 < n else 1
                if stride == 1:
                    self.noise_convs.append(nn.Conv1d(1, ch, 1))
                else:
                    kernel = 2 * stride - stride % 2
                    self.noise_convs.append(nn.Conv1d(1, ch, kernel, stride=stride, padding=(kernel - stride) // 2))
            for rk, rd in zip(arch.resblock_kernel_sizes, arch.resblock_dilation_sizes):
                self.resblocks.append(block(ch, rk, rd))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3, bias=False)
        #: context frames a decoder window needs on each side (see :func:`_decoder_margin_frames`)
        self.margin_frames = _decoder_margin_frames(arch)

    def prepare(self) -> None:
        """Lay the convolution weights out channels-last (same values, see :func:`_to_channels_last_1d`)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                m.weight.data = _to_channels_last_1d(m.weight.data)

    def forward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        source: torch.Tensor | None,
        lengths: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x`` ``[B, inter, T]``, ``g`` ``[B, gin, 1]``, ``source`` ``[B, 1, T*upp]`` (NSF only).

        ``lengths`` (frames per item) switches on decoder masking for padded batches.
        Returns ``[B, 1, T*upp]``. Internally every tensor is channels-last ``[B, C, 1, T]``.
        """
        t = x.shape[-1]

        def mask_at(factor: int) -> torch.Tensor | None:
            if lengths is None:
                return None
            pos = torch.arange(t * factor, device=x.device)
            return (pos[None, :] < (lengths * factor)[:, None]).to(x.dtype)[:, None, None, :]

        # Inference only: every in-place op below acts on a tensor this function made.
        x = _conv(self.conv_pre, _as_2d(x)).add_(_conv(self.cond, _as_2d(g)))
        src = _as_2d(source) if source is not None else None
        factor = 1
        for i, up in enumerate(self.ups):
            F.leaky_relu_(x, _LRELU_SLOPE)
            m_in = mask_at(factor)
            if m_in is not None:
                x.mul_(m_in)
            x = _conv_transpose(up, x)
            factor *= self.rates[i]
            if src is not None:
                x.add_(_conv(self.noise_convs[i], src))
            m_out = mask_at(factor)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x, m_out)
            for blk in blocks[1:]:
                xs.add_(blk(x, m_out))
            x = xs.div_(self.num_kernels)
        F.leaky_relu_(x)  # default slope 0.01, as in the reference
        m_last = mask_at(factor)
        if m_last is not None:
            x.mul_(m_last)
        return torch.tanh_(_conv(self.conv_post, x)).squeeze(2)


def _decoder_margin_frames(arch: _Arch) -> int:
    """Context frames each decoder window needs beyond its kept samples: an upper bound of
    the decoder's receptive half-width (in frames), plus 3 frames of safety.

    Summed over the layers, each converted to frames at its own rate: ``conv_pre``
    (kernel 7: 3), every transposed convolution (``ceil(kernel / rate)`` input samples),
    the widest resblock (``ResBlock1``: ``(k-1)*d/2 + (k-1)/2`` per dilation;
    ``ResBlock2``: ``(k-1)*d/2`` for the first two), ``conv_post`` (3) and one frame for
    the strided noise convolutions. RVC's six configurations give 12.1-15.3 frames (10.2-10.9
    measured by perturbing one frame in the golden models; tested), hence margins of 16-19.
    """
    frames, scale = 3.0, 1
    for rate, kernel in zip(arch.upsample_rates, arch.upsample_kernel_sizes):
        frames += math.ceil(kernel / rate) / scale
        scale *= rate
        widths = []
        for k, dilations in zip(arch.resblock_kernel_sizes, arch.resblock_dilation_sizes):
            if arch.resblock == "1":
                widths.append(sum((k - 1) * d // 2 + (k - 1) // 2 for d in dilations))
            else:
                widths.append(sum((k - 1) * d // 2 for d in dilations[:2]))
        frames += max(widths, default=0) / scale
    frames += 3 / scale + 1
    return math.ceil(frames) + 3


def _bucket_frames(n: int) -> int:
    """``n`` rounded up to the next size that keeps 5 significant bits (16 sizes per octave:
    ..., 512, 544, 576, ..., 992, 1024, 1088, ...); at most 1/16 above ``n``."""
    step = 1 << max(0, int(n).bit_length() - 5)
    return -(-int(n) // step) * step


_Window = tuple[int, int, int, int]  # decode start, decode end, keep start, keep end (frames)
_ItemWindow = tuple[int, int, int, int, int]  # batch item, then a _Window


def _widen_window(window: _Window, n: int, size: int) -> _Window:
    """Grow a decoder window to ``size`` frames with more of the item's own frames.

    oneDNN builds its convolution kernels for each new input shape (about 0.4 s of CPU for
    the full-size 40 kHz decoder, plus a scratch buffer it keeps), and every file length
    would otherwise be a new shape. The added frames are real context on the far side of
    the margin, so the kept samples do not change (the decoder is convolutional and the
    margin exceeds its receptive field) and no masking is needed. Right side first; a
    window that cannot grow enough inside the item (``[0, n)``) is left as it is.
    """
    s0, e0, k0, k1 = window
    extra = size - (e0 - s0)
    if extra <= 0:
        return window
    right = min(extra, n - e0)
    left = min(extra - right, s0)
    if right + left < extra:
        return window
    return (s0 - left, e0 + right, k0, k1)


def _plan_windows(n: int, skip: int, margin: int) -> list[_Window]:
    """The decoder windows for one item of ``n`` frames whose ``skip`` frames at each end are dropped.

    The needed frames ``[skip, n - skip)`` (all of them when the item is too short to drop
    anything) get ``margin`` frames of context on each side, clipped at the item's ends
    where a whole pass sees zero padding too. If that fits in
    :data:`DECODER_SINGLE_FRAMES`, one window widened to :func:`_bucket_frames`; otherwise
    pieces decoded in windows of exactly :data:`DECODER_WINDOW_FRAMES`, the last piece in
    the smallest multiple of a quarter of that size: a long file then uses at most four
    window shapes, whatever its segment lengths.
    """
    ks, ke = (skip, n - skip) if n - 2 * skip >= 1 else (0, n)
    lo, hi = max(0, ks - margin), min(n, ke + margin)
    if hi - lo <= DECODER_SINGLE_FRAMES:
        return [_widen_window((lo, hi, ks, ke), n, _bucket_frames(hi - lo))]
    size = DECODER_WINDOW_FRAMES
    chunk = size - 2 * margin
    quarter = size // 4
    windows: list[_Window] = []
    c = ks
    while c < ke:
        k1 = min(c + chunk, ke)
        if k1 - c == chunk:
            s0 = max(0, min(c - margin, n - size))
            windows.append((s0, s0 + size, c, k1))
        else:
            s0, e0 = max(0, c - margin), min(n, k1 + margin)
            target = min(size, -(-(e0 - s0) // quarter) * quarter)
            windows.append(_widen_window((s0, e0, c, k1), n, target))
        c = k1
    return windows


def _group_windows(windows: list[_ItemWindow], limit: int) -> list[list[_ItemWindow]]:
    """Consecutive ``(item, start, end, keep start, keep end)`` windows packed into decoder
    calls of at most ``limit`` (windows x longest window) frames; a window longer than
    ``limit`` (or any window when ``limit`` is 0) is a call of its own."""
    groups: list[list[_ItemWindow]] = []
    longest = 0
    for w in windows:
        span = w[2] - w[1]
        if groups and max(longest, span) * (len(groups[-1]) + 1) <= limit:
            groups[-1].append(w)
            longest = max(longest, span)
        else:
            groups.append([w])
            longest = span
    return groups


# --------------------------------------------------------------------------- noise helpers


def _item_generators(generator: GeneratorArg, batch: int) -> list[torch.Generator | None]:
    """One generator (or None = global RNG) per batch item.

    A single generator seeds one fresh generator per item (B seeds drawn from it), so
    item ``b``'s noise depends only on the generator's state and on ``b``; a sequence
    gives each item its own generator.
    """
    if generator is None:
        return [None] * batch
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device).tolist()
        out: list[torch.Generator | None] = []
        for s in seeds:
            g = torch.Generator(device=generator.device)
            g.manual_seed(int(s))
            out.append(g)
        return out
    if isinstance(generator, Sequence) and not isinstance(generator, (str, bytes)):
        gens = list(generator)
        if len(gens) != batch or not all(isinstance(g, torch.Generator) for g in gens):
            raise ParameterError(
                f"generator must be a torch.Generator or a sequence of {batch} torch.Generators (one per item), "
                f"got {len(gens)} items"
            )
        return gens
    raise ParameterError(f"generator must be None, a torch.Generator or a sequence of them, got {type(generator).__name__}")


def _randn(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise, drawn on the generator's device, moved to ``device``."""
    if gen is None:
        return torch.randn(shape, device=device, dtype=torch.float32)
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32).to(device)


def _sine_excitation(f0: torch.Tensor, sr: int, upp: int) -> torch.Tensor:
    """Noise-free NSF excitation ``0.1*sin(2*pi*phase)`` on voiced samples, 0 on unvoiced.

    ``f0`` ``[B, T]`` Hz -> ``[B, T*upp]`` float32. ``phase[n]`` is the inclusive running
    sum of ``f0[frame(n)] / sr``: within frame ``l`` it is ``start_l + (k+1) * f0_l / sr``
    (k = 0..upp-1), and the frame-start phases ``start_l`` are accumulated in float64 and
    wrapped to [0, 1).
    """
    f0 = f0.float()
    b, t = f0.shape
    frame_advance = torch.remainder(f0.double() * (upp / sr), 1.0)
    start = torch.remainder(torch.cumsum(frame_advance, dim=1), 1.0)
    start = F.pad(start[:, :-1], (1, 0)).float()  # phase before frame l (exclusive sum)
    grid = torch.arange(1, upp + 1, device=f0.device, dtype=torch.float32)
    phase = start[:, :, None] + (f0 / sr)[:, :, None] * grid
    sine = torch.sin(phase * (2 * math.pi)) * _SINE_AMP
    voiced = (f0 > 0).to(sine.dtype)[:, :, None]
    return (sine * voiced).reshape(b, t * upp)


# --------------------------------------------------------------------------- the model


class Synthesizer(nn.Module):
    """An RVC voice model (``SynthesizerTrnMs{256,768}NSFsid[_nono]``), inference only.

    Build it with :func:`load_vocoder`. Attributes: ``sample_rate`` (Hz), ``version``
    (``"v1"``/``"v2"``), ``has_f0``, ``num_speakers``, ``feature_dim`` (256 or 768),
    ``hop_length`` (output samples per input frame, = ``prod(upsample_rates)``) and
    ``config`` (the 18-value list, with ``config[15]`` = ``num_speakers`` and
    ``config[17]`` = ``sample_rate``).
    """

    #: ``synthesize`` accepts ``skip_frames`` (decode only the frames the caller keeps).
    supports_skip_frames = True

    def __init__(self, config: Sequence[Any], *, version: str = "v2", has_f0: bool = True) -> None:
        super().__init__()
        if version not in _FEATURE_DIMS:
            raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
        arch = _parse_config(config)
        self.arch = arch
        self.version = version
        self.has_f0 = bool(has_f0)
        self.feature_dim = _FEATURE_DIMS[version]
        self.sample_rate = arch.sr
        self.num_speakers = arch.spk_embed_dim
        self.hop_length = math.prod(arch.upsample_rates)
        cfg = list(config)
        cfg[15] = arch.spk_embed_dim
        cfg[17] = arch.sr
        self.config = cfg
        self.enc_p = _TextEncoder(arch, self.feature_dim, self.has_f0)
        self.dec = _HiFiGAN(arch, nsf=self.has_f0)
        self.flow = _Flow(arch.inter_channels, arch.hidden_channels, arch.gin_channels)
        self.emb_g = nn.Embedding(arch.spk_embed_dim, arch.gin_channels)
        self.eval()

    # -- derived tensors ---------------------------------------------------------------

    def prepare(self) -> None:
        """Recompute the derived (fused) weights from the parameters.

        Called automatically by :func:`load_vocoder` and :meth:`load_state_dict`; call it
        yourself after changing parameters in place.
        """
        for m in self.modules():
            if isinstance(m, _RelativeAttention):
                m.prepare()
        self.dec.prepare()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """:meth:`torch.nn.Module.load_state_dict` (folded weights), then :meth:`prepare`."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.prepare()
        return result

    # -- validation ----------------------------------------------------------------------

    def _check_inputs(
        self,
        features: torch.Tensor,
        lengths: Any,
        pitch: torch.Tensor | None,
        pitchf: torch.Tensor | None,
        speaker: int | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        if not isinstance(features, torch.Tensor) or features.dim() != 3:
            raise ParameterError(f"features must be a [B, T, C] tensor, got {_describe(features)}")
        b, t, c = features.shape
        if c != self.feature_dim:
            raise ParameterError(
                f"features have {c} channels but this {self.version} model expects {self.feature_dim}"
            )
        if b < 1 or t < 1:
            raise ParameterError(f"features must have at least one item and one frame, got shape {tuple(features.shape)}")
        if not features.is_floating_point():
            raise ParameterError(f"features must be floating point, got {features.dtype}")
        device = features.device
        lengths_t = torch.as_tensor(lengths, device=device)
        if lengths_t.dim() == 0:
            lengths_t = lengths_t.reshape(1)
        if lengths_t.shape != (b,) or lengths_t.is_floating_point() or lengths_t.is_complex():
            raise ParameterError(f"lengths must be an integer tensor of shape [{b}], got {_describe(lengths)}")
        lengths_t = lengths_t.long()
        if bool(((lengths_t < 1) | (lengths_t > t)).any()):
            raise ParameterError(f"lengths must lie in 1..{t} (the padded frame count), got {lengths_t.tolist()}")
        if self.has_f0:
            if pitch is None or pitchf is None:
                raise ParameterError("this model is pitch-guided (f0): pitch and pitchf are required")
            if not isinstance(pitch, torch.Tensor) or pitch.shape != (b, t) or pitch.is_floating_point():
                raise ParameterError(f"pitch must be an integer tensor of shape [{b}, {t}], got {_describe(pitch)}")
            if not isinstance(pitchf, torch.Tensor) or pitchf.shape != (b, t) or not pitchf.is_floating_point():
                raise ParameterError(f"pitchf must be a float tensor of shape [{b}, {t}], got {_describe(pitchf)}")
            if bool(((pitch < 0) | (pitch > 255)).any()):
                raise ParameterError("coarse pitch values must lie in 0..255")
            if not bool(torch.isfinite(pitchf).all()):
                raise ParameterError("pitchf contains NaN or infinite values")
            pitch = pitch.to(device=device, dtype=torch.long)
            pitchf = pitchf.to(device=device, dtype=torch.float32)
        else:
            pitch = pitchf = None
        if isinstance(speaker, torch.Tensor):
            sid = speaker.to(device)
            if sid.dim() == 0:
                sid = sid.reshape(1)
            if sid.is_floating_point() or sid.dim() != 1 or sid.shape[0] not in (1, b):
                raise ParameterError(f"speaker must be an int or an integer tensor of shape [{b}], got {_describe(speaker)}")
            sid = sid.long().expand(b)
        else:
            try:
                if isinstance(speaker, bool):
                    raise TypeError
                index = operator.index(speaker)
            except TypeError:
                raise ParameterError(
                    f"speaker must be an int or an integer tensor, got {type(speaker).__name__}"
                ) from None
            sid = torch.full((b,), index, dtype=torch.long, device=device)
        if bool(((sid < 0) | (sid >= self.num_speakers)).any()):
            raise ParameterError(
                f"speaker id {sid.tolist()} out of range: this model has {self.num_speakers} speaker(s) (0..{self.num_speakers - 1})"
            )
        return lengths_t, pitch, pitchf, sid

    # -- inference ---------------------------------------------------------------------------

    def _run(
        self,
        features: torch.Tensor,
        lengths: Any,
        pitch: torch.Tensor | None,
        pitchf: torch.Tensor | None,
        speaker: int | torch.Tensor,
        noise: bool,
        generator: GeneratorArg,
        skip_frames: int = 0,
    ) -> dict[str, torch.Tensor]:
        lengths_t, pitch, pitchf, sid = self._check_inputs(features, lengths, pitch, pitchf, speaker)
        if not isinstance(skip_frames, int) or skip_frames < 0:
            raise ParameterError(f"skip_frames must be a non-negative int, got {skip_frames!r}")
        param = self.emb_g.weight
        device, dtype = param.device, param.dtype
        features = features.to(device=device, dtype=dtype)
        lengths_t = lengths_t.to(device)
        sid = sid.to(device)
        if pitch is not None:
            pitch = pitch.to(device)
            pitchf = pitchf.to(device)  # type: ignore[union-attr]
        b, t, _ = features.shape
        padded = bool((lengths_t < t).any())
        key_mask = torch.arange(t, device=device)[None, :] < lengths_t[:, None] if padded else None
        x_mask = key_mask[:, None, :].to(dtype) if key_mask is not None else None
        gens = _item_generators(generator, b) if noise else []

        g = self.emb_g(sid)[:, :, None]
        m_p, logs_p = self.enc_p(features, pitch, key_mask)
        if noise:
            eps = torch.zeros(b, m_p.shape[1], t, device=device, dtype=torch.float32)
            for i in range(b):
                n = int(lengths_t[i])
                eps[i, :, :n] = _randn((m_p.shape[1], n), gens[i], device)
            z_p = m_p + torch.exp(logs_p) * eps.to(dtype) * _PRIOR_NOISE_SCALE
        else:
            z_p = m_p
        if x_mask is not None:
            z_p = z_p * x_mask
        z = self.flow.reverse(z_p, x_mask, g)
        if x_mask is not None:
            z = z * x_mask

        source = None
        if self.has_f0:
            assert pitchf is not None
            upp = self.hop_length
            excitation = _sine_excitation(pitchf, self.sample_rate, upp)
            if noise:
                voiced = (pitchf > 0).float().repeat_interleave(upp, dim=1)
                amp = voiced * _NSF_NOISE_VOICED + (1 - voiced) * _NSF_NOISE_UNVOICED
                eps_src = torch.zeros(b, t * upp, device=device, dtype=torch.float32)
                for i in range(b):
                    n = int(lengths_t[i]) * upp
                    eps_src[i, :n] = _randn((n,), gens[i], device)
                excitation = excitation + amp * eps_src
            source = self.dec.m_source(excitation[:, None, :])
            if padded:
                pos = torch.arange(t * upp, device=device)
                source = source * (pos[None, :] < (lengths_t * upp)[:, None]).to(source.dtype)[:, None, :]

        if skip_frames > 0 or t > DECODER_SINGLE_FRAMES:
            audio = self._decode_windows(z, g, source, lengths_t, skip_frames)
        else:
            audio = self.dec(z, g, source, lengths_t if padded else None)[:, 0, :]
        if padded:
            pos = torch.arange(t * self.hop_length, device=device)
            audio = audio * (pos[None, :] < (lengths_t * self.hop_length)[:, None]).to(audio.dtype)
        return {"m_p": m_p, "logs_p": logs_p, "z_p": z_p, "z": z, "audio": audio.float()}

    def _decode_windows(
        self,
        z: torch.Tensor,
        g: torch.Tensor,
        source: torch.Tensor | None,
        lengths: torch.Tensor,
        skip: int,
    ) -> torch.Tensor:
        """Run the HiFi-GAN decoder on bounded time windows and stitch the results.

        Each item's needed frames ``[skip, length - skip)`` get windows from
        :func:`_plan_windows`: kept pieces with ``dec.margin_frames`` of real context on
        both sides (more than the decoder's receptive field, so every kept sample equals a
        whole-item decode up to float rounding), widened to a few repeating sizes. Memory
        stays bounded whatever the length, and the dropped padding context is not decoded
        at all. On accelerators windows of all items are batched, up to
        :data:`DECODER_BATCH_FRAMES` frames per call; on a CPU each window is one call.
        Samples outside the needed frames are returned as 0.
        """
        b, _, t = z.shape
        upp = self.hop_length
        windows = [  # (item, decode start, decode end, keep start, keep end)
            (i, *w) for i in range(b) for w in _plan_windows(int(lengths[i]), skip, self.dec.margin_frames)
        ]
        audio = z.new_zeros(b, t * upp)
        for group in _group_windows(windows, DECODER_BATCH_FRAMES if z.device.type != "cpu" else 0):
            spans = [e - s for _, s, e, _, _ in group]
            tc = max(spans)
            zc = z.new_zeros(len(group), z.shape[1], tc)
            sc = source.new_zeros(len(group), 1, tc * upp) if source is not None else None
            for j, (i, s0, e0, _, _) in enumerate(group):
                zc[j, :, : spans[j]] = z[i, :, s0:e0]
                if sc is not None:
                    sc[j, :, : spans[j] * upp] = source[i, :, s0 * upp : e0 * upp]  # type: ignore[index]
            gc = g[[w[0] for w in group]]
            lens_c = torch.tensor(spans, device=z.device)
            part = self.dec(zc, gc, sc, lens_c if min(spans) < tc else None)[:, 0, :]
            for j, (i, s0, _, k0, k1) in enumerate(group):
                audio[i, k0 * upp : k1 * upp] = part[j, (k0 - s0) * upp : (k1 - s0) * upp]
        return audio

    @torch.inference_mode()
    def synthesize(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None = None,
        pitchf: torch.Tensor | None = None,
        speaker: int | torch.Tensor = 0,
        noise: bool = True,
        generator: GeneratorArg = None,
        skip_frames: int = 0,
    ) -> torch.Tensor:
        """Features ``[B, T, C]`` at 100 frames/s to float32 audio ``[B, T * hop_length]``.

        Args:
            features: content features, ``C == feature_dim``; frames beyond ``lengths[b]``
                are padding and do not influence item ``b``.
            lengths: ``[B]`` valid frame counts (1..T).
            pitch: ``[B, T]`` coarse pitch 0..255 (int); required for F0 models, ignored otherwise.
            pitchf: ``[B, T]`` pitch in Hz, 0 = unvoiced; required for F0 models, ignored otherwise.
            speaker: speaker id, an int or a ``[B]`` tensor.
            noise: ``False`` removes every random draw (deterministic; matches the golden
                fixtures); ``True`` samples the prior (``randn * exp(logs_p) * 0.66666``)
                and the NSF noise (std 0.003 voiced, 0.1/3 unvoiced) like RVC.
            generator: ``None`` (global RNG), one :class:`torch.Generator` (seeds one
                generator per item from it), or a sequence of ``B`` generators. Each item
                draws its own noise for exactly its valid length, so with a sequence of
                generators item ``b`` equals a solo run with generator ``b``.

            skip_frames: the caller will drop this many frames at each end of every item
                (RVC drops its 1 s of padding context): the decoder, the costly part, then
                runs only on the kept frames plus a safety margin wider than its receptive
                field, and the dropped samples come back as 0. The kept samples are those
                of a full run (to float rounding). 0 (default) decodes everything.

        Samples beyond ``lengths[b] * hop_length`` are 0.
        """
        return self._run(features, lengths, pitch, pitchf, speaker, noise, generator, skip_frames)["audio"]

    @torch.inference_mode()
    def synthesize_debug(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None = None,
        pitchf: torch.Tensor | None = None,
        speaker: int | torch.Tensor = 0,
        noise: bool = True,
        generator: GeneratorArg = None,
    ) -> dict[str, torch.Tensor]:
        """Like :meth:`synthesize`, returning the intermediates too.

        Keys: ``m_p``, ``logs_p`` (text-encoder prior, ``[B, inter, T]``), ``z_p`` (the
        prior sample), ``z`` (flow output) and ``audio`` (``[B, T * hop_length]``).
        """
        return self._run(features, lengths, pitch, pitchf, speaker, noise, generator)

    def extra_repr(self) -> str:
        return (
            f"version={self.version}, sample_rate={self.sample_rate}, has_f0={self.has_f0}, "
            f"num_speakers={self.num_speakers}, hop_length={self.hop_length}"
        )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


# --------------------------------------------------------------------------- loading


def _is_hifigan(name: Any) -> bool:
    return isinstance(name, str) and re.sub(r"[^a-z0-9]", "", name.lower()) in ("hifigan", "hifigannsf", "nsfhifigan")


def _list_keys(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return shown + more


def _parse_f0_flag(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "false", "no", ""):
            return False
        if text in ("1", "true", "yes"):
            return True
        raise ValueError(f"f0 flag {value!r} is not understood")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return bool(value.item())
    return bool(value)


_WN_SUFFIXES = (".weight_v", ".parametrizations.weight.original1", ".weight")


def _weight_shape(weights: Mapping[str, torch.Tensor], base: str) -> tuple[int, ...] | None:
    for suffix in _WN_SUFFIXES:
        if base + suffix in weights:
            return tuple(weights[base + suffix].shape)
    return None


def _infer_config(weights: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> tuple[list[Any], str, bool]:
    """Rebuild ``(config, version, has_f0)`` from the tensors of a training checkpoint."""

    def need(key: str) -> tuple[int, ...]:
        shape = _weight_shape(weights, key[: -len(".weight")]) if key.endswith(".weight") else None
        if shape is None and key in weights:
            shape = tuple(weights[key].shape)
        if shape is None:
            raise ModelLoadError(
                path, f"training checkpoint has no config and no {key!r}, so its architecture cannot be inferred"
            )
        return shape

    hidden, feat = need("enc_p.emb_phone.weight")
    if feat not in (256, 768):
        raise ModelLoadError(path, f"enc_p.emb_phone.weight has {feat} input features; expected 256 (v1) or 768 (v2)")
    version = "v1" if feat == 256 else "v2"
    has_f0 = "enc_p.emb_pitch.weight" in weights
    inter = need("enc_p.proj.weight")[0] // 2
    filt, _, ksize = need("enc_p.encoder.ffn_layers.0.conv_1.weight")
    n_layers = len({int(m.group(1)) for k in weights if (m := re.match(r"enc_p\.encoder\.attn_layers\.(\d+)\.", k))})
    d = need("enc_p.encoder.attn_layers.0.emb_rel_k")[-1]
    up_init = need("dec.conv_pre.weight")[0]
    n_ups = len({int(m.group(1)) for k in weights if (m := re.match(r"dec\.ups\.(\d+)\.", k))})
    up_kernels = tuple(need(f"dec.ups.{i}.weight")[2] for i in range(n_ups))
    n_blocks = len({int(m.group(1)) for k in weights if (m := re.match(r"dec\.resblocks\.(\d+)\.", k))})
    if n_ups == 0 or n_blocks % n_ups:
        raise ModelLoadError(path, "training checkpoint: cannot tell the decoder layout from dec.ups / dec.resblocks")
    n_k = n_blocks // n_ups
    resblock = "1" if _weight_shape(weights, "dec.resblocks.0.convs1.0") is not None else "2"
    conv_name = "convs1" if resblock == "1" else "convs"
    rb_kernels = [need(f"dec.resblocks.{j}.{conv_name}.0.weight")[2] for j in range(n_k)]
    dilations = [[1, 3, 5] if resblock == "1" else [1, 3] for _ in range(n_k)]
    spk, gin = need("emb_g.weight")
    spec = need("enc_q.pre.weight")[1] if _weight_shape(weights, "enc_q.pre") is not None else None

    candidates: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = [
        (sr, s, r, k) for (_, sr), (s, r, k) in RVC_SAMPLE_RATE_CONFIGS.items()
    ] + list(_OTHER_GEOMETRIES)
    matches = set()
    for sr, s, rates, kernels in candidates:
        if kernels != up_kernels or (spec is not None and s != spec):
            continue
        if has_f0:
            ok = True
            for i in range(n_ups):
                stride = math.prod(rates[i + 1 :]) if i + 1 < n_ups else 1
                expect = 1 if stride == 1 else 2 * stride - stride % 2
                if _weight_shape(weights, f"dec.noise_convs.{i}") is None or need(f"dec.noise_convs.{i}.weight")[2] != expect:
                    ok = False
            if not ok:
                continue
        matches.add((sr, s, rates))
    if len(matches) != 1:
        raise ModelLoadError(
            path,
            f"training checkpoint has no config, and its upsample kernels {list(up_kernels)} do not identify "
            "one known RVC sample-rate configuration; extract a voice model (with its config) first",
        )
    sr, s, rates = matches.pop()
    config = [
        spec if spec is not None else s, 32, inter, hidden, filt, hidden // d, n_layers, ksize, 0, resblock,
        rb_kernels, dilations, list(rates), up_init, list(up_kernels), spk, gin, sr,
    ]
    return config, version, has_f0


def _check_config_against_weights(config: list[Any], weights: Mapping[str, torch.Tensor], path: Any) -> None:
    """Refuse configs whose sizes the weights cannot have, before any module is built.

    A config claiming 10**9 layers or channels would otherwise make the (meta-device)
    model construction run for ages or overflow; the real sizes can be read off the keys.
    """
    layers = {k.split(".")[3] for k in weights if k.startswith("enc_p.encoder.attn_layers.")}
    n_layers = config[6]
    if isinstance(n_layers, int) and layers and n_layers != len(layers):
        raise ModelLoadError(
            path, f"malformed config: n_layers={n_layers} but the weights hold {len(layers)} text-encoder layers"
        )
    checks = [(3, "enc_p.proj.weight", 1, "hidden_channels"), (13, "dec.conv_pre.weight", 0, "upsample_initial_channel")]
    for index, key, dim, name in checks:
        w = weights.get(key)
        value = config[index]
        if isinstance(w, torch.Tensor) and w.dim() > dim and isinstance(value, int) and value != int(w.shape[dim]):
            raise ModelLoadError(
                path, f"malformed config: {name}={value} but {key} has shape {tuple(w.shape)}"
            )


def load_vocoder(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Synthesizer:
    """Load an RVC / Applio voice model ``.pth`` as a :class:`Synthesizer`.

    Reads the file with :func:`rvcfast.safe_load.load_torch_file` (no code runs). Accepts
    the inference format (``weight``, ``config``, ``sr`` as ``"40k"`` or ``40000``,
    ``f0``, ``version`` -- default ``"v1"``, optional ``vocoder``) and training
    checkpoints ``{"model": ...}`` (whose architecture is inferred from the tensor
    shapes when they carry no config). The speaker count comes from ``emb_g.weight``.
    Weight norm (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``)
    is folded once in float64; ``enc_q.*`` keys are ignored; every other key must match
    the model exactly.

    Raises:
        ModelLoadError: the file is unreadable, not a voice model, has a malformed
            config, a vocoder other than HiFi-GAN, unknown / missing keys or tensors of
            the wrong shape. The message names the file and the offending keys.
    """
    try:
        ckpt = load_torch_file(path, what="voice model")
    except ModelLoadError:
        raise
    except Exception as exc:  # the unpickler can fail in other ways on garbage input
        raise ModelLoadError(
            path, f"voice model file is corrupt or not a PyTorch file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(ckpt, Mapping):
        raise ModelLoadError(
            path, f"not an RVC voice model: expected a dict with 'weight' and 'config', got {type(ckpt).__name__}"
        )
    vocoder = ckpt.get("vocoder")
    if vocoder is not None and not _is_hifigan(vocoder):
        raise ModelLoadError(
            path, f"vocoder {vocoder!r} is not supported: rvcfast runs only RVC's HiFi-GAN (NSF) decoder ('HiFi-GAN')"
        )
    if "weight" in ckpt:
        weights, training = ckpt["weight"], False
    elif "model" in ckpt:
        weights, training = ckpt["model"], True
    else:
        keys = ", ".join(repr(k) for k in list(ckpt)[:12])
        raise ModelLoadError(path, f"not an RVC voice model: no 'weight' (or training 'model') entry; top-level keys: {keys}")
    if not isinstance(weights, Mapping):
        raise ModelLoadError(path, f"'weight' must be a dict of tensors, got {type(weights).__name__}")
    bad = [str(k) for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(path, f"'weight' holds entries that are not tensors: {_list_keys(bad)}")

    if "config" in ckpt:
        config = ckpt["config"]
        try:
            version = ckpt.get("version", "v1")
            has_f0 = _parse_f0_flag(ckpt.get("f0", 1))
        except ValueError as exc:
            raise ModelLoadError(path, str(exc)) from None
    elif training:
        config, version, has_f0 = _infer_config(weights, path)
        version = ckpt.get("version", version)
        if "f0" in ckpt:
            try:
                has_f0 = _parse_f0_flag(ckpt["f0"])
            except ValueError as exc:
                raise ModelLoadError(path, str(exc)) from None
    else:
        raise ModelLoadError(path, "not an RVC voice model: it has 'weight' but no 'config' list")
    weights = {k: v for k, v in weights.items() if not k.startswith("enc_q.")}
    if not isinstance(version, str) or version not in _FEATURE_DIMS:
        raise ModelLoadError(path, f"unknown model version {version!r} (expected 'v1' or 'v2')")
    if not isinstance(config, (list, tuple)):
        raise ModelLoadError(path, f"malformed config: expected a list of 18 values, got {type(config).__name__}")
    config = list(config)
    if len(config) != 18:
        raise ModelLoadError(path, f"malformed config: expected 18 values, got {len(config)}")
    if "emb_g.weight" not in weights or weights["emb_g.weight"].dim() != 2:
        raise ModelLoadError(path, "missing key 'emb_g.weight' (the speaker embedding, [n_speakers, gin_channels])")
    config[15] = int(weights["emb_g.weight"].shape[0])
    _check_config_against_weights(config, weights, path)
    try:
        with torch.device("meta"):
            model = Synthesizer(config, version=version, has_f0=has_f0)
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise ModelLoadError(path, f"malformed config: {exc}") from None
    # The real rate is config[17]; RVC and Applio never read the ``sr`` label.
    try:
        folded = fold_weight_norm(weights)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(path, f"a weight-norm (g, v) pair does not fit together: {exc}") from None
    expected = model.state_dict()
    unknown = sorted(set(folded) - set(expected))
    missing = sorted(set(expected) - set(folded))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown keys: {_list_keys(unknown)}")
        if missing:
            parts.append(f"missing keys: {_list_keys(missing)}")
        kind = f"{version} {'F0' if has_f0 else 'no-F0'}"
        raise ModelLoadError(path, f"weights do not match an RVC {kind} synthesizer with this config; " + "; ".join(parts))
    mismatched = [
        f"{k}: file {list(folded[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if tuple(folded[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        hint = ""
        if "enc_p.emb_phone.weight" in folded and folded["enc_p.emb_phone.weight"].shape[-1] != model.feature_dim:
            hint = (
                f" (the file says version {version!r}, which takes {model.feature_dim}-dim features, but "
                f"enc_p.emb_phone.weight takes {folded['enc_p.emb_phone.weight'].shape[-1]})"
            )
        raise ModelLoadError(path, f"tensor shapes do not match the config{hint}: {_list_keys(mismatched, 10)}")
    not_float = [k for k, v in folded.items() if not v.is_floating_point()]
    if not_float:
        raise ModelLoadError(path, f"weights must be floating point tensors: {_list_keys(not_float)}")
    target = torch.device(device)
    state = {k: v.float().to(device=target, dtype=dtype) for k, v in folded.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    return model


# --------------------------------------------------------------------------- random models


def save_random_voice_model(
    path: str | os.PathLike[str],
    version: str = "v2",
    sr: int | str = 40000,
    f0: bool = True,
    *,
    seed: int = 0,
    num_speakers: int = 109,
    inter_channels: int = 192,
    hidden_channels: int = 192,
    filter_channels: int = 768,
    n_heads: int = 2,
    n_layers: int = 6,
    upsample_initial_channel: int = 512,
    sr_style: str = "rvc",
    weight_norm_keys: str = "legacy",
    vocoder: str | None = None,
    info: str = "rvcfast random weights",
) -> Path:
    """Write a voice model with random weights in the exact RVC ``.pth`` format.

    The file is what RVC's ``extract_small_model``/``savee`` writes: an OrderedDict with
    ``weight`` (generator state dict without ``enc_q``, every tensor fp16, weight-normed
    layers as ``weight_g``/``weight_v``), ``config`` (18 values, :func:`rvc_config`),
    ``info``, ``sr`` (``"40k"``; ``sr_style="applio"`` writes ``40000``), ``f0`` (1/0) and
    ``version``. With the default widths the model is full size (27-29 M parameters, about
    55 MB); pass smaller widths for quick tests -- the decoder geometry for
    ``(version, sr)`` stays the real one.

    Args:
        weight_norm_keys: ``"legacy"`` (``weight_g``/``weight_v``, as RVC and Applio
            store them) or ``"parametrizations"`` (``parametrizations.weight.original0/1``).
        vocoder: if given, also store a ``vocoder`` entry (Applio writes ``"HiFi-GAN"``).

    Returns the path written. The weights depend only on the arguments (``seed``).
    """
    if sr_style not in ("rvc", "applio"):
        raise ValueError(f"sr_style must be 'rvc' or 'applio', got {sr_style!r}")
    if weight_norm_keys not in ("legacy", "parametrizations"):
        raise ValueError(f"weight_norm_keys must be 'legacy' or 'parametrizations', got {weight_norm_keys!r}")
    config = rvc_config(
        version,
        sr,
        inter_channels=inter_channels,
        hidden_channels=hidden_channels,
        filter_channels=filter_channels,
        n_heads=n_heads,
        n_layers=n_layers,
        upsample_initial_channel=upsample_initial_channel,
        num_speakers=num_speakers,
    )
    with torch.device("meta"):
        model = Synthesizer(config, version=version, has_f0=f0)
    gen = torch.Generator().manual_seed(int(seed))
    state: dict[str, torch.Tensor] = {}
    wn_modules = {name for name, m in model.named_modules() if getattr(m, "_rvc_weight_norm", False)}
    for name, meta in model.state_dict().items():
        shape = tuple(meta.shape)
        noise = torch.randn(shape, generator=gen) * 0.02
        if name.endswith(".gamma"):
            value = 1.0 + noise
        elif name.startswith(("dec.ups.", "dec.resblocks.")) and name.endswith(".weight"):
            value = torch.randn(shape, generator=gen) * 0.01 + noise  # RVC's init_weights, perturbed
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:]) if not name.startswith("emb") else shape[-1]
            if ".emb_rel_" in name:
                fan_in = shape[-1]
            value = torch.randn(shape, generator=gen) / math.sqrt(max(fan_in, 1)) + noise
        else:
            value = noise
        module_name = name.rsplit(".", 1)[0]
        if module_name in wn_modules and name.endswith(".weight"):
            g = value.double().pow(2).sum(dim=tuple(range(1, value.dim())), keepdim=True).sqrt().float()
            if weight_norm_keys == "legacy":
                state[module_name + ".weight_g"] = g
                state[module_name + ".weight_v"] = value
            else:
                state[module_name + ".parametrizations.weight.original0"] = g
                state[module_name + ".parametrizations.weight.original1"] = value
        else:
            state[name] = value
    weight = collections.OrderedDict((k, v.half()) for k, v in state.items())
    rate = int(config[17])
    ckpt: collections.OrderedDict[str, Any] = collections.OrderedDict()
    ckpt["weight"] = weight
    ckpt["config"] = config
    ckpt["info"] = info
    ckpt["sr"] = f"{rate // 1000}k" if sr_style == "rvc" else rate
    ckpt["f0"] = int(bool(f0))
    ckpt["version"] = version
    if vocoder is not None:
        ckpt["vocoder"] = vocoder
    out = Path(path)
    torch.save(ckpt, out)
    return out

"""The text (content) encoder ``enc_p``: content features (+ coarse pitch) to the prior.

A post-LayerNorm transformer with relative position attention (window 10, one table
shared by all heads) that gives the prior mean ``m_p`` and log-scale ``logs_p``. Padded
batches are masked exactly as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .common import LRELU_SLOPE, embedding, normal_tensor
from .config import Arch

__all__ = ["TextEncoder", "RelativeAttention"]

_ATTN_WINDOW = 10  # relative attention window of the text encoder
_MASK_FILL = -1e4  # attention score given to padded keys, as in the reference
#: Score-matrix elements per attention block (16M floats = 64 MB in float32).
_ATTN_BLOCK_ELEMENTS = 1 << 24


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


class RelativeAttention(nn.Module):
    """Multi-head self-attention with relative position keys and values (VITS style).

    ``conv_q/k/v/o`` are 1x1 convolutions (kept as Conv1d for the state-dict names);
    at run time q, k and v come from one fused matmul whose q part carries the
    ``1/sqrt(k_channels)`` scale (see :meth:`prepare`). ``emb_rel_k``/``emb_rel_v`` hold
    one ``[2*window+1, k_channels]`` table shared by all heads. The relative value term
    needs the attention probabilities themselves, so the softmax is computed explicitly
    rather than with ``scaled_dot_product_attention``.
    """

    #: the fused projection (non-persistent buffers, made by :meth:`prepare`)
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor

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
        self.emb_rel_k = nn.Parameter(normal_tensor(1, 2 * window + 1, self.k_channels, std=std))
        self.emb_rel_v = nn.Parameter(normal_tensor(1, 2 * window + 1, self.k_channels, std=std))
        self.prepare()

    def prepare(self) -> None:
        """(Re)compute the fused, pre-scaled qkv projection from the current weights."""
        if self.conv_q.weight.is_meta:  # built for loading: no values yet (and no meta arithmetic, see normal_tensor)
            c = self.conv_q.weight.shape[0]
            self.register_buffer("qkv_weight", torch.empty(3 * c, c, device="meta"), persistent=False)
            self.register_buffer("qkv_bias", torch.empty(3 * c, device="meta"), persistent=False)
            return
        with torch.no_grad():
            scale = 1.0 / math.sqrt(self.k_channels)
            w = torch.cat(
                [self.conv_q.weight[:, :, 0] * scale, self.conv_k.weight[:, :, 0], self.conv_v.weight[:, :, 0]]
            )
            bq, bk, bv = self.conv_q.bias, self.conv_k.bias, self.conv_v.bias
            assert bq is not None and bk is not None and bv is not None  # built with biases
            b = torch.cat([bq * scale, bk, bv])
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
        self.attn_layers = nn.ModuleList(RelativeAttention(hidden, n_heads) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(_ChannelLayerNorm(hidden) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(_FFN(hidden, filter_channels, kernel_size) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(_ChannelLayerNorm(hidden) for _ in range(n_layers))

    def layer_modules(self) -> Iterator[tuple[RelativeAttention, _ChannelLayerNorm, _FFN, _ChannelLayerNorm]]:
        """``(attention, norm 1, FFN, norm 2)`` of each layer, in order."""
        return zip(
            cast("Iterable[RelativeAttention]", self.attn_layers),
            cast("Iterable[_ChannelLayerNorm]", self.norm_layers_1),
            cast("Iterable[_FFN]", self.ffn_layers),
            cast("Iterable[_ChannelLayerNorm]", self.norm_layers_2),
        )

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
        for attn, norm1, ffn, norm2 in self.layer_modules():
            x = norm1(x + attn(x, band_index, band_valid, key_mask))
            y = ffn(x.transpose(1, 2), mask_ct).transpose(1, 2)
            x = norm2(x + y)
        if key_mask is not None:
            x = x * key_mask[:, :, None].to(x.dtype)
        return x


class TextEncoder(nn.Module):
    """RVC's ``enc_p``: content features (+ coarse pitch) to the prior ``(m_p, logs_p)``."""

    def __init__(self, arch: Arch, feature_dim: int, has_f0: bool) -> None:
        super().__init__()
        hidden = arch.hidden_channels
        self.hidden = hidden
        self.inter = arch.inter_channels
        self.emb_phone = nn.Linear(feature_dim, hidden)
        if has_f0:
            self.emb_pitch = embedding(256, hidden)
        self.encoder = _AttentionEncoder(hidden, arch.filter_channels, arch.n_heads, arch.n_layers, arch.kernel_size)
        self.proj = nn.Conv1d(hidden, 2 * arch.inter_channels, 1)

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.emb_phone(phone)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden), LRELU_SLOPE)
        if key_mask is not None:
            x = x * key_mask[:, :, None].to(x.dtype)
        x = self.encoder(x, key_mask)
        stats = F.linear(x, self.proj.weight[:, :, 0], self.proj.bias)
        if key_mask is not None:
            stats = stats * key_mask[:, :, None].to(x.dtype)
        stats = stats.transpose(1, 2)
        return stats[:, : self.inter], stats[:, self.inter :]

"""Applio's RefineGAN decoder (``RefineGANGenerator``), pitch-guided models only.

Structure (Applio ``rvc/lib/algorithm/generators/refinegan.py``), for upsample rates
``r_1..r_4`` (the config's, e.g. 10, 8, 2, 2 at 32 kHz) and ``upp = prod(r)``:

* source: f0 interpolated linearly to the output rate, Applio's sine generator with no
  overtones (:mod:`.applio_source`), ``tanh(Linear(1, 1, bias=False))`` (``m_source.merge.0``);
* f0 branch: ``pre_conv`` (1 -> 16, kernel 7), then four times: LeakyReLU(0.2), keep the
  result for the matching upsampling stage, downsample by ``r_4, r_3, r_2, r_1`` with the
  Kaiser sinc resampler (:mod:`.kaiser_resample`), ``downsample_blocks[i]`` (kernel 7,
  channels doubled: 16 -> 256 at the frame rate);
* latent branch: ``mel_conv`` (inter -> 256, kernel 7) + ``cond(g)`` (``Conv1d(256, 256, 1)``);
* concatenation (512 channels), then four stages: LeakyReLU(0.2), linear upsampling by
  ``r_i``, concatenation with the kept f0-branch features of that rate, a
  ``ParallelResBlock`` (``input_conv`` kernel 7, then the mean of three
  ``AdaIN -> ResBlock(k, dilations 1/3/5, LeakyReLU 0.2) -> AdaIN`` for k = 3, 7, 11);
* LeakyReLU(0.2), ``conv_post`` (kernel 7, no bias), tanh.

The widths are fixed (512 initial channels, blocks 3/7/11 with dilations 1/3/5): like
Applio, config[10], [11], [13] and [14] are ignored, exactly four upsampling stages are
possible and the speaker conditioning takes 256 channels.

``AdaIN`` adds ``randn * weight`` before its LeakyReLU(0.2); without noise it *is*
LeakyReLU(0.2). Noise is drawn only when the caller passes ``gens`` (one generator, or
``None`` for the global RNG, per batch item).

Windowed decoding: :attr:`RefineGAN.margin_frames` is an upper bound of the receptive
half-width computed from the architecture (:func:`refinegan_margin_frames`; 89-92
frames, dominated by the last resampling kernel), and windows are
:attr:`RefineGAN.window_frames` (1088) frames long, so long items are decoded in bounded
windows whose kept samples equal a whole pass to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import kaiser_resample
from .applio_source import source_signal
from .common import weight_normed
from .config import Arch

__all__ = ["RefineGAN", "refinegan_margin_frames", "REFINEGAN_SLOPE"]

#: Slope of every LeakyReLU in RefineGAN (and of the AdaIN activations).
REFINEGAN_SLOPE = 0.2
_INITIAL_CHANNELS = 512
_START_CHANNELS = 16
_SPEAKER_CHANNELS = 256
_KERNELS = (3, 7, 11)
_DILATIONS = (1, 3, 5)
_STAGES = 4


def _randn_rows(x: torch.Tensor, gens: list[torch.Generator | None]) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, row ``b`` drawn from ``gens[b]`` (None = global RNG)."""
    rows = []
    for gen in gens:
        if gen is None:
            rows.append(torch.randn(x.shape[1:], device=x.device, dtype=x.dtype))
        else:
            rows.append(
                torch.randn(x.shape[1:], generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
            )
    return torch.stack(rows)


class _AdaIN(nn.Module):
    """``LeakyReLU(0.2)(x + randn * weight)``; the noise only when ``gens`` is given."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor, gens: list[torch.Generator | None] | None) -> torch.Tensor:
        if gens is not None:
            x = x + _randn_rows(x, gens) * self.weight[None, :, None]
        return F.leaky_relu(x, REFINEGAN_SLOPE)


class _ResBlock(nn.Module):
    """Three ``x + conv2(lrelu(conv1_d(lrelu(x))))`` steps, dilations 1, 3, 5."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_normed(
                nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            )
            for d in _DILATIONS
        )
        self.convs2 = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2))
            for _ in _DILATIONS
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu_(c1(F.leaky_relu(x, REFINEGAN_SLOPE)), REFINEGAN_SLOPE)
            x = c2(xt).add_(x)
        return x


class _ParallelResBlock(nn.Module):
    """``input_conv`` then the mean of three ``AdaIN -> ResBlock -> AdaIN`` branches (k = 3, 7, 11)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.input_conv = nn.Conv1d(in_channels, out_channels, 7, padding=3)
        self.blocks = nn.ModuleList(
            nn.ModuleList([_AdaIN(out_channels), _ResBlock(out_channels, k), _AdaIN(out_channels)])
            for k in _KERNELS
        )

    def forward(self, x: torch.Tensor, gens: list[torch.Generator | None] | None) -> torch.Tensor:
        x = self.input_conv(x)
        total: torch.Tensor | None = None
        # each branch is a ModuleList [AdaIN, ResBlock, AdaIN] (torch types its items as plain Modules)
        for pre, res, post in cast("Iterable[tuple[_AdaIN, _ResBlock, _AdaIN]]", self.blocks):
            y = post(res(pre(x, gens)), gens)
            total = y if total is None else total.add_(y)
        assert total is not None
        return total.div_(len(self.blocks))


class _SineSource(nn.Module):
    """RefineGAN's ``SineGenerator`` weights: ``merge.0`` = ``Linear(1, 1, bias=False)``."""

    def __init__(self) -> None:
        super().__init__()
        self.merge = nn.ModuleList([nn.Linear(1, 1, bias=False)])

    def forward(self, sines: torch.Tensor) -> torch.Tensor:
        """``[B, N, 1]`` sines -> ``tanh(merge(.))`` in the weights' dtype."""
        w = cast(nn.Linear, self.merge[0]).weight
        return torch.tanh(F.linear(sines.to(w.dtype), w))


def _resample_sizes(rates: tuple[int, ...]) -> list[tuple[int, int]]:
    """Samples per frame before and after each f0-branch resampling: ``upp -> upp/r_4 -> ... -> 1``."""
    size = math.prod(rates)
    sizes = []
    for r in reversed(rates):
        sizes.append((size, size // r))
        size //= r
    return sizes


def refinegan_margin_frames(rates: tuple[int, ...]) -> int:
    """Context frames each RefineGAN window needs beyond its kept samples.

    An upper bound of the receptive half-width in frames (each layer's reach in samples
    divided by its samples per frame), plus 3 frames of safety:

    * from the output back to the frame-rate concatenation: ``conv_post`` (3), and per
      stage the ``ParallelResBlock`` (``input_conv`` 3 + the k = 11 ResBlock's
      ``sum((k-1)*d/2 + (k-1)/2)`` = 60) at the stage's rate and the linear upsampling
      (1 sample at the rate before it);
    * then the wider of ``mel_conv`` (3 frames) and the f0 branch: per resampling the
      kernel's reach (``width + orig`` input samples, reduced rates) and the following
      kernel-7 convolution (3 samples), plus ``pre_conv`` (3 samples at the output rate).

    For Applio's 32/40/48 kHz rates this is 85.7-88.9 frames, hence margins of 89-92
    (measured reach of the 32 kHz decoder: 11.2 frames from z, 76.9 from the source).
    """
    k = max(_KERNELS)
    res_reach = 3 + sum((k - 1) * d // 2 + (k - 1) // 2 for d in _DILATIONS)
    upp = math.prod(rates)
    frames = 3 / upp
    rate = upp
    for r in reversed(rates):
        frames += res_reach / rate + 1 / (rate // r)
        rate //= r
    branch = 3 / upp
    for old, new in _resample_sizes(rates):
        orig = old // math.gcd(old, new)
        branch += (kaiser_resample.kernel_width(old, new) + orig) / old + 3 / new
    frames += max(3.0, branch)
    return math.ceil(frames) + 3


class RefineGAN(nn.Module):
    """Applio's ``RefineGANGenerator`` (inference): see the module docstring.

    Interface of :mod:`.decoders`: ``forward(x, g, source, lengths, gens=None)``,
    ``source_signal`` (the merged sine source for frame f0), ``margin_frames``,
    ``window_frames``, ``draws_noise`` (True: ``forward`` takes the per-item
    generators for the AdaIN noise) and ``prepare()``.
    """

    #: ``forward`` accepts ``gens`` (the AdaIN noise).
    draws_noise = True
    #: Decoding windows of this many frames (margins included): the margins are 89-92 frames.
    window_frames = 1088

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        rates = arch.upsample_rates
        if len(rates) != _STAGES:
            raise ValueError(f"RefineGAN needs exactly {_STAGES} upsample rates, got {list(rates)}")
        if arch.gin_channels != _SPEAKER_CHANNELS:
            raise ValueError(
                f"RefineGAN's speaker conditioning takes {_SPEAKER_CHANNELS} channels, but gin_channels is {arch.gin_channels}"
            )
        self.sr = arch.sr
        self.rates = rates
        self.upp = math.prod(rates)
        self.resample_sizes = _resample_sizes(rates)
        self.m_source = _SineSource()
        self.pre_conv = weight_normed(nn.Conv1d(1, _START_CHANNELS, 7, padding=3))
        self.downsample_blocks = nn.ModuleList()
        ch = _START_CHANNELS
        for _ in rates:
            self.downsample_blocks.append(weight_normed(nn.Conv1d(ch, 2 * ch, 7, padding=3)))
            ch *= 2
        ch = _INITIAL_CHANNELS
        self.mel_conv = weight_normed(nn.Conv1d(arch.inter_channels, ch // 2, 7, padding=3))
        self.cond = nn.Conv1d(_SPEAKER_CHANNELS, ch // 2, 1)
        self.upsample_conv_blocks = nn.ModuleList()
        for _ in rates:
            self.upsample_conv_blocks.append(_ParallelResBlock(ch + ch // 4, ch // 2))
            ch //= 2
        self.conv_post = weight_normed(nn.Conv1d(ch, 1, 7, padding=3, bias=False))
        #: context frames a decoder window needs on each side (see :func:`refinegan_margin_frames`)
        self.margin_frames = refinegan_margin_frames(rates)
        self._kernels: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def prepare(self) -> None:
        """Forget cached resampling kernels (they are rebuilt per dtype and device)."""
        self._kernels.clear()

    def _resample(self, x: torch.Tensor, old: int, new: int) -> torch.Tensor:
        key = (old, new, x.dtype, x.device)
        kernel = self._kernels.get(key)
        if kernel is None:
            # torchaudio builds the kernel in the waveform's dtype. In half precision that
            # breaks: float16 overflows (the Kaiser window's I0(14.77) = 2.4e5 > 65504, so
            # taps are inf) and bfloat16 cannot even count the taps exactly. Half-precision
            # models get the float32 kernel, cast down.
            build = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            kernel = kaiser_resample.kaiser_kernel(old, new, build, x.device)[0].to(x.dtype)
            self._kernels[key] = kernel
        return kaiser_resample.resample(x, old, new, kernel)

    def source_signal(
        self,
        pitchf: torch.Tensor,
        lengths: torch.Tensor | None,
        gens: list[torch.Generator | None] | None,
    ) -> torch.Tensor:
        """Frame f0 ``[B, T]`` (Hz) -> the merged source ``[B, 1, T * upp]`` (``har_source``).

        f0 is interpolated linearly to the output rate; ``gens`` switches on the
        additive noise (``None``: no random draw). With ``lengths`` every item is
        computed on its valid frames only; padding samples are 0.
        """
        return source_signal(
            pitchf,
            lengths,
            upp=self.upp,
            sr=self.sr,
            mode="linear",
            harmonics=0,
            merge=self.m_source,
            gens=gens,
        )

    def forward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        source: torch.Tensor | None,
        lengths: torch.Tensor | None,
        gens: list[torch.Generator | None] | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, inter, T]``, ``g`` ``[B, 256, 1]``, ``source`` ``[B, 1, T*upp]`` -> ``[B, 1, T*upp]``.

        With ``lengths`` (a padded batch) each item is decoded alone on its valid frames
        (the linear upsampling holds an item's last sample, which no masking of a padded
        tensor reproduces); its padding samples are 0.
        """
        if source is None:
            raise ValueError("the RefineGAN decoder needs the f0 source signal")
        t = x.shape[-1]
        if lengths is None or bool((lengths == t).all()):
            return self._decode(x, g, source, gens)
        out = x.new_zeros(x.shape[0], 1, t * self.upp)
        for i in range(x.shape[0]):
            n = int(lengths[i])
            item_gens = None if gens is None else [gens[i]]
            out[i, :, : n * self.upp] = self._decode(
                x[i : i + 1, :, :n], g[i : i + 1], source[i : i + 1, :, : n * self.upp], item_gens
            )[0]
        return out

    def _decode(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        source: torch.Tensor,
        gens: list[torch.Generator | None] | None,
    ) -> torch.Tensor:
        h = self.pre_conv(source.to(x.dtype))
        downs = []
        for block, (old, new) in zip(self.downsample_blocks, self.resample_sizes):
            h = F.leaky_relu(h, REFINEGAN_SLOPE)
            downs.append(h)
            h = block(self._resample(h, old, new))
        y = torch.cat([self.mel_conv(x).add_(self.cond(g)), h], dim=1)
        del h
        for rate, block, down in zip(self.rates, self.upsample_conv_blocks, reversed(downs)):
            y = F.leaky_relu(y, REFINEGAN_SLOPE)
            y = F.interpolate(y, scale_factor=float(rate), mode="linear")
            y = block(torch.cat([y, down], dim=1), gens)
        y = F.leaky_relu(y, REFINEGAN_SLOPE)
        return torch.tanh(self.conv_post(y))

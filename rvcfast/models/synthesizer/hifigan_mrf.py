"""Applio's "MRF HiFi-GAN" decoder (``HiFiGANMRFGenerator``), pitch-guided models only.

The network is RVC's HiFi-GAN NSF generator under other module names, with three real
differences (Applio ``rvc/lib/algorithm/generators/hifigan_mrf.py``):

* the source has 8 overtones (``harmonic_num = 8``): Applio's sine generator
  (:mod:`.applio_source`) on f0 repeated per sample, merged by ``Linear(9, 1)`` + tanh;
* ``conv_post`` has a bias, and ``cond`` exists only when ``gin_channels != 0``;
* every resblock is a multi-receptive-field block of ``(conv1 dilated, conv2)`` layers
  for *all* its dilations (config[9], the resblock type, is ignored).

Modules and parameters carry Applio's names (``conv_pre``, ``upsamples``,
``noise_convs``, ``mrfs.<stage>.<kernel>.layers.<dilation>.conv1/conv2``, ``conv_post``,
``cond``, ``m_source.l_linear``). Computation, masking of padded batches and the
channels-last layout are those of :class:`.hifigan.HiFiGAN`; so is the window margin
(:func:`.hifigan.decoder_margin_frames` with type-1 blocks).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .applio_source import source_signal
from .common import LRELU_SLOPE, weight_normed
from .config import Arch
from .hifigan import _as_2d, _conv, _conv_transpose, _to_channels_last_1d, decoder_margin_frames

__all__ = ["MRFHiFiGAN", "MRF_HARMONICS"]

#: Overtones of the MRF source (Applio's ``harmonic_num``).
MRF_HARMONICS = 8


class _MRFLayer(nn.Module):
    """``x + conv2(lrelu(conv1(lrelu(x))))``, ``conv1`` dilated."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = weight_normed(
            nn.Conv1d(
                channels,
                channels,
                kernel_size,
                dilation=dilation,
                padding=(kernel_size * dilation - dilation) // 2,
            )
        )
        self.conv2 = weight_normed(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = F.leaky_relu(x, LRELU_SLOPE)
        if mask is not None:
            y.mul_(mask)
        y = F.leaky_relu_(_conv(self.conv1, y), LRELU_SLOPE)
        if mask is not None:
            y.mul_(mask)
        return _conv(self.conv2, y).add_(x)


class _MRFBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_MRFLayer(channels, kernel_size, d) for d in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class _HarmonicSource(nn.Module):
    """``SourceModuleHnNSF``'s weights: ``l_linear`` merges the 9 harmonics."""

    def __init__(self, harmonics: int) -> None:
        super().__init__()
        self.l_linear = nn.Linear(harmonics + 1, 1)

    def forward(self, sines: torch.Tensor) -> torch.Tensor:
        """``[B, N, 9]`` sines -> ``tanh(l_linear(.))`` ``[B, N, 1]`` in the weights' dtype."""
        return torch.tanh(self.l_linear(sines.to(self.l_linear.weight.dtype)))


class MRFHiFiGAN(nn.Module):
    """Applio's ``HiFiGANMRFGenerator`` (inference): see the module docstring.

    Interface of :mod:`.decoders`: ``forward(x, g, source, lengths)``, ``source_signal``
    (the merged harmonic source for frame f0), ``margin_frames``, ``prepare()``.
    """

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.sr = arch.sr
        self.rates = arch.upsample_rates
        self.upp = math.prod(arch.upsample_rates)
        c0 = arch.upsample_initial_channel
        self.num_kernels = len(arch.resblock_kernel_sizes)
        self.m_source = _HarmonicSource(MRF_HARMONICS)
        self.conv_pre = weight_normed(nn.Conv1d(arch.inter_channels, c0, 7, padding=3))
        self.upsamples = nn.ModuleList()
        self.noise_convs = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        n = len(self.rates)
        ch = c0
        for i, (u, k) in enumerate(zip(self.rates, arch.upsample_kernel_sizes)):
            ch = c0 // (2 ** (i + 1))
            pad = (k - u) // 2 if u % 2 == 0 else u // 2 + u % 2
            self.upsamples.append(
                weight_normed(nn.ConvTranspose1d(c0 // (2**i), ch, k, u, padding=pad, output_padding=u % 2))
            )
            stride = math.prod(self.rates[i + 1 :]) if i + 1 < n else 1
            kernel = 1 if stride == 1 else 2 * stride - stride % 2
            self.noise_convs.append(
                nn.Conv1d(1, ch, kernel, stride=stride, padding=0 if stride == 1 else (kernel - stride) // 2)
            )
            self.mrfs.append(
                nn.ModuleList(
                    _MRFBlock(ch, rk, rd)
                    for rk, rd in zip(arch.resblock_kernel_sizes, arch.resblock_dilation_sizes)
                )
            )
        self.conv_post = weight_normed(nn.Conv1d(ch, 1, 7, padding=3))
        self.cond = nn.Conv1d(arch.gin_channels, c0, 1) if arch.gin_channels != 0 else None
        #: context frames a decoder window needs on each side (all blocks are type-1 blocks)
        self.margin_frames = decoder_margin_frames(dataclasses.replace(arch, resblock="1"))

    def prepare(self) -> None:
        """Lay the convolution weights out channels-last (same values)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                m.weight.data = _to_channels_last_1d(m.weight.data)

    def source_signal(
        self,
        pitchf: torch.Tensor,
        lengths: torch.Tensor | None,
        gens: list[torch.Generator | None] | None,
    ) -> torch.Tensor:
        """Frame f0 ``[B, T]`` (Hz) -> the merged source ``[B, 1, T * upp]`` (``har_source``).

        f0 is repeated ``upp`` times per frame; ``gens`` switches on the random overtone
        phases and the additive noise (``None``: no random draw). With ``lengths`` every
        item is computed on its valid frames only; padding samples are 0.
        """
        return source_signal(
            pitchf,
            lengths,
            upp=self.upp,
            sr=self.sr,
            mode="nearest",
            harmonics=MRF_HARMONICS,
            merge=self.m_source,
            gens=gens,
        )

    def forward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        source: torch.Tensor | None,
        lengths: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x`` ``[B, inter, T]``, ``g`` ``[B, gin, 1]``, ``source`` ``[B, 1, T*upp]`` -> ``[B, 1, T*upp]``.

        ``lengths`` (frames per item) zeroes every convolution input beyond each item's
        valid length, which equals decoding each item alone.
        """
        if source is None:
            raise ValueError("the MRF HiFi-GAN decoder needs the f0 source signal")
        t = x.shape[-1]

        def mask_at(factor: int) -> torch.Tensor | None:
            if lengths is None:
                return None
            pos = torch.arange(t * factor, device=x.device)
            return (pos[None, :] < (lengths * factor)[:, None]).to(x.dtype)[:, None, None, :]

        x = _conv(self.conv_pre, _as_2d(x))
        if self.cond is not None:
            x.add_(_conv(self.cond, _as_2d(g)))
        src = _as_2d(source)
        factor = 1
        # what the ModuleLists hold (torch types their items as plain Modules)
        noise_convs = cast("Sequence[nn.Conv1d]", self.noise_convs)
        mrfs = cast("Sequence[Sequence[_MRFBlock]]", self.mrfs)
        for i, up in enumerate(cast("Sequence[nn.ConvTranspose1d]", self.upsamples)):
            F.leaky_relu_(x, LRELU_SLOPE)
            m_in = mask_at(factor)
            if m_in is not None:
                x.mul_(m_in)
            x = _conv_transpose(up, x)
            factor *= self.rates[i]
            x.add_(_conv(noise_convs[i], src))
            m_out = mask_at(factor)
            blocks = mrfs[i]
            xs = blocks[0](x, m_out)
            for blk in blocks[1:]:
                xs.add_(blk(x, m_out))
            x = xs.div_(self.num_kernels)
        F.leaky_relu_(x)  # default slope 0.01, as in the reference
        m_last = mask_at(factor)
        if m_last is not None:
            x.mul_(m_last)
        return torch.tanh_(_conv(self.conv_post, x)).squeeze(2)

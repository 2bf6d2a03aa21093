"""RVC's HiFi-GAN decoder ``dec``: ``Generator``, or ``GeneratorNSF`` with the sine source.

For pitch-guided models the neural source-filter excitation is the noise-free sine of
:func:`sine_excitation` (plus RVC's noise, drawn by the synthesizer) passed through
``m_source``. Whenever some item of a batch is shorter than the padded length, every
decoder convolution input is zeroed beyond that item's valid length, which is exactly
what the zero padding of a solo run does; unpadded batches run the reference's
computation unmasked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .common import LRELU_SLOPE, weight_normed
from .config import Arch

__all__ = ["HiFiGAN", "SourceModule", "sine_excitation", "decoder_margin_frames", "SINE_AMP"]

#: Amplitude of the NSF sine excitation.
SINE_AMP = 0.1

_FUSED_DTYPES = (torch.float32, torch.bfloat16)

# What the ModuleLists below hold (torch types their items as plain Modules).
_Convs = Sequence[nn.Conv1d]
_ConvTs = Sequence[nn.ConvTranspose1d]


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
    padding = cast("tuple[int, ...]", m.padding)  # the decoders build no string ("same") padding
    return F.conv2d(
        x, m.weight.unsqueeze(2), m.bias, (1, m.stride[0]), (0, padding[0]), (1, m.dilation[0]), m.groups
    )


def _conv_transpose(m: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` for a channels-last ``[B, C, 1, T]`` input."""
    padding = cast("tuple[int, ...]", m.padding)  # transposed convolutions take integer padding only
    return F.conv_transpose2d(
        x,
        m.weight.unsqueeze(2),
        m.bias,
        (1, m.stride[0]),
        (0, padding[0]),
        (0, m.output_padding[0]),
        m.groups,
        (1, m.dilation[0]),
    )


class _ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # Inference only: the in-place ops below touch only tensors made here, never ``x``.
        for c1, c2 in zip(cast(_Convs, self.convs1), cast(_Convs, self.convs2)):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if mask is not None:
                xt.mul_(mask)
            xt = F.leaky_relu_(_conv(c1, xt), LRELU_SLOPE)
            if mask is not None:
                xt.mul_(mask)
            x = _conv(c2, xt).add_(x)
        return x

    def forward_fused(self, x: torch.Tensor, run: torch.Tensor, tmp: torch.Tensor, hid: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without a mask, into the buffer ``run`` (the result), with the buffers
        ``tmp`` and ``hid`` (:mod:`.fused`: each convolution adds its output, bias included, to
        a buffer in one oneDNN call; nothing is allocated)."""
        for j, (c1, c2) in enumerate(zip(cast(_Convs, self.convs1), cast(_Convs, self.convs2))):
            torch.ops.aten.leaky_relu.out(x if j == 0 else run, LRELU_SLOPE, out=tmp)
            F.leaky_relu_(fused.conv_sum_(hid.zero_(), c1, tmp), LRELU_SLOPE)
            if j == 0:
                run.copy_(x)
            fused.conv_sum_(run, c2, hid)
        return run


class _ResBlock2(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2))
            for d in dilations[:2]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for c in cast(_Convs, self.convs):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if mask is not None:
                xt.mul_(mask)
            x = _conv(c, xt).add_(x)
        return x

    def forward_fused(self, x: torch.Tensor, run: torch.Tensor, tmp: torch.Tensor, hid: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without a mask, into the buffer ``run`` (the result), with ``tmp``
        (``hid`` is unused: these blocks have one convolution per step)."""
        for j, c in enumerate(cast(_Convs, self.convs)):
            torch.ops.aten.leaky_relu.out(x if j == 0 else run, LRELU_SLOPE, out=tmp)
            if j == 0:
                run.copy_(x)
            fused.conv_sum_(run, c, tmp)
        return run


class SourceModule(nn.Module):
    """``SourceModuleHnNSF`` with ``harmonic_num = 0``: only its ``Linear(1, 1)`` has weights."""

    def __init__(self) -> None:
        super().__init__()
        self.l_linear = nn.Linear(1, 1)

    def forward(self, excitation: torch.Tensor) -> torch.Tensor:
        """``[B, 1, N]`` sine excitation -> ``tanh(l_linear(.))``, same shape."""
        e = excitation.to(self.l_linear.weight.dtype)
        return torch.tanh(e * self.l_linear.weight[0, 0] + self.l_linear.bias[0])


class HiFiGAN(nn.Module):
    """RVC's ``Generator`` (no pitch) or ``GeneratorNSF`` (with the sine source)."""

    def __init__(self, arch: Arch, nsf: bool) -> None:
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
            self.m_source = SourceModule()
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
                weight_normed(nn.ConvTranspose1d(c0 // (2**i), ch, k, u, padding=pad, output_padding=out_pad))
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
        #: context frames a decoder window needs on each side (see :func:`decoder_margin_frames`)
        self.margin_frames = decoder_margin_frames(arch)
        #: unmasked CPU calls take the fused oneDNN path (:meth:`_forward_fused`); False forces the plain one
        self.fused_cpu = True
        #: also prepack the resblock weights for oneDNN (see :mod:`.fused`; takes effect at :meth:`prepare`)
        self.prepack_all = False

    def prepare(self) -> None:
        """Lay the convolution weights out channels-last (same values, see :func:`_to_channels_last_1d`),
        drop the oneDNN copies of earlier weights and prepack those the fused CPU path takes
        prepacked (:meth:`_prepacked_convs`); call it after changing weights in place through ``.data``."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                m.weight.data = _to_channels_last_1d(m.weight.data)
                m.__dict__.pop(fused.PACKED_ATTR, None)
        if self.fused_cpu and fused.available(self.conv_pre.weight):  # CPU, float32/bfloat16, oneDNN
            # now, while memory is quiet, rather than inside the first decoder call at its peak
            for m in self._prepacked_convs():
                fused.packed_weight(m)

    def _prepacked_convs(self) -> list[nn.Conv1d]:
        """The convolutions whose weights the fused CPU path hands oneDNN prepacked
        (:mod:`.fused`): the noise convolutions, and with :attr:`prepack_all` the resblocks'."""
        convs: list[nn.Conv1d] = list(cast(_Convs, self.noise_convs)) if self.nsf else []
        if self.prepack_all:
            for block in self.resblocks:
                for name in ("convs1", "convs2", "convs"):
                    convs.extend(getattr(block, name, ()))
        return convs

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
        if lengths is None and self.fused_cpu and x.dtype in _FUSED_DTYPES and fused.available(x):
            return self._forward_fused(x, g, source)
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
        for i, up in enumerate(cast(_ConvTs, self.ups)):
            F.leaky_relu_(x, LRELU_SLOPE)
            m_in = mask_at(factor)
            if m_in is not None:
                x.mul_(m_in)
            x = _conv_transpose(up, x)
            factor *= self.rates[i]
            if src is not None:
                x.add_(_conv(cast(_Convs, self.noise_convs)[i], src))
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


    def _forward_fused(self, x: torch.Tensor, g: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward` without a mask on a CPU: the same arithmetic, each convolution adding
        into its destination in one oneDNN call (:mod:`.fused`), with four activation buffers
        per call reused by every layer."""
        x = _conv(self.conv_pre, _as_2d(x)).add_(_conv(self.cond, _as_2d(g)))
        src = _as_2d(source) if source is not None else None
        b, t = x.shape[0], x.shape[-1]
        ups = cast(_ConvTs, self.ups)
        sizes, factor = [], 1
        for i, rate in enumerate(self.rates):
            factor *= rate
            sizes.append(ups[i].out_channels * t * factor)
        ws = fused.Workspace(4, b * max(sizes), x.dtype, x.device)
        resblocks = cast("Sequence[_ResBlock1 | _ResBlock2]", self.resblocks)
        for i, up in enumerate(ups):
            F.leaky_relu_(x, LRELU_SLOPE)
            x = _conv_transpose(up, x)
            if src is not None:
                fused.conv_sum_(x, cast(_Convs, self.noise_convs)[i], src)
            shape = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
            acc, run, tmp, hid = (ws.get(k, shape) for k in range(4))
            blocks = resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            blocks[0].forward_fused(x, acc, tmp, hid)
            for blk in blocks[1:]:
                acc.add_(blk.forward_fused(x, run, tmp, hid))
            x = acc.div_(self.num_kernels)
        F.leaky_relu_(x)  # default slope 0.01, as in the reference
        return torch.tanh_(_conv(self.conv_post, x)).squeeze(2)


def decoder_margin_frames(arch: Arch) -> int:
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


def sine_excitation(f0: torch.Tensor, sr: int, upp: int) -> torch.Tensor:
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
    sine = torch.sin(phase * (2 * math.pi)) * SINE_AMP
    voiced = (f0 > 0).to(sine.dtype)[:, :, None]
    return (sine * voiced).reshape(b, t * upp)


"""Band-limited resampling with a Kaiser-windowed sinc kernel, as RefineGAN's f0 branch uses it.

Applio's RefineGAN downsamples the features of its f0 branch with
``torchaudio.functional.resample(x, orig_freq, new_freq, lowpass_filter_width=64,
rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser",
beta=14.769656459379492)``. This module computes the same thing in plain PyTorch,
in the same way, so that the results agree to float rounding:

* the rates are reduced by their gcd (only their ratio matters);
* the kernel is built in the waveform's dtype: with ``base = min(orig, new) * rolloff``
  and ``width = ceil(lowpass_filter_width * orig / base)``, phase ``j`` (``0 <= j < new``)
  of the kernel at tap ``i`` (``-width <= i < width + orig``) is
  ``sinc(pi * base * t) * kaiser(t) * base / orig`` with ``t = i / orig - j / new``,
  ``t * base`` clamped to ``[-lpw, lpw]`` and ``kaiser = I0(beta * sqrt(1 - (t*base/lpw)^2)) / I0(beta)``
  (``beta`` rounded to float32 first, as torchaudio's ``torch.tensor(beta)`` does);
* every channel is zero-padded by ``width`` on the left and ``width + orig`` on the
  right, convolved (``conv1d``, stride ``orig``) and cropped to ``ceil(new * n / orig)``.

Output sample ``k`` reads input samples ``k * orig / new - width ... + width + orig``
(reduced rates), which bounds the receptive field that windowed decoding must respect.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["LOWPASS_FILTER_WIDTH", "ROLLOFF", "BETA", "kaiser_kernel", "kernel_width", "resample"]

#: Zero crossings of the sinc on each side of the kernel centre.
LOWPASS_FILTER_WIDTH = 64
#: Cut-off as a fraction of the lower Nyquist rate.
ROLLOFF = 0.9475937167399596
#: Kaiser window shape parameter.
BETA = 14.769656459379492


def _reduce(orig: int, new: int) -> tuple[int, int]:
    if orig <= 0 or new <= 0:
        raise ValueError(f"resampling rates must be positive, got {orig} -> {new}")
    g = math.gcd(int(orig), int(new))
    return int(orig) // g, int(new) // g


def kernel_width(orig: int, new: int) -> int:
    """Taps of context on each side of the kernel for ``orig -> new`` (rates reduced first)."""
    orig, new = _reduce(orig, new)
    return math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))


def kaiser_kernel(
    orig: int, new: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, int]:
    """``(kernel [new, 1, 2*width + orig], width)`` for ``orig -> new``, computed in ``dtype``.

    The arithmetic follows torchaudio's ``sinc_interp_kaiser`` kernel step by step
    (same operations, same order, same dtype), so the kernel is bit-identical to it.
    """
    orig, new = _reduce(orig, new)
    lpw = LOWPASS_FILTER_WIDTH
    base = min(orig, new) * ROLLOFF
    width = math.ceil(lpw * orig / base)
    idx = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + idx
    t = t * base
    t = t.clamp(-lpw, lpw)
    beta = torch.tensor(BETA, dtype=torch.float32, device=t.device)
    window = torch.i0(beta * torch.sqrt(1 - (t / lpw) ** 2)) / torch.i0(beta)
    t = t * math.pi
    scale = base / orig
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel = kernel * (window * scale)
    return kernel, width


def resample(x: torch.Tensor, orig: int, new: int, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Resample the last axis of ``x`` from rate ``orig`` to ``new`` (``[..., n] -> [..., ceil(new*n/orig)]``).

    ``kernel`` may be passed from a cache (it must be :func:`kaiser_kernel` of the same
    rates, dtype and device); otherwise it is built here.
    """
    if not x.is_floating_point():
        raise TypeError(f"resample needs a floating point tensor, got {x.dtype}")
    o, n_ = _reduce(orig, new)
    if o == n_:
        return x
    if kernel is None:
        kernel, width = kaiser_kernel(o, n_, x.dtype, x.device)
    else:
        width = (kernel.shape[-1] - o) // 2
    shape = x.shape
    length = shape[-1]
    flat = F.pad(x.reshape(-1, length), (width, width + o))
    out = F.conv1d(flat[:, None], kernel, stride=o)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = -(-n_ * length // o)
    return out[..., :target].reshape(*shape[:-1], target)

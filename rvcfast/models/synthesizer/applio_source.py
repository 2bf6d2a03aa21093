"""The harmonic sine source of Applio's MRF HiFi-GAN and RefineGAN decoders.

Both decoders share Applio's ``SineGenerator`` (``hifigan_mrf.py`` / ``refinegan.py``),
which differs from RVC's NSF source used by the HiFi-GAN decoder (:mod:`.hifigan`):

* f0 is brought to the output rate first -- MRF repeats each frame (``nn.Upsample``,
  nearest), RefineGAN interpolates linearly (``F.interpolate``, ``align_corners=False``);
* per sample and harmonic ``h`` (``f_h = f0 * (h + 1)``): ``rad = (f_h / sr) % 1``; a random
  initial phase is added to the first sample of every overtone (the fundamental's is 0);
  the phase is the running sum of ``rad``, from which 1 is subtracted at every sample
  where the running sum's fractional part wraps, and the sine is
  ``0.1 * sin(2 * pi * phase)``;
* voiced samples (upsampled ``f0 > 0``) keep the sine plus noise of std 0.003, unvoiced
  samples are noise of std ``0.1 / 3`` only.

The running sums are accumulated in float64 and rounded to float32, exactly what
PyTorch's CPU ``cumsum`` does for float32 tensors, so the result is the reference's to
the last bit on a CPU (and more accurate than a float32 scan elsewhere). With
``gens=None`` every random draw is off (initial phases 0, no additive noise), the
deterministic mode of the golden fixtures.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["SINE_AMP", "NOISE_STD", "upsample_f0", "harmonic_sines", "source_signal"]

#: Amplitude of the sine excitation.
SINE_AMP = 0.1
#: Standard deviation of the additive noise on voiced samples.
NOISE_STD = 0.003


def upsample_f0(f0: torch.Tensor, upp: int, mode: str) -> torch.Tensor:
    """``[B, T]`` frame f0 -> ``[B, T * upp]`` sample f0 (float32), as the reference does it.

    ``mode="nearest"``: ``F.interpolate(scale_factor=upp)`` (MRF's ``nn.Upsample``);
    ``mode="linear"``: ``F.interpolate(size=T * upp, mode="linear")`` (RefineGAN).
    """
    x = f0.float()[:, None, :]
    if mode == "nearest":
        return F.interpolate(x, scale_factor=float(upp), mode="nearest")[:, 0, :]
    if mode == "linear":
        return F.interpolate(x, size=x.shape[-1] * upp, mode="linear")[:, 0, :]
    raise ValueError(f"mode must be 'nearest' or 'linear', got {mode!r}")


def _cumsum64(x: torch.Tensor) -> torch.Tensor:
    """Running sum over axis 1, accumulated in float64, rounded to float32."""
    return torch.cumsum(x, dim=1, dtype=torch.float64).to(torch.float32)


def harmonic_sines(
    f0: torch.Tensor,
    sr: int,
    harmonics: int,
    gens: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Applio's ``SineGenerator`` output ``[B, N, harmonics + 1]`` (float32) for sample-rate f0 ``[B, N]``.

    ``gens`` (one generator or ``None`` = global RNG per item) switches on the random
    initial phases of the overtones and the additive noise; ``None`` draws nothing.
    """
    f0 = f0.float()
    b, n = f0.shape
    dim = harmonics + 1
    buf = f0[:, :, None] * torch.arange(1, dim + 1, device=f0.device, dtype=torch.float32)
    buf[:, :, 0] = f0
    rad = (buf / sr) % 1
    if gens is not None:
        for i, gen in enumerate(gens):
            ini = _rand((dim,), gen, f0.device)
            ini[0] = 0
            rad[i, 0, :] = rad[i, 0, :] + ini
    wrapped = _cumsum64(rad) % 1
    shift = torch.zeros_like(rad)
    shift[:, 1:, :] = ((wrapped[:, 1:, :] - wrapped[:, :-1, :]) < 0) * -1.0
    sines = torch.sin(_cumsum64(rad + shift) * 2 * math.pi) * SINE_AMP
    uv = (f0 > 0).to(torch.float32)[:, :, None]
    if gens is None:
        return sines * uv
    amp = uv * NOISE_STD + (1 - uv) * SINE_AMP / 3
    noise = torch.stack([_randn((n, dim), gen, f0.device) for gen in gens])
    return sines * uv + amp * noise


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if gen is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _randn(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if gen is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=gen, device=gen.device).to(device)


def source_signal(
    pitchf: torch.Tensor,
    lengths: torch.Tensor | None,
    *,
    upp: int,
    sr: int,
    mode: str,
    harmonics: int,
    merge: Callable[[torch.Tensor], torch.Tensor],
    gens: list[torch.Generator | None] | None,
) -> torch.Tensor:
    """The merged source ``[B, 1, T * upp]``: f0 upsampled (``mode``), :func:`harmonic_sines`, ``merge``.

    ``merge`` maps ``[B', N, harmonics + 1]`` sines to ``[B', N, 1]`` (the decoder's
    ``Linear`` + ``tanh``). With ``lengths`` (a padded batch) every item is computed on
    its own valid frames, exactly as a solo run (the linear interpolation holds the last
    valid frame, and the noise is drawn for the valid samples only); its padding is 0.
    """
    b, t = pitchf.shape
    if lengths is None or bool((lengths == t).all()):
        sines = harmonic_sines(upsample_f0(pitchf, upp, mode), sr, harmonics, gens)
        return merge(sines).transpose(1, 2)
    parts = []
    for i in range(b):
        n = int(lengths[i])
        f0 = upsample_f0(pitchf[i : i + 1, :n], upp, mode)
        sines = harmonic_sines(f0, sr, harmonics, None if gens is None else [gens[i]])
        parts.append(merge(sines).transpose(1, 2)[0])
    out = parts[0].new_zeros(b, 1, t * upp)
    for i, part in enumerate(parts):
        out[i, :, : part.shape[-1]] = part
    return out

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
the last bit on a CPU (and more accurate than a float32 scan elsewhere). The scan runs
:data:`SCAN_SAMPLES` samples at a time, carrying its running sums from step to step (the
same sums to the last bit), so a long segment needs its output plus one step's overtones
rather than ~320 bytes per output sample (700 MB for 45 s at 48 kHz with 8 overtones). With
``gens=None`` every random draw is off (initial phases 0, no additive noise), the
deterministic mode of the golden fixtures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["SINE_AMP", "NOISE_STD", "SCAN_SAMPLES", "upsample_f0", "harmonic_sines", "source_signal"]

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


#: Output samples per step of the phase scan: the float64 running sums and the overtones
#: (``[B, n, harmonics + 1]``) are held for one step at a time, not for the whole item.
SCAN_SAMPLES = 1 << 16


def _cumsum64(x: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
    """Running sum over axis 1 continuing from ``carry`` (``[B, 1, D]`` float64, the sum so far),
    accumulated in float64; returns the float64 sums (``carry`` not included).

    ``carry`` enters as the first term of the scan, so the sums are those of one scan over
    the whole signal, to the last bit, wherever the signal is cut into steps.
    """
    return torch.cumsum(torch.cat([carry, x.double()], dim=1), dim=1)[:, 1:]


class _PhaseScan:
    """Applio's ``SineGenerator`` phase, computed step by step over time (see :func:`harmonic_sines`).

    Holds, per item and overtone, the running sum of ``rad``, the last wrapped phase and
    the running sum of ``rad + shift``, so that consecutive calls of :meth:`step` continue
    one scan exactly.
    """

    def __init__(self, b: int, dim: int, device: torch.device) -> None:
        self.sum_rad = torch.zeros(b, 1, dim, dtype=torch.float64, device=device)
        self.sum_phase = torch.zeros(b, 1, dim, dtype=torch.float64, device=device)
        self.last_wrapped: torch.Tensor | None = None  # float32 [B, 1, D], None before the first sample

    def step(self, rad: torch.Tensor) -> torch.Tensor:
        """``rad`` ``[B, n, D]`` (float32) of the next ``n`` samples -> their ``sin`` argument's phase (float32)."""
        sums = _cumsum64(rad, self.sum_rad)
        self.sum_rad = sums[:, -1:]
        wrapped = sums.to(torch.float32) % 1
        del sums
        # shift = -1 where the wrapped running sum drops (its fractional part wrapped), 0 elsewhere
        if self.last_wrapped is None:  # the first sample has no predecessor: no shift
            first, prev = 1, wrapped[:, :-1]
        else:
            first, prev = 0, torch.cat([self.last_wrapped, wrapped[:, :-1]], dim=1)
        adj = rad.clone()
        adj[:, first:] += (wrapped[:, first:] - prev < 0) * -1.0
        self.last_wrapped = wrapped[:, -1:]
        del wrapped, prev
        phase = _cumsum64(adj, self.sum_phase)
        self.sum_phase = phase[:, -1:]
        return phase.to(torch.float32)


def _harmonic_steps(
    f0: torch.Tensor,
    sr: int,
    harmonics: int,
    gens: list[torch.Generator | None] | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`harmonic_sines` in steps of :data:`SCAN_SAMPLES`: ``(start sample, [B, n, D] sines)``."""
    f0 = f0.float()
    b, n = f0.shape
    dim = harmonics + 1
    mult = torch.arange(1, dim + 1, device=f0.device, dtype=torch.float32)
    scan = _PhaseScan(b, dim, f0.device)
    ini = None
    if gens is not None:  # random initial phases of the overtones (the fundamental's is 0)
        ini = torch.stack([_rand((dim,), gen, f0.device) for gen in gens])
        ini[:, 0] = 0
    for s0 in range(0, n, SCAN_SAMPLES):
        f = f0[:, s0 : s0 + SCAN_SAMPLES]
        buf = f[:, :, None] * mult
        buf[:, :, 0] = f
        rad = (buf / sr) % 1
        del buf
        if ini is not None and s0 == 0:
            rad[:, 0, :] = rad[:, 0, :] + ini
        sines = torch.sin(scan.step(rad) * 2 * math.pi) * SINE_AMP
        del rad
        uv = (f > 0).to(torch.float32)[:, :, None]
        if gens is None:
            yield s0, sines * uv
        else:
            amp = uv * NOISE_STD + (1 - uv) * SINE_AMP / 3
            noise = torch.stack([_randn((f.shape[1], dim), gen, f0.device) for gen in gens])
            yield s0, sines * uv + amp * noise


def harmonic_sines(
    f0: torch.Tensor,
    sr: int,
    harmonics: int,
    gens: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Applio's ``SineGenerator`` output ``[B, N, harmonics + 1]`` (float32) for sample-rate f0 ``[B, N]``.

    ``gens`` (one generator or ``None`` = global RNG per item) switches on the random
    initial phases of the overtones and the additive noise; ``None`` draws nothing. The
    additive noise is drawn :data:`SCAN_SAMPLES` samples at a time.
    """
    return torch.cat([sines for _, sines in _harmonic_steps(f0, sr, harmonics, gens)], dim=1)


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
        return _merged(upsample_f0(pitchf, upp, mode), sr, harmonics, merge, gens)
    parts = []
    for i in range(b):
        n = int(lengths[i])
        f0 = upsample_f0(pitchf[i : i + 1, :n], upp, mode)
        parts.append(_merged(f0, sr, harmonics, merge, None if gens is None else [gens[i]])[0])
    out = parts[0].new_zeros(b, 1, t * upp)
    for i, part in enumerate(parts):
        out[i, :, : part.shape[-1]] = part
    return out


def _merged(
    f0: torch.Tensor,
    sr: int,
    harmonics: int,
    merge: Callable[[torch.Tensor], torch.Tensor],
    gens: list[torch.Generator | None] | None,
) -> torch.Tensor:
    """Sample-rate f0 ``[B, N]`` -> ``merge`` of its :func:`harmonic_sines` as ``[B, 1, N]``,
    one scan step at a time (memory: the output plus one step's overtones)."""
    out: torch.Tensor | None = None
    for s0, sines in _harmonic_steps(f0, sr, harmonics, gens):
        part = merge(sines).transpose(1, 2)
        if out is None:
            out = part.new_empty(f0.shape[0], 1, f0.shape[1])
        out[:, :, s0 : s0 + part.shape[-1]] = part
    assert out is not None
    return out

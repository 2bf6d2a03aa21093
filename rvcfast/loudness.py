"""Loudness normalisation of the output (the ``loudness`` parameter).

Converted voices often come out quieter or louder than their input (RVC WebUI #40, #956,
#1139); ``rms_mix_rate`` follows the input's envelope, this sets the overall level.
Loudness is the integrated, gated loudness of ITU-R BS.1770-4 (K-weighting, 400 ms blocks,
absolute gate at -70 LUFS, relative gate 10 LU below), measured with pyloudnorm, in LUFS.

* ``loudness="match"``: the output gets the input's loudness.
* ``loudness=-14.0`` (any value in :data:`LOUDNESS_RANGE`): the output gets that loudness.

A gain alone does it (no compression), and the output peak guard (0.99) still holds after
it: where the target needs a higher peak, the output is as loud as the peak allows and a
warning says so. Audio shorter than one 400 ms block, or silent (below the absolute gate),
has no measurable loudness and is left as it is, with a warning.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .constants import OUTPUT_PEAK

__all__ = ["LOUDNESS_RANGE", "MATCH", "integrated_loudness", "normalize_loudness"]

#: Loudness targets accepted, in LUFS (-70 is BS.1770's absolute gate).
LOUDNESS_RANGE = (-70.0, 0.0)

#: The ``loudness`` value that gives the output its input's loudness.
MATCH = "match"

_BLOCK_SECONDS = 0.4  # BS.1770's gating block


def integrated_loudness(audio: np.ndarray, rate: int) -> float | None:
    """The integrated loudness of ``audio`` (mono, or ``[samples, channels]``: BS.1770 sums the
    channels' weighted power) in LUFS; ``-inf`` when it is silent (every block below the
    -70 LUFS gate), ``None`` when it is shorter than one 400 ms block.

    Up to 5 channels are weighted as BS.1770's L, R, C, Ls, Rs (1, 1, 1, 1.41, 1.41); more
    channels have no standard layout, so each is weighted 1.
    """
    import pyloudnorm

    x = np.asarray(audio, dtype=np.float64)
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[1] < 1):
        raise ValueError(f"integrated_loudness expects mono or [samples, channels] audio, got shape {x.shape}")
    if x.shape[0] <= int(round(_BLOCK_SECONDS * rate)):
        return None
    meter = pyloudnorm.Meter(int(rate))
    if x.ndim == 1 or x.shape[1] <= 5:
        return float(meter.integrated_loudness(x))
    return _unit_weighted_loudness(meter, x)


def _unit_weighted_loudness(meter: Any, x: np.ndarray) -> float:
    """BS.1770-4 gated loudness of ``[samples, channels]`` with every channel weighted 1 (what
    pyloudnorm computes for up to 3 channels; it refuses more than 5): its K-weighting filters,
    its 400 ms blocks at 75 % overlap, the -70 LUFS and relative (-10 LU) gates."""
    rate = float(meter.rate)
    power = np.zeros(x.shape[0], dtype=np.float64)  # the K-weighted power summed over the channels
    for c in range(x.shape[1]):
        y = x[:, c].copy()
        for stage in meter._filters.values():  # noqa: SLF001 - the meter's own K-weighting
            y = stage.apply_filter(y)
        power += y * y
    cumulative = np.concatenate(([0.0], np.cumsum(power)))
    # pyloudnorm < 0.2 has no `overlap` attribute: its meter always overlaps blocks by 75 %
    block, step = _BLOCK_SECONDS, 1.0 - getattr(meter, "overlap", 0.75)
    n_blocks = int(np.round((x.shape[0] / rate - block) / (block * step))) + 1
    j = np.arange(n_blocks)
    lower = (block * (j * step) * rate).astype(np.int64)
    upper = np.minimum((block * (j * step + 1) * rate).astype(np.int64), x.shape[0])
    z = (cumulative[upper] - cumulative[lower]) / (block * rate)
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10.0 * np.log10(z)
        gated = z[loudness >= -70.0]
        if gated.size == 0:
            return -math.inf
        relative = -0.691 + 10.0 * np.log10(gated.mean()) - 10.0
        kept = z[(loudness > relative) & (loudness > -70.0)]
        return float(-0.691 + 10.0 * np.log10(kept.mean())) if kept.size else -math.inf


def normalize_loudness(
    audio: np.ndarray, rate: int, target: float, label: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """``audio`` (float32, mono or ``[samples, channels]``) scaled to the loudness ``target`` in
    LUFS (one gain for every channel), and warnings.

    The peak guard applies after the gain: the peak never exceeds 0.99. Audio whose
    loudness cannot be measured (too short, silent) comes back unchanged with a warning.
    """
    who = f"{label}: " if label else ""
    out = np.asarray(audio, dtype=np.float32)
    if out.size and not (np.isfinite(out.min()) and np.isfinite(out.max())):  # NaN propagates through min/max
        # a diverging model or effect, not silence (BS.1770's gate drops NaN blocks: it would read as silent)
        return out, [f"{who}loudness not normalised: the output holds NaN or infinite samples"]
    measured = integrated_loudness(out, rate)
    if measured is None or not math.isfinite(measured):
        why = "shorter than 0.4 s" if measured is None else "silent"
        return out, [f"{who}loudness not normalised: the output is {why}, its loudness cannot be measured"]
    gain = 10.0 ** ((float(target) - measured) / 20.0)
    peak = float(np.abs(out).max()) * gain
    warnings: list[str] = []
    if peak > OUTPUT_PEAK:
        gain *= OUTPUT_PEAK / peak
        reached = measured + 20.0 * math.log10(gain)
        warnings.append(
            f"{who}loudness {target:.1f} LUFS would need a peak of {20 * math.log10(peak):+.1f} dBFS: "
            f"the output is {reached:.1f} LUFS, as loud as the 0.99 peak limit allows"
        )
    return (out * np.float32(gain)).astype(np.float32, copy=False), warnings

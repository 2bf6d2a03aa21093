"""F0 post-processing shared by every backend (RVC ``get_f0`` semantics).

Order matters and follows the reference: key shift, then coarse quantisation.
Arrays keep the dtype the backend produced (float64 for RMVPE, float32 for
crepe/fcpe), because the reference computes in that dtype.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "F0_MEL_MIN",
    "F0_MEL_MAX",
    "shift_f0",
    "coarse_pitch",
    "fit_length",
    "interpolate_unvoiced",
    "postprocess",
]

F0_MIN = 50.0
F0_MAX = 1100.0
F0_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
F0_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)


def shift_f0(f0: np.ndarray, semitones: float) -> np.ndarray:
    """Transpose by ``semitones`` (multiply by ``2 ** (semitones / 12)``); 0 Hz stays 0."""
    return f0 * pow(2, semitones / 12)


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """RVC's 1..255 pitch bins on the mel scale; unvoiced (and < 50 Hz) frames give 1."""
    f0_mel = 1127 * np.log(1 + f0 / 700)
    voiced = f0_mel > 0
    f0_mel[voiced] = (f0_mel[voiced] - F0_MEL_MIN) * 254 / (F0_MEL_MAX - F0_MEL_MIN) + 1
    f0_mel[f0_mel <= 1] = 1
    f0_mel[f0_mel > 255] = 255
    return np.rint(f0_mel).astype(np.int64)


def fit_length(f0: np.ndarray, n_frames: int) -> np.ndarray:
    """Trim to ``n_frames``, or zero-pad symmetrically like RVC pads Praat's shorter track."""
    if f0.shape[0] >= n_frames:
        return f0[:n_frames]
    missing = n_frames - f0.shape[0]
    left = (missing + 1) // 2
    return np.pad(f0, (left, missing - left))


def interpolate_unvoiced(f0: np.ndarray) -> np.ndarray:
    """Fill unvoiced frames by linear interpolation over voiced ones (RVC 2026 ``main`` behaviour)."""
    voiced = np.nonzero(f0 > 0)[0]
    if voiced.size == 0:
        return f0
    return np.interp(np.arange(f0.shape[0]), voiced, f0[voiced]).astype(f0.dtype)


def postprocess(f0: np.ndarray, n_frames: int, semitones: float = 0.0, fill_unvoiced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(coarse int64, pitchf float32)`` of exactly ``n_frames`` frames from a backend's raw track."""
    f0 = np.array(f0, copy=True)
    if fill_unvoiced:
        f0 = interpolate_unvoiced(f0)
    f0 = shift_f0(f0, semitones)
    pitchf = f0.copy()
    coarse = coarse_pitch(f0)
    coarse = fit_length(coarse, n_frames)
    coarse[coarse == 0] = 1  # padded frames are unvoiced
    return coarse, fit_length(pitchf, n_frames).astype(np.float32)

"""F0 post-processing shared by every backend (RVC / Applio ``get_f0`` semantics).

Order follows the reference: optional unvoiced fill, then exactly one of
autotune, proposed-pitch shift or plain key shift, then coarse quantisation,
then the track is fitted to the frame count the synthesiser needs.

Arrays keep the dtype the backend produced (float64 for RMVPE, float32 for
crepe/fcpe) because the reference computes in that dtype: every scalar that
meets the track is a Python ``float`` (a NumPy 2 "weak" scalar), so a float32
track stays float32 through the arithmetic and gives the reference's values
bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..constants import F0_MAX, F0_MIN
from ..errors import ParameterError

__all__ = [
    "F0_MEL_MIN",
    "F0_MEL_MAX",
    "AUTOTUNE_NOTES",
    "PROPOSED_PITCH_LIMIT",
    "shift_f0",
    "autotune_f0",
    "proposed_pitch_offset",
    "proposed_pitch_offset_of_channels",
    "adjust_f0",
    "coarse_pitch",
    "fit_length",
    "interpolate_unvoiced",
    "postprocess",
]

F0_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
F0_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)

#: Applio's autotune targets: the 54 equal-tempered notes G1 (49.00 Hz) .. C6 (1046.50 Hz),
#: Applio's two-decimal table (the usual published values: E5 is 659.25, although
#: 440 * 2 ** (-5 / 12) = 659.2551 would round to 659.26), in ascending order (the order
#: decides ties: the lower note wins).
AUTOTUNE_NOTES: tuple[float, ...] = (
    49.00, 51.91, 55.00, 58.27, 61.74,
    65.41, 69.30, 73.42, 77.78, 82.41, 87.31, 92.50, 98.00, 103.83, 110.00, 116.54, 123.47,
    130.81, 138.59, 146.83, 155.56, 164.81, 174.61, 185.00, 196.00, 207.65, 220.00, 233.08, 246.94,
    261.63, 277.18, 293.66, 311.13, 329.63, 349.23, 369.99, 392.00, 415.30, 440.00, 466.16, 493.88,
    523.25, 554.37, 587.33, 622.25, 659.25, 698.46, 739.99, 783.99, 830.61, 880.00, 932.33, 987.77,
    1046.50,
)  # fmt: skip

#: Largest automatic transposition (semitones, either way) of the proposed-pitch shift.
PROPOSED_PITCH_LIMIT = 12

_AUTOTUNE_CHUNK = 16384  # frames per distance matrix (54 notes each)


def _as_track(f0: np.ndarray) -> np.ndarray:
    """A float copy of ``f0`` (integer input becomes float64; float dtypes are kept)."""
    track = np.array(f0, copy=True)
    if not np.issubdtype(track.dtype, np.floating):
        track = track.astype(np.float64)
    return track


def _check_raw_track(track: np.ndarray) -> None:
    """:class:`ParameterError` unless ``track`` is a 1-D track of finite values >= 0 Hz."""
    if track.ndim != 1:
        raise ParameterError(f"the F0 track must be 1-D (one value per frame), got shape {track.shape}")
    bad = int((~np.isfinite(track)).sum()) + int((track < 0).sum())
    if bad:
        raise ParameterError(
            f"the F0 track holds {bad} NaN, infinite or negative value(s) (unvoiced frames are 0 Hz)"
        )


def _finite(name: str, value: float) -> float:
    # a bool or a text is refused, as ConversionParams refuses them: ``proposed_pitch=True``
    # (Applio's switch) would otherwise be a target of 1 Hz, i.e. a silent octave down
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ParameterError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        raise ParameterError(f"{name} must be finite, got an integer beyond the float range") from None
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ParameterError(f"{name} must be finite, got {value!r}")
    return number


def shift_f0(f0: np.ndarray, semitones: float) -> np.ndarray:
    """Transpose by ``semitones`` (multiply by ``2 ** (semitones / 12)``); 0 Hz stays 0.

    ``semitones`` must be a finite number (:class:`ParameterError` otherwise: a NaN shift
    would turn every voiced frame into NaN) whose factor ``2 ** (semitones / 12)`` is a float."""
    semitones = _finite("semitones", semitones)
    try:
        factor = pow(2, semitones / 12)
    except OverflowError:  # above ~12000 semitones: Python's float overflows before NumPy sees it
        raise ParameterError(f"semitones: a key shift of {semitones:g} semitones is beyond the float range") from None
    return f0 * factor


def autotune_f0(f0: np.ndarray, strength: float) -> np.ndarray:
    """Pull every frame toward the nearest of :data:`AUTOTUNE_NOTES` by ``strength`` (0..1).

    Applio's rule, frame by frame in the track's dtype: ``note`` = the note with the
    smallest ``|note - f|`` (the lower note on a tie), result ``f + (note - f) * strength``.
    Unvoiced frames (0 Hz) are pulled toward 49 Hz too, i.e. they become ``49 * strength``.
    """
    strength = _finite("autotune strength", strength)
    track = np.asarray(f0)
    if not np.issubdtype(track.dtype, np.floating):
        track = track.astype(np.float64)
    notes = np.asarray(AUTOTUNE_NOTES, dtype=track.dtype)
    flat = track.reshape(-1)
    nearest = np.empty_like(flat)
    for start in range(0, flat.shape[0], _AUTOTUNE_CHUNK):
        part = flat[start : start + _AUTOTUNE_CHUNK]
        # argmin returns the first minimum: the lower note on ties, NaN rows -> 49 Hz, as min(key=...) does
        choice = np.argmin(np.abs(notes[None, :] - part[:, None]), axis=1)
        nearest[start : start + part.shape[0]] = notes[choice]
    return (flat + (nearest - flat) * strength).reshape(track.shape)


def proposed_pitch_offset(f0: np.ndarray, threshold: float) -> int:
    """Semitones Applio's "proposed pitch" adds to bring the track's median to ``threshold`` Hz.

    The median is taken over the whole track with unvoiced frames linearly filled
    from their voiced neighbours (ends held); the offset is
    ``round(12 * log2(threshold / median))`` clamped to ±12. Fewer than two voiced
    frames (or a non-positive median) give 0.
    """
    return proposed_pitch_offset_of_channels([f0], threshold)


def proposed_pitch_offset_of_channels(tracks: Sequence[np.ndarray], threshold: float) -> int:
    """:func:`proposed_pitch_offset` of an input's channels together (``channels="each"``): one
    key for all of them, or a stereo input's channels would come out in different keys. Each
    track's unvoiced frames are filled from its own voiced neighbours and the median is taken
    over the frames of every track with at least two voiced frames; one track gives
    :func:`proposed_pitch_offset`'s answer."""
    threshold = _finite("proposed_pitch threshold", threshold)
    if threshold <= 0:
        raise ParameterError(f"proposed_pitch threshold must be > 0 Hz, got {threshold!r}")
    filled = []
    for f0 in tracks:
        track = np.asarray(f0)
        voiced = np.nonzero(track > 0)[0]
        if voiced.size >= 2:
            filled.append(np.interp(np.arange(track.shape[0]), voiced, track[voiced]))
    if not filled:
        return 0
    median = float(np.median(np.concatenate(filled)))
    if not median > 0:  # also catches NaN
        return 0
    raw = 12 * np.log2(threshold / median)
    if not np.isfinite(raw):
        return PROPOSED_PITCH_LIMIT if raw > 0 else -PROPOSED_PITCH_LIMIT
    return max(-PROPOSED_PITCH_LIMIT, min(PROPOSED_PITCH_LIMIT, int(np.round(raw))))


def adjust_f0(
    f0: np.ndarray,
    semitones: float = 0.0,
    *,
    autotune: float = 0.0,
    proposed_pitch: float | None = None,
) -> np.ndarray:
    """The reference's pitch adjustment of a raw track, in the track's dtype (a new array).

    Exactly one branch runs, in Applio's order:

    * ``autotune > 0``: :func:`autotune_f0` with that strength. ``semitones`` and
      ``proposed_pitch`` are ignored, as in the reference.
    * else ``proposed_pitch`` (a target in Hz): shift by
      ``semitones + proposed_pitch_offset(f0, proposed_pitch)``.
    * else: shift by ``semitones``.
    """
    semitones = _finite("semitones", semitones)
    autotune = _finite("autotune", autotune)
    if not 0.0 <= autotune <= 1.0:
        raise ParameterError(f"autotune strength must be between 0 and 1, got {autotune!r}")
    track = _as_track(f0)
    if autotune > 0:
        return autotune_f0(track, autotune)
    if proposed_pitch is not None:
        up_key = proposed_pitch_offset(track, proposed_pitch)
        return shift_f0(track, semitones + up_key)
    return shift_f0(track, semitones)


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """RVC's 1..255 pitch bins on the mel scale; unvoiced (and < 50 Hz) frames give 1.

    A NaN (or a value at or below -700 Hz, outside the mel formula) has no bin:
    :class:`ParameterError` instead of an out-of-range index for the pitch embedding.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        f0_mel = 1127 * np.log(1 + f0 / 700)
    if np.isnan(f0_mel).any():
        raise ParameterError(f"coarse pitch: the F0 track holds {int(np.isnan(f0_mel).sum())} NaN value(s)")
    voiced = f0_mel > 0
    f0_mel[voiced] = (f0_mel[voiced] - F0_MEL_MIN) * 254 / (F0_MEL_MAX - F0_MEL_MIN) + 1
    f0_mel[f0_mel <= 1] = 1
    f0_mel[f0_mel > 255] = 255
    return np.rint(f0_mel).astype(np.int64)


def _frame_count(n_frames: int) -> int:
    if isinstance(n_frames, (bool, np.bool_)) or not isinstance(n_frames, (int, np.integer)) or n_frames < 0:
        raise ParameterError(f"n_frames must be a whole number >= 0, got {n_frames!r}")
    return int(n_frames)


def fit_length(f0: np.ndarray, n_frames: int) -> np.ndarray:
    """Trim to ``n_frames``, or zero-pad symmetrically like RVC pads Praat's shorter track.

    ``n_frames`` must be an integer >= 0 (:class:`ParameterError` otherwise).
    """
    n_frames = _frame_count(n_frames)
    if f0.shape[0] >= n_frames:
        return f0[:n_frames]
    missing = n_frames - f0.shape[0]
    left = (missing + 1) // 2
    return np.pad(f0, (left, missing - left))


def interpolate_unvoiced(f0: np.ndarray) -> np.ndarray:
    """Fill unvoiced frames by linear interpolation over voiced ones (RVC 2026 ``main`` behaviour).

    A float track keeps its dtype; an integer track gives float64 (the filled values are
    not whole numbers).
    """
    f0 = _as_track(f0)
    voiced = np.nonzero(f0 > 0)[0]
    if voiced.size == 0:
        return f0
    return np.interp(np.arange(f0.shape[0]), voiced, f0[voiced]).astype(f0.dtype)


def _check_shifted_track(track: np.ndarray, semitones: float) -> None:
    """:class:`ParameterError` when the adjusted ``track`` does not fit the float32 ``pitchf``
    (a key shift of hundreds of semitones): an infinite F0 would make the NSF source NaN."""
    with np.errstate(over="ignore"):
        fits = np.isfinite(track.astype(np.float32, copy=False))
    if not fits.all():
        raise ParameterError(
            f"semitones: a key shift of {float(semitones):g} semitones takes the F0 track past the float32 range "
            f"(highest frame {float(np.max(track)):.3g} Hz)"
        )


def postprocess(
    f0: np.ndarray,
    n_frames: int,
    semitones: float = 0.0,
    *,
    autotune: float = 0.0,
    proposed_pitch: float | None = None,
    fill_unvoiced: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(coarse int64, pitchf float32)`` of exactly ``n_frames`` frames from a backend's raw track.

    ``semitones`` transposes; ``autotune`` (strength 0..1, 0 = off) snaps toward
    Applio's notes and then ignores ``semitones`` and ``proposed_pitch``, as the
    reference does; ``proposed_pitch`` (Hz, ``None`` = off) adds the automatic offset
    of :func:`proposed_pitch_offset`; ``fill_unvoiced`` first interpolates across
    unvoiced frames. All of it runs on the whole raw track (the median of the
    proposed pitch included) before the track is trimmed or zero-padded to
    ``n_frames``; padded frames are unvoiced (coarse 1, 0 Hz), even with autotune.

    ``f0`` must be 1-D, finite and non-negative (0 = unvoiced), as the
    :class:`~rvcfast.protocols.F0Extractor` contract says; anything else (a ``[1, T]``
    track, NaN, inf, negative Hz) is a :class:`ParameterError`, as is an ``n_frames``
    that is not a whole number >= 0.
    """
    n_frames = _frame_count(n_frames)
    track = _as_track(f0)
    _check_raw_track(track)
    if fill_unvoiced:
        track = interpolate_unvoiced(track)
    track = adjust_f0(track, semitones, autotune=autotune, proposed_pitch=proposed_pitch)
    _check_shifted_track(track, semitones)
    pitchf = track.copy()
    coarse = coarse_pitch(track)
    coarse = fit_length(coarse, n_frames)
    coarse[coarse == 0] = 1  # padded frames are unvoiced
    return coarse, fit_length(pitchf, n_frames).astype(np.float32)

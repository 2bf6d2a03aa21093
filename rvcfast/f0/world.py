"""WORLD pitch trackers (``harvest`` and ``dio``) through pyworld, as RVC runs them.

Both run on float64 audio at 16 kHz with a 10 ms frame period, ``f0_floor=50`` and
``f0_ceil=1100``, and refine the raw track with ``pyworld.stonemask``
(rvc.md §2.2). They return ``len(audio) // 160 + 1`` frames, frame ``i`` centred on
sample ``160 * i``; unvoiced frames are 0.

StoneMask sets every F0 at or below 40 Hz (and above ``16000 / 12`` = 1333 Hz) to 0, so
``f0_min`` must be at least 40 Hz: a lower floor finds nothing lower and only makes
Harvest slower (minutes per second of audio below a few Hz) and DIO lose voicing.

``harvest`` additionally applies RVC's ``filter_radius`` switch: when
``filter_radius > 2`` the track goes through ``scipy.signal.medfilt(f0, 3)``. The kernel
is always 3; the value is only a switch (that is what RVC does, whatever its UI says).

pyworld is a core dependency (installed as ``pyworld-prebuilt``); it is still imported
lazily so that importing :mod:`rvcfast.f0.world` never fails, and a missing or broken
install gives a :class:`~rvcfast.errors.BackendUnavailableError` that says what to do.
"""

from __future__ import annotations

from abc import abstractmethod
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, ParameterError
from .base import F0_MAX, F0_MIN, HOP_LENGTH, SAMPLE_RATE, BaseF0Extractor, as_audio16k

if TYPE_CHECKING:
    import torch

__all__ = ["HarvestExtractor", "DioExtractor"]

#: WORLD frame period used by RVC: 160 samples at 16 kHz.
FRAME_PERIOD_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE


def _import_pyworld(backend: str) -> ModuleType:
    try:
        import pyworld
    except ImportError as exc:  # pragma: no cover - pyworld is a core dependency
        raise BackendUnavailableError(
            f"the {backend!r} F0 backend needs pyworld, which could not be imported ({exc}). "
            "It is a core dependency of rvcfast: reinstall with `pip install --force-reinstall "
            "pyworld-prebuilt` (or `pip install rvcfast`)."
        ) from exc
    return pyworld


def option_number(backend: str, name: str, value: Any) -> float:
    """``value`` of the F0 option ``name`` as a float; :class:`ParameterError` naming the backend and
    the option when it is not a real number (a word, ``True``, ``None``...)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.integer, np.floating)):
        raise ParameterError(f"{backend} F0 option {name} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ParameterError(f"{backend} F0 option {name} must be a number, got {value!r}") from None


#: StoneMask, which refines every harvest/dio track, zeroes any F0 at or below this (WORLD's
#: ``kFloorF0StoneMask``): a lower ``f0_min`` cannot find lower pitches.
STONEMASK_FLOOR_HZ = 40.0


def check_f0_range(backend: str, f0_min: Any, f0_max: Any, lowest: float = 0.0) -> tuple[float, float]:
    """``(f0_min, f0_max)`` as floats with ``lowest <= f0_min < f0_max < 8000`` Hz (and
    ``f0_min > 0``); :class:`ParameterError` naming the backend otherwise."""
    f0_min = option_number(backend, "f0_min", f0_min)
    f0_max = option_number(backend, "f0_max", f0_max)
    if not (0.0 < f0_min < f0_max < SAMPLE_RATE / 2):
        raise ParameterError(
            f"{backend} F0 options need 0 < f0_min < f0_max < {SAMPLE_RATE // 2} Hz, "
            f"got f0_min={f0_min}, f0_max={f0_max}"
        )
    if f0_min < lowest:
        raise ParameterError(
            f"{backend} F0 option f0_min must be at least {lowest:g} Hz, got {f0_min:g}: StoneMask, which "
            f"refines every {backend} track, sets F0 at or below {lowest:g} Hz to unvoiced, and a lower floor "
            "only makes the tracker slower (minutes below a few Hz) or loses voiced frames"
        )
    return f0_min, f0_max


class _WorldExtractor(BaseF0Extractor):
    """Common part of :class:`HarvestExtractor` and :class:`DioExtractor`."""

    cpu_bound = True

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = "float32",
        *,
        f0_min: float = F0_MIN,
        f0_max: float = F0_MAX,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.f0_min, self.f0_max = check_f0_range(self.name, f0_min, f0_max, STONEMASK_FLOOR_HZ)
        self._pyworld = _import_pyworld(self.name)

    @abstractmethod
    def _raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The unrefined WORLD track and its frame times for float64 audio ``x``."""

    def _track(self, audio16k: Any) -> np.ndarray:
        """Raw track refined by stonemask, exactly ``len // 160 + 1`` float64 frames."""
        x = np.ascontiguousarray(as_audio16k(audio16k), dtype=np.float64)
        n_frames = len(x) // HOP_LENGTH + 1
        if len(x) == 0:
            # pyworld.harvest fails on an empty array (std::bad_array_new_length).
            return np.zeros(n_frames, dtype=np.float64)
        f0, t = self._raw(x)
        f0 = self._pyworld.stonemask(x, f0, t, SAMPLE_RATE)
        return _fit(np.asarray(f0, dtype=np.float64), n_frames)


def _fit(f0: np.ndarray, n_frames: int) -> np.ndarray:
    """Trim or zero-pad (at the end) ``f0`` to ``n_frames`` frames."""
    if len(f0) >= n_frames:
        return f0[:n_frames]
    return np.pad(f0, (0, n_frames - len(f0)))


class HarvestExtractor(_WorldExtractor):
    """WORLD Harvest + StoneMask, with RVC's optional 3-tap median filter.

    Args:
        device: accepted for interface compatibility; harvest always runs on the CPU.
        dtype: accepted for interface compatibility; harvest always runs in float64.
        filter_radius: RVC's switch: a value above 2 median-filters the track with a
            kernel of 3 (``scipy.signal.medfilt``). Default 3, as in RVC. Must be >= 0.
        f0_min: Harvest's ``f0_floor`` in Hz (RVC: 50); at least 40 (StoneMask's floor).
        f0_max: Harvest's ``f0_ceil`` in Hz (RVC: 1100).

    Harvest is slow (about 0.2x real time on one CPU core); prefer ``rmvpe`` or
    ``fcpe`` unless you need RVC's harvest output.
    """

    name = "harvest"

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = "float32",
        *,
        filter_radius: int = 3,
        f0_min: float = F0_MIN,
        f0_max: float = F0_MAX,
    ) -> None:
        if isinstance(filter_radius, bool) or not isinstance(filter_radius, (int, np.integer)):
            raise ParameterError(f"harvest F0 option filter_radius must be an integer >= 0, got {filter_radius!r}")
        if filter_radius < 0:
            raise ParameterError(f"harvest F0 option filter_radius must be an integer >= 0, got {filter_radius}")
        self.filter_radius = int(filter_radius)
        super().__init__(device=device, dtype=dtype, f0_min=f0_min, f0_max=f0_max)

    def _raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._pyworld.harvest(
            x, fs=SAMPLE_RATE, f0_ceil=self.f0_max, f0_floor=self.f0_min, frame_period=FRAME_PERIOD_MS
        )

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz per 10 ms frame (0 = unvoiced): ``len(audio16k) // 160 + 1`` float64 values."""
        f0 = self._track(audio16k)
        if self.filter_radius > 2:
            f0 = _median3(f0)
        return f0


def _median3(x: np.ndarray) -> np.ndarray:
    """``scipy.signal.medfilt(x, 3)``, as RVC filters Harvest's F0: the median of each value and
    its neighbours, zeros beyond the ends (the same values, bit for bit: a median of three
    picks one of them), without scipy's import or its warning filter, which is process-wide
    and so not safe to toggle while other threads run."""
    padded = np.concatenate(([0.0], x, [0.0])).astype(x.dtype, copy=False)
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


class DioExtractor(_WorldExtractor):
    """WORLD DIO + StoneMask (faster than Harvest, less accurate).

    Args:
        device: accepted for interface compatibility; dio always runs on the CPU.
        dtype: accepted for interface compatibility; dio always runs in float64.
        f0_min: DIO's ``f0_floor`` in Hz (default 50); at least 40 (StoneMask's floor).
        f0_max: DIO's ``f0_ceil`` in Hz (default 1100).

    pyworld's ``dio`` is always called with keyword arguments: its fifth positional
    parameter is ``channels_in_octave``, not ``frame_period``.
    """

    name = "dio"

    def _raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._pyworld.dio(
            x, fs=SAMPLE_RATE, f0_floor=self.f0_min, f0_ceil=self.f0_max, frame_period=FRAME_PERIOD_MS
        )

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz per 10 ms frame (0 = unvoiced): ``len(audio16k) // 160 + 1`` float64 values."""
        return self._track(audio16k)

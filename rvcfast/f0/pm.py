"""Praat's autocorrelation pitch tracker (``pm``) through praat-parselmouth, as RVC runs it.

parselmouth is GPL-licensed, so it is an optional extra: ``pip install "rvcfast[pm]"``.
It is imported when a :class:`PMExtractor` is built, never when this module is imported.

The call is RVC's (rvc.md §2.1)::

    parselmouth.Sound(x, 16000).to_pitch_ac(
        time_step=0.01, voicing_threshold=0.6, pitch_floor=50, pitch_ceiling=1100
    ).selected_array["frequency"]

Praat does not pad the signal, so it returns a few frames fewer than the other
trackers (about ``len/160 - 6``), centred. RVC pads them symmetrically with zeros:
``left = (p_len - n + 1) // 2`` with ``p_len = len // 160``. rvcfast uses exactly that
left pad, so the first ``len // 160`` frames are identical to RVC's ``pm`` output, and
then pads on the right to ``len // 160 + 1`` frames, the frame count every other
backend returns (the extra last frame is 0). Audio shorter than Praat's analysis window
(3 periods of ``f0_min``, 960 samples at 50 Hz) gives all-zero (unvoiced) output.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendUnavailableError, ParameterError
from .base import F0_MAX, F0_MIN, HOP_LENGTH, SAMPLE_RATE, BaseF0Extractor, as_audio16k
from .world import check_f0_range, option_number

if TYPE_CHECKING:
    import torch

__all__ = ["PMExtractor", "pad_like_rvc"]

_INSTALL_HINT = 'pm needs `pip install "rvcfast[pm]"` (praat-parselmouth)'


def _import_parselmouth() -> ModuleType:
    try:
        import parselmouth
    except ImportError as exc:
        raise BackendUnavailableError(f"{_INSTALL_HINT}; importing parselmouth failed: {exc}") from exc
    return parselmouth


def pad_like_rvc(f0: np.ndarray, n_samples: int) -> np.ndarray:
    """Pad Praat's unpadded track to ``n_samples // 160 + 1`` frames with RVC's left offset.

    The left pad is ``(n_samples // 160 - len(f0) + 1) // 2`` (RVC's rule with RVC's
    ``p_len = n_samples // 160``), the rest goes on the right; a track that is too long
    is cut at the end.
    """
    n_frames = n_samples // HOP_LENGTH + 1
    f0 = np.asarray(f0, dtype=np.float64)
    left = max(0, (n_samples // HOP_LENGTH - len(f0) + 1) // 2)
    out = np.zeros(n_frames, dtype=np.float64)
    body = f0[: max(0, n_frames - left)]
    out[left : left + len(body)] = body
    return out


class PMExtractor(BaseF0Extractor):
    """Praat autocorrelation pitch (``to_pitch_ac``) with RVC's settings and padding.

    Args:
        device: accepted for interface compatibility; Praat always runs on the CPU.
        dtype: accepted for interface compatibility; Praat always runs in float64.
        voicing_threshold: Praat's voicing threshold (RVC: 0.6).
        f0_min: Praat's ``pitch_floor`` in Hz (RVC: 50).
        f0_max: Praat's ``pitch_ceiling`` in Hz (RVC: 1100).

    Raises:
        BackendUnavailableError: praat-parselmouth is not installed
            (``pip install "rvcfast[pm]"``).
    """

    name = "pm"
    cpu_bound = True

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = "float32",
        *,
        voicing_threshold: float = 0.6,
        f0_min: float = F0_MIN,
        f0_max: float = F0_MAX,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        f0_min, f0_max = check_f0_range(self.name, f0_min, f0_max)
        threshold = option_number(self.name, "voicing_threshold", voicing_threshold)
        if not (0.0 <= threshold <= 1.0):
            raise ParameterError(f"{self.name} F0 option voicing_threshold must be in [0, 1], got {voicing_threshold}")
        self.f0_min = f0_min
        self.f0_max = f0_max
        self.voicing_threshold = threshold
        self._parselmouth = _import_parselmouth()

    @property
    def min_samples(self) -> int:
        """Shortest input Praat can analyse (3 periods of ``f0_min``); shorter input is all unvoiced."""
        return math.ceil(3 * SAMPLE_RATE / self.f0_min)

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz per 10 ms frame (0 = unvoiced): ``len(audio16k) // 160 + 1`` float64 values."""
        x = np.asarray(as_audio16k(audio16k), dtype=np.float64)
        if len(x) < self.min_samples:
            return np.zeros(len(x) // HOP_LENGTH + 1, dtype=np.float64)
        pitch = self._parselmouth.Sound(x, SAMPLE_RATE).to_pitch_ac(
            time_step=HOP_LENGTH / SAMPLE_RATE,
            voicing_threshold=self.voicing_threshold,
            pitch_floor=self.f0_min,
            pitch_ceiling=self.f0_max,
        )
        return pad_like_rvc(pitch.selected_array["frequency"], len(x))

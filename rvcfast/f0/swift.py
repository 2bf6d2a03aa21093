"""SwiftF0 pitch tracking (``swift``) through the swift-f0 package's ONNX model.

SwiftF0 (Lars Nieradzik, MIT licence, ``pip install "rvcfast[swift]"``) is a ~96k-parameter
convolutional pitch estimator shipped as a 135 KB ``model.onnx`` inside the ``swift-f0``
wheel, run by onnxruntime on the CPU. rvcfast calls the package's public API::

    detector = swift_f0.SwiftF0(threads=1, spin=False)
    result = detector.detect(x, 16000, fmin=50, fmax=1100)
    voiced = result.confidence >= 0.5

``detect`` runs the model (pitch and confidence per frame; the band ``fmin..fmax`` is an
input of the model, so it only scores pitches inside it), cuts long inputs into 30 s
windows with enough context to reproduce a single pass, and sets the confidence of frames
whose 256 samples peak below 1e-3 (digital silence) to 0. Importing ``swift_f0`` needs only
numpy and onnxruntime (its plotting and MIDI helpers import their libraries when used).

**Frames.** SwiftF0's hop is 256 samples (16 ms): ``max(1, len // 256)`` frames, frame ``i``
centred on sample ``256 * i`` (its ``timestamps`` are ``i * 256 / 16000``; a pitch step in
the input moves frame ``i``'s estimate when it crosses sample ``256 * i``). rvcfast's frames
are 10 ms apart, frame ``j`` centred on sample ``160 * j``, ``len // 160 + 1`` of them.
:func:`to_frame_grid` maps one onto the other:

* between two voiced SwiftF0 frames, the pitch is interpolated linearly in log-frequency;
* between a voiced and an unvoiced frame, the nearer frame is taken as it is (voiced with
  its own pitch, or unvoiced), the earlier one at an exact tie: a voiced pitch is never
  blended with an unvoiced 0, and voicing boundaries move by at most half a SwiftF0 frame;
* before the first and after the last SwiftF0 frame centre (the last ``len % 256`` samples
  and up to one more hop) the nearest frame is held.

This differs from Applio's ``Swift.py`` (which interpolates the confidence, fills voiced
frames by interpolating over the voiced frames only, and repairs some subharmonic runs):
rvcfast's ``swift`` is SwiftF0 itself, resampled, not a reproduction of Applio's output.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, ParameterError
from .base import F0_MAX, F0_MIN, HOP_LENGTH, SAMPLE_RATE, BaseF0Extractor, as_audio16k
from .options import option_count, option_finite

if TYPE_CHECKING:
    import torch

__all__ = ["SwiftF0Extractor", "to_frame_grid", "NATIVE_HOP"]

_INSTALL_HINT = 'swift needs `pip install "rvcfast[swift]"` (swift-f0 and onnxruntime)'
#: SwiftF0's hop in samples at 16 kHz (16 ms).
NATIVE_HOP = 256


def _import_swift_f0() -> ModuleType:
    """``swift_f0``, checked to have the API used here (swift-f0 >= 0.3)."""
    try:
        import swift_f0
    except ImportError as exc:
        raise BackendUnavailableError(f"{_INSTALL_HINT}; importing swift_f0 failed: {exc}") from exc
    version = getattr(swift_f0, "__version__", "?")
    detector = getattr(swift_f0, "SwiftF0", None)
    detect = getattr(detector, "detect", None)
    try:
        detect_params = set(inspect.signature(detect).parameters) if callable(detect) else set()
        init_params = set(inspect.signature(detector).parameters) if callable(detector) else set()
    except (TypeError, ValueError):
        detect_params = init_params = set()
    ok = (
        {"audio", "sample_rate", "fmin", "fmax"} <= detect_params
        and {"threads", "spin"} <= init_params
        and getattr(swift_f0, "SAMPLE_RATE", None) == SAMPLE_RATE
        and abs(float(getattr(swift_f0, "FRAME_PERIOD", 0.0)) - NATIVE_HOP / SAMPLE_RATE) < 1e-12
        and hasattr(swift_f0, "FMIN")
        and hasattr(swift_f0, "FMAX")
    )
    if not ok:
        raise BackendUnavailableError(
            f"swift needs swift-f0 >= 0.3 (SwiftF0(threads=, spin=).detect(audio, sample_rate, fmin, fmax), "
            f'16 kHz, hop 256); the installed swift-f0 {version} differs: `pip install -U "rvcfast[swift]"`'
        )
    return swift_f0


def to_frame_grid(centres: np.ndarray, f0: np.ndarray, n_frames: int, hop: int = HOP_LENGTH) -> np.ndarray:
    """Resample an F0 track onto ``n_frames`` frames centred on samples ``hop * j``.

    Args:
        centres: the source frames' centres in samples, increasing (SwiftF0: ``256 * i``).
        f0: the source track in Hz, 0 (or negative) where unvoiced, one value per centre.
        n_frames: frames wanted (rvcfast: ``len(audio) // 160 + 1``).
        hop: the wanted frames' spacing in samples.

    Returns:
        float64 Hz, 0 = unvoiced. A frame between two voiced source frames gets their
        log-frequency interpolation; between a voiced and an unvoiced one, the nearer frame's
        value as it is (the earlier one at an exact tie); outside the source centres, the
        nearest end frame's value. All zeros when the source is empty.
    """
    centres = np.asarray(centres, dtype=np.float64)
    f0 = np.asarray(f0, dtype=np.float64)
    if centres.shape != f0.shape or centres.ndim != 1:
        raise ValueError(f"centres {centres.shape} and f0 {f0.shape} must be 1-D of the same length")
    out = np.zeros(int(n_frames), dtype=np.float64)
    if len(f0) == 0 or n_frames <= 0:
        return out
    t = np.arange(int(n_frames), dtype=np.float64) * hop
    right = np.searchsorted(centres, t, side="right")  # first source frame strictly after t
    lo = np.clip(right - 1, 0, len(f0) - 1)
    hi = np.clip(right, 0, len(f0) - 1)
    span = centres[hi] - centres[lo]
    w = np.divide(t - centres[lo], span, out=np.zeros_like(t), where=span > 0)
    w = np.clip(w, 0.0, 1.0)
    f_lo, f_hi = f0[lo], f0[hi]
    both = (f_lo > 0) & (f_hi > 0)
    safe_lo = np.where(both, f_lo, 1.0)
    safe_hi = np.where(both, f_hi, 1.0)
    blended = safe_lo * np.exp2(w * np.log2(safe_hi / safe_lo))  # equal neighbours give their value exactly
    blended = np.where(w == 1.0, safe_hi, blended)  # on a source centre: that frame's value itself
    nearest = np.where(w <= 0.5, f_lo, f_hi)
    out[:] = np.where(both, blended, np.maximum(nearest, 0.0))
    return out


class SwiftF0Extractor(BaseF0Extractor):
    """SwiftF0 (``swift``): the swift-f0 package's ONNX model on onnxruntime, CPU only.

    Args:
        device: accepted for interface compatibility; SwiftF0 always runs on the CPU.
        dtype: accepted for interface compatibility; the model runs in float32.
        threshold: a SwiftF0 frame is voiced when its confidence is at least this
            (SwiftF0's calibration point is 0.5); ``0 < threshold <= 1``.
        fmin, fmax: the pitch band in Hz given to the model (it scores only pitches
            inside it); within SwiftF0's range 46.875-2093.75 Hz. Default RVC's 50-1100.
        threads: onnxruntime intra-op threads (default 1; ``None``: onnxruntime's default,
            the physical cores). The batch engine runs this backend in worker processes.

    Raises:
        BackendUnavailableError: swift-f0 or onnxruntime is not installed
            (``pip install "rvcfast[swift]"``), or the installed swift-f0 is too old.
        ParameterError: an option value SwiftF0 cannot use.
    """

    name = "swift"
    cpu_bound = True  # onnxruntime on the CPU, one input per model run: nothing to batch

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = "float32",
        *,
        threshold: float = 0.5,
        fmin: float = F0_MIN,
        fmax: float = F0_MAX,
        threads: int | None = 1,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.threshold = option_finite(self.name, "threshold", threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ParameterError(f"{self.name} F0 option threshold must be in (0, 1], got {threshold!r}")
        self.fmin = option_finite(self.name, "fmin", fmin)
        self.fmax = option_finite(self.name, "fmax", fmax)
        self.threads = None if threads is None else option_count(self.name, "threads", threads)
        self._swift = _import_swift_f0()
        lo, hi = float(self._swift.FMIN), float(self._swift.FMAX)
        if not lo <= self.fmin < self.fmax <= hi:
            raise ParameterError(
                f"{self.name} F0 options need {lo:g} <= fmin < fmax <= {hi:g} Hz (SwiftF0's range), "
                f"got fmin={fmin!r}, fmax={fmax!r}"
            )
        self._detector: Any = self._new_detector()
        try:  # the band check of swift-f0 itself (a band narrower than one pitch step is refused)
            self._detector.detect(np.zeros(NATIVE_HOP, dtype=np.float32), SAMPLE_RATE, self.fmin, self.fmax)
        except (TypeError, ValueError) as exc:
            raise ParameterError(
                f"{self.name} F0 options fmin={fmin!r}, fmax={fmax!r} refused by swift-f0: {exc}"
            ) from None

    def _new_detector(self) -> Any:
        try:
            return self._swift.SwiftF0(threads=self.threads, spin=False)
        except Exception as exc:  # noqa: BLE001 - onnxruntime failing to load the model
            raise BackendUnavailableError(
                f"swift: swift-f0 could not start its ONNX model with onnxruntime: {type(exc).__name__}: {exc}. "
                'Reinstall with `pip install -U "rvcfast[swift]"`'
            ) from exc

    def __getstate__(self) -> dict[str, Any]:
        """Picklable state (the batch engine sends this backend to worker processes): the
        onnxruntime session is left out and made again on unpickling."""
        state = super().__getstate__()
        state.pop("_detector", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._detector = self._new_detector()

    def extract_native(self, audio16k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SwiftF0's own frames for one 1-D 16 kHz array: ``(centres, f0, confidence)``.

        ``centres`` are the frames' centres in samples (``256 * i``), ``f0`` is in Hz with
        0 where the confidence is below ``threshold``, ``confidence`` is SwiftF0's (0-1).
        ``max(1, len // 256)`` frames; none for empty input.
        """
        x = as_audio16k(audio16k)
        if len(x) == 0:
            empty = np.zeros(0, dtype=np.float64)
            return empty, empty.copy(), empty.copy()
        result = self._detector.detect(x, SAMPLE_RATE, self.fmin, self.fmax)
        centres = np.rint(np.asarray(result.timestamps, dtype=np.float64) * SAMPLE_RATE)
        confidence = np.asarray(result.confidence, dtype=np.float64)
        pitch = np.asarray(result.pitch_hz, dtype=np.float64)
        voiced = (confidence >= self.threshold) & np.isfinite(pitch) & (pitch > 0)
        return centres, np.where(voiced, pitch, 0.0), confidence

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz per 10 ms frame (0 = unvoiced): ``len(audio16k) // 160 + 1`` float64 values."""
        x = as_audio16k(audio16k)
        centres, f0, _ = self.extract_native(x)
        return to_frame_grid(centres, f0, len(x) // HOP_LENGTH + 1)

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """F0 for each array, one model run per input (each result equals :meth:`extract`'s)."""
        return [self.extract(a) for a in audios]

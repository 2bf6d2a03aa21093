"""The voices a server offers: discovery by file stem, descriptions, and an LRU of loaded engines.

A voice is named by its model file's stem (``alice.pth`` → ``alice``; an ONNX export
``bob.onnx`` → ``bob``); ``alice.index`` in the same folder is its index. Clients name voices only by these ids, never by a
path. Loaded voices are :class:`~rvcfast.engine.Engine` objects kept in a
least-recently-used set of at most ``max_loaded`` entries; the content encoder and F0
network are shared by all of them through the process-wide model cache. A request
that holds an engine keeps it alive even if it is unloaded meanwhile.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError, ParameterError
from ..writing import WINDOWS_DEVICE_NAMES

if TYPE_CHECKING:
    from ..engine import Engine

_log = logging.getLogger("rvcfast.serve")

__all__ = [
    "Voice", "VoiceRegistry", "UnknownVoice", "discover_voices", "VOICE_ID", "VOICE_SUFFIXES", "upload_name_problem",
    "onnx_external_data",
]

#: What a voice id may look like (ids of uploaded voices are checked against it).
VOICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def upload_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the id of an uploaded voice (its file is ``<name>.pth`` in the
    models folder), or ``None``: only letters, digits, ``_``, ``.``, ``-`` (at most 64, a letter or
    digit first), and not a device name Windows reserves (``CON``, ``NUL``, ``COM1``...)."""
    if not VOICE_ID.fullmatch(name):
        return f"name {name!r} is not a valid voice name (letters, digits, '_', '.', '-'; at most 64)"
    if name.split(".", 1)[0].upper() in WINDOWS_DEVICE_NAMES:  # CON.pth cannot be a file there
        return f"name {name!r} is a device name on Windows ({name.split('.', 1)[0].upper()}), not a file name: choose another"
    return None


def onnx_external_data(path: Path) -> list[str]:
    """Names of the tensors an ONNX file keeps in external data files (read without loading them).

    An uploaded voice is one file, so such a tensor could only name a file already on the
    server (onnxruntime reads it relative to the model's folder): uploads are refused for it.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    found: list[str] = []

    def tensors(graph: Any) -> None:
        for t in graph.initializer:
            check(t)
        for sparse in graph.sparse_initializer:
            check(sparse.values)
            check(sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                for t in (attr.t, *attr.tensors):
                    check(t)
                for g in (attr.g, *attr.graphs):
                    tensors(g)

    def check(t: Any) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            found.append(t.name or "(unnamed)")

    tensors(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            for attr in node.attribute:
                for t in (attr.t, *attr.tensors):
                    check(t)
    return found


class UnknownVoice(KeyError):
    """A request named a voice the server does not have."""

    def __init__(self, voice: str, known: Iterable[str]) -> None:
        names = sorted(known)
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        super().__init__(f"unknown voice {voice!r}; available: {shown or 'none'}")
        self.message = str(self.args[0])


@dataclass
class Voice:
    """One voice: its id, model file and optional index."""

    id: str
    model: Path
    index: Path | None = None
    info: dict[str, Any] | None = field(default=None, repr=False)


#: Voice model files the server picks up: RVC/Applio ``.pth`` and ONNX exports (``rvcfast export-onnx``,
#: run by onnxruntime; see docs/onnx.md).
VOICE_SUFFIXES = (".pth", ".onnx")


def discover_voices(paths: Iterable[str | os.PathLike[str]]) -> list[Voice]:
    """Voices from ``.pth`` (or exported ``.onnx``) files and folders of them (not recursive); each id once.

    A voice is named by its file stem; an ``.onnx`` export in the same folder as the ``.pth`` of
    its stem is named with its suffix (``alice.onnx`` beside ``alice``). Two files of one name
    otherwise (from two folders) are a :class:`ParameterError`."""
    found: dict[str, Voice] = {}
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            named = sorted(f for f in p.iterdir() if f.suffix.lower() in VOICE_SUFFIXES)
            models = [f for f in named if f.is_file()]
            for f in named:
                if not f.is_file():  # a broken link, a folder named voice.pth: said, not silently dropped
                    _log.warning("voice %s skipped: %s", f, "a broken link" if f.is_symlink() and not f.exists() else "not a file")
        elif p.is_file():
            models = [p]
        else:
            raise ParameterError(f"voice {p}: no such file or folder")
        stems = {m.stem for m in models if m.suffix.lower() == ".pth"}
        for model in models:
            if model.suffix.lower() not in VOICE_SUFFIXES:
                raise ParameterError(f"voice {model}: expected a .pth voice model (or one exported to .onnx)")
            # an export beside its .pth (what `rvcfast export-onnx voice.pth` writes) is a voice of its own
            beside = model.suffix.lower() == ".onnx" and model.stem in stems
            voice = Voice(model.name if beside else model.stem, model.resolve(), _index_beside(model))
            if voice.id in found and found[voice.id].model != voice.model:
                raise ParameterError(
                    f"two voices are named {voice.id!r}: {found[voice.id].model} and {voice.model} (voices are named by file stem)"
                )
            found[voice.id] = voice
    return list(found.values())


def _index_beside(model: Path) -> Path | None:
    index = model.with_suffix(".index")
    return index.resolve() if index.is_file() else None


class VoiceRegistry:
    """Known voices and the loaded ones (LRU); thread-safe.

    ``load(voice)`` builds an :class:`~rvcfast.engine.Engine`; it is called at most once
    at a time per voice, outside the registry lock. A voice replaced (:meth:`add`) while
    it loads is loaded again: the engine of the old files is discarded, never served.
    """

    def __init__(self, voices: Iterable[Voice], load: Callable[[Voice], Engine], max_loaded: int) -> None:
        self._voices: dict[str, Voice] = {v.id: v for v in voices}
        self._load = load
        self.max_loaded = int(max_loaded)
        self._loaded: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()
        self._voice_locks: dict[str, threading.Lock] = {}
        self._generation: dict[str, int] = {}  # bumped by add(): a load started before is stale
        # a voice whose files failed to load: the error, kept until the files or the voice change
        self._failed: dict[str, tuple[int, tuple[tuple[int, int], ...], BaseException]] = {}
        self.loads = 0
        self.unloads = 0

    # ------------------------------------------------------------------ lookup

    def ids(self) -> list[str]:
        """Every voice id, sorted."""
        with self._lock:
            return sorted(self._voices)

    def failed_ids(self) -> set[str]:
        """The voices whose last load failed (their error is answered again until their files change)."""
        with self._lock:
            return set(self._failed)

    def get(self, voice_id: str) -> Voice:
        """The voice named ``voice_id`` (:class:`UnknownVoice` if there is none)."""
        with self._lock:
            voice = self._voices.get(voice_id)
            if voice is None:
                raise UnknownVoice(voice_id, self._voices)
            return voice

    def loaded_ids(self) -> list[str]:
        """Ids of the loaded voices, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def add(self, voice: Voice, *, replace: bool = False) -> None:
        """Register a voice (an upload); an existing id needs ``replace`` (its loaded engine is dropped)."""
        with self._lock:
            if voice.id in self._voices and not replace:
                raise ParameterError(f"voice {voice.id!r} exists already (send replace=true to replace it)")
            self._voices[voice.id] = voice
            self._generation[voice.id] = self._generation.get(voice.id, 0) + 1
            self._loaded.pop(voice.id, None)

    def unload_all(self) -> None:
        """Drop every loaded engine and kept load error (the server is closing); requests that
        hold an engine keep it until they end."""
        with self._lock:
            self.unloads += len(self._loaded)
            self._loaded.clear()
            self._failed.clear()

    # ------------------------------------------------------------------ loading

    def loaded_engine(self, voice_id: str) -> Engine | None:
        """The engine of a loaded voice (marked as just used), or ``None``; never loads, never waits for a load."""
        with self._lock:
            return self._touch(voice_id)

    def _touch(self, voice_id: str) -> Engine | None:
        """The loaded engine, marked as just used (the registry lock held), or ``None``."""
        eng = self._loaded.get(voice_id)
        if eng is not None:
            self._loaded.move_to_end(voice_id)
        return eng

    def engine(self, voice_id: str) -> Engine:
        """The loaded engine of a voice, loading it (and unloading the least recently used) if needed. Blocking."""
        while True:
            eng = self.loaded_engine(voice_id)
            if eng is not None:
                return eng
            self.get(voice_id)  # UnknownVoice for an id that is gone
            with self._lock:
                vlock = self._voice_locks.setdefault(voice_id, threading.Lock())
            with vlock:
                eng = self._load_once(voice_id)
            if eng is not None:
                return eng
            # the voice was replaced while it loaded: load the new files

    def _load_once(self, voice_id: str) -> Engine | None:
        """Load a voice (holding its voice lock); ``None`` if it was replaced meanwhile (the engine is dropped)."""
        with self._lock:
            eng = self._touch(voice_id)
            if eng is not None:
                return eng
            voice = self._voices.get(voice_id)
            if voice is None:
                raise UnknownVoice(voice_id, self._voices)
            generation = self._generation.get(voice_id, 0)
            failed = self._failed.get(voice_id)
        stamp = _files_stamp(voice)
        if failed is not None and failed[:2] == (generation, stamp):
            raise _fresh(failed[2])  # the same files failed before: not loaded again for every request
        try:
            eng = self._load(voice)
        except Exception as exc:
            with self._lock:
                if self._generation.get(voice_id, 0) == generation:
                    # a copy without the traceback: its frames hold what the load built before it
                    # failed (the voice model, its index), which the kept error must not keep alive
                    self._failed[voice_id] = (generation, stamp, _fresh(exc))
            raise
        with self._lock:
            self._failed.pop(voice_id, None)
            self.loads += 1
            if self._voices.get(voice_id) is not voice or self._generation.get(voice_id, 0) != generation:
                return None
            self._loaded[voice_id] = eng
            self._loaded.move_to_end(voice_id)
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
                self.unloads += 1
        if voice.info is None or "error" in voice.info:
            voice.info = _describe_engine(eng)
        return eng

    def describe(self, voice_id: str) -> dict[str, Any]:
        """``{"id", "sample_rate", "version", "f0", "speakers", "index", "loaded"}`` of a voice. Blocking.

        A voice not loaded yet is described from its file (read through the safe loader once).
        """
        voice = self.get(voice_id)
        if voice.info is not None and "error" in voice.info:
            with self._lock:
                if voice_id in self._loaded:
                    voice.info = None  # it loaded since
        if voice.info is None:
            with self._lock:
                eng = self._loaded.get(voice_id)
            if eng is not None:
                voice.info = _describe_engine(eng)
            else:
                from ..describe import describe_model

                try:
                    d = describe_model(voice.model)
                except ModelLoadError as exc:
                    return {"id": voice.id, "error": _hide_path(str(exc), voice.model), "loaded": False}
                voice.info = {k: d[k] for k in ("version", "sample_rate", "f0", "speakers")}
        with self._lock:
            loaded = voice_id in self._loaded
        return {"id": voice.id, **voice.info, "index": voice.index is not None, "loaded": loaded}  # type: ignore[dict-item]


def _fresh(exc: BaseException) -> BaseException:
    """A copy of an error without traceback, cause or context (to keep, or to raise again:
    raising one object many times grows its traceback, and a traceback keeps its frames'
    locals alive)."""
    try:
        out = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception type that does not copy
        out = exc
    out.__cause__ = out.__context__ = None
    return out.with_traceback(None)


def _files_stamp(voice: Voice) -> tuple[tuple[int, int], ...]:
    """Size and modification time of a voice's files (a file replaced in place loads again)."""
    out = []
    for path in (voice.model, voice.index):
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        out.append((st.st_size, st.st_mtime_ns) if st is not None else (-1, -1))
    return tuple(out)


def _describe_engine(eng: Engine) -> dict[str, Any]:
    voc = eng.vocoder
    return {"version": voc.version, "sample_rate": voc.sample_rate, "f0": voc.has_f0, "speakers": voc.num_speakers}


def _hide_path(text: str, path: Path) -> str:
    return text.replace(str(path), path.name)


def save_upload(
    folder: str | os.PathLike[str], voice_id: str, model_tmp: Path, index_tmp: Path | None, check: Callable[[Path, Path | None], None]
) -> Voice:
    """Move an uploaded model (and index) into the models folder as ``<id>.pth`` (``<id>.onnx`` for
    an ONNX export sent under a ``.onnx`` name) and ``<id>.index``.

    ``check(model, index)`` must raise for files that are not a usable voice (it goes through
    the safe loader); then nothing is kept. Files are moved into place only after the check.
    """
    problem = upload_name_problem(voice_id)
    if problem is not None:
        raise ParameterError(problem)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    check(model_tmp, index_tmp)
    suffix = ".onnx" if model_tmp.suffix.lower() == ".onnx" else ".pth"  # the kind the check read it as
    model = root / f"{voice_id}{suffix}"
    for other in VOICE_SUFFIXES:  # a replaced voice must not leave its other file (two voices of one name)
        if other != suffix:
            (root / f"{voice_id}{other}").unlink(missing_ok=True)
    shutil.move(str(model_tmp), model)
    index = None
    if index_tmp is not None:
        index = root / f"{voice_id}.index"
        shutil.move(str(index_tmp), index)
    elif (root / f"{voice_id}.index").exists():
        (root / f"{voice_id}.index").unlink()  # a replaced voice must not keep the old voice's index
    return Voice(voice_id, model.resolve(), None if index is None else index.resolve())

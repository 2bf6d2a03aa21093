"""The process-wide model cache: the one piece of module-level mutable state in rvcfast.

Base models (RMVPE, the content encoder, CREPE, FCPE) are expensive to build and
identical for every voice, so each is loaded once per process and shared by all
:class:`~rvcfast.Converter` objects and files. Entries are keyed by
``(kind, resolved file path, file size, mtime, inode, device, dtype)`` (for a model
folder, also those of the files in it): a second request with the same key returns
the same object; changing the file on disk, or renaming another file over it, loads
it again, and the model of the file's earlier version is then dropped from the cache
(objects that use it keep it), so a long-running process that sees a base model file
replaced holds one copy per file, not one per version. Each load also drops the models
of files deleted (or changed) since they were loaded: nothing can ask for them again.
A load that fails leaves nothing in the cache. :func:`load_count`
tells how many real loads happened (tests use it to prove a batch loads each model
once). :func:`clear` empties the cache, or drops one kind of model. Access is thread-safe; two threads asking
for the same key wait for one load.

:func:`get_shared` is the cache's other half, for what belongs to its user (a voice's
retrieval index: hundreds of MB to GB): an object loaded from a file version is handed to
every caller that asks for it while one of them still holds it (a second ``Converter`` of the
same voice, a notebook cell run again, ``rvcfast tune`` loading the voice per precision),
and is freed with its last holder: the cache holds it by a weak reference only.
"""

from __future__ import annotations

import os
import stat
import threading
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = ["get_or_load", "get_shared", "file_key", "clear", "load_count", "cached_keys"]

T = TypeVar("T")

#: ``(kind, file_key(path), device, dtype, extra)``
_Key = tuple[str, tuple[Any, ...], str, str, Hashable]

_lock = threading.Lock()
_key_locks: dict[_Key, threading.Lock] = {}
_models: dict[_Key, Any] = {}
_loads: dict[str, int] = {}
#: what :func:`get_shared` handed out and is still held somewhere (weakly referenced)
_in_use: weakref.WeakValueDictionary[_Key, Any] = weakref.WeakValueDictionary()


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is rewritten or replaced: size, modification time and identity
    (a file renamed over it -- a finished download, ``rsync``, ``tar``, ``cp -p`` -- is a new
    inode even when its size and modification time are the old file's)."""
    return (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


def _folder_files(folder: Path) -> tuple[Any, ...]:
    """The files directly in ``folder`` (a Hugging Face model folder), each with :func:`_stat_key`:
    rewriting ``model.safetensors`` in place does not change the folder's own modification time."""
    files = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        files.append((entry.name, *_stat_key(entry.stat())))
                except OSError:
                    continue
    except OSError:
        return ()
    return tuple(sorted(files))


def file_key(path: str | os.PathLike[str] | None) -> tuple[Any, ...]:
    """Identify a file by resolved path, size, modification time and inode (``None`` for built-in
    weights); a folder also by the files in it."""
    if path is None:
        return (None,)
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return (str(p),)
    if stat.S_ISDIR(st.st_mode):
        return (str(p), *_stat_key(st), _folder_files(p))
    return (str(p), *_stat_key(st))


def get_or_load(
    kind: str,
    path: str | os.PathLike[str] | None,
    device: torch.device | str,
    dtype: torch.dtype,
    loader: Callable[[], T],
    extra: Hashable = None,
) -> T:
    """Return the cached model for this key, calling ``loader()`` once if it is not there yet."""
    key: _Key = (kind, file_key(path), str(torch.device(device)), str(dtype), extra)
    with _lock:
        if key in _models:
            return _models[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            if key in _models:
                return _models[key]
        try:
            model = loader()
        except BaseException:
            with _lock:
                if _key_locks.get(key) is key_lock:
                    del _key_locks[key]  # a file that fails to load leaves nothing behind
            raise
        stale = _stale_keys()  # outside the lock: it reads the file system
        with _lock:
            same = _same_file(key)
            for old in [k for k in _models if k != key and (_same_file(k) == same or k in stale)]:
                del _models[old]  # an earlier version of this file, or a file gone: nothing asks for it again
                _key_locks.pop(old, None)
            _models[key] = model
            _key_locks.pop(key, None)  # later callers find the model; waiters hold the lock already
            _loads[kind] = _loads.get(kind, 0) + 1
        return model


def get_shared(kind: str, path: str | os.PathLike[str], device: torch.device | str, loader: Callable[[], T]) -> T:
    """``loader()``'s object for this version of file ``path`` on ``device``, shared while in use.

    The object (it must accept weak references) is returned to every caller asking for the
    same key while any of them holds it; once the last one drops it, it is freed and the next
    call loads again. Concurrent callers wait for one load; a failed load leaves nothing
    behind, and an object whose file changed while it was read is not shared."""
    key: _Key = (kind, file_key(path), str(torch.device(device)), "", None)
    with _lock:
        held = _in_use.get(key)
        if held is not None:
            return held
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            held = _in_use.get(key)
        if held is not None:
            return held
        try:
            obj = loader()
            if file_key(path) == key[1]:  # shared only if the file did not change while it was read
                with _lock:
                    _in_use[key] = obj
                    _loads[kind] = _loads.get(kind, 0) + 1
        finally:
            with _lock:
                if _key_locks.get(key) is key_lock:
                    del _key_locks[key]
        return obj


def _stale_keys() -> set[_Key]:
    """The cached keys whose file is no longer the one loaded: deleted (a temporary folder), or
    changed or replaced since. No request can name them again (a request's key is its file's
    current one), so they only held memory: a process loading base models from a fresh folder
    per job kept every one of them."""
    with _lock:
        keys = list(_models)
    return {k for k in keys if k[1][0] is not None and file_key(k[1][0]) != k[1]}


def _same_file(key: _Key) -> Hashable:
    """A cache key without the file's size and modification time (what stays when the file changes)."""
    kind, fkey, device, dtype, extra = key
    return (kind, fkey[0], device, dtype, extra)


def load_count(kind: str | None = None) -> int:
    """Number of real loads so far, for one kind (``"rmvpe"``, ``"encoder"``...) or in total."""
    with _lock:
        if kind is None:
            return sum(_loads.values())
        return _loads.get(kind, 0)


def cached_keys() -> list[Hashable]:
    """Keys currently in the cache (for diagnostics)."""
    with _lock:
        return list(_models)


def clear(kind: str | None = None) -> int:
    """Drop the cached models: all of them, or those of one ``kind`` (``"rmvpe"``, ``"encoder"``,
    ``"crepe"``, ``"fcpe"``, a plugin's own), e.g. RMVPE once a process has moved to another F0
    backend. Returns how many were dropped (0 for a kind the cache holds none of).

    Objects still used elsewhere (a live ``Converter``'s models) stay alive with their users; the
    cache only forgets them, so the next request loads the file again. Without ``kind`` the
    load counters start again at 0 too; with one they keep counting (:func:`load_count`)."""
    with _lock:
        if kind is None:
            dropped = len(_models) + len(_in_use)
            _models.clear()
            _in_use.clear()
            _key_locks.clear()
            _loads.clear()
            return dropped
        keys = [k for k in _models if k[0] == kind]
        shared = [k for k in list(_in_use.keys()) if k[0] == kind]
        for k in keys:
            del _models[k]
        for k in shared:
            _in_use.pop(k, None)
        return len(keys) + len(shared)

"""Files written so that their path never holds a partial file.

Every file rvcfast writes for a user (converted audio, indexes, tuning profiles, F0 tracks,
Ray manifests) goes to a temporary file beside its target, is flushed to disk and renamed
over the target (:func:`os.replace`, atomic within one file system). Whatever fails, a full
disk, an encoder error or Ctrl-C, the temporary file is removed and an older file at the
target stays as it was. Temporary files are created with mode ``0o666`` less the umask, as
a plain ``open`` creates the target (``tempfile.mkstemp``'s ``0o600`` would stay on it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "new_temporary", "short_name"]

#: Longest target name (in bytes) kept whole in a temporary file's name: the rest of that name
#: takes at most ~63 bytes, and a file name at most 255.
NAME_BYTES = 160


def short_name(name: str) -> str:
    """``name`` as it appears in its temporary files' names: itself, or when longer than
    :data:`NAME_BYTES` its start and a hash of the whole (a target name near the file
    system's 255-byte limit would otherwise give a temporary name that cannot exist)."""
    raw = os.fsencode(name)
    if len(raw) <= NAME_BYTES:
        return name
    head = raw[: NAME_BYTES - 17].decode("utf-8", "ignore")
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:16]}"


def new_temporary(target: str | os.PathLike[str], tag: str | None = None) -> Path:
    """Create an empty temporary file beside ``target``, ``.<name>.<tag>~<random>.part``
    (``tag`` defaults to the process id), and return its path."""
    p = Path(target)
    tag = str(os.getpid()) if tag is None else tag
    while True:
        tmp = p.parent / f".{short_name(p.name)}.{tag}~{secrets.token_hex(4)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits taken by another writer
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path for the caller to write ``target``'s content to; then flush it to
    disk and rename it over ``target``.

    ``tmp`` is an already created temporary file (default: :func:`new_temporary`). If the
    block raises (any exception, ``KeyboardInterrupt`` too) or the flush or rename fails, the
    temporary file is removed and the exception goes on; ``target`` is then unchanged.
    """
    path = Path(tmp) if tmp is not None else new_temporary(target)
    try:
        yield path
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(path, target)
    except BaseException:
        path.unlink(missing_ok=True)
        raise

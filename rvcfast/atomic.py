"""Files written so that their path never holds a partial file.

Every file rvcfast writes for a user (converted audio, indexes, tuning profiles, F0 tracks,
Ray manifests) goes to a temporary file beside its target, is flushed to disk and renamed
over the target (:func:`os.replace`, atomic within one file system). Whatever fails, a full
disk, an encoder error or Ctrl-C, the temporary file is removed and an older file at the
target stays as it was. Temporary files are created with mode ``0o666`` less the umask, as
a plain ``open`` creates the target (``tempfile.mkstemp``'s ``0o600`` would stay on it).

On Windows a file that another program holds open (a player playing the previous output, a
virus scanner or the search indexer reading the new file) cannot be replaced or renamed for a
moment: :func:`replace` tries again for about :data:`WINDOWS_RETRY_SECONDS`, then says so.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "new_temporary", "process_alive", "replace", "short_name"]

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
    disk, rename it over ``target`` and flush the folder (the rename too reaches the disk).

    ``tmp`` is an already created temporary file (default: :func:`new_temporary`). If the
    block raises (any exception, ``KeyboardInterrupt`` too) or the flush or rename fails, the
    temporary file is removed and the exception goes on; ``target`` is then unchanged.
    """
    path = Path(tmp) if tmp is not None else new_temporary(target)
    try:
        yield path
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        replace(path, target)
        _sync_folder(Path(target).parent)
    except BaseException:
        with contextlib.suppress(OSError):  # (Windows: still open in a virus scanner) the error is the one above
            path.unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk (POSIX): the rename itself survives a power loss, not only
    the file's data. Best effort: a file system that cannot sync a folder (some network ones) is
    left as it is; Windows has no such call (NTFS journals the rename)."""
    if sys.platform == "win32":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: How long :func:`replace` tries again on Windows while another program holds the file open.
WINDOWS_RETRY_SECONDS = 2.0
#: Windows' "access denied" and "sharing violation": the file is open in another program.
_WINDOWS_BUSY = (5, 32)


def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """:func:`os.replace`, which on Windows is tried again for about :data:`WINDOWS_RETRY_SECONDS`
    while either file is open in another program (a virus scanner or the search indexer reading
    the new file lets go within moments); after that the ``PermissionError`` says which file
    may be open. Elsewhere it is :func:`os.replace`."""
    if sys.platform != "win32":
        os.replace(source, target)
        return
    deadline = time.monotonic() + WINDOWS_RETRY_SECONDS
    delay = 0.02
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError as exc:
            if getattr(exc, "winerror", None) not in _WINDOWS_BUSY:
                raise
            if time.monotonic() >= deadline:
                raise PermissionError(
                    exc.errno,
                    f"{exc.strerror} (is {os.fspath(target)} open in another program, a player or an editor? "
                    "close it and try again)",
                    exc.filename,
                    getattr(exc, "winerror", None),
                    exc.filename2,
                ) from exc
        time.sleep(delay)
        delay = min(0.2, delay * 2)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` (of this host) may still be running: ``False`` only when it surely is not
    (a temporary file named with its pid is then stale)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process) or cannot tell: keep the file
    return True


#: Windows' OpenProcess access right, error codes and exit code of a running process.
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_ERROR_INVALID_PARAMETER = 87
_STILL_ACTIVE = 259


@functools.lru_cache(maxsize=1)
def _kernel32() -> Any:  # pragma: no cover - Windows
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.OpenProcess.restype = wintypes.HANDLE  # a pointer: the default int would cut it on 64-bit
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    return kernel32


def _last_error() -> int:  # pragma: no cover - Windows
    import ctypes

    return int(ctypes.get_last_error())  # type: ignore[attr-defined]


def _windows_pid_alive(pid: int) -> bool:
    """Windows: whether process ``pid`` is running. ``os.kill(pid, 0)`` is no probe there: signal 0
    is ``CTRL_C_EVENT``, which it sends through the console to the process group ``pid`` (a pid that
    leads no group can take in every process on the console, this one too: a Ctrl-C in the middle
    of a batch); and it does not tell whether ``pid`` runs."""
    import ctypes

    kernel32 = _kernel32()
    handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        # no such process; access denied: it exists (another user's, a protected one); else cannot tell: keep
        return _last_error() != _ERROR_INVALID_PARAMETER
    try:
        code = ctypes.c_ulong(0)
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == _STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)

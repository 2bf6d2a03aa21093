"""Where base weights come from: explicit path, then ``RVCFAST_HOME``, then the user cache, then download.

rvcfast needs two base files besides the user's voice model:

============  ==================  =====================================================
name          file                what
============  ==================  =====================================================
``rmvpe``     ``rmvpe.pt``        RMVPE pitch model (~181 MB)
``hubert``    ``hubert_base.pt``  ContentVec/HuBERT content encoder (~190 MB, fairseq)
============  ==================  =====================================================

A voice model may name the content encoder it was trained with (Applio's
``embedder_model``); :func:`resolve_encoder_for` picks that embedder's folder from the
same search folders when no encoder is given (:func:`find_embedder`).

Downloads come from the public Hugging Face repository RVC itself uses, are
resumable (HTTP ``Range``), verified with SHA-256 and moved into place only when
complete: the cache never holds a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import replace
from .errors import RvcfastError, WeightsNotFoundError, user_stacklevel

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

__all__ = [
    "BaseWeights",
    "KNOWN_WEIGHTS",
    "cache_dir",
    "search_dirs",
    "find_weights",
    "resolve_weights",
    "download",
    "source_url",
    "URL_SCHEMES",
    "DownloadError",
    "sha256_file",
    "DEFAULT_EMBEDDERS",
    "EmbedderWarning",
    "find_embedder",
    "weights_status",
    "resolve_encoder_for",
]

_HF = "https://huggingface.co/lj1995/VoiceConversionWebUI/resolve/main"


@dataclass(frozen=True)
class BaseWeights:
    """A known base weights file: its name, file name, public URL, size and SHA-256."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int
    description: str


KNOWN_WEIGHTS: dict[str, BaseWeights] = {
    "rmvpe": BaseWeights(
        "rmvpe",
        "rmvpe.pt",
        f"{_HF}/rmvpe.pt",
        "6d62215f4306e3ca278246188607209f09af3dc77ed4232efdd069798c4ec193",
        181_184_272,
        "RMVPE pitch model",
    ),
    "hubert": BaseWeights(
        "hubert",
        "hubert_base.pt",
        f"{_HF}/hubert_base.pt",
        "f54b40fd2802423a5643779c4861af1e9ee9c1564dc9d32f54f20b5ffba7db96",
        189_507_909,
        "ContentVec/HuBERT content encoder",
    ),
}


class DownloadError(RvcfastError):
    """A download failed or produced a file with the wrong checksum."""


def cache_dir() -> Path:
    """The user cache folder: ``$XDG_CACHE_HOME/rvcfast`` (``~/.cache/rvcfast``; ``%LOCALAPPDATA%`` on Windows).

    A variable that is empty or not an absolute path counts as unset, as the XDG base
    directory specification says (an empty ``XDG_CACHE_HOME`` would otherwise put the
    cache in a ``rvcfast`` folder under whatever the current directory is).
    """
    if sys.platform == "win32":
        variable, default = "LOCALAPPDATA", Path.home() / "AppData" / "Local"
    else:
        variable, default = "XDG_CACHE_HOME", Path.home() / ".cache"
    value = os.environ.get(variable, "")
    base = Path(value) if value and os.path.isabs(value) else default
    return base / "rvcfast"


def search_dirs() -> list[Path]:
    """Folders searched for base weights, in order: ``$RVCFAST_HOME`` (if set), then the cache folder."""
    dirs = []
    home = os.environ.get("RVCFAST_HOME")
    if home:
        from .local_paths import expanded_path

        dirs.append(expanded_path("RVCFAST_HOME", home))  # "~nosuchuser/x": an error naming the variable
    dirs.append(cache_dir())
    return dirs


def _is_file(path: Path) -> bool:
    """``path.is_file()``, false too where the path cannot be looked at (a folder without permission)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _is_empty(path: Path) -> bool:
    """Whether ``path`` is a file holding nothing: never a base file, but what a crash just after a
    download could leave under its final name with earlier rvcfast versions (they renamed it into place
    before its bytes were on disk), or an interrupted copy. Passed over: the search goes on, and a
    download replaces it."""
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def _looked_at(path: Path) -> str:
    """``path`` for a list of places looked in, saying so when it could not be looked at."""
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"{path} ({exc.strerror or exc})"
    return str(path)


#: Where RVC WebUI and Applio keep the base files, relative to their install folder (or to the
#: folder above the file's own): ``RVCFAST_HOME`` may point at such an install.
INSTALL_LAYOUTS: dict[str, tuple[str, ...]] = {
    "rmvpe": ("rmvpe/rmvpe.pt", "assets/rmvpe/rmvpe.pt", "predictors/rmvpe.pt", "rvc/models/predictors/rmvpe.pt"),
    "hubert": ("hubert/hubert_base.pt", "assets/hubert/hubert_base.pt"),
}
#: Applio's ContentVec: the network of ``hubert_base.pt`` as a Hugging Face folder (used when no
#: ``hubert_base.pt`` is found in the same search folder).
APPLIO_CONTENTVEC = ("embedders/contentvec", "rvc/models/embedders/contentvec")


def _is_hf_folder(folder: Path) -> bool:
    return _is_file(folder / "config.json") and (_is_file(folder / "pytorch_model.bin") or _is_file(folder / "model.safetensors"))


def find_weights(name: str, folders: Iterable[str | os.PathLike[str]] | None = None) -> Path | None:
    """The first existing copy of a known base file in ``folders`` (default :func:`search_dirs`), or ``None``.

    In each search folder: the file itself (``rmvpe.pt``, ``hubert_base.pt``), then where an
    RVC WebUI or Applio install keeps it (:data:`INSTALL_LAYOUTS`), then for the content
    encoder Applio's ContentVec folder (:data:`APPLIO_CONTENTVEC`). A search folder that
    cannot be looked into (no permission), and an empty file (an interrupted download or copy), are
    passed over.
    """
    info = KNOWN_WEIGHTS[name]
    for d in map(Path, search_dirs() if folders is None else folders):
        for rel in (info.filename, *INSTALL_LAYOUTS.get(name, ())):
            if _is_file(d / rel) and not _is_empty(d / rel):
                return d / rel
        if name == "hubert":
            for rel in APPLIO_CONTENTVEC:
                if _is_hf_folder(d / rel):
                    return d / rel
    return None


#: Embedder names (a voice file's ``embedder_model``) served by the default encoder, ``hubert_base.pt``.
DEFAULT_EMBEDDERS = frozenset({"contentvec", "hubert", "hubert_base", "hubert-base"})

_EMBEDDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class EmbedderWarning(UserWarning):
    """A voice model names a content encoder (embedder) that rvcfast could not find; the default is used."""


def find_embedder(name: str) -> Path | None:
    """The folder of Applio embedder ``name`` (e.g. ``"chinese-hubert-base"``) in :func:`search_dirs`, or ``None``.

    Looked for in each search folder as ``<name>/`` and Applio's directory spelling
    (``chinese_hubert_base/``), directly or under ``embedders/`` (or an Applio install's
    ``rvc/models/embedders/``); a folder counts only
    when it holds ``config.json`` and ``pytorch_model.bin`` or ``model.safetensors``.
    Names that could reach outside the search folders (separators, ``..``) are refused.
    """
    if not isinstance(name, str) or not _EMBEDDER_NAME.fullmatch(name) or ".." in name:
        return None
    spellings = dict.fromkeys([name, name.replace("-", "_")])
    for d in search_dirs():
        for sub in ("", "embedders", "rvc/models/embedders"):  # the last: an Applio install
            for spelling in spellings:
                folder = d / sub / spelling if sub else d / spelling
                if _is_hf_folder(folder):
                    return folder
    return None


def weights_status() -> dict[str, Any]:
    """Where each base file is found now (``None``: missing) and the folders searched, in order
    (what ``rvcfast info --system`` shows)."""
    files = {info.filename: find_weights(name) for name, info in sorted(KNOWN_WEIGHTS.items())}
    return {
        "search_folders": [str(d) for d in search_dirs()],
        "files": {k: (str(v) if v is not None else None) for k, v in files.items()},
        "download": {info.filename: f"rvcfast download {name}" for name, info in sorted(KNOWN_WEIGHTS.items())},
    }


def resolve_encoder_for(
    model: Any, encoder: str | os.PathLike[str] | None
) -> str | os.PathLike[str] | None:
    """The content encoder to load for ``model``: ``encoder`` when given, else the one it was trained with.

    ``model`` is a loaded voice model (its ``embedder_model`` attribute), a checkpoint's
    metadata dict (``embedder_model`` key) or the embedder name itself. Without an
    explicit ``encoder``: a model trained with ContentVec / HuBERT (or naming nothing)
    gets ``None`` -- the default ``hubert_base.pt``; a model naming another embedder
    (Applio's ``"chinese-hubert-base"``, ``"spin"``, ``"custom"``...) gets that
    embedder's folder when :func:`find_embedder` finds it; otherwise ``None`` with an
    :class:`EmbedderWarning` saying which embedder the model was trained with and where
    its folder was looked for.
    """
    if encoder is not None:
        return encoder
    if isinstance(model, str):
        name: Any = model
    elif isinstance(model, Mapping):
        name = model.get("embedder_model")
    else:
        name = getattr(model, "embedder_model", None)
    if not isinstance(name, str) or not name.strip() or name.strip().lower() in DEFAULT_EMBEDDERS:
        return None
    name = name.strip()
    found = find_embedder(name)
    if found is not None:
        return found
    if name.lower() == "custom":
        what = "a custom embedder (the file does not say which)"
        put = "Pass that embedder's folder (config.json + pytorch_model.bin)"
    else:
        what = f"the {name!r} embedder"
        put = "Put the embedder's folder (config.json + pytorch_model.bin) there, or pass it"
    looked = ", ".join(str(d) for d in search_dirs())
    warnings.warn(
        f"this voice model was trained with {what}, but no such embedder folder was found (looked in {looked}); "
        f"converting with the default ContentVec/HuBERT encoder, which may sound wrong. {put} "
        "as encoder= (Python) or --encoder (command line).",
        EmbedderWarning,
        stacklevel=user_stacklevel(),
    )
    return None


def resolve_weights(name: str, explicit: str | os.PathLike[str] | None = None, *, allow_download: bool = False) -> Path:
    """Path of base weights ``name``: ``explicit`` if given, else RVCFAST_HOME, else the cache, else download.

    Raises :class:`WeightsNotFoundError` naming the file, where rvcfast looked and
    how to get it, when it is missing and ``allow_download`` is false.
    """
    if name not in KNOWN_WEIGHTS:
        raise KeyError(f"unknown base weights {name!r}; known: {sorted(KNOWN_WEIGHTS)}")
    info = KNOWN_WEIGHTS[name]
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise WeightsNotFoundError(f"{info.description} weights not found at {p}")
        return p
    found = find_weights(name)
    if found is not None:
        return found
    if allow_download:
        return _download_missing(name)
    looked = ", ".join(_looked_at(d / info.filename) for d in search_dirs()) + " (and an RVC WebUI or Applio install's sub-folders there)"
    # the other base files missing too: one command for all of them (not one failed run per file)
    also = [KNOWN_WEIGHTS[n].filename for n in sorted(KNOWN_WEIGHTS) if n != name and find_weights(n) is None]
    empty = _empty_copies(name)
    get = f"`rvcfast download` (this and {', '.join(also)}, also missing)" if also else f"`rvcfast download {name}`"
    raise WeightsNotFoundError(
        f"{info.description} weights ({info.filename}) not found. Looked in: {looked}. "
        + (f"{' and '.join(map(str, empty))} {'is' if len(empty) == 1 else 'are'} empty (an interrupted download or copy). " if empty else "")
        + f"Get it with {get} (from {source_url(name)}), or put the file in one of those "
        f"places, or pass its path explicitly."
    )


def _empty_copies(name: str) -> list[Path]:
    """The empty files where :func:`find_weights` looks for base file ``name`` (it passes over them)."""
    info = KNOWN_WEIGHTS[name]
    return [d / rel for d in search_dirs() for rel in (info.filename, *INSTALL_LAYOUTS.get(name, ())) if _is_empty(d / rel)]


def _download_missing(name: str) -> Path:
    """Download missing base file ``name`` on first use, saying so on stderr with a progress display
    (the file is large: a silent download looks like a hang)."""
    from .progress import DownloadProgress, format_bytes

    info = KNOWN_WEIGHTS[name]
    folder = search_dirs()[0]
    empty = _empty_copies(name)
    print(
        f"rvcfast: {info.filename} ({info.description}, {format_bytes(info.size)}) not found"
        + (f" ({', '.join(map(str, empty))}: empty)" if empty else "") + "; "
        f"downloading it from {source_url(name)} into {folder}",
        file=sys.stderr,
        flush=True,
    )
    with DownloadProgress(info.filename) as bar:
        return download(name, progress=bar, chunk=PROGRESS_CHUNK, waiting=_waiting_notice(folder / info.filename))


def _waiting_notice(target: Path) -> Callable[[], None]:
    """The ``waiting`` callback of :func:`download` that says on stderr why nothing happens yet."""

    def notice() -> None:
        print(f"rvcfast: another process is downloading {target}; waiting for it to finish", file=sys.stderr, flush=True)

    return notice


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


ProgressCallback = Callable[[int, int], None]

#: Read size of a download shown with a progress display: each read waits for that many bytes, and
#: 1 MiB (the default) held the display still for seconds at a time on a slow link.
PROGRESS_CHUNK = 1 << 16

#: URL schemes :func:`download` fetches from.
URL_SCHEMES = ("http", "https", "file")


def source_url(name: str) -> str:
    """Where known base file ``name`` is downloaded from: ``$RVCFAST_URL_<NAME>`` (a mirror) when set
    and not empty, else its public URL."""
    info = KNOWN_WEIGHTS[name]
    mirror = os.environ.get(f"RVCFAST_URL_{info.name.upper()}", "").strip()
    return mirror or info.url


def _check_url(url: str, origin: str) -> None:
    """:class:`DownloadError` unless ``url`` is an http(s) or file URL (``origin`` says where it came from)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced "[" in the host
        raise DownloadError(f"cannot download from {origin} {url!r}: not a valid URL ({exc})") from None
    if parts.scheme.lower() not in URL_SCHEMES:
        raise DownloadError(
            f"cannot download from {origin} {url!r}: expected an http://, https:// or file:// URL"
        )
    if parts.scheme.lower() != "file" and not parts.netloc:
        raise DownloadError(f"cannot download from {origin} {url!r}: the URL names no host")


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """What tells one file at ``path`` from a later one renamed over it (``None`` when there is none)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


#: Seconds a download waits for another process's lock before ``waiting()`` is called.
WAIT_NOTICE_SECONDS = 0.5


@contextlib.contextmanager
def _noticed(waiting: Callable[[], None] | None) -> Iterator[None]:
    """Call ``waiting()`` (once, from a timer thread) if the block takes over :data:`WAIT_NOTICE_SECONDS`."""
    if waiting is None:
        yield
        return
    timer = threading.Timer(WAIT_NOTICE_SECONDS, waiting)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


#: ``msvcrt.locking``'s errors when another process holds the lock (the C runtime's EACCES or EDEADLOCK).
_LOCKED_ERRNOS = frozenset({errno.EACCES, errno.EDEADLK, getattr(errno, "EDEADLOCK", errno.EDEADLK)})


@contextlib.contextmanager
def _exclusive(lock: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created, and removed again on release).

    POSIX: ``flock``; the lock is taken again when the file on disk is no longer the one
    locked (its previous holder removed it while this process waited). Windows:
    ``msvcrt.locking`` on the file's first byte, polled. Elsewhere: no lock.
    ``waiting()`` is called once when the lock is not had within :data:`WAIT_NOTICE_SECONDS`
    (another process holds it).
    """
    if fcntl is not None:
        notice = waiting
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                with _noticed(notice):
                    fcntl.flock(fd, fcntl.LOCK_EX)
                notice = None
                held, on_disk = os.fstat(fd), _identity(lock)
            except BaseException:
                os.close(fd)
                raise
            if on_disk is not None and (held.st_dev, held.st_ino) == on_disk[:2]:
                break
            os.close(fd)  # the previous holder removed this file: lock the one there now
        try:
            yield
        finally:
            try:
                lock.unlink()  # while still held: a waiter on this file sees it gone and locks anew
            except OSError:
                pass
            os.close(fd)
    elif msvcrt is not None:  # Windows
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with _noticed(waiting):
                while True:
                    try:
                        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                        break
                    except OSError as exc:
                        if exc.errno not in _LOCKED_ERRNOS:  # not another holder: waiting would never end
                            raise
                        time.sleep(0.2)
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        finally:
            os.close(fd)
            try:
                lock.unlink()  # fails while another process has it open: it is theirs then
            except OSError:
                pass
    else:  # pragma: no cover - no file locking on this platform
        yield


def _content_length(raw: str | None) -> int:
    """A ``Content-Length`` header as a byte count; 0 (unknown) when missing or not a number."""
    try:
        n = int(str(raw).strip())
    except ValueError:
        return 0
    return max(n, 0)


class _WriteError(Exception):
    """Writing the partial file failed (a full disk, a file in the way): the local disk's fault, not the network's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))


def _write(f: Any, block: bytes) -> None:
    try:
        f.write(block)
    except OSError as exc:
        raise _WriteError(exc) from None


@contextlib.contextmanager
def _part_file(part: Path, append: bool) -> Iterator[Any]:
    """``part`` open for writing (appending when resuming); failures to open or close it are :class:`_WriteError`."""
    try:
        f = open(part, "ab" if append else "wb")
    except OSError as exc:
        raise _WriteError(exc) from None
    try:
        yield f
    finally:
        try:
            f.close()
        except OSError as exc:
            raise _WriteError(exc) from None


def _read_into(resp: Any, f: Any, done: int, total: int, chunk: int, progress: ProgressCallback | None) -> int:
    """Copy the response body to ``f``; the byte count reached. A body cut short mid-chunk keeps
    the bytes that did arrive before :class:`http.client.IncompleteRead` goes on."""
    if progress:
        progress(done, total)
    while True:
        try:
            block = resp.read(chunk)
        except http.client.IncompleteRead as exc:
            if exc.partial:
                _write(f, exc.partial)
                done += len(exc.partial)
                if progress:
                    progress(done, total)
            raise
        if not block:
            return done
        _write(f, block)
        done += len(block)
        if progress:
            progress(done, total)


#: ``Content-Range: bytes <first>-<last>/<size>`` (206) or ``bytes */<size>`` (416).
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def _resume_at(resp: Any, have: int, url: str, part: Path) -> int:
    """Where in the file the response body starts: ``have`` when the server resumes there, 0 when
    it sends the whole file (it ignored the range, or answered it from the first byte)."""
    if not have or getattr(resp, "status", None) != 206:
        return 0
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
    first = int(m.group(1)) if m is not None and m.group(1) is not None else have
    if first in (have, 0):
        return first
    part.unlink(missing_ok=True)
    raise DownloadError(
        f"download of {url} failed: asked for the bytes from {have} on, the server sent the bytes from {first} on; "
        f"the partial file {part} was deleted and the next attempt starts over"
    )


def _remote_size(headers: Any) -> int | None:
    """The file size a ``Content-Range`` header states (None when it states none)."""
    m = _CONTENT_RANGE.match((headers.get("Content-Range") if headers is not None else None) or "")
    return int(m.group(2)) if m is not None and m.group(2) != "*" else None


def _kept(part: Path) -> int:
    """Bytes in the partial file (0 when there is none, or something else is there)."""
    try:
        return part.stat().st_size if part.is_file() else 0
    except OSError:
        return 0


def _failure(url: str, part: Path, exc: BaseException) -> DownloadError:
    """The :class:`DownloadError` for a download that failed with ``exc``; a partial file that holds
    nothing is removed."""
    kept = _kept(part)
    if not kept:
        with contextlib.suppress(OSError):
            if part.is_file() or part.is_symlink():
                part.unlink()
    if isinstance(exc, _WriteError):
        keeps = f"; {part} keeps the {kept} bytes written so far and the next attempt resumes from there" if kept else ""
        return DownloadError(f"cannot write the download of {url} to {part} ({exc}){keeps}")
    if isinstance(exc, http.client.IncompleteRead):
        reason = "the connection closed before the end of the data"
    elif isinstance(exc, http.client.HTTPException):
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = str(exc)
    if not kept:  # nothing arrived (no network, a wrong host): no partial file to speak of
        return DownloadError(
            f"download of {url} failed ({reason}); nothing was received: check the network, or point "
            "the file's RVCFAST_URL_* variable at a mirror"
        )
    return DownloadError(
        f"download of {url} failed ({reason}); {part} keeps the {kept} bytes received so far and the "
        "next attempt resumes from there"
    )


def _fetch(url: str, part: Path, *, timeout: float, chunk: int, progress: ProgressCallback | None) -> None:
    """Download ``url`` into ``part``, resuming from the bytes already there when the server allows."""
    have = _kept(part)
    request = urllib.request.Request(url, headers={"User-Agent": "rvcfast"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            have = _resume_at(resp, have, url, part)
            length = _content_length(resp.headers.get("Content-Length"))
            total = have + length if length else 0
            with _part_file(part, append=bool(have)) as f:
                done = _read_into(resp, f, have, total, chunk, progress)
            if total and done < total:
                raise DownloadError(
                    f"download of {url} was interrupted after {done} of {total} bytes; {part} keeps them "
                    "and the next attempt resumes from there"
                )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: the partial file is complete...
            size = _remote_size(exc.headers)
            if size is None or size == have:
                return
            part.unlink(missing_ok=True)  # ...or longer than the file now is (another file's bytes): start over
            _fetch(url, part, timeout=timeout, chunk=chunk, progress=progress)
            return
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (_WriteError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise _failure(url, part, exc) from None


def _plan(name_or_url: str, dest: str | os.PathLike[str] | None, sha256: str | None) -> tuple[str, str | None, Path]:
    """The URL, expected SHA-256 and destination of a download, the URL checked."""
    expected: str | None
    if name_or_url in KNOWN_WEIGHTS:
        info = KNOWN_WEIGHTS[name_or_url]
        url = source_url(info.name)
        origin = f"RVCFAST_URL_{info.name.upper()}" if url != info.url else "the URL"
        expected = sha256 or info.sha256
        target = Path(dest) if dest is not None else (search_dirs()[0] / info.filename)
    else:
        url, origin, expected = name_or_url, "the URL", sha256
        if dest is None:
            raise ValueError("dest is required when downloading a URL")
        target = Path(dest)
    _check_url(url, origin)
    return url, expected, target


def _looks_like_html(path: Path) -> bool:
    """Whether the file starts like a web page (a mirror's error or sign-in page saved as the file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head


def _verify(part: Path, url: str, expected: str, size: int | None, target: Path) -> None:
    """Check the downloaded ``part`` against its SHA-256; on a mismatch delete it and raise a
    :class:`DownloadError` saying what arrived (its size, a web page) and what was expected."""
    digest = sha256_file(part)
    if digest == expected.lower():
        return
    got = _kept(part)
    what = f"{got} bytes" + (f" where the file has {size}" if size is not None and got != size else "")
    if _looks_like_html(part):
        what += "; the server sent a web page, not the file: an error or sign-in page, or a wrong URL"
    part.unlink(missing_ok=True)
    raise DownloadError(
        f"checksum mismatch for {url}: expected sha256 {expected}, got {digest} ({what}); the download was deleted"
        + (f" ({target} is unchanged)" if target.exists() else "")
    )


def download(
    name_or_url: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
    waiting: Callable[[], None] | None = None,
) -> Path:
    """Download a known base file (``"rmvpe"``, ``"hubert"``) or a URL, resumably, with a checksum.

    Bytes go to ``<dest>.part``; an interrupted download resumes from there with an
    HTTP Range request (a server that answers it from the first byte, or says the file is
    shorter than the partial one, gets the file from the start). When complete the SHA-256 is checked; a mismatch deletes
    the partial file and raises :class:`DownloadError` (a download that resumed from bytes an
    earlier attempt left, perhaps of another file, is first fetched once more from the first
    byte). Only a verified file is
    renamed to ``dest``. ``progress(done_bytes, total_bytes)`` is called as data
    arrives (total is 0 when unknown).

    A known file comes from ``$RVCFAST_URL_<NAME>`` when that is set and not empty
    (:func:`source_url`). Only http(s) and file URLs are fetched. Processes downloading
    to the same ``dest`` take turns (an exclusive lock on ``<dest>.lock``, removed
    afterwards): one that waited returns the file another one has just put in place
    instead of downloading it again; ``waiting()`` is called (from another thread) when this
    process has waited :data:`WAIT_NOTICE_SECONDS` for another one's lock. Every failure -- a bad URL, a folder that cannot
    be created, a network or protocol error, a partial file that cannot be written (a full
    disk), a wrong checksum -- is a :class:`DownloadError` naming the URL or the path.
    """
    url, expected, target = _plan(name_or_url, dest, sha256)
    known = KNOWN_WEIGHTS.get(name_or_url)
    size = known.size if known is not None and sha256 is None else None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        in_the_way = isinstance(exc, (FileExistsError, NotADirectoryError))
        why = "a file of that name (or of a folder above it) is in the way" if in_the_way else (exc.strerror or str(exc))
        raise DownloadError(f"cannot download {url} into the folder {target.parent}: {why}") from None
    try:
        is_dir = target.is_dir()
    except OSError as exc:  # e.g. a folder this user may not look into
        raise DownloadError(f"cannot download {url} into the folder {target.parent}: {exc.strerror or exc}") from None
    if is_dir:
        raise DownloadError(f"cannot download {url} to {target}: it is a folder")
    part = target.with_name(target.name + ".part")
    before = _identity(target)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_exclusive(target.with_name(target.name + ".lock"), waiting))
        except OSError as exc:
            raise DownloadError(f"cannot download {url} into {target.parent}: {exc}") from None
        now = _identity(target)
        if now is not None and now != before:
            return target  # another process put it in place while this one waited for the lock
        resumed = _kept(part) > 0  # bytes an earlier attempt left: perhaps of another file (an earlier mirror)
        _fetch(url, part, timeout=timeout, chunk=chunk, progress=progress)
        if expected is not None:
            try:
                _verify(part, url, expected, size, target)
            except DownloadError:
                if not resumed:
                    raise
                # the earlier bytes may be what is wrong: once more from the first byte (_verify deleted them)
                _fetch(url, part, timeout=timeout, chunk=chunk, progress=progress)
                _verify(part, url, expected, size, target)
        try:
            with open(part, "rb+") as f:  # on disk before it is renamed: a crash then leaves no empty file at dest
                os.fsync(f.fileno())
            replace(part, target)  # on Windows tried again while a virus scanner reads it
        except OSError as exc:
            raise DownloadError(f"cannot put the download of {url} in place at {target}: {exc}") from None
    return target

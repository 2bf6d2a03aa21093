"""How the model files reach the workers: a path every node sees, or Ray's object store.

The driver resolves every file a worker needs (voice model, index, content encoder,
RMVPE weights) to one absolute path before any task runs, so a missing file is reported
at once and all workers load exactly the same files:

* ``weights="path"`` (default): the workers open those paths themselves. This is the
  right choice on any cluster with a shared filesystem (NFS, EFS, a Kubernetes volume
  mounted in every pod, or the files baked into the image): nothing is copied, every
  actor on a node reads the files through the same page cache, and the head node's
  object store is not involved however many workers there are. The driver records each
  file's SHA-256 and a worker checks its copy against it before loading, so a node that
  holds another version at that path, or a file replaced while the job runs, fails
  naming the file instead of converting with other weights.
* ``weights="object-store"``: the driver reads each file once and puts it into Ray's
  object store; each node pulls it once and unpacks it into a local cache folder named
  after the file's SHA-256, where every later actor on that node finds it once its
  content is checked against that hash (a damaged or altered copy is replaced). For
  clusters whose nodes share no filesystem.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ...errors import ModelLoadError, ParameterError

__all__ = ["ModelFiles", "WEIGHT_MODES", "resolve_files", "ship_files", "local_files", "content_digest"]

#: The ways the model files can reach the workers.
WEIGHT_MODES = ("path", "object-store")


@dataclass(frozen=True)
class ModelFiles:
    """Absolute paths of the files a worker loads (``None``: not used)."""

    model: str
    index: str | None = None
    encoder: str | None = None
    f0_weights: str | None = None


def _uses_rmvpe(f0: str) -> bool:
    from ...f0.registry import parse_hybrid

    members = parse_hybrid(f0)
    return (members is not None and "rmvpe" in members) or f0.strip().lower() == "rmvpe"


def resolve_files(
    model: str | os.PathLike[str],
    *,
    index: str | os.PathLike[str] | None,
    encoder: str | os.PathLike[str] | None,
    f0: str,
    f0_weights: str | os.PathLike[str] | None,
    has_f0: bool,
    allow_download: bool,
) -> ModelFiles:
    """Every file the workers need, as absolute paths found on the driver (missing ones raise here)."""
    from ...weights import resolve_weights

    def existing(path: str | os.PathLike[str], what: str) -> str:
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelLoadError(p, f"{what} not found")
        return str(p.resolve())

    enc = str(resolve_weights("hubert", encoder, allow_download=allow_download).resolve())
    weights: str | None = None
    if has_f0 and (f0_weights is not None or _uses_rmvpe(f0)):
        if _uses_rmvpe(f0):
            weights = str(resolve_weights("rmvpe", f0_weights, allow_download=allow_download).resolve())
        else:
            weights = existing(f0_weights, "F0 weights")  # type: ignore[arg-type]
    return ModelFiles(
        model=existing(model, "voice model"),
        index=existing(index, "index") if index is not None else None,
        encoder=enc,
        f0_weights=weights,
    )


# ------------------------------------------------------------------------------ the object store


@dataclass(frozen=True)
class _Shipped:
    """One file or folder in the object store: its name, content hash and one object per file."""

    name: str
    digest: str
    is_dir: bool
    parts: tuple[tuple[str, Any], ...]  # (path relative to the folder, or "" for a file; ObjectRef)


def _files_of(path: Path) -> list[tuple[str, Path]]:
    if path.is_dir():
        return [(str(f.relative_to(path)), f) for f in sorted(path.rglob("*")) if f.is_file()]
    return [("", path)]


def _entry(rel: str, file_digest: bytes) -> bytes:
    """One file's share of a content digest: its path inside the folder ("" for a file) and its SHA-256."""
    return rel.encode() + b"\0" + file_digest


def content_digest(path: str | os.PathLike[str]) -> str:
    """The digest a file or folder is known by (the one :func:`ship_files` names the cache after), read in chunks."""
    digest = hashlib.sha256()
    for rel, f in _files_of(Path(path)):
        one = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                one.update(chunk)
        digest.update(_entry(rel, one.digest()))
    return digest.hexdigest()[:32]


def _ship_one(path: str) -> _Shipped:
    import ray

    p = Path(path)
    digest = hashlib.sha256()
    parts = []
    for rel, f in _files_of(p):
        data = f.read_bytes()
        digest.update(_entry(rel, hashlib.sha256(data).digest()))
        parts.append((rel, ray.put(data)))
    return _Shipped(p.name, digest.hexdigest()[:32], p.is_dir(), tuple(parts))


@dataclass(frozen=True)
class _Pinned:
    """``weights="path"``: the driver's paths and the content digest of each, for the workers to check."""

    files: ModelFiles
    digests: tuple[tuple[str, str], ...]  # (field name, content_digest)


def ship_files(
    files: ModelFiles, mode: str, cache: dict[tuple[str, str], Any] | None = None
) -> _Pinned | dict[str, _Shipped | None]:
    """What the workers get: the paths with their digests (``"path"``), or object-store handles.

    ``cache`` (a dict the caller keeps) holds what was hashed or shipped already, by mode and
    path: the voices of one job share their encoder and F0 weights, hashed and shipped once.
    """
    if mode not in WEIGHT_MODES:
        raise ParameterError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")
    done = {} if cache is None else cache

    def once(path: str) -> Any:
        if (mode, path) not in done:
            done[(mode, path)] = content_digest(path) if mode == "path" else _ship_one(path)
        return done[(mode, path)]

    if mode == "path":
        named = [(f.name, getattr(files, f.name)) for f in fields(files) if getattr(files, f.name)]
        return _Pinned(files, tuple((name, once(path)) for name, path in named))
    return {f.name: (once(getattr(files, f.name)) if getattr(files, f.name) else None) for f in fields(files)}


def _cache_root() -> Path:
    return Path(os.environ.get("RVCFAST_RAY_CACHE", Path(tempfile.gettempdir()) / "rvcfast-ray-weights"))


def _set_aside(target: Path) -> None:
    """Move a cached copy whose content is not what its name says out of the way, then delete it."""
    import shutil

    aside = target.parent / f".{target.name}.bad.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        os.rename(target, aside)  # atomic: an actor loading from it keeps its open files
    except FileNotFoundError:  # another actor on this node set it aside first
        return
    except OSError as exc:
        raise ModelLoadError(target, f"the cached copy differs from the driver's file and cannot be replaced ({exc}); remove it") from None
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _unpack(item: _Shipped, root: Path) -> str:
    import ray

    target = root / item.digest / item.name
    if target.exists():
        if content_digest(target) == item.digest:
            return str(target)
        _set_aside(target)  # truncated, damaged, or put there by someone else: unpacked again below
    staging = Path(tempfile.mkdtemp(prefix=f".{item.digest}.", dir=root))
    try:
        for rel, ref in item.parts:
            dest = staging / item.name / rel if item.is_dir else staging / item.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(ray.get(ref))
        (root / item.digest).mkdir(exist_ok=True)
        try:
            os.rename(staging / item.name, target)  # atomic: another actor on this node may race us
        except OSError:
            if not target.exists():
                raise
            if content_digest(target) != item.digest:  # not the copy another actor just unpacked
                raise ModelLoadError(target, "the cached copy differs from the driver's file (content digest); remove it") from None
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _check_pinned(pinned: _Pinned, checked: set[tuple[str, str]]) -> ModelFiles:
    """The driver's paths, each checked to exist on this node with the driver's content
    (``checked``: the (path, digest) pairs found good already, by this call or an earlier one)."""
    import socket

    digests = dict(pinned.digests)
    for f in fields(pinned.files):
        path = getattr(pinned.files, f.name)
        if path is None or (path, digests.get(f.name, "")) in checked:
            continue
        if not Path(path).exists():
            raise ModelLoadError(
                path,
                f"not found on node {socket.gethostname()}: in weights='path' mode every node must see the "
                "driver's paths (a shared filesystem); pass weights='object-store' to ship the files instead",
            )
        if f.name in digests and content_digest(path) != digests[f.name]:
            raise ModelLoadError(
                path,
                f"differs on node {socket.gethostname()} from the file the driver checked (another version at this "
                "path, or the file was replaced during the job): give every node the same file, or pass "
                "weights='object-store' to ship the driver's copy",
            )
        if f.name in digests:
            checked.add((path, digests[f.name]))
    return pinned.files


def local_files(
    shipped: _Pinned | ModelFiles | dict[str, _Shipped | None], cache: dict[Any, Any] | None = None
) -> ModelFiles:
    """On a worker: local paths of the model files (unpacked from the object store if shipped),
    whose content is the driver's (:class:`~rvcfast.errors.ModelLoadError` naming the file if not).

    ``cache`` (a dict the caller keeps between calls) remembers the files checked or unpacked
    already, so a worker loading several voices hashes their shared encoder and F0 weights once.
    """
    done = {} if cache is None else cache
    if isinstance(shipped, ModelFiles):
        shipped = _Pinned(shipped, ())  # paths without digests: only their existence is checked
    if isinstance(shipped, _Pinned):
        return _check_pinned(shipped, done.setdefault("pinned", set()))
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str | None] = {}
    for name, item in shipped.items():
        if item is not None and (item.digest, item.name) not in done:
            done[(item.digest, item.name)] = _unpack(item, root)
        paths[name] = done[(item.digest, item.name)] if item is not None else None
    return ModelFiles(  # ship_files ships every field of ModelFiles (None: not used), the model always
        model=paths.get("model") or "",
        index=paths.get("index"),
        encoder=paths.get("encoder"),
        f0_weights=paths.get("f0_weights"),
    )

"""How the model files reach the workers: a path every node sees, or Ray's object store.

The driver resolves every file a worker needs (voice model, index, content encoder,
RMVPE weights) to one absolute path before any task runs, so a missing file is reported
at once and all workers load exactly the same files:

* ``weights="path"`` (default): the workers open those paths themselves. This is the
  right choice on any cluster with a shared filesystem (NFS, EFS, a Kubernetes volume
  mounted in every pod, or the files baked into the image): nothing is copied, every
  actor on a node reads the files through the same page cache, and the head node's
  object store is not involved however many workers there are.
* ``weights="object-store"``: the driver reads each file once and puts it into Ray's
  object store; each node pulls it once and unpacks it into a local cache folder named
  after the file's SHA-256, where every later actor on that node finds it. For clusters
  whose nodes share no filesystem.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ...errors import ModelLoadError, ParameterError

__all__ = ["ModelFiles", "WEIGHT_MODES", "resolve_files", "ship_files", "local_files"]

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


def _ship_one(path: str) -> _Shipped:
    import ray

    p = Path(path)
    digest = hashlib.sha256()
    parts = []
    for rel, f in _files_of(p):
        data = f.read_bytes()
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        parts.append((rel, ray.put(data)))
    return _Shipped(p.name, digest.hexdigest()[:32], p.is_dir(), tuple(parts))


def ship_files(files: ModelFiles, mode: str) -> ModelFiles | dict[str, _Shipped | None]:
    """What the workers get: the paths themselves (``"path"``), or object-store handles."""
    if mode not in WEIGHT_MODES:
        raise ParameterError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")
    if mode == "path":
        return files
    return {f.name: (_ship_one(getattr(files, f.name)) if getattr(files, f.name) else None) for f in fields(files)}


def _cache_root() -> Path:
    return Path(os.environ.get("RVCFAST_RAY_CACHE", Path(tempfile.gettempdir()) / "rvcfast-ray-weights"))


def _unpack(item: _Shipped, root: Path) -> str:
    import ray

    target = root / item.digest / item.name
    if target.exists():
        return str(target)
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
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def local_files(shipped: ModelFiles | dict[str, _Shipped | None]) -> ModelFiles:
    """On a worker: local paths of the model files (unpacked from the object store if shipped)."""
    if isinstance(shipped, ModelFiles):
        for f in fields(shipped):
            path = getattr(shipped, f.name)
            if path is not None and not Path(path).exists():
                import socket

                raise ModelLoadError(
                    path,
                    f"not found on node {socket.gethostname()}: in weights='path' mode every node must see the "
                    "driver's paths (a shared filesystem); pass weights='object-store' to ship the files instead",
                )
        return shipped
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: (_unpack(item, root) if item is not None else None) for name, item in shipped.items()}
    return replace(ModelFiles(model=""), **paths)

"""The faiss index file format: reading and writing ``IVF*,Flat`` and flat L2 files.

Supported files: ``IndexIVFFlat`` (fourcc ``IwFl``) with an L2 flat coarse quantizer
and array inverted lists (``full`` or ``sprs`` layout), and a bare ``IndexFlatL2``
(``IxF2``; searched exactly, as one list). The binary format is parsed directly with
numpy: nothing is unpickled and faiss is never imported. Every header field is checked
against the file size before anything is allocated, and bulk data is read straight
into its final arrays.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from ..atomic import atomic_write
from ..errors import ModelLoadError

__all__ = ["IndexArrays", "read_index_file", "write_index_file"]

_DUMMY = 1 << 20  # faiss writes this twice in every index header
_METRIC_L2 = 1
_MAX_DIM = 1 << 16

# Headers of other faiss index types (as written by faiss 1.15), to name them in errors.
_KNOWN_FOURCC = {
    "IwPQ": "IndexIVFPQ",
    "IwSq": "IndexIVFScalarQuantizer",
    "IwPf": "IndexIVFPQFastScan",
    "IwRQ": "IndexIVFResidualQuantizer",
    "IwLS": "IndexIVFLocalSearchQuantizer",
    "IwFd": "IndexIVFFlatDedup",
    "IxFI": "IndexFlatIP (inner-product metric)",
    "IxPq": "IndexPQ",
    "IxSQ": "IndexScalarQuantizer",
    "IxRq": "IndexResidualQuantizer",
    "IxHe": "IndexLSH",
    "IxMp": "IndexIDMap",
    "IxM2": "IndexIDMap2",
    "IxPT": "IndexPreTransform",
    "IxRF": "IndexRefineFlat",
    "IHNf": "IndexHNSWFlat",
    "IHNp": "IndexHNSWPQ",
    "IHNs": "IndexHNSWSQ",
    "IBxF": "IndexBinaryFlat",
}
_SUPPORTED = "faiss IndexIVFFlat ('IVF<n>,Flat', fourcc 'IwFl', L2 metric) and IndexFlatL2 ('IxF2')"


class _Reader:
    """Sequential little-endian reader over an open binary file; every read is bounds-checked.

    Bulk data is read straight into numpy arrays (``readinto``), so a large
    index is copied from the file once and never held twice.
    """

    def __init__(self, f: io.BufferedReader, size: int, path: Path) -> None:
        self.f = f
        self.size = size
        self.pos = 0
        self.path = path

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def fail(self, problem: str) -> ModelLoadError:
        return ModelLoadError(self.path, problem)

    def _check(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or nbytes > self.remaining:
            raise self.fail(
                f"index file is truncated or corrupt: {what} needs {nbytes} bytes at offset "
                f"{self.pos} but only {self.remaining} remain"
            )

    def take(self, nbytes: int, what: str) -> bytes:
        self._check(nbytes, what)
        out = self.f.read(nbytes)
        if len(out) != nbytes:
            raise self.fail(f"index file is truncated: could not read {what}")
        self.pos += nbytes
        return out

    def read_into(self, dst: np.ndarray, what: str) -> None:
        """Fill the C-contiguous array ``dst`` from the file."""
        view = dst.data.cast("B")
        self._check(view.nbytes, what)
        got = 0
        while got < view.nbytes:
            n = self.f.readinto(view[got:])
            if not n:
                raise self.fail(f"index file is truncated: could not read {what}")
            got += n
        self.pos += got

    def scalar(self, fmt: str, what: str) -> int:
        dt = np.dtype(fmt)
        return np.frombuffer(self.take(dt.itemsize, what), dtype=dt)[0].item()

    def fourcc(self, what: str) -> str:
        return self.take(4, what).decode("latin-1")

    def array(self, fmt: str, count: int, what: str) -> np.ndarray:
        dt = np.dtype(fmt)
        if count < 0:
            raise self.fail(f"index file is corrupt: negative element count for {what}")
        self._check(count * dt.itemsize, what)
        out = np.empty(count, dtype=dt)
        self.read_into(out, what)
        return out

    def vector(self, fmt: str, what: str, expect: int | None = None) -> np.ndarray:
        """A faiss ``std::vector``: uint64 element count, then the elements."""
        count = self.scalar("<u8", f"{what} length")
        if expect is not None and count != expect:
            raise self.fail(f"index file is corrupt: {what} has {count} elements, expected {expect}")
        itemsize = np.dtype(fmt).itemsize
        if count * itemsize > self.remaining:
            raise self.fail(
                f"index file is truncated or corrupt: {what} declares {count} elements "
                f"({count * itemsize} bytes) but only {self.remaining} bytes remain"
            )
        return self.array(fmt, count, what)


def _describe_fourcc(code: str) -> str:
    if code in _KNOWN_FOURCC:
        return f"a faiss {_KNOWN_FOURCC[code]} (fourcc {code!r})"
    if code.isprintable() and code.isascii():
        return f"an unknown index type (fourcc {code!r})"
    return "not a faiss index file (unrecognised header bytes)"


@dataclass
class _Header:
    d: int
    ntotal: int
    is_trained: bool
    metric: int


def _read_header(r: _Reader, what: str) -> _Header:
    d = r.scalar("<i4", f"{what} dimension")
    ntotal = r.scalar("<i8", f"{what} vector count")
    r.scalar("<i8", f"{what} header")
    r.scalar("<i8", f"{what} header")
    is_trained = r.scalar("<u1", f"{what} is_trained flag")
    metric = r.scalar("<i4", f"{what} metric type")
    if metric > 1:
        r.scalar("<f4", f"{what} metric argument")
    if not 0 < d <= _MAX_DIM:
        raise r.fail(f"index file is corrupt: {what} dimension is {d}")
    if ntotal < 0:
        raise r.fail(f"index file is corrupt: {what} vector count is {ntotal}")
    if metric != _METRIC_L2:
        name = {0: "inner product"}.get(metric, f"metric type {metric}")
        raise r.fail(
            f"{what} uses the {name} metric; only L2 indexes are supported "
            f"(RVC builds its indexes with the default L2 metric)"
        )
    return _Header(d=d, ntotal=ntotal, is_trained=bool(is_trained), metric=metric)


def _check_finite(r: _Reader, arr: np.ndarray, what: str) -> None:
    # A float64 sum of float32 values cannot overflow, so it is finite iff every value is
    # (inf + -inf gives NaN: not a warning worth showing, the error below says it).
    with np.errstate(invalid="ignore", over="ignore"):
        finite = not arr.size or bool(np.isfinite(arr.sum(dtype=np.float64)))
    if not finite:
        bad = int((~np.isfinite(arr)).any(axis=-1).sum()) if arr.ndim == 2 else -1
        raise r.fail(f"index file holds non-finite values (NaN or inf) in {bad} {what}")


@dataclass
class IndexArrays:
    """The contents of an index file, as arrays.

    ``list_vectors`` ``[N, d]`` float32 and ``list_ids`` ``[N]`` int64 are in scan
    order (list 0's vectors, then list 1's, ...); ``list_sizes`` ``[nlist]`` int64;
    ``centroids`` ``[nlist, d]`` float32 (zeros for a flat index); ``kind`` is
    ``"ivf"`` or ``"flat"``.
    """

    list_vectors: np.ndarray
    centroids: np.ndarray
    list_sizes: np.ndarray
    list_ids: np.ndarray
    nprobe: int
    kind: Literal["ivf", "flat"]


def _read_flat_codes(r: _Reader, hdr: _Header, what: str) -> np.ndarray:
    count = r.scalar("<u8", f"{what} vector data length")
    if count != hdr.ntotal * hdr.d:
        raise r.fail(
            f"index file is corrupt: {what} stores {count} floats but its header says "
            f"{hdr.ntotal} vectors of dimension {hdr.d} ({hdr.ntotal * hdr.d} floats)"
        )
    return r.array("<f4", count, f"{what} vectors").reshape(hdr.ntotal, hdr.d)  # a fresh array



def _trailing_check(r: _Reader) -> None:
    if r.remaining:
        raise r.fail(f"index file is corrupt: {r.remaining} unexpected bytes after the end of the index")


def _parse_flat(r: _Reader, check_dim: Callable[[int], None] | None) -> IndexArrays:
    """The rest of an ``IndexFlatL2`` file: one list holding every vector, ids in order."""
    hdr = _read_header(r, "flat index")
    if check_dim is not None:
        check_dim(hdr.d)
    codes = _read_flat_codes(r, hdr, "flat index")
    _trailing_check(r)
    vectors = codes.astype(np.float32, copy=False)
    _check_finite(r, vectors, "vectors")
    n = hdr.ntotal
    if n == 0:
        raise r.fail("index holds no vectors")
    return IndexArrays(
        list_vectors=vectors,
        centroids=np.zeros((1, hdr.d), dtype=np.float32),
        list_sizes=np.array([n], dtype=np.int64),
        list_ids=np.arange(n, dtype=np.int64),
        nprobe=1,
        kind="flat",
    )


def _read_quantizer(r: _Reader, d: int, nlist: int) -> np.ndarray:
    """The flat L2 coarse quantizer of an IVF index: its ``[nlist, d]`` centroids."""
    qcode = r.fourcc("coarse quantizer type")
    if qcode not in ("IxF2", "IxFl"):
        raise r.fail(
            f"unsupported coarse quantizer: {_describe_fourcc(qcode)}; only a flat L2 "
            f"quantizer ('IxF2', as in 'IVF<n>,Flat') is supported"
        )
    qhdr = _read_header(r, "coarse quantizer")
    if qhdr.d != d:
        raise r.fail(f"index file is corrupt: quantizer dimension {qhdr.d} differs from index dimension {d}")
    if qhdr.ntotal != nlist:
        raise r.fail(f"index file is corrupt: quantizer holds {qhdr.ntotal} centroids but nlist is {nlist}")
    centroids = _read_flat_codes(r, qhdr, "coarse quantizer").astype(np.float32, copy=False)
    _check_finite(r, centroids, "centroids")
    return centroids


def _skip_direct_map(r: _Reader) -> None:
    dm_type = r.scalar("<u1", "direct map type")
    if dm_type not in (0, 1, 2):
        raise r.fail(f"index file is corrupt: unknown direct map type {dm_type}")
    r.vector("<i8", "direct map")
    if dm_type == 2:
        # faiss writes the hash table as a vector of (id, list entry) pairs: 16 bytes each.
        r.vector("<i8,<i8", "direct map hash table")


def _read_list_sizes(r: _Reader, nlist: int, d: int) -> np.ndarray:
    """The array inverted lists' header and ``[nlist]`` sizes (``full`` or ``sprs`` layout)."""
    ilcode = r.fourcc("inverted list type")
    if ilcode != "ilar":
        kind = {"il00": "no inverted lists", "ilod": "on-disk inverted lists"}.get(ilcode, repr(ilcode))
        raise r.fail(f"unsupported inverted lists ({kind}); only in-file array lists ('ilar') are supported")
    il_nlist = r.scalar("<u8", "inverted list count")
    code_size = r.scalar("<u8", "inverted list code size")
    if il_nlist != nlist:
        raise r.fail(f"index file is corrupt: {il_nlist} inverted lists but nlist is {nlist}")
    if code_size != 4 * d:
        raise r.fail(
            f"index file is corrupt: code size {code_size} bytes, expected {4 * d} for "
            f"float32 vectors of dimension {d} (is this really an IVF-Flat index?)"
        )
    list_type = r.fourcc("inverted list layout")
    if list_type == "full":
        return r.vector("<u8", "list sizes", expect=nlist).astype(np.int64)
    if list_type != "sprs":
        raise r.fail(f"index file is corrupt: unknown inverted list layout {list_type!r}")
    pairs = r.vector("<u8", "sparse list sizes")
    if pairs.size % 2:
        raise r.fail("index file is corrupt: sparse list-size table has an odd length")
    pairs = pairs.reshape(-1, 2)
    if pairs.size and int(pairs[:, 0].max()) >= nlist:
        raise r.fail("index file is corrupt: sparse list-size table names a list beyond nlist")
    if np.unique(pairs[:, 0]).size != pairs.shape[0]:
        raise r.fail("index file is corrupt: sparse list-size table names a list twice")
    sizes = np.zeros(nlist, dtype=np.int64)
    sizes[pairs[:, 0].astype(np.int64)] = pairs[:, 1].astype(np.int64)
    return sizes


def _check_list_sizes(r: _Reader, sizes: np.ndarray, ntotal: int, d: int) -> None:
    held = sum(int(n) for n in sizes.tolist())
    if (sizes < 0).any() or held != ntotal:
        raise r.fail(f"index file is corrupt: the inverted lists hold {held} vectors but the header says {ntotal}")
    if ntotal == 0:
        raise r.fail(
            "index holds no vectors (only trained centroids); RVC writes such files as "
            "'trained_*.index' -- use the 'added_*.index' file"
        )
    need = ntotal * (4 * d + 8)
    if need != r.remaining:
        what = "truncated" if need > r.remaining else "corrupt (unexpected trailing bytes)"
        raise r.fail(
            f"index file is {what}: the inverted lists need {need} bytes of data but "
            f"{r.remaining} bytes remain"
        )


def _read_list_data(r: _Reader, sizes: np.ndarray, ntotal: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, ids)`` of the inverted lists, in scan order; ids checked to be a permutation."""
    # List data, in ascending list order: size*code_size bytes of vectors, then size int64 ids.
    list_vectors = np.empty((ntotal, d), dtype=np.float32)
    list_ids = np.empty(ntotal, dtype=np.int64)
    at = 0
    for li in np.flatnonzero(sizes).tolist():
        n = int(sizes[li])
        r.read_into(list_vectors[at : at + n], f"vectors of list {li}")
        r.read_into(list_ids[at : at + n], f"ids of list {li}")
        at += n
    if list_ids.min() < 0 or list_ids.max() >= ntotal:
        raise r.fail(
            f"index ids out of range: ids run from {int(list_ids.min())} to {int(list_ids.max())} "
            f"but must be 0..{ntotal - 1} (vectors added with custom ids are not supported)"
        )
    seen = np.zeros(ntotal, dtype=bool)
    seen[list_ids] = True
    if not seen.all():
        raise r.fail("index ids are not a permutation of 0..ntotal-1 (some id appears twice)")
    _check_finite(r, list_vectors, "vectors")
    return list_vectors, list_ids


def _parse_ivf(r: _Reader, check_dim: Callable[[int], None] | None) -> IndexArrays:
    """The rest of an ``IndexIVFFlat`` file (after its fourcc)."""
    hdr = _read_header(r, "IVF index")
    if check_dim is not None:
        check_dim(hdr.d)
    d, ntotal = hdr.d, hdr.ntotal
    nlist = r.scalar("<u8", "nlist")
    nprobe = r.scalar("<u8", "nprobe")
    if not hdr.is_trained:
        # Checked first: an untrained file has no centroids, so the nlist bound below would call it truncated.
        raise r.fail("index is not trained: it has no coarse centroids and no vectors")
    if nlist < 1 or nlist > max(1, r.remaining // (4 * d)):
        raise r.fail(f"index file is corrupt or truncated: nlist is {nlist}")
    if nprobe < 1:
        raise r.fail(f"index file is corrupt: nprobe is {nprobe}")
    centroids = _read_quantizer(r, d, nlist)
    _skip_direct_map(r)
    sizes = _read_list_sizes(r, nlist, d)
    _check_list_sizes(r, sizes, ntotal, d)
    list_vectors, list_ids = _read_list_data(r, sizes, ntotal, d)
    return IndexArrays(
        list_vectors=list_vectors,
        centroids=centroids,
        list_sizes=sizes,
        list_ids=list_ids,
        nprobe=int(nprobe),
        kind="ivf",
    )


#: First bytes of files that end up named ``.index`` in a collection of models but are no faiss index.
_OTHER_FILES = (
    (b"version https://", "a Git LFS pointer, not the index itself: only the pointer was downloaded "
     "(fetch the file with `git lfs pull`, or download it directly)"),
    (b"\x80", "a pickled (PyTorch) file, e.g. a voice model .pth: pass it as the voice model"),
    (b"<", "an HTML or XML page (a failed download?)"),
    (b"{", "a JSON text file"),
    (b"RIFF", "a RIFF file (WAV audio?)"),
)


def _zip_contents(f: BinaryIO) -> str:
    """What a zip archive named ``.index`` holds: a PyTorch file (``torch.save``) or a model pack."""
    try:
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return "a zip archive (damaged)"
    if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        return "a PyTorch file, e.g. a voice model .pth: pass it as the voice model"
    inner = [n for n in names if n.lower().endswith(".index")]
    if inner:
        return f"a zip archive holding {', '.join(inner[:4])}: extract it and pass the .index inside"
    return "a zip archive holding no .index file"


def _not_an_index(f: BinaryIO, head: bytes) -> str | None:
    """What a file whose header is no faiss fourcc is, when its first bytes show it, else None."""
    if head.startswith(b"PK\x03\x04"):
        return _zip_contents(f)
    for magic, what in _OTHER_FILES:
        if head.startswith(magic):
            return what
    return None


def _parse(f: io.BufferedReader, size: int, path: Path, check_dim: Callable[[int], None] | None) -> IndexArrays:
    r = _Reader(f, size, path)
    if r.remaining < 4:
        raise r.fail("index file is too short to be a faiss index (truncated?)")
    code = r.fourcc("index type")
    if code in ("IxF2", "IxFl"):
        return _parse_flat(r, check_dim)
    if code != "IwFl":
        other = _not_an_index(f, code.encode("latin-1") + f.read(12))
        if other is not None:
            raise r.fail(f"not a faiss index file: it is {other}")
        raise r.fail(f"unsupported index: this is {_describe_fourcc(code)}; rvcfast reads {_SUPPORTED}")
    return _parse_ivf(r, check_dim)


def read_index_file(path: Path, check_dim: Callable[[int], None] | None = None) -> IndexArrays:
    """Parse the faiss index file at ``path`` (an existing file) into :class:`IndexArrays`.

    ``check_dim`` is called with the vector dimension as soon as the header is read, before
    any centroid or vector: an exception it raises ends the read there.

    Raises:
        ModelLoadError: the file cannot be read, is of an unsupported type or metric, is
            truncated or corrupt, or holds ids that are not ``0..ntotal-1`` or
            non-finite values. The message names the file.
    """
    try:
        with open(path, "rb") as f:
            return _parse(f, os.fstat(f.fileno()).st_size, path, check_dim)
    except OSError as exc:
        raise ModelLoadError(path, f"index file could not be read: {exc}") from None


def _header(d: int, ntotal: int) -> bytes:
    """The common faiss index header: dimension, count, two dummies, is_trained, L2 metric."""
    return (
        np.array([d], "<i4").tobytes()
        + np.array([ntotal, _DUMMY, _DUMMY], "<i8").tobytes()
        + np.array([1], "<u1").tobytes()
        + np.array([_METRIC_L2], "<i4").tobytes()
    )


def write_index_file(
    path: str | os.PathLike[str], arrays: IndexArrays, list_format: Literal["auto", "full", "sprs"] = "auto"
) -> None:
    """Write ``arrays`` as a faiss file that ``faiss.read_index`` loads.

    An IVF index is written as ``IndexIVFFlat`` (``IwFl``, no direct map, array
    inverted lists), a flat one as ``IndexFlatL2`` (``IxF2``, vectors in id order).
    ``list_format="auto"`` picks the inverted list layout the way faiss does (``full``
    when more than half of the lists are non-empty, else ``sprs``).

    The file is written to a temporary file in the same folder and renamed into place,
    so ``path`` is never left half-written: a failed write (disk full, interrupted)
    keeps the old file, if there was one, and removes the temporary file.
    """
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        _write_arrays(f, arrays, list_format)


def _write_arrays(f: BinaryIO, arrays: IndexArrays, list_format: Literal["auto", "full", "sprs"]) -> None:
    """The bytes of :func:`write_index_file`, written to the open file ``f``."""
    lvecs = np.ascontiguousarray(arrays.list_vectors, dtype="<f4")
    list_ids = np.ascontiguousarray(arrays.list_ids, dtype="<i8")
    n, d = lvecs.shape
    if arrays.kind == "flat":
        vectors = np.empty_like(lvecs)
        vectors[list_ids] = lvecs
        f.write(b"IxF2" + _header(d, n) + np.array([n * d], "<u8").tobytes())
        f.write(vectors.tobytes())
        return
    cen = np.ascontiguousarray(arrays.centroids, dtype="<f4")
    nlist = cen.shape[0]
    f.write(b"IwFl" + _header(d, n))
    f.write(np.array([nlist, arrays.nprobe], "<u8").tobytes())
    f.write(b"IxF2" + _header(d, nlist) + np.array([nlist * d], "<u8").tobytes())
    f.write(cen.tobytes())
    f.write(np.array([0], "<u1").tobytes() + np.array([0], "<u8").tobytes())  # no direct map
    f.write(b"ilar" + np.array([nlist, 4 * d], "<u8").tobytes())
    sizes = np.asarray(arrays.list_sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    nonempty = np.flatnonzero(sizes)
    fmt = list_format
    if fmt == "auto":
        fmt = "full" if nonempty.size > nlist // 2 else "sprs"
    if fmt == "full":
        f.write(b"full" + np.array([nlist], "<u8").tobytes() + sizes.astype("<u8").tobytes())
    else:
        pairs = np.stack([nonempty, sizes[nonempty]], axis=1).astype("<u8")
        f.write(b"sprs" + np.array([pairs.size], "<u8").tobytes() + pairs.tobytes())
    for li in nonempty.tolist():
        a, b = int(offsets[li]), int(offsets[li + 1])
        f.write(lvecs[a:b].tobytes())
        f.write(list_ids[a:b].tobytes())

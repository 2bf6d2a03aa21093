"""Feature retrieval indexes: read and write faiss ``IVF*,Flat`` files without faiss.

RVC blends the content features of every 20 ms frame with their nearest
neighbours among the training features (``index_rate``). The neighbours come
from a faiss ``IndexIVFFlat`` stored in an ``.index`` file. This module:

* parses that binary format directly with numpy (:func:`load_index`); nothing
  is unpickled and faiss is never imported;
* searches it in torch (:meth:`RetrievalIndex.search`) with faiss's semantics:
  the ``nprobe`` nearest coarse centroids (``nprobe`` is stored in the file and
  is 1 for every RVC index), only those inverted lists, the ``k`` nearest
  vectors by squared L2 in ascending order, padded with id ``-1`` and distance
  ``FLT_MAX`` when the probed lists hold fewer than ``k`` vectors;
* applies RVC's retrieval blend (:meth:`RetrievalIndex.blend`);
* writes valid faiss files (:func:`save_index`), for tests and benchmarks.

Supported files: ``IndexIVFFlat`` (fourcc ``IwFl``) with an L2 flat coarse
quantizer and array inverted lists (``full`` or ``sprs`` layout), and a bare
``IndexFlatL2`` (``IxF2``; searched exactly, as one list).

Numerics. faiss computes distances in float32 (the coarse quantizer through
BLAS as ``|x|^2 + |c|^2 - 2 x.c`` for batches of 20 or more queries, the list
scan as a sum of squared differences). Neither rounding can be reproduced
exactly, so this module decides on distances as close to exact as possible. A
fast first pass (matrix products: float32 on the CPU, float64 on CUDA, where
TF32 may be in force) ranks the centroids and keeps ``k + 8`` candidates per
probed list. Wherever two candidates on either side of a decision (the
``nprobe``-th centroid, the ``k``-th neighbour, the last candidate kept) are
closer than a generous bound on that pass's rounding error, the decision is
made again on exact float64 sums of squared differences. The ``k`` neighbours
returned get exact float64 distances, rounded to float32. Ties (duplicate
vectors) are resolved like faiss: among equal distances the vector scanned
first keeps its place, and equal distances are listed by increasing id.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch

from .errors import ModelLoadError, ParameterError
from .safe_load import check_file

__all__ = [
    "FLT_MAX",
    "RetrievalIndex",
    "load_index",
    "save_index",
    "default_nlist",
    "neighbour_weights",
]

FLT_MAX: float = float(np.finfo(np.float32).max)
"""Distance faiss reports for a missing neighbour (id ``-1``)."""

_DUMMY = 1 << 20  # faiss writes this twice in every index header
_METRIC_L2 = 1
_MAX_DIM = 1 << 16

# Candidates kept per probed list / per query beyond ``k`` by the fast first pass.
_MARGIN = 8
# Elements (not bytes) of scratch one chunk of element-wise work may allocate
# (small enough to stay in cache), and of one matrix-product result.
_CHUNK_ELEMS = 1 << 18
_GEMM_ELEMS = 1 << 21

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


# ---------------------------------------------------------------------------
# Binary reading
# ---------------------------------------------------------------------------


class _Reader:
    """Sequential little-endian reader over an open binary file; every read is bounds-checked.

    Bulk data is read straight into numpy arrays (``readinto``), so a large
    index is copied from the file once and never held twice.
    """

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
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
        view = memoryview(dst).cast("B")
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
    # A float64 sum of float32 values cannot overflow, so it is finite iff every value is.
    if arr.size and not np.isfinite(arr.sum(dtype=np.float64)):
        bad = int((~np.isfinite(arr)).any(axis=-1).sum()) if arr.ndim == 2 else -1
        raise r.fail(f"index file holds non-finite values (NaN or inf) in {bad} {what}")


@dataclass
class _Parsed:
    list_vectors: np.ndarray  # [N, d] float32, in scan (list) order
    centroids: np.ndarray  # [nlist, d] float32
    list_sizes: np.ndarray  # [nlist] int64
    list_ids: np.ndarray  # [N] int64, ids in list (scan) order
    nprobe: int
    kind: str


def _read_flat_codes(r: _Reader, hdr: _Header, what: str) -> np.ndarray:
    count = r.scalar("<u8", f"{what} vector data length")
    if count != hdr.ntotal * hdr.d:
        raise r.fail(
            f"index file is corrupt: {what} stores {count} floats but its header says "
            f"{hdr.ntotal} vectors of dimension {hdr.d} ({hdr.ntotal * hdr.d} floats)"
        )
    return r.array("<f4", count, f"{what} vectors").reshape(hdr.ntotal, hdr.d)  # a fresh array


def _parse(f: BinaryIO, size: int, path: Path) -> _Parsed:
    r = _Reader(f, size, path)
    if r.remaining < 4:
        raise r.fail("index file is too short to be a faiss index (truncated?)")
    code = r.fourcc("index type")

    if code in ("IxF2", "IxFl"):
        hdr = _read_header(r, "flat index")
        codes = _read_flat_codes(r, hdr, "flat index")
        _trailing_check(r)
        vectors = codes.astype(np.float32, copy=False)
        _check_finite(r, vectors, "vectors")
        n = hdr.ntotal
        if n == 0:
            raise r.fail("index holds no vectors")
        return _Parsed(
            list_vectors=vectors,
            centroids=np.zeros((1, hdr.d), dtype=np.float32),
            list_sizes=np.array([n], dtype=np.int64),
            list_ids=np.arange(n, dtype=np.int64),
            nprobe=1,
            kind="flat",
        )
    if code != "IwFl":
        raise r.fail(f"unsupported index: this is {_describe_fourcc(code)}; rvcfast reads {_SUPPORTED}")

    hdr = _read_header(r, "IVF index")
    d, ntotal = hdr.d, hdr.ntotal
    nlist = r.scalar("<u8", "nlist")
    nprobe = r.scalar("<u8", "nprobe")
    if nlist < 1 or nlist > max(1, r.remaining // (4 * d)):
        raise r.fail(f"index file is corrupt or truncated: nlist is {nlist}")
    if nprobe < 1:
        raise r.fail(f"index file is corrupt: nprobe is {nprobe}")
    if not hdr.is_trained:
        raise r.fail("index is not trained (it has no coarse centroids)")

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

    dm_type = r.scalar("<u1", "direct map type")
    if dm_type not in (0, 1, 2):
        raise r.fail(f"index file is corrupt: unknown direct map type {dm_type}")
    r.vector("<i8", "direct map")
    if dm_type == 2:
        r.vector("<i8", "direct map hash table")

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
        sizes = r.vector("<u8", "list sizes", expect=nlist).astype(np.int64)
    elif list_type == "sprs":
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
    else:
        raise r.fail(f"index file is corrupt: unknown inverted list layout {list_type!r}")
    held = sum(int(n) for n in sizes.tolist())
    if (sizes < 0).any() or held != ntotal:
        raise r.fail(f"index file is corrupt: the inverted lists hold {held} vectors but the header says {ntotal}")
    if ntotal == 0:
        raise r.fail(
            "index holds no vectors (only trained centroids); RVC writes such files as "
            "'trained_*.index' -- use the 'added_*.index' file"
        )
    need = ntotal * (code_size + 8)
    if need != r.remaining:
        what = "truncated" if need > r.remaining else "corrupt (unexpected trailing bytes)"
        raise r.fail(
            f"index file is {what}: the inverted lists need {need} bytes of data but "
            f"{r.remaining} bytes remain"
        )

    # List data, in ascending list order: size*code_size bytes of vectors, then size int64 ids.
    nonempty = np.flatnonzero(sizes)
    list_vectors = np.empty((ntotal, d), dtype=np.float32)
    list_ids = np.empty(ntotal, dtype=np.int64)
    at = 0
    for li in nonempty.tolist():
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
    return _Parsed(
        list_vectors=list_vectors,
        centroids=centroids,
        list_sizes=sizes,
        list_ids=list_ids,
        nprobe=int(nprobe),
        kind="ivf",
    )


def _trailing_check(r: _Reader) -> None:
    if r.remaining:
        raise r.fail(f"index file is corrupt: {r.remaining} unexpected bytes after the end of the index")


# ---------------------------------------------------------------------------
# Distance helpers
# ---------------------------------------------------------------------------


def _fast_dtype(device: torch.device) -> torch.dtype:
    """dtype of the first-pass matrix products (centroid ranking and list scan).

    float32 on the CPU when full-precision float32 matmul is in force; float64
    otherwise (CUDA may use TF32, whose 10-bit mantissa is far too coarse for
    the error bounds used to detect near-ties).
    """
    if device.type == "cpu" and torch.get_float32_matmul_precision() == "highest":
        return torch.float32
    return torch.float64


def _tolerance(qn64: torch.Tensor, vmax: float, dt: torch.dtype, dim: int) -> torch.Tensor:
    """Generous bound on the error of ``|x|^2 + |v|^2 - 2 x.v`` computed in ``dt``.

    Two candidates closer than this are treated as possibly swapped, and the
    row is recomputed exactly. (The rounding error of a length-``dim`` dot
    product grows like ``sqrt(dim)`` in practice and ``dim`` at worst; the
    bound is ~10x the typical error and near the worst case for ``dim <= 1024``.)
    """
    rel = (4e-5 if dt == torch.float32 else 1e-11) * max(1.0, dim / 1024)
    return rel * (qn64 + vmax) + 1e-30


def _sqnorms(x: torch.Tensor) -> torch.Tensor:
    """float64 squared norms of the rows of ``x``, in bounded-size chunks."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    step = max(1, _CHUNK_ELEMS // max(1, x.shape[1]))
    for a in range(0, x.shape[0], step):
        out[a : a + step] = x[a : a + step].to(torch.float64).square().sum(1)
    return out


def _next_pow2(n: np.ndarray) -> np.ndarray:
    """Smallest power of two >= each entry (>= 1)."""
    n = np.maximum(np.asarray(n, dtype=np.int64), 1)
    return (1 << np.ceil(np.log2(n)).astype(np.int64)).astype(np.int64)


def _exact_sqdist(x64: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 sum of squared differences: ``x64`` [B, d] against ``v`` [B, M, d] -> [B, M].

    Identical stored vectors always get identical distances here (each row is
    reduced the same way), which is what tie-breaking relies on.
    """
    diff = v.to(torch.float64) - x64[:, None, :]
    return (diff * diff).sum(-1)


def _order_by(dist: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Row-wise permutation sorting by ``dist``, ties by ``key`` (both [B, M])."""
    o1 = torch.argsort(key, dim=1, stable=True)
    o2 = torch.argsort(torch.gather(dist, 1, o1), dim=1, stable=True)
    return torch.gather(o1, 1, o2)


def _exact_best(x64: torch.Tensor, v: torch.Tensor, take: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``take`` nearest rows of ``v`` [s, d] for each query of ``x64`` [R, d], exactly.

    Returns ``(positions, distances)`` [R, take]: float64 sums of squared
    differences, ties to the lower position. ``v`` is scanned in chunks so
    memory stays bounded even for a list of 100k vectors.
    """
    R, d = x64.shape
    s = v.shape[0]
    vstep = max(1, _CHUNK_ELEMS // max(1, R * d))
    best_d = torch.empty((R, 0), dtype=torch.float64, device=x64.device)
    best_p = torch.empty((R, 0), dtype=torch.int64, device=x64.device)
    for a in range(0, s, vstep):
        b = min(s, a + vstep)
        dist = torch.cat([best_d, _exact_sqdist(x64, v[a:b].expand(R, -1, -1))], 1)
        pos = torch.cat([best_p, torch.arange(a, b, device=x64.device).expand(R, -1)], 1)
        o = _order_by(dist, pos)[:, :take]
        best_d = torch.gather(dist, 1, o)
        best_p = torch.gather(pos, 1, o)
    return best_p, best_d


def _coarse_exact(x64: torch.Tensor, centroids: torch.Tensor, cn64: torch.Tensor, nprobe: int) -> torch.Tensor:
    """Nearest ``nprobe`` centroids of a few queries, ranked on float64 distances (ties to the lower id)."""
    m = min(centroids.shape[0], nprobe + _MARGIN)
    c64 = centroids.to(torch.float64)
    d64 = torch.addmm(cn64[None, :], x64, c64.T, alpha=-2.0)
    cand = d64.topk(m, dim=1, largest=False, sorted=True).indices
    exact = _exact_sqdist(x64, centroids[cand])
    return torch.gather(cand, 1, _order_by(exact, cand)[:, :nprobe])


def _coarse_assign(
    q: torch.Tensor,
    centroids: torch.Tensor,
    cn64: torch.Tensor,
    nprobe: int,
) -> torch.Tensor:
    """[T, nprobe] ids of the nearest centroids by exact L2 (faiss's flat quantizer).

    A matrix product ranks the centroids; rows where the ``nprobe``-th and the
    next centroid are too close for its rounding are recomputed exactly in
    float64. Within the probe set, order is by distance, ties to the lower id.
    """
    T = q.shape[0]
    nlist = centroids.shape[0]
    dev = q.device
    if nlist == 1:
        return torch.zeros((T, 1), dtype=torch.int64, device=dev)
    dt = _fast_dtype(dev)
    c = centroids.to(dt)
    cn = cn64.to(dt)
    cmax = float(cn64.max())
    m = min(nlist, nprobe + 1)
    out = torch.empty((T, nprobe), dtype=torch.int64, device=dev)
    step = max(1, _GEMM_ELEMS // nlist)
    for a in range(0, T, step):
        b = min(T, a + step)
        xq = q[a:b]
        # Ranking only needs |c|^2 - 2 x.c (|x|^2 is the same for every centroid).
        approx = torch.addmm(cn[None, :], xq.to(dt), c.T, alpha=-2.0)
        vals, idx = approx.topk(m, dim=1, largest=False, sorted=True)
        o = _order_by(vals[:, :nprobe], idx[:, :nprobe])
        out[a:b] = torch.gather(idx[:, :nprobe], 1, o)
        if m > nprobe:
            x64 = xq.to(torch.float64)
            tol = _tolerance(x64.square().sum(1), cmax, dt, centroids.shape[1]).to(vals.dtype)
            risky = (vals[:, nprobe] - vals[:, nprobe - 1]) <= tol
            if bool(risky.any()):
                rr = risky.nonzero()[:, 0]
                out[a + rr] = _coarse_exact(x64[rr], centroids, cn64, nprobe)
    return out


def default_nlist(n: int) -> int:
    """RVC's number of IVF lists for ``n`` vectors: ``min(int(16*sqrt(n)), n//39)``, at least 1."""
    return max(1, min(int(16 * math.sqrt(n)), n // 39))


def neighbour_weights(distances: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """RVC's retrieval weights ``(1/d)^2`` normalised per row, as float32 [T, k].

    ``distances`` are squared L2 distances from :meth:`RetrievalIndex.search`.
    Missing neighbours (id ``-1``) get weight 0. The weights are computed in
    float64 as ``(d_min/d_i)^2 / sum_j (d_min/d_j)^2``, which equals RVC's
    ``(1/d_i)^2 / sum_j (1/d_j)^2`` but cannot overflow.

    Exact matches: RVC divides by zero when a query equals a stored vector
    (``d = 0``) and produces NaN. Here the limit is taken instead: the exact
    matches of a row share all the weight equally, every other neighbour gets 0.
    A row without any valid neighbour gets all-zero weights (the caller keeps
    the original features for such rows).
    """
    dist = torch.as_tensor(distances).to(torch.float64)
    valid = torch.as_tensor(ids).to(dist.device) >= 0
    dist = torch.where(valid, dist, torch.full_like(dist, math.inf))
    dmin = dist.min(dim=1, keepdim=True).values
    ratio = torch.where(dmin == 0, (dist == 0).to(torch.float64), (dmin / dist).square())
    ratio = torch.where(valid & torch.isfinite(dmin), ratio, torch.zeros_like(ratio))
    total = ratio.sum(dim=1, keepdim=True)
    w = torch.where(total > 0, ratio / total.clamp_min(1e-300), torch.zeros_like(ratio))
    return w.to(torch.float32)


# ---------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------


class RetrievalIndex:
    """An IVF-Flat (or flat) L2 index held as torch tensors, searchable on any device.

    Attributes:
        dim: vector dimension (768 for v2 models, 256 for v1).
        ntotal: number of stored vectors.
        nlist: number of inverted lists (1 for a flat index).
        nprobe: lists scanned per query; read from the file (1 for RVC indexes)
            and may be changed (values above ``nlist`` act as ``nlist``).
        centroids: [nlist, dim] float32 coarse centroids (zeros for a flat index).
        list_sizes: number of vectors in each list (numpy int64).
        path: the file it was loaded from or written to, if any.
        kind: ``"ivf"`` or ``"flat"``.

    The stored vectors are kept once, grouped by list; :attr:`vectors` gives
    them in id order.
    """

    def __init__(
        self,
        list_vectors: torch.Tensor | np.ndarray,
        list_ids: torch.Tensor | np.ndarray,
        list_sizes: np.ndarray | list[int],
        centroids: torch.Tensor | np.ndarray,
        nprobe: int = 1,
        *,
        path: str | os.PathLike[str] | None = None,
        kind: Literal["ivf", "flat"] = "ivf",
        device: str | torch.device = "cpu",
    ) -> None:
        """Build from arrays already in memory (most callers use :func:`load_index` or :meth:`from_vectors`).

        Args:
            list_vectors: [ntotal, dim] the stored vectors in scan order: those
                of list 0, then list 1, ... (the order of the file).
            list_ids: [ntotal] the id of each of those vectors; must be a
                permutation of ``0..ntotal-1``.
            list_sizes: [nlist] number of vectors in each list.
            centroids: [nlist, dim] coarse centroids.
            nprobe: lists scanned per query.
            path: file the index belongs to (used in error messages).
            kind: ``"ivf"``, or ``"flat"`` for an exact index (one list).
            device: where the tensors live.
        """
        dev = torch.device(device)
        self.path = None if path is None else os.fspath(path)
        self.kind = kind
        self._lvecs = torch.as_tensor(list_vectors, dtype=torch.float32).to(dev).contiguous()
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32).to(dev).contiguous()
        if self._lvecs.ndim != 2 or self.centroids.ndim != 2:
            raise ValueError("list_vectors and centroids must be 2-D")
        self.dim = int(self._lvecs.shape[1])
        self.ntotal = int(self._lvecs.shape[0])
        self.nlist = int(self.centroids.shape[0])
        if self.centroids.shape[1] != self.dim or self.nlist < 1:
            raise ValueError("centroids must be [nlist >= 1, dim] with the vectors' dimension")
        sizes = np.asarray(list_sizes, dtype=np.int64)
        if sizes.shape != (self.nlist,) or (sizes < 0).any() or int(sizes.sum()) != self.ntotal:
            raise ValueError("list_sizes must have one entry per centroid and sum to ntotal")
        self.list_sizes = sizes
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._list_ids = torch.as_tensor(np.asarray(list_ids), dtype=torch.int64).to(dev)
        if self._list_ids.shape != (self.ntotal,):
            raise ValueError("list_ids must have one id per vector")
        self._pos = torch.full((self.ntotal,), -1, dtype=torch.int64, device=dev)
        if self.ntotal:
            if int(self._list_ids.min()) < 0 or int(self._list_ids.max()) >= self.ntotal:
                raise ValueError("list_ids must be a permutation of 0..ntotal-1")
            self._pos[self._list_ids] = torch.arange(self.ntotal, device=dev)
            if bool((self._pos < 0).any()):
                raise ValueError("list_ids must be a permutation of 0..ntotal-1")
        self._nprobe = 1
        self.nprobe = nprobe
        self._derive()

    def _derive(self) -> None:
        """(Re)compute the helper tensors that follow from the stored ones."""
        self._lnorm64 = _sqnorms(self._lvecs)
        self._vmax = float(self._lnorm64.max()) if self.ntotal else 0.0
        self._cnorm64 = _sqnorms(self.centroids)

    # -- properties ---------------------------------------------------------

    @property
    def vectors(self) -> torch.Tensor:
        """[ntotal, dim] float32 stored vectors, row ``i`` = id ``i``.

        This is faiss's ``reconstruct_n(0, ntotal)`` (RVC's ``big_npy``). A new
        tensor is built on each access.
        """
        return self._lvecs[self._pos]

    @property
    def nprobe(self) -> int:
        """Number of inverted lists scanned per query (faiss ``nprobe``)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        value = int(value)
        if value < 1:
            raise ParameterError(f"nprobe must be >= 1, got {value}")
        self._nprobe = value

    @property
    def device(self) -> torch.device:
        """Device holding the index tensors."""
        return self._lvecs.device

    def to(self, device: str | torch.device) -> RetrievalIndex:
        """Move the index to ``device`` in place and return it."""
        dev = torch.device(device)
        if dev == self.device:
            return self
        self._lvecs = self._lvecs.to(dev)
        self.centroids = self.centroids.to(dev)
        self._list_ids = self._list_ids.to(dev)
        self._pos = self._pos.to(dev)
        self._derive()
        return self

    def __repr__(self) -> str:
        return (
            f"RetrievalIndex(kind={self.kind!r}, dim={self.dim}, ntotal={self.ntotal}, "
            f"nlist={self.nlist}, nprobe={self.nprobe}, device={str(self.device)!r})"
        )

    def list_ids(self, list_no: int) -> torch.Tensor:
        """Ids stored in inverted list ``list_no``, in scan order."""
        a, b = int(self._offsets[list_no]), int(self._offsets[list_no + 1])
        return self._list_ids[a:b]

    def check_dim(self, dim: int, what: str = "content features") -> None:
        """Raise :class:`ModelLoadError` when ``dim`` differs from the index dimension."""
        if int(dim) != self.dim:
            hint = ""
            if {int(dim), self.dim} == {256, 768}:
                hint = (
                    " (v1 models use 256-d features and v2 models 768-d: this index was built "
                    f"for a {'v2' if self.dim == 768 else 'v1'} model)"
                )
            raise ModelLoadError(
                self.path, f"index vectors are {self.dim}-dimensional but the {what} are {int(dim)}-dimensional{hint}"
            )

    # -- search ---------------------------------------------------------------

    def _queries(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(x)
        if t.ndim != 2:
            raise ParameterError(f"search expects a [T, {self.dim}] matrix of queries, got shape {tuple(t.shape)}")
        self.check_dim(t.shape[1], "queries")
        t = t.to(device=self.device, dtype=torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ParameterError("search queries contain NaN or inf")
        return t.contiguous()

    def search(self, x: torch.Tensor | np.ndarray, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest stored vectors of each query, as faiss ``index.search`` returns them.

        Args:
            x: [T, dim] queries (a tensor on any device, or a numpy array).
            k: neighbours per query.

        Returns:
            ``(distances, ids)``: [T, k] float32 squared L2 distances in ascending
            order and [T, k] int64 ids, on the device of ``x`` (CPU for numpy
            input). Slots with no neighbour (the probed lists hold fewer than
            ``k`` vectors) have id ``-1`` and distance :data:`FLT_MAX`.
        """
        out_dev = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        k = int(k)
        if k < 1:
            raise ParameterError(f"k must be >= 1, got {k}")
        with torch.no_grad():
            q = self._queries(x)
            T = q.shape[0]
            if T == 0:
                return (
                    torch.empty((0, k), dtype=torch.float32, device=out_dev),
                    torch.empty((0, k), dtype=torch.int64, device=out_dev),
                )
            probes = _coarse_assign(q, self.centroids, self._cnorm64, min(self.nprobe, self.nlist))
            x64 = q.to(torch.float64)
            pos, val, key, dt = self._first_pass(q, x64, probes, k)
            dist, ids = self._finalize(x64, pos, val, key, k, dt)
        return dist.to(out_dev), ids.to(out_dev)

    def _first_pass(
        self, q: torch.Tensor, x64: torch.Tensor, probes: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
        """Scan the probed lists with matrix products and keep ``k + margin`` candidates per list.

        The (query, list) pairs are sorted by list. Lists of similar size with
        similar numbers of queries are padded together and scanned by one
        batched product (``bmm``), so a search costs a few dozen tensor
        operations whatever ``nlist`` is; a list too large for that (a flat
        index) is scanned on its own in row chunks.

        Returns candidate scan positions (-1 = none), their first-pass squared
        distances as float64 (``inf`` = none), a key giving faiss's scan order
        (probe rank, then position in the list), each [T, nprobe*(k+margin)],
        and the dtype the distances were computed in.
        """
        T, P = probes.shape
        dev = x64.device
        dt = _fast_dtype(dev)
        d = self.dim
        kk = k + _MARGIN
        TP = T * P
        budget = _GEMM_ELEMS * (16 if dev.type == "cuda" else 1)
        pair_l = probes.reshape(-1)
        order = torch.argsort(pair_l, stable=True)
        sorted_l = pair_l[order]
        uniq, counts = torch.unique_consecutive(sorted_l, return_counts=True)
        qrow = order // P
        xs = q.to(dt)[qrow]  # the query of every (query, probe) pair, pairs sorted by list
        qns = x64.square().sum(1)[qrow]
        ln = self._lnorm64.to(dt)
        pos_s = torch.full((TP, kk), -1, dtype=torch.int64, device=dev)
        val_s = torch.full((TP, kk), math.inf, dtype=torch.float64, device=dev)
        gap = torch.full((TP,), math.inf, dtype=torch.float64, device=dev)

        # Per unique list, on the host: first scan position, size, first pair row, pair count.
        u = uniq.cpu().numpy()
        cnt = counts.cpu().numpy().astype(np.int64)
        a0 = self._offsets[u]
        size = self._offsets[u + 1] - a0
        r0 = np.cumsum(cnt) - cnt
        bs = _next_pow2(size)
        bc = _next_pow2(cnt)
        # Lists whose padded batch would exceed the budget are scanned alone (in row chunks).
        alone = (size > 0) & ((bs * d > budget) | (bc * bs > budget) | (bc * d > budget))
        batched = (size > 0) & ~alone

        def store(rows: torch.Tensor, pos: torch.Tensor, vals: torch.Tensor, take: int) -> None:
            pos_s[rows, :take] = pos
            val_s[rows, :take] = vals.to(torch.float64)
            if take >= kk:
                gap[rows] = (vals[:, -1] - vals[:, k - 1]).to(torch.float64)

        # Large lists, one at a time (their vectors are a contiguous slice: no gather).
        for j in np.flatnonzero(alone).tolist():
            s, a, c, r = int(size[j]), int(a0[j]), int(cnt[j]), int(r0[j])
            take = min(kk, s)
            vT = self._lvecs[a : a + s].to(dt).T
            step = max(1, budget // s)
            for ca in range(r, r + c, step):
                cb = min(r + c, ca + step)
                dist = torch.addmm(ln[None, a : a + s], xs[ca:cb], vT, alpha=-2.0)
                vals, sel = dist.topk(take, dim=1, largest=False, sorted=True)
                store(torch.arange(ca, cb, device=dev), sel + a, vals, take)

        # The other lists, batched by (padded size, padded query count).
        groups: dict[tuple[int, int], list[int]] = {}
        for j in np.flatnonzero(batched).tolist():
            groups.setdefault((int(bs[j]), int(bc[j])), []).append(j)
        for (S, C), members in groups.items():
            take = min(kk, S)
            per_list = S * d + C * d + C * S
            gstep = max(1, budget // per_list)
            slot_s = torch.arange(S, device=dev)
            slot_c = torch.arange(C, device=dev)
            for g0 in range(0, len(members), gstep):
                js = np.asarray(members[g0 : g0 + gstep])
                ga = torch.as_tensor(a0[js], device=dev)
                gs = torch.as_tensor(size[js], device=dev)
                gr = torch.as_tensor(r0[js], device=dev)
                gc = torch.as_tensor(cnt[js], device=dev)
                vmask = slot_s[None, :] < gs[:, None]  # [G, S]
                pos = torch.where(vmask, ga[:, None] + slot_s[None, :], torch.full_like(vmask, -1, dtype=torch.int64))
                safe = pos.clamp(min=0)
                rmask = slot_c[None, :] < gc[:, None]  # [G, C]
                rows = gr[:, None] + slot_c[None, :]
                v = self._lvecs[safe].to(dt)  # [G, S, d]
                x = xs[torch.where(rmask, rows, torch.zeros_like(rows))]  # [G, C, d]
                dist = torch.baddbmm(ln[safe][:, None, :], x, v.transpose(1, 2), alpha=-2.0)  # [G, C, S]
                dist.masked_fill_(~vmask[:, None, :], math.inf)
                vals, sel = dist.topk(take, dim=2, largest=False, sorted=True)  # [G, C, take]
                cpos = torch.gather(pos[:, None, :].expand(-1, C, -1), 2, sel)
                store(rows[rmask], cpos[rmask], vals[rmask], take)

        val_s.add_(qns[:, None])
        risky = gap <= _tolerance(qns, self._vmax, dt, d)
        if bool(risky.any()):
            # More near-equal candidates than the margin holds (duplicates): exact over the list.
            x64s = x64[qrow]
            lists = sorted_l.cpu().numpy()
            for r in risky.nonzero()[:, 0].tolist():
                a, b = int(self._offsets[lists[r]]), int(self._offsets[lists[r] + 1])
                take = min(kk, b - a)
                p, dd = _exact_best(x64s[r : r + 1], self._lvecs[a:b], take)
                pos_s[r, :take] = p[0] + a
                val_s[r, :take] = dd[0]
        pos_out = torch.empty_like(pos_s)
        val_out = torch.empty_like(val_s)
        pos_out[order] = pos_s
        val_out[order] = val_s
        pos_out = pos_out.reshape(T, P * kk)
        rank = torch.arange(P, device=dev).repeat_interleave(kk) * (self.ntotal + 1)
        key = torch.where(pos_out >= 0, pos_out + rank[None, :], torch.full_like(pos_out, torch.iinfo(torch.int64).max))
        return pos_out, val_out.reshape(T, P * kk), key, dt

    def _exact_at(self, x64: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Exact float64 distances from each query to the vectors at scan positions ``pos`` [T, M] (-1 -> inf)."""
        T, M = pos.shape
        out = torch.empty((T, M), dtype=torch.float64, device=pos.device)
        step = max(1, _CHUNK_ELEMS // max(1, M * self.dim))
        for a in range(0, T, step):
            p = pos[a : a + step]
            out[a : a + step] = _exact_sqdist(x64[a : a + step], self._lvecs[p.clamp(min=0)])
        return out.masked_fill_(pos < 0, math.inf)

    def _finalize(
        self, x64: torch.Tensor, pos: torch.Tensor, val: torch.Tensor, key: torch.Tensor, k: int, dt: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose ``k`` of the candidates like faiss's heap and order them by (distance, id).

        The first-pass distances choose the ``k`` kept, unless the ``k``-th and
        the next are closer than the first pass can separate; such rows are
        decided on exact distances, comparing them as float32 (like faiss):
        among equal distances the vector scanned first keeps its place. The
        kept ones get exact distances and are listed by (distance, id).
        """
        T, M = pos.shape
        kept = min(k, M)
        ext = min(k + 1, M)
        o = _order_by(val, key)[:, :ext]
        val_o = torch.gather(val, 1, o)
        sel = torch.gather(pos, 1, o[:, :kept])
        ex = self._exact_at(x64, sel)
        if ext > kept:
            tol = _tolerance(x64.square().sum(1), self._vmax, dt, self.dim)
            near = torch.isfinite(val_o[:, kept]) & (val_o[:, kept] - val_o[:, kept - 1] <= 2 * tol)
            if bool(near.any()):
                rr = near.nonzero()[:, 0]
                ex_all = self._exact_at(x64[rr], pos[rr])
                o2 = _order_by(ex_all.to(torch.float32), key[rr])[:, :kept]
                sel[rr] = torch.gather(pos[rr], 1, o2)
                ex[rr] = torch.gather(ex_all, 1, o2)
        ok = sel >= 0
        d = ex.to(torch.float32).masked_fill(~ok, math.inf)
        ids = torch.where(ok, self._list_ids[sel.clamp(min=0)], torch.full_like(sel, torch.iinfo(torch.int64).max))
        fin = _order_by(d, ids)
        d = torch.gather(d, 1, fin)
        ids = torch.gather(ids, 1, fin)
        ok = torch.gather(ok, 1, fin)
        dist_out = torch.full((T, k), FLT_MAX, dtype=torch.float32, device=pos.device)
        ids_out = torch.full((T, k), -1, dtype=torch.int64, device=pos.device)
        dist_out[:, :kept] = torch.where(ok, d, torch.full_like(d, FLT_MAX))
        ids_out[:, :kept] = torch.where(ok, ids, torch.full_like(ids, -1))
        return dist_out, ids_out

    # -- blend ----------------------------------------------------------------

    def blend(self, features: torch.Tensor, index_rate: float, k: int = 8) -> torch.Tensor:
        """RVC's retrieval blend: ``index_rate * retrieved + (1 - index_rate) * features``.

        ``retrieved`` is the weighted sum of each frame's ``k`` nearest stored
        vectors with weights from :func:`neighbour_weights` (``(1/d)^2``,
        row-normalised; missing neighbours weigh 0; exact matches take all the
        weight instead of producing NaN). Frames whose probed lists are empty
        keep their features unchanged.

        Args:
            features: [..., T, dim] content features (e.g. [T, 768] or [1, T, 768]).
            index_rate: blend factor in [0, 1]; 0 returns ``features`` itself.
            k: neighbours per frame (RVC uses 8).

        Returns:
            A tensor of the same shape, dtype and device as ``features``.
        """
        rate = float(index_rate)
        if math.isnan(rate) or not 0.0 <= rate <= 1.0:
            raise ParameterError(f"index_rate must be between 0 and 1, got {index_rate!r}")
        if rate == 0.0:
            return features
        self.check_dim(features.shape[-1])
        dist, ids = self.search(features.reshape(-1, self.dim), k)
        return self.blend_neighbours(features, dist, ids, rate)

    def blend_neighbours(
        self,
        features: torch.Tensor,
        distances: torch.Tensor | np.ndarray,
        ids: torch.Tensor | np.ndarray,
        index_rate: float,
    ) -> torch.Tensor:
        """The blend of :meth:`blend` for neighbours already found (by :meth:`search` or by faiss).

        ``distances``/``ids`` are [T', k] where T' is the number of feature rows
        (all leading dimensions of ``features`` flattened).
        """
        rate = float(index_rate)
        self.check_dim(features.shape[-1])
        with torch.no_grad():
            flat = features.reshape(-1, self.dim).to(device=self.device, dtype=torch.float32)
            ids_t = torch.as_tensor(ids).to(self.device, torch.int64)
            dist_t = torch.as_tensor(distances).to(self.device)
            if ids_t.ndim != 2 or ids_t.shape[0] != flat.shape[0] or dist_t.shape != ids_t.shape:
                raise ParameterError(
                    f"neighbour tables of shape {tuple(dist_t.shape)}/{tuple(ids_t.shape)} do not match "
                    f"{flat.shape[0]} feature rows"
                )
            if ids_t.numel() and int(ids_t.max()) >= self.ntotal:
                raise ParameterError(f"neighbour id {int(ids_t.max())} is beyond the index size {self.ntotal}")
            w = neighbour_weights(dist_t, ids_t)
            neigh = self._lvecs[self._pos[ids_t.clamp(min=0)]]  # [T', k, dim]
            retrieved = torch.bmm(w[:, None, :], neigh)[:, 0, :]
            mixed = retrieved * rate + (1.0 - rate) * flat
            mixed = torch.where((ids_t >= 0).any(dim=1, keepdim=True), mixed, flat)
        return mixed.to(device=features.device, dtype=features.dtype).reshape(features.shape)

    # -- building and writing ---------------------------------------------------

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray | torch.Tensor,
        centroids: np.ndarray | torch.Tensor | None = None,
        nlist: int | None = None,
        nprobe: int = 1,
        seed: int = 0,
        *,
        niter: int = 10,
        device: str | torch.device = "cpu",
    ) -> RetrievalIndex:
        """An IVF-Flat index over ``vectors`` (ids 0..N-1 in row order), built without faiss.

        Without ``centroids``, ``nlist`` centroids (default :func:`default_nlist`)
        are trained with ``niter`` rounds of k-means on at most ``256*nlist``
        rows, seeded by ``seed``. Every vector goes to its nearest centroid
        (exact L2); within a list, ids keep their order.
        """
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if isinstance(vectors, np.ndarray) else vectors)
        x = x.to(device=device, dtype=torch.float32).contiguous()
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ParameterError(f"vectors must be a non-empty [N, d] matrix, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ParameterError("vectors contain NaN or inf")
        n, d = x.shape
        if centroids is not None:
            c = torch.as_tensor(np.asarray(centroids, dtype=np.float32)).to(x.device)
            if c.ndim != 2 or c.shape[1] != d or c.shape[0] < 1:
                raise ParameterError(f"centroids must be [nlist, {d}], got shape {tuple(c.shape)}")
            if not bool(torch.isfinite(c).all()):
                raise ParameterError("centroids contain NaN or inf")
            if nlist is not None and int(nlist) != c.shape[0]:
                raise ParameterError(f"nlist={nlist} but {c.shape[0]} centroids were given")
        else:
            nl = default_nlist(n) if nlist is None else int(nlist)
            if not 1 <= nl <= n:
                raise ParameterError(f"nlist must be between 1 and the number of vectors ({n}), got {nl}")
            c = _kmeans(x, nl, niter=niter, seed=seed)
        nl = int(c.shape[0])
        assign = _coarse_assign(x, c, _sqnorms(c), 1)[:, 0]
        order = torch.argsort(assign, stable=True)
        sizes = torch.bincount(assign, minlength=nl).cpu().numpy().astype(np.int64)
        return cls(x[order], order, sizes, c, nprobe, kind="ivf", device=x.device)

    def save(self, path: str | os.PathLike[str], list_format: Literal["auto", "full", "sprs"] = "auto") -> None:
        """Write the index as a faiss file that ``faiss.read_index`` loads.

        An IVF index is written as ``IndexIVFFlat`` (``IwFl``), a flat one as
        ``IndexFlatL2`` (``IxF2``). ``list_format="auto"`` picks the inverted
        list layout the way faiss does (``full`` when more than half of the
        lists are non-empty, else ``sprs``).
        """
        if list_format not in ("auto", "full", "sprs"):
            raise ParameterError(f"list_format must be 'auto', 'full' or 'sprs', got {list_format!r}")
        d, n = self.dim, self.ntotal

        def header(ntotal: int) -> bytes:
            return (
                np.array([d], "<i4").tobytes()
                + np.array([ntotal, _DUMMY, _DUMMY], "<i8").tobytes()
                + np.array([1], "<u1").tobytes()
                + np.array([_METRIC_L2], "<i4").tobytes()
            )

        with open(path, "wb") as f:
            if self.kind == "flat":
                f.write(b"IxF2" + header(n) + np.array([n * d], "<u8").tobytes())
                f.write(self.vectors.cpu().numpy().astype("<f4", copy=False).tobytes())
                return
            lvecs = self._lvecs.cpu().numpy().astype("<f4", copy=False)
            list_ids = self._list_ids.cpu().numpy().astype("<i8", copy=False)
            cen = self.centroids.cpu().numpy().astype("<f4", copy=False)
            f.write(b"IwFl" + header(n))
            f.write(np.array([self.nlist, self.nprobe], "<u8").tobytes())
            f.write(b"IxF2" + header(self.nlist) + np.array([self.nlist * d], "<u8").tobytes())
            f.write(np.ascontiguousarray(cen).tobytes())
            f.write(np.array([0], "<u1").tobytes() + np.array([0], "<u8").tobytes())  # no direct map
            f.write(b"ilar" + np.array([self.nlist, 4 * d], "<u8").tobytes())
            sizes = self.list_sizes
            nonempty = np.flatnonzero(sizes)
            fmt = list_format
            if fmt == "auto":
                fmt = "full" if nonempty.size > self.nlist // 2 else "sprs"
            if fmt == "full":
                f.write(b"full" + np.array([self.nlist], "<u8").tobytes() + sizes.astype("<u8").tobytes())
            else:
                pairs = np.stack([nonempty, sizes[nonempty]], axis=1).astype("<u8")
                f.write(b"sprs" + np.array([pairs.size], "<u8").tobytes() + pairs.tobytes())
            for li in nonempty.tolist():
                a, b = int(self._offsets[li]), int(self._offsets[li + 1])
                f.write(lvecs[a:b].tobytes())
                f.write(list_ids[a:b].tobytes())


def _kmeans(x: torch.Tensor, nlist: int, *, niter: int, seed: int) -> torch.Tensor:
    """Plain Lloyd k-means (float32), for building indexes without faiss."""
    n, d = x.shape
    gen = np.random.default_rng(seed)
    if n > 256 * nlist:
        x = x[torch.as_tensor(np.sort(gen.choice(n, 256 * nlist, replace=False)), device=x.device)]
        n = x.shape[0]
    c = x[torch.as_tensor(gen.choice(n, nlist, replace=False), device=x.device)].clone()
    xn = (x * x).sum(1)
    for _ in range(niter):
        cn = (c * c).sum(1)
        assign = torch.addmm(cn[None, :], x, c.T, alpha=-2.0).argmin(1)
        counts = torch.bincount(assign, minlength=nlist)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None].to(x.dtype))
        if bool(empty.any()):
            # Re-seed empty clusters with the points farthest from their centroid.
            far = (xn + cn[assign] - 2 * (x * c[assign]).sum(1)).argsort(descending=True)
            ne = int(empty.sum())
            c[empty.nonzero()[:, 0]] = x[far[:ne]]
    return c


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def load_index(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> RetrievalIndex:
    """Read a faiss ``.index`` file (``IVF<n>,Flat`` or ``IndexFlatL2``) without faiss.

    Everything is validated: an unsupported index type (IVFPQ, HNSW, ...), a
    metric other than L2, a truncated file, sizes that do not match the file
    length, ids that are not ``0..ntotal-1`` or non-finite values raise
    :class:`~rvcfast.errors.ModelLoadError` naming the file. Nothing is
    unpickled; bulk data is read straight into its final arrays.
    """
    p = check_file(path, "index")
    try:
        with open(p, "rb") as f:
            parsed = _parse(f, os.fstat(f.fileno()).st_size, p)
    except OSError as exc:
        raise ModelLoadError(p, f"index file could not be read: {exc}") from None
    return RetrievalIndex(
        parsed.list_vectors,
        parsed.list_ids,
        parsed.list_sizes,
        parsed.centroids,
        parsed.nprobe,
        path=p,
        kind=parsed.kind,  # type: ignore[arg-type]
        device=device,
    )


def save_index(
    path: str | os.PathLike[str],
    vectors: np.ndarray | torch.Tensor,
    centroids: np.ndarray | torch.Tensor | None = None,
    nlist: int | None = None,
    nprobe: int = 1,
    seed: int = 0,
    *,
    list_format: Literal["auto", "full", "sprs"] = "auto",
    niter: int = 10,
) -> RetrievalIndex:
    """Build an IVF-Flat index over ``vectors`` and write it in faiss's format.

    ``nlist`` defaults to RVC's rule (:func:`default_nlist`). Without
    ``centroids``, k-means trains them (see :meth:`RetrievalIndex.from_vectors`).
    Ids are 0..N-1 in row order, as RVC's ``index.add`` gives them. Returns the
    index that was written.
    """
    index = RetrievalIndex.from_vectors(vectors, centroids, nlist, nprobe, seed, niter=niter)
    index.save(path, list_format=list_format)
    index.path = os.fspath(path)
    return index

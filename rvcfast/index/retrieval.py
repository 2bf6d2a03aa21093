"""The retrieval index (:class:`RetrievalIndex`): search, RVC's blend, building, files.

RVC blends the content features of every 20 ms frame with their nearest neighbours
among the training features (``index_rate``): :meth:`RetrievalIndex.blend` with the
weights of :func:`neighbour_weights`. :func:`load_index` reads a faiss file
(:mod:`.format`), :meth:`RetrievalIndex.search` searches it exactly (:mod:`.search`),
and :func:`save_index` builds one from vectors (k-means from :mod:`.build`) and
writes it.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..cache import get_shared
from ..errors import ModelLoadError, ParameterError
from ..safe_load import check_file
from .build import default_nlist, kmeans
from .format import IndexArrays, read_index_file, write_index_file
from .search import ListStore, coarse_assign, knn_search, sqnorms

__all__ = ["RetrievalIndex", "load_index", "save_index", "neighbour_weights"]


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


def _check_rate(index_rate: float) -> float:
    """``index_rate`` as a float in [0, 1], else :class:`ParameterError`."""
    try:
        rate = float(index_rate)
    except (TypeError, ValueError):
        raise ParameterError(f"index_rate must be a number between 0 and 1, got {index_rate!r}") from None
    if math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise ParameterError(f"index_rate must be between 0 and 1, got {index_rate!r}")
    return rate


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
    them in id order. Indexes that :func:`load_index` read from the same file onto the
    same device share these tensors (treat them as read-only).
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
        # detach(): tensors that require grad are stored as plain data (no autograd graph kept).
        self._lvecs = torch.as_tensor(list_vectors, dtype=torch.float32).detach().to(dev).contiguous()
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32).detach().to(dev).contiguous()
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
        self._list_ids = torch.as_tensor(list_ids, dtype=torch.int64).detach().to(dev)
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
        self._from_file: _FromFile | None = None  # tensors shared with the other indexes of a file (load_index)
        self._derive()

    def _derive(self) -> None:
        """(Re)compute the helper tensors that follow from the stored ones."""
        self._lnorm64 = sqnorms(self._lvecs)
        self._lnorm32 = self._lnorm64.to(torch.float32)  # for the first pass of a search (not rebuilt per search)
        self._vmax = float(self._lnorm64.max()) if self.ntotal else 0.0
        self._cnorm64 = sqnorms(self.centroids)

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
        self._from_file = None  # its tensors are its own from now on
        self._lvecs = self._lvecs.to(dev)
        self.centroids = self.centroids.to(dev)
        self._list_ids = self._list_ids.to(dev)
        self._pos = self._pos.to(dev)
        self._derive()
        return self

    def __getstate__(self) -> dict[str, Any]:
        # A pickle holds the index's own tensors, never the tensors shared with other indexes of its file.
        return {**self.__dict__, "_from_file": None}

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
            store = ListStore(self._lvecs, self._list_ids, self._offsets, self._lnorm64, self._vmax, getattr(self, "_lnorm32", None))
            dist, ids = knn_search(store, self.centroids, self._cnorm64, min(self.nprobe, self.nlist), q, k)
        return dist.to(out_dev), ids.to(out_dev)


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
        rate = _check_rate(index_rate)
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
        rate = _check_rate(index_rate)
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
        x = x.detach().to(device=device, dtype=torch.float32).contiguous()
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ParameterError(f"vectors must be a non-empty [N, d] matrix, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ParameterError("vectors contain NaN or inf")
        n, d = x.shape
        if centroids is not None:
            c = torch.as_tensor(centroids, dtype=torch.float32).detach().to(x.device)
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
            c = kmeans(x, nl, niter=niter, seed=seed)
        nl = int(c.shape[0])
        assign = coarse_assign(x, c, sqnorms(c), 1)[:, 0]
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
        arrays = IndexArrays(
            list_vectors=self._lvecs.cpu().numpy(),
            centroids=self.centroids.cpu().numpy(),
            list_sizes=self.list_sizes,
            list_ids=self._list_ids.cpu().numpy(),
            nprobe=self.nprobe,
            kind=self.kind,  # type: ignore[arg-type]
        )
        write_index_file(path, arrays, list_format)


class _FromFile:
    """The tensors of one version of an index file on one device (held by a template index
    that is never handed out), shared by every index :func:`load_index` returns for it. Each
    of those holds this object, so it (and its entry in :func:`rvcfast.cache.get_shared`'s
    table) lives as long as one of them does."""

    __slots__ = ("index", "__weakref__")

    def __init__(self, index: RetrievalIndex) -> None:
        self.index = index


def _device_key(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _dim_mismatch(path: str | os.PathLike[str], index_dim: int, feature_dim: int, model: str | None) -> ModelLoadError:
    """The error for an index whose vectors are not the voice model's feature dimension."""
    about = f" ({model})" if model else ""
    return ModelLoadError(
        path,
        f"index dimension {index_dim} does not match the voice model's feature dimension {feature_dim}{about}; "
        "use the index trained with this model",
    )


def _read_index(p: Path, dev: torch.device, feature_dim: int | None = None, model: str | None = None) -> RetrievalIndex:
    def check(d: int) -> None:
        if feature_dim is not None and d != feature_dim:
            raise _dim_mismatch(p, d, feature_dim, model)

    parsed = read_index_file(p, check)
    return RetrievalIndex(
        parsed.list_vectors,
        parsed.list_ids,
        parsed.list_sizes,
        parsed.centroids,
        parsed.nprobe,
        path=p,
        kind=parsed.kind,
        device=dev,
    )


def load_index(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    feature_dim: int | None = None,
    model: str | None = None,
) -> RetrievalIndex:
    """Read a faiss ``.index`` file (``IVF<n>,Flat`` or ``IndexFlatL2``) without faiss.

    ``feature_dim``: the feature dimension of the voice model the index is for (768 for v2,
    256 for v1). An index of another dimension is refused as soon as its header is read,
    before its vectors (a wrong 1.5 GB index fails at once, not after seconds of reading):
    :class:`~rvcfast.errors.ModelLoadError` naming the file, its dimension and
    ``feature_dim``, with ``model`` (a description of the voice model) in parentheses.

    Everything is validated: an unsupported index type (IVFPQ, HNSW, ...), a
    metric other than L2, a truncated file, sizes that do not match the file
    length, ids that are not ``0..ntotal-1`` or non-finite values raise
    :class:`~rvcfast.errors.ModelLoadError` naming the file. Nothing is
    unpickled; bulk data is read straight into its final arrays.

    While an index loaded from a file is in use (a ``Converter`` holds it), loading
    the same file again onto the same device returns a new index sharing its tensors:
    no second read and no second copy in memory (a file changed or replaced on disk
    since is read again). Each index has its own :attr:`~RetrievalIndex.nprobe` and
    :attr:`~RetrievalIndex.path`; :meth:`~RetrievalIndex.to` gives it tensors of its own.
    """
    p = check_file(path, "index")
    dev = _device_key(device)
    held = get_shared("index", p, dev, lambda: _FromFile(_read_index(p, dev, feature_dim, model)))
    if feature_dim is not None and held.index.dim != feature_dim:  # loaded before, for another model
        raise _dim_mismatch(p, held.index.dim, feature_dim, model)
    index = copy.copy(held.index)
    index.path = os.fspath(p)
    index._from_file = held  # keeps the shared tensors registered while the index lives
    return index


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

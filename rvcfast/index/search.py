"""Exact L2 nearest-neighbour search over inverted lists, with faiss's semantics.

The ``nprobe`` nearest coarse centroids are found (:func:`coarse_assign`), only those
inverted lists are scanned, and the ``k`` nearest vectors by squared L2 come back in
ascending order, padded with id ``-1`` and distance :data:`FLT_MAX` when the probed
lists hold fewer than ``k`` vectors (:func:`knn_search`).

Numerics. faiss computes distances in float32 (the coarse quantizer through BLAS as
``|x|^2 + |c|^2 - 2 x.c`` for batches of 20 or more queries, the list scan as a sum of
squared differences). Neither rounding can be reproduced exactly, so this module decides
on distances as close to exact as possible. A fast first pass (matrix products: float32
on the CPU, float64 on CUDA, where TF32 may be in force) ranks the centroids and keeps
``k + 8`` candidates per probed list (fewer when the lists are shorter). Wherever two
candidates on either side of a decision (the ``nprobe``-th centroid, the ``k``-th
neighbour, the last candidate kept) are closer than a generous bound on that pass's
rounding error, the decision is made
again on exact float64 sums of squared differences, rounded to float32 and compared
like faiss's float32 distances. The ``k`` neighbours returned get exact float64
distances, rounded to float32. Ties (equal float32 distances, such as duplicate vectors
or equidistant centroids) are resolved like faiss: centroids to the lower id, neighbours
like faiss's result heap (:func:`_faiss_choice`); equal distances are listed by
increasing id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["FLT_MAX", "ListStore", "coarse_assign", "knn_search", "sqnorms"]

FLT_MAX: float = float(np.finfo(np.float32).max)
"""Distance faiss reports for a missing neighbour (id ``-1``)."""

# Candidates kept per probed list / per query beyond ``k`` by the fast first pass.
_MARGIN = 8
# Elements (not bytes) of scratch one chunk of element-wise work may allocate
# (small enough to stay in cache), and of one matrix-product result.
_CHUNK_ELEMS = 1 << 18
_GEMM_ELEMS = 1 << 21


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
    It also covers one float32 rounding step of the distances (at most
    ``2*(|x|^2 + vmax)``), since decisions compare exact distances rounded to
    float32 as faiss does: values that close may be equal there.
    """
    rel = (4e-5 if dt == torch.float32 else 1e-11) * max(1.0, dim / 1024) + 2.0**-22
    return rel * (qn64 + vmax) + 1e-30


def sqnorms(x: torch.Tensor) -> torch.Tensor:
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


def _rank_all_centroids(x64: torch.Tensor, centroids: torch.Tensor, nprobe: int) -> torch.Tensor:
    """The ``nprobe`` nearest of all centroids to one query ``x64`` [1, d], on exact distances
    compared as float32 (ties to the lower id), in chunks of bounded size."""
    nlist, d = centroids.shape
    ex = torch.empty(nlist, dtype=torch.float64, device=x64.device)
    step = max(1, _CHUNK_ELEMS // d)
    for a in range(0, nlist, step):
        ex[a : a + step] = _exact_sqdist(x64, centroids[a : a + step][None])[0]
    ids = torch.arange(nlist, device=x64.device)
    return _order_by(ex.to(torch.float32)[None], ids[None])[0, :nprobe]


def _coarse_exact(x64: torch.Tensor, centroids: torch.Tensor, cn64: torch.Tensor, nprobe: int) -> torch.Tensor:
    """Nearest ``nprobe`` centroids of a few queries on exact distances compared as float32
    (like faiss; ties to the lower id).

    ``nprobe + margin`` candidates are ranked exactly; a query for which a centroid
    outside them may tie with the ``nprobe``-th (many equidistant centroids, as k-means
    gives on duplicated data) is ranked exactly against every centroid.
    """
    nlist = centroids.shape[0]
    m = min(nlist, nprobe + _MARGIN)
    c64 = centroids.to(torch.float64)
    d64 = torch.addmm(cn64[None, :], x64, c64.T, alpha=-2.0)
    cand = d64.topk(m, dim=1, largest=False, sorted=True).indices
    exact = _exact_sqdist(x64, centroids[cand])
    f32 = exact.to(torch.float32)
    o = _order_by(f32, cand)[:, :nprobe]
    out = torch.gather(cand, 1, o)
    if m < nlist:
        # A centroid outside the candidates is no nearer than the last candidate by d64,
        # so (exactly) no nearer than that candidate's exact distance less twice d64's error.
        tol = _tolerance(x64.square().sum(1), float(cn64.max()), torch.float64, centroids.shape[1])
        bound = (exact[:, -1] - 2 * tol).to(torch.float32)
        crowded = bound <= torch.gather(f32, 1, o[:, -1:])[:, 0]
        for r in crowded.nonzero()[:, 0].tolist():
            out[r] = _rank_all_centroids(x64[r : r + 1], centroids, nprobe)
    return out


def coarse_assign(
    q: torch.Tensor,
    centroids: torch.Tensor,
    cn64: torch.Tensor,
    nprobe: int,
) -> torch.Tensor:
    """[T, nprobe] ids of the nearest centroids by L2 (faiss's flat quantizer).

    A matrix product ranks the centroids; rows where the ``nprobe``-th and the
    next centroid are too close for its rounding are decided again on exact
    float64 distances compared as float32, like faiss. Within the probe set,
    order is by distance, ties to the lower id.
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



@dataclass
class ListStore:
    """The stored vectors grouped by inverted list, with the norms the search needs.

    ``vectors`` ``[ntotal, d]`` float32 and ``ids`` ``[ntotal]`` int64 are in scan order
    (list 0, then list 1, ...); list ``l`` holds scan positions
    ``offsets[l]:offsets[l + 1]``; ``norms64`` are the vectors' float64 squared norms,
    ``vmax`` the largest of them and ``norms32`` (optional) the same rounded to float32.
    """

    vectors: torch.Tensor
    ids: torch.Tensor
    offsets: np.ndarray
    norms64: torch.Tensor
    vmax: float
    norms32: torch.Tensor | None = None

    def norms(self, dt: torch.dtype) -> torch.Tensor:
        """The squared norms in ``dt`` (float32 ones kept with the index, computed once)."""
        if dt == torch.float32 and self.norms32 is not None:
            return self.norms32
        return self.norms64.to(dt)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0])


class _Candidates:
    """Per (query, probe) pair: the best ``kk`` scan positions and their first-pass squared
    distances (float64; -1 / ``inf`` = none), and the gap between the last kept and the
    ``k``-th distance (``inf`` when fewer than ``kk`` were kept). ``kk`` is ``k + margin``,
    but never more than ``cap`` (the largest probed list): a large ``k`` costs no more
    memory than the probed lists hold."""

    def __init__(self, pairs: int, k: int, device: torch.device, cap: int) -> None:
        self.k = k
        self.kk = max(1, min(k + _MARGIN, cap))
        self.pos = torch.full((pairs, self.kk), -1, dtype=torch.int64, device=device)
        self.val = torch.full((pairs, self.kk), math.inf, dtype=torch.float64, device=device)
        self.gap = torch.full((pairs,), math.inf, dtype=torch.float64, device=device)

    def put(self, rows: torch.Tensor, pos: torch.Tensor, vals: torch.Tensor, take: int) -> None:
        self.pos[rows, :take] = pos
        self.val[rows, :take] = vals.to(torch.float64)
        if take >= self.kk > self.k:
            self.gap[rows] = (vals[:, -1] - vals[:, self.k - 1]).to(torch.float64)


class _ListPlan(NamedTuple):
    """Per probed list (host arrays): first scan position, size, first pair row, pair count,
    and size / pair count rounded up to powers of two (the padded batch shapes)."""

    a0: np.ndarray
    size: np.ndarray
    r0: np.ndarray
    cnt: np.ndarray
    bs: np.ndarray
    bc: np.ndarray


def _scan_large_list(
    store: ListStore, cands: _Candidates, xs: torch.Tensor, ln: torch.Tensor, dt: torch.dtype,
    budget: int, plan: _ListPlan, j: int,
) -> None:
    """Scan list ``j`` of the plan on its own: its vectors are a contiguous slice (no gather).

    The list is read once, in blocks of at most ``budget`` elements (converted to ``dt``
    block by block), each block against all of the list's queries (in row chunks whose
    results stay within ``budget``); each query keeps its best ``take`` over the blocks.
    (A flat index is one list: reading all of it for every few queries made a search of
    a 100k-vector flat index 3.5x slower than faiss.)
    """
    s, a, c, r = int(plan.size[j]), int(plan.a0[j]), int(plan.cnt[j]), int(plan.r0[j])
    take = min(cands.kk, s)
    dev = xs.device
    vstep = max(take, budget // store.dim)
    qstep = max(1, budget // min(s, vstep))
    best_v = torch.full((c, take), math.inf, dtype=dt, device=dev)
    best_p = torch.full((c, take), -1, dtype=torch.int64, device=dev)
    for va in range(a, a + s, vstep):
        vb = min(a + s, va + vstep)
        vblock = store.vectors[va:vb].to(dt)
        for qa in range(0, c, qstep):
            qb = min(c, qa + qstep)
            x = xs[r + qa : r + qb]
            if _padded_count(qb - qa) > qb - qa:
                x = torch.cat([x, x[:1]])
            # [block, queries], transposed: MKL is up to 2x faster this way round than [queries, block]
            dist = torch.addmm(ln[va:vb, None], vblock, x.T, alpha=-2.0)[:, : qb - qa].T
            vals, sel = dist.topk(min(take, vb - va), dim=1, largest=False, sorted=True)
            if va > a:  # merge with the best of the blocks before
                vals = torch.cat([best_v[qa:qb], vals], 1)
                sel = torch.cat([best_p[qa:qb], sel + va], 1)
                vals, o = vals.topk(take, dim=1, largest=False, sorted=True)
                sel = torch.gather(sel, 1, o)
            else:
                sel = sel + va
            best_v[qa:qb] = vals
            best_p[qa:qb] = sel
    cands.put(torch.arange(r, r + c, device=dev), best_p, best_v, take)


def _scan_list_batch(
    store: ListStore, cands: _Candidates, xs: torch.Tensor, ln: torch.Tensor, dt: torch.dtype,
    plan: _ListPlan, js: np.ndarray, S: int, C: int,
) -> None:
    """Scan the lists ``js`` together, padded to ``S`` vectors and ``C`` queries each (one ``bmm``)."""
    dev = xs.device
    take = min(cands.kk, S)
    slot_s = torch.arange(S, device=dev)
    slot_c = torch.arange(C, device=dev)
    ga = torch.as_tensor(plan.a0[js], device=dev)
    gs = torch.as_tensor(plan.size[js], device=dev)
    gr = torch.as_tensor(plan.r0[js], device=dev)
    gc = torch.as_tensor(plan.cnt[js], device=dev)
    vmask = slot_s[None, :] < gs[:, None]  # [G, S]
    pos = torch.where(vmask, ga[:, None] + slot_s[None, :], torch.full_like(vmask, -1, dtype=torch.int64))
    safe = pos.clamp(min=0)
    rmask = slot_c[None, :] < gc[:, None]  # [G, C]
    rows = gr[:, None] + slot_c[None, :]
    v = store.vectors[safe].to(dt)  # [G, S, d]
    x = xs[torch.where(rmask, rows, torch.zeros_like(rows))]  # [G, C, d]
    dist = torch.baddbmm(ln[safe][:, None, :], x, v.transpose(1, 2), alpha=-2.0)  # [G, C, S]
    dist.masked_fill_(~vmask[:, None, :], math.inf)
    vals, sel = dist.topk(take, dim=2, largest=False, sorted=True)  # [G, C, take]
    cpos = torch.gather(pos[:, None, :].expand(-1, C, -1), 2, sel)
    cands.put(rows[rmask], cpos[rmask], vals[rmask], take)


def _in_place_scan(device: torch.device) -> bool:
    """Whether the probed lists are scanned where they lie (:func:`_scan_in_place`, the CPU)
    rather than copied into padded batches (:func:`_scan_list_batch`, fewer and larger kernels
    for a GPU)."""
    return device.type == "cpu"


def _padded_count(c: int) -> int:
    """Queries of a list scanned in place, counted as the product runs them: a single one (or an
    odd few) gets a copy of itself, since a matrix-vector product (or an odd width) can be much
    slower than a two-column one for the same bytes read (MKL on an AMD CPU: 2x)."""
    return c + 1 if c % 2 and c < 8 else c


def _scan_in_place(
    store: ListStore, cands: _Candidates, xs: torch.Tensor, ln: torch.Tensor, dt: torch.dtype,
    plan: _ListPlan, budget: int, js: np.ndarray,
) -> None:
    """Scan the lists ``js`` where they lie: one matrix product per list, of its contiguous slice of
    the stored vectors (never copied) against every query that probes it (``c`` consecutive rows of
    ``xs``). Lists of similar size share a buffer (at most ``budget`` elements) and one top-k."""
    order = sorted(js.tolist(), key=lambda j: (int(plan.bs[j]), j))
    i = 0
    while i < len(order):
        S = int(plan.bs[order[i]])
        members: list[int] = []
        ncols = 0
        while i < len(order) and int(plan.bs[order[i]]) == S:
            c = _padded_count(int(plan.cnt[order[i]]))
            if members and (ncols + c) * S > budget:
                break
            members.append(order[i])
            ncols += c
            i += 1
        _scan_buffer(store, cands, xs, ln, dt, plan, members, ncols)


def _scan_buffer(
    store: ListStore, cands: _Candidates, xs: torch.Tensor, ln: torch.Tensor, dt: torch.dtype,
    plan: _ListPlan, members: list[int], ncols: int,
) -> None:
    """The lists ``members`` of :func:`_scan_in_place`, into one buffer ``[width, ncols]``: each
    list's products fill its columns (its queries, padded) down to its size."""
    dev = xs.device
    js = np.asarray(members)
    a0, size, r0, cnt = plan.a0[js], plan.size[js], plan.r0[js], plan.cnt[js]
    padded = np.array([_padded_count(int(c)) for c in cnt.tolist()], dtype=np.int64)
    col0 = np.cumsum(padded) - padded
    width = int(size.max())
    # the queries of every list, padded (a padding column repeats the list's first query)
    slot = np.arange(ncols) - np.repeat(col0, padded)
    slot = np.where(slot < np.repeat(cnt, padded), slot, 0)
    xp = xs[torch.as_tensor(np.repeat(r0, padded) + slot, device=dev)]
    buf = torch.empty((width, ncols), dtype=dt, device=dev)
    vec = store.vectors
    for a, s, cp, at in zip(a0.tolist(), size.tolist(), padded.tolist(), col0.tolist()):
        torch.mm(vec[a : a + s], xp[at : at + cp].T, out=buf[:s, at : at + cp])
    # per (query, list) pair: its column, its row of xs, its list's first position and size
    within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    cols = torch.as_tensor(np.repeat(col0, cnt) + within, device=dev)
    rows = torch.as_tensor(np.repeat(r0, cnt) + within, device=dev)
    base = torch.as_tensor(np.repeat(a0, cnt), device=dev)[:, None]
    col = torch.arange(width, device=dev)[None, :]
    valid = col < torch.as_tensor(np.repeat(size, cnt), device=dev)[:, None]
    dist = ln[(base + col).clamp(max=store.ntotal - 1)] - 2.0 * buf[:, cols].T
    dist.masked_fill_(~valid, math.inf)
    take = min(cands.kk, width)
    vals, sel = dist.topk(take, dim=1, largest=False, sorted=True)
    pos = torch.where(torch.gather(valid, 1, sel), sel + base, torch.full_like(sel, -1))
    cands.put(rows, pos, vals, take)


def _scan_lists(
    store: ListStore, cands: _Candidates, xs: torch.Tensor, ln: torch.Tensor, dt: torch.dtype, plan: _ListPlan
) -> None:
    """Scan every probed list: lists too large for a padded batch alone (in row chunks), the
    others in place on the CPU (:func:`_scan_in_place`), elsewhere batched by (padded size,
    padded query count)."""
    d = store.dim
    budget = _GEMM_ELEMS * (16 if xs.device.type == "cuda" else 1)
    size, bs, bc = plan.size, plan.bs, plan.bc
    if _in_place_scan(xs.device) and dt == store.vectors.dtype:
        alone = (size > 0) & ((size * d > budget) | (plan.cnt * bs > budget))
        for j in np.flatnonzero(alone).tolist():
            _scan_large_list(store, cands, xs, ln, dt, budget, plan, j)
        _scan_in_place(store, cands, xs, ln, dt, plan, budget, np.flatnonzero((size > 0) & ~alone))
        return
    # Lists whose padded batch would exceed the budget are scanned alone (in row chunks).
    alone = (size > 0) & ((bs * d > budget) | (bc * bs > budget) | (bc * d > budget))
    batched = (size > 0) & ~alone
    for j in np.flatnonzero(alone).tolist():
        _scan_large_list(store, cands, xs, ln, dt, budget, plan, j)
    groups: dict[tuple[int, int], list[int]] = {}
    for j in np.flatnonzero(batched).tolist():
        groups.setdefault((int(bs[j]), int(bc[j])), []).append(j)
    for (S, C), members in groups.items():
        per_list = S * d + C * d + C * S
        gstep = max(1, budget // per_list)
        for g0 in range(0, len(members), gstep):
            _scan_list_batch(store, cands, xs, ln, dt, plan, np.asarray(members[g0 : g0 + gstep]), S, C)


def _first_pass(
    store: ListStore, q: torch.Tensor, x64: torch.Tensor, probes: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """Scan the probed lists with matrix products and keep up to ``k + margin`` candidates per list.

    The (query, list) pairs are sorted by list. Lists of similar size with
    similar numbers of queries are padded together and scanned by one
    batched product (``bmm``), so a search costs a few dozen tensor
    operations whatever ``nlist`` is; a list too large for that (a flat
    index) is scanned on its own in row chunks.

    Returns candidate scan positions (-1 = none), their first-pass squared
    distances as float64 (``inf`` = none), a key giving faiss's scan order
    (probe rank, then position in the list), each [T, nprobe*kk] (``kk``:
    ``k + margin``, at most the largest probed list), and the dtype the distances were computed in.
    """
    T, P = probes.shape
    dev = x64.device
    dt = _fast_dtype(dev)
    pair_l = probes.reshape(-1)
    order = torch.argsort(pair_l, stable=True)
    sorted_l = pair_l[order]
    uniq, counts = torch.unique_consecutive(sorted_l, return_counts=True)
    qrow = order // P
    xs = q.to(dt)[qrow]  # the query of every (query, probe) pair, pairs sorted by list
    qns = x64.square().sum(1)[qrow]
    u = uniq.cpu().numpy()
    cnt = counts.cpu().numpy().astype(np.int64)
    a0 = store.offsets[u]
    size = store.offsets[u + 1] - a0
    cands = _Candidates(T * P, k, dev, int(size.max()))
    plan = _ListPlan(a0, size, np.cumsum(cnt) - cnt, cnt, _next_pow2(size), _next_pow2(cnt))
    _scan_lists(store, cands, xs, store.norms(dt), dt, plan)

    cands.val.add_(qns[:, None])
    risky = cands.gap <= _tolerance(qns, store.vmax, dt, store.dim)
    if bool(risky.any()):
        _rescan_exactly(store, cands, x64[qrow], sorted_l.cpu().numpy(), risky.nonzero()[:, 0].tolist())
    kk = cands.kk
    pos_out = torch.empty_like(cands.pos)
    val_out = torch.empty_like(cands.val)
    pos_out[order] = cands.pos
    val_out[order] = cands.val
    pos_out = pos_out.reshape(T, P * kk)
    rank = torch.arange(P, device=dev).repeat_interleave(kk) * (store.ntotal + 1)
    key = torch.where(pos_out >= 0, pos_out + rank[None, :], torch.full_like(pos_out, torch.iinfo(torch.int64).max))
    return pos_out, val_out.reshape(T, P * kk), key, dt


def _rescan_exactly(
    store: ListStore, cands: _Candidates, x64s: torch.Tensor, lists: np.ndarray, rows: list[int]
) -> None:
    """Pairs with more near-equal candidates than the margin holds (duplicates): exact over the list."""
    for r in rows:
        a, b = int(store.offsets[lists[r]]), int(store.offsets[lists[r] + 1])
        take = min(cands.kk, b - a)
        p, dd = _exact_best(x64s[r : r + 1], store.vectors[a:b], take)
        cands.pos[r, :take] = p[0] + a
        cands.val[r, :take] = dd[0]


def _exact_at(store: ListStore, x64: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Exact float64 distances from each query to the vectors at scan positions ``pos`` [T, M] (-1 -> inf)."""
    T, M = pos.shape
    out = torch.empty((T, M), dtype=torch.float64, device=pos.device)
    step = max(1, _CHUNK_ELEMS // max(1, M * store.dim))
    for a in range(0, T, step):
        p = pos[a : a + step]
        out[a : a + step] = _exact_sqdist(x64[a : a + step], store.vectors[p.clamp(min=0)])
    return out.masked_fill_(pos < 0, math.inf)


def _faiss_choice(f32: torch.Tensor, key: torch.Tensor, ids: torch.Tensor, kept: int, ntotal: int) -> torch.Tensor:
    """Row-wise permutation of candidates whose first ``kept`` are those faiss's result heap keeps.

    ``f32`` [R, M] float32 distances (``inf`` = none), ``key`` faiss's scan order and ``ids``
    the candidates' ids. faiss keeps every vector closer than the ``kept``-th distance ``D``
    and fills the other places with vectors at ``D``: a vector at ``D`` enters the heap only
    while it still holds something farther (so only those scanned up to the ``kept``-th
    vector at ``D`` or closer, in scan order), and the heap evicts the largest id among
    equal distances (so of those the lowest ids stay). The candidates must include every
    probed vector at ``D`` or closer.
    """
    dstar = f32.kthvalue(kept, dim=1, keepdim=True).values
    so = torch.argsort(key, dim=1, stable=True)
    reached = torch.gather(f32 <= dstar, 1, so).cumsum(1) >= kept
    last_key = torch.gather(torch.gather(key, 1, so), 1, reached.to(torch.int8).argmax(1, keepdim=True))
    return _order_by(f32, torch.where(key <= last_key, ids, ids + ntotal))


def _probed_exactly(
    store: ListStore, x64: torch.Tensor, lists: list[int], kept: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss's ``kept`` neighbours of one query ``x64`` [1, d] over every vector of the
    probed ``lists`` (in probe order), on exact distances: ``(positions, distances)`` [kept]."""
    dev = x64.device
    spans = [(int(store.offsets[li]), int(store.offsets[li + 1])) for li in lists]
    pos = torch.cat([torch.arange(a, b, device=dev) for a, b in spans])
    rank = torch.cat([torch.full((b - a,), r, dtype=torch.int64, device=dev) for r, (a, b) in enumerate(spans)])
    ex = torch.empty(pos.shape[0], dtype=torch.float64, device=dev)
    step = max(1, _CHUNK_ELEMS // store.dim)
    for a in range(0, pos.shape[0], step):
        ex[a : a + step] = _exact_sqdist(x64, store.vectors[pos[a : a + step]][None])[0]
    key = rank * (store.ntotal + 1) + pos
    o = _faiss_choice(ex.to(torch.float32)[None], key[None], store.ids[pos][None], kept, store.ntotal)[0, :kept]
    return pos[o], ex[o]


def _decide_ties(
    store: ListStore, x64: torch.Tensor, pos: torch.Tensor, key: torch.Tensor, probes: torch.Tensor, kept: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``kept`` neighbours faiss keeps for rows whose ``kept``-th and next candidates are
    too close for the first pass: ``(positions, exact distances)`` [R, kept].

    Decided on the candidates' exact distances, unless a probed list may hold more
    vectors at the ``kept``-th distance or closer than its candidates (many duplicates):
    such a row is decided over every vector of its probed lists.
    """
    R, M = pos.shape
    ex_all = _exact_at(store, x64, pos)
    f32 = ex_all.to(torch.float32)
    ids = store.ids[pos.clamp(min=0)]
    o = _faiss_choice(f32, key, ids, kept, store.ntotal)[:, :kept]
    sel = torch.gather(pos, 1, o)
    ex = torch.gather(ex_all, 1, o)
    P = probes.shape[1]
    dstar = torch.gather(f32, 1, o).amax(1, keepdim=True)
    full = pos.view(R, P, -1)[:, :, -1] >= 0
    incomplete = (full & (f32.view(R, P, -1).amax(2) <= dstar)).any(1)
    for r in incomplete.nonzero()[:, 0].tolist():
        sel[r], ex[r] = _probed_exactly(store, x64[r : r + 1], probes[r].tolist(), kept)
    return sel, ex


def _finalize(
    store: ListStore, x64: torch.Tensor, pos: torch.Tensor, val: torch.Tensor, key: torch.Tensor,
    probes: torch.Tensor, k: int, dt: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``k`` of the candidates like faiss's heap and order them by (distance, id).

    The first-pass distances choose the ``k`` kept, unless the ``k``-th and
    the next are closer than the first pass can separate; such rows are
    decided on exact distances, compared as float32 like faiss, with faiss's
    rule for ties (:func:`_decide_ties`). The kept ones get exact distances
    and are listed by (distance, id).
    """
    T, M = pos.shape
    kept = min(k, M)
    ext = min(k + 1, M)
    o = _order_by(val, key)[:, :ext]
    val_o = torch.gather(val, 1, o)
    sel = torch.gather(pos, 1, o[:, :kept])
    ex = _exact_at(store, x64, sel)
    if ext > kept:
        tol = _tolerance(x64.square().sum(1), store.vmax, dt, store.dim)
        near = torch.isfinite(val_o[:, kept]) & (val_o[:, kept] - val_o[:, kept - 1] <= 2 * tol)
        if bool(near.any()):
            rr = near.nonzero()[:, 0]
            sel[rr], ex[rr] = _decide_ties(store, x64[rr], pos[rr], key[rr], probes[rr], kept)
    ok = sel >= 0
    d = ex.to(torch.float32).masked_fill(~ok, math.inf)
    ids = torch.where(ok, store.ids[sel.clamp(min=0)], torch.full_like(sel, torch.iinfo(torch.int64).max))
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


def knn_search(
    store: ListStore, centroids: torch.Tensor, cnorm64: torch.Tensor, nprobe: int, q: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest stored vectors of each query ``q`` ``[T, d]`` (float32, finite, T >= 1).

    Probes the ``nprobe`` nearest lists (``centroids`` with float64 squared norms
    ``cnorm64``). Returns ``(distances, ids)`` ``[T, k]`` on the device of ``q``: float32
    squared L2 distances in ascending order and int64 ids, ``FLT_MAX`` / ``-1`` where the
    probed lists hold fewer than ``k`` vectors.
    """
    probes = coarse_assign(q, centroids, cnorm64, nprobe)
    x64 = q.to(torch.float64)
    pos, val, key, dt = _first_pass(store, q, x64, probes, k)
    return _finalize(store, x64, pos, val, key, probes, k, dt)

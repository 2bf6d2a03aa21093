"""Second review of rvcfast.index: ties, equidistant centroids, large k, autograd inputs.

The references here are written independently of the search code: a literal
simulation of faiss's result heap and brute force over float64 distances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rvcfast.index import FLT_MAX, RetrievalIndex, load_index
from rvcfast.index import search as search_mod


@pytest.fixture(scope="module")
def faiss():
    """faiss, only for cross-checks; tests that need it skip without it."""
    mod = pytest.importorskip("faiss")
    mod.omp_set_num_threads(1)
    return mod


def _heap_reference(index: RetrievalIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss's IVF search, simulated step by step on exact float32 distances.

    Probes: the ``nprobe`` nearest centroids by (distance, id). Scan: the probed
    lists in that order, each in stored order. Heap: a vector enters while there
    is room, or when strictly closer than the farthest kept; then the farthest
    kept leaves, the largest id among equal distances. Output by (distance, id).
    """
    cent = index.centroids.numpy().astype(np.float64)
    vecs = index.vectors.numpy().astype(np.float64)
    nprobe = min(index.nprobe, index.nlist)
    out_d = np.full((q.shape[0], k), np.float32(FLT_MAX), dtype=np.float32)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for t, x in enumerate(q.astype(np.float64)):
        cd = ((cent - x) ** 2).sum(1).astype(np.float32)
        probes = sorted(range(index.nlist), key=lambda c: (cd[c], c))[:nprobe]
        heap: list[tuple[np.float32, int]] = []
        for li in probes:
            for i in index.list_ids(li).tolist():
                d = np.float32(((vecs[i] - x) ** 2).sum())
                if len(heap) < k:
                    heap.append((d, i))
                elif d < max(heap)[0]:
                    heap.remove(max(heap))
                    heap.append((d, i))
        for j, (d, i) in enumerate(sorted(heap)):
            out_d[t, j], out_i[t, j] = d, i
    return out_d, out_i


def _lattice(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Small-integer vectors: float32 distances are exact, so ties are real ties."""
    return rng.integers(-2, 3, size=(n, d)).astype(np.float32)


# ---------------------------------------------------------------------------
# Ties across probed lists (nprobe > 1)
# ---------------------------------------------------------------------------


def test_tie_across_lists_keeps_what_faiss_keeps() -> None:
    # Query at the origin, k=2, both lists probed (list 0 first: its centroid is nearer).
    # faiss scans id 5 (d=1), then id 3 (d=1), then id 9 (d=0); id 9 evicts the
    # largest id among the farthest kept (5), so faiss returns 9 and 3, not 9 and 5.
    near = {5: (1.0, 0.0), 3: (0.0, 1.0), 9: (0.0, 0.0)}
    far = [i for i in range(10) if i not in near]
    list0, list1 = [5, *far[:3]], [3, 9, *far[3:]]
    ids = list0 + list1
    vecs = np.array([near.get(i, (100.0 + i, 100.0)) for i in ids], dtype=np.float32)
    cents = np.array([[0.1, 0.0], [0.0, 5.0]], dtype=np.float32)
    index = RetrievalIndex(vecs, np.array(ids), [len(list0), len(list1)], cents, nprobe=2)
    dist, got = index.search(np.zeros((1, 2), dtype=np.float32), k=2)
    assert got.tolist() == [[9, 3]]
    assert dist.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_probe_ties_match_the_heap_simulation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for trial in range(12):
        x = _lattice(int(rng.integers(20, 160)), int(rng.choice([2, 3, 8])), rng)
        index = RetrievalIndex.from_vectors(x, nlist=int(rng.integers(2, 12)), seed=trial)
        index.nprobe = int(rng.choice([2, 3, index.nlist]))
        q = _lattice(int(rng.integers(1, 25)), x.shape[1], rng)
        k = int(rng.choice([1, 3, 8, 12]))
        dist, ids = index.search(q, k)
        ref_d, ref_i = _heap_reference(index, q, k)
        np.testing.assert_array_equal(ids.numpy(), ref_i, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(dist.numpy(), ref_d, err_msg=f"trial {trial}")


def test_many_ties_within_one_list_with_several_probes() -> None:
    # 30 copies at the k-th distance in the first probed list, more than the candidates
    # kept per list: the decision must still see every one of them.
    rng = np.random.default_rng(7)
    tied = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (30, 1))
    x = np.concatenate([tied, np.array([[0.0, 0.0]], np.float32), _lattice(60, 2, rng) + 10.0])
    x = x[rng.permutation(x.shape[0])]
    cents = np.array([[0.5, 0.0], [0.0, 0.9], [10.0, 10.0]], dtype=np.float32)
    index = RetrievalIndex.from_vectors(x, centroids=cents, nprobe=3)
    q = np.array([[0.0, 0.0], [0.2, 0.0]], dtype=np.float32)
    for k in (3, 8, 20):
        dist, ids = index.search(q, k)
        ref_d, ref_i = _heap_reference(index, q, k)
        np.testing.assert_array_equal(ids.numpy(), ref_i)
        np.testing.assert_array_equal(dist.numpy(), ref_d)


def test_multi_probe_ties_match_faiss(tmp_path: Path, faiss) -> None:
    rng = np.random.default_rng(11)
    for trial in range(15):
        x = _lattice(int(rng.integers(30, 200)), int(rng.choice([2, 3, 8])), rng)
        index = RetrievalIndex.from_vectors(x, nlist=int(rng.integers(2, 15)), seed=trial)
        nprobe = int(rng.choice([2, 3, index.nlist]))
        index.nprobe = nprobe
        path = tmp_path / "ties.index"
        index.save(path)
        theirs = faiss.read_index(str(path))
        faiss.extract_index_ivf(theirs).nprobe = nprobe
        q = _lattice(30, x.shape[1], rng)
        ref_d, ref_i = theirs.search(q, 8)
        dist, ids = index.search(q, 8)
        np.testing.assert_array_equal(ids.numpy(), ref_i, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(dist.numpy(), ref_d, err_msg=f"trial {trial}")


# ---------------------------------------------------------------------------
# Many equidistant centroids (duplicated training data)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("queries", [1, 5, 40])
def test_many_identical_centroids_probe_the_lowest_id(queries: int) -> None:
    # 30 identical centroids: every vector goes to list 0 and faiss probes list 0
    # (ties to the lowest id). Probing any other (empty) list would find nothing.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    index = RetrievalIndex.from_vectors(x, centroids=np.zeros((30, 4), np.float32))
    assert index.list_sizes[0] == 50
    q = x[:queries]
    dist, ids = index.search(q, 4)
    ref_d, ref_i = _heap_reference(index, q, 4)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    assert (ids[:, 0] == torch.arange(queries)).all()


def test_index_built_from_few_distinct_vectors_finds_them(tmp_path: Path) -> None:
    # k-means on 3 distinct vectors with RVC's default nlist (51) gives many identical
    # centroids; every training vector must still find its 8 copies, as faiss does.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16)).astype(np.float32)
    x = base[rng.integers(0, 3, 2000)]
    path = tmp_path / "few.index"
    RetrievalIndex.from_vectors(x).save(path)
    index = load_index(path)
    assert index.nlist == 51
    dist, ids = index.search(base, 8)
    assert (ids >= 0).all()
    assert (dist == 0).all()
    for row, b in zip(ids.numpy(), base):
        expected = np.flatnonzero((x == b).all(1))[:8]
        np.testing.assert_array_equal(row, expected)


def test_coarse_assign_with_more_ties_than_candidates() -> None:
    cents = torch.zeros((40, 3))
    cents[::7] = 5.0  # a few farther centroids mixed in
    q = torch.ones((3, 3))
    cn = search_mod.sqnorms(cents)
    for nprobe in (1, 4, 12):
        probes = search_mod.coarse_assign(q, cents, cn, nprobe)
        near = [c for c in range(40) if c % 7][:nprobe]
        assert probes.tolist() == [near] * 3


# ---------------------------------------------------------------------------
# Inputs that require grad
# ---------------------------------------------------------------------------


def test_vectors_that_require_grad_build_and_save(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    # Features straight out of a model run without no_grad() carry autograd history.
    rng = np.random.default_rng(3)
    w = torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float32, requires_grad=True)
    feats = w * 2.0
    cents = feats[:4] + 0.0
    for index in (RetrievalIndex.from_vectors(feats, nlist=4), RetrievalIndex.from_vectors(feats, cents)):
        assert not index.vectors.requires_grad and not index.centroids.requires_grad
        path = tmp_path / "grad.index"
        index.save(path)
        np.testing.assert_array_equal(load_index(path).vectors.numpy(), feats.detach().numpy())
    assert not [str(x.message) for x in recwarn.list if "requires_grad" in str(x.message)]


# ---------------------------------------------------------------------------
# k larger than the lists (and than the index)
# ---------------------------------------------------------------------------


def _brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact neighbours by (float32 distance, id), padded with (-1, FLT_MAX)."""
    d = ((q.astype(np.float64)[:, None, :] - x.astype(np.float64)[None]) ** 2).sum(-1).astype(np.float32)
    order = np.stack([np.lexsort((np.arange(x.shape[0]), row)) for row in d])[:, :k]
    dist = np.take_along_axis(d, order, 1)
    pad = k - order.shape[1]
    dist = np.concatenate([dist, np.full((q.shape[0], pad), np.float32(FLT_MAX))], 1)
    ids = np.concatenate([order, np.full((q.shape[0], pad), -1)], 1)
    return dist, ids


def test_large_k_keeps_no_more_candidates_than_the_lists_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    # With every list probed the answer is the exact one; k beyond ntotal pads with -1.
    # Candidates per (query, list) were k + 8 wide whatever the list sizes, so memory
    # and time grew with k * nprobe * queries (k=400 over 100 lists of ~40 vectors
    # took gigabytes); now they are at most the largest probed list.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    index = RetrievalIndex.from_vectors(x, nlist=20)
    index.nprobe = index.nlist
    widths: list[int] = []

    class Recording(search_mod._Candidates):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            widths.append(self.kk)

    monkeypatch.setattr(search_mod, "_Candidates", Recording)
    q = rng.normal(size=(10, 6)).astype(np.float32)
    for k in (1, 8, 50, 400, 1000):
        dist, ids = index.search(q, k)
        ref_d, ref_i = _brute_force(x, q, k)
        np.testing.assert_array_equal(ids.numpy(), ref_i)
        np.testing.assert_array_equal(dist.numpy(), ref_d)
    assert max(widths) <= int(index.list_sizes.max())


# ---------------------------------------------------------------------------
# Distances equal in float32 but not exactly
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("first_pass", [torch.float32, torch.float64])
def test_centroids_equal_in_float32_probe_the_lower_id(monkeypatch: pytest.MonkeyPatch, first_pass) -> None:
    # |(0.6, 0.8)|^2 is 1 + 4.8e-8 exactly but 1.0 in float32, like |(1, 0)|^2: faiss's
    # float32 distances tie and it probes the lower id (0). Deciding on the exact values
    # probed list 1; the float64 first pass (used on CUDA) did not even see a near tie.
    monkeypatch.setattr(search_mod, "_fast_dtype", lambda device: first_pass)
    cents = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    index = RetrievalIndex(cents, np.array([0, 1]), [1, 1], cents, nprobe=1)
    for queries in (1, 25):
        dist, ids = index.search(np.zeros((queries, 2), dtype=np.float32), k=1)
        assert (ids == 0).all() and (dist == 1.0).all()


def test_float32_equal_centroids_match_faiss(faiss) -> None:
    cents = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    flat = faiss.IndexFlatL2(2)
    flat.add(cents)
    for queries in (1, 25):
        assert (flat.search(np.zeros((queries, 2), dtype=np.float32), 1)[1] == 0).all()

"""A voice with a big retrieval index: memory held per load and per Converter, one read of a
large list per search, and the edges of faiss's semantics (empty and short lists, duplicates,
damaged files), checked against a brute-force numpy reference.

The indexes here are small; the figures for 10k-500k vectors are in docs/benchmarks.md.
"""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401 (fixtures)

import rvcfast.index.retrieval as retrieval_mod
import rvcfast.index.search as search_mod
from rvcfast import cache
from rvcfast.errors import ModelLoadError
from rvcfast.index import FLT_MAX, RetrievalIndex, load_index, save_index

# faiss's index header: d (int32), ntotal (int64), two dummy int64, is_trained (uint8), metric (int32).
_HEADER = 4 + 8 + 8 + 8 + 1 + 4


def _clustered(n: int, d: int, seed: int, clusters: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32) * 3
    return (centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def _reference(idx: RetrievalIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss's answer by brute force (nprobe 1): the nearest centroid by exact distance (ties to the
    lower list), every vector of that list by exact distance rounded to float32, ties to the lower
    id, padded with -1 / FLT_MAX."""
    vec = idx.vectors.double().numpy()
    cen = idx.centroids.double().numpy()
    out_d = np.full((len(q), k), FLT_MAX, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for t, x in enumerate(q.astype(np.float64)):
        li = int(np.argmin(((cen - x) ** 2).sum(1).astype(np.float32)))
        cand = idx.list_ids(li).numpy()
        dd = ((vec[cand] - x) ** 2).sum(1).astype(np.float32)
        o = np.lexsort((cand, dd))[:k]
        out_d[t, : len(o)] = dd[o]
        out_i[t, : len(o)] = cand[o]
    return out_d, out_i


@pytest.fixture(autouse=True)
def _no_shared_leftovers() -> None:
    """Each test starts with no index held from an earlier one."""
    gc.collect()


# ---------------------------------------------------------------------------
# Memory: one copy per file, however many loads
# ---------------------------------------------------------------------------


def test_load_holds_one_copy_of_the_file(tmp_path: Path) -> None:
    """The vectors are read straight into their final array: a load's peak stays below 1.3x the file."""
    path = tmp_path / "added_IVF64_Flat_nprobe_1_v2.index"
    save_index(path, _clustered(12000, 768, seed=1), nlist=64, niter=1)
    size = path.stat().st_size
    code = (
        "import resource, sys, torch\n"
        "from rvcfast.index import load_index\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "idx = load_index(sys.argv[1])\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    grown = int(out.stdout.split()[-1])
    assert grown < 1.3 * size, f"loading a {size}-byte index grew the process by {grown} bytes"


def test_second_load_of_a_file_shares_its_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading an index in use again (a second Converter, a notebook cell run again, `rvcfast tune`
    loading the voice per precision) reads nothing and allocates no second copy."""
    path = tmp_path / "voice.index"
    save_index(path, _clustered(3000, 256, seed=2), nlist=20, niter=1)
    reads = []
    real = retrieval_mod.read_index_file
    monkeypatch.setattr(retrieval_mod, "read_index_file", lambda p, *a: reads.append(p) or real(p, *a))
    a = load_index(path)
    tracemalloc.start()
    try:
        b = load_index(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(reads) == 1
    assert peak < path.stat().st_size / 10
    assert b is not a and b._lvecs.data_ptr() == a._lvecs.data_ptr()
    assert b.path == str(path) and b.ntotal == a.ntotal
    # Each index keeps its own settings.
    b.nprobe = 5
    assert a.nprobe == 1
    q = _clustered(40, 256, seed=3)
    assert torch.equal(a.search(q)[1], _reference_search(path, q)[1])
    # Once every index of the file is gone, the next load reads the file again.
    del a, b
    gc.collect()
    c = load_index(path)
    assert len(reads) == 2 and c.ntotal == 3000


def _reference_search(path: Path, q: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The search of an index read on its own (not shared)."""
    from rvcfast.index.format import read_index_file

    p = read_index_file(path)
    return RetrievalIndex(p.list_vectors, p.list_ids, p.list_sizes, p.centroids, p.nprobe).search(q)


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "voice.index"
    save_index(path, _clustered(500, 16, seed=4), nlist=5, niter=1)
    old = load_index(path)
    save_index(path, _clustered(700, 16, seed=5), nlist=6, niter=1)  # retrained: renamed over the old file
    new = load_index(path)
    assert (old.ntotal, new.ntotal) == (500, 700)
    assert new._lvecs.data_ptr() != old._lvecs.data_ptr()


def test_a_file_changed_while_read_is_not_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "voice.index"
    save_index(path, _clustered(300, 8, seed=6), nlist=3, niter=1)
    real = retrieval_mod.read_index_file

    def touched(p: Path, *args):
        out = real(p, *args)
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return out

    monkeypatch.setattr(retrieval_mod, "read_index_file", touched)
    a = load_index(path)
    monkeypatch.undo()
    b = load_index(path)
    assert b._lvecs.data_ptr() != a._lvecs.data_ptr()  # the first read may be of either version


def test_concurrent_loads_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "voice.index"
    save_index(path, _clustered(2000, 64, seed=7), nlist=10, niter=1)
    reads = []
    real = retrieval_mod.read_index_file
    monkeypatch.setattr(retrieval_mod, "read_index_file", lambda p, *a: reads.append(p) or real(p, *a))
    out: list[RetrievalIndex] = []
    start = threading.Barrier(4)

    def load() -> None:
        start.wait()
        out.append(load_index(path))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads) == 1 and len({i._lvecs.data_ptr() for i in out}) == 1


def test_a_failed_load_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "voice.index"
    save_index(path, _clustered(300, 8, seed=8), nlist=3, niter=1)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_index(path)
    mine = [k for k in [*cache._key_locks, *cache._in_use] if k[0] == "index" and k[1][0] == str(path.resolve())]
    assert mine == []  # (other tests' Converters in this process may hold indexes of their own)
    path.write_bytes(data)
    assert load_index(path).ntotal == 300


def test_pickled_index_holds_only_its_own_tensors(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "voice.index"
    save_index(path, _clustered(400, 8, seed=9), nlist=4, niter=1)
    a = load_index(path)
    b = pickle.loads(pickle.dumps(a))
    assert b._from_file is None and torch.equal(b.vectors, a.vectors)


def test_two_converters_share_the_index(tiny_models) -> None:  # noqa: F811
    a = tiny_models.converter()
    b = tiny_models.converter()
    assert a.index is not b.index
    assert a.index._lvecs.data_ptr() == b.index._lvecs.data_ptr()


# ---------------------------------------------------------------------------
# A list larger than the work budget (a flat index is one list) is read once per search
# ---------------------------------------------------------------------------


def test_large_list_is_read_once_per_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat index of 100k vectors was read in full for every 20 queries (a search of 500
    queries: 3x faiss's time). A list larger than the budget is now taken in blocks of at most
    the budget, each block once, against all of its queries before the next block."""
    x = _clustered(3000, 16, seed=10)
    x = np.concatenate([x, x[:200]])  # duplicates
    idx = RetrievalIndex(x, np.arange(len(x)), [len(x)], np.zeros((1, 16), np.float32), kind="flat")
    q = np.concatenate([_clustered(300, 16, seed=11), x[:10]])
    ref = idx.search(q, 8)
    monkeypatch.setattr(search_mod, "_GEMM_ELEMS", 4096)  # lists of more than 256 vectors are large
    blocks: list[tuple[int, int]] = []  # (first element's address, vectors) of each product's block
    real = torch.addmm

    def counted(inp, mat1, mat2, **kw):
        blocks.append((mat1.data_ptr(), mat1.shape[0]))  # the block is the left operand ([block, d])
        return real(inp, mat1, mat2, **kw)

    monkeypatch.setattr(search_mod.torch, "addmm", counted)
    dist, ids = idx.search(q, 8)
    monkeypatch.undo()
    assert max(n for _, n in blocks) <= 4096 // 16
    runs = [b for i, b in enumerate(blocks) if i == 0 or blocks[i - 1] != b]
    assert len(runs) == len(set(runs)) and sum(n for _, n in runs) == len(x)  # every block taken once
    assert torch.equal(ids, ref[1]) and torch.equal(dist, ref[0])
    vec = x.astype(np.float64)
    for t in range(len(q)):
        dd = ((vec - q[t].astype(np.float64)) ** 2).sum(1).astype(np.float32)
        o = np.lexsort((np.arange(len(x)), dd))[:8]
        assert ids[t].tolist() == o.tolist()


# ---------------------------------------------------------------------------
# Edges of faiss's semantics, against the brute-force reference
# ---------------------------------------------------------------------------


def test_empty_short_and_duplicate_lists_match_the_reference(tmp_path: Path) -> None:
    x = _clustered(900, 32, seed=12)
    x[100:160] = x[100]  # 60 identical vectors: ties beyond k and the candidate margin
    rng = np.random.default_rng(13)
    far = rng.standard_normal((6, 32)).astype(np.float32) * 50  # lists no vector goes to
    near = x[rng.choice(900, 10, replace=False)]
    lonely = rng.standard_normal((2, 32)).astype(np.float32) * 25  # outliers: lists of 1 and 3 vectors
    x[800], x[801:804] = lonely[0], lonely[1] + 0.5
    cen = np.concatenate([far, near, lonely])
    path = tmp_path / "edges.index"
    save_index(path, x, centroids=cen)
    idx = load_index(path)
    sizes = idx.list_sizes
    assert (sizes == 0).sum() >= 6 and ((sizes > 0) & (sizes < 8)).any() and idx.ntotal == 900
    q = np.concatenate([x[rng.choice(900, 60)] + 0.01, far[:3] * 1.01, x[100:103], lonely])
    for k in (1, 8, 80):
        dist, ids = idx.search(q, k)
        ref_d, ref_i = _reference(idx, q, k)
        np.testing.assert_array_equal(ids.numpy(), ref_i)
        np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-6)
    # Frames whose probed list is empty keep their features; short lists blend the neighbours they have.
    feats = torch.from_numpy(q)
    out = idx.blend(feats, 0.75)
    empty_rows = slice(60, 63)
    assert torch.equal(out[empty_rows], feats[empty_rows])
    assert torch.isfinite(out).all() and not torch.equal(out[:60], feats[:60])


def test_matches_faiss_on_a_faiss_file_with_empty_lists(tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(1)
    x = _clustered(2000, 48, seed=14)
    x[:300] = x[0]
    rng = np.random.default_rng(15)
    cen = np.concatenate([x[rng.choice(2000, 40, replace=False)], rng.standard_normal((20, 48)).astype(np.float32) * 40])
    quant = faiss.IndexFlatL2(48)
    ivf = faiss.IndexIVFFlat(quant, 48, len(cen))
    quant.add(cen)
    ivf.is_trained = True
    ivf.add(x)
    path = tmp_path / "added_IVF60_Flat_nprobe_1_faiss_v2.index"
    faiss.write_index(ivf, str(path))
    idx = load_index(path)
    assert (idx.list_sizes == 0).sum() >= 20
    q = np.concatenate([x[rng.choice(2000, 15)] + 0.05, cen[45:48], x[:2]]).astype(np.float32)
    dist, ids = idx.search(q, 8)
    for t in range(len(q)):  # one query at a time: faiss's own batched path rounds differently
        ref_d, ref_i = ivf.search(q[t : t + 1], 8)
        assert ids[t].tolist() == ref_i[0].tolist()
        np.testing.assert_allclose(dist[t].numpy(), ref_d[0], rtol=1e-5)


# ---------------------------------------------------------------------------
# Damaged files: a clear error naming the file, before anything large is allocated
# ---------------------------------------------------------------------------


def _ivf_layout(d: int, nlist: int) -> tuple[int, int]:
    """Offsets of the list-size table (``full`` layout) and of the list data in our files."""
    sizes_at = 4 + _HEADER + 16 + 4 + _HEADER + 8 + nlist * d * 4 + 9 + 4 + 16 + 4 + 8
    return sizes_at, sizes_at + 8 * nlist


def test_header_claiming_more_vectors_than_the_file_holds(tmp_path: Path) -> None:
    d, nlist = 16, 4
    good = tmp_path / "good.index"
    save_index(good, _clustered(400, d, seed=16), nlist=nlist, niter=1, list_format="full")
    data = bytearray(good.read_bytes())
    sizes_at, _ = _ivf_layout(d, nlist)
    assert struct.unpack_from("<4Q", data, sizes_at) == tuple(load_index(good).list_sizes.tolist())
    # The header and a list both claim 10^12 vectors: consistent, but the file holds 400.
    struct.pack_into("<q", data, 4 + 4, 10**12)
    first = struct.unpack_from("<Q", data, sizes_at)[0]
    struct.pack_into("<Q", data, sizes_at, 10**12 - 400 + first)
    bad = tmp_path / "bad.index"
    bad.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError) as err:
            load_index(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bad) in str(err.value) and "truncated" in str(err.value)
    assert peak < 1 << 20


@pytest.mark.parametrize("where", ["vector", "centroid"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_name_the_file(tmp_path: Path, where: str, value: float) -> None:
    d, nlist = 16, 4
    good = tmp_path / "good.index"
    save_index(good, _clustered(400, d, seed=17), nlist=nlist, niter=1, list_format="full")
    data = bytearray(good.read_bytes())
    sizes_at, data_at = _ivf_layout(d, nlist)
    at = data_at + 4 * 5 if where == "vector" else 4 + _HEADER + 16 + 4 + _HEADER + 8 + 4 * 3
    struct.pack_into("<f", data, at, value)
    bad = tmp_path / "bad.index"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"non-finite values \(NaN or inf\) in 1 " + where) as err:
        load_index(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_list_data_names_the_file(tmp_path: Path, keep: float) -> None:
    good = tmp_path / "good.index"
    save_index(good, _clustered(400, 16, seed=18), nlist=4, niter=1)
    data = good.read_bytes()
    bad = tmp_path / "cut.index"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="truncated") as err:
        load_index(bad)
    assert str(bad) in str(err.value)

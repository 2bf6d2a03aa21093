"""Tests for rvcfast.index: faiss IVF-Flat files read, searched and written without faiss."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from rvcfast.errors import ModelLoadError, ParameterError
from rvcfast.index import (
    FLT_MAX,
    RetrievalIndex,
    default_nlist,
    load_index,
    neighbour_weights,
    save_index,
)

GOLDEN_INDEX = "models/index/v2_768.index"
GOLDEN_LIST_SIZES = [35, 37, 54, 27, 26, 38, 25, 55, 35, 68]


@pytest.fixture(scope="module")
def faiss():
    """faiss, only for cross-checks; tests that need it skip without it."""
    mod = pytest.importorskip("faiss")
    mod.omp_set_num_threads(1)
    return mod


@pytest.fixture(scope="module")
def golden_index(golden: Path) -> RetrievalIndex:
    return load_index(golden / GOLDEN_INDEX)


@pytest.fixture(scope="module")
def short_debug(golden: Path) -> dict[str, np.ndarray]:
    with np.load(golden / "e2e" / "short_debug.npz") as z:
        return {k: z[k] for k in ("hubert_feats", "index_score", "index_ix", "index_blended_feats")}


def _clustered(n: int, d: int, seed: int, nclusters: int = 12, noise: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (nclusters, d))
    return (centers[rng.integers(0, nclusters, n)] + rng.normal(0.0, noise, (n, d))).astype(np.float32)


def _faiss_ivf(faiss, x: np.ndarray, nlist: int, nprobe: int = 1):
    index = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat")
    faiss.extract_index_ivf(index).nprobe = nprobe
    index.train(x)
    index.add(x)
    return index


# ---------------------------------------------------------------------------
# The golden index (written by faiss 1.15.1 the way Applio builds indexes)
# ---------------------------------------------------------------------------


@pytest.mark.golden
def test_golden_index_layout(golden_index: RetrievalIndex) -> None:
    idx = golden_index
    assert (idx.kind, idx.dim, idx.ntotal, idx.nlist, idx.nprobe) == ("ivf", 768, 400, 10, 1)
    assert idx.list_sizes.tolist() == GOLDEN_LIST_SIZES
    assert idx.vectors.shape == (400, 768) and idx.vectors.dtype == torch.float32
    assert idx.centroids.shape == (10, 768) and idx.centroids.dtype == torch.float32
    # Every id appears in exactly one list.
    ids = torch.cat([idx.list_ids(i) for i in range(idx.nlist)])
    assert sorted(ids.tolist()) == list(range(400))


@pytest.mark.golden
def test_golden_matches_faiss_reconstruction(golden: Path, golden_index: RetrievalIndex, faiss) -> None:
    ref = faiss.read_index(str(golden / GOLDEN_INDEX))
    np.testing.assert_array_equal(golden_index.vectors.numpy(), ref.reconstruct_n(0, ref.ntotal))
    quantizer = faiss.extract_index_ivf(ref).quantizer
    np.testing.assert_array_equal(golden_index.centroids.numpy(), quantizer.reconstruct_n(0, quantizer.ntotal))


@pytest.mark.golden
def test_golden_search_reproduces_faiss(golden_index: RetrievalIndex, short_debug) -> None:
    feats = short_debug["hubert_feats"][0]
    dist, ids = golden_index.search(feats, k=8)
    assert dist.dtype == torch.float32 and ids.dtype == torch.int64 and ids.shape == (350, 8)
    rows_equal = (ids.numpy() == short_debug["index_ix"]).all(axis=1)
    assert rows_equal.sum() == 350, f"index_ix differs on rows {np.flatnonzero(~rows_equal).tolist()}"
    np.testing.assert_allclose(dist.numpy(), short_debug["index_score"], rtol=1e-3)
    # Tensor input gives the same answer as numpy input.
    dist_t, ids_t = golden_index.search(torch.from_numpy(feats), k=8)
    assert torch.equal(ids_t, ids) and torch.equal(dist_t, dist)


@pytest.mark.golden
def test_golden_blend(golden_index: RetrievalIndex, short_debug) -> None:
    feats = torch.from_numpy(short_debug["hubert_feats"])  # [1, T, 768]
    out = golden_index.blend(feats, index_rate=0.75)
    assert out.shape == feats.shape and out.dtype == feats.dtype
    err = np.abs(out.numpy() - short_debug["index_blended_feats"]).max()
    assert err <= 1e-5, err
    # The same blend from faiss's own neighbours.
    out2 = golden_index.blend_neighbours(feats, short_debug["index_score"], short_debug["index_ix"], 0.75)
    assert np.abs(out2.numpy() - short_debug["index_blended_feats"]).max() <= 1e-5
    # index_rate 0 leaves the features alone; a [T, C] input works too.
    assert golden_index.blend(feats, 0.0) is feats
    out3 = golden_index.blend(feats[0], 0.75)
    torch.testing.assert_close(out3, out[0], rtol=0, atol=0)


@pytest.mark.golden
def test_golden_dimension_mismatch(golden_index: RetrievalIndex) -> None:
    feats = torch.zeros(5, 256)
    with pytest.raises(ModelLoadError, match=r"768-dimensional.*256-dimensional.*v1"):
        golden_index.blend(feats, 0.5)
    with pytest.raises(ModelLoadError, match="v2_768.index"):
        golden_index.search(feats)
    golden_index.check_dim(768)


# ---------------------------------------------------------------------------
# Search semantics without faiss
# ---------------------------------------------------------------------------


def _brute_force(idx: RetrievalIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: probe the nearest centroids, exact float64 top-k of those lists, pad with -1."""
    vec = idx.vectors.double().numpy()
    cen = idx.centroids.double().numpy()
    qd = q.astype(np.float64)
    nprobe = min(idx.nprobe, idx.nlist)
    out_d = np.full((len(q), k), FLT_MAX, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for t in range(len(q)):
        cd = ((cen - qd[t]) ** 2).sum(1)
        lists = np.argsort(cd, kind="stable")[:nprobe]
        cand = torch.cat([idx.list_ids(int(li)) for li in lists]).numpy()
        dd = ((vec[cand] - qd[t]) ** 2).sum(1)
        o = np.lexsort((cand, dd))[:k]
        out_d[t, : len(o)] = dd[o]
        out_i[t, : len(o)] = cand[o]
    return out_d, out_i


@pytest.mark.parametrize("nprobe", [1, 3])
def test_search_matches_brute_force(tmp_path: Path, nprobe: int) -> None:
    x = _clustered(1500, 24, seed=1)
    idx = save_index(tmp_path / "a.index", x, nlist=16, nprobe=nprobe)
    loaded = load_index(tmp_path / "a.index")
    assert loaded.nprobe == nprobe and loaded.nlist == 16 and loaded.ntotal == 1500
    np.testing.assert_array_equal(loaded.vectors.numpy(), x)
    np.testing.assert_array_equal(loaded.centroids.numpy(), idx.centroids.numpy())
    q = _clustered(300, 24, seed=2)
    dist, ids = loaded.search(q, k=8)
    ref_d, ref_i = _brute_force(loaded, q, 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-6)
    # One query at a time gives the same answer as the batch.
    for t in (0, 17, 299):
        d1, i1 = loaded.search(q[t : t + 1], k=8)
        assert torch.equal(i1[0], ids[t]) and torch.equal(d1[0], dist[t])


def test_small_work_budgets_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunk budgets force every chunked code path (large lists scanned alone, row chunks)."""
    import rvcfast.index.search as index_mod

    x = _clustered(3000, 20, seed=22)
    x = np.concatenate([x, x[:300]])  # duplicates too
    q = np.concatenate([_clustered(200, 20, seed=23), x[:20]])
    for nlist in (1, 5, 40):
        idx = RetrievalIndex.from_vectors(x, nlist=nlist, nprobe=2)
        ref = idx.search(q)
        monkeypatch.setattr(index_mod, "_GEMM_ELEMS", 2048)
        monkeypatch.setattr(index_mod, "_CHUNK_ELEMS", 512)
        small = idx.search(q)
        monkeypatch.undo()
        assert torch.equal(small[1], ref[1]) and torch.equal(small[0], ref[0])
        np.testing.assert_array_equal(ref[1].numpy(), _brute_force(idx, q, 8)[1])


def test_float64_first_pass_gives_the_same_answer() -> None:
    """With reduced-precision float32 matmul allowed, the first pass runs in float64 (as on CUDA)."""
    x = _clustered(2000, 24, seed=24)
    q = _clustered(100, 24, seed=25)
    idx = RetrievalIndex.from_vectors(x, nlist=20, nprobe=2)
    ref = idx.search(q)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        other = idx.search(q)
    finally:
        torch.set_float32_matmul_precision(old)
    assert torch.equal(other[1], ref[1]) and torch.equal(other[0], ref[0])


def test_kmeans_with_few_distinct_points() -> None:
    base = np.eye(3, 6, dtype=np.float32)
    x = np.repeat(base, 20, axis=0)  # 3 distinct points, 5 lists: k-means must re-seed empty clusters
    idx = RetrievalIndex.from_vectors(x, nlist=5, seed=1)
    assert idx.nlist == 5 and int(idx.list_sizes.sum()) == 60
    q = base + np.float32(0.01)
    np.testing.assert_array_equal(idx.search(q)[1].numpy(), _brute_force(idx, q, 8)[1])


def test_equidistant_centroids_probe_the_lower_list() -> None:
    # Integer-valued data: every distance is exact, so the query ties between lists 0 and 1.
    vecs = np.array([[0, 0], [0, 1], [4, 0], [4, 1]], np.float32)
    idx = RetrievalIndex(vecs, [0, 1, 2, 3], [2, 2], np.array([[0, 0], [4, 0]], np.float32))
    dist, ids = idx.search(np.array([[2, 0]], np.float32), k=3)
    assert ids[0].tolist() == [0, 1, -1]
    assert dist[0, :2].tolist() == [4.0, 5.0]
    idx.nprobe = 2
    dist, ids = idx.search(np.array([[2, 0]], np.float32), k=3)
    assert ids[0].tolist() == [0, 2, 1] and dist[0].tolist() == [4.0, 4.0, 5.0]
    assert idx.to("cpu") is idx


def test_short_lists_are_padded(tmp_path: Path) -> None:
    x = _clustered(60, 8, seed=3)
    idx = RetrievalIndex.from_vectors(x, nlist=12)
    assert idx.list_sizes.min() < 8
    q = x[:20] + 0.01
    dist, ids = idx.search(q, k=8)
    ref_d, ref_i = _brute_force(idx, q, 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    missing = ids.numpy() == -1
    assert missing.any()
    assert (dist.numpy()[missing] == np.float32(FLT_MAX)).all()
    assert np.isfinite(dist.numpy()[~missing]).all()
    # Ascending, with the padding last.
    assert (np.diff(dist.numpy(), axis=1) >= 0).all()
    out = idx.blend(torch.from_numpy(q), 0.6)
    assert torch.isfinite(out).all()


def test_exact_match_and_duplicates_give_finite_blend() -> None:
    x = _clustered(200, 16, seed=4)
    x = np.concatenate([x, x[:10], x[:10]])  # ids i, 200+i and 210+i are identical for i < 10
    idx = RetrievalIndex.from_vectors(x, nlist=4)
    dist, ids = idx.search(x[:10], k=8)
    assert (dist[:, :3] == 0).all()
    # Equal distances are listed by id, as faiss does.
    np.testing.assert_array_equal(ids[:, :3].numpy(), np.stack([np.arange(10), 200 + np.arange(10), 210 + np.arange(10)], 1))
    feats = torch.from_numpy(x[:10].copy())
    out = idx.blend(feats, 1.0)
    assert torch.isfinite(out).all()
    # All the weight goes to the exact matches, which equal the query.
    torch.testing.assert_close(out, feats, rtol=0, atol=1e-6)
    w = neighbour_weights(dist, ids)
    torch.testing.assert_close(w[:, :3], torch.full((10, 3), 1 / 3))
    assert (w[:, 3:] == 0).all()


def test_many_duplicates_beyond_the_candidate_margin() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(100, 12)).astype(np.float32)
    x = np.concatenate([base, np.repeat(base[:1], 40, axis=0), base])  # 41 copies of row 0
    idx = RetrievalIndex.from_vectors(x, nlist=3)
    q = base[:1] + np.float32(0.05)
    dist, ids = idx.search(q, k=8)
    ref_d, ref_i = _brute_force(idx, q, 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    assert ids[0].tolist() == [0] + list(range(100, 107))


def test_weights_follow_rvc() -> None:
    dist = torch.tensor([[1.0, 2.0, 4.0, FLT_MAX]])
    ids = torch.tensor([[3, 1, 2, -1]])
    w = neighbour_weights(dist, ids)
    expected = np.array([1.0, 1 / 4, 1 / 16, 0.0])
    np.testing.assert_allclose(w.numpy()[0], expected / expected.sum(), rtol=1e-6)
    # A row with no neighbour keeps its features.
    idx = RetrievalIndex.from_vectors(_clustered(50, 4, seed=6), nlist=2)
    feats = torch.randn(1, 4)
    out = idx.blend_neighbours(feats, torch.full((1, 8), FLT_MAX), torch.full((1, 8), -1), 0.75)
    assert torch.equal(out, feats)


def test_parameter_errors() -> None:
    idx = RetrievalIndex.from_vectors(_clustered(100, 8, seed=7), nlist=2)
    feats = torch.zeros(3, 8)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ParameterError):
            idx.blend(feats, bad)
    with pytest.raises(ParameterError):
        idx.search(feats, k=0)
    with pytest.raises(ParameterError):
        idx.nprobe = 0
    with pytest.raises(ParameterError):
        idx.search(torch.full((2, 8), float("nan")))
    with pytest.raises(ModelLoadError):
        idx.search(torch.zeros(2, 9))


def test_empty_query_and_half_precision() -> None:
    idx = RetrievalIndex.from_vectors(_clustered(100, 8, seed=8), nlist=2)
    d, i = idx.search(np.zeros((0, 8), np.float32))
    assert d.shape == (0, 8) and i.shape == (0, 8)
    feats = torch.from_numpy(_clustered(5, 8, seed=9)).half()
    out = idx.blend(feats, 0.5)
    assert out.dtype == torch.float16 and out.shape == feats.shape


def test_default_nlist() -> None:
    assert default_nlist(400) == 10
    assert default_nlist(100_000) == min(int(16 * 100_000**0.5), 100_000 // 39) == 2564
    assert default_nlist(10) == 1
    assert default_nlist(1) == 1


def test_sprs_layout_roundtrip(tmp_path: Path) -> None:
    x = _clustered(40, 8, seed=10, nclusters=2, noise=0.05)
    centroids = np.concatenate([x[:2], np.full((8, 8), 50.0, np.float32)])  # 8 lists stay empty
    p = tmp_path / "s.index"
    idx = save_index(p, x, centroids=centroids)
    assert (idx.list_sizes > 0).sum() <= 5
    assert b"sprs" in p.read_bytes()
    loaded = load_index(p)
    np.testing.assert_array_equal(loaded.vectors.numpy(), x)
    assert loaded.list_sizes.tolist() == idx.list_sizes.tolist()
    q = x[:6] + 0.01
    for nprobe in (1, 2):
        loaded.nprobe = nprobe
        d, i = loaded.search(q)
        np.testing.assert_array_equal(i.numpy(), _brute_force(loaded, q, 8)[1])
    # The same content in the "full" layout loads identically.
    save_index(tmp_path / "f.index", x, centroids=centroids, list_format="full")
    assert b"full" in (tmp_path / "f.index").read_bytes()
    full = load_index(tmp_path / "f.index")
    assert torch.equal(full.vectors, loaded.vectors) and full.list_sizes.tolist() == loaded.list_sizes.tolist()


# ---------------------------------------------------------------------------
# Malformed files
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("idx") / "small.index"
    save_index(p, _clustered(120, 8, seed=11), nlist=4)
    return p.read_bytes()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("cut", [2, 4, 20, 60, 120, 300, -9, -1])
def test_truncated_file(tmp_path: Path, small_file: bytes, cut: int) -> None:
    p = _write(tmp_path, "cut.index", small_file[:cut])
    with pytest.raises(ModelLoadError, match=r"cut\.index.*(truncated|too short)"):
        load_index(p)


def test_trailing_bytes(tmp_path: Path, small_file: bytes) -> None:
    p = _write(tmp_path, "long.index", small_file + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="long.index.*trailing"):
        load_index(p)


def test_wrong_magic_and_not_an_index(tmp_path: Path, small_file: bytes) -> None:
    with pytest.raises(ModelLoadError, match=r"magic\.index.*unknown index type.*'XXXX'.*IwFl"):
        load_index(_write(tmp_path, "magic.index", b"XXXX" + small_file[4:]))
    with pytest.raises(ModelLoadError, match=r"notes\.index.*not a faiss index"):
        load_index(_write(tmp_path, "notes.index", bytes(range(250, 256)) * 30))
    with pytest.raises(ModelLoadError, match="empty"):
        load_index(_write(tmp_path, "empty.index", b""))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_index(tmp_path / "missing.index")


def test_ivfpq_fourcc_is_named(tmp_path: Path, small_file: bytes) -> None:
    with pytest.raises(ModelLoadError, match=r"pq\.index.*IndexIVFPQ.*rvcfast reads.*IVF"):
        load_index(_write(tmp_path, "pq.index", b"IwPQ" + small_file[4:]))
    with pytest.raises(ModelLoadError, match=r"IndexHNSWFlat"):
        load_index(_write(tmp_path, "hnsw.index", b"IHNf" + small_file[4:]))


def test_inconsistent_sizes(tmp_path: Path, small_file: bytes) -> None:
    data = bytearray(small_file)
    # ntotal in the main header (after fourcc and d) no longer matches the lists.
    struct.pack_into("<q", data, 8, 121)
    with pytest.raises(ModelLoadError, match=r"bad_n\.index.*lists hold 120 vectors but the header says 121"):
        load_index(_write(tmp_path, "bad_n.index", bytes(data)))
    # The metric is not L2.
    data = bytearray(small_file)
    struct.pack_into("<i", data, 4 + 4 + 8 * 3 + 1, 0)
    with pytest.raises(ModelLoadError, match=r"inner product.*only L2"):
        load_index(_write(tmp_path, "ip.index", bytes(data)))


def test_ids_out_of_range(tmp_path: Path, small_file: bytes) -> None:
    data = bytearray(small_file)
    # The last 8 bytes are the last id of the last non-empty list.
    struct.pack_into("<q", data, len(data) - 8, 5000)
    with pytest.raises(ModelLoadError, match=r"ids\.index.*ids out of range"):
        load_index(_write(tmp_path, "ids.index", bytes(data)))
    struct.pack_into("<q", data, len(data) - 8, 0)  # now id 0 appears twice
    with pytest.raises(ModelLoadError, match=r"dup\.index.*permutation"):
        load_index(_write(tmp_path, "dup.index", bytes(data)))


def test_non_finite_vectors(tmp_path: Path, small_file: bytes) -> None:
    data = bytearray(small_file)
    ntotal, d = 120, 8
    first_vec = len(data) - ntotal * (4 * d + 8)
    struct.pack_into("<f", data, first_vec, float("nan"))
    with pytest.raises(ModelLoadError, match="non-finite"):
        load_index(_write(tmp_path, "nan.index", bytes(data)))


# ---------------------------------------------------------------------------
# Cross-checks with faiss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nprobe", [1, 3])
def test_our_files_load_in_faiss(tmp_path: Path, faiss, nprobe: int) -> None:
    x = _clustered(2000, 32, seed=12)
    p = tmp_path / "ours.index"
    ours = save_index(p, x, nlist=16, nprobe=nprobe)
    ref = faiss.read_index(str(p))
    assert ref.ntotal == 2000 and ref.d == 32
    ivf = faiss.extract_index_ivf(ref)
    assert ivf.nlist == 16 and ivf.nprobe == nprobe
    np.testing.assert_array_equal(ref.reconstruct_n(0, ref.ntotal), x)
    q = _clustered(400, 32, seed=13)
    ref_d, ref_i = ref.search(q, 8)
    dist, ids = ours.search(q, 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-5)


@pytest.mark.parametrize("nprobe", [1, 3])
def test_faiss_files_load_in_ours(tmp_path: Path, faiss, nprobe: int) -> None:
    x = _clustered(2000, 32, seed=14)
    ref = _faiss_ivf(faiss, x, 16, nprobe=nprobe)
    p = tmp_path / "faiss.index"
    faiss.write_index(ref, str(p))
    ours = load_index(p)
    assert ours.nprobe == nprobe and ours.nlist == 16
    np.testing.assert_array_equal(ours.vectors.numpy(), ref.reconstruct_n(0, ref.ntotal))
    quantizer = faiss.extract_index_ivf(ref).quantizer
    np.testing.assert_array_equal(ours.centroids.numpy(), quantizer.reconstruct_n(0, 16))
    q = _clustered(400, 32, seed=15)
    ref_d, ref_i = ref.search(q, 8)
    dist, ids = ours.search(q, 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-5)
    # Overriding nprobe after loading matches faiss with the same override.
    faiss.extract_index_ivf(ref).nprobe = 5
    ours.nprobe = 5
    np.testing.assert_array_equal(ours.search(q, 8)[1].numpy(), ref.search(q, 8)[1])


def test_faiss_duplicates_and_short_lists(tmp_path: Path, faiss) -> None:
    rng = np.random.default_rng(16)
    base = rng.normal(size=(300, 16)).astype(np.float32)
    x = np.concatenate([base, base[:100], base[:50]])
    ref = _faiss_ivf(faiss, x, 64)  # about 7 vectors per list: many short lists
    p = tmp_path / "dups.index"
    faiss.write_index(ref, str(p))
    ours = load_index(p)
    q = np.concatenate([base[:40], rng.normal(size=(60, 16)).astype(np.float32)])
    for nprobe in (1, 2):
        faiss.extract_index_ivf(ref).nprobe = nprobe
        ours.nprobe = nprobe
        ref_d, ref_i = ref.search(q, 8)
        dist, ids = ours.search(q, 8)
        np.testing.assert_array_equal(ids.numpy(), ref_i)
        finite = ref_i >= 0
        np.testing.assert_allclose(dist.numpy()[finite], ref_d[finite], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(dist.numpy()[~finite], ref_d[~finite])


def test_faiss_sparse_lists(tmp_path: Path, faiss) -> None:
    x = _clustered(800, 16, seed=17)
    ref = faiss.index_factory(16, "IVF32,Flat")
    ref.train(x)
    ref.add(x[:6])  # at most 6 of 32 lists used: faiss writes the "sprs" layout
    p = tmp_path / "sprs.index"
    faiss.write_index(ref, str(p))
    assert b"sprs" in p.read_bytes()
    ours = load_index(p)
    np.testing.assert_array_equal(ours.vectors.numpy(), x[:6])
    q = x[100:140]
    for nprobe in (1, 4):
        faiss.extract_index_ivf(ref).nprobe = nprobe
        ours.nprobe = nprobe
        ref_d, ref_i = ref.search(q, 8)
        dist, ids = ours.search(q, 8)
        np.testing.assert_array_equal(ids.numpy(), ref_i)
        np.testing.assert_array_equal(dist.numpy()[ref_i < 0], ref_d[ref_i < 0])
    # Our own sparse file loads in faiss.
    save_index(tmp_path / "ours_sprs.index", x[:6], centroids=ours.centroids.numpy())
    back = faiss.read_index(str(tmp_path / "ours_sprs.index"))
    np.testing.assert_array_equal(back.reconstruct_n(0, 6), x[:6])


def test_faiss_flat_and_rejected_types(tmp_path: Path, faiss) -> None:
    x = _clustered(500, 16, seed=18)
    q = _clustered(50, 16, seed=19)
    flat = faiss.IndexFlatL2(16)
    flat.add(x)
    faiss.write_index(flat, str(tmp_path / "flat.index"))
    ours = load_index(tmp_path / "flat.index")
    assert ours.kind == "flat" and ours.nlist == 1
    ref_d, ref_i = flat.search(q, 8)
    dist, ids = ours.search(q, 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-5)

    pq = faiss.index_factory(16, "IVF4,PQ4x4")
    pq.train(x)
    pq.add(x)
    faiss.write_index(pq, str(tmp_path / "pq.index"))
    with pytest.raises(ModelLoadError, match=r"pq\.index.*IndexIVFPQ.*IndexIVFFlat"):
        load_index(tmp_path / "pq.index")

    hnsw = faiss.IndexHNSWFlat(16, 8)
    hnsw.add(x[:50])
    faiss.write_index(hnsw, str(tmp_path / "hnsw.index"))
    with pytest.raises(ModelLoadError, match="HNSW"):
        load_index(tmp_path / "hnsw.index")

    ip = faiss.index_factory(16, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ip.train(x)
    ip.add(x)
    faiss.write_index(ip, str(tmp_path / "ip.index"))
    with pytest.raises(ModelLoadError, match=r"ip\.index.*only L2"):
        load_index(tmp_path / "ip.index")

    trained = faiss.index_factory(16, "IVF4,Flat")
    trained.train(x)
    faiss.write_index(trained, str(tmp_path / "trained_IVF4.index"))
    with pytest.raises(ModelLoadError, match="no vectors.*added_"):
        load_index(tmp_path / "trained_IVF4.index")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tmp_path: Path) -> None:
    x = _clustered(3000, 64, seed=20)
    cpu = RetrievalIndex.from_vectors(x, nlist=20, nprobe=2)
    q = _clustered(500, 64, seed=21)
    d_cpu, i_cpu = cpu.search(q)
    gpu = RetrievalIndex.from_vectors(x, centroids=cpu.centroids.numpy(), nprobe=2, device="cuda")
    d_gpu, i_gpu = gpu.search(torch.from_numpy(q).cuda())
    assert i_gpu.device.type == "cuda"
    assert torch.equal(i_gpu.cpu(), i_cpu)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-6, atol=1e-6)

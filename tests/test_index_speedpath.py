"""The CPU search path that scans each probed list where it lies (one matrix product per list for
every query probing it, no padded copies), checked against a brute-force numpy reference and
against the batched path; and an index of the wrong dimension refused from its header.
"""

from __future__ import annotations

import gc
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import rvcfast.index.format as format_mod
import rvcfast.index.search as search_mod
from rvcfast.errors import ModelLoadError
from rvcfast.index import FLT_MAX, RetrievalIndex, load_index


@pytest.fixture(autouse=True)
def _no_shared_leftovers() -> None:
    """Each test starts with no index held from an earlier one."""
    gc.collect()


def _reference(idx: RetrievalIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss's answer by brute force: the ``nprobe`` nearest centroids by exact distance rounded to
    float32 (ties to the lower list), every vector of those lists by exact distance rounded to
    float32, ties to the lower id, padded with -1 / FLT_MAX."""
    vec = idx.vectors.double().numpy()
    cen = idx.centroids.double().numpy()
    nprobe = min(idx.nprobe, idx.nlist)
    out_d = np.full((len(q), k), FLT_MAX, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for t, x in enumerate(q.astype(np.float64)):
        cd = ((cen - x) ** 2).sum(1).astype(np.float32)
        lists = np.lexsort((np.arange(idx.nlist), cd))[:nprobe]
        cand = np.concatenate([idx.list_ids(int(li)).numpy() for li in lists])
        dd = ((vec[cand] - x) ** 2).sum(1).astype(np.float32)
        o = np.lexsort((cand, dd))[:k]
        out_d[t, : len(o)] = dd[o]
        out_i[t, : len(o)] = cand[o]
    return out_d, out_i


def _index(seed: int, n: int = 1200, d: int = 24, nlist: int = 40, empty: int = 4) -> RetrievalIndex:
    """Clustered vectors with exact duplicates (ties), ``nlist`` lists of which ``empty`` get no vector."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((10, d)).astype(np.float32) * 3
    x = (centers[rng.integers(0, 10, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)
    x[50:120] = x[50]  # 70 identical vectors: ties beyond k and the candidate margin
    x[300:303] = x[7]  # a few more
    far = rng.standard_normal((empty, d)).astype(np.float32) * 60  # centroids no vector goes to
    cen = np.concatenate([x[rng.choice(n, nlist - empty, replace=False)], far])
    return RetrievalIndex.from_vectors(x, centroids=cen)


def _queries(idx: RetrievalIndex, seed: int) -> np.ndarray:
    """Queries near stored vectors (many probe the same lists), exact copies of stored vectors
    (among them the duplicated one), and copies of one query (one list probed by many)."""
    rng = np.random.default_rng(seed)
    x = idx.vectors.numpy()
    near = x[rng.choice(len(x), 60)] + rng.standard_normal((60, x.shape[1])).astype(np.float32) * 0.2
    same = np.repeat(near[:1], 9, axis=0)
    return np.concatenate([near, x[[50, 51, 7, 300, 0]], same]).astype(np.float32)


@pytest.mark.parametrize("nprobe", [1, 3, 200])  # 200: more than nlist
@pytest.mark.parametrize("k", [1, 8, 90])  # 90: more than most lists hold
def test_in_place_scan_matches_brute_force(nprobe: int, k: int) -> None:
    idx = _index(seed=nprobe + k)
    idx.nprobe = nprobe
    q = _queries(idx, seed=k)
    assert (idx.list_sizes == 0).any() and idx.list_sizes.max() < 400
    dist, ids = idx.search(q, k)
    ref_d, ref_i = _reference(idx, q, k)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    np.testing.assert_array_equal(dist.numpy(), ref_d)


@pytest.mark.parametrize("budget", [1 << 21, 1 << 12, 1 << 10])  # small: many buffers, lists scanned alone
def test_in_place_scan_gives_what_the_batched_scan_gives(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    idx = _index(seed=5)
    idx.nprobe = 2
    q = _queries(idx, seed=6)
    monkeypatch.setattr(search_mod, "_GEMM_ELEMS", budget)
    fast = idx.search(q, 8)
    monkeypatch.setattr(search_mod, "_in_place_scan", lambda device: False)
    batched = idx.search(q, 8)
    assert torch.equal(fast[1], batched[1]) and torch.equal(fast[0], batched[0])
    ref_d, ref_i = _reference(idx, q, 8)
    np.testing.assert_array_equal(fast[1].numpy(), ref_i)
    np.testing.assert_array_equal(fast[0].numpy(), ref_d)


def test_each_probed_list_is_multiplied_once_where_it_lies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probed lists were copied into padded batches (4x faiss's time at 500 queries). Each is now
    one product of a view of the stored vectors (no copy) against all of the queries probing it."""
    idx = _index(seed=7)
    q = _queries(idx, seed=8)
    base = idx._lvecs.data_ptr()
    row_bytes = idx.dim * idx._lvecs.element_size()
    reads: list[tuple[int, int, int]] = []  # (first stored row, rows, queries) of each product
    real = torch.mm

    def counted(a: torch.Tensor, b: torch.Tensor, **kw):
        if a.untyped_storage().data_ptr() == idx._lvecs.untyped_storage().data_ptr():
            reads.append(((a.data_ptr() - base) // row_bytes, a.shape[0], b.shape[1]))
        return real(a, b, **kw)

    monkeypatch.setattr(search_mod.torch, "mm", counted)
    _, ids = idx.search(q, 8)
    monkeypatch.undo()
    probes = search_mod.coarse_assign(torch.from_numpy(q), idx.centroids, idx._cnorm64, 1)[:, 0].numpy()
    lists, counts = np.unique(probes, return_counts=True)
    lists, counts = lists[idx.list_sizes[lists] > 0], counts[idx.list_sizes[lists] > 0]
    offsets = np.concatenate([[0], np.cumsum(idx.list_sizes)])
    expect = sorted((int(offsets[li]), int(idx.list_sizes[li])) for li in lists)
    assert sorted((a, s) for a, s, _ in reads) == expect  # every probed list once, whole, in place
    by_list = {a: c for a, _, c in reads}
    for li, c in zip(lists, counts):  # all its queries in that product (an odd few padded by one)
        assert by_list[int(offsets[li])] in (c, c + 1)
    np.testing.assert_array_equal(ids.numpy(), _reference(idx, q, 8)[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_query_dtypes_search_as_their_float32_values(dtype: torch.dtype) -> None:
    idx = _index(seed=9)
    q = torch.from_numpy(_queries(idx, seed=10)).to(dtype)
    dist, ids = idx.search(q, 8)
    ref_d, ref_i = _reference(idx, q.float().numpy(), 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    np.testing.assert_array_equal(dist.numpy(), ref_d)


def test_flat_index_with_many_duplicates_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x[::20] = x[0]  # 150 identical vectors spread over the list
    idx = RetrievalIndex(x, np.arange(len(x)), [len(x)], np.zeros((1, 16), np.float32), kind="flat")
    q = np.concatenate([x[[0, 20, 1]], rng.standard_normal((40, 16)).astype(np.float32)])
    dist, ids = idx.search(q, 8)
    ref_d, ref_i = _reference(idx, q, 8)
    np.testing.assert_array_equal(ids.numpy(), ref_i)
    np.testing.assert_array_equal(dist.numpy(), ref_d)


# ---------------------------------------------------------------------------
# An index of the wrong dimension, refused from its header
# ---------------------------------------------------------------------------


def _write(tmp_path: Path, dim: int, flat: bool) -> Path:
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((300, dim)).astype(np.float32)
    if flat:
        idx = RetrievalIndex(x, np.arange(300), [300], np.zeros((1, dim), np.float32), kind="flat")
    else:
        idx = RetrievalIndex.from_vectors(x, nlist=8)
    path = tmp_path / f"{'flat' if flat else 'ivf'}_{dim}.index"
    idx.save(path)
    return path


@pytest.mark.parametrize("flat", [False, True])
def test_wrong_dimension_is_refused_before_any_vector_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flat: bool
) -> None:
    path = _write(tmp_path, 32, flat)

    def never(*args, **kwargs):
        raise AssertionError("vectors read before the dimension was checked")

    for name in ("_read_flat_codes", "_read_quantizer", "_read_list_data"):
        monkeypatch.setattr(format_mod, name, never)
    with pytest.raises(ModelLoadError) as err:
        load_index(path, feature_dim=768, model="v2 model voice.pth")
    msg = str(err.value)
    assert str(path) in msg and "index dimension 32" in msg and "feature dimension 768" in msg
    assert "v2 model voice.pth" in msg
    monkeypatch.undo()
    assert load_index(path, feature_dim=32).dim == 32


def test_wrong_dimension_of_a_truncated_file_names_the_dimensions(tmp_path: Path) -> None:
    """Only the header is needed: a file cut after it still says which dimension it has."""
    path = _write(tmp_path, 256, flat=False)
    head = path.read_bytes()[: 4 + 4 + 8 + 8 + 8 + 1 + 4 + 16]  # fourcc, header, nlist, nprobe
    cut = tmp_path / "cut.index"
    cut.write_bytes(head)
    with pytest.raises(ModelLoadError, match="index dimension 256 does not match the voice model's feature dimension 768"):
        load_index(cut, feature_dim=768)
    with pytest.raises(ModelLoadError, match="truncated"):
        load_index(cut)


def test_wrong_dimension_of_an_index_already_loaded(tmp_path: Path) -> None:
    path = _write(tmp_path, 32, flat=False)
    held = load_index(path)  # shared with the next load of the same file
    with pytest.raises(ModelLoadError, match=r"index dimension 32 does not match .* dimension 256 \(v1 model\)"):
        load_index(path, feature_dim=256, model="v1 model")
    assert held.dim == 32 and struct.unpack("<i", path.read_bytes()[4:8])[0] == 32


def test_a_converter_refuses_another_models_index_from_its_header(tmp_path: Path) -> None:
    """Converter.from_pretrained checked the dimension after reading the whole index: a file cut
    after its header said "truncated" where it should name the wrong dimension."""
    from helpers import build_tiny_models

    import rvcfast

    models = build_tiny_models(tmp_path / "models")
    path = _write(tmp_path, 48, flat=False)  # the tiny voice is v2 (768)
    cut = tmp_path / "other_voice.index"
    cut.write_bytes(path.read_bytes()[: 4 + 4 + 8 + 8 + 8 + 1 + 4 + 16])
    with pytest.raises(ModelLoadError, match=r"index dimension 48 does not match the voice model's feature dimension 768 \(v2 model"):
        rvcfast.Converter.from_pretrained(models.voice, index=cut, encoder=models.encoder, f0_weights=models.rmvpe, device="cpu")

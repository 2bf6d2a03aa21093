"""Robustness of index files and model descriptions: unusual but valid faiss files, failed
writes, parameter checks of the blend, and metadata that is not plain JSON."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rvcfast.errors import ModelLoadError, ParameterError
from rvcfast.index import RetrievalIndex, load_index, save_index

# Byte sizes of the faiss file format (little-endian): the index header is d (int32), ntotal
# (int64), two dummy int64, is_trained (uint8) and the metric (int32).
_HEADER = 4 + 8 + 8 + 8 + 1 + 4


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _header(d: int, ntotal: int, is_trained: bool) -> bytes:
    return struct.pack("<iqqqBi", d, ntotal, 1 << 20, 1 << 20, int(is_trained), 1)


@pytest.fixture(scope="module")
def faiss():
    """faiss, only for cross-checks; tests that need it skip without it."""
    mod = pytest.importorskip("faiss")
    mod.omp_set_num_threads(1)
    return mod


# ---------------------------------------------------------------------------
# Valid faiss files the reader must take
# ---------------------------------------------------------------------------


def test_hashtable_direct_map_is_read(tmp_path: Path) -> None:
    """faiss stores a hash-table direct map as (id, list entry) pairs of two int64s."""
    n, d, nlist = 60, 8, 3
    plain = tmp_path / "plain.index"
    ref = save_index(plain, _vectors(n, d, seed=1), nlist=nlist)
    data = plain.read_bytes()
    # The direct map follows the IVF header, nlist/nprobe, and the flat quantizer with its centroids.
    at = 4 + _HEADER + 16 + 4 + _HEADER + 8 + nlist * d * 4
    assert data[at : at + 9] == b"\0" * 9  # type 0 (none), then an empty array
    pairs = np.stack([np.arange(n), np.arange(n)], axis=1).astype("<i8")  # contents are not used
    dm = struct.pack("<BQ", 2, 0) + struct.pack("<Q", n) + pairs.tobytes()
    hashed = tmp_path / "hashed.index"
    hashed.write_bytes(data[:at] + dm + data[at + 9 :])
    idx = load_index(hashed)
    assert torch.equal(idx.vectors, ref.vectors) and idx.list_sizes.tolist() == ref.list_sizes.tolist()
    q = _vectors(5, d, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(idx.search(q), ref.search(q)))


def test_faiss_hashtable_direct_map(tmp_path: Path, faiss) -> None:
    x = _vectors(300, 16, seed=3)
    ix = faiss.index_factory(16, "IVF4,Flat")
    ix.train(x)
    ix.set_direct_map_type(faiss.DirectMap.Hashtable)
    ix.add(x)
    faiss.write_index(ix, str(tmp_path / "h.index"))
    idx = load_index(tmp_path / "h.index")
    np.testing.assert_array_equal(idx.vectors.numpy(), x)
    q = _vectors(20, 16, seed=4)
    _, ids = ix.search(q, 8)
    np.testing.assert_array_equal(idx.search(q)[1].numpy(), ids)


def _untrained_ivf(d: int, nlist: int) -> bytes:
    """An ``IVF<nlist>,Flat`` file written before ``train``: no centroids, no vectors."""
    return (
        b"IwFl" + _header(d, 0, False) + struct.pack("<QQ", nlist, 1)
        + b"IxF2" + _header(d, 0, True) + struct.pack("<Q", 0)
        + struct.pack("<BQ", 0, 0)
        + b"ilar" + struct.pack("<QQ", nlist, 4 * d) + b"sprs" + struct.pack("<Q", 0)  # no non-empty list
    )


def test_untrained_index_is_named_as_such(tmp_path: Path) -> None:
    p = tmp_path / "untrained.index"
    p.write_bytes(_untrained_ivf(16, 10))
    with pytest.raises(ModelLoadError, match=r"untrained\.index: index is not trained") as err:
        load_index(p)
    assert "truncated" not in str(err.value) and "corrupt" not in str(err.value)


def test_untrained_faiss_file_matches_ours(tmp_path: Path, faiss) -> None:
    faiss.write_index(faiss.index_factory(16, "IVF10,Flat"), str(tmp_path / "f.index"))
    assert (tmp_path / "f.index").read_bytes() == _untrained_ivf(16, 10)


def test_inf_and_minus_inf_give_an_error_not_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "inf.index"
    save_index(p, _vectors(40, 4, seed=5), nlist=1)
    data = bytearray(p.read_bytes())
    first_vec = len(data) - 40 * (4 * 4 + 8)
    struct.pack_into("<ff", data, first_vec, float("inf"), float("-inf"))
    p.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelLoadError, match=r"inf\.index.*non-finite values.*in 1 vectors"):
            load_index(p)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

_FAILING_SAVE = """
import resource, signal, sys
import numpy as np
from rvcfast.index import save_index
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (32768, resource.RLIM_INFINITY))
try:
    save_index(sys.argv[1], np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32), nlist=4)
except OSError:
    sys.exit(3)
sys.exit(0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_FSIZE to make a write fail")
def test_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "voice.index"
    old = save_index(p, _vectors(50, 64, seed=6), nlist=2)
    before = p.read_bytes()
    assert len(before) < 32768  # the old file fits the limit, the new one (400 x 64 floats) does not
    proc = subprocess.run([sys.executable, "-c", _FAILING_SAVE, str(p)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert p.read_bytes() == before
    assert torch.equal(load_index(p).vectors, old.vectors)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["voice.index"]  # no temporary file left


def test_save_replaces_and_uses_default_permissions(tmp_path: Path) -> None:
    p = tmp_path / "v.index"
    save_index(p, _vectors(50, 8, seed=7), nlist=2)
    new = save_index(p, _vectors(80, 8, seed=8), nlist=2)
    assert torch.equal(load_index(p).vectors, new.vectors)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["v.index"]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------
# The blend
# ---------------------------------------------------------------------------


def test_blend_neighbours_checks_index_rate() -> None:
    idx = RetrievalIndex.from_vectors(_vectors(50, 8, seed=9), nlist=2)
    feats = torch.from_numpy(_vectors(4, 8, seed=10))
    dist, ids = idx.search(feats)
    for bad in (-0.5, 1.5, float("nan"), "much"):
        with pytest.raises(ParameterError, match="index_rate"):
            idx.blend_neighbours(feats, dist, ids, bad)  # type: ignore[arg-type]
        with pytest.raises(ParameterError, match="index_rate"):
            idx.blend(feats, bad)  # type: ignore[arg-type]
    # The edges are valid: 1 gives the retrieved features alone, 0 the features.
    w = torch.from_numpy(1.0 / dist.numpy().astype(np.float64) ** 2)
    retrieved = ((w / w.sum(1, keepdim=True))[:, :, None] * idx.vectors[ids].double()).sum(1).float()
    torch.testing.assert_close(idx.blend_neighbours(feats, dist, ids, 1.0), retrieved, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(idx.blend_neighbours(feats, dist, ids, 0.0), feats, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Descriptions
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voice_checkpoint(tmp_path_factory) -> dict:
    from rvcfast.testing import save_random_voice_model

    p = save_random_voice_model(
        tmp_path_factory.mktemp("voice") / "voice.pth", "v2", 40000, True,
        inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=16,
    )
    return torch.load(p, weights_only=True)


def _strict_json(value: object) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(json.dumps(value), parse_constant=refuse)


def test_describe_model_metadata_is_strict_json(tmp_path: Path, voice_checkpoint: dict) -> None:
    from rvcfast.describe import describe_model

    loop: list = []
    loop.append(loop)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    ckpt = {
        **voice_checkpoint, "loss": float("nan"), "best": float("inf"), "worst": float("-inf"),
        "history": {"loss": [1.0, float("nan")]}, "loop": loop, "deep": deep,
    }
    p = tmp_path / "odd.pth"
    torch.save(ckpt, p)
    d = describe_model(p)
    meta = _strict_json(d)["metadata"]  # type: ignore[index]
    assert (meta["loss"], meta["best"], meta["worst"]) == ("nan", "inf", "-inf")
    assert meta["history"] == {"loss": [1.0, "nan"]}
    assert meta["loop"] == ["list (contains itself)"]
    assert d["version"] == "v2" and d["sample_rate"] == 40000


def test_info_json_is_strict_json(tmp_path: Path, voice_checkpoint: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from rvcfast.cli import main

    p = tmp_path / "nan.pth"
    torch.save({**voice_checkpoint, "loss": float("nan")}, p)
    idx = tmp_path / "nan.index"
    save_index(idx, _vectors(100, 768, seed=11), nlist=2)
    assert main(["info", str(p), "--index", str(idx), "--json"]) == 0
    report = _strict_json(json.loads(capsys.readouterr().out))
    assert report["model"]["metadata"]["loss"] == "nan"  # type: ignore[index]
    assert report["index"]["matches_model"] is True  # type: ignore[index]

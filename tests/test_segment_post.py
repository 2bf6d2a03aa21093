"""Signal-level stages: high-pass, split points, padding, segment plan, F0 post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from rvcfast.dsp import (
    HIGHPASS_A,
    HIGHPASS_B,
    highpass_48hz,
    highpass_blocks,
    input_peak_guard,
    output_peak_guard,
)
from rvcfast.f0.post import coarse_pitch, fit_length, postprocess, shift_f0
from rvcfast.segment import SegmentConfig, find_split_points, plan_segments, reflect_pad


def _reference_split_points(audio: np.ndarray, metric: str = "signed") -> list[int]:
    """Straightforward whole-signal version of the reference loop (independent of the windowed one)."""
    cfg = SegmentConfig()
    ap = np.pad(audio, (80, 80), mode="reflect")
    s = np.zeros(len(audio))
    for i in range(160):
        s += np.abs(ap[i : i - 160]) if metric == "abs" else ap[i : i - 160]
    out = []
    if len(ap) > cfg.t_max:
        for t in range(cfg.t_center, len(audio), cfg.t_center):
            w = np.abs(s[t - cfg.t_query : t + cfg.t_query])
            out.append(t - cfg.t_query + int(np.where(w == w.min())[0][0]))
    return out


def test_highpass_matches_butterworth_filtfilt():
    """rvcfast filters without scipy.signal; it must give scipy's filtfilt to that filter's float64 noise.

    The order-5 48 Hz Butterworth in (b, a) form is ill-conditioned (poles within 0.006 of
    z = 1): two exact float64 evaluations (scipy's recursion, rvcfast's convolution with
    the same recursion's responses) differ by ~3e-8 of the peak, far below float32's 6e-8
    ulp at the peak, which is what the models get.
    """
    b, a = signal.butter(5, 48, btype="high", fs=16000)
    np.testing.assert_array_equal(HIGHPASS_B, b)
    np.testing.assert_array_equal(HIGHPASS_A, a)
    rng = np.random.default_rng(0)
    for n in (19, 100, 5000, 80000, 16000 * 70):
        x = rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 30 * np.arange(n) / 16000) + 0.1  # DC and sub-cutoff too
        ref = signal.filtfilt(b, a, x)
        assert np.abs(highpass_48hz(x) - ref).max() <= 1e-7 * np.abs(ref).max(), n
    long = rng.standard_normal(16000 * 130)  # blocks of 60 s with 1 s of overlap
    ref = signal.filtfilt(b, a, long)
    assert np.abs(highpass_blocks(long) - ref).max() <= 1e-7 * np.abs(ref).max()
    # a 20 Hz tone is removed, a 1 kHz tone passes
    t = np.arange(16000) / 16000
    low = highpass_48hz(np.sin(2 * np.pi * 20 * t))[2000:-2000]
    high = highpass_48hz(np.sin(2 * np.pi * 1000 * t))[2000:-2000]
    assert np.abs(low).max() < 0.05
    assert np.abs(high).max() == pytest.approx(1.0, abs=1e-3)


def test_highpass_short_input_does_not_fail():
    assert highpass_48hz(np.ones(5)).shape == (5,)
    x = np.random.default_rng(1).standard_normal(7)
    b, a = signal.butter(5, 48, btype="high", fs=16000)
    np.testing.assert_allclose(highpass_48hz(x), signal.filtfilt(b, a, np.pad(x, (0, 12)))[:7], rtol=0, atol=1e-7)


def test_peak_guards():
    x = np.array([0.0, 2.0, -1.0])
    np.testing.assert_allclose(np.abs(input_peak_guard(x)).max(), 0.95)
    quiet = np.array([0.1, -0.2])
    np.testing.assert_array_equal(input_peak_guard(quiet), quiet)  # quiet input is not made louder
    np.testing.assert_allclose(np.abs(output_peak_guard(x)).max(), 0.99)


def test_reflect_pad_longer_than_signal_uses_numpy_semantics():
    x = np.arange(5.0)
    np.testing.assert_array_equal(reflect_pad(x, 12), np.pad(x, (12, 12), mode="reflect"))


@pytest.mark.parametrize("metric", ["signed", "abs"])
def test_split_points_equal_whole_signal_search(metric):
    rng = np.random.default_rng(1)
    n = 16000 * 90
    x = rng.standard_normal(n) * np.repeat(rng.uniform(0.01, 1, n // 1600 + 1), 1600)[:n]
    cfg = SegmentConfig(quiet_metric=metric)
    assert find_split_points(x, cfg) == _reference_split_points(x, metric)


def test_no_split_for_short_inputs():
    assert find_split_points(np.zeros(16000 * 40)) == []
    segs = plan_segments(16000 * 5, [])
    assert len(segs) == 1 and segs[0].start == 0 and segs[0].end == 16000 * 7
    assert segs[0].f0_end == 16000 * 7 // 160


def test_golden_long_input_cut_point(golden):
    x, sr = sf.read(golden / "audio" / "e2e_long_16k.wav", dtype="float32")
    audio = highpass_48hz(input_peak_guard(x.astype(np.float64)))
    ts = find_split_points(audio)
    assert [t // 160 * 160 for t in ts] == [572640]
    segs = plan_segments(audio.shape[0], ts)
    assert [s.end - s.start for s in segs] == [604800, 216483]
    assert [s.f0_end - s.f0_start for s in segs] == [3779, 1353]


@pytest.mark.parametrize("method", ["crepe-tiny", "fcpe", "rmvpe"])
def test_f0_postprocessing_matches_golden(golden, method):
    d = np.load(golden / "f0" / f"f0_{method}.npz")
    f0 = d["f0"]
    np.testing.assert_array_equal(coarse_pitch(f0.copy()), d["coarse_shift0"])
    pitchf = shift_f0(f0, int(d["shift"]))
    assert pitchf.dtype == d["pitchf"].dtype
    np.testing.assert_array_equal(pitchf, d["pitchf"])
    np.testing.assert_array_equal(coarse_pitch(pitchf.copy()), d["coarse"])
    coarse, pf = postprocess(f0, int(d["p_len"]), semitones=int(d["shift"]))
    np.testing.assert_array_equal(coarse, d["pitch_tensor"][0])
    np.testing.assert_array_equal(pf, d["pitchf_tensor"][0])


def test_coarse_pitch_range_and_formula():
    f0 = np.array([0.0, 10.0, 50.0, 100.0, 440.0, 1100.0, 5000.0])
    c = coarse_pitch(f0.copy())
    assert c[0] == 1 and c[1] == 1 and c[2] == 1 and c[-1] == 255 and c[-2] == 255
    mel = 1127 * np.log(1 + 440 / 700)
    lo, hi = 1127 * np.log(1 + 50 / 700), 1127 * np.log(1 + 1100 / 700)
    assert c[4] == int(np.rint((mel - lo) * 254 / (hi - lo) + 1))
    assert np.all(np.diff(c) >= 0)


def test_fit_length_pads_symmetrically_like_pm():
    out = fit_length(np.array([1.0, 2.0, 3.0]), 8)
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_length(np.arange(10.0), 4), [0, 1, 2, 3])

"""The F0 accuracy metrics on known answers, and a small accuracy check on WORLD ground truth.

The full measurement (every backend, every contour, speed, raw libraries) is
``benchmarks/f0_accuracy.py``; this keeps the metric definitions and the ground-truth
recipe honest in the default suite (~2 s of truth, a few seconds of CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import f0_accuracy as acc  # noqa: E402
import f0_truth as truth  # noqa: E402


def _scores(est, ref):
    counts, hits = acc.frame_counts(np.asarray(est, float), np.asarray(ref, float))
    return acc.metrics(counts, hits)


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    """100 frames: 60 voiced (a 100..300 Hz glide) and 40 unvoiced (two gaps)."""
    f = np.geomspace(100.0, 300.0, 100)
    f[:20] = 0
    f[70:90] = 0
    return f


# -- metrics on synthetic tracks ---------------------------------------------------------


def test_perfect_track(ref):
    s = _scores(ref, ref)
    assert s["rpa"] == s["rca"] == 1.0
    assert s["voicing_precision"] == s["voicing_recall"] == s["voicing_f1"] == 1.0
    assert s["octave_error_rate"] == 0.0
    assert s["fine_error_cents"] == 0.0


@pytest.mark.parametrize("factor", [2.0, 0.5, 4.0, 0.25])
def test_octave_errors(ref, factor):
    s = _scores(ref * factor, ref)
    assert s["rpa"] == 0.0
    assert s["rca"] == 1.0  # chroma forgives octaves
    assert s["octave_error_rate"] == 1.0
    assert s["voicing_f1"] == 1.0


def test_octave_window_is_100_cents(ref):
    near = ref * 2 ** (1150 / 1200)  # 50 cents flat of an octave up: an octave error
    far = ref * 2 ** (1050 / 1200)  # 150 cents flat: not an octave error
    assert _scores(near, ref)["octave_error_rate"] == 1.0
    assert _scores(far, ref)["octave_error_rate"] == 0.0
    assert _scores(ref * 2 ** (700 / 1200), ref)["octave_error_rate"] == 0.0  # a fifth


def test_50_cent_tolerance(ref):
    ok = _scores(ref * 2 ** (49 / 1200), ref)
    bad = _scores(ref * 2 ** (-51 / 1200), ref)
    assert ok["rpa"] == 1.0 and ok["fine_error_cents"] == pytest.approx(49.0)
    assert bad["rpa"] == 0.0 and bad["octave_error_rate"] == 0.0 and bad["rca"] == 0.0


def test_voicing_precision_and_recall(ref):
    # estimate voiced everywhere, correct where the truth is voiced
    est = np.where(ref > 0, ref, 150.0)
    s = _scores(est, ref)
    assert s["voicing_recall"] == 1.0 and s["rpa"] == 1.0
    assert s["voicing_precision"] == pytest.approx(60 / 100)
    # estimate voices only half the truly voiced frames
    est = ref.copy()
    est[20:50] = 0
    s = _scores(est, ref)
    assert s["voicing_precision"] == 1.0
    assert s["voicing_recall"] == pytest.approx(30 / 60)
    assert s["rpa"] == pytest.approx(30 / 60)
    assert s["voicing_f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_unvoiced_and_nan_estimates(ref):
    s = _scores(np.zeros_like(ref), ref)
    assert s["rpa"] == 0.0 and s["voicing_recall"] == 0.0 and s["voicing_f1"] == 0.0
    assert np.isnan(s["voicing_precision"])  # nothing voiced: precision undefined
    est = ref.copy()
    est[30:40] = np.nan  # NaN counts as unvoiced
    assert _scores(est, ref)["voicing_recall"] == pytest.approx(50 / 60)


def test_pooling_is_frame_level(ref):
    a, _ = acc.frame_counts(ref, ref)
    b, _ = acc.frame_counts(np.zeros(10), np.full(10, 100.0))
    pooled = acc.metrics(acc._sum_counts([a, b]))
    assert pooled["rpa"] == pytest.approx(60 / 70)


def test_length_mismatch_is_an_error(ref):
    with pytest.raises(ValueError):
        acc.frame_counts(ref[:-1], ref)


def test_praat_grid_alignment():
    # Praat frames every 10 ms starting at 30 ms (+ half a sample, parselmouth's x1):
    # frame i of rvcfast is Praat frame i - 3.
    n_samples = 64000
    freq = np.arange(1, 396, dtype=float)
    times = 0.03 + 0.5 / 16000 + 0.01 * np.arange(395)
    out = acc.praat_on_grid(freq, times, n_samples)
    assert len(out) == n_samples // 160 + 1
    assert np.all(out[:3] == 0) and np.all(out[398:] == 0)
    np.testing.assert_allclose(out[3:398], freq)


# -- the ground-truth recipe ---------------------------------------------------------------


def test_contours():
    n = 401
    t = np.arange(n) / 100
    vib = truth.contour("vibrato", n)
    np.testing.assert_allclose(vib, 150 * 2 ** (np.sin(2 * np.pi * 5.5 * t) / 12))
    glide = truth.contour("glide", n)
    assert glide[0] == pytest.approx(80.0) and glide[-1] == pytest.approx(400.0)
    assert np.all(np.diff(glide) > 0)
    steps = truth.contour("steps", n)
    semis = 12 * np.log2(steps / 150)
    np.testing.assert_allclose(semis, np.round(semis), atol=1e-9)
    assert semis.min() == pytest.approx(-6) and semis.max() == pytest.approx(6)
    assert set(np.abs(np.diff(np.round(semis)))) <= {0.0, 1.0}  # one semitone at a time
    assert np.all(np.diff(np.flatnonzero(np.diff(semis))) == 30)  # every 300 ms
    for name, hz in (("low", 90.0), ("mid", 150.0), ("high", 300.0)):
        np.testing.assert_allclose(truth.contour(name, n), hz)
    with pytest.raises(ValueError):
        truth.contour("nope", n)


@pytest.fixture(scope="module")
def small_set():
    if truth.audio_dir() is None:
        pytest.skip("shared audio not found (set RVCFAST_SHARED to the shared/ folder)")
    return truth.build_truth_set(("arctic_a0007",), ("mid", "vibrato"), max_seconds=2.0)


def test_truth_set_shape(small_set):
    assert [c.contour for c in small_set] == ["mid", "vibrato"]
    for clip in small_set:
        assert len(clip.audio) // 160 + 1 == len(clip.f0)
        assert len(clip.audio) == 2 * 16000
        assert np.abs(clip.audio).max() <= truth.PEAK + 1e-12
        v = clip.voiced
        assert 0.3 < v.mean() < 0.9  # speech: voiced and unvoiced frames both present
    # the voicing truth is the recording's, whatever the contour
    np.testing.assert_array_equal(small_set[0].voiced, small_set[1].voiced)
    mid = small_set[0].f0[small_set[0].voiced]
    assert np.median(mid) == pytest.approx(150.0, rel=0.02)
    assert mid.min() >= 150 * 2 ** (-4 / 12) - 1e-9 and mid.max() <= 150 * 2 ** (4 / 12) + 1e-9


@pytest.mark.parametrize(
    "name, min_rpa",
    [("harvest", 0.8), ("dio", 0.75), ("crepe-tiny", 0.8)],
)
def test_backend_accuracy_on_truth(small_set, name, min_rpa):
    import rvcfast

    ext = rvcfast.get_f0_extractor(name)
    clip = small_set[0]  # the mid contour
    res = acc.evaluate(name, ext.extract, [clip], warmup=False)[0]
    s = res.scores
    assert s["rpa"] >= min_rpa, s
    assert s["voicing_f1"] >= 0.8, s
    assert s["octave_error_rate"] <= 0.02, s
    assert s["fine_error_cents"] < 25, s

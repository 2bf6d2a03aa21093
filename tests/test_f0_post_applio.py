"""Applio's pitch options (autotune, proposed pitch) against the golden-features fixtures.

The fixtures (``../shared/golden-features/f0_post``) hold Applio's own ``get_f0``
output for several tracks and cases; ``manifest.json`` lists the cases and the
printed up_key. The README asks for identical coarse values and up_key, and pitchf
within 1 ulp of the track's dtype.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import SHARED

from rvcfast.errors import ParameterError
from rvcfast.f0.post import (
    AUTOTUNE_NOTES,
    adjust_f0,
    autotune_f0,
    postprocess,
    proposed_pitch_offset,
    shift_f0,
)

FEATURES = SHARED / "golden-features"


def _manifest() -> dict | None:
    path = FEATURES / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["fixtures"]["f0_post"]


_F0_POST = _manifest()
_SKIP = pytest.mark.skipif(
    _F0_POST is None, reason=f"golden-features fixtures not found at {FEATURES} (set RVCFAST_SHARED)"
)
_CASES = [] if _F0_POST is None else [(t, c["name"]) for t in _F0_POST["tracks"] for c in _F0_POST["cases"]]


def _options(case: dict) -> tuple[float, dict]:
    """Applio's get_f0 arguments as (semitones, our keyword arguments)."""
    autotune = float(case.get("f0_autotune_strength", 1.0)) if case.get("f0_autotune") else 0.0
    proposed = float(case.get("proposed_pitch_threshold", 155.0)) if case.get("proposed_pitch") else None
    return float(case.get("pitch", 0)), {"autotune": autotune, "proposed_pitch": proposed}


def _assert_within_ulp(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    ulp = np.spacing(np.abs(expected))
    assert np.all(np.abs(actual - expected) <= ulp), np.max(np.abs(actual - expected) / ulp)


@_SKIP
@pytest.mark.golden
@pytest.mark.parametrize(("track", "case_name"), _CASES)
def test_matches_applio_get_f0(track, case_name):
    case = next(c for c in _F0_POST["cases"] if c["name"] == case_name)
    semitones, options = _options(case)
    f0 = np.load(FEATURES / "f0_post" / "tracks.npz")[track]
    out = np.load(FEATURES / "f0_post" / f"{track}_out.npz")
    ref_coarse, ref_pitchf = out[f"{case_name}__coarse"], out[f"{case_name}__pitchf"]
    assert f0.dtype == np.dtype(_F0_POST["tracks"][track]["dtype"])

    # the adjusted track in the track's dtype
    _assert_within_ulp(adjust_f0(f0, semitones, **options), ref_pitchf)

    # the public entry point: fixtures are as long as the track, so fit_length keeps every frame
    coarse, pitchf = postprocess(f0, f0.shape[0], semitones, **options)
    assert coarse.dtype == np.int64 and pitchf.dtype == np.float32
    np.testing.assert_array_equal(coarse, ref_coarse)
    np.testing.assert_array_equal(pitchf, ref_pitchf.astype(np.float32))

    up_key = _F0_POST["results"][f"{track}/{case_name}"]["up_key"]
    if up_key is not None:
        assert proposed_pitch_offset(f0, options["proposed_pitch"]) == up_key


@_SKIP
@pytest.mark.golden
def test_readme_up_key_table():
    f0s = np.load(FEATURES / "f0_post" / "tracks.npz")
    expected = {
        155.0: {"fcpe_probe": 6, "synthetic": -2, "one_voiced": 0, "low_median": 12},
        255.0: {"fcpe_probe": 12, "synthetic": 6, "one_voiced": 0, "low_median": 12},
    }
    for threshold, per_track in expected.items():
        for track, up_key in per_track.items():
            if track in f0s.files:
                assert proposed_pitch_offset(f0s[track], threshold) == up_key, (track, threshold)


@_SKIP
@pytest.mark.golden
def test_trimmed_and_padded_tracks_keep_the_full_track_semantics():
    """Post-processing runs on the whole raw track; fit_length only cuts or pads afterwards."""
    f0 = np.load(FEATURES / "f0_post" / "tracks.npz")["synthetic"]
    full_coarse, full_pitchf = postprocess(f0, f0.shape[0], proposed_pitch=255.0)
    coarse, pitchf = postprocess(f0, f0.shape[0] - 1, proposed_pitch=255.0)
    np.testing.assert_array_equal(coarse, full_coarse[:-1])
    np.testing.assert_array_equal(pitchf, full_pitchf[:-1])
    coarse, pitchf = postprocess(f0, f0.shape[0] + 3, autotune=1.0)
    assert coarse.shape == (f0.shape[0] + 3,) and pitchf.shape == (f0.shape[0] + 3,)
    assert pitchf[0] == 0 and pitchf[-1] == 0 and coarse[0] == 1 and coarse[-1] == 1
    assert np.all(pitchf[2:-1] > 0)  # autotune voices every real frame


# ----------------------------------------------------------------------------- analytic


def test_notes_are_the_equal_tempered_scale_g1_to_c6():
    assert len(AUTOTUNE_NOTES) == 54
    assert AUTOTUNE_NOTES[0] == 49.0 and AUTOTUNE_NOTES[-1] == 1046.5
    for midi, note in zip(range(31, 85), AUTOTUNE_NOTES):
        assert abs(note - 440.0 * 2 ** ((midi - 69) / 12)) < 0.006  # two-decimal values
    assert list(AUTOTUNE_NOTES) == sorted(AUTOTUNE_NOTES)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_track_on_notes_is_unchanged_by_autotune(dtype):
    f0 = np.asarray(AUTOTUNE_NOTES, dtype=dtype)
    for strength in (1.0, 0.5, 0.3):
        out = autotune_f0(f0, strength)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, f0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_half_strength_moves_halfway_to_the_nearest_note(dtype):
    f0 = np.array([445.0, 436.0, 100.0, 2000.0, 30.0], dtype=dtype)
    nearest = np.array([440.0, 440.0, 98.0, 1046.5, 49.0], dtype=dtype)
    out = autotune_f0(f0, 0.5)
    np.testing.assert_allclose(out, (f0 + nearest) / 2, rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(autotune_f0(f0, 1.0), nearest)


def test_autotune_voices_unvoiced_frames_and_ignores_the_other_options():
    f0 = np.array([0.0, 0.0, 220.0, 0.0])
    coarse, pitchf = postprocess(f0, 4, semitones=7, autotune=0.5, proposed_pitch=400.0)
    np.testing.assert_array_equal(pitchf, np.float32([24.5, 24.5, 220.0, 24.5]))
    assert np.all(coarse == [1, 1, coarse[2], 1]) and coarse[2] > 1


@pytest.mark.parametrize(("dtype", "low", "high"), [(np.float64, 69.30, 73.42), (np.float32, 65.41, 69.30)])
def test_autotune_ties_go_to_the_lower_note(dtype, low, high):
    midpoint = dtype((low + high) / 2)
    assert abs(dtype(low) - midpoint) == abs(dtype(high) - midpoint)  # an exact tie in this dtype
    out = autotune_f0(np.array([midpoint], dtype=dtype), 1.0)
    assert out[0] == dtype(low)


def test_autotune_float32_arithmetic_stays_float32():
    rng = np.random.default_rng(0)
    f0 = rng.uniform(60, 900, 1000).astype(np.float32)
    out = autotune_f0(f0, 0.37)
    assert out.dtype == np.float32
    # frame by frame in float32, as the reference's Python loop computes it
    for f, o in zip(f0[:50], out[:50]):
        note = min(AUTOTUNE_NOTES, key=lambda x, f=f: abs(x - f))
        assert o == f + (note - f) * 0.37


def test_threshold_equal_to_median_gives_no_offset():
    f0 = np.array([0.0, 200.0, 210.0, 0.0, 190.0, 205.0, 0.0])
    median = float(np.median(np.interp(np.arange(7), [1, 2, 4, 5], [200.0, 210.0, 190.0, 205.0])))
    assert proposed_pitch_offset(f0, median) == 0
    assert proposed_pitch_offset(f0, median * 2) == 12
    assert proposed_pitch_offset(f0, median * 2 ** (-5 / 12)) == -5
    assert proposed_pitch_offset(f0, median * 16) == 12  # clamped
    assert proposed_pitch_offset(f0, median / 16) == -12


def test_proposed_pitch_needs_two_voiced_frames():
    assert proposed_pitch_offset(np.zeros(10), 155.0) == 0
    assert proposed_pitch_offset(np.array([0.0, 100.0, 0.0]), 400.0) == 0
    assert proposed_pitch_offset(np.array([100.0, 100.0]), 400.0) == 12


def test_proposed_pitch_adds_to_semitones():
    f0 = np.array([0.0, 100.0, 100.0, 0.0])
    expected = shift_f0(f0, 2 + 12)
    np.testing.assert_array_equal(adjust_f0(f0, 2, proposed_pitch=200.0), expected)


def test_plain_shift_keeps_dtype_and_old_call_form():
    f0 = np.array([0.0, 110.0, 220.0], dtype=np.float32)
    out = adjust_f0(f0, np.float64(12))  # a NumPy scalar must not promote the track
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32([0.0, 220.0, 440.0]))
    coarse, pitchf = postprocess(f0, 3, semitones=0, fill_unvoiced=True)
    np.testing.assert_array_equal(pitchf, np.float32([110.0, 110.0, 220.0]))
    assert f0[0] == 0  # the input is not modified


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"autotune": 1.5}, "autotune strength must be between 0 and 1"),
        ({"autotune": -0.1}, "autotune strength must be between 0 and 1"),
        ({"autotune": math.nan}, "autotune must be finite"),
        ({"proposed_pitch": 0.0}, "proposed_pitch threshold must be > 0"),
        ({"proposed_pitch": math.inf}, "proposed_pitch threshold must be finite"),
        ({"proposed_pitch": "high"}, "proposed_pitch threshold must be a number"),
    ],
)
def test_invalid_options_are_rejected(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        postprocess(np.array([0.0, 100.0, 120.0]), 3, **kwargs)

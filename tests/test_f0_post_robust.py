"""F0 post-processing and the hybrid combiner on malformed or extreme input.

The public functions (``rvcfast.f0.post.postprocess`` is documented in docs/parameters.md)
must either give RVC's coarse bins 1..255 and a usable ``pitchf``, or refuse the input with
a :class:`ParameterError`; never an out-of-range embedding index or a silently wrong track.
Expected values are computed here from the reference formulas (rvc.md section 2.6).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rvcfast.errors import ParameterError
from rvcfast.f0.hybrid import HybridExtractor, combine_f0
from rvcfast.f0.post import (
    coarse_pitch,
    fit_length,
    interpolate_unvoiced,
    postprocess,
    shift_f0,
)


def _reference_coarse(f0: np.ndarray) -> np.ndarray:
    """RVC's formula, written out independently (float64)."""
    mel_min = 1127 * math.log(1 + 50 / 700)
    mel_max = 1127 * math.log(1 + 1100 / 700)
    out = []
    for f in f0:
        mel = 1127 * math.log(1 + f / 700)
        if mel > 0:
            mel = (mel - mel_min) * 254 / (mel_max - mel_min) + 1
        mel = min(max(mel, 1), 255)
        out.append(int(np.rint(mel)))
    return np.array(out)


# --- bad tracks are refused, not quantised into garbage ------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -100.0, -800.0])
def test_postprocess_refuses_nan_inf_and_negative_hz(bad):
    # old code: NaN gave coarse -9223372036854775808 (an index the pitch embedding
    # cannot take), inf went through as pitchf = inf, negatives as negative Hz
    f0 = np.array([0.0, 120.0, bad, 240.0])
    with pytest.raises(ParameterError, match="NaN, infinite or negative"):
        postprocess(f0, 4)


def test_coarse_pitch_refuses_nan_instead_of_an_out_of_range_bin():
    with pytest.raises(ParameterError, match="NaN"):
        coarse_pitch(np.array([0.0, math.nan, 200.0]))


def test_postprocess_refuses_a_track_that_is_not_1d():
    # old code trimmed/padded axis 0 of a [1, T] track and returned 2-D arrays
    with pytest.raises(ParameterError, match="1-D"):
        postprocess(np.array([[0.0, 100.0, 200.0]]), 3)


@pytest.mark.parametrize("n_frames", [-1, 2.5, 3.0, True])
def test_frame_count_must_be_a_whole_number(n_frames):
    # old code: -1 silently dropped the last frame, a float was a bare TypeError
    with pytest.raises(ParameterError, match="n_frames"):
        postprocess(np.array([100.0, 200.0, 300.0]), n_frames)
    with pytest.raises(ParameterError, match="n_frames"):
        fit_length(np.array([100.0, 200.0, 300.0]), n_frames)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"proposed_pitch": True},  # Applio's switch: would be a 1 Hz target, an octave down
        {"semitones": True},
        {"semitones": "2"},
        {"autotune": True},
        {"proposed_pitch": "155"},
    ],
)
def test_bools_and_text_are_not_numbers(kwargs):
    with pytest.raises(ParameterError, match="must be a number"):
        postprocess(np.array([0.0, 200.0, 210.0]), 3, **kwargs)


def test_shift_by_nan_semitones_is_refused():
    with pytest.raises(ParameterError, match="semitones must be finite"):
        shift_f0(np.array([0.0, 100.0]), math.nan)


def test_interpolating_an_integer_track_does_not_truncate():
    out = interpolate_unvoiced(np.array([0, 100, 0, 201]))
    np.testing.assert_array_equal(out, [100.0, 100.0, 150.5, 201.0])
    assert out.dtype == np.float64


# --- edge lengths and extreme values keep the reference semantics ---------------------------


def test_empty_and_single_frame_tracks():
    coarse, pitchf = postprocess(np.zeros(0), 0, 12, proposed_pitch=155.0)
    assert coarse.shape == (0,) and pitchf.shape == (0,)
    coarse, pitchf = postprocess(np.zeros(0), 3, autotune=1.0)
    np.testing.assert_array_equal(coarse, [1, 1, 1])  # padded frames are unvoiced, even with autotune
    np.testing.assert_array_equal(pitchf, [0.0, 0.0, 0.0])
    # one voiced frame: proposed pitch needs two, so only the plain shift applies
    coarse, pitchf = postprocess(np.array([220.0]), 1, 12, proposed_pitch=155.0)
    np.testing.assert_array_equal(pitchf, [440.0])
    np.testing.assert_array_equal(coarse, _reference_coarse(np.array([440.0])))


@pytest.mark.parametrize("semitones", [-48, -24, 0, 24, 48])
def test_extreme_shifts_keep_unvoiced_frames_and_clamp_the_bins(semitones):
    f0 = np.array([0.0, 50.0, 100.0, 0.0, 440.0, 1100.0, 0.0])
    coarse, pitchf = postprocess(f0, f0.shape[0], semitones)
    expected = f0 * 2.0 ** (semitones / 12)
    # pitchf is not clipped to 50..1100 Hz (neither RVC nor Applio clips it); 0 Hz stays 0
    np.testing.assert_allclose(pitchf, expected.astype(np.float32), rtol=1e-7)
    assert (pitchf[f0 == 0] == 0).all()
    assert coarse.min() >= 1 and coarse.max() <= 255
    np.testing.assert_array_equal(coarse, _reference_coarse(expected))


def test_coarse_bins_at_the_range_ends():
    f0 = np.array([0.0, 1e-6, 49.9, 50.0, 1100.0, 1100.1, 1e6, math.inf])
    c = coarse_pitch(f0.copy())
    np.testing.assert_array_equal(c[:6], _reference_coarse(f0[:6]))
    np.testing.assert_array_equal(c, [1, 1, 1, 1, 255, 255, 255, 255])


# --- hybrid combiner -------------------------------------------------------------------------


@pytest.mark.parametrize("min_voiced", [0, 3, 1.7, -1])
def test_combine_f0_refuses_a_vote_no_frame_can_pass(min_voiced):
    # old code: min_voiced=3 of 2 tracks silently made every frame unvoiced
    a, b = np.array([0.0, 100.0, 200.0]), np.array([0.0, 110.0, 210.0])
    with pytest.raises(ParameterError, match="min_voiced"):
        combine_f0([a, b], 3, min_voiced=min_voiced)


def test_combine_f0_refuses_2d_tracks_instead_of_flattening_them():
    # old code flattened [[0, 100], [200, 300]] into four frames of one track
    with pytest.raises(ParameterError, match="1-D"):
        combine_f0([np.array([[0.0, 100.0], [200.0, 300.0]]), np.array([0.0, 110.0, 210.0])], 3)


def test_combine_f0_shorter_track_is_padded_unvoiced_at_the_end():
    a = np.array([100.0, 100.0, 100.0, 100.0])
    b = np.array([400.0, 400.0])  # two frames short
    out = combine_f0([a, b], 4, min_voiced=1)
    np.testing.assert_allclose(out, [200.0, 200.0, 100.0, 100.0])  # geometric mean, then `a` alone
    np.testing.assert_allclose(combine_f0([a, b], 4), [200.0, 200.0, 0.0, 0.0])


def test_min_voiced_written_with_a_non_ascii_digit_is_a_parameter_error():
    class Tracker:
        sample_rate, hop_length = 16000, 160

        def __init__(self, name: str) -> None:
            self.name = name

        def extract(self, audio16k):
            return np.zeros(len(audio16k) // 160 + 1)

        def extract_batch(self, audios):
            return [self.extract(a) for a in audios]

    # "²".isdigit() is True but int("²") is a ValueError: it used to escape as one
    with pytest.raises(ParameterError, match="min_voiced"):
        HybridExtractor([Tracker("a"), Tracker("b")], min_voiced="\u00b2")

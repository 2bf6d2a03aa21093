"""Loudness normalisation (the ``loudness`` parameter) against BS.1770's analytic values.

A full-scale 997 Hz sine reads -3.01 LUFS in BS.1770 (its K-weighting is ~0 dB there and
the -0.691 dB offset cancels the filter's gain at 997 Hz), so a sine of peak ``a`` reads
``20 log10(a) - 3.01`` LUFS; gating does not change a steady tone.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from helpers import golden_converter, golden_speech

import rvcfast
from rvcfast.errors import ParameterError
from rvcfast.loudness import integrated_loudness, normalize_loudness
from rvcfast.params import ConversionParams, coerce_param


def _sine(peak: float, rate: int, seconds: float = 3.0, freq: float = 997.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (peak * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 32000, 40000, 48000])
@pytest.mark.parametrize("peak", [1.0, 0.1, 0.01])
def test_a_sine_reads_its_analytic_loudness(rate: int, peak: float) -> None:
    assert integrated_loudness(_sine(peak, rate), rate) == pytest.approx(20 * math.log10(peak) - 3.01, abs=0.1)


def test_unmeasurable_audio() -> None:
    assert integrated_loudness(np.zeros(16000, np.float32), 16000) == -math.inf  # below the -70 LUFS gate
    assert integrated_loudness(_sine(0.5, 16000, seconds=0.3), 16000) is None  # shorter than one 400 ms block
    with pytest.raises(ValueError, match="mono or \\[samples, channels\\]"):
        integrated_loudness(np.zeros((16000, 2, 2)), 16000)
    stereo = np.stack([_sine(0.1, 16000), _sine(0.1, 16000)], axis=1)  # BS.1770 sums the channels' power: +3 dB
    assert integrated_loudness(stereo, 16000) == pytest.approx(integrated_loudness(stereo[:, 0], 16000) + 3.01, abs=0.02)


def test_more_than_five_channels_are_measured_each_weighted_one() -> None:
    # pyloudnorm stops at 5 channels (BS.1770's L, R, C, Ls, Rs); a 6- or 8-channel output of
    # channels="each" was a ValueError ("post-processing failed") with any loudness setting
    sine = _sine(0.1, 16000)
    six = np.stack([sine] * 6, axis=1)  # six equal channels, weighted 1: six times the power
    assert integrated_loudness(six, 16000) == pytest.approx(integrated_loudness(sine, 16000) + 10 * math.log10(6), abs=0.02)
    rng = np.random.default_rng(0)
    three = (rng.standard_normal((48000, 3)) * np.linspace(0.001, 0.3, 48000)[:, None]).astype(np.float32)
    eight = np.concatenate([three, np.zeros((48000, 5), np.float32)], axis=1)  # silent channels add no power
    assert integrated_loudness(eight, 16000) == pytest.approx(integrated_loudness(three, 16000), abs=1e-6)  # L, R, C: weight 1
    assert integrated_loudness(np.zeros((32000, 7)), 16000) == -math.inf
    assert integrated_loudness(np.zeros((4000, 7)), 16000) is None
    out, warnings = normalize_loudness(eight, 16000, -20.0, "eight.wav")
    assert warnings == [] and out.shape == eight.shape
    assert integrated_loudness(out, 16000) == pytest.approx(-20.0, abs=0.05)


def test_match_with_a_formant_shift_gives_the_input_loudness_before_the_shift() -> None:
    # the formant shift changes the timbre and so the K-weighted loudness (2.5 dB for the golden
    # speech at timbre 1.2, 2.6 dB for this tone at 0.7): "match" took the shifted input's
    # loudness, not the one the user gave
    from rvcfast.effects import formant_shift
    from rvcfast.pipeline import finish, prepare_input

    t = np.arange(3 * 16000) / 16000
    voice = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 40)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    voice = 0.5 * voice / np.abs(voice).max()  # under the 0.95 input peak guard
    params = ConversionParams(formant=(1.0, 0.7), loudness="match")
    heard = integrated_loudness(voice, 16000)
    shifted = integrated_loudness(formant_shift(voice, 1.0, 0.7), 16000)
    assert abs(shifted - heard) > 1.0  # the shift does change it: the test can tell the two apart
    prep = prepare_input(voice, 16000, params=params)
    warnings: list[str] = []
    out, rate = finish([_sine(0.05, 40000)], prep, 40000, params, warnings)
    assert warnings == [] and rate == 40000
    assert integrated_loudness(out, rate) == pytest.approx(heard, abs=0.05)
    short = prepare_input(voice[:4000], 16000, params=params)  # under one 400 ms block: left as it is
    out, _ = finish([_sine(0.05, 40000)], short, 40000, params, warnings)
    assert np.array_equal(out, _sine(0.05, 40000)) and "the input is shorter than 0.4 s" in warnings[0]
    silent = prepare_input(np.zeros(32000), 16000, params=params)
    out, _ = finish([_sine(0.05, 40000)], silent, 40000, params, warnings)
    assert "the input is silent" in warnings[1]


@pytest.mark.parametrize("target", [-30.0, -23.0, -16.0])
def test_normalising_reaches_the_target(target: float) -> None:
    x = _sine(0.05, 40000) * np.linspace(0.5, 1.0, 120000, dtype=np.float32)  # not a steady level
    out, warnings = normalize_loudness(x, 40000, target, "take.wav")
    assert warnings == []
    assert out.dtype == np.float32 and out.shape == x.shape
    assert integrated_loudness(out, 40000) == pytest.approx(target, abs=0.05)
    big = np.abs(x) > 1e-3
    np.testing.assert_allclose(out[big] / x[big], out[1000] / x[1000], rtol=1e-5)  # one gain: the waveform's shape is kept


def test_the_peak_limit_holds_and_is_reported() -> None:
    x = _sine(0.1, 40000)
    out, warnings = normalize_loudness(x, 40000, -1.0, "take.wav")  # a sine at -1 LUFS peaks at +2 dBFS
    assert np.abs(out).max() == pytest.approx(0.99, abs=1e-6)
    assert integrated_loudness(out, 40000) == pytest.approx(20 * math.log10(0.99) - 3.01, abs=0.1)
    assert len(warnings) == 1
    assert re.fullmatch(
        r"take\.wav: loudness -1\.0 LUFS would need a peak of \+2\.\d dBFS: the output is -3\.\d LUFS, "
        r"as loud as the 0\.99 peak limit allows", warnings[0]
    ), warnings[0]


def test_unmeasurable_audio_is_left_as_it_is_with_a_warning() -> None:
    silent = np.zeros(40000, np.float32)
    out, warnings = normalize_loudness(silent, 40000, -14.0, "quiet.wav")
    assert np.array_equal(out, silent) and warnings == [
        "quiet.wav: loudness not normalised: the output is silent, its loudness cannot be measured"
    ]
    short = _sine(0.1, 40000, seconds=0.2)
    out, warnings = normalize_loudness(short, 40000, -14.0, "short.wav")
    assert np.array_equal(out, short) and "shorter than 0.4 s" in warnings[0]


# ---------------------------------------------------------------------- the parameter


def test_the_parameter_takes_match_a_number_or_nothing() -> None:
    for ok in (None, "match", -14, -23.5, -70, 0):
        ConversionParams(loudness=ok).validate()
    for bad, words in (("loud", "'match', a number"), (3, "-70..0 LUFS"), (-71, "-70..0 LUFS"),
                       (float("nan"), "finite"), (True, "a number")):
        with pytest.raises(ParameterError, match=words):
            ConversionParams(loudness=bad).validate()
    assert coerce_param("loudness", "match") == "match"
    assert coerce_param("loudness", " -14 ") == -14.0
    assert coerce_param("loudness", "off") is None
    with pytest.raises(ParameterError, match="'match' or a number of LUFS"):
        coerce_param("loudness", "loudest")


# ---------------------------------------------------------------------- in the conversion (golden voice: audible output)


@pytest.fixture(scope="module")
def converter(golden) -> rvcfast.Converter:
    return golden_converter(golden)


@pytest.fixture(scope="module")
def speech(golden) -> np.ndarray:
    return golden_speech(golden)


def test_a_conversion_reaches_the_loudness_asked_for(converter, speech) -> None:
    plain = converter.convert(speech, 16000, noise=False)
    quieter = converter.convert(speech, 16000, noise=False, loudness=-30.0)
    assert integrated_loudness(plain.audio, plain.sample_rate) > -25  # so the gain is a real change
    assert quieter.warnings == []
    assert integrated_loudness(quieter.audio, quieter.sample_rate) == pytest.approx(-30.0, abs=0.05)
    gain = quieter.audio / np.where(plain.audio == 0, 1, plain.audio)
    big = np.abs(plain.audio) > 1e-3 * np.abs(plain.audio).max()
    np.testing.assert_allclose(gain[big], np.median(gain[big]), rtol=1e-4)  # the same output, one gain


def test_match_gives_the_output_its_input_loudness(converter, speech) -> None:
    from rvcfast.pipeline import prepare

    res = converter.convert(speech, 16000, noise=False, loudness="match")
    heard = integrated_loudness(prepare(speech.astype(np.float64)).audio, 16000)  # the input as converted
    assert res.warnings == []
    assert integrated_loudness(res.audio, res.sample_rate) == pytest.approx(heard, abs=0.05)
    assert integrated_loudness(speech, 16000) == pytest.approx(heard, abs=0.5)  # the high-pass barely changes it


def test_a_target_beyond_the_peak_limit_is_a_warning_of_the_result(converter, speech) -> None:
    res = converter.convert(speech, 16000, noise=False, loudness=0.0)
    assert np.abs(res.audio).max() <= 0.99 + 1e-6
    assert any("as loud as the 0.99 peak limit allows" in w for w in res.warnings), res.warnings


def test_streamed_output_refuses_loudness(converter, speech) -> None:
    engine = converter.engine
    prep = engine.prepare(speech, 16000)
    with pytest.raises(ParameterError, match="needs the whole output"):
        next(engine.stream(prep, engine.params({"loudness": -20.0})))
    raw = list(engine.stream(prep, engine.params({"loudness": -20.0}), raw=True))  # the server finishes raw pieces itself
    assert len(raw) == 1

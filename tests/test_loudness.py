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
import soundfile as sf

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
    with pytest.raises(ValueError, match="up to 5"):
        integrated_loudness(np.zeros((16000, 6)), 16000)
    stereo = np.stack([_sine(0.1, 16000), _sine(0.1, 16000)], axis=1)  # BS.1770 sums the channels' power: +3 dB
    assert integrated_loudness(stereo, 16000) == pytest.approx(integrated_loudness(stereo[:, 0], 16000) + 3.01, abs=0.02)


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
def converter(golden):
    m = golden / "models"
    return rvcfast.Converter.from_pretrained(
        m / "voice_v2_40k_f0.pth", encoder=m / "contentvec_hf", f0="rmvpe", f0_weights=m / "rmvpe_reduced.pt", device="cpu"
    )


@pytest.fixture(scope="module")
def speech(golden) -> np.ndarray:
    x, rate = sf.read(golden / "audio" / "e2e_short_16k.wav", dtype="float32")
    assert rate == 16000
    return x


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

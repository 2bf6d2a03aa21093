"""``channels="each"``: a multi-channel input converted channel by channel, stereo in, stereo out.

Expectations come from mono conversions of the single channels (the same engine, noise
off): a channel of the output is that channel converted alone, except where the shared
input peak guard scaled every channel together (a channel louder than 0.95 lowers all of
them, keeping their balance), and the output peak limit and ``loudness`` act on all channels
at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (  # noqa: F401 (fixtures)
    golden_converter,
    golden_speech,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast
from rvcfast.audio import decode
from rvcfast.errors import ParameterError
from rvcfast.loudness import integrated_loudness
from rvcfast.segment import SegmentConfig


def _stereo(seconds: float, rate: int = 16000, left: float = 0.3, right: float = 0.2) -> np.ndarray:
    return np.stack([tone(seconds, rate, freq=180.0, amp=left), tone(seconds, rate, freq=260.0, amp=right)], axis=1)


# ---------------------------------------------------------------------- decoding


def test_decoding_can_keep_the_channels(tmp_path: Path) -> None:
    x = _stereo(1.0, 44100)
    sf.write(tmp_path / "s.wav", x, 44100, subtype="FLOAT")
    kept = decode(tmp_path / "s.wav", keep_channels=True)
    assert kept.audio.shape == (16000, 2) and kept.channels == 2
    assert not any("mixed down" in w for w in kept.warnings)
    for c in range(2):  # each channel resampled as that channel alone would be
        np.testing.assert_allclose(kept.audio[:, c], decode(x[:, c].copy(), 44100).audio, rtol=0, atol=1e-7)
    mixed = decode(tmp_path / "s.wav")
    assert mixed.audio.ndim == 1 and any("2 channels mixed down to mono" in w for w in mixed.warnings)
    np.testing.assert_allclose(decode(x, 44100, keep_channels=True).audio, kept.audio, rtol=0, atol=1e-7)
    assert decode(x[:, 0].copy(), 44100, keep_channels=True).audio.ndim == 1  # one channel stays 1-D


# ---------------------------------------------------------------------- converting (golden voice: audible output)


@pytest.fixture(scope="module")
def converter(golden) -> rvcfast.Converter:
    return golden_converter(golden)


@pytest.fixture(scope="module")
def speech(golden) -> np.ndarray:
    return golden_speech(golden, "float64")[: 3 * 16000]


def test_each_channel_is_that_channel_converted_alone(converter, speech) -> None:
    left, right = 0.5 * speech, 0.3 * np.roll(speech, 4000)  # two different signals, peaks under 0.95
    res = converter.convert(np.stack([left, right], axis=1), 16000, noise=False, channels="each")
    alone = [converter.convert(ch, 16000, noise=False).audio for ch in (left, right)]
    assert res.audio.shape == (alone[0].shape[0], 2) and res.audio.dtype == np.float32
    for c in range(2):
        np.testing.assert_allclose(res.audio[:, c], alone[c], rtol=0, atol=1e-6)
    mixed = converter.convert(np.stack([left, right], axis=1), 16000, noise=False)
    assert mixed.audio.ndim == 1  # the default mixes down, as the references do


def test_the_input_peak_guard_keeps_the_balance(converter, speech) -> None:
    loud = 0.99 * speech / np.abs(speech).max()  # above the 0.95 guard: every channel is scaled by 0.95 / 0.99
    quiet = 0.3 * np.roll(speech, 4000)
    res = converter.convert(np.stack([loud, quiet], axis=1), 16000, noise=False, channels="each")
    scaled = converter.convert(quiet * 0.95 / 0.99, 16000, noise=False).audio
    unscaled = converter.convert(quiet, 16000, noise=False).audio
    np.testing.assert_allclose(res.audio[:, 1], scaled, rtol=0, atol=1e-6)
    assert np.abs(res.audio[:, 1] - unscaled).max() > 1e-3  # the guard did act on the quiet channel


def test_loudness_and_the_peak_limit_act_on_all_channels_at_once(converter, speech) -> None:
    x = np.stack([0.5 * speech, 0.2 * np.roll(speech, 4000)], axis=1)
    plain = converter.convert(x, 16000, noise=False, channels="each").audio
    for target in (-30.0, 0.0):  # a gain, then (at 0 LUFS) the 0.99 limit
        res = converter.convert(x, 16000, noise=False, channels="each", loudness=target)
        gain = np.median(res.audio[:, 0] / plain[:, 0])
        np.testing.assert_allclose(res.audio, plain * gain, rtol=1e-4, atol=1e-7)  # one gain for both channels
        if target == 0.0:
            assert np.abs(res.audio).max() == pytest.approx(0.99, abs=1e-5)
        else:
            assert integrated_loudness(res.audio, res.sample_rate) == pytest.approx(target, abs=0.05)


# ---------------------------------------------------------------------- plumbing (tiny voice)


def test_a_long_input_is_split_at_the_same_points_on_every_channel(tiny_converter) -> None:
    """Every channel is split where the mix is quiet, so the channels' pieces line up.

    With the default segments that takes an input over 41 s; where the splits fall does not
    matter here, so the tiny voice runs with 3 s segments (split over 4 s, near every 3 s)
    and a 7 s input is split twice.
    """
    e = tiny_converter.engine
    conv = rvcfast.Converter(
        e.vocoder, e.encoder, e.f0_extractor, e.index, device=e.device,
        segment_config=SegmentConfig(x_query=1, x_center=3, x_max=4),
    )
    x = _stereo(7.0)
    prep = conv.engine.prepare(x, 16000, params=conv.engine.params(channels="each"))
    assert prep.n_channels == 2 and len(prep.segments) == 3
    assert all(c.segments == prep.segments for c in prep.more_channels)
    # each channel alone would be split elsewhere: the shared points are the mix's, not a coincidence
    assert all(conv.engine.prepare(x[:, c].copy(), 16000).segments != prep.segments for c in range(2))
    res = conv.convert(x, 16000, noise=False, channels="each")
    mono = conv.convert(x, 16000, noise=False)  # the mix is split where the channels are
    assert res.audio.shape == (mono.audio.shape[0], 2)


def test_a_batch_writes_multi_channel_files(tiny_converter, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "stereo.wav", _stereo(1.0, 44100), 44100)
    sf.write(src / "four.flac", np.concatenate([_stereo(1.0, 22050)] * 2, axis=1), 22050)
    sf.write(src / "mono.wav", tone(1.0, 44100), 44100)
    results = tiny_converter.convert_batch([src], tmp_path / "wav", channels="each")
    assert all(r.ok for r in results), [r.error for r in results]
    assert {Path(r.source).name: sf.info(r.output_path).channels for r in results} == {
        "stereo.wav": 2, "four.flac": 4, "mono.wav": 1
    }
    # MP3 at 40 kHz is resampled to 44.1 kHz channel by channel; it holds two channels at most
    results = {Path(r.source).name: r for r in tiny_converter.convert_batch([src], tmp_path / "mp3", channels="each", format="mp3")}
    assert sf.info(results["stereo.wav"].output_path).channels == 2 and sf.info(results["stereo.wav"].output_path).samplerate == 44100
    assert not results["four.flac"].ok and "mp3 holds at most 2 channels, the audio has 4" in results["four.flac"].error
    assert sorted(p.name for p in (tmp_path / "mp3").iterdir()) == ["mono.mp3", "stereo.mp3"]  # nothing partial


def test_streaming_refuses_an_input_prepared_channel_by_channel(tiny_converter) -> None:
    engine = tiny_converter.engine
    q = engine.params(channels="each")
    prep = engine.prepare(_stereo(1.0), 16000, params=q)
    for raw in (False, True):
        with pytest.raises(ParameterError, match="channels='each'"):
            next(engine.stream(prep, q, raw=raw))


def test_the_parameter_takes_mix_or_each() -> None:
    from rvcfast.params import ConversionParams, coerce_param

    ConversionParams(channels="each").validate()
    for bad in ("stereo", "", 2, None):
        with pytest.raises(ParameterError, match="channels must be one of 'mix', 'each'"):
            ConversionParams(channels=bad).validate()
    assert coerce_param("channels", " EACH ") == "each"

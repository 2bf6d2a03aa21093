"""The engine as a library user drives it: settings checked by run(), F0 tracks counted,
a finished stream refusing more audio, packing and threads leaving results unchanged,
and inputs of odd rates, channels, lengths and levels."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import MODEL_SR, one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.engine import Engine
from rvcfast.errors import AudioError, ParameterError, RvcfastError
from rvcfast.params import ConversionParams
from rvcfast.pipeline import prepare
from rvcfast.streaming import StreamFinisher


@pytest.fixture(scope="module")
def engine(tiny_converter: rvcfast.Converter) -> Engine:
    return tiny_converter.engine


# ------------------------------------------------------------------ run() checks what it is given


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"pitch": 100}, "pitch must be within -48..48"),
        ({"protect": -1.0}, "protect must be within 0..0.5"),
        ({"index_rate": 3.0}, "index_rate must be within 0..1"),
        ({"output_sample_rate": 100}, "output_sample_rate must be within 8000..384000 Hz"),
        ({"speaker": 9}, "speaker 9 is out of range: this model has 4 speaker"),
    ],
)
def test_run_checks_settings_like_convert(engine: Engine, bad: dict, message: str) -> None:
    # a ConversionParams built by hand is not checked until it meets a model: run() must check
    # it (convert() and stream() do), not convert with pitch 100 or a negative protect
    prep = engine.prepare(tone(0.5), 16000, name="clip")
    q = ConversionParams(**bad)
    with pytest.raises(ParameterError, match=message):
        engine.run([prep], q)
    with pytest.raises(ParameterError, match=message):
        engine.run([prep, prep], [ConversionParams(noise=False), q])


def test_run_takes_a_mapping_for_all_inputs(engine: Engine) -> None:
    preps = [engine.prepare(tone(0.4 + 0.1 * k), 16000) for k in range(2)]
    by_mapping = engine.run(preps, {"pitch": 3, "noise": False})
    by_object = engine.run(preps, ConversionParams(pitch=3, noise=False))
    for a, b in zip(by_mapping, by_object):
        assert a.ok and b.ok
        np.testing.assert_array_equal(a.audio, b.audio)


def test_run_refuses_a_wrong_number_of_f0_tracks(engine: Engine) -> None:
    q = engine.params(noise=False)
    preps = [engine.prepare(tone(0.5), 16000, name="A"), engine.prepare(tone(0.7), 16000, name="B")]
    tracks = engine.extract_f0(preps, q)
    # too few: the second input used to fail with an empty "synthesis failed: AssertionError"
    with pytest.raises(ParameterError, match="2 inputs but 1 F0 tracks"):
        engine.run(preps, q, f0=tracks[:1])
    # too many: used to be ignored silently
    with pytest.raises(ParameterError, match="2 inputs but 3 F0 tracks"):
        engine.run(preps, q, f0=[*tracks, tracks[0]])
    given = engine.run(preps, q, f0=tracks)
    computed = engine.run(preps, q)
    for a, b in zip(given, computed):
        np.testing.assert_array_equal(a.audio, b.audio)


@pytest.mark.parametrize("seconds", [-1.0, float("nan")])
def test_run_refuses_a_bad_batch_size(engine: Engine, seconds: float) -> None:
    prep = engine.prepare(tone(0.5), 16000)
    with pytest.raises(ParameterError, match="batch_seconds must be 0 or more"):
        engine.run([prep], engine.params(), batch_seconds=seconds)


# ------------------------------------------------------------------ streams


@pytest.mark.parametrize("rate", [None, 44100])
def test_a_finished_stream_refuses_more_audio(rate: int | None) -> None:
    prep = prepare(0.3 * np.random.default_rng(0).standard_normal(16000), label="clip.wav")
    q = ConversionParams(output_sample_rate=rate)
    fin = StreamFinisher(prep, 40000, q)
    fin.push(np.full(1000, 0.1, np.float32))
    fin.push(np.full(999, 0.1, np.float32), last=True)
    # with resampling this was soxr's bare "Input after last input"; without, more audio was accepted
    with pytest.raises(RvcfastError, match=r"clip\.wav: the output was already finished"):
        fin.push(np.full(10, 0.1, np.float32))
    with pytest.raises(RvcfastError, match="already finished"):
        fin.push(np.zeros(0, np.float32), last=True)


@pytest.mark.parametrize("rate", [None, 44100, 8000])
def test_pieces_of_any_size_finish_like_the_whole(rate: int | None) -> None:
    # 1-sample and empty pieces included: resampling and the peak guard see one signal
    rng = np.random.default_rng(1)
    prep = prepare(0.3 * rng.standard_normal(48000))
    out = (0.2 * rng.standard_normal(120000)).astype(np.float32)
    q = ConversionParams(output_sample_rate=rate)
    whole, whole_rate = rvcfast.pipeline.finish(out.copy(), prep, 40000, q)
    sizes = [0, 1, 1, 2, 0, 3, 5, 160, 1, 7919]
    cuts = np.cumsum([0, *sizes, out.shape[0] - sum(sizes)])
    fin = StreamFinisher(prep, 40000, q)
    # ``last`` is a NumPy bool here (cuts are NumPy ints): soxr's stream refused it with a TypeError
    pieces = [fin.push(out[a:b], last=b == out.shape[0] and a != b) for a, b in zip(cuts[:-1], cuts[1:])]
    assert fin.rate == whole_rate
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_closed_stream_stops_and_a_new_one_starts_over(engine: Engine) -> None:
    q = engine.params(noise=False)
    prep = engine.prepare(tone(1.0), 16000)
    stream = engine.stream(prep, q)
    first = next(stream)
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    again = list(engine.stream(prep, q))
    assert len(again) == 1
    np.testing.assert_array_equal(again[0], first)


# ------------------------------------------------------------------ packing and threads


def test_many_short_inputs_packed_equal_each_alone(engine: Engine) -> None:
    q = engine.params(noise=True, seed=5, pitch=2)
    lengths = [400, 401, 803, 1600, 2399, 4000, 6001, 9000, 12345]
    clips = [tone(n / 16000, freq=130 + 17 * k) for k, n in enumerate(lengths)]
    preps = [engine.prepare(c, 16000) for c in clips]
    together = engine.run(preps, q, batch_seconds=60.0)
    for n, prep, got in zip(lengths, preps, together):
        alone = engine.run([prep], q)[0]
        assert got.ok and alone.ok
        # the reference's length: min(n // 160, 2 * content frames) frames of the 1 s-padded
        # input at hop 400 (40 kHz), less 1 s of context on each side
        padded = n + 32000
        frames = min(padded // 160, 2 * ((padded - 400) // 320 + 1))
        assert got.audio.shape == (frames * 400 - 2 * MODEL_SR,)
        np.testing.assert_allclose(got.audio, alone.audio, rtol=0, atol=1e-6)


def test_one_engine_from_many_threads_equals_one_thread(engine: Engine, tiny_converter: rvcfast.Converter) -> None:
    settings = [
        dict(pitch=3, noise=False),
        dict(pitch=-4, index_rate=0.3, protect=0.1, noise=False, filter_radius=5),
        dict(speaker=2, noise=True, seed=3, rms_mix_rate=0.5, output_sample_rate=22050),
        dict(noise=False, keep_length=True, autotune=0.7),
    ]
    clips = [tone(0.5 + 0.3 * k, freq=140 + 30 * k, channels=2 if k % 2 else 0) for k in range(4)]
    expected = [tiny_converter.convert(c, 16000, **s).audio for c, s in zip(clips, settings)]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        k = i % 4
        try:
            if i % 2:
                q = engine.params(**settings[k])
                got[i] = np.concatenate(list(engine.stream(engine.prepare(clips[k], 16000, params=q), q)))
            else:
                got[i] = tiny_converter.convert(clips[k], 16000, **settings[k]).audio
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(8):
        np.testing.assert_array_equal(got[i], expected[i % 4])


# ------------------------------------------------------------------ odd inputs


@pytest.mark.parametrize("rate", [8000, 11025, 192000])
def test_odd_input_rates_give_the_length_of_their_duration(tiny_converter: rvcfast.Converter, rate: int) -> None:
    x = tone(0.5, rate=rate)
    res = tiny_converter.convert(x, rate, noise=False, keep_length=True)
    assert res.sample_rate == MODEL_SR
    assert res.audio.shape == (MODEL_SR // 2,)
    assert np.isfinite(res.audio).all()


def test_stereo_of_equal_channels_is_the_mono_conversion(tiny_converter: rvcfast.Converter) -> None:
    x = tone(0.6)
    mono = tiny_converter.convert(x, 16000, noise=False)
    stereo = tiny_converter.convert(np.stack([x, x], axis=1), 16000, noise=False)
    np.testing.assert_array_equal(stereo.audio, mono.audio)
    assert any("channels mixed down" in w for w in stereo.warnings)


def test_silence_and_dc_offset(tiny_converter: rvcfast.Converter) -> None:
    silent = tiny_converter.convert(np.zeros(16000), 16000, noise=False)
    assert silent.ok and silent.audio.shape == (39200,) and np.isfinite(silent.audio).all()
    x = tone(1.0)
    plain = tiny_converter.convert(x, 16000, noise=False)
    shifted = tiny_converter.convert(x + 0.25, 16000, noise=False)
    assert any("DC offset" in w for w in shifted.warnings)
    np.testing.assert_allclose(shifted.audio, plain.audio, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("n", "keep_length", "out"), [(159, True, None), (160, True, 400), (399, False, None), (400, False, 800)])
def test_inputs_shorter_than_an_f0_window(tiny_converter: rvcfast.Converter, n: int, keep_length: bool, out: int | None) -> None:
    x = tone(0.1)[:n]
    if out is None:
        with pytest.raises(AudioError, match="too short to convert"):
            tiny_converter.convert(x, 16000, noise=False, keep_length=keep_length)
    else:
        assert tiny_converter.convert(x, 16000, noise=False, keep_length=keep_length).audio.shape == (out,)


def test_a_pitchless_voice_ignores_pitch_settings(tiny_models) -> None:
    conv = rvcfast.Converter.from_pretrained(tiny_models.voice_nof0, index=tiny_models.index, encoder=tiny_models.encoder, device="cpu")
    assert conv.f0_extractor is None
    x = tone(0.8)
    plain = conv.convert(x, 16000, noise=False)
    shifted = conv.convert(x, 16000, noise=False, pitch=7, protect=0.1)
    np.testing.assert_array_equal(plain.audio, shifted.audio)
    prep = conv.engine.prepare(x, 16000)
    q = conv.make_params(noise=False)
    np.testing.assert_array_equal(np.concatenate(list(conv.engine.stream(prep, q))), plain.audio)


def test_index_rate_zero_equals_no_index(tiny_models, tiny_converter: rvcfast.Converter) -> None:
    bare = tiny_models.converter(index=None)
    x = tone(0.8)
    np.testing.assert_array_equal(
        tiny_converter.convert(x, 16000, noise=False, index_rate=0).audio, bare.convert(x, 16000, noise=False, index_rate=0.75).audio
    )


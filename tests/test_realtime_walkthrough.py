"""Realtime conversion as an app developer streams it (docs/realtime.md): pushes of any size
and a different size mid-stream, refused pushes, reset between utterances, flushing, several
streams in threads sharing one model, joins without clicks, and the settings' refusals."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from helpers import one_thread_fixture, stream_in_pieces, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

from rvcfast.dsp import resample
from rvcfast.errors import AudioError, ParameterError
from rvcfast.realtime import RealtimeConverter

#: A short stream geometry: 0.1 s blocks and context, 20 ms crossfade (the default 10 ms search).
SMALL = dict(block_seconds=0.1, context_seconds=0.1, crossfade_seconds=0.02)


def _speechlike(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A voiced tone with a vibrato and a little noise, float32."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 180.0 + 20.0 * np.sin(2 * np.pi * 3.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = 0.3 * np.sin(phase) + 0.1 * np.sin(2 * phase) + 0.01 * np.random.default_rng(seed).standard_normal(t.shape[0])
    return x.astype(np.float32)


# ------------------------------------------------------------------ timing and push sizes


def test_the_output_does_not_depend_on_how_the_stream_is_cut(tiny_converter) -> None:
    """A microphone loop of 1000-sample blocks, one push of everything, and odd pushes with a
    block of another size (and an empty one) in the middle give the same samples, of the
    length docs/realtime.md promises (input + latency_samples); seeded noise too."""
    rate = 44100
    x = _speechlike(0.5, rate)
    for kw in (dict(noise=False), dict(seed=3)):
        rt = RealtimeConverter(tiny_converter, sample_rate=rate, **SMALL, **kw)
        steady = stream_in_pieces(rt, x, [1000])
        assert steady.shape == (x.shape[0] + rt.latency_samples,)
        assert np.abs(steady).max() > 0
        for sizes in ([x.shape[0]], [1000, 1000, 7, 0, 3 * rt.block_size + 5, 1, 1000]):
            np.testing.assert_array_equal(stream_in_pieces(rt, x, sizes), steady)


def _identity_output(self: RealtimeConverter) -> np.ndarray:
    """A stand-in for the models: the buffer's newest frames themselves, at the model's rate."""
    g = self.geometry
    return resample(self._buf16[self._buf16.shape[0] - g.decoded * 160 :], 16000, self.engine.sample_rate, dtype=np.float64)


@pytest.mark.parametrize("rate,whole", [(44100, False), (8000, False), (22050, False), (48000, True)])
def test_with_identity_models_the_stream_is_the_input_delayed_by_the_reported_latency(
    tiny_converter, monkeypatch, rate: int, whole: bool
) -> None:
    """Models that agree with themselves: every sample, across every block join, is the input
    delayed by exactly latency_samples (no click, no drift, no resampler delay), at the
    model's rate and others, the default geometry and pushes of 1001 samples."""
    monkeypatch.setattr(RealtimeConverter, "_model_output", _identity_output)
    rt = RealtimeConverter(tiny_converter, sample_rate=rate, whole_blocks=whole)
    t = np.arange(int(2.5 * rate) // rt.block_size * rt.block_size) / rate
    x = (0.5 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)
    out = stream_in_pieces(rt, x, [rt.block_size] if whole else [1001])
    lat = rt.latency_samples
    assert lat == round(((0 if whole else rt.block_size / rate) + (0.04 if rate % 100 else 0.05) + (0.02 if rate % 100 else 0.01)) * rate)
    assert out.shape == (x.shape[0] + lat,)
    err = np.abs(out[lat:] - x)[rate // 2 : -rate // 2]  # the start crossfades from silence
    assert err.max() < 1e-3


# ------------------------------------------------------------------ state: refusals, reset, flush


def test_refused_pushes_leave_the_stream_as_it_was_and_reset_starts_a_fresh_one(tiny_converter) -> None:
    rate = 48000
    x = _speechlike(0.4, rate, seed=1)
    fresh = RealtimeConverter(tiny_converter, sample_rate=rate, **SMALL, seed=5)
    want = stream_in_pieces(fresh, x, [960])
    rt = RealtimeConverter(tiny_converter, sample_rate=rate, **SMALL, seed=5)
    got = [rt.push(x[:5000])]
    for bad, error in [(np.full(100, np.nan, np.float32), "NaN"), (np.zeros((100, 2), np.float32), "1-D mono"),
                       (np.zeros((100, 1), np.float32), "1-D mono"), (np.zeros(100, np.int16), "float samples")]:
        with pytest.raises(AudioError, match=error):
            rt.push(bad)
    got += [rt.push(x[5000:]), rt.flush()]
    np.testing.assert_array_equal(np.concatenate(got), want)
    # another utterance after reset() (or after flush()) is converted as by a new converter
    rt.push(_speechlike(0.2, rate, seed=2))
    rt.reset()
    np.testing.assert_array_equal(stream_in_pieces(rt, x, [960]), want)
    np.testing.assert_array_equal(stream_in_pieces(rt, x, [960]), want)


def test_whole_blocks_flush_and_trimmed_stream_line_up_with_the_input(tiny_converter) -> None:
    rt = RealtimeConverter(tiny_converter, sample_rate=16000, whole_blocks=True, **SMALL, noise=False)
    b = rt.block_size
    x = _speechlike(0.5, 16000)[: 4 * b]
    out = stream_in_pieces(rt, x, [b, 2 * b])
    assert out.shape == (x.shape[0] + rt.latency_samples,) and rt.latency_samples == 480
    with pytest.raises(ParameterError, match=f"whole number of blocks of {b} samples, got {b + 1}"):
        rt.push(x[: b + 1])
    trimmed = np.concatenate(list(rt.convert_stream([x[i : i + b] for i in range(0, x.shape[0], b)], trim_latency=True)))
    np.testing.assert_array_equal(trimmed, out[rt.latency_samples :])


# ------------------------------------------------------------------ several streams, one model


def test_streams_in_threads_sharing_one_converter_give_their_sequential_output(tiny_converter) -> None:
    """Three streams (different rates, keys and seeds) in three threads over one Converter: each
    gives exactly what it gives alone."""
    streams = [dict(sample_rate=44100, pitch=0, noise=False), dict(sample_rate=48000, pitch=5, seed=1),
               dict(sample_rate=16000, pitch=-3, index_rate=0.5, noise=False)]
    inputs = [_speechlike(0.3, s["sample_rate"], seed=i) for i, s in enumerate(streams)]

    def run(i: int) -> np.ndarray:
        return stream_in_pieces(RealtimeConverter(tiny_converter, **SMALL, **streams[i]), inputs[i], [777])

    alone = [run(i) for i in range(3)]
    got: dict[int, np.ndarray | BaseException] = {}

    def worker(i: int) -> None:
        try:
            got[i] = run(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            got[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        assert isinstance(got[i], np.ndarray), got[i]
        np.testing.assert_array_equal(got[i], alone[i])


# ------------------------------------------------------------------ settings and input: the regressions


def test_numpy_numbers_are_durations(tiny_converter) -> None:
    """Durations computed with NumPy (a float32 from a config array, an int64) are accepted as
    the same Python numbers (was: "block_seconds must be a number of seconds, got np.float32(0.05)")."""
    a = RealtimeConverter(tiny_converter, sample_rate=48000, block_seconds=np.float32(0.1), context_seconds=np.float32(0.1),
                          crossfade_seconds=np.float32(0.02), search_seconds=np.float32(0.01))
    b = RealtimeConverter(tiny_converter, sample_rate=48000, **SMALL)
    assert a.geometry == b.geometry and a.latency_samples == b.latency_samples == 4800 + 960 + 480
    assert RealtimeConverter(tiny_converter, block_seconds=np.int64(1)).block_size == 48000


@pytest.mark.parametrize("kwargs,suggested", [
    (dict(block_seconds=0.004, crossfade_seconds=0.01), ["0.01"]),
    (dict(crossfade_seconds=0.005), ["0.01"]),
    (dict(search_seconds=-0.005), ["0"]),
    (dict(sample_rate=22050, block_seconds=0.01, crossfade_seconds=0.02), ["0.02"]),
    (dict(sample_rate=22050, block_seconds=0.255), ["0.24", "0.26"]),
    (dict(sample_rate=11025, crossfade_seconds=0.02), ["0.04"]),
    (dict(block_seconds=0.255), ["0.25", "0.26"]),
])
def test_a_refused_duration_names_only_durations_that_are_accepted(tiny_converter, kwargs: dict, suggested: list[str]) -> None:
    """The values an error suggests are valid ones: each, put in its place, is accepted (was: "use 0
    or 0.01" for a block of 4 ms, "use 0 or -0.01" for a search of -5 ms, "use 0.26 or 0.25" at
    22050 Hz where 0.25 is refused too)."""
    name = next(k for k in kwargs if k.endswith("_seconds"))
    with pytest.raises(ParameterError) as info:
        RealtimeConverter(tiny_converter, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}=") and message.endswith("use " + " or ".join(suggested)), message
    for value in suggested:
        RealtimeConverter(tiny_converter, **{**kwargs, name: float(value)})


@pytest.mark.parametrize("value", ["no", "false", 0, None])
def test_whole_blocks_takes_only_a_bool(tiny_converter, value) -> None:
    """A setting read from text or JSON ("false") was taken as true: one block less latency and
    every push refused unless a whole number of blocks."""
    with pytest.raises(ParameterError, match=f"whole_blocks must be True or False, got {value!r}"):
        RealtimeConverter(tiny_converter, whole_blocks=value)
    assert RealtimeConverter(tiny_converter, whole_blocks=np.bool_(True)).whole_blocks is True


def test_samples_beyond_float32s_range_are_named_as_such(tiny_converter) -> None:
    """A finite float64 sample too large for float32 was reported as "NaN or infinite" (after a
    RuntimeWarning from the cast); the push is refused with the peak named, the stream unchanged."""
    rt = RealtimeConverter(tiny_converter, **SMALL)
    x = np.zeros(480)
    x[7] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AudioError, match=r"beyond float32's range \(peak 1e\+300\)"):
            rt.push(x)
    assert rt._pending.shape == (0,) and rt.push(np.zeros(480)).shape == (480,)


def test_samples_beyond_any_pcm_full_scale_are_refused_not_blamed_on_the_f0_backend(tiny_converter) -> None:
    """Finite samples around 1e17 and above overflow the models' float32 sums: RMVPE gave NaN and
    the push failed with "F0 backend 'rmvpe' gave NaN ... F0 values"; int32 PCM cast without
    scaling (up to 2**31) still converts, with the once-a-stream warning."""
    rt = RealtimeConverter(tiny_converter, **SMALL)
    x = np.sin(np.arange(480 * 20) / 7.0)
    with pytest.raises(AudioError, match=r"peaks at 1e\+20, beyond any PCM format's full scale") as caught:
        rt.push(x * 1e20)
    assert "F0" not in str(caught.value)
    assert rt._pending.shape == (0,)
    with pytest.warns(RuntimeWarning, match="far outside"):
        y = rt.push(x * 2.0**31)
    assert y.shape == (480 * 20,) and np.isfinite(y).all()


def test_integer_pcm_cast_without_scaling_is_warned_once_a_stream(tiny_converter) -> None:
    """int16 PCM cast to float without /32768 goes into the models at thousands of times the
    level they were trained on; there is no peak guard on this path, so the stream warns once
    (and not for audio in [-1, 1], nor again for the next such block)."""
    rt = RealtimeConverter(tiny_converter, sample_rate=16000, **SMALL)
    x = _speechlike(0.3, 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt.push(x)
    pcm = (x * 32767).astype(np.int16).astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"peaks at 1\d{4}, far outside.*32768 for int16") as caught:
        rt.push(pcm)
        rt.push(pcm)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_channels_each_refusal_says_what_one_converter_per_channel_costs(tiny_converter) -> None:
    """The refusal offers mixing down first; per-channel converters are offered with their cost
    (independent SOLA joins), not as an equivalent."""
    with pytest.raises(ParameterError, match=r"mix the channels down.*drift apart by up to search_seconds"):
        RealtimeConverter(tiny_converter, channels="each")


def test_a_whole_float_sample_rate_is_a_sample_rate(tiny_converter) -> None:
    """44100.0 (a rate computed or read as a float) is taken as 44100, as the offline API takes it."""
    rt = RealtimeConverter(tiny_converter, sample_rate=44100.0, **SMALL)
    assert rt.sample_rate == 44100 and isinstance(rt.sample_rate, int)
    assert RealtimeConverter(tiny_converter, sample_rate=np.float64(22050), **SMALL).sample_rate == 22050
    for bad in (44100.5, float("nan"), float("inf"), True):
        with pytest.raises(ParameterError, match="whole number of Hz"):
            RealtimeConverter(tiny_converter, sample_rate=bad, **SMALL)


def test_a_ragged_list_is_refused_as_audio(tiny_converter) -> None:
    """A ragged list cannot be samples: an AudioError (which a caller catches for bad input), not NumPy's ValueError."""
    rt = RealtimeConverter(tiny_converter, sample_rate=16000, **SMALL)
    with pytest.raises(AudioError, match="not an array of samples"):
        rt.push([[0.1, 0.2], [0.3]])

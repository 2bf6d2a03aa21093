"""An application's view of the Python API: behaviour docs/api.md and docs/realtime.md state.

* the model cache: ``rvcfast.cache.clear()`` lets the base models go once no Converter holds
  them, and leaves a live Converter working (docs/api.md, "Threads, memory and the model cache");
* a realtime push refused for its input changes nothing in the stream (docs/realtime.md);
* ``rvcfast.Cancelled`` is not caught by ``except rvcfast.RvcfastError`` (docs/api.md, "Errors");
* ``convert`` takes CPU torch tensors as the equal NumPy arrays, and ``channels="each"``
  gives ``[samples, channels]`` audio (docs/api.md, "Converting").
"""

from __future__ import annotations

import gc
import re
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (  # noqa: F401
    MODEL_SR,
    build_tiny_models,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast
from rvcfast import cache
from rvcfast.realtime import RealtimeConverter

# ------------------------------------------------------------------ the model cache


def test_clearing_the_cache_frees_the_base_models_once_no_converter_holds_them(tmp_path: Path) -> None:
    models = build_tiny_models(tmp_path / "models")  # files of their own: no other test holds these models
    conv = models.converter()
    assert conv.convert(tone(0.3), 16000, noise=False).ok
    encoder = weakref.ref(conv.encoder)
    vocoder = weakref.ref(conv.vocoder)
    del conv
    gc.collect()
    assert vocoder() is None  # the voice model belongs to its Converter
    assert encoder() is not None  # the cache keeps the shared base model
    cache.clear()
    gc.collect()
    assert encoder() is None


def test_clearing_the_cache_leaves_a_live_converter_working_and_the_next_load_loads_again(tmp_path: Path) -> None:
    models = build_tiny_models(tmp_path / "models")
    conv = models.converter()
    x = tone(0.4)
    before = conv.convert(x, 16000, noise=False).audio
    cache.clear()
    np.testing.assert_array_equal(conv.convert(x, 16000, noise=False).audio, before)
    again = models.converter()
    assert cache.load_count("encoder") == 1 and cache.load_count("rmvpe") == 1  # counted since clear()
    assert again.encoder is not conv.encoder  # a second copy while the first Converter lives
    np.testing.assert_array_equal(again.convert(x, 16000, noise=False).audio, before)


# ------------------------------------------------------------------ realtime


def _stream(rt: RealtimeConverter, x: np.ndarray, bad: list[np.ndarray]) -> np.ndarray:
    """``x`` pushed in two halves with the ``bad`` pushes (each refused) in between, then flushed."""
    half = rt.block_size * 3 // 2 if not rt.whole_blocks else rt.block_size * 2
    out = [rt.push(x[:half])]
    for b in bad:
        with pytest.raises(rvcfast.RvcfastError):
            rt.push(b)
    out += [rt.push(x[half:]), rt.flush()]
    return np.concatenate(out)


@pytest.mark.parametrize("whole_blocks", [False, True])
def test_a_refused_push_leaves_the_stream_as_it_was(tiny_converter: rvcfast.Converter, whole_blocks: bool) -> None:
    rt = RealtimeConverter(tiny_converter, sample_rate=16000, block_seconds=0.1, context_seconds=0.2, seed=1,
                           whole_blocks=whole_blocks)
    x = tone(rt.block_size * 5 / 16000).astype(np.float32)
    clean = _stream(rt, x, [])
    bad = [
        np.full(rt.block_size, np.nan, dtype=np.float32),
        np.zeros((rt.block_size, 2), dtype=np.float32),
        np.zeros(rt.block_size, dtype=np.int16),
    ]
    if whole_blocks:
        bad.append(np.zeros(rt.block_size // 2, dtype=np.float32))
    np.testing.assert_array_equal(_stream(rt, x, bad), clean)


# ------------------------------------------------------------------ errors


def test_cancelled_is_not_caught_as_an_rvcfast_error(tiny_converter: rvcfast.Converter) -> None:
    engine = tiny_converter.engine
    stop = threading.Event()
    stop.set()
    with pytest.raises(rvcfast.Cancelled):
        try:
            engine.run([engine.prepare(tone(0.3), 16000)], {"noise": False}, cancel=stop)
        except rvcfast.RvcfastError:  # what a handler skipping one bad input catches
            pytest.fail("a cancelled run was caught as an RvcfastError")


# ------------------------------------------------------------------ arrays in


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_a_cpu_tensor_converts_as_the_equal_array(tiny_converter: rvcfast.Converter, dtype: type) -> None:
    x = tone(0.4, rate=22050)
    arr = (x * 32767).astype(dtype) if dtype is np.int16 else x.astype(dtype)
    expected = tiny_converter.convert(arr, 22050, seed=3).audio
    got = tiny_converter.convert(torch.from_numpy(arr), 22050, seed=3)
    assert got.audio.dtype == np.float32 and got.sample_rate == MODEL_SR
    np.testing.assert_array_equal(got.audio, expected)


def test_channels_each_gives_samples_by_channels(tiny_converter: rvcfast.Converter) -> None:
    stereo = tone(0.5, channels=2)
    res = tiny_converter.convert(stereo, 16000, channels="each", noise=False)
    mono = tiny_converter.convert(stereo, 16000, noise=False)
    assert res.audio.ndim == 2 and res.audio.shape[1] == 2
    assert res.audio.shape[0] == mono.audio.shape[0] == res.frames
    assert res.duration == pytest.approx(mono.duration)


# ------------------------------------------------------------------ what an application hands over


@pytest.mark.parametrize("make", ["bfloat16", "float16", "requires_grad"])
def test_a_tensor_in_any_precision_or_with_grad_converts_as_its_values(tiny_converter: rvcfast.Converter, make: str) -> None:
    # before: bfloat16 raised torch's "Got unsupported ScalarType BFloat16", a tensor needing grad
    # "Can't call numpy() on Tensor that requires grad" (the batch already took both)
    x = torch.from_numpy(tone(0.5).astype(np.float32))
    t = x.to(getattr(torch, make)) if make != "requires_grad" else x.clone().requires_grad_()
    expected = tiny_converter.convert(t.detach().double().numpy(), 16000, noise=False).audio
    np.testing.assert_array_equal(tiny_converter.convert(t, 16000, noise=False).audio, expected)


@pytest.mark.parametrize("source", [None, 3.5, {"samples": [0.1]}, object()], ids=["None", "number", "dict", "object"])
def test_something_that_is_not_audio_is_named_as_such(tiny_converter: rvcfast.Converter, source: object) -> None:
    # before: None gave "sample_rate is required for array input", or "array dtype object is not a number type"
    with pytest.raises(rvcfast.errors.ParameterError, match=rf"expected a file path, an array .* got {type(source).__name__}"):
        tiny_converter.convert(source, 16000)


@pytest.mark.parametrize("rate", ["16000", b"16000", True])
def test_a_sample_rate_that_is_text_or_a_bool_is_refused(tiny_converter: rvcfast.Converter, rate: object) -> None:
    # before: "16000" was accepted and True read as 1 Hz ("sample rate 1 Hz is outside ...")
    with pytest.raises(rvcfast.errors.ParameterError, match=r"sample_rate must be a whole number of Hz, got"):
        tiny_converter.convert(tone(0.3), rate)
    assert tiny_converter.convert(tone(0.3), np.int64(16000), noise=False).ok  # a NumPy integer is a whole number


def test_a_realtime_stream_takes_a_numpy_integer_rate(tiny_converter: rvcfast.Converter) -> None:
    # before: np.int64(48000) was refused as "not a whole number of Hz"
    a = RealtimeConverter(tiny_converter, np.int64(48000), noise=False)
    b = RealtimeConverter(tiny_converter, 48000, noise=False)
    assert a.sample_rate == 48000 and type(a.sample_rate) is int
    x = tone(0.5, rate=48000).astype(np.float32)
    np.testing.assert_array_equal(a.push(x), b.push(x))


@pytest.mark.parametrize("value", ["8", True, float("nan"), 0, float("inf")])
def test_batch_seconds_that_is_not_a_positive_number_is_a_parameter_error(tiny_models, value: object) -> None:
    # before: text raised "'>' not supported between 'str' and 'int'", after the models were loaded
    with pytest.raises(rvcfast.errors.ParameterError, match=r"batch_seconds must be a positive number of seconds, got"):
        tiny_models.converter(batch_seconds=value)


@pytest.mark.parametrize(("dtype", "message"), [
    ("auto", "dtype='auto' chooses the precision models are loaded in"),
    ("float64", "dtype must be 'auto' or one of"),
    (torch.float64, "dtype must be torch.float32, torch.bfloat16 or torch.float16"),
    (32, "dtype must be torch.float32"),
])
def test_a_converter_of_built_modules_checks_its_dtype(tiny_converter: rvcfast.Converter, dtype: object, message: str) -> None:
    # before: dtype="auto" was accepted and the first conversion failed with torch's
    # "to() received an invalid combination of arguments"
    e = tiny_converter.engine
    with pytest.raises(rvcfast.errors.ParameterError, match=re.escape(message)):
        rvcfast.Converter(e.vocoder, e.encoder, e.f0_extractor, e.index, device="cpu", dtype=dtype)  # type: ignore[arg-type]


def test_a_converter_of_built_modules_takes_a_dtype_name(tiny_converter: rvcfast.Converter) -> None:
    e = tiny_converter.engine
    named = rvcfast.Converter(e.vocoder, e.encoder, e.f0_extractor, e.index, device="cpu", dtype="float32", batch_seconds=1.0)
    assert named.dtype is torch.float32
    x = tone(0.5)
    np.testing.assert_array_equal(named.convert(x, sample_rate=16000, seed=0).audio, tiny_converter.convert(x, sample_rate=16000, seed=0).audio)


def test_engine_run_refuses_text_batch_seconds(tiny_converter: rvcfast.Converter) -> None:
    engine = tiny_converter.engine
    prep = engine.prepare(tone(0.3), 16000)
    with pytest.raises(rvcfast.errors.ParameterError, match=r"batch_seconds must be 0 or more seconds, got '8'"):
        engine.run([prep], engine.params(), batch_seconds="8")


def test_on_error_stop_raises_the_failing_files_own_error(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    # before: a plain RvcfastError: `except AudioError` did not catch an input that cannot be used
    good = (tone(0.5), 16000)
    bad = (np.full(8000, np.nan), 16000)
    with pytest.raises(rvcfast.errors.AudioError, match=r"array\[1\]: audio contains 8000 NaN or Inf samples"):
        tiny_converter.convert_batch([good, bad], tmp_path, on_error="stop", noise=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["array_0000.wav"]  # the file before it is written


def test_a_voice_params_error_names_the_voice(tiny_models, tmp_path: Path) -> None:
    # before: "pitch must be within -48..48 semitones, got 99" without saying which voice
    a, b = tiny_models.converter(), tiny_models.converter()
    with pytest.raises(rvcfast.errors.ParameterError, match=r"^voice 'b': pitch must be within"):
        rvcfast.convert_voices({"a": a, "b": b}, [(tone(0.3), 16000)], tmp_path, voice_params=[{}, {"pitch": 99}])
    assert not any(tmp_path.iterdir())

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

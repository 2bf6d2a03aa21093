"""Engine.stream: pieces in order, concatenation equal to Engine.run where the stream can reproduce it."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.engine import Engine
from rvcfast.f0 import rmvpe
from rvcfast.pipeline import finish
from rvcfast.segment import SegmentConfig
from rvcfast.streaming import StreamFinisher


@pytest.fixture(scope="module")
def engine(tiny_converter: rvcfast.Converter) -> Engine:
    return tiny_converter.engine


#: 3 s segments (split over 4 s, near every 3 s; the default 1 s of context). What the stream
#: does at a join does not depend on where the joins fall, and with these a 7 s input has three
#: segments, where the default ones (split over 41 s, near every 38 s) need 45 s for two.
SHORT_SEGMENTS = SegmentConfig(x_query=1, x_center=3, x_max=4)


@pytest.fixture(scope="module")
def long_engine(engine: Engine) -> Engine:
    """The tiny engine's models (nothing loaded) with :data:`SHORT_SEGMENTS`."""
    return Engine(engine.vocoder, engine.encoder, engine.f0_extractor, engine.index, device=engine.device,
                  segment_config=SHORT_SEGMENTS)


@pytest.fixture(scope="module")
def long_prep(long_engine: Engine):
    prep = long_engine.prepare(tone(7.0, freq=180.0), 16000)
    assert len(prep.segments) >= 3, "the input must be split into several segments"
    return prep


def test_one_segment_is_one_piece_finished_like_run(engine: Engine) -> None:
    # one piece, finished by the whole-file steps: equal even with the RMS mix on
    q = engine.params(noise=False, pitch=2, rms_mix_rate=0.4, output_sample_rate=44100)
    prep = engine.prepare(tone(3.0), 16000)
    timings: dict[str, float] = {}
    pieces = list(engine.stream(prep, q, timings=timings))
    assert len(pieces) == 1
    np.testing.assert_array_equal(pieces[0], engine.run([prep], q)[0].audio)
    assert {"f0", "features", "synth", "post"} <= set(timings)


def test_each_pieces_stages_are_timed_when_it_arrives(long_engine: Engine, long_prep) -> None:
    """The server sends a stream's timings header after its first piece: they were added only once
    the generator had ended, so the header of a one-segment input raced with that (and usually lost)."""
    timings: dict[str, float] = {}
    pieces = long_engine.stream(long_prep, long_engine.params(noise=False), timings=timings)
    next(pieces)
    first = dict(timings)
    assert {"f0", "features", "synth", "post"} <= set(first)
    rest = list(pieces)
    assert len(rest) == len(long_prep.segments) - 1
    assert all(timings[k] >= first[k] for k in first) and timings["synth"] > first["synth"]
    # the totals are those of a stream read to its end in one go
    whole: dict[str, float] = {}
    list(long_engine.stream(long_prep, long_engine.params(noise=False), timings=whole))
    assert set(whole) == set(timings)


@pytest.mark.parametrize("rate", [None, 44100])
def test_pieces_concatenate_to_the_run_output(long_engine: Engine, long_prep, rate) -> None:
    engine = long_engine
    q = engine.params(noise=False, output_sample_rate=rate)
    expected = engine.run([long_prep], q)[0].audio
    assert np.abs(expected).max() < 0.99  # the peak guard does not act: the stream reproduces it exactly
    pieces = list(engine.stream(long_prep, q))
    assert len(pieces) == len(long_prep.segments)
    # in order: each piece is the next stretch of the one-shot output (streamed soxr resampling is exact)
    pos = 0
    for piece in pieces:
        np.testing.assert_array_equal(piece, expected[pos : pos + piece.shape[0]])
        pos += piece.shape[0]
    assert pos == expected.shape[0]


def test_raw_pieces_finish_to_the_run_output(long_engine: Engine, long_prep) -> None:
    engine = long_engine
    q = engine.params(noise=True, seed=7, pitch=-3)
    raw = list(engine.stream(long_prep, q, raw=True))
    audio, rate = finish(np.concatenate(raw), long_prep, engine.sample_rate, q)
    np.testing.assert_array_equal(audio, engine.run([long_prep], q)[0].audio)
    assert rate == engine.sample_rate


def test_running_peak_guard_never_exceeds_the_limit() -> None:
    # what the stream cannot reproduce: a loud later piece lowers the level from there on
    prep = type("P", (), {"audio": np.zeros(16000)})()
    fin = StreamFinisher(prep, 16000, rvcfast.ConversionParams())  # type: ignore[arg-type]
    quiet = np.full(100, 0.5, np.float32)
    loud = np.full(100, 2.0, np.float32)
    a, b, c = fin.push(quiet.copy()), fin.push(loud.copy()), fin.push(quiet.copy(), last=True)
    np.testing.assert_allclose(a, 0.5)  # already sent at full level
    np.testing.assert_allclose(b, 0.99, rtol=1e-6)
    np.testing.assert_allclose(c, 0.5 * 0.99 / 2.0, rtol=1e-6)


def test_stream_raises_for_a_bad_f0_track(engine: Engine) -> None:
    prep = engine.prepare(tone(1.0), 16000, name="clip")
    with pytest.raises(RuntimeError, match="no track"):
        next(engine.stream(prep, engine.params(), f0=RuntimeError("no track")))


def test_pauses_split_a_long_inputs_f0_into_turns_and_change_no_piece(
    long_engine: Engine, long_prep, monkeypatch
) -> None:
    """An input over ``AUTO_SINGLE_PASS_FRAMES`` F0 frames runs RMVPE in ``AUTO_CHUNK_FRAMES``-frame
    chunks, one per turn, a None between them; the pieces are those of a stream without pauses.

    With the default sizes (8192 / 4096 frames) that needs an input over 82 s (checked below
    without running the network); the turns do not depend on the sizes, so they are lowered
    to 512 / 256 frames: the 7 s input (9 s padded, three segments) runs in four chunks, a
    3 s one (5 s padded) in one pass.
    """
    engine = long_engine
    ext = engine.f0_extractor
    assert len(ext.extract_blocks(np.zeros(83 * 16000))) >= 3  # the defaults: over 82 s, 41 s chunks
    assert len(ext.extract_blocks(np.zeros(81 * 16000))) == 1
    monkeypatch.setattr(rmvpe, "AUTO_SINGLE_PASS_FRAMES", 512)
    monkeypatch.setattr(rmvpe, "AUTO_CHUNK_FRAMES", 256)
    prep = long_prep
    q = engine.params(noise=False)
    plain = list(engine.stream(prep, q))
    passes: list[int] = []
    model = engine.f0_extractor.model
    real_run = model._run

    def counted(mel):
        passes.append(mel.shape[-1])
        return real_run(mel)

    monkeypatch.setattr(model, "_run", counted)
    timings: dict[str, float] = {}
    stream = engine.stream(prep, q, pauses=True, timings=timings)
    items = []
    for item in stream:
        items.append(item)
        if item is None:
            assert len(passes) == items.count(None)  # one network pass per turn, the F0 first
    n_blocks = len(engine.f0_extractor.extract_blocks(prep.padded))
    assert n_blocks >= 3 and items[: n_blocks - 1] == [None] * (n_blocks - 1)
    pieces = items[n_blocks - 1 :]
    assert all(piece is not None for piece in pieces) and len(pieces) == len(plain)
    for a, b in zip(pieces, plain):
        np.testing.assert_array_equal(a, b)
    assert "f0" in timings
    # a short input has one block: no pause at all
    short = list(engine.stream(engine.prepare(tone(3.0), 16000), q, pauses=True))
    assert len(short) == 1 and short[0] is not None

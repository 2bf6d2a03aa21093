"""The engine as a front end calls it: each input's outcome is its own, and its error names it.

Every front end (the batch, the server's scheduler, the cluster runner) calls ``Engine.run``
and ``Engine.stream`` directly. These tests call them the same way with one input that goes
wrong in the middle of a shared step (a plugin model calling ``sys.exit``, giving too few or
non-finite samples), odd arguments (``params=None``, an F0 list with a gap) and cancelling,
and check that the other inputs come out as they do alone and the bad one's Result says why.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.engine import Engine
from rvcfast.errors import Cancelled, ParameterError, RvcfastError
from rvcfast.segment import SegmentConfig

#: 3 s segments (see test_engine_stream.py): a 7 s input has three, cheaply.
SHORT_SEGMENTS = SegmentConfig(x_query=1, x_center=3, x_max=4)


@pytest.fixture(scope="module")
def engine(tiny_converter: rvcfast.Converter) -> Engine:
    return tiny_converter.engine


@pytest.fixture(scope="module")
def long_engine(engine: Engine) -> Engine:
    return Engine(engine.vocoder, engine.encoder, engine.f0_extractor, engine.index, device=engine.device,
                  segment_config=SHORT_SEGMENTS)


def _preps(engine: Engine, *names: str) -> list[Any]:
    return [engine.prepare(tone(0.8 + 0.3 * k, freq=150.0 + 40 * k), 16000, name=n) for k, n in enumerate(names)]


def _hooked(engine: Engine, bad: Any, change: Callable[[np.ndarray], np.ndarray | None]) -> Engine:
    """``engine`` whose model calls give ``change(piece)`` for every segment of the input ``bad``
    (``change`` may also raise or exit); the other segments are left as they are."""
    other = copy.copy(engine)
    real = engine.synthesize_segments

    def synthesize_segments(segs: Any, params: Any, timer: Any) -> list[np.ndarray]:
        pieces = real(segs, params, timer)
        return [change(p) if np.shares_memory(s.audio, bad.padded) else p for s, p in zip(segs, pieces)]

    other.synthesize_segments = synthesize_segments  # type: ignore[method-assign]
    return other


def _alone(engine: Engine, preps: list[Any], params: Any) -> list[np.ndarray]:
    return [engine.run([p], params)[0].audio for p in preps]


def _exit(piece: np.ndarray) -> np.ndarray:
    sys.exit(3)


def _short(piece: np.ndarray) -> np.ndarray:
    return piece[: piece.shape[0] // 2]


def _nan(piece: np.ndarray) -> np.ndarray:
    out = piece.copy()
    out[out.shape[0] // 2] = np.nan
    return out


@pytest.mark.parametrize(
    "change, said",
    [(_exit, "called sys.exit(3)"), (_short, "output samples, expected"), (_nan, "NaN or infinite output samples")],
    ids=["sys-exit", "too-few-samples", "nan"],
)
def test_a_bad_model_output_for_one_input_fails_only_that_input(engine: Engine, change: Any, said: str) -> None:
    """Before: a plugin model's ``sys.exit()`` ended the whole run (the batch, the command); a piece
    shorter than its place left uninitialised memory in the output (peak-limited to a loud noise),
    and NaN samples came back as a successful Result. Now that input fails, naming itself."""
    params = engine.params(seed=5)
    preps = _preps(engine, "a.wav", "b.wav", "c.wav")
    alone = _alone(engine, preps, params)
    results = _hooked(engine, preps[1], change).run(preps, params)
    assert results[1].error is not None and results[1].error.startswith("b.wav: ") and said in results[1].error
    assert isinstance(results[1].exception, RvcfastError) and results[1].audio.size == 0
    for k in (0, 2):
        assert results[k].error is None
        np.testing.assert_allclose(results[k].audio, alone[k], rtol=0, atol=1e-5)
    with pytest.raises(RvcfastError, match=said.replace("(", r"\(").replace(")", r"\)")):
        list(_hooked(engine, preps[1], change).stream(preps[1], params))


def test_a_segment_of_an_input_that_failed_is_not_run_again_alone(long_engine: Engine) -> None:
    """After a shared model call failed, each of its segments is run alone to find the bad input;
    the further segments of an input that failed are skipped, not computed for nothing."""
    params = long_engine.params(seed=2)
    bad = long_engine.prepare(tone(7.0), 16000, name="bad.wav")
    good = long_engine.prepare(tone(2.0, freq=300.0), 16000, name="good.wav")
    calls: list[tuple[bool, ...]] = []
    other = copy.copy(long_engine)

    def synthesize_segments(segs: Any, q: Any, timer: Any) -> list[np.ndarray]:
        mine = tuple(np.shares_memory(s.audio, bad.padded) for s in segs)
        calls.append(mine)
        if any(mine):
            raise RuntimeError("plugin failure")
        return long_engine.synthesize_segments(segs, q, timer)

    other.synthesize_segments = synthesize_segments  # type: ignore[method-assign]
    results = other.run([bad, good], params, batch_seconds=60)
    assert "plugin failure" in (results[0].error or "") and results[1].ok
    assert calls[0].count(True) == len(bad.segments) > 1  # one shared call of every segment
    alone = [c for c in calls[1:] if len(c) == 1]
    assert alone.count((True,)) == 1, calls  # the first of bad's segments fails it: the others are skipped


def test_a_none_in_the_f0_list_is_extracted_as_stream_does(engine: Engine) -> None:
    """Before: ``run(f0=[track, None])`` failed the second input with "no F0 track" (``stream``'s
    ``f0=None`` means the engine extracts it). Now ``None`` is extracted for that input alone."""
    params = engine.params(seed=1)
    preps = _preps(engine, "given.wav", "left.wav")
    track = engine.extract_f0([preps[0]], params)[0]
    asked: list[int] = []
    other = copy.copy(engine)
    other.extract_f0 = lambda ps, q: (asked.extend(p.padded.shape[0] for p in ps), engine.extract_f0(ps, q))[1]  # type: ignore[method-assign]
    results = other.run(preps, params, f0=[track, None])
    assert [r.error for r in results] == [None, None]
    assert asked == [preps[1].padded.shape[0]]
    for r, a in zip(results, _alone(engine, preps, params)):
        np.testing.assert_allclose(r.audio, a, rtol=0, atol=1e-5)


def test_channels_of_an_input_whose_given_f0_failed_are_not_extracted(engine: Engine) -> None:
    """A front end that computed the F0 itself hands the engine the exception it got; a multi-channel
    input's further channels were still extracted (on the model worker) only to be thrown away."""
    params = engine.params(channels="each")
    prep = engine.prepare(tone(1.0, channels=2), 16000, name="stereo.wav", params=params)
    other = copy.copy(engine)
    other.extract_f0 = lambda *a: pytest.fail("a channel of a failed input was extracted")  # type: ignore[method-assign]
    res = other.run([prep], params, f0=[ValueError("the pool's tracker broke")])[0]
    assert res.error is not None and res.error.startswith("stereo.wav: ") and "the pool's tracker broke" in res.error
    assert isinstance(res.exception, ValueError)


def test_params_none_means_the_defaults_and_a_bad_params_argument_is_named(engine: Engine) -> None:
    """Before: ``run(preps, None)`` raised ``TypeError: 'NoneType' object is not iterable``
    (``convert`` and ``stream`` take ``None`` for the defaults), and ``run(preps, 5)`` a TypeError too."""
    prep = _preps(engine, "x.wav")[0]
    default = engine.run([prep], engine.params(noise=False))[0]
    res = engine.run([prep], None)
    assert res[0].ok and res[0].audio.shape == default.audio.shape
    with pytest.raises(ParameterError, match="params as one ConversionParams"):
        engine.run([prep], 5)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="params as one ConversionParams"):
        engine.run([prep], "pitch=2")  # type: ignore[arg-type]


def test_a_failed_results_sample_rate_is_the_output_rate_asked_for(engine: Engine) -> None:
    """``Result.sample_rate`` is "the model's, or output_sample_rate": a failed input's said the model's."""
    tiny = engine.prepare(np.full(100, 0.1), 16000, name="tiny.wav")
    res = engine.run([tiny], engine.params(output_sample_rate=22050))[0]
    assert res.error is not None and res.sample_rate == 22050


def test_an_error_names_an_input_whose_name_is_inside_the_message(engine: Engine) -> None:
    """Before: the input's name was left out whenever it occurred anywhere in the message (a
    request named ``"a"``: every message with an "a" in it)."""
    prep = _preps(engine, "a")[0]
    res = _hooked(engine, prep, lambda p: (_ for _ in ()).throw(RvcfastError("features are bad"))).run([prep], engine.params())[0]
    assert res.error == "a: features are bad"


class _BlockTracker:
    """A pure-numpy F0 tracker whose work comes in three blocks (as RMVPE's does for long inputs)."""

    name, sample_rate, hop_length = "blocks", 16000, 160

    def __init__(self, on_block: Callable[[int], None] = lambda k: None) -> None:
        self.on_block = on_block
        self.blocks_run: list[int] = []

    def extract(self, audio: np.ndarray) -> np.ndarray:
        return np.full(audio.shape[0] // 160 + 1, 180.0)

    def extract_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        return [self.extract(a) for a in audios]

    def extract_blocks(self, audio: np.ndarray) -> list[Callable[[], np.ndarray]]:
        track = self.extract(audio)
        parts = np.array_split(track, 3)

        def step(k: int) -> np.ndarray:
            self.blocks_run.append(k)
            self.on_block(k)
            return parts[k]

        return [lambda k=k: step(k) for k in range(3)]


def test_cancel_is_looked_at_between_f0_blocks_without_on_progress(engine: Engine) -> None:
    """Before: only a run given ``on_progress`` tracked a long input's F0 block by block, so a
    cancelled run (a batch stopped, a client gone) without one waited for the whole F0 track."""
    stop = threading.Event()
    tracker = _BlockTracker(on_block=lambda k: stop.set())
    prep = _preps(engine, "long.wav")[0]
    with pytest.raises(Cancelled):
        engine.with_f0(tracker).run([prep], engine.params(), cancel=stop)
    assert tracker.blocks_run == [0]
    # not cancelled: the same output as the batched call, and no progress calls were needed
    plain = engine.with_f0(_BlockTracker()).run([prep], engine.params(seed=3))[0]
    stepped = engine.with_f0(_BlockTracker()).run([prep], engine.params(seed=3), cancel=threading.Event())[0]
    assert plain.ok and np.array_equal(plain.audio, stepped.audio)


def test_a_block_trackers_sys_exit_in_a_stream_is_an_error_not_an_exit(engine: Engine) -> None:
    def leave(k: int) -> None:
        if k == 1:
            sys.exit(4)

    prep = _preps(engine, "s.wav")[0]
    with pytest.raises(RvcfastError, match=r"called sys.exit\(4\)"):
        list(engine.with_f0(_BlockTracker(on_block=leave)).stream(prep, engine.params(), pauses=True))


def test_per_input_settings_in_one_run_equal_each_alone(engine: Engine) -> None:
    """Speaker, noise, keep_length, output rate, RMS mix, channels and pitch differ per input; each
    seeded output equals its own run alone, and progress ends at 1.0 once per input."""
    settings = [
        engine.params(seed=1, speaker=1),
        engine.params(seed=2, noise=False, pitch=3),
        engine.params(seed=3, keep_length=True, rms_mix_rate=0.5, output_sample_rate=22050),
        engine.params(seed=4, channels="each", protect=0.5, index_rate=0.2),
    ]
    sources = [tone(1.0, freq=200.0), tone(0.7, freq=300.0), tone(1.3, freq=150.0), tone(0.9, freq=250.0, channels=2)]
    preps = [engine.prepare(s, 16000, name=f"in{k}.wav", params=q) for k, (s, q) in enumerate(zip(sources, settings))]
    seen: dict[int, list[float]] = {}
    together = engine.run(preps, settings, on_progress=lambda k, f: seen.setdefault(k, []).append(f))
    for k, (p, q) in enumerate(zip(preps, settings)):
        alone = engine.run([p], q)[0]
        assert together[k].ok and together[k].sample_rate == alone.sample_rate == q.output_rate(engine.sample_rate)
        np.testing.assert_allclose(together[k].audio, alone.audio, rtol=0, atol=1e-5)
        fractions = seen[k]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions.count(1.0) == 1
    assert together[3].audio.ndim == 2 and together[3].audio.shape[1] == 2
    assert abs(together[2].audio.shape[0] - 1.3 * 22050) < 22050 * 0.01  # keep_length: the input's length


def test_run_refuses_a_channel_layout_the_input_was_not_prepared_in(engine: Engine) -> None:
    """channels is a stage-1 setting, like formant: prepared with 'each' and run with 'mix' (or the
    reverse), the output silently had the prepared layout."""
    from rvcfast.params import ConversionParams
    from rvcfast.pipeline import prepare_input

    x = tone(0.5, 16000)
    stereo = np.stack([x, 0.5 * x], axis=1)
    mix, each = ConversionParams(channels="mix"), ConversionParams(channels="each")
    kept = prepare_input(stereo, 16000, name="st", params=each)
    mixed = prepare_input(stereo, 16000, name="st", params=mix)
    with pytest.raises(ParameterError, match=r"st: channels='mix' asked for.*prepared channel by channel"):
        engine.run([kept], mix)
    with pytest.raises(ParameterError, match=r"st: channels='each' asked for.*2 channels were mixed"):
        engine.run([mixed], each)
    with pytest.raises(ParameterError, match=r"st: channels='each' asked for"):
        next(iter(engine.stream(mixed, each)))
    assert engine.run([kept], each)[0].audio.shape[1] == 2 and engine.run([mixed], mix)[0].audio.ndim == 1
    mono = prepare_input(x, 16000, name="mono", params=mix)  # one channel: either setting gives the same
    assert engine.run([mono], each)[0].ok


def test_a_channel_taken_apart_from_an_input_prepared_channel_by_channel_runs_alone(engine: Engine) -> None:
    """A server job converts an 'each' input's channels one after the other, each a mono prep of
    its own with channels='each' settings: not an input whose channels were mixed."""
    import dataclasses

    from rvcfast.params import ConversionParams
    from rvcfast.pipeline import prepare_input

    x = tone(0.5, 16000)
    each = ConversionParams(channels="each")
    kept = prepare_input(np.stack([x, 0.5 * x], axis=1), 16000, name="st", params=each)
    for channel in (dataclasses.replace(kept, more_channels=()), *kept.more_channels):
        assert engine.run([channel], each)[0].ok


def test_cancel_is_looked_at_between_the_inputs_assembly(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set while the first input is assembled (noise reduction and effects can take seconds), the
    run went on to assemble every other input before it stopped."""
    cancel = threading.Event()
    assembled: list[str] = []
    assemble = engine._assemble

    def then_cancel(item: Any, raise_errors: bool) -> Any:
        assembled.append(item.prep.label)
        cancel.set()
        return assemble(item, raise_errors)

    monkeypatch.setattr(engine, "_assemble", then_cancel)
    with pytest.raises(Cancelled):
        engine.run(_preps(engine, "a", "b", "c"), None, cancel=cancel)
    assert assembled == ["a"]

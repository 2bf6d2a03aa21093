"""Progress while a long input's pitch (F0) is tracked.

Before, ``Engine.run(on_progress=...)`` was first called after the first model batch: F0 ran
over the whole input first (about a fifth of the time with RMVPE), so a one-hour file's
progress line, its ETA and a server job's ``progress`` stood still for minutes. Now an
extractor with ``extract_blocks`` (RMVPE) is run block by block for inputs of several blocks,
and each block is reported: F0 is the first ``F0_PROGRESS_SHARE`` of the input's fraction.
RMVPE's block size is made small here (``chunk_frames``) so that a short tone has several.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.cli import main
from rvcfast.engine_progress import F0_PROGRESS_SHARE
from rvcfast.progress import BatchProgress

CHUNK = 1024  # RMVPE frames per block: a 30 s input (with its padding) has several
SECONDS = 30.0  # one segment of RVC's plan


class Recording:
    """An F0 extractor wrapped to log its calls in ``events`` (shared with progress calls)."""

    def __init__(self, inner: Any, events: list[tuple[Any, ...]], fail_block: int | None = None) -> None:
        self.inner, self.events, self.fail_block = inner, events, fail_block
        self.name, self.sample_rate, self.hop_length = inner.name, inner.sample_rate, inner.hop_length

    def extract(self, audio: np.ndarray) -> np.ndarray:
        self.events.append(("extract", audio.shape[0]))
        return self.inner.extract(audio)

    def extract_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        self.events.append(("extract_batch", tuple(a.shape[0] for a in audios)))
        return self.inner.extract_batch(audios)

    def extract_blocks(self, audio: np.ndarray) -> list[Any]:
        self.events.append(("extract_blocks", audio.shape[0]))
        steps = self.inner.extract_blocks(audio)

        def run(k: int) -> np.ndarray:
            if k == self.fail_block:
                raise RuntimeError("block failed")
            self.events.append(("block", audio.shape[0], k))
            return steps[k]()

        return [lambda k=k: run(k) for k in range(len(steps))]


@pytest.fixture(scope="module")
def engine(tiny_models) -> rvcfast.Engine:
    return tiny_models.converter(f0_options={"chunk_frames": CHUNK}).engine


def _recorded(engine: rvcfast.Engine, events: list[tuple[Any, ...]], **kw: Any) -> rvcfast.Engine:
    """``engine`` with a recording extractor, and its model batches logged in ``events``."""
    other = engine.with_f0(Recording(engine.f0_extractor, events, **kw))
    synth = other.synthesize_segments

    def logged(segs: Any, *args: Any) -> Any:
        events.append(("batch", len(segs)))
        return synth(segs, *args)

    other.synthesize_segments = logged  # type: ignore[method-assign]
    return other


def _blocks(engine: rvcfast.Engine, prep: Any) -> int:
    """How many F0 blocks the engine's extractor splits ``prep`` into."""
    return len(engine.f0_extractor.extract_blocks(prep.padded))


def _progress(events: list[tuple[Any, ...]]) -> Any:
    lock = threading.Lock()

    def record(k: int, fraction: float) -> None:
        with lock:
            events.append(("progress", k, fraction))

    return record


def _checked_fractions(fractions: list[float]) -> None:
    assert all(0.0 < f <= 1.0 for f in fractions)
    assert all(a <= b for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] == 1.0 and fractions.count(1.0) == 1


def test_run_reports_each_f0_block_before_the_first_model_batch(engine: rvcfast.Engine):
    prep = engine.prepare(tone(SECONDS).astype(np.float32), 16000)
    params = engine.params(seed=7)
    events: list[tuple[Any, ...]] = []
    res = _recorded(engine, events).run([prep], params, on_progress=_progress(events))[0]
    assert res.error is None
    kinds = [e[0] for e in events]
    n = kinds.count("block")
    assert n == _blocks(engine, prep) > 1 and "extract_batch" not in kinds and "extract" not in kinds
    first_batch = kinds.index("batch")
    during_f0 = [e[2] for e in events[:first_batch] if e[0] == "progress"]
    # one call after each block, before any model batch; F0 ends at its share
    assert len(during_f0) == n and kinds[: 2 * n + 1] == ["extract_blocks"] + ["block", "progress"] * n
    assert during_f0 == pytest.approx([F0_PROGRESS_SHARE * (j + 1) / n for j in range(n)])
    assert during_f0[-1] == pytest.approx(F0_PROGRESS_SHARE)
    _checked_fractions([e[2] for e in events if e[0] == "progress"])
    assert res.timings["f0"] > 0
    # the same output (and so the same F0 track) as a run without on_progress, and one through run_batch
    plain = engine.run([prep], params)[0]
    assert np.array_equal(res.audio, plain.audio)


def test_short_inputs_keep_one_batched_f0_call_and_no_progress_costs_nothing(engine: rvcfast.Engine):
    short = tone(3.0).astype(np.float32)  # one block
    preps = [engine.prepare(short, 16000, name="a"), engine.prepare(tone(SECONDS).astype(np.float32), 16000, name="long"),
             engine.prepare(short * 0.5, 16000, name="b")]
    params = engine.params(seed=3)
    events: list[tuple[Any, ...]] = []
    results = _recorded(engine, events).run(preps, params, on_progress=_progress(events))
    assert [r.error for r in results] == [None] * 3
    n_short = preps[0].padded.shape[0]
    # the two short inputs: one batched call; only the long one block by block
    assert [e for e in events if e[0] == "extract_batch"] == [("extract_batch", (n_short, n_short))]
    assert {e[1] for e in events if e[0] == "block"} == {preps[1].padded.shape[0]}
    by_input: dict[int, list[float]] = {}
    for e in events:
        if e[0] == "progress":
            by_input.setdefault(e[1], []).append(e[2])
    for k in (0, 2):  # no F0 share: their only call is after their model batch
        assert by_input[k] == [1.0]
    _checked_fractions(by_input[1])
    assert by_input[1][0] < F0_PROGRESS_SHARE
    # without on_progress: one batched call for all three, no blocks (nothing extra for anyone)
    quiet: list[tuple[Any, ...]] = []
    again = _recorded(engine, quiet).run(preps, params)
    assert [e[0] for e in quiet if e[0] != "batch"] == ["extract_batch"]
    for a, b in zip(results, again):
        assert np.array_equal(a.audio, b.audio)


def test_a_failing_f0_block_fails_only_its_input(engine: rvcfast.Engine):
    preps = [engine.prepare(tone(SECONDS).astype(np.float32), 16000, name="long"),
             engine.prepare(tone(3.0).astype(np.float32), 16000, name="short")]
    events: list[tuple[Any, ...]] = []
    results = _recorded(engine, events, fail_block=1).run(preps, engine.params(), on_progress=_progress(events))
    assert results[0].error is not None and "block failed" in results[0].error and "long" in results[0].error
    assert results[1].error is None
    n = _blocks(engine, preps[0])
    assert [e[2] for e in events if e[0] == "progress" and e[1] == 0] == pytest.approx([F0_PROGRESS_SHARE / n])
    with pytest.raises(RuntimeError, match="block failed"):
        _recorded(engine, [], fail_block=1).run(preps[:1], engine.params(), on_progress=lambda k, f: None, raise_errors=True)


def test_cancel_is_looked_at_between_f0_blocks(engine: rvcfast.Engine):
    prep = engine.prepare(tone(SECONDS).astype(np.float32), 16000)
    stop = threading.Event()
    events: list[tuple[Any, ...]] = []

    def record(k: int, fraction: float) -> None:
        events.append(("progress", k, fraction))
        stop.set()  # cancelled after the first block

    with pytest.raises(rvcfast.Cancelled):
        _recorded(engine, events).run([prep], engine.params(), cancel=stop, on_progress=record)
    assert [e[0] for e in events] == ["extract_blocks", "block", "progress"]


def test_every_channel_counts_in_the_f0_share(engine: rvcfast.Engine):
    params = engine.params(channels="each", seed=5)
    prep = engine.prepare(tone(SECONDS, channels=2).astype(np.float32), 16000, params=params)
    events: list[tuple[Any, ...]] = []
    res = _recorded(engine, events).run([prep], params, on_progress=_progress(events))[0]
    assert res.error is None and res.audio.ndim == 2
    fractions = [e[2] for e in events if e[0] == "progress"]
    n = 2 * _blocks(engine, prep.more_channels[0])  # both channels' blocks: one share
    assert len([e for e in events if e[0] == "block"]) == n
    assert fractions[:n] == pytest.approx([F0_PROGRESS_SHARE * (j + 1) / n for j in range(n)])
    _checked_fractions(fractions)


@pytest.mark.parametrize("pauses", [True, False])
def test_stream_reports_f0_blocks_then_pieces(engine: rvcfast.Engine, pauses: bool):
    prep = engine.prepare(tone(SECONDS).astype(np.float32), 16000)
    params = engine.params(seed=11)
    events: list[tuple[Any, ...]] = []
    pieces = []
    for piece in _recorded(engine, events).stream(prep, params, raw=True, pauses=pauses, on_progress=_progress(events)):
        if piece is not None:
            events.append(("piece",))
            pieces.append(piece)
    kinds = [e[0] for e in events]
    assert kinds.index("progress") < kinds.index("batch")  # F0 moved the fraction first
    fractions = [e[2] for e in events if e[0] == "progress"]
    n = _blocks(engine, prep)
    assert fractions[:n] == pytest.approx([F0_PROGRESS_SHARE * (j + 1) / n for j in range(n)])
    _checked_fractions(fractions)
    assert kinds[-2:] == ["progress", "piece"]
    plain = list(engine.stream(prep, params, raw=True))
    assert np.array_equal(np.concatenate(pieces), np.concatenate(plain))


def test_a_server_job_moves_during_f0_and_only_forward():
    from rvcfast.serve.jobs import Job
    from rvcfast.serve.routes import _job_progress

    job = Job("j1", "alice", "long.wav", "wav", None)
    first, second = _job_progress(job, 0, 2), _job_progress(job, 1, 2)
    first(0, 0.5 * F0_PROGRESS_SHARE)  # half of channel 1's F0 blocks
    assert 0.0 < job.progress < 0.95 / 2
    seen = job.progress
    first(0, 0.01)  # never backwards
    assert job.progress == seen
    first(0, 1.0)
    assert job.progress == pytest.approx(0.95 / 2)
    second(0, 1.0)
    assert job.progress == pytest.approx(0.95)  # the finishing and the write are the rest


def test_batch_plain_lines_move_during_f0(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from rvcfast import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    engine = tiny_models.converter(f0_options={"chunk_frames": CHUNK}).engine
    plain = io.StringIO()
    bar = BatchProgress(1, SECONDS, stream=plain, tty=False, plain_interval=30.0)
    lines_at_block: list[int] = []
    inner = engine.f0_extractor

    class Clocked(Recording):
        def extract_blocks(self, audio: np.ndarray) -> list[Any]:
            steps = inner.extract_blocks(audio)

            def run(step: Any) -> np.ndarray:
                lines_at_block.append(len(plain.getvalue().splitlines()))
                now[0] += 40.0  # each block: more than plain_interval
                return step()

            return [lambda step=step: run(step) for step in steps]

    conv = rvcfast.Converter.from_engine(engine.with_f0(Clocked(inner, [])))
    results = list(conv.iter_batch([(tone(SECONDS), 16000)], tmp_path, audio_progress=bar.advance))
    assert results[0].error is None
    bar.update(results[0])
    lines = plain.getvalue().splitlines()
    n = len(lines_at_block)
    assert n > 1 and lines_at_block == list(range(n))  # a line after each block, before the next one ran
    assert lines[0].startswith(f"[0/1] in progress: {F0_PROGRESS_SHARE * SECONDS / n:.1f}/30.0 s audio converted (40.0 s")
    assert "ETA ?" not in lines[0]  # a rate, so an estimate, from the first block on
    assert lines[n - 1].startswith(f"[0/1] in progress: {F0_PROGRESS_SHARE * SECONDS:.1f}/30.0 s audio converted")


def test_cli_status_line_moves_during_f0(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]):
    from rvcfast import progress

    src = tmp_path / "one-segment.wav"
    sf.write(src, tone(SECONDS), 16000)
    monkeypatch.setattr(progress, "is_tty", lambda stream: True)
    code = main([
        "convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), "--encoder", str(tiny_models.encoder),
        "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "--f0-option", f"chunk_frames={CHUNK}",
    ])
    assert code == 0
    frames = [f for f in capsys.readouterr().err.split("\r") if "0/1 files" in f and "s audio" in f]
    audio = [float(f.split("s audio")[0].split()[-1].split("/")[0]) for f in frames]
    # one segment: before, the line went from 0 to the whole file at once
    inside = [a for a in audio if 0.0 < a < SECONDS]
    assert inside and max(inside) <= F0_PROGRESS_SHARE * SECONDS + 0.05, frames

"""Progress inside long inputs: ``Engine.run(on_progress=...)``, the batch's ``audio_progress``,
:meth:`BatchProgress.advance` and the command line's status line.

Before, a batch reported only finished files: a one-hour input showed ``0/1 files, 0.0 s audio``
until it was written.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.cli import main
from rvcfast.engine_progress import F0_PROGRESS_SHARE
from rvcfast.progress import BatchProgress

LONG_SECONDS = 100.0  # three segments of RVC's plan (one is at most ~41 s)


@pytest.fixture(scope="module")
def long_input() -> np.ndarray:
    return tone(LONG_SECONDS).astype(np.float32)


def _recorder() -> tuple[list[tuple[int, float]], object]:
    calls: list[tuple[int, float]] = []
    lock = threading.Lock()

    def record(k: int, value: float) -> None:
        with lock:
            calls.append((k, value))

    return calls, record


def test_run_reports_each_segment_of_a_long_input(tiny_converter: rvcfast.Converter, long_input: np.ndarray):
    engine = tiny_converter.engine
    prep = engine.prepare(long_input, 16000)
    assert len(prep.segments) >= 3, "the test needs an input of several segments"
    blocks = len(engine.f0_extractor.extract_blocks(prep.padded))  # RMVPE: 41 s F0 blocks over 82 s
    assert blocks > 1, "the test needs an input of several F0 blocks"
    calls, record = _recorder()
    result = engine.run([prep], engine.params(), batch_seconds=0, on_progress=record)[0]
    assert result.error is None
    # one call after each F0 block, then (batch_seconds=0: one model batch per segment) after each batch
    assert [k for k, _ in calls] == [0] * (blocks + len(prep.segments))
    fractions = [f for _, f in calls]
    assert all(0 < a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[blocks - 1] == pytest.approx(F0_PROGRESS_SHARE) and fractions[-1] == 1.0
    # each step is that segment's share of the output: about its share of the input's time
    bounds = [float(s) for s in fractions[blocks - 1 :]]
    shares = np.diff(bounds) / (1.0 - F0_PROGRESS_SHARE)
    assert shares.sum() == pytest.approx(1.0)
    assert all(0.05 < s < 0.6 for s in shares)


def test_run_reports_inputs_by_position_and_not_a_failed_one(tiny_converter: rvcfast.Converter, long_input: np.ndarray):
    engine = tiny_converter.engine
    preps = [
        engine.prepare(long_input[: 16000 * 50], 16000, name="long"),
        engine.prepare(np.zeros(80, np.float32), 16000, name="too-short"),  # 5 ms: no output frame
        engine.prepare(tone(3.0).astype(np.float32), 16000, name="short"),
    ]
    calls, record = _recorder()
    results = engine.run(preps, engine.params(), batch_seconds=0, on_progress=record)
    assert results[0].error is None and results[1].error is not None and results[2].error is None
    by_input: dict[int, list[float]] = {}
    for k, f in calls:
        by_input.setdefault(k, []).append(f)
    assert set(by_input) == {0, 2}  # the input that failed gets no calls
    assert by_input[0][-1] == 1.0 and by_input[2] == [1.0]
    assert len(by_input[0]) == len(preps[0].segments)


def test_run_counts_every_channel_of_an_input(tiny_converter: rvcfast.Converter):
    engine = tiny_converter.engine
    stereo = tone(60.0, channels=2).astype(np.float32)
    params = engine.params(channels="each")
    prep = engine.prepare(stereo, 16000, params=params)
    assert prep.n_channels == 2 and len(prep.segments) >= 2
    calls, record = _recorder()
    result = engine.run([prep], params, batch_seconds=0, on_progress=record)[0]
    assert result.error is None and result.audio.ndim == 2
    fractions = [f for _, f in calls]
    # one call per segment of each channel; only the last one completes the input
    assert len(fractions) == 2 * len(prep.segments)
    assert all(a < b for a, b in zip(fractions, fractions[1:])) and fractions[-1] == 1.0
    assert fractions[len(prep.segments) - 1] < 1.0


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_audio_progress_comes_before_each_result(
    tiny_converter: rvcfast.Converter, long_input: np.ndarray, tmp_path: Path, workers: int
):
    inputs = [(tone(4.0).astype(np.float32), 16000), (long_input, 16000)]
    events: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def advance(index: int, seconds: float) -> None:
        with lock:
            events.append(("advance", index, seconds))

    results = []
    for res in tiny_converter.iter_batch(
        inputs, tmp_path, batch_seconds=20.0, compute_workers=workers, audio_progress=advance
    ):
        with lock:
            events.append(("result", res.index, res.input_seconds))
        results.append(res)
    assert [r.error for r in results] == [None] * 2
    for res in results:
        mine = [(kind, s) for kind, i, s in events if i == res.index]
        kinds = [kind for kind, _ in mine]
        assert kinds[-1] == "result" and kinds.count("result") == 1
        steps = [s for kind, s in mine if kind == "advance"]
        assert steps, f"input {res.index} was never reported before its result"
        assert all(a < b for a, b in zip(steps, steps[1:]))
        assert steps[-1] == pytest.approx(res.input_seconds, rel=1e-9)  # all of it, in seconds of input
    # the 100 s input moved in steps: its first report came well before it was done
    long_steps = [s for kind, i, s in events if kind == "advance" and i == 1]
    assert len(long_steps) >= 3 and long_steps[0] < 0.6 * LONG_SECONDS


def test_batch_refuses_an_audio_progress_that_is_not_a_function(tiny_converter: rvcfast.Converter, tmp_path: Path):
    bar = BatchProgress(1, enabled=False)
    with pytest.raises(rvcfast.errors.ParameterError, match=r"audio_progress must be a function.*bar\.advance"):
        tiny_converter.iter_batch([(tone(1.0), 16000)], tmp_path, audio_progress=bar)
    assert not any(tmp_path.iterdir())


class _Result:
    def __init__(self, index: int, seconds: float, source: str = "a.wav"):
        self.index, self.input_seconds, self.source = index, seconds, source
        self.error, self.skipped, self.output_path = None, False, f"out/{source}"


def test_bar_counts_audio_of_files_in_progress(monkeypatch: pytest.MonkeyPatch):
    from rvcfast import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    tty = io.StringIO()
    bar = BatchProgress(2, 200.0, stream=tty, tty=True, min_interval=0.0)
    now[0] = 10.0
    bar.advance(0, 50.0)
    assert "0/2 files" in bar.status() and "50.0/200.0 s audio" in bar.status()
    assert bar.rate() == pytest.approx(5.0) and bar.eta() == pytest.approx(30.0)  # 150 s left at 5x
    bar.advance(0, 40.0)  # a stale, lower report never moves the bar back
    assert bar.partial_seconds() == 50.0
    now[0] = 20.0
    bar.advance(1, 20.0)
    bar.update(_Result(0, 100.0), expected_seconds=100.0)  # file 0 done: its partial count is replaced
    assert bar.partial == {1: 20.0}
    assert "1/2 files" in bar.status() and "120.0/200.0 s audio" in bar.status()
    assert "50.0/200.0 s audio" in tty.getvalue()  # drawn while no file had finished


def test_bar_without_terminal_prints_a_line_now_and_then(monkeypatch: pytest.MonkeyPatch):
    from rvcfast import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    plain = io.StringIO()
    bar = BatchProgress(1, 3600.0, stream=plain, tty=False, plain_interval=30.0)
    for t, seconds in [(10.0, 100.0), (31.0, 300.0), (40.0, 400.0), (62.0, 600.0)]:
        now[0] = t
        bar.advance(0, seconds)
    lines = plain.getvalue().splitlines()
    assert lines == [
        "[0/1] in progress: 300.0/3600.0 s audio converted (31.0 s elapsed, ETA 5:41)",
        "[0/1] in progress: 600.0/3600.0 s audio converted (62.0 s elapsed, ETA 5:10)",
    ]
    bar.update(_Result(0, 3600.0, "long.wav"))
    assert plain.getvalue().splitlines()[-1].startswith("[1/1] long.wav -> out/long.wav (3600.0 s audio")


def test_cli_status_line_moves_inside_one_long_file(
    tiny_models, long_input: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from rvcfast import progress

    src = tmp_path / "long.wav"
    sf.write(src, long_input, 16000)
    monkeypatch.setattr(progress, "is_tty", lambda stream: True)  # the status line, as on a terminal
    out = tmp_path / "out"
    code = main([
        "convert", str(tiny_models.voice), str(src), "-o", str(out), "--index", str(tiny_models.index),
        "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--batch-seconds", "1",
        "--device", "cpu",
    ])
    assert code == 0 and (out / "long.wav").is_file()
    frames = [f for f in capsys.readouterr().err.split("\r") if "0/1 files" in f]
    audio = [float(f.split("s audio")[0].split()[-1].split("/")[0]) for f in frames if "s audio" in f]
    inside = [a for a in audio if 0.0 < a < LONG_SECONDS]
    assert inside, f"the status line never showed audio of the unfinished file: {frames}"


def test_a_skipped_line_names_the_output_that_exists():
    # several voices skip one input once each: the line did not say for which (its output does)
    plain = io.StringIO()
    bar = BatchProgress(2, None, stream=plain, tty=False)
    for voice in ("alice", "bob"):
        res = _Result(0, 1.0, "take.wav")
        res.skipped, res.output_path = True, f"out/{voice}/take.wav"
        bar.update(res)
    assert plain.getvalue().splitlines() == [
        "[1/2] take.wav: skipped (output exists: out/alice/take.wav)",
        "[2/2] take.wav: skipped (output exists: out/bob/take.wav)",
    ]

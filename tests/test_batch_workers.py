"""Several compute workers, and a batch that stops: every output on disk was reported, or was
being written when the caller stopped reading (a whole file); no write starts after the stop.

No timings: each test holds a stage on an event (with a generous deadline that only a broken
batch would reach) and checks what was reported and what is on disk.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone, two_threads_fixture  # noqa: F401

from rvcfast import batch
from rvcfast.errors import RvcfastError
from rvcfast.f0_pool import F0Pool

DEADLINE = 30.0  # seconds a held stage waits at most (a working batch releases it long before)


@pytest.fixture()
def three_threads() -> Any:
    """Three torch threads: three compute workers of one thread each."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def _clips(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"clip{i}.wav"
        sf.write(path, tone(0.3, freq=150.0 + 20 * i), 16000)
        paths.append(path)
    return paths


def _name(preps: Any) -> str:
    return Path(str(preps[0].label)).name


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _hold(*events: threading.Event) -> None:
    """Wait for any of ``events``, at most :data:`DEADLINE` seconds."""
    waiter = threading.Event()
    for _ in range(int(DEADLINE * 100)):
        if any(e.is_set() for e in events):
            return
        waiter.wait(0.01)


def _batch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("rvcfast-")]


def _assert_reported_is_on_disk(results: list[Any], out: Path) -> None:
    """Every output on disk was reported as converted, naming its path (and every one reported is there, whole)."""
    on_disk = _left_in(out)
    assert sorted(Path(r.output_path).name for r in results if r.ok) == on_disk
    for name in on_disk:
        assert sf.info(str(out / name)).frames > 0


def test_a_group_written_before_an_older_groups_engine_failure_is_reported(
    tiny_converter, two_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers: the second group finishes first and is written (out of turn); then the first
    group's engine call fails. The failure went up with the second file on disk but never
    reported (nor given to ``progress``): a caller's list and a CLI's report lacked an output
    the batch had written. It is now reported, then the failure raised."""
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: False)
    inputs = _clips(tmp_path / "in", 2)
    out = tmp_path / "out"
    written = threading.Event()
    run = tiny_converter.engine.run
    write = batch._write_timed

    def held(preps, *args, cancel=None, **kwargs):  # type: ignore[no-untyped-def]
        if _name(preps) == "clip0.wav":
            _hold(written, cancel)  # until the later group is on disk
            raise RuntimeError("engine broke on clip0")
        return run(preps, *args, cancel=cancel, **kwargs)

    def telling(path, *args):  # type: ignore[no-untyped-def]
        seconds = write(path, *args)
        written.set()
        return seconds

    monkeypatch.setattr(tiny_converter.engine, "run", held)
    monkeypatch.setattr(batch, "_write_timed", telling)
    seen: list[Any] = []
    told: list[str] = []
    with pytest.raises(RuntimeError, match="engine broke on clip0"):
        for res in tiny_converter.iter_batch(
            inputs, out, batch_seconds=0.1, compute_workers=2, progress=lambda r, done, total: told.append(r.source)
        ):
            seen.append(res)
    assert [Path(r.source).name for r in seen] == ["clip1.wav"] and told == [r.source for r in seen]
    assert seen[0].ok and seen[0].index == 1
    _assert_reported_is_on_disk(seen, out)
    assert _left_in(out) == ["clip1.wav"]
    assert not _batch_threads()


def test_a_group_finishing_behind_a_known_engine_failure_is_not_written(
    tiny_converter, three_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three workers: the second group's engine call fails while the first is still computing;
    the third finishes after the batch has seen the failure. The batch stops at the failure (it
    is raised once the first group is reported), yet the third group was written: on disk, never
    reported. Nothing behind a known failure is written now."""
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: False)
    inputs = _clips(tmp_path / "in", 3)
    out = tmp_path / "out"
    third_started, third_done, seen_failure = threading.Event(), threading.Event(), threading.Event()
    run = tiny_converter.engine.run
    failed = batch._failed

    def seeing(future):  # type: ignore[no-untyped-def]
        if failed(future):
            seen_failure.set()  # the batch knows a group failed
            return True
        return False

    def held(preps, *args, cancel=None, **kwargs):  # type: ignore[no-untyped-def]
        name = _name(preps)
        if name == "clip1.wav":
            _hold(third_started, cancel)
            raise RuntimeError("engine broke on clip1")
        if name == "clip2.wav":
            third_started.set()
            _hold(seen_failure, cancel)
            try:
                return run(preps, *args, cancel=cancel, **kwargs)
            finally:
                third_done.set()
        _hold(third_done, cancel)  # clip0: the first group ends last
        return run(preps, *args, cancel=cancel, **kwargs)

    monkeypatch.setattr(batch, "_failed", seeing)
    monkeypatch.setattr(tiny_converter.engine, "run", held)
    seen: list[Any] = []
    with pytest.raises(RuntimeError, match="engine broke on clip1"):
        for res in tiny_converter.iter_batch(inputs, out, batch_seconds=0.1, compute_workers=3):
            seen.append(res)
    assert third_done.is_set()
    assert [Path(r.source).name for r in seen] == ["clip0.wav"]
    _assert_reported_is_on_disk(seen, out)
    assert _left_in(out) == ["clip0.wav"]
    assert not _batch_threads()


def test_an_error_decoding_does_not_keep_to_its_file_is_raised_in_its_turn(
    tiny_converter, two_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU F0 backend whose worker processes cannot start: handing the third file's track to
    the pool raises (the batch stops: one error, not one per file). It went up at once, beside
    the groups on the workers: the first, before it, never converted; the second, finished out
    of turn, on disk but not reported. The groups before it are now converted, written and
    reported, then the error raised."""
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: False)
    inputs = _clips(tmp_path / "in", 3)
    out = tmp_path / "out"
    engine = tiny_converter.engine
    extractor = engine.f0_extractor

    class _CpuBound:  # the model's tracker, declared CPU-bound: its tracks go through the F0 pool
        cpu_bound = True
        name = "held"

        def extract(self, audio: np.ndarray) -> Any:
            return extractor.extract(audio)

    submitted: list[int] = []

    def submit(self, padded):  # type: ignore[no-untyped-def]
        submitted.append(1)
        if len(submitted) == 3:  # the third file (one decoder: in input order)
            raise RvcfastError("the worker processes of F0 backend 'held' could not start")
        track: cf.Future = cf.Future()
        track.set_result(extractor.extract(padded))
        return track

    second_written = threading.Event()
    run = engine.run
    write = batch._write_timed

    def held(preps, *args, cancel=None, **kwargs):  # type: ignore[no-untyped-def]
        if _name(preps) == "clip0.wav":
            _hold(second_written, cancel)  # the second group, finished out of turn, is on disk first
        return run(preps, *args, cancel=cancel, **kwargs)

    def telling(path, *args):  # type: ignore[no-untyped-def]
        seconds = write(path, *args)
        if Path(path).name == "clip1.wav":
            second_written.set()
        return seconds

    monkeypatch.setattr(engine, "f0_extractor_for", lambda params: _CpuBound())
    monkeypatch.setattr(F0Pool, "submit", submit)
    monkeypatch.setattr(engine, "run", held)
    monkeypatch.setattr(batch, "_write_timed", telling)
    seen: list[Any] = []
    with pytest.raises(RvcfastError, match="could not start"):
        for res in tiny_converter.iter_batch(inputs, out, batch_seconds=0.1, compute_workers=2, decode_workers=1):
            seen.append(res)
    assert [Path(r.source).name for r in seen] == ["clip0.wav", "clip1.wav"]
    assert all(r.ok for r in seen)
    _assert_reported_is_on_disk(seen, out)
    assert not _batch_threads()


@pytest.mark.parametrize("how", ["break", "progress raises", "Ctrl-C in progress"])
def test_no_write_starts_after_the_batch_is_stopped(
    tiny_converter, two_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Two workers, one writer: the first file is reported while the second is being written and
    the third waits for the writer. The caller stops the batch (``break``, its ``progress``
    raising, Ctrl-C landing in it): every queued write still ran when the batch closed, so files
    the caller was never told of appeared after it stopped. The write under way finishes (a
    whole file); no other starts."""
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: False)
    inputs = _clips(tmp_path / "in", 3)
    out = tmp_path / "out"
    runs: list[Any] = []
    queued = {name: threading.Event() for name in ("clip0.wav", "clip1.wav", "clip2.wav")}
    writing_first, writing_second = threading.Event(), threading.Event()
    start_writes = batch._BatchRun._start_writes

    def starting(self, group, done):  # type: ignore[no-untyped-def]
        runs.append(self)
        entries = start_writes(self, group, done)
        for d in group:
            queued[Path(str(d.job.label)).name].set()
        return entries

    engine_run = tiny_converter.engine.run

    def in_order(preps, *args, cancel=None, **kwargs):  # type: ignore[no-untyped-def]
        # the groups finish in input order: the writer's queue is clip0 (running), clip1, clip2
        if _name(preps) == "clip1.wav":
            _hold(writing_first, cancel)
        elif _name(preps) == "clip2.wav":
            _hold(queued["clip1.wav"], cancel)
        return engine_run(preps, *args, cancel=cancel, **kwargs)

    write = batch._write_timed

    def held(path, *args):  # type: ignore[no-untyped-def]
        if Path(path).name == "clip0.wav":
            writing_first.set()
            _hold(queued["clip2.wav"])  # the writer's queue: clip1, then clip2
        elif Path(path).name == "clip1.wav":
            writing_second.set()
            _hold(runs[0].stop)  # still writing when the batch is stopped
        return write(path, *args)

    def progress(res, done, total):  # type: ignore[no-untyped-def]
        if how != "break":
            _hold(writing_second)
            raise KeyboardInterrupt if how == "Ctrl-C in progress" else RuntimeError("my bar broke")

    monkeypatch.setattr(batch._BatchRun, "_start_writes", starting)
    monkeypatch.setattr(tiny_converter.engine, "run", in_order)
    monkeypatch.setattr(batch, "_write_timed", held)
    it = tiny_converter.iter_batch(inputs, out, batch_seconds=0.1, compute_workers=2, progress=progress)
    if how == "break":
        first = next(it)
        assert first.ok and Path(first.source).name == "clip0.wav"
        assert writing_second.wait(DEADLINE)
        it.close()
    else:
        with pytest.raises((KeyboardInterrupt, RuntimeError)):
            next(it)
    assert queued["clip2.wav"].is_set()
    assert _left_in(out) == ["clip0.wav", "clip1.wav"]  # clip1 whole, clip2 never started
    for name in _left_in(out):
        assert sf.info(str(out / name)).frames > 0
    assert not _batch_threads()

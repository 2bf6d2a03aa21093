"""Compute workers: several groups of a batch through the engine at once, threads shared among them."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import MODEL_SR, tiny_converter_fixture, tiny_models_fixture, tone, two_threads_fixture  # noqa: F401

from rvcfast import batch
from rvcfast.batch import BatchOptions, compute_workers
from rvcfast.cli import main
from rvcfast.errors import Cancelled, ParameterError
from rvcfast.tuning import Profile, load_profile, machine_id, save_profile


@pytest.fixture()
def profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "profile.json"
    monkeypatch.setenv("RVCFAST_PROFILE", str(path))
    return path


def _clips(n: int) -> list[tuple[np.ndarray, int]]:
    return [(tone(0.6 + 0.15 * i, freq=150.0 + 20 * i), 16000) for i in range(n)]


@pytest.mark.parametrize("wait_for_last", [True, False])
def test_two_workers_give_each_file_the_output_of_one_worker(tiny_converter, two_threads, monkeypatch, wait_for_last) -> None:
    # whether the last group waits for the running ones is a timing estimate: fixed here
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: wait_for_last)
    clips = _clips(5)
    calls: list[tuple[str, int, int]] = []  # (thread, its torch threads, files in the group)
    engine_run = tiny_converter.engine.run

    def spy(preps, *args, **kwargs):
        calls.append((threading.current_thread().name, torch.get_num_threads(), len(preps)))
        return engine_run(preps, *args, **kwargs)

    tiny_converter.engine.run = spy
    try:
        # 1 s of audio per group: one clip each
        two = tiny_converter.convert_batch(clips, batch_seconds=1.0, compute_workers=2, noise=False)
    finally:
        del tiny_converter.engine.run
    assert torch.get_num_threads() == 2  # restored after the batch
    # one file per group, each on a worker with one of the two threads; the last group either
    # there too or, after the others, in the caller's thread on both threads
    assert [n for _, _, n in calls] == [1] * 5
    assert all(name.startswith("rvcfast-compute") and threads == 1 for name, threads, _ in calls[:4])
    if wait_for_last:
        assert calls[4] == (threading.current_thread().name, 2, 1)
    else:
        assert calls[4][0].startswith("rvcfast-compute") and calls[4][1] == 1
    assert [r.index for r in two] == list(range(len(clips)))
    # each file as a batch of one, on the thread count it had
    torch.set_num_threads(1)
    alone = [tiny_converter.convert(x, rate, noise=False).audio for x, rate in clips[:4]]
    torch.set_num_threads(2 if wait_for_last else 1)
    alone.append(tiny_converter.convert(*clips[4], noise=False).audio)
    for a, b in zip(alone, two):
        assert b.ok, b.error
        np.testing.assert_array_equal(a, b.audio)


def test_the_last_group_waits_only_for_groups_nearly_done() -> None:
    class _Done:
        def __init__(self, done: bool, seconds: float = 0.0) -> None:
            self._done, self._seconds = done, seconds

        def done(self) -> bool:
            return self._done

        def result(self) -> batch._Computed:
            assert self._done
            return batch._Computed([], [], False, 0.0, self._seconds)

    run = object.__new__(batch._BatchRun)
    run.workers, run.durations, run.inflight = 2, [], deque()
    assert run._wait_for_last()  # nothing running: every core is free for it
    now = time.perf_counter()
    run.inflight.append(batch._InFlight([], _Done(False), now - 0.01))
    # nothing finished yet: the running group went to a worker just before (no more groups
    # than workers), so it has about a whole group's time left: the last group on a worker too
    assert not run._wait_for_last()
    run.durations = [10.0, 12.0, 10.0]  # a typical group: 10 s on a worker
    run.inflight[0] = batch._InFlight([], _Done(False), now - 8.0)  # ~2 s left of ~10: wait, then all the threads
    assert run._wait_for_last()
    run.inflight[0] = batch._InFlight([], _Done(False), now - 1.0)  # ~9 s left: the last group on a worker now
    assert not run._wait_for_last()
    run.inflight[0] = batch._InFlight([], _Done(True), now - 1.0)  # finished groups do not count
    assert run._wait_for_last()
    # a group finished out of turn, its writes not started yet, counts as a duration
    run.durations = []
    run.inflight = deque([batch._InFlight([], _Done(False), now - 9.0), batch._InFlight([], _Done(True, 10.0), now - 10.0)])
    assert run._wait_for_last()  # ~1 s left of ~10


@pytest.mark.parametrize(
    ("requested", "files", "threads", "expected"),
    [(2, 1, 2, 1), (2, 2, 2, 2), (3, 9, 2, 2), (2, 9, 1, 1), (2, 9, 3, 1), (4, 9, 6, 3), (4, 9, 8, 4), (4, 2, 8, 2)],
)
def test_workers_are_capped_by_the_files_and_divide_the_threads(requested, files, threads, expected) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert batch.usable_workers(requested, files, "cpu") == expected
    finally:
        torch.set_num_threads(before)
    assert batch.usable_workers(3, 9, "cuda") == 3  # threads are not split off a CPU
    assert batch.usable_workers(3, 2, "cuda") == 2


def test_one_thread_means_one_worker_in_the_callers_thread(tiny_converter) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    seen: list[str] = []
    engine_run = tiny_converter.engine.run

    def spy(preps, *args, **kwargs):
        seen.append(threading.current_thread().name)
        return engine_run(preps, *args, **kwargs)

    tiny_converter.engine.run = spy
    try:
        results = tiny_converter.convert_batch(_clips(3), batch_seconds=1.0, compute_workers=2, noise=False)
    finally:
        del tiny_converter.engine.run
        torch.set_num_threads(before)
    assert all(r.ok for r in results) and len(seen) == 3
    assert set(seen) == {threading.current_thread().name}  # never more threads than the user allowed


def test_a_finished_group_is_written_before_an_older_one_ends(tiny_converter, two_threads, tmp_path: Path) -> None:
    # The first group is slow; the second, on the other worker, finishes first. Its file must
    # be on disk while the first is still computing (results are still reported in order).
    names = []
    for i, (x, rate) in enumerate(_clips(2)):
        sf.write(tmp_path / f"clip{i}.wav", x, rate)
        names.append(tmp_path / f"clip{i}.wav")
    second_out = tmp_path / "out" / "clip1.wav"
    seen_while_first_ran: list[bool] = []
    engine_run = tiny_converter.engine.run

    def slow_first(preps, *args, **kwargs):
        out = engine_run(preps, *args, **kwargs)
        if str(preps[0].label).endswith("clip0.wav"):
            deadline = time.monotonic() + 30.0  # an event to wait for, not a timing
            while not second_out.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_while_first_ran.append(second_out.exists())
        return out

    tiny_converter.engine.run = slow_first
    try:
        order = [r.source for r in tiny_converter.iter_batch(names, tmp_path / "out", batch_seconds=1.0, compute_workers=2)]
    finally:
        del tiny_converter.engine.run
    assert seen_while_first_ran == [True]
    assert order == [str(names[0]), str(names[1])]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip0.wav", "clip1.wav"]


def test_an_engine_failure_in_a_worker_stops_the_batch_and_gives_the_threads_back(tiny_converter, two_threads) -> None:
    engine_run = tiny_converter.engine.run
    calls = []

    def fails_second(preps, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("engine broke")
        return engine_run(preps, *args, **kwargs)

    tiny_converter.engine.run = fails_second
    try:
        with pytest.raises(RuntimeError, match="engine broke"):
            tiny_converter.convert_batch(_clips(4), batch_seconds=1.0, compute_workers=2, noise=False)
    finally:
        del tiny_converter.engine.run
    assert torch.get_num_threads() == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("rvcfast-compute")]


def test_workers_carry_on_past_a_bad_file_and_write_every_good_one(tiny_converter, two_threads, tmp_path: Path) -> None:
    names = []
    for i, (x, rate) in enumerate(_clips(4)):
        sf.write(tmp_path / f"clip{i}.wav", x, rate)
        names.append(tmp_path / f"clip{i}.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    inputs = names[:2] + [tmp_path / "broken.wav"] + names[2:]
    results = tiny_converter.convert_batch(inputs, tmp_path / "out", batch_seconds=1.0, compute_workers=3)
    assert len(results) == 5
    bad = [r for r in results if not r.ok]
    assert len(bad) == 1 and "broken.wav" in bad[0].error
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"clip{i}.wav" for i in range(4)]  # no temporary or partial files left
    for i in range(4):
        y, sr = sf.read(tmp_path / "out" / f"clip{i}.wav")
        assert sr == MODEL_SR and y.shape[0] == pytest.approx((0.6 + 0.15 * i) * MODEL_SR, abs=0.02 * MODEL_SR)
    assert torch.get_num_threads() == 2


def test_stopping_early_restores_the_threads(tiny_converter, two_threads) -> None:
    it = tiny_converter.iter_batch(_clips(5), batch_seconds=1.0, compute_workers=2, noise=False)
    first = next(it)
    assert first.ok and torch.get_num_threads() == 2  # the workers set their own counts, never the caller's
    it.close()  # the caller stops: workers finish
    assert torch.get_num_threads() == 2


def test_stopping_early_cancels_the_groups_still_computing(tiny_converter, two_threads, monkeypatch, tmp_path: Path) -> None:
    # Ctrl-C or a caller that stops reading: a group still on a worker stops at the engine's
    # next check instead of running to its end, and its file is not written.
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: False)
    names = []
    for i, (x, rate) in enumerate(_clips(2)):
        sf.write(tmp_path / f"clip{i}.wav", x, rate)
        names.append(tmp_path / f"clip{i}.wav")
    engine_run = tiny_converter.engine.run
    second: list[BaseException | None] = []

    def held_second(preps, *args, cancel=None, **kwargs):
        if str(preps[0].label).endswith("clip1.wav"):
            assert cancel is not None and cancel.wait(30.0)  # an event to wait for, not a timing
            try:
                return engine_run(preps, *args, cancel=cancel, **kwargs)
            except BaseException as exc:
                second.append(exc)
                raise
        return engine_run(preps, *args, cancel=cancel, **kwargs)

    tiny_converter.engine.run = held_second
    try:
        it = tiny_converter.iter_batch(names, tmp_path / "out", batch_seconds=1.0, compute_workers=2)
        first = next(it)
        assert first.ok and first.source == str(names[0])
        it.close()  # returns once the held group has seen the stop
    finally:
        del tiny_converter.engine.run
    assert len(second) == 1 and isinstance(second[0], Cancelled)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip0.wav"]  # nothing partial
    assert torch.get_num_threads() == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("rvcfast-compute")]


@pytest.mark.parametrize("batch_seconds", [1.0, 5.0, 6.5, 12.0])
def test_split_groups_is_how_the_batch_groups_files(tiny_converter, batch_seconds) -> None:
    seconds = [0.6, 1.9, 0.8, 3.1, 0.7, 1.2, 2.4]
    clips = [(tone(s, freq=170.0), 16000) for s in seconds]
    sizes: list[int] = []
    engine_run = tiny_converter.engine.run

    def spy(preps, *args, **kwargs):
        sizes.append(len(preps))
        return engine_run(preps, *args, **kwargs)

    tiny_converter.engine.run = spy
    try:
        results = tiny_converter.convert_batch(clips, batch_seconds=batch_seconds, noise=False)
    finally:
        del tiny_converter.engine.run
    assert all(r.ok for r in results) and sum(sizes) == len(clips)
    padded = [len(x) + 2 * 16000 for x, _ in clips]  # 1 s of reflected padding each side
    assert [len(g) for g in batch.split_groups(padded, int(batch_seconds * 16000))] == sizes


def test_the_profile_sets_the_default_and_an_argument_overrides_it(tiny_converter, profile_file: Path) -> None:
    from rvcfast.engine import Engine

    e = tiny_converter.engine

    def fresh() -> Engine:  # an engine reads the profile once, when first asked
        return Engine(e.vocoder, e.encoder, e.f0_extractor, e.index, device=e.device, dtype=e.dtype)

    assert compute_workers(fresh(), BatchOptions()) == 1  # no profile
    save_profile(Profile(machine=machine_id("cpu"), dtype="float32", threads=2, batch_seconds=8.0, compute_workers=2))
    engine = fresh()
    assert compute_workers(engine, BatchOptions()) == 2
    assert compute_workers(engine, BatchOptions(compute_workers=1)) == 1
    # a profile written before compute workers existed reads as one worker
    raw = profile_file.read_text().replace('"compute_workers": 2,', "")
    assert "compute_workers" not in raw
    profile_file.write_text(raw)
    profile = load_profile("cpu")
    assert profile is not None and profile.compute_workers == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_compute_workers_are_refused_before_any_work(tiny_converter, bad) -> None:
    with pytest.raises(ParameterError, match="compute_workers"):
        tiny_converter.iter_batch(_clips(1), compute_workers=bad)


def test_cli_compute_workers(tiny_models, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i, (x, rate) in enumerate(_clips(3)):
        sf.write(src / f"c{i}.wav", x, rate)
    base = [
        "convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), "--encoder", str(tiny_models.encoder),
        "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "-q",
    ]
    assert main([*base, "--compute-workers", "0"]) == 2
    assert "--compute-workers must be at least 1" in capsys.readouterr().err
    assert main([*base, "--compute-workers", "2", "--ray", "local"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main([*base, "--compute-workers", "2", "--batch-seconds", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.wav", "c1.wav", "c2.wav"]


def test_a_worker_keeps_its_share_when_the_shared_count_changes_before_its_first_operation(two_threads) -> None:
    # A thread's count is set up at its first parallel operation from torch's shared count;
    # another worker can change that count for a moment (RMVPE's BiGRU does) in between.
    from rvcfast.runtime import openmp_threads

    if not openmp_threads():
        pytest.skip("torch's threads are not OpenMP's here: counts are not per thread")
    run = object.__new__(batch._BatchRun)
    run.engine = type("E", (), {"device": torch.device("cpu")})()
    run.saved_threads, run.workers = 4, 2
    started, changed = threading.Event(), threading.Event()
    seen: list[int] = []

    def worker() -> None:
        run._worker_threads()
        started.set()
        changed.wait(10)
        torch.ones(64).sum()  # its first operation
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    started.wait(10)
    torch.set_num_threads(1)  # the shared count, changed by another thread meanwhile
    changed.set()
    t.join()
    assert seen == [2]

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
from helpers import MODEL_SR, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast import batch
from rvcfast.batch import BatchOptions, compute_workers
from rvcfast.cli import main
from rvcfast.errors import ParameterError
from rvcfast.tuning import Profile, load_profile, machine_id, save_profile


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


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
        def __init__(self, done: bool) -> None:
            self._done = done

        def done(self) -> bool:
            return self._done

    run = object.__new__(batch._BatchRun)
    run.workers, run.durations, run.inflight = 2, [], deque()
    assert run._wait_for_last()  # nothing finished yet: the others started with it
    run.durations = [10.0, 12.0, 10.0]  # a typical group: 10 s on a worker
    now = time.perf_counter()
    run.inflight.append(([], _Done(False), now - 8.0))  # ~2 s left of ~10: wait, then all the threads
    assert run._wait_for_last()
    run.inflight[0] = ([], _Done(False), now - 1.0)  # ~9 s left: the last group on a worker now
    assert not run._wait_for_last()
    run.inflight[0] = ([], _Done(True), now - 1.0)  # finished groups do not count
    assert run._wait_for_last()


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
    assert first.ok and torch.get_num_threads() == 1
    it.close()  # the caller stops: workers finish, threads come back
    assert torch.get_num_threads() == 2


def test_the_profile_sets_the_default_and_an_argument_overrides_it(tiny_converter, profile_file: Path) -> None:
    engine = tiny_converter.engine
    assert compute_workers(engine, BatchOptions()) == 1  # no profile
    save_profile(Profile(machine=machine_id("cpu"), dtype="float32", threads=2, batch_seconds=8.0, compute_workers=2))
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

"""From an integrator's walkthrough: one Converter in a long-running program (a job worker, a GUI).

Several threads share one Converter; a batch is interrupted and resumed; a batch is cancelled
from another thread; many batches leave no threads or processes behind; ``asyncio.to_thread``.
The models are the tiny random ones of ``helpers.py``, the inputs a fraction of a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (  # noqa: F401
    child_processes,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
    two_threads_fixture,
)

import rvcfast
from rvcfast.runtime import openmp_threads


def _clips(n: int, seconds: float = 0.3) -> list[np.ndarray]:
    """``n`` tones of one length (the models' kernels are built once), each its own pitch."""
    return [tone(seconds, freq=150.0 + 20.0 * i) for i in range(n)]


def _inputs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(_clips(n)):
        sf.write(folder / f"f{i}.wav", clip, 16000)
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}




def _start_count() -> int:
    """The intra-op thread count a thread started now takes (torch's shared count)."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def _in_threads(calls: list) -> list:
    """Each call in a thread of its own, all started together; their values (or exceptions)."""
    out: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(k: int) -> None:
        barrier.wait(10)
        try:
            out[k] = calls[k]()
        except BaseException as exc:  # noqa: BLE001 - the test shows it
            out[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return out


# ------------------------------------------------------------------ threads sharing one Converter


def test_convert_and_batches_from_several_threads_equal_a_serial_run(tiny_converter) -> None:
    """docs/api.md, Threads: calls side by side give the outputs they give one after another."""
    clips = _clips(3)
    serial = [tiny_converter.convert(c, 16000, seed=k, pitch=k).audio for k, c in enumerate(clips)]
    batch = [(c, 16000) for c in clips]
    serial_batch = [r.audio for r in tiny_converter.convert_batch(batch, seed=7)]

    calls = [lambda k=k, c=c: tiny_converter.convert(c, 16000, seed=k, pitch=k).audio for k, c in enumerate(clips)]
    calls += [lambda: [r.audio for r in tiny_converter.convert_batch(batch, seed=7)]]
    out = _in_threads(calls)

    assert not [o for o in out if isinstance(o, BaseException)]
    for k in range(3):
        assert np.array_equal(out[k], serial[k]), k  # each thread got its own input's output
    assert len(out[3]) == 3 and all(np.array_equal(a, b) for a, b in zip(out[3], serial_batch))


def test_convert_from_asyncio_to_thread_equals_a_direct_call(tiny_converter) -> None:
    clips = _clips(2)
    direct = [tiny_converter.convert(c, 16000, seed=3).audio for c in clips]

    async def main() -> list[rvcfast.Result]:
        return await asyncio.gather(*[asyncio.to_thread(tiny_converter.convert, c, 16000, seed=3) for c in clips])

    got = asyncio.run(main())
    assert all(np.array_equal(r.audio, d) for r, d in zip(got, direct))


def test_a_thread_started_during_a_parallel_batch_keeps_the_full_thread_count(tiny_converter, two_threads) -> None:
    if not openmp_threads():
        pytest.skip("torch's threads are not OpenMP's here: counts are not per thread")
    before = _start_count()
    assert before == 2
    seen: list[int] = []
    app_thread_ready = threading.Event()
    leave = threading.Event()

    def app_thread() -> None:  # a pool thread of the application, its first torch call during the batch
        seen.append(torch.get_num_threads())
        app_thread_ready.set()
        leave.wait(60)
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=app_thread)

    def progress(result: rvcfast.Result, done: int, total: int) -> None:
        if done == 1:  # the other files are still queued: the threads are split
            t.start()
            app_thread_ready.wait(60)

    clips = [(c, 16000) for c in _clips(4)]
    results = tiny_converter.convert_batch(clips, seed=0, compute_workers=2, batch_seconds=0.1, progress=progress)
    assert all(r.ok for r in results)
    leave.set()
    t.join(60)
    assert torch.get_num_threads() == 2  # the caller's own count is put back (this part holds)
    assert seen[-1] == before  # the application's thread, long after the batch


def test_two_parallel_batches_side_by_side_give_the_serial_outputs(tiny_converter, two_threads) -> None:
    """Documented: a batch computed on another thread count differs by float rounding only."""
    clips = [(c, 16000) for c in _clips(3)]
    serial = {k: [r.audio for r in tiny_converter.convert_batch(clips, seed=k, pitch=k)] for k in (0, 1)}

    def run(k: int) -> list[np.ndarray]:
        return [r.audio for r in tiny_converter.convert_batch(clips, seed=k, pitch=k, compute_workers=2, batch_seconds=0.1)]

    out = _in_threads([lambda: run(0), lambda: run(1)])
    for k in (0, 1):
        assert not isinstance(out[k], BaseException), out[k]
        for a, b in zip(out[k], serial[k]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # each its own seed and pitch, no mix-up
    assert torch.get_num_threads() == 2 and _start_count() == 2


# ------------------------------------------------------------------ interruption and resuming


def test_ctrl_c_mid_batch_leaves_complete_outputs_and_a_rerun_resumes(tiny_converter, two_threads, tmp_path: Path) -> None:
    src = _inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    inputs_before = _digests(src)
    threads_before = set(threading.enumerate())
    options = dict(seed=0, compute_workers=2, write_workers=2, decode_workers=3, batch_seconds=0.1)

    def interrupt(result: rvcfast.Result, done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt  # what SIGINT raises in the calling (main) thread

    with pytest.raises(KeyboardInterrupt):
        tiny_converter.convert_batch([src], out, progress=interrupt, **options)

    written = sorted(out.iterdir())
    assert 2 <= len(written) < 4
    assert [p.suffix for p in written] == [".wav"] * len(written)  # no temporary file left
    for p in written:
        assert sf.info(p).frames > 0  # complete and readable
    assert _digests(src) == inputs_before
    assert set(threading.enumerate()) == threads_before and child_processes() == []
    assert torch.get_num_threads() == 2

    mtimes = {p.name: p.stat().st_mtime_ns for p in written}
    again = tiny_converter.convert_batch([src], out, skip_existing=True, **options)
    assert [r.skipped for r in again].count(True) == len(written)
    assert all(r.ok for r in again)
    assert {p.name: p.stat().st_mtime_ns for p in written} == mtimes
    clean = tiny_converter.convert_batch([src], None, seed=0)
    for r in clean:
        got, rate = sf.read(out / Path(r.source).name, dtype="float32")
        assert rate == r.sample_rate and got.shape == r.audio.shape
        np.testing.assert_allclose(got, r.audio, rtol=0, atol=1e-4)  # 16-bit WAV
    assert _digests(src) == inputs_before


def test_a_batch_in_a_worker_thread_is_cancelled_between_results(
    tiny_converter, two_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pattern docs/reliability.md gives: iterate ``iter_batch`` and leave the loop when asked."""
    src = _inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    cancel, first = threading.Event(), threading.Event()
    reported: list[rvcfast.Result] = []
    run = tiny_converter.engine.run

    def still_computing(preps, *args, **kwargs):  # type: ignore[no-untyped-def]
        # the later groups are still on the models when the GUI cancels (tiny models would
        # otherwise finish, and be written, before the first result is even looked at)
        if any(not str(p.label).endswith("f0.wav") for p in preps):
            cancel.wait(60)
        return run(preps, *args, **kwargs)

    monkeypatch.setattr(tiny_converter.engine, "run", still_computing)

    def job() -> None:
        for result in tiny_converter.iter_batch([src], out, seed=0, compute_workers=2, batch_seconds=0.1):
            reported.append(result)
            first.set()
            cancel.wait(60)  # the GUI answers at once here (the batch would otherwise race on)
            if cancel.is_set():
                break  # closes the batch: groups still computing stop, nothing more is written

    worker = threading.Thread(target=job)
    worker.start()
    assert first.wait(120)
    cancel.set()
    worker.join(120)
    assert not worker.is_alive()

    assert len(reported) == 1
    written = sorted(p.name for p in out.iterdir())  # the reported file, and any group already computed
    assert {Path(r.output_path).name for r in reported} <= set(written)
    assert written == ["f0.wav"]  # the groups still computing stopped: nothing more was written
    monkeypatch.undo()
    again = tiny_converter.convert_batch([src], out, seed=0, skip_existing=True)
    assert [r.skipped for r in again].count(True) == len(written) and all(r.ok for r in again)
    assert len(list(out.iterdir())) == 4


# ------------------------------------------------------------------ nothing left behind


def test_many_batches_leave_no_threads_or_processes(tiny_models, two_threads, tmp_path: Path) -> None:
    # dio is a cpu_bound tracker: its batches run F0 in a process pool
    conv = tiny_models.converter(f0="dio", f0_weights=None)
    clips = [(c, 16000) for c in _clips(2)]
    conv.convert_batch(clips)  # warm-up
    threads_before = set(threading.enumerate())
    for k in range(2):  # a batch to the end, then one left early
        rs = conv.convert_batch(
            clips, tmp_path / str(k), compute_workers=2, write_workers=2, decode_workers=3, f0_workers=2, batch_seconds=0.1
        )
        assert all(r.ok for r in rs)
        it = conv.iter_batch(clips, compute_workers=2, batch_seconds=0.1)
        next(it)
        it.close()  # left early
    assert set(threading.enumerate()) == threads_before
    assert child_processes() == []
    assert torch.get_num_threads() == 2 and _start_count() == 2


def test_a_dropped_converter_and_the_cleared_cache_are_freed(tiny_models) -> None:
    """docs/api.md: drop the Converter, clear the cache, collect: nothing keeps its models (its
    batch's threads included). The base models live on while another Converter (this session's
    ``tiny_converter``) holds them."""
    import gc
    import weakref

    import rvcfast.cache

    conv = tiny_models.converter()
    conv.convert_batch([(c, 16000) for c in _clips(2)], compute_workers=2, batch_seconds=0.1)
    refs = [weakref.ref(conv), weakref.ref(conv.engine), weakref.ref(conv.vocoder), weakref.ref(conv.index)]
    del conv
    rvcfast.cache.clear()
    gc.collect()
    assert [r() for r in refs] == [None] * 4
    assert rvcfast.cache.cached_keys() == []


_FORK_SCRIPT = """
import multiprocessing as mp, sys
import numpy as np, torch
import rvcfast
torch.set_num_threads(2)
voice, encoder, rmvpe = sys.argv[1:4]
conv = rvcfast.Converter.from_pretrained(voice, encoder=encoder, f0_weights=rmvpe, device="cpu")
x = (0.3 * np.sin(2 * np.pi * 180 * np.arange(8000) / 16000)).astype(np.float32)
conv.convert(x, 16000)  # the parent's torch has run parallel work before the fork
def job(i):
    return conv.convert(x, 16000, seed=i).audio.shape[0], torch.get_num_threads()
if __name__ == "__main__":
    pool = mp.get_context("fork").Pool(2)
    try:
        print("RESULT", pool.map_async(job, range(2)).get(timeout=90))
    except mp.TimeoutError:
        print("HANG")
    finally:
        pool.terminate()
"""


def test_a_fork_started_pool_converts_after_the_parent_has(tiny_models, tmp_path: Path) -> None:
    """Python 3.11's default pool on Linux forks; a child forked after the parent's torch ran a
    parallel operation hung for ever at its first one (GNU OpenMP's pool does not survive a
    fork). rvcfast gives forked children one intra-op thread, as torch's DataLoader does."""
    import subprocess
    import sys

    script = tmp_path / "fork_pool.py"
    script.write_text(_FORK_SCRIPT)
    args = [sys.executable, str(script), str(tiny_models.voice), str(tiny_models.encoder), str(tiny_models.rmvpe)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HANG" not in done.stdout
    assert "RESULT [(" in done.stdout and ", 1)" in done.stdout, done.stdout


_SIGTERM_SCRIPT = """
import sys, time
import rvcfast.batch, rvcfast.cli
real = rvcfast.batch.write_audio_atomic
def slow(*args, **kwargs):  # a slow disk: the batch is still running when SIGTERM comes
    time.sleep(0.4)
    return real(*args, **kwargs)
rvcfast.batch.write_audio_atomic = slow
sys.argv = ["rvcfast", *sys.argv[1:]]
rvcfast.cli.run()
"""


def test_sigterm_ends_rvcfast_convert_as_ctrl_c_does(tiny_models, tmp_path: Path) -> None:
    """A scheduler's SIGTERM (Slurm, Kubernetes, ``kill``) ended ``rvcfast convert`` at once: no
    message, temporary files of writes in progress left behind. It now ends as Ctrl-C does:
    status 143, a message, complete outputs only, and ``--skip-existing`` converts the rest."""
    import signal
    import subprocess
    import sys
    import time

    src = _inputs(tmp_path / "in", 12)
    before = _digests(src)
    out = tmp_path / "out"
    script = tmp_path / "slow_convert.py"
    script.write_text(_SIGTERM_SCRIPT)
    weights = ["--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu"]
    argv = [sys.executable, str(script), "convert", str(tiny_models.voice), str(src), "-o", str(out), *weights, "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("*.wav")):
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before SIGTERM could be sent"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    written = sorted(p.name for p in out.iterdir())
    assert all(name.endswith(".wav") for name in written), written  # no temporary .part left
    assert 1 <= len(written) < 12
    for name in written:
        assert sf.info(out / name).frames > 0
    assert _digests(src) == before
    rerun = [sys.executable, "-m", "rvcfast", *argv[2:], "--skip-existing"]  # at full speed this time
    done = subprocess.run(rerun, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(out.glob("*.wav"))) == 12

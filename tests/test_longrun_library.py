"""A long-running process that imports rvcfast once and converts for hours (a desktop app, a
notebook, a web worker): what grows across calls and what is left behind.

* a hundred ``convert`` calls and repeated batches (compute, decode and write workers, an F0
  process pool), run to the end, abandoned half-way, never started, interrupted: memory and
  Python objects stay flat, no thread, child process, file descriptor or temporary file is
  left, torch's global state (thread count, grad mode, default dtype) is as it was;
* the model cache (``rvcfast.cache``): a base model whose file is gone is not kept for ever,
  and a file that fails to load leaves nothing behind;
* a batch closed early does not wait for F0 tracks nobody will use, and a batch advanced
  from one thread and closed from another leaves every thread's torch thread count as it was.

The models are the tiny random ones of ``helpers.py``; the inputs a fraction of a second.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (  # noqa: F401
    build_tiny_models,
    child_processes,
    one_thread_fixture,
    rss_mb,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast
from rvcfast import cache
from rvcfast.errors import ModelLoadError

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors and children in /proc")


def _clips(n: int, seconds: float = 0.3) -> list[tuple[np.ndarray, int]]:
    """``n`` tones of one length (the models' kernels are built once), each its own pitch."""
    return [(tone(seconds, freq=150.0 + 20.0 * i), 16000) for i in range(n)]




def _fds() -> dict[str, str]:
    """This process's open file descriptors and what each is."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used
            pass
    return out


def _torch_state() -> dict[str, object]:
    return {
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "default dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul precision": torch.get_float32_matmul_precision(),
    }


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two intra-op threads, so that ``compute_workers=2`` really runs two workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of this test's own as :func:`tempfile.gettempdir` (others write to /tmp meanwhile)."""
    folder = tmp_path / "tempdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


class _Leftovers:
    """What a process holds now, to compare with later: threads, children, descriptors, temporary
    files (in :func:`tempfile.gettempdir`), torch's global settings."""

    def __init__(self) -> None:
        gc.collect()
        self.threads = set(threading.enumerate())
        self.children = set(child_processes())  # a worker of the test run may hold some already
        self.fds = _fds()
        self.temp = set(os.listdir(tempfile.gettempdir()))
        self.torch = _torch_state()

    def assert_none(self) -> None:
        gc.collect()
        assert set(threading.enumerate()) - self.threads == set()
        assert set(child_processes()) - self.children == set()
        opened = {fd: what for fd, what in _fds().items() if self.fds.get(fd) != what}
        assert opened == {}
        assert set(os.listdir(tempfile.gettempdir())) - self.temp == set()
        assert _torch_state() == self.torch


# ------------------------------------------------------------------ many calls


_CONVERTS = """
import gc, sys, tracemalloc
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from pathlib import Path
from helpers import build_tiny_models, rss_mb, tone
conv = build_tiny_models(Path(sys.argv[2])).converter()
x = tone(0.3)
for _ in range(20):  # warm-up: kernels built, allocator settled
    conv.convert(x, 16000)
gc.collect()
rss0, objects0 = rss_mb(), len(gc.get_objects())
tracemalloc.start()
for i in range(120):
    assert conv.convert(x, 16000, seed=i).ok
gc.collect()
traced = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
print(rss_mb() - rss0, len(gc.get_objects()) - objects0, traced)
"""


def test_many_converts_keep_memory_and_objects_flat(tiny_converter: rvcfast.Converter, tmp_path: Path, own_tempdir: Path) -> None:
    """Memory, Python objects and NumPy memory after 120 convert() calls, in a process of its own
    (a test worker's RSS moves with the other tests it ran: +40 MB there over 100 calls)."""
    import subprocess

    x = tone(0.3)
    before = _Leftovers()
    for i in range(20):  # here too: no thread, descriptor, temporary file or torch setting left
        assert tiny_converter.convert(x, 16000, seed=i).ok
    before.assert_none()
    tests = str(Path(__file__).parent)
    run = subprocess.run([sys.executable, "-c", _CONVERTS, tests, str(tmp_path / "models")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rss, objects, traced = run.stdout.split()
    assert float(rss) < 30  # measured: +0.1 MB over 200 calls alone; native memory, torch's included
    assert int(objects) < 200  # no Python objects kept per call
    assert int(traced) < 1_000_000  # no NumPy or Python memory kept per call (an output is ~50 kB)


def test_many_batches_to_the_end_early_never_started_or_interrupted_leave_nothing(
    tiny_models, tmp_path: Path, two_threads: None, own_tempdir: Path
) -> None:
    conv = tiny_models.converter(f0="pm", f0_weights=None)  # cpu_bound: its tracks come from a process pool
    clips = _clips(4)
    opts = dict(batch_seconds=0.1, compute_workers=2, decode_workers=3, write_workers=2, f0_workers=2)

    def interrupt(result: rvcfast.Result, done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    def one_round(out: Path) -> None:
        assert all(r.ok for r in conv.convert_batch(clips, out, **opts))
        it = conv.iter_batch(clips, out, **opts)
        next(it)
        del it  # abandoned half-way, garbage-collected
        conv.iter_batch(clips, out, **opts)  # never started
        with pytest.raises(KeyboardInterrupt):
            conv.convert_batch(clips, out, progress=interrupt, **opts)
        assert sorted(p.name for p in out.iterdir()) == [f"array_{i:04d}.wav" for i in range(4)]  # no .part left
        voices = rvcfast.iter_voices({"a": conv, "b": conv}, clips, **opts)
        next(voices)
        del voices

    one_round(tmp_path / "warm-up")  # modules imported and kernels built on first use
    before = _Leftovers()
    objects0 = len(gc.get_objects())
    for k in range(3):
        one_round(tmp_path / f"out{k}")
    gc.collect()
    assert len(gc.get_objects()) - objects0 < 200  # measured: +14, the same after 4 rounds or 16
    before.assert_none()


def _freed_without_gc(make: Callable[[], rvcfast.Converter], use: Callable[[rvcfast.Converter], list[object]]) -> list[object]:
    """What of a Converter (and of the objects ``use`` made with it) is still alive once it is
    dropped, garbage collection off: only reference counting frees it."""
    gc.collect()
    gc.disable()
    try:
        conv = make()
        made = use(conv)
        refs = [weakref.ref(o) for o in (conv, conv.engine, conv.vocoder, conv.index, *made)]
        del conv, made
        return [r() for r in refs if r() is not None]
    finally:
        gc.enable()


def test_a_dropped_converter_is_freed_at_once_without_a_garbage_collection(tiny_models) -> None:
    """An app switching voices frees each one when it lets go of it: no reference cycle keeps a
    voice model until Python's next full collection (rare: it counts objects, not bytes), after
    convert, a batch, a realtime stream, a stream left half-way and convert_voices."""

    def use(conv: rvcfast.Converter) -> list[object]:
        assert conv.convert(tone(0.3), 16000).ok
        assert all(r.ok for r in conv.convert_batch(_clips(2), batch_seconds=0.1))
        rt = rvcfast.RealtimeConverter(conv, 16000)
        rt.push(np.zeros(rt.block_size * 2, np.float32))
        pieces = conv.engine.stream(conv.engine.prepare(tone(0.3), 16000))
        next(pieces)
        assert len(rvcfast.convert_voices({"a": conv, "b": conv}, _clips(1))) == 2
        return [rt, pieces]

    assert _freed_without_gc(tiny_models.converter, use) == []


def test_a_converter_dropped_after_a_batch_with_compute_workers_is_freed_at_once(tiny_models, two_threads: None) -> None:
    """The compute pool held the batch's bound method as its initializer: the batch, with its
    engine (the voice model) and its inputs, stayed in a reference cycle after the batch ended."""

    def use(conv: rvcfast.Converter) -> list[object]:
        assert all(r.ok for r in conv.convert_batch(_clips(2), compute_workers=2, batch_seconds=0.1))
        return []

    assert _freed_without_gc(tiny_models.converter, use) == []


# ------------------------------------------------------------------ the model cache


def test_a_base_model_whose_file_is_gone_is_not_kept_for_ever(tmp_path: Path) -> None:
    """A worker that loads its base models from a fresh folder per job (a download into a temporary
    folder) kept every job's encoder and RMVPE in the cache for the life of the process: nothing
    could ask for them again (their files were gone), and ``cache.clear()`` would also drop the
    models the current voice uses."""
    x = tone(0.3)
    gone: list[weakref.ref] = []
    for job in range(3):
        models = build_tiny_models(tmp_path / f"job{job}")
        conv = models.converter(index=None)
        assert conv.convert(x, 16000).ok
        gone += [weakref.ref(conv.encoder), weakref.ref(conv.engine.f0_extractor.model)]
        del conv
        shutil.rmtree(models.root)
    gc.collect()
    alive = [r for r in gone if r() is not None]
    assert len(alive) <= 2  # the last job's pair: the cache drops it at the next load
    held = [k for k in cache.cached_keys() if str(tmp_path) in str(k)]
    assert len(held) <= 2


def test_a_file_that_fails_to_load_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    """Each base model file that failed to load left a lock in the cache for the life of the process."""
    def fails() -> None:
        raise ModelLoadError("x", "not a model")

    for i in range(20):
        path = tmp_path / f"bad{i}.pt"
        path.write_bytes(b"junk")
        with pytest.raises(ModelLoadError):
            cache.get_or_load("library-longrun-test", path, "cpu", torch.float32, fails)
    assert not any(k[0] == "library-longrun-test" for k in cache._key_locks)
    assert not any(k[0] == "library-longrun-test" for k in cache.cached_keys())
    # and the next good load of one of them works
    good = cache.get_or_load("library-longrun-test", tmp_path / "bad0.pt", "cpu", torch.float32, lambda: "model")
    assert good == "model" and cache.load_count("library-longrun-test") == 1


def test_clearing_one_kind_of_model_keeps_the_others(tmp_path: Path) -> None:
    """A process that moved from RMVPE to another F0 backend could only drop every base model."""

    class Model:  # weakly referenceable, as get_shared needs
        pass

    for name in ("a.pt", "b.pt", "c.pt"):
        (tmp_path / name).write_bytes(b"weights")
    first = cache.get_or_load("longrun-clear-f0", tmp_path / "a.pt", "cpu", torch.float32, Model)
    cache.get_or_load("longrun-clear-f0", tmp_path / "b.pt", "cpu", torch.float32, Model)
    kept = cache.get_or_load("longrun-clear-enc", tmp_path / "c.pt", "cpu", torch.float32, Model)
    held = cache.get_shared("longrun-clear-f0", tmp_path / "a.pt", "cpu", Model)
    assert cache.clear("longrun-clear-f0") == 3
    assert not [k for k in cache.cached_keys() if k[0] == "longrun-clear-f0"]
    assert cache.get_or_load("longrun-clear-enc", tmp_path / "c.pt", "cpu", torch.float32, Model) is kept
    # forgotten, not destroyed: a holder keeps its object; the next request loads the file again
    again = cache.get_or_load("longrun-clear-f0", tmp_path / "a.pt", "cpu", torch.float32, Model)
    assert again is not first and isinstance(first, Model)
    assert cache.get_shared("longrun-clear-f0", tmp_path / "a.pt", "cpu", Model) is not held
    assert cache.load_count("longrun-clear-f0") == 5  # 2 + 1 shared, then 1 + 1 again: counting goes on
    assert cache.clear("no-such-kind") == 0


# ------------------------------------------------------------------ a batch left early


class _SlowTracker:
    """A ``cpu_bound`` F0 plugin (its tracks come from worker processes) that takes ``hold``
    seconds on long inputs and marks in ``folder`` when such a track starts and when it ends."""

    name, sample_rate, hop_length = "slow-on-long", 16000, 160
    cpu_bound = True

    def __init__(self, folder: Path, limit: int, hold: float) -> None:
        self.folder, self.limit, self.hold = folder, limit, hold

    def extract(self, audio: np.ndarray) -> np.ndarray:
        if len(audio) > self.limit:
            (self.folder / f"started-{os.getpid()}").touch()
            time.sleep(self.hold)
            (self.folder / f"finished-{os.getpid()}").touch()
        return np.full(len(audio) // 160 + 1, 200.0)

    def extract_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        return [self.extract(a) for a in audios]


def _wait_for(found: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not found():
        assert time.monotonic() < deadline, "the F0 worker processes never started their tracks"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_closing_a_batch_does_not_wait_for_f0_tracks_nobody_will_use(
    tiny_models, tmp_path: Path, workers: int, two_threads: None, own_tempdir: Path
) -> None:
    """``break`` out of ``iter_batch`` (or Ctrl-C in a notebook, whose signal never reaches the
    pool's processes) waited for every track already handed to an F0 process: with harvest on
    40 s files, closing took 54 s instead of 0.1 s."""
    marks = tmp_path / "marks"
    marks.mkdir()
    short, long_ = (tone(0.3), 16000), (tone(1.5), 16000)
    probe = tiny_models.converter(index=None)
    limit = sum(probe.engine.prepare(*clip).padded.shape[0] for clip in (short, long_)) // 2
    conv = tiny_models.converter(f0=_SlowTracker(marks, limit, hold=2.0), index=None)
    before = _Leftovers()
    it = conv.iter_batch(
        [short, long_, long_], batch_seconds=0.1, decode_workers=1, f0_workers=2, compute_workers=workers
    )
    assert next(it).ok
    _wait_for(lambda: len(list(marks.glob("started-*"))) == 2)
    it.close()
    assert list(marks.glob("finished-*")) == []  # the processes were stopped, not waited for
    before.assert_none()


def test_a_batch_advanced_in_one_thread_and_closed_in_another_leaves_both_counts(tiny_converter, two_threads) -> None:
    """A web framework advances a streamed response's iterator in whatever thread of its pool is
    free (starlette's ``iterate_in_threadpool``) and drops it from another. With compute workers
    the first ``next()`` set its thread's torch thread count to a worker's share, and the close
    put back the count of the thread that closed: the first thread kept one thread for good."""
    pool = ThreadPoolExecutor(1)
    try:
        assert pool.submit(lambda: (torch.set_num_threads(2), torch.get_num_threads())[1]).result() == 2
        it = tiny_converter.iter_batch(_clips(4), batch_seconds=0.1, compute_workers=2)
        assert pool.submit(lambda: next(it).ok).result()
        it.close()  # here, in the main thread
        assert torch.get_num_threads() == 2
        assert pool.submit(torch.get_num_threads).result() == 2  # the thread that advanced it
    finally:
        pool.shutdown()

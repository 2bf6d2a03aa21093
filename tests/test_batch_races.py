"""The batch runner's concurrency and failure paths: every input reported once, in order, no
file lost or left partial, no thread left behind, whatever fails or stops the batch.

No timings: each test holds a stage on an event (with a generous deadline that only a
broken batch would reach) and checks what was reported and what is on disk.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone, two_threads_fixture  # noqa: F401

from rvcfast import batch
from rvcfast.errors import RvcfastError

DEADLINE = 30.0  # seconds a held stage waits at most (a working batch releases it long before)


def _clips(folder: Path, n: int, seconds: float = 0.3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"clip{i}.wav"
        sf.write(path, tone(seconds, freq=150.0 + 20 * i), 16000)
        paths.append(path)
    return paths


def _batch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("rvcfast-")]


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _names(group) -> list[str]:  # type: ignore[no-untyped-def]
    return [Path(str(p.label)).name for p in group]


def _hold(event: threading.Event, also: threading.Event | None = None) -> None:
    """Wait for ``event`` (or ``also``), at most :data:`DEADLINE` seconds."""
    for _ in range(int(DEADLINE * 100)):
        if event.is_set() or (also is not None and also.is_set()):
            return
        event.wait(0.01)


def test_a_later_group_failing_first_still_reports_the_groups_before_it(
    tiny_converter, two_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two compute workers; the second group's engine call fails while the first is still
    computing. The batch raised at once: the first group was cancelled, its file never written
    nor reported, though it came before the failure. It is now converted, written and reported,
    then the failure is raised (in input order)."""
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: False)
    inputs = _clips(tmp_path / "in", 2)
    failed, waited_after = threading.Event(), threading.Event()
    run = tiny_converter.engine.run

    def held(preps, *args, cancel=None, **kwargs):  # type: ignore[no-untyped-def]
        if _names(preps) == ["clip1.wav"]:
            failed.set()
            raise RuntimeError("engine broke on clip1")
        _hold(waited_after, cancel)  # until the batch waits on it after seeing the failure (or stops)
        return run(preps, *args, cancel=cancel, **kwargs)

    wait = cf.wait

    def waiting(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failed.is_set():
            waited_after.set()
        return wait(*args, **kwargs)

    monkeypatch.setattr(tiny_converter.engine, "run", held)
    monkeypatch.setattr(cf, "wait", waiting)
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="engine broke on clip1"):
        for res in tiny_converter.iter_batch(inputs, tmp_path / "out", batch_seconds=0.1, compute_workers=2):
            seen.append(Path(res.source).name)
    assert seen == ["clip0.wav"]
    assert _left_in(tmp_path / "out") == ["clip0.wav"]
    assert not _batch_threads()


def test_a_failing_engine_call_reports_the_files_already_being_written_first(
    tiny_converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker: the first group's file is being written when the second group's engine call
    fails. The error went up at once and the first file, on disk when the batch ended, was
    never reported (a CLI's summary and a caller's list lacked a file the batch had written)."""
    inputs = _clips(tmp_path / "in", 3)
    failed = threading.Event()
    run = tiny_converter.engine.run

    def failing(preps, *args, **kwargs):  # type: ignore[no-untyped-def]
        if _names(preps) == ["clip1.wav"]:
            failed.set()
            raise RuntimeError("engine broke on clip1")
        return run(preps, *args, **kwargs)

    write = batch._write_timed

    def held_write(path, *args):  # type: ignore[no-untyped-def]
        _hold(failed)
        return write(path, *args)

    monkeypatch.setattr(tiny_converter.engine, "run", failing)
    monkeypatch.setattr(batch, "_write_timed", held_write)
    seen: list[str] = []
    counted: list[int] = []
    with pytest.raises(RuntimeError, match="engine broke on clip1"):
        for res in tiny_converter.iter_batch(
            inputs, tmp_path / "out", batch_seconds=0.1, compute_workers=1, progress=lambda r, done, total: counted.append(done)
        ):
            seen.append(Path(res.source).name)
    assert seen == ["clip0.wav"] and counted == [1]
    assert _left_in(tmp_path / "out") == ["clip0.wav"]
    assert not _batch_threads()


class _Broke(Exception):
    pass


def test_a_progress_callback_that_raises_stops_the_batch_naming_it(tiny_converter, tmp_path: Path) -> None:
    """The caller's ``progress`` raising stops the batch with its own exception, now with a note
    naming the callback and the file (the traceback showed only the batch's frames); what was
    written is whole, nothing temporary is left and no thread of the batch runs on."""
    inputs = _clips(tmp_path / "in", 4)

    def progress(res, done, total):  # type: ignore[no-untyped-def]
        if done == 2:
            raise _Broke("my bar broke")

    seen: list[str] = []
    with pytest.raises(_Broke, match="my bar broke") as info:
        for res in tiny_converter.iter_batch(inputs, tmp_path / "out", batch_seconds=0.1, progress=progress):
            seen.append(Path(res.source).name)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "progress callback" in notes and "clip1.wav" in notes and "2 of 4" in notes
    assert seen == ["clip0.wav"]
    left = _left_in(tmp_path / "out")
    assert not [n for n in left if n.endswith(".part")] and "clip0.wav" in left and "clip1.wav" in left
    for name in left:
        assert sf.info(str(tmp_path / "out" / name)).frames > 0  # each written file whole
    assert not _batch_threads()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_audio_progress_callback_that_raises_stops_the_batch_naming_it(
    tiny_converter, two_threads, tmp_path: Path, workers: int
) -> None:
    """``audio_progress`` runs in the compute threads: its exception reached the caller from a
    worker with no word of where it came from. It now names the callback and the input."""
    inputs = _clips(tmp_path / "in", 3)

    def audio_progress(index, seconds):  # type: ignore[no-untyped-def]
        if index == 1:
            raise _Broke("my meter broke")

    with pytest.raises(_Broke, match="my meter broke") as info:
        list(tiny_converter.iter_batch(inputs, tmp_path / "out", batch_seconds=0.1, compute_workers=workers,
                                       audio_progress=audio_progress))
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "audio_progress callback" in notes and "clip1.wav" in notes
    assert not [n for n in _left_in(tmp_path / "out") if n.endswith(".part")]
    assert not _batch_threads()


def test_stop_on_error_with_a_write_failure_and_a_decode_failure_in_one_group(
    tiny_converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``on_error="stop"``: the first file's write fails and a later input cannot be decoded. The
    error raised is the first file's (input order), nothing after it is written, nothing is left
    half-written, and no input is reported twice."""
    inputs = _clips(tmp_path / "in", 2)
    broken = tmp_path / "in" / "clip2.wav"
    broken.write_bytes(b"RIFF....WAVEfmt nonsense")
    write = batch._write_timed

    def failing_first(path, *args):  # type: ignore[no-untyped-def]
        if path.name == "clip0.wav":
            raise OSError(28, "No space left on device")
        return write(path, *args)

    monkeypatch.setattr(batch, "_write_timed", failing_first)
    seen: list[str] = []
    with pytest.raises(RvcfastError, match="clip0.wav") as info:
        for res in tiny_converter.iter_batch([*inputs, broken], tmp_path / "out", on_error="stop", batch_seconds=30.0):
            seen.append(res.source)
    assert "No space left" in str(info.value)
    assert seen == [] and _left_in(tmp_path / "out") == []
    assert not _batch_threads()


def test_closing_the_iterator_while_a_write_is_running_leaves_only_whole_files(
    tiny_converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller stops reading (``close()``, a ``break``) while an output is being encoded: that
    write finishes (a whole file, never a temporary one), no later file is started, and the
    batch's threads end."""
    inputs = _clips(tmp_path / "in", 4)
    writing, may_finish = threading.Event(), threading.Event()
    write = batch._write_timed

    def held(path, *args):  # type: ignore[no-untyped-def]
        if path.name == "clip0.wav":  # the first result comes once clip1's write is running
            _hold(writing)  # (else a slow machine yielded it first and clip1 waited on the caller)
        if path.name == "clip1.wav":
            writing.set()
            _hold(may_finish)
        return write(path, *args)

    monkeypatch.setattr(batch, "_write_timed", held)
    it = tiny_converter.iter_batch(inputs, tmp_path / "out", batch_seconds=0.1, write_workers=2)
    first = next(it)
    assert first.ok
    assert writing.wait(DEADLINE)
    closer = threading.Thread(target=it.close)
    closer.start()
    may_finish.set()
    closer.join(DEADLINE)
    assert not closer.is_alive()
    left = _left_in(tmp_path / "out")
    assert not [n for n in left if n.endswith(".part")] and {"clip0.wav", "clip1.wav"} <= set(left)
    for name in left:
        assert sf.info(str(tmp_path / "out" / name)).frames > 0
    assert not _batch_threads()


def test_a_dropped_iterator_ends_its_threads(tiny_converter, two_threads, tmp_path: Path) -> None:
    """An iterator read part way and then dropped (garbage collected, never closed): its pools are
    shut down and its outputs are whole."""
    inputs = _clips(tmp_path / "in", 5)
    it = tiny_converter.iter_batch(inputs, tmp_path / "out", batch_seconds=0.1, compute_workers=2)
    assert next(it).ok
    del it
    gc.collect()
    assert not _batch_threads()
    assert not [n for n in _left_in(tmp_path / "out") if n.endswith(".part")]


def test_ctrl_c_in_the_middle_of_a_batch_leaves_no_partial_file(
    tiny_converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt while the engine runs the second group (the first group's write still
    going): the interrupt goes up, the first output is whole, nothing temporary is left, the
    batch's threads end."""
    inputs = _clips(tmp_path / "in", 3)
    interrupted = threading.Event()
    run = tiny_converter.engine.run

    def interrupting(preps, *args, **kwargs):  # type: ignore[no-untyped-def]
        if _names(preps) == ["clip1.wav"]:
            interrupted.set()
            raise KeyboardInterrupt
        return run(preps, *args, **kwargs)

    write = batch._write_timed

    def held(path, *args):  # type: ignore[no-untyped-def]
        _hold(interrupted)
        return write(path, *args)

    monkeypatch.setattr(tiny_converter.engine, "run", interrupting)
    monkeypatch.setattr(batch, "_write_timed", held)
    with pytest.raises(KeyboardInterrupt):
        list(tiny_converter.iter_batch(inputs, tmp_path / "out", batch_seconds=0.1, compute_workers=1))
    assert _left_in(tmp_path / "out") == ["clip0.wav"]
    assert sf.info(str(tmp_path / "out" / "clip0.wav")).frames > 0
    assert not _batch_threads()


def test_a_progress_callback_may_convert_with_the_same_converter(tiny_converter, two_threads, tmp_path: Path) -> None:
    """A caller's progress callback that uses the converter itself (a preview of each file) while
    the batch's workers use its engine: every input reported once, in order."""
    inputs = _clips(tmp_path / "in", 4)
    previews: list[int] = []

    def progress(res, done, total):  # type: ignore[no-untyped-def]
        previews.append(tiny_converter.convert(tone(0.2), 16000).audio.shape[0])

    results = list(tiny_converter.iter_batch(inputs, tmp_path / "out", batch_seconds=0.1, compute_workers=2, progress=progress))
    assert [Path(r.source).name for r in results] == [p.name for p in inputs]
    assert len(previews) == 4 and all(n > 0 for n in previews)
    assert _left_in(tmp_path / "out") == [p.name for p in inputs]


def test_a_generator_of_inputs_is_read_once(tiny_converter, tmp_path: Path) -> None:
    """Inputs given as a generator: each item is taken once, each input converted and reported once."""
    inputs = _clips(tmp_path / "in", 3)
    taken: list[str] = []

    def gen():  # type: ignore[no-untyped-def]
        for p in inputs:
            taken.append(p.name)
            yield p

    results = tiny_converter.convert_batch(gen(), tmp_path / "out", batch_seconds=0.1)
    assert taken == [p.name for p in inputs]
    assert sorted(Path(r.source).name for r in results) == [p.name for p in inputs]
    assert [r.index for r in results] == [0, 1, 2]


class _HeldF0:
    """A ``cpu_bound`` F0 plugin that, once the file ``hold`` exists, takes its time (until the
    file ``release`` exists, at most :data:`DEADLINE` seconds), saying so in the file ``busy``."""

    name, sample_rate, hop_length = "held", 16000, 160
    cpu_bound = True

    def __init__(self, folder: Path) -> None:
        self.hold, self.release, self.busy = folder / "hold", folder / "release", folder / "busy"

    def extract(self, audio: np.ndarray) -> np.ndarray:
        if self.hold.exists():
            self.busy.touch()
            ready = threading.Event()
            for _ in range(int(DEADLINE * 100)):
                if self.release.exists():
                    break
                ready.wait(0.01)
        return np.full(len(audio) // 160 + 1, 200.0)


def test_stopping_the_f0_pool_ends_a_track_computed_again_alone(tmp_path: Path) -> None:
    """After a worker process died, each input that was in the dead pool is tracked again in a
    process of its own. Stopping the pool (a batch left early: ``break``, Ctrl-C) ended only the
    pool's own workers: closing the batch then waited for that lone track to finish (minutes
    for a long file with harvest). That process is now ended too, its input reported as stopped."""
    from concurrent.futures.process import BrokenProcessPool

    from helpers import child_processes

    from rvcfast.f0_pool import F0Pool

    plugin = _HeldF0(tmp_path)
    pool = F0Pool(plugin, 1)
    padded = np.zeros(16000, np.float32)
    try:
        assert pool.submit(padded).result(DEADLINE).shape[0] > 0  # a worker started, then:
        plugin.hold.touch()
        lost: cf.Future = cf.Future()
        lost.set_exception(BrokenProcessPool("a worker process died"))  # the input was in the dead pool
        got: list[object] = []
        alone = threading.Thread(target=lambda: got.append(pool.track(lost, "clip.wav", padded, threading.Event())))
        alone.start()
        for _ in range(int(DEADLINE * 100)):
            if plugin.busy.exists():
                break
            alone.join(0.01)
        assert plugin.busy.exists()  # it is being tracked again, in its own process
        pool.stop()
        alone.join(DEADLINE)
        assert not alone.is_alive()
        assert len(got) == 1 and isinstance(got[0], RvcfastError), got
        assert "clip.wav" in str(got[0]) and "stopped" in str(got[0])
        assert not plugin.release.exists()  # ended, not let go
        assert child_processes() == []
    finally:
        plugin.release.touch()
        pool.shutdown()


def test_a_batch_closed_in_one_of_its_own_threads_stops_every_pool(tiny_converter, tmp_path: Path) -> None:
    """The gc can free a reference cycle holding the batch's iterator in any thread, one of the
    batch's own too: its close() then joined that thread itself (RuntimeError) and left the other
    pools running."""
    from rvcfast.params import ConversionParams

    inputs = _clips(tmp_path / "in", 4)
    options = batch.BatchOptions(out_dir=tmp_path / "out", batch_seconds=0.1)
    it = batch.run_batch(tiny_converter.engine, inputs, ConversionParams(noise=False), options)
    first = next(it)
    assert first.ok
    run = it.gi_frame.f_locals["self"]  # the _BatchRun behind the iterator
    run.decode_pool.submit(it.close).result(DEADLINE)  # no RuntimeError: cannot join current thread
    for _ in range(int(DEADLINE * 100)):
        if not _batch_threads():
            break
        threading.Event().wait(0.01)
    assert not _batch_threads()
    assert not [n for n in _left_in(tmp_path / "out") if n.endswith(".part")]
    for name in _left_in(tmp_path / "out"):
        assert sf.info(tmp_path / "out" / name).frames > 0  # what was written is whole


def test_array_inputs_are_let_go_of_once_decoded(tiny_converter, tmp_path: Path) -> None:
    """Every input array stayed referenced by the batch until its end: a generator of long
    recordings held them all for the whole batch, not only while each was converted."""
    import tracemalloc

    n, seconds = 6, 20.0
    size = int(seconds * 16000) * 4  # bytes of one recording (float32)

    def recordings():
        for i in range(n):
            yield (0.3 * np.sin(np.arange(int(seconds * 16000), dtype=np.float32) * (0.05 + 0.01 * i)), 16000)

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        held = []
        for res in tiny_converter.iter_batch(recordings(), tmp_path / "out", batch_seconds=0.1, noise=False):
            assert res.ok, res.error
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    # planning reads the generator whole (all n recordings at first); by the last result the
    # decoded ones are gone, not n of them still held
    assert held[-1] < 2.5 * size, [round(h / size, 2) for h in held]

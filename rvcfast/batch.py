"""The file scheduler behind :meth:`Converter.convert_batch` and :meth:`Converter.iter_batch`.

It feeds an :class:`~rvcfast.engine.Engine` (which does all the conversion work) and
takes care of files:

1. **Load once.** The engine holds the voice model and index; the content encoder
   and F0 model come from the process-wide cache.
2. **Overlap.** Decoding, resampling, high-pass and split-point search of upcoming
   files (:meth:`Engine.prepare`) run in a thread pool while the models compute;
   finished files are encoded and written by another pool. F0 backends that declare
   ``cpu_bound`` (harvest, dio, pm, or a plugin) run in a process pool next to the decoders
   (:mod:`rvcfast.f0_pool`).
3. **Batch across files.** Files are grouped up to ``batch_seconds`` of audio and
   handed to :meth:`Engine.run` together: one F0 call, and every segment of every file
   packed by length through the encoder and synthesizer.
4. **Independent results.** The engine's output for a file does not depend on what
   it was batched with.
5. **Compute workers** (``compute_workers > 1``, or what ``rvcfast tune`` measured): that
   many groups go through the engine at once, each in its own thread with an equal share
   of torch's intra-op threads (set in its own thread: the caller's is not changed); a worker that finishes
   takes the next group at once, and a finished group's files are written at once.
   Operations on fewer threads each waste less on synchronisation: on 2 Zen 4 cores, two
   workers of one thread took batch12 in 0.92-0.98x (float32) and 0.96x (bfloat16) the time of
   one worker of two threads, for ~200-290 MiB more peak memory. The last group waits for
   the running ones and then takes every thread when they are nearly done. There are never
   more workers than files, and on a CPU the workers divide torch's thread count evenly
   (2 of 3 threads would leave one idle: then one worker), each with at least one thread.

Results are reported in input order, except that a file skipped or failed before it
reached the networks is reported as soon as it is found. An exception the engine raises for
a group (not a file's own error) is raised in that group's turn: every file before it is
written and reported first, even when a compute worker behind it failed sooner; so is every
file behind it already handed to the writers (a group finished out of turn), and none behind
it is written once the failure is seen. An exception from the caller's ``progress`` or
``audio_progress`` stops the batch, with a note naming it. A batch the caller stops
(``break``, Ctrl-C, its ``progress`` raising) finishes the write under way (a whole file) and
starts no other.

Writes are atomic (temporary file in the output folder, then rename), never
overwrite an input, and a failing file is reported in its :class:`~rvcfast.api.Result`
while the others carry on (unless ``on_error="stop"``).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .batch_inputs import (
    AUDIO_EXTENSIONS,
    BatchInput,
    BatchOptions,
    Job,
    expand_inputs,
    pitch_text,
)
from .batch_workers import group_is_full, split_groups, usable_workers  # noqa: F401 - also imported from here
from .constants import SR_16K
from .errors import ParameterError, RvcfastError
from .f0_pool import F0Pool
from .params import ConversionParams
from .pipeline import PreparedAudio
from .result import Result
from .writing import (
    check_windows_output,
    finished_output,
    remove_stale_parts,
    windows_long_paths,
    write_audio_atomic,
)

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["BatchOptions", "Job", "expand_inputs", "run_batch", "AUDIO_EXTENSIONS", "BatchSummary"]

ProgressCallback = Callable[[Result, int, int], None]
#: ``audio_progress(index, seconds)``: input number ``index`` (its Result's ``index``) has
#: ``seconds`` of its audio through the models so far (called from the compute threads):
#: ``Engine.run``'s ``on_progress`` fraction times the input's seconds, so a long input's F0
#: blocks (RMVPE) count as the first fifth of its audio (see :mod:`rvcfast.engine_progress`).
AudioProgressCallback = Callable[[int, float], None]


@dataclass
class BatchSummary:
    """Totals of a batch run: files, seconds of audio converted (failed and skipped files'
    audio is not counted), stage timings summed over files."""

    files: int = 0
    failed: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        """Count one Result: a file, a failure or a skip; a converted file's output seconds and stage timings."""
        self.files += 1
        if result.error is not None:
            self.failed += 1
        if result.skipped:
            self.skipped += 1
        if result.error is None and not result.skipped:
            self.audio_seconds += result.input_seconds
        for k, v in result.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v

    def table(self) -> str:
        """The summary as plain text: a table of stage times (seconds and share of the summed
        stage time) when a file was converted -- none otherwise: it would be empty, or hold only
        the failed files' decoding -- then one line of totals (``1 file``, ``3 files``)."""
        lines: list[str] = []
        if self.files - self.failed - self.skipped > 0 and self.timings:
            total = sum(self.timings.values()) or 1.0
            lines.append(f"{'stage':<10} {'seconds':>9} {'share':>7}")
            for k, v in sorted(self.timings.items(), key=lambda kv: -kv[1]):
                lines.append(f"{k:<10} {v:9.3f} {100 * v / total:6.1f}%")
        speed = f"real-time factor {self.wall_seconds / self.audio_seconds:.3f}" if self.audio_seconds else "no audio converted"
        files = f"{self.files} file{'' if self.files == 1 else 's'}"
        lines.append(
            f"{files} ({self.failed} failed, {self.skipped} skipped), {self.audio_seconds:.1f} s of audio "
            f"in {self.wall_seconds:.1f} s ({speed})"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run


def _stop_error(dec: _Decoded) -> RvcfastError:
    """The error ``on_error="stop"`` raises for a file that failed to decode: rvcfast's own error
    itself when it names the file (an :class:`~rvcfast.errors.AudioError` stays one), else an
    :class:`~rvcfast.errors.RvcfastError` naming it, caused by the original."""
    if isinstance(dec.exc, RvcfastError) and str(dec.exc) == dec.error:
        return dec.exc
    err = RvcfastError(dec.error)
    err.__cause__ = dec.exc
    return err


def _blame_callback(exc: BaseException, name: str, during: str) -> None:
    """Add to ``exc``, raised by the caller's ``name`` callback, a note naming the callback (its
    traceback otherwise showed only the batch's frames above the caller's code): the batch stops
    with it (Python 3.11+; on 3.10 the exception goes on as it is)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(f"raised by the batch's {name} callback ({during}); the batch was stopped")


def _error_text(label: str, exc: BaseException) -> str:
    if isinstance(exc, RvcfastError):
        text = str(exc)
        return text if label in text else f"{label}: {text}"
    return f"{label}: {type(exc).__name__}: {exc}"


@dataclass
class _Computed:
    preps: list[PreparedAudio]
    results: list[Result]
    f0_in_pool: bool
    f0_wait: float
    seconds: float


@dataclass
class _Decoded:
    job: Job
    prep: PreparedAudio | None
    decode_seconds: float
    error: str | None = None
    skipped: bool = False
    f0: Any = None  # Futures of the process pool, one per channel
    exc: BaseException | None = None  # what decoding raised (on_error="stop" raises it again)


@dataclass
class _InFlight:
    """A group handed to a compute worker; ``entries`` once its writes have started (see
    :meth:`_BatchRun._start_writes`), after which the group's decoded audio is let go."""

    group: list[_Decoded]
    future: cf.Future[_Computed]
    start: float
    entries: list[tuple[Result, cf.Future[float] | None]] | None = None


def _failed(future: cf.Future[Any]) -> bool:
    """Whether a compute worker's group raised (the engine's error, raised in the group's turn)."""
    return future.done() and not future.cancelled() and future.exception() is not None


#: The names of a batch's own threads (:class:`concurrent.futures.ThreadPoolExecutor` prefixes).
_POOL_THREADS = ("rvcfast-decode", "rvcfast-write", "rvcfast-compute")


class _BatchRun:
    """One batch: decode pool → groups through the engine → write pool, results yielded in input order."""

    def __init__(
        self,
        engine: Engine,
        jobs: list[Job],
        params: ConversionParams,
        options: BatchOptions,
        progress: ProgressCallback | None,
        workers: int = 1,
        audio_progress: AudioProgressCallback | None = None,
    ) -> None:
        self.engine, self.jobs, self.params, self.options, self.progress = engine, jobs, params, options, progress
        self.audio_progress = audio_progress
        self.total, self.done = len(jobs), 0
        self.batch_samples = int(float(options.batch_seconds or engine.batch_seconds) * SR_16K)
        self.extractor = engine.f0_extractor_for(params)
        cpu_bound = self.extractor is not None and bool(getattr(self.extractor, "cpu_bound", False))
        self.decode_pool = cf.ThreadPoolExecutor(max_workers=options.decode_workers, thread_name_prefix=_POOL_THREADS[0])
        # on_error="stop": files are written one after another, and none after a failed write
        stop = options.on_error == "stop"
        self.write_pool = cf.ThreadPoolExecutor(max_workers=1 if stop else options.write_workers, thread_name_prefix=_POOL_THREADS[1])
        self.write_failed = threading.Event() if stop else None
        self.f0_pool = F0Pool(self.extractor, options.f0_workers) if cpu_bound else None
        self.workers = usable_workers(workers, len(jobs), engine.device.type)
        # groups in the engine at once; with one worker the engine runs in the caller's thread
        self.compute_pool = (
            cf.ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix=_POOL_THREADS[2], initializer=self._worker_threads
            )
            if self.workers > 1
            else None
        )
        self.stop = threading.Event()  # set on close: groups still on a worker stop at the engine's next check
        self.finished = False  # every result reported (close then has no F0 work to drop)
        self.inflight: deque[_InFlight] = deque()  # groups on the workers, oldest first
        self.durations: list[float] = []  # seconds of the groups finished on a worker
        self.saved_threads: int | None = None
        # on_error="stop": a file that failed before the engine; or what its decoding raised (the F0 pool that
        # could not start): raised once the files before it are reported
        self.stop_error: Exception | None = None
        self.halted = False  # on_error="stop": a computed group had a failed file, later groups are not written
        self.parallel = self.compute_pool is not None
        self.pending: deque[cf.Future[_Decoded]] = deque()
        self.writes: deque[tuple[Result, cf.Future[float]]] = deque()
        self.write_groups: deque[list[cf.Future[float]]] = deque()  # each computed group's, see _writes_behind
        self.job_iter = iter(jobs)
        self.prefetch = max(4, 2 * options.decode_workers)

    # ---------------------------------------------------------------- producing

    def _decode(self, job: Job) -> _Decoded:
        t0 = time.perf_counter()
        if self.options.skip_existing and job.out_path is not None and finished_output(job.out_path):
            return _Decoded(job, None, 0.0, skipped=True)  # its output is there: nothing is decoded
        if job.problem is not None:  # its output cannot be written (a name Windows refuses): not converted
            return _Decoded(job, None, 0.0, error=job.problem, exc=RvcfastError(job.problem))
        try:
            if job.path is not None:
                prep = self.engine.prepare(job.path, params=self.params)
            else:
                assert job.array is not None  # expand_inputs gives every job a path or an array
                prep = self.engine.prepare(job.array, job.rate, name=job.label, params=self.params)
                job.array = None  # decoded: the batch no longer holds the caller's samples
        except Exception as exc:  # noqa: BLE001 - reported per file, the batch carries on
            return _Decoded(job, None, time.perf_counter() - t0, error=_error_text(job.label, exc), exc=exc)
        dec = _Decoded(job, prep, time.perf_counter() - t0)
        if self.f0_pool is not None:  # every channel's track (channels="each") on the pool
            dec.f0 = [self.f0_pool.submit(c.padded) for c in (prep, *prep.more_channels)]
        return dec

    def _submit_more(self) -> None:
        while len(self.pending) < self.prefetch:
            job = next(self.job_iter, None)
            if job is None:
                return
            # skip_existing: each output is looked at in the decode threads too, not one by one here
            self.pending.append(self.decode_pool.submit(self._decode, job))

    def _result(
        self, job: Job, timings: dict[str, float], *, error: str | None = None, skipped: bool = False,
        exception: BaseException | None = None,
    ) -> Result:
        """A result without audio: a failed file, or a skipped one (its existing output's path)."""
        out = str(job.out_path) if skipped and job.out_path is not None else None
        return Result(
            np.zeros(0, np.float32), self.engine.sample_rate, timings, job.label,
            output_path=out, error=error, skipped=skipped, index=job.number, exception=exception,
        )

    # ---------------------------------------------------------------- consuming

    def _emit(self, res: Result) -> Iterator[Result]:
        yield from self._drain_writes(block=True)
        yield from self._report(res)

    def _report(self, res: Result) -> Iterator[Result]:
        self.done += 1
        if self.progress:
            try:
                self.progress(res, self.done, self.total)
            except Exception as exc:
                _blame_callback(exc, "progress", f"file {self.done} of {self.total}, {res.source}")
                raise
        yield res

    def _drain_writes(self, block: bool) -> Iterator[Result]:
        while self.writes and (block or self.writes[0][1].done()):
            res, fut = self.writes.popleft()
            try:
                res.timings["write"] = fut.result()
            except Exception as exc:  # noqa: BLE001
                res.error = f"{res.source}: writing {res.output_path} failed: {type(exc).__name__}: {exc}"
                res.exception, res.output_path = exc, None
                if self.options.on_error == "stop":
                    raise RvcfastError(res.error) from exc
            yield from self._report(res)

    def _fill_group(self, group: list[_Decoded]) -> Iterator[Result]:
        """Add decoded files to ``group`` up to ``batch_seconds`` of audio; a file that ends early
        (skipped, failed to decode) is reported as it is found, not once the group is full (a
        resumed batch of thousands of finished files showed nothing until its end).

        With ``on_error="stop"`` a file that failed to decode ends the group (its error is
        :attr:`stop_error`, raised once the files before it are reported), and so does an error
        :meth:`_decode` does not keep to its file (an F0 pool whose processes cannot start), in any
        ``on_error`` mode: the groups before it on the workers are finished and reported first."""
        samples = 0
        while self.pending and not group_is_full(len(group), samples, self.batch_samples):
            try:
                dec = self.pending.popleft().result()
            except Exception as exc:  # noqa: BLE001 - raised in its turn (results)
                self.stop_error = exc
                break
            self._submit_more()
            if dec.skipped:
                yield from self._emit(self._result(dec.job, {}, skipped=True))
            elif dec.error is not None or dec.prep is None:
                if self.options.on_error == "stop":
                    # the files before it are still converted, written and reported; then this error
                    self.stop_error = _stop_error(dec)
                    break
                yield from self._emit(self._result(dec.job, {"decode": dec.decode_seconds}, error=dec.error, exception=dec.exc))
            else:
                group.append(dec)
                samples += dec.prep.padded.shape[0] * dec.prep.n_channels

    def _f0_tracks(self, group: list[_Decoded]) -> tuple[list[Any] | None, float]:
        if self.f0_pool is None:
            return None, 0.0
        t0 = time.perf_counter()
        tracks: list[Any] = []
        for d in group:
            assert d.prep is not None
            found: list[Any] = []
            for future, channel in zip(d.f0, (d.prep, *d.prep.more_channels)):
                found.append(self.f0_pool.track(future, d.job.label, channel.padded, self.stop))
            tracks.append(found[0] if len(found) == 1 else tuple(found))
        return tracks, time.perf_counter() - t0

    def _compute(self, group: list[_Decoded]) -> _Computed:
        """The engine's work for one group (in a compute worker when there are several)."""
        t0 = time.perf_counter()
        preps = [d.prep for d in group if d.prep is not None]
        tracks, f0_wait = self._f0_tracks(group)
        results = self.engine.run(
            preps, self.params, f0=tracks, batch_seconds=self.options.batch_seconds, cancel=self.stop,
            on_progress=self._on_progress([d.job.number for d in group if d.prep is not None], preps),
        )
        return _Computed(preps, results, tracks is not None, f0_wait, time.perf_counter() - t0)

    def _on_progress(self, numbers: list[int], preps: list[PreparedAudio]) -> Callable[[int, float], None] | None:
        """The engine's ``on_progress`` for one group: each input's fraction as seconds of its audio
        (F0 blocks included: :data:`~rvcfast.engine_progress.F0_PROGRESS_SHARE` of a long input's)."""
        report = self.audio_progress
        if report is None:
            return None
        seconds = [p.seconds for p in preps]

        def on_progress(k: int, fraction: float) -> None:
            try:
                report(numbers[k], fraction * seconds[k])
            except Exception as exc:
                _blame_callback(exc, "audio_progress", f"input index {numbers[k]}, {preps[k].label}")
                raise

        return on_progress

    def _start_writes(self, group: list[_Decoded], done: _Computed) -> list[tuple[Result, cf.Future[float] | None]]:
        """Timings of one computed group and its files' writes, started now; the results, each
        with its write (``None``: nothing to write), to be reported by :meth:`_report_group`.
        With ``on_error="stop"`` nothing after a failed file is written."""
        share = np.array([p.padded.shape[0] for p in done.preps], dtype=np.float64)
        share /= share.sum()
        entries: list[tuple[Result, cf.Future[float] | None]] = []
        stopping = False
        for d, res, w in zip(group, done.results, share):
            res.index = d.job.number
            res.source = d.job.label
            res.timings = {"decode": d.decode_seconds, **res.timings}
            if done.f0_in_pool:
                res.timings["f0"] = res.timings.get("f0", 0.0) + done.f0_wait * float(w)
            stopping = stopping or (res.error is not None and self.options.on_error == "stop")
            if res.error is None and d.job.out_path is not None and not stopping:
                res.output_path = str(d.job.out_path)
                audio = res.audio
                if not self.options.keep_audio:
                    res.audio = np.zeros(0, np.float32)
                entries.append((res, self.write_pool.submit(self._write, d.job.out_path, audio, res.sample_rate, d.job.path)))
            else:
                entries.append((res, None))
        self.write_groups.append([w for _, w in entries if w is not None])
        return entries

    def _write(self, path: Path, audio: np.ndarray, rate: int, source: Path | None) -> float:
        """Write one output (on the write pool), recording its ``source`` file; its seconds.
        With ``on_error="stop"`` nothing is written after a write has failed; nothing at all
        once the batch is closed early (:meth:`close`)."""
        if self.stop.is_set():
            raise RvcfastError(f"{path}: not written, the batch was stopped")
        if self.write_failed is not None and self.write_failed.is_set():
            raise RvcfastError("not written: an earlier file's write failed")
        try:
            return _write_timed(path, audio, rate, self.options, source)
        except BaseException:
            if self.write_failed is not None:
                self.write_failed.set()
            raise

    def _report_group(self, entries: list[tuple[Result, cf.Future[float] | None]]) -> Iterator[Result]:
        """The results of one group, in order: each written file once its write is done."""
        yield from self._drain_writes(block=False)
        for res, write in entries:
            if write is not None:
                self.writes.append((res, write))
                continue
            if res.error is not None and self.options.on_error == "stop":
                yield from self._drain_writes(block=True)  # the files before it: on disk and reported
                raise RvcfastError(res.error)
            yield from self._emit(res)
        yield from self._drain_writes(block=False)

    def _split_threads(self) -> None:
        """Note (``saved_threads``) the caller's intra-op thread count, which the compute workers share equally, each
        setting its own (:meth:`_worker_threads`). The caller's count is left as it is: the
        batch's iterator may be advanced and closed from different threads (a web framework's
        thread pool), and a count set in one of them was never put back there."""
        if self.compute_pool is None or self.engine.device.type != "cpu":
            return
        import torch

        self.saved_threads = torch.get_num_threads()

    def _share(self) -> int:
        """Each compute worker's intra-op threads: the caller's count split evenly."""
        assert self.saved_threads is not None
        return max(1, self.saved_threads // self.workers)

    def _worker_threads(self) -> None:
        """A compute worker's first act: its own share of the threads. (A thread otherwise takes
        torch's shared count at its first parallel operation, which another worker may have
        changed for a moment: RMVPE's BiGRU runs its directions on one thread each.)"""
        if self.engine.device.type == "cpu" and self.saved_threads is not None:
            from .runtime import set_thread_count

            set_thread_count(self._share())

    def _wait_for_last(self) -> bool:
        """Whether the last group should wait for the running ones and then take every thread.

        On one worker's share of the threads the last group takes about a typical group's
        time ``g`` (the median so far); after the running groups, on all the threads, about
        ``g / workers``. Waiting wins when the running groups are less than ``g * (1 - 1/workers)``
        from done (as estimated from their start times).
        """
        running = [g for g in self.inflight if not g.future.done()]
        if not running:
            return True  # every core is free: all of them for the last group
        durations = list(self.durations)
        for g in self.inflight:
            if g.entries is None and g.future.done():
                try:
                    durations.append(g.future.result().seconds)
                except Exception:  # noqa: BLE001 - a failed group: its error is raised in its turn
                    continue
        if not durations:
            # Nothing has finished: every group so far went straight to a worker (there are no
            # more groups than workers), so the running ones started about when this one did.
            return False
        typical = float(np.median(durations))
        now = time.perf_counter()
        left = max(typical - (now - g.start) for g in running)
        return left < typical * (1.0 - 1.0 / self.workers)

    def _start_finished_writes(self) -> None:
        """Start the writes of every group a worker has finished, whatever its place in line:
        its files are on disk as soon as they can be, and its decoded audio is let go.

        None behind a group the engine failed for (raised in its turn: the batch stops there).
        With ``on_error="stop"`` groups are written in input order, and none after a group
        with a failed file: nothing after the file that stops the batch is written."""
        stop = self.options.on_error == "stop"
        for g in self.inflight:
            if g.entries is not None:
                continue
            if _failed(g.future):
                return
            if not g.future.done() or self.halted:
                if stop:
                    return
                continue
            done = g.future.result()
            self.durations.append(done.seconds)
            g.entries = self._start_writes(g.group, done)
            g.group = []
            self.halted = stop and any(r.error is not None for r in done.results)

    def _finish_oldest(self) -> Iterator[Result]:
        g = self.inflight[0]
        if g.entries is None:
            try:
                g.future.result()  # wait for it
            except Exception:
                # the engine failed for this group: every file before it is reported first, and
                # so is every file behind it already handed to the writers (out of turn)
                yield from self._drain_writes(block=True)
                yield from self._report_written_behind()
                raise
            self._start_finished_writes()
        self.inflight.popleft()  # the oldest group: results stay in order
        assert g.entries is not None
        yield from self._report_group(g.entries)

    def _report_written_behind(self) -> Iterator[Result]:
        """Before the oldest group's engine failure is raised: the groups behind it whose writes
        had started (finished out of turn, before the failure was seen), each file once it is
        on disk. They were written when the batch closed but never reported: an output the
        caller was not told of (a resume took it for another run's)."""
        for g in list(self.inflight)[1:]:
            if g.entries is not None:
                entries, g.entries = g.entries, []
                yield from self._report_group(entries)
        yield from self._drain_writes(block=True)

    def results(self) -> Iterator[Result]:
        try:
            self._split_threads()
            self._submit_more()
            while self.pending or self.inflight:
                self._start_finished_writes()
                yield from self._drain_writes(block=False)  # files on disk since the last turn
                while self.inflight and self.inflight[0].future.done():  # report in order
                    yield from self._finish_oldest()
                running = [g.future for g in self.inflight if not g.future.done()]
                behind = self._writes_behind()
                failing = any(_failed(g.future) for g in self.inflight)  # raised once the groups before it are reported
                take = not self.halted and not failing and (not self.parallel or len(running) < self.workers)
                if self.pending and take and not behind:
                    yield from self._take_group()
                    if self.stop_error is not None:  # every file before the bad one first
                        while self.inflight:
                            yield from self._finish_oldest()
                        yield from self._drain_writes(block=True)
                        raise self.stop_error
                    continue
                wake = self._wake_on() + behind
                if self.writes:
                    wake.append(self.writes[0][1])
                if wake:
                    cf.wait(wake, return_when=cf.FIRST_COMPLETED)
            yield from self._drain_writes(block=True)
            self.finished = True
        finally:
            self.close()

    def _take_group(self) -> Iterator[Result]:
        """Form the next group and start it (on a compute worker, or here); report files that ended early."""
        group: list[_Decoded] = []
        yield from self._fill_group(group)
        if not group:
            return
        if self.parallel and not self.pending and self._wait_for_last():
            # The last group: on a worker's share of the threads it would finish
            # long after the others, the other cores idle. The running groups are
            # nearly done: let them finish, then run it here on every thread.
            while self.inflight:
                yield from self._finish_oldest()
            self.parallel = False
        if self.parallel:
            assert self.compute_pool is not None
            future = self.compute_pool.submit(self._compute, group)
            self.inflight.append(_InFlight(group, future, time.perf_counter()))
        else:
            try:
                done = self._compute(group)
            except Exception:
                yield from self._drain_writes(block=True)  # the files before this group: on disk and reported
                raise
            yield from self._report_group(self._start_writes(group, done))

    def _writes_behind(self) -> list[cf.Future[float]]:
        """The writes to wait for before another group goes to the engine: the oldest computed
        group's, once more groups than write (or compute) workers wait to be written. (A fast
        engine and a slow encoder or disk held every output of the batch in memory.)"""
        while self.write_groups and all(w.done() for w in self.write_groups[0]):
            self.write_groups.popleft()
        if len(self.write_groups) <= max(self.workers, self.options.write_workers):
            return []
        return [w for w in self.write_groups[0] if not w.done()]

    def _wake_on(self) -> list[cf.Future[Any]]:
        """What to wait for: a group finishing (a worker that finishes before the oldest group gets
        the next group at once). A group that finished since the checks above is in the list too,
        so the wait returns at once rather than leave it unwritten behind a slow group; except
        one behind a failed group (never written) and, with ``on_error="stop"``, one held back
        behind an earlier group (its writes wait for that)."""
        waiting: list[_InFlight] = []
        for g in self.inflight:
            if _failed(g.future):
                break
            if g.entries is None:
                waiting.append(g)
        if self.options.on_error != "stop":
            return [g.future for g in waiting]
        wake = [g.future for g in waiting if not g.future.done()]
        if waiting and waiting[0].future.done() and not self.halted:
            wake.append(waiting[0].future)
        return wake

    def close(self) -> None:
        """Stop (the caller left early, an error, Ctrl-C) or tidy up after the last result.

        Groups still on a compute worker stop at the engine's next check (about one
        decoder window) and their files are not written; a write under way completes (a
        whole file) and no queued write starts: nothing is written that the caller is not told
        of, but that one file.
        """
        self.stop.set()
        for fut in self.pending:
            fut.cancel()
        # closed in one of this run's own threads (the gc freeing a reference cycle that held the
        # iterator there): waiting for the pools would join that thread itself, a RuntimeError
        # that left the other pools running
        wait = not threading.current_thread().name.startswith(_POOL_THREADS)
        if self.f0_pool is not None and not self.finished:
            # left early: the tracks being computed are for files nobody will convert, and a
            # compute worker may be waiting for one (the decoders first: they submit tracks)
            self.decode_pool.shutdown(wait=wait, cancel_futures=True)
            self.f0_pool.stop()
        if self.compute_pool is not None:
            self.compute_pool.shutdown(wait=wait, cancel_futures=True)
            # it holds self._worker_threads, a cycle that kept this run (its engine and inputs) until a full gc
            self.compute_pool = None
        self.decode_pool.shutdown(wait=wait, cancel_futures=True)
        self.write_pool.shutdown(wait=wait, cancel_futures=True)
        if self.f0_pool is not None:
            self.f0_pool.shutdown()


def run_batch(
    engine: Engine,
    inputs: Iterable[BatchInput] | BatchInput,
    params: ConversionParams,
    options: BatchOptions,
    progress: ProgressCallback | None = None,
    audio_progress: AudioProgressCallback | None = None,
) -> Iterator[Result]:
    """Yield one :class:`~rvcfast.result.Result` per input, as files finish (see the module docstring)."""
    options.validate()
    if progress is not None and not callable(progress):
        hint = " (a BatchProgress: progress=lambda result, done, total: bar.update(result))" if hasattr(progress, "update") else ""
        raise ParameterError(f"progress must be a function progress(result, done, total), got {type(progress).__name__}{hint}")
    if audio_progress is not None and not callable(audio_progress):
        hint = " (a BatchProgress: audio_progress=bar.advance)" if hasattr(audio_progress, "advance") else ""
        raise ParameterError(
            f"audio_progress must be a function audio_progress(index, seconds), got {type(audio_progress).__name__}{hint}"
        )
    params.validate(engine.vocoder)
    if options.out_dir is not None:  # a format the output rate cannot be written in: before any work
        params.check_output(options.format, options.subtype, engine.sample_rate, options.bitrate)
    jobs = expand_inputs(inputs, options, {"voice": engine.name, "pitch": pitch_text(params.pitch)})
    if options.out_dir is not None and sys.platform == "win32":
        _check_windows_outputs(jobs, options.out_dir)
    if options.out_dir is not None and Path(options.out_dir).is_dir():
        # temporary files of an earlier, killed run: in the output folder and every folder the template names
        for folder in {Path(options.out_dir), *(Path(j.out_path).parent for j in jobs if j.out_path is not None)}:
            if folder.is_dir():
                remove_stale_parts(folder)
    workers = compute_workers(engine, options)
    return _BatchRun(engine, jobs, params, options, progress, workers, audio_progress).results()


def _check_windows_outputs(jobs: list[Job], out_dir: str | os.PathLike[str]) -> None:
    """Windows: output names Windows cannot write (``<>:"|?*``, a trailing dot or space,
    ``CON``/``NUL``..., a path too long; see :func:`~rvcfast.writing.check_windows_output`),
    found before any work (such an output otherwise failed at its write, after its conversion).
    When every output has one, the folder or the template is at fault: a :class:`ParameterError`
    now; otherwise those inputs fail (``job.problem``) and the others are converted."""
    long_paths = windows_long_paths()
    first: ParameterError | None = None
    for job in jobs:
        if job.out_path is not None:
            try:
                check_windows_output(out_dir, job.out_path, job.label, long_paths)
            except ParameterError as exc:
                job.problem = str(exc)
                first = first or exc
    if first is not None and all(job.problem is not None for job in jobs):
        raise first


def compute_workers(engine: Engine, options: BatchOptions) -> int:
    """``options.compute_workers``, else what ``rvcfast tune`` measured for this machine and device, else 1."""
    if options.compute_workers is not None:
        return int(options.compute_workers)
    profile = engine.profile
    return max(1, int(profile.compute_workers)) if profile is not None else 1


def _write_timed(path: Path, audio: np.ndarray, rate: int, options: BatchOptions, source: Path | None) -> float:
    t0 = time.perf_counter()
    write_audio_atomic(  # stale temporary files: removed from each output folder before the batch (run_batch)
        path, audio, rate, format=options.format, subtype=options.subtype, source=source, bitrate=options.bitrate,
        remove_stale=False,
    )
    return time.perf_counter() - t0

"""One model worker for every request: cross-request batching and interleaved streams.

All network calls of the server run in one thread (torch already uses every core for
one call, and one thread keeps the model work in a predictable order); decoding and
encoding run in a thread pool and HTTP handling stays in the event loop. The worker
takes work from one FIFO queue:

* **one-shot conversions** (inputs of one segment, up to 41 s): queued requests for the
  same voice are gathered, up to ``group_seconds`` of padded 16 kHz audio, into one
  :meth:`Engine.run <rvcfast.engine.Engine.run>` call with one parameter set per
  request: the F0 network sees them in one batch and the engine packs their segments
  into shared model calls where its ``batch_seconds`` allows (one segment per call on a
  CPU, many on a GPU). The synthesizer only ever batches segments of one voice. A
  request that fails (its F0 or synthesis) gets its error; the others their audio.
* **step tasks** (streams, jobs and long inputs): an iterator such as
  :meth:`Engine.stream <rvcfast.engine.Engine.stream>` advanced one segment per turn
  and put back at the end of the queue, so a long input never holds the models for
  more than one segment while short requests wait. Its F0 comes first, one network pass
  per turn (``pauses=True``: RMVPE's 41 s chunks of an input over 82 s; other F0
  backends in one turn).

``Admission`` bounds the requests in the server (``max_queue``) and estimates a
``Retry-After`` for those turned away.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..constants import SR_16K
from ..errors import Cancelled, RvcfastError

if TYPE_CHECKING:
    from ..engine import Engine
    from ..params import ConversionParams
    from ..pipeline import PreparedAudio
    from ..result import Result
    from .metrics import Metrics

_log = logging.getLogger("rvcfast.serve")

__all__ = [
    "Scheduler", "StepTask", "Admission", "QueueFull", "ShuttingDown", "END", "CPU_GROUP_SECONDS", "contained", "call_contained",
]

#: Requests gathered per engine call on a CPU (seconds of padded 16 kHz audio): none.
#: Measured on 2 cores (``benchmarks/serve_load.py --engine-batching``, figures in
#: docs/serving.md): four 5 s requests in one ``Engine.run`` took as long as, or longer
#: than, four calls (16.6-19.0 s against 15.9-16.5 s), since the engine already runs one
#: segment per synthesizer call on a CPU and a batched RMVPE call saves nothing there;
#: gathering would only make every request of a group wait for the slowest.
CPU_GROUP_SECONDS = 0.0

#: Marks the end of a step task's output.
END = object()


class ShuttingDown(RuntimeError):
    """Work offered to a scheduler that is stopping (the server is shutting down: answered 503)."""


def contained(exc: BaseException, what: str = "the conversion") -> Exception:
    """``exc`` as an :class:`Exception`, which the server's handlers take for one request's failure.

    A plugin's ``sys.exit()``, a ``KeyboardInterrupt`` raised by hand (a thread other than the
    main one never gets a real one) or any other :class:`BaseException` would otherwise end the
    model worker thread (every later request waiting for ever), or, raised where the event loop
    awaits a pool's result, stop the event loop: the whole server.
    """
    if isinstance(exc, Exception):
        return exc
    if isinstance(exc, SystemExit):
        text = f"{what} called sys.exit({exc.code!r})"
    else:
        text = f"{what} raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
    out = RvcfastError(text)
    out.__cause__ = exc
    return out


def call_contained(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, raising what is not an :class:`Exception` as one (:func:`contained`):
    what the server's thread pools run, since their results are awaited in the event loop."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        raise
    except BaseException as exc:  # noqa: BLE001 - a SystemExit must not reach the event loop
        raise contained(exc) from exc


class QueueFull(Exception):
    """The server holds ``max_queue`` requests already."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {limit} requests are queued or running; retry in {retry_after} s")
        self.retry_after = retry_after


class Admission:
    """Counts the requests in the server and turns away those beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.count = 0
        self._lock = threading.Lock()
        self._mean_seconds = 1.0  # smoothed time a request spends in the server

    def enter(self) -> None:
        """Take a slot or raise :class:`QueueFull` with a ``Retry-After`` estimate."""
        with self._lock:
            if self.count >= self.limit:
                raise QueueFull(self.limit, self.retry_after())
            self.count += 1

    def leave(self, seconds: float | None = None) -> None:
        """Give a slot back (``seconds``: how long the request took, for the estimate)."""
        with self._lock:
            self.count = max(0, self.count - 1)
            if seconds is not None:
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * float(seconds)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free (1..120)."""
        return int(min(120, max(1, math.ceil(self._mean_seconds))))


@dataclass
class _Convert:
    engine: Engine
    prep: PreparedAudio
    params: ConversionParams
    f0: Any
    future: cf.Future[Result]
    queued_at: float = field(default_factory=time.perf_counter)
    gone: threading.Event = field(default_factory=threading.Event)  # its caller gave up


class _AllGone:
    """Set when every request of a shared engine call has been given up (``Engine.run``'s ``cancel``)."""

    def __init__(self, tasks: list[_Convert]) -> None:
        self.tasks = tasks

    def is_set(self) -> bool:
        return all(t.gone.is_set() for t in self.tasks)


@dataclass
class StepTask:
    """An iterator advanced one item per turn; each item (or :data:`END`, or the exception) goes to ``sink``.

    An item that is ``None`` is a pause: nothing goes to the sink and the task goes back
    to the end of the queue (``Engine.stream(..., pauses=True)`` yields one between the
    blocks of a long input's F0, so no turn runs the F0 network over a whole long input).

    ``credit`` is how many items may be produced before the receiver takes them: the
    worker parks the task when it runs out, and :meth:`Scheduler.grant` (called as the
    receiver consumes an item) puts it back in the queue. A slow client therefore holds
    at most ``credit`` pieces in memory, and never the models.
    """

    iterator: Iterator[Any]
    sink: Callable[[Any], object]
    credit: int = 2
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    cancelled: bool = False
    parked: bool = False


class Scheduler:
    """The model worker thread and its queue."""

    def __init__(self, group_seconds: float, metrics: Metrics | None = None) -> None:
        self.group_samples = int(max(0.0, float(group_seconds)) * SR_16K)
        self.metrics = metrics
        self._queue: deque[_Convert | StepTask] = deque()
        self._converts: dict[cf.Future[Result], _Convert] = {}  # one-shot conversions queued or running
        self._parked: dict[int, StepTask] = {}  # id -> step task waiting for its receiver's credit
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="rvcfast-models", daemon=True)
        self.calls = 0

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    @property
    def depth(self) -> int:
        """Work items waiting for the worker."""
        with self._cv:
            return len(self._queue)

    def submit(self, engine: Engine, prep: PreparedAudio, params: ConversionParams, f0: Any = None) -> cf.Future[Result]:
        """Queue a one-shot conversion; the future gets its :class:`~rvcfast.result.Result` (``timings["queue"]`` included)."""
        task = _Convert(engine, prep, params, f0, cf.Future())
        with self._cv:
            self._put(task)  # refused (ShuttingDown) before it is kept
            self._converts[task.future] = task
        return task.future

    def give_up(self, future: cf.Future[Result]) -> None:
        """The caller of :meth:`submit` no longer wants ``future``'s result: taken out of the
        queue at once if it is still there (its decoded input is freed now, not when the
        worker reaches it: the caller's admission slot is free already); if its engine call is
        running, that call stops at its next model batch once every request in it has been
        given up (``Engine.run(cancel=...)``)."""
        dropped = future.cancel()
        with self._cv:
            task = self._converts.get(future)
            if task is not None:
                task.gone.set()
                if dropped and _remove(self._queue, task):
                    del self._converts[future]

    def submit_steps(self, iterator: Iterator[Any], sink: Callable[[Any], object], credit: int = 2) -> StepTask:
        """Queue a step task (see :class:`StepTask`)."""
        task = StepTask(iterator, sink, credit=max(1, int(credit)))
        self._put(task)
        return task

    def grant(self, task: StepTask) -> None:
        """The receiver took one item: allow one more (and wake the task if it was parked)."""
        with self._cv:
            task.credit += 1
            if task.parked and not task.cancelled:
                task.parked = False
                self._parked.pop(id(task), None)
                self._queue.append(task)
                self._cv.notify()

    def cancel(self, task: StepTask) -> None:
        """Stop a step task. One that waits (queued or parked) is taken out and its iterator
        closed here, at once, so what it holds (a decoded input) is freed now; one the worker
        is advancing is closed by the worker after this turn."""
        with self._cv:
            if task.cancelled:
                return
            task.cancelled = True
            idle = task.parked or _remove(self._queue, task)
            task.parked = False
            self._parked.pop(id(task), None)
        if idle:
            _close(task.iterator)

    def _put(self, task: _Convert | StepTask) -> None:
        with self._cv:
            if self._stopping:
                raise ShuttingDown("the server is shutting down: no more work is taken; retry on another server or once it is back")
            self._queue.append(task)
            self._cv.notify()

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued work, then stop the worker.

        A step task parked for want of credit (a receiver that has not taken its pieces)
        is not waited for: once the queue is empty its receiver gets a ``RuntimeError``
        saying the server stopped, and its iterator is closed.
        """
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker

    def _loop(self) -> None:
        ended: list[StepTask] = []  # parked tasks still waiting when the worker stops
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    ended = list(self._parked.values())
                    self._parked.clear()
                    for t in ended:
                        t.parked, t.cancelled = False, True
                    break
                task = self._queue.popleft()
                group = self._gather(task) if isinstance(task, _Convert) else []
            try:
                if isinstance(task, StepTask):
                    self._step(task)
                else:
                    self._run(group)
            except BaseException:  # noqa: BLE001 - the worker must outlive any one request (a plugin's sys.exit() too)
                _log.exception("model worker: unexpected error")
        stopped = RuntimeError("the server is shutting down: this conversion was stopped before it finished")
        for t in ended:  # their receivers would otherwise wait for ever
            try:
                t.sink(stopped)
            except BaseException:  # noqa: BLE001 - a receiver that is gone already
                pass
            _close(t.iterator)

    def _gather(self, first: _Convert) -> list[_Convert]:
        """``first`` and queued conversions of the same voice, up to ``group_samples`` (lock held)."""
        group = [first]
        total = first.prep.padded.shape[0] * first.prep.n_channels  # channels="each": every channel is converted
        if self.group_samples <= 0:
            return group
        kept: deque[_Convert | StepTask] = deque()
        while self._queue:
            task = self._queue.popleft()
            n = task.prep.padded.shape[0] * task.prep.n_channels if isinstance(task, _Convert) else 0
            if isinstance(task, _Convert) and task.engine is first.engine and total + n <= self.group_samples:
                group.append(task)
                total += n
            else:
                kept.append(task)
        self._queue.extendleft(reversed(kept))
        return group

    def _run(self, group: list[_Convert]) -> None:
        try:
            self._run_live(group)
        finally:
            with self._cv:
                for t in group:
                    self._converts.pop(t.future, None)
            for t in group:  # whatever went wrong, no caller waits for ever
                if not t.future.done():
                    try:
                        t.future.set_exception(RvcfastError("the model worker failed before this conversion ended"))
                    except cf.InvalidStateError:  # cancelled meanwhile
                        pass

    def _run_live(self, group: list[_Convert]) -> None:
        started = time.perf_counter()
        live = [t for t in group if t.future.set_running_or_notify_cancel()]
        if not live:
            return
        engine = live[0].engine
        f0 = [t.f0 for t in live] if any(t.f0 is not None for t in live) else None
        self.calls += 1
        if self.metrics is not None:
            self.metrics.observe("rvcfast_batch_requests", len(live))
        try:
            results = engine.run([t.prep for t in live], [t.params for t in live], f0=f0, cancel=_AllGone(live))
            _check_count(results, len(live))
        except Cancelled as exc:  # every caller of this call left: nobody waits for the results
            for t in live:
                t.future.set_exception(exc)
            return
        except BaseException as exc:  # noqa: BLE001 - isolate: retry each request alone (a plugin's sys.exit() too)
            if len(live) == 1:
                live[0].future.set_exception(contained(exc))
                return
            self._run_alone(engine, live, f0 is not None, started)
            return
        for t, res in zip(live, results):
            res.timings["queue"] = started - t.queued_at
            t.future.set_result(res)

    def _run_alone(self, engine: Engine, live: list[_Convert], given_f0: bool, started: float) -> None:
        """After a shared call failed: each request again, alone, so only a bad one gets an error.

        A request whose caller has given up is not run again (its future gets
        :class:`~rvcfast.errors.Cancelled`), and one given up during its own call stops
        there, as in the shared call.
        """
        for t in live:
            try:
                _check_gone(t)
                results = engine.run([t.prep], t.params, f0=[t.f0] if given_f0 else None, cancel=t.gone)
                _check_count(results, 1)
                res = results[0]
            except Cancelled as exc:
                t.future.set_exception(exc)
                continue
            except BaseException as exc1:  # noqa: BLE001 - this request's own failure
                res = _failed(engine, t, contained(exc1))
            res.timings["queue"] = started - t.queued_at
            t.future.set_result(res)

    def _step(self, task: StepTask) -> None:
        if task.cancelled:
            _close(task.iterator)
            return
        if task.started_at is None:
            task.started_at = time.perf_counter()
        try:
            item = next(task.iterator)
        except StopIteration:
            _send(task, END)
            return
        except BaseException as exc:  # noqa: BLE001 - reported to that task only, as an Exception its receiver may raise
            _send(task, contained(exc))
            return
        if item is None:  # a pause (Engine.stream(pauses=True) between F0 blocks): nothing to send
            with self._cv:
                self._queue.append(task)
            return
        if not _send(task, item):
            _close(task.iterator)
            return
        with self._cv:
            task.credit -= 1
            if task.cancelled or task.credit > 0:
                self._queue.append(task)
            else:
                task.parked = True
                self._parked[id(task)] = task


def _check_count(results: Any, n: int) -> None:
    if len(results) != n:  # a broken engine: every request must still get an answer
        raise RvcfastError(f"the engine returned {len(results)} results for {n} inputs")


def _check_gone(task: _Convert) -> None:
    if task.gone.is_set():
        raise Cancelled("the conversion was cancelled")


def _send(task: StepTask, item: Any) -> bool:
    """Hand ``item`` to the task's sink; False (and the task cancelled) if the receiver is gone."""
    try:
        task.sink(item)
    except Exception:  # noqa: BLE001 - e.g. the event loop closed under a cancelled stream
        task.cancelled = True
        return False
    return not task.cancelled


def _remove(queue: deque[Any], task: Any) -> bool:
    """Take ``task`` (compared by identity) out of ``queue``; False if it is not there."""
    for i, queued in enumerate(queue):
        if queued is task:
            del queue[i]
            return True
    return False


def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except BaseException:  # noqa: BLE001 - run in the event loop by cancel(): a sys.exit() there would stop the server
            _log.exception("closing a step task failed")


def _failed(engine: Engine, task: _Convert, exc: BaseException) -> Result:
    import numpy as np

    from ..result import Result

    return Result(
        np.zeros(0, np.float32), engine.sample_rate, {}, task.prep.label, error=f"{type(exc).__name__}: {exc}",
        input_seconds=task.prep.seconds, exception=exc,
    )

"""The process pool a batch runs a CPU-bound F0 backend in (harvest, dio, pm, or a plugin that
declares ``cpu_bound``): :class:`F0Pool`.

Those trackers hold the GIL or are plain single-threaded C, so a batch computes their tracks
in worker processes next to its decoding threads. What the pool takes care of:

* a worker process that dies (a crash in the tracker, the OOM killer) breaks the pool: it is
  replaced for later files, and each file that was in the dead pool is tracked again in a
  process of its own, so only a file that kills that one too fails (naming it);
* a pool whose workers cannot start at all ("spawn" or "forkserver" re-running a script that
  converts without ``if __name__ == "__main__":``) is one error naming the guard, not one
  "worker died" per file;
* :meth:`F0Pool.stop` ends the workers at once, for a batch left early: ``shutdown`` alone
  waits for every track already handed to a process (minutes for long files with harvest).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from .errors import RvcfastError

__all__ = ["F0Pool", "stop_process_pool"]


def _cpu_f0(extractor: Any, padded: np.ndarray) -> np.ndarray:
    return extractor.extract(padded)


def _worker_started(started: Any) -> None:
    """A worker process's first act (its pool's initializer): say that it started. With the
    "spawn" start method (Windows, macOS) or "forkserver" a worker first runs the main script
    again; a pool whose workers die before this cannot start at all (see :meth:`F0Pool.not_started`)."""
    started.set()


class F0Pool:
    """``workers`` processes computing ``extractor``'s tracks; see the module docstring."""

    def __init__(self, extractor: Any, workers: int) -> None:
        self.extractor = extractor
        self.workers = workers
        self.backend = getattr(extractor, "name", type(extractor).__name__)
        self._started: Any = None  # set by the first worker process that starts
        self._lock = threading.Lock()  # decode threads replace a broken pool one at a time
        self._pool = self._new(workers)
        self._alone_pools: set[cf.ProcessPoolExecutor] = set()  # the pools of :meth:`_alone`, ended by :meth:`stop` too
        self._stopped = False

    def _new(self, workers: int) -> cf.ProcessPoolExecutor:
        context = multiprocessing.get_context()
        if self._started is None:
            self._started = context.Event()
        return cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_worker_started, initargs=(self._started,)
        )

    def not_started(self) -> RvcfastError | None:
        """The error for a pool that broke before any of its worker processes started, else
        ``None`` (a worker died at work: a crash in the tracker, out of memory).

        With "spawn" (the default on Windows and macOS) or "forkserver" each worker first runs the
        main script again, and a script that converts at its top level, without
        ``if __name__ == "__main__":``, fails there (Python refuses to start processes from it).
        Every file then got "the F0 worker process died ... (a crash or out of memory)" after a
        new process per file had run the whole script again."""
        if self._started is None or self._started.is_set():
            return None
        method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_context().get_start_method()
        return RvcfastError(
            f"the worker processes of F0 backend {self.backend!r} could not start (multiprocessing start method "
            f"{method!r}). With 'spawn' (the default on Windows and macOS) or 'forkserver', each worker "
            "first runs the main script again: a script that converts must do so under "
            "`if __name__ == \"__main__\":` (see the workers' own errors above)"
        )

    def submit(self, padded: np.ndarray) -> cf.Future[Any]:
        """One input's F0 on the pool. A pool whose worker process died takes no more work: it is
        replaced, so later files still get their F0 (:meth:`track` sorts out the files that were
        in the dead pool)."""
        with self._lock:
            try:
                return self._pool.submit(_cpu_f0, self.extractor, padded)
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                not_started = self.not_started()
                if not_started is not None:
                    raise not_started from None
                self._pool = self._new(self.workers)
                return self._pool.submit(_cpu_f0, self.extractor, padded)

    def track(self, future: cf.Future[Any], label: str, padded: np.ndarray, stopping: threading.Event) -> Any:
        """The track ``future`` gives, or the exception the engine reports for input ``label``
        (naming the backend). A track lost with a dead worker process is computed again alone,
        unless ``stopping`` is set by then (:meth:`stop` ended the processes of a batch left
        early); a pool that never started raises its error."""
        try:
            return future.result()
        except BrokenProcessPool:
            not_started = self.not_started()
            if not_started is not None:
                raise not_started from None
            return self._alone(label, padded, stopping.is_set())
        except Exception as exc:  # noqa: BLE001 - the engine reports it for that file
            return self._named(exc)

    def _named(self, exc: Exception) -> Exception:
        """``exc`` from the pool as an error naming the backend (rvcfast's own errors name it)."""
        if isinstance(exc, RvcfastError):
            return exc
        err = RvcfastError(f"F0 extraction failed (backend {self.backend!r}): {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    def _alone(self, label: str, padded: np.ndarray, stopping: bool) -> Any:
        """The track of an input whose pool lost a worker process, computed again in a process of
        its own: the inputs that were only queued or running next to the one that killed the
        process get their tracks; an input that kills this process too gets an error naming it."""
        stopped = RvcfastError(f"{label}: not converted, the batch was stopped")
        with self._lock:
            if stopping or self._stopped:  # the batch is closing: no new process for a track nobody will use
                return stopped
            pool = self._new(1)
            self._alone_pools.add(pool)  # :meth:`stop` ends it too (a track of minutes with harvest)
        try:
            return pool.submit(_cpu_f0, self.extractor, padded).result()
        except BrokenProcessPool:
            if self._stopped:
                return stopped
            return RvcfastError(
                f"{label}: the F0 worker process died while tracking this input "
                f"(a crash in backend {self.backend!r}, or out of memory)"
            )
        except Exception as exc:  # noqa: BLE001 - the engine reports it for that file
            return stopped if self._stopped else exc  # stopped before its submit: a pool shut down
        finally:
            with self._lock:
                self._alone_pools.discard(pool)
            pool.shutdown(wait=True)

    def stop(self) -> None:
        """End the worker processes now (the batch was left early: their tracks are not needed),
        also those tracking an input again alone after a worker died (:meth:`_alone`)."""
        with self._lock:
            self._stopped = True
            stop_process_pool(self._pool)
            for pool in list(self._alone_pools):
                stop_process_pool(pool)

    def shutdown(self) -> None:
        """Let the workers finish what they were given, then end them."""
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)


def stop_process_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Shut ``pool`` down without waiting for the work it was given: its worker processes are
    ended and joined, and its futures not done fail with :class:`BrokenProcessPool`.

    ``shutdown(cancel_futures=True)`` cancels only the calls not yet handed to a process;
    waiting for the others took as long as tracking those files (with harvest, minutes for
    long files) after Ctrl-C or a ``break`` out of ``iter_batch``."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()
    if manager is not None:
        manager.join()  # it finds the processes ended, fails what was left and closes the queues

"""The job spool: inputs too long for one request, converted in the background, results on disk.

``POST /v1/jobs`` stores the upload as ``<id>.in.<ext>`` in the spool folder and answers
202 at once; the conversion runs segment by segment through the scheduler, the raw
segment outputs are appended to ``<id>.raw`` (so a long result never sits only in
memory), then finished and written as ``<id>.<format>``. The input and the raw file are
deleted when the job ends, however it ends; a deleted job leaves no file.

A job is ``queued``, ``running``, then ``done`` or ``failed``; ``DELETE`` cancels it and
forgets it at once. Finished jobs are kept for ``ttl`` seconds. When the results take
more than ``max_bytes``, the oldest results are removed first, but never one that has
not been fetched and is younger than ``min_keep`` seconds (:data:`MIN_KEEP_SECONDS`):
new jobs are refused with :class:`JobStoreFull` (503) instead, so a job reported done
can always be fetched for that long. Job ids are random (128 bits) and are the only
thing a client names.
"""

from __future__ import annotations

import atexit
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError

__all__ = ["Job", "JobStore", "JobStoreFull", "JOB_ID", "ACTIVE", "FINISHED", "MIN_KEEP_SECONDS", "SPOOL_FOLDERS"]

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed")

#: Seconds a result that has not been fetched is kept even when results exceed the size bound.
MIN_KEEP_SECONDS = 600.0


class JobStoreFull(Exception):
    """The finished results of unexpired jobs fill the spool (answered 503)."""


@dataclass
class Job:
    """One background conversion and what a client may know about it."""

    id: str
    voice: str
    input_name: str
    format: str
    subtype: str | None
    bitrate: int | None = None  # kbit/s of a lossy output (None: the encoder's default)
    source_id: str | None = None  # the input's id, recorded in the result (None: no record)
    created: float = field(default_factory=time.time)
    state: str = "queued"
    progress: float = 0.0
    segments: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    input_seconds: float | None = None
    sample_rate: int | None = None
    result: Path | None = None
    bytes: int = 0
    fetched: bool = False  # its audio was sent at least once (it may then be removed for space)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    handle: Any = field(default=None, repr=False)  # the asyncio task running it

    def public(self) -> dict[str, Any]:
        """The JSON a client gets from ``GET /v1/jobs/{id}``."""
        out: dict[str, Any] = {
            "id": self.id,
            "voice": self.voice,
            "input": self.input_name,
            "state": self.state,
            "progress": round(self.progress, 4),
            "segments": self.segments,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "input_seconds": self.input_seconds,
            "format": self.format,
            "bitrate": self.bitrate,
            "warnings": self.warnings,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.state == "done":
            out.update(sample_rate=self.sample_rate, bytes=self.bytes, audio_url=f"/v1/jobs/{self.id}/audio")
            out["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return out


class JobStore:
    """Jobs by id and their files under ``root``; thread-safe."""

    def __init__(self, root: Path, ttl: float, max_bytes: int, min_keep: float = MIN_KEEP_SECONDS) -> None:
        self.root = Path(root)
        _make_folder(self.root)
        self.ttl = float(ttl)
        self.max_bytes = int(max_bytes)
        self.min_keep = float(min_keep)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(
        self, voice: str, input_name: str, fmt: str, subtype: str | None, bitrate: int | None = None,
        source_id: str | None = None,
    ) -> Job:
        """A new queued job writing ``fmt``/``subtype`` (at ``bitrate`` kbit/s when given, recording
        ``source_id`` when given), after making room (:class:`JobStoreFull` if there is none)."""
        self.sweep()
        with self._lock:
            if self._result_bytes() >= self.max_bytes:
                raise JobStoreFull(
                    f"the job spool is full ({self.max_bytes / 2**20:g} MB of results not yet fetched or expired); "
                    "fetch or delete finished jobs, or retry later"
                )
            job = Job(secrets.token_hex(16), voice, input_name, fmt, subtype, bitrate, source_id)
            self._jobs[job.id] = job
            return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (``KeyError`` when unknown, expired or malformed)."""
        self.sweep()
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        with self._lock:
            return self._jobs[job_id]

    def holds(self, job: Job) -> bool:
        """Whether ``job`` is still in the store (not deleted, expired or removed for space)."""
        with self._lock:
            return self._jobs.get(job.id) is job

    def path(self, job: Job, suffix: str) -> Path:
        """A file of ``job`` in the spool (``.in``, ``.raw``, ``.wav``...)."""
        return self.root / f"{job.id}{suffix}"

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self._lock:
            out = {s: 0 for s in ACTIVE + FINISHED}
            for job in self._jobs.values():
                out[job.state] = out.get(job.state, 0) + 1
            return out

    def _result_bytes(self) -> int:
        return sum(j.bytes for j in self._jobs.values() if j.state == "done")

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove expired finished jobs, then the oldest results while results exceed ``max_bytes``.

        A result that has not been fetched is removed for space only once it is
        ``min_keep`` seconds old; until then new jobs are refused (:meth:`create`).
        """
        now = time.time() if now is None else now
        removed: list[Job] = []
        with self._lock:
            for job in list(self._jobs.values()):
                if job.state in FINISHED and job.finished is not None and now - job.finished > self.ttl:
                    removed.append(self._jobs.pop(job.id))
            done = sorted(
                (j for j in self._jobs.values() if j.state == "done" and j.bytes > 0 and self._evictable(j, now)),
                key=lambda j: j.finished or 0.0,
            )
            while done and self._result_bytes() > self.max_bytes:
                job = done.pop(0)
                removed.append(self._jobs.pop(job.id))
        for job in removed:
            self.delete_files(job)
        return [j.id for j in removed]

    def _evictable(self, job: Job, now: float) -> bool:
        """A result that may be removed for space: fetched, or older than ``min_keep``."""
        return job.fetched or job.finished is None or now - job.finished >= self.min_keep

    def remove(self, job: Job) -> None:
        """Forget a job and delete its files.

        A running job must be cancelled too; its task deletes the files it still writes
        when it ends (it finds the job gone, :meth:`holds`).
        """
        with self._lock:
            self._jobs.pop(job.id, None)
        self.delete_files(job)

    def delete_files(self, job: Job) -> None:
        """Delete every file of ``job`` in the spool."""
        for f in self.root.glob(f"{job.id}.*"):
            try:
                f.unlink()
            except OSError:
                pass

    def active(self) -> list[Job]:
        """Jobs queued or running."""
        with self._lock:
            return [j for j in self._jobs.values() if j.state in ACTIVE]


def make_spool(folder: str | None) -> tuple[Path, bool]:
    """The spool root (``folder``, created, or a new temporary folder) and whether it is temporary."""
    if folder is None:
        root = Path(tempfile.mkdtemp(prefix="rvcfast-serve-"))
        atexit.register(remove_spool, root)  # also when the app is never started or closed
        return root, True
    root = Path(folder).expanduser()
    if root.exists() and not root.is_dir():
        raise ParameterError(f"--jobs-dir {root} exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"--jobs-dir {root} cannot be created: {exc.strerror or exc}") from None
    for name in SPOOL_FOLDERS:  # a kept folder may hold anything: found here, not as a traceback later
        _make_folder(root / name)
    return root, False


#: The folders a server keeps in its spool: uploads being read, and the jobs' files.
SPOOL_FOLDERS = ("uploads", "jobs")


def _make_folder(folder: Path) -> None:
    """Create ``folder`` of the spool (:class:`~rvcfast.errors.ParameterError` naming it and
    ``--jobs-dir`` when something is in the way or it cannot be made)."""
    if folder.is_dir():
        return
    if folder.exists() or folder.is_symlink():
        raise ParameterError(
            f"--jobs-dir: {folder} is in the way (the server keeps a folder of that name there): "
            "move it away, or give another --jobs-dir"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"--jobs-dir: {folder} cannot be created: {exc.strerror or exc}") from None


class SpoolLock:
    """One server per kept spool folder: an exclusive lock on ``.rvcfast-serve.lock`` in it, held
    until :meth:`release`. A second server on the same ``--jobs-dir`` would delete the first
    one's job files when it starts (they are not carried over a restart)."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".rvcfast-serve.lock"
        try:
            self._file: Any = open(self.path, "a+b")  # noqa: SIM115 - held open: the lock lives as long as it
        except OSError as exc:  # a read-only folder, a folder of that name
            raise ParameterError(
                f"--jobs-dir {root}: cannot open its lock file {self.path} ({exc.strerror or exc}): "
                "the folder must be writable, and that name free for the lock file"
            ) from None
        try:
            _lock_file(self._file)
        except OSError:
            self._file.close()
            self._file = None
            raise ParameterError(
                f"--jobs-dir {root} is in use by another rvcfast serve (it holds {self.path.name}): "
                "give each server a folder of its own"
            ) from None

    def release(self) -> None:
        """Let go of the folder (closing the file releases the lock)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _lock_file(fh: Any) -> None:
    """An exclusive lock on an open file without waiting (``OSError`` if another process holds it)."""
    # sys.platform, not a failed import: type checkers then check each branch on its own platform
    if sys.platform == "win32":
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_spool(root: Path) -> None:
    """Delete a temporary spool folder."""
    shutil.rmtree(root, ignore_errors=True)

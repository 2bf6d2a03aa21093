"""The job spool: inputs too long for one request, converted in the background, results on disk.

``POST /v1/jobs`` stores the upload as ``<id>.in`` in the spool folder and answers 202
at once; the conversion runs segment by segment through the scheduler, the raw
segment outputs are appended to ``<id>.raw`` (so a long result never sits only in
memory), then finished and written as ``<id>.<format>``. Finished jobs are kept for
``ttl`` seconds; when the results take more than ``max_bytes`` the oldest finished jobs
are removed first. Job ids are random (128 bits) and are the only thing a client names.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Job", "JobStore", "JobStoreFull", "JOB_ID", "ACTIVE", "FINISHED"]

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")


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

    def __init__(self, root: Path, ttl: float, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl = float(ttl)
        self.max_bytes = int(max_bytes)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(self, voice: str, input_name: str, fmt: str, subtype: str | None) -> Job:
        """A new queued job (after making room; :class:`JobStoreFull` if there is none)."""
        self.sweep()
        with self._lock:
            if self._result_bytes() >= self.max_bytes:
                raise JobStoreFull(
                    f"the job spool is full ({self.max_bytes / 2**20:g} MB of results not yet expired); "
                    "fetch or delete finished jobs, or retry later"
                )
            job = Job(uuid.uuid4().hex, voice, input_name, fmt, subtype)
            self._jobs[job.id] = job
            return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (``KeyError`` when unknown, expired or malformed)."""
        self.sweep()
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        with self._lock:
            return self._jobs[job_id]

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
        """Remove expired finished jobs, then the oldest finished ones while results exceed ``max_bytes``."""
        now = time.time() if now is None else now
        removed: list[Job] = []
        with self._lock:
            for job in list(self._jobs.values()):
                if job.state in FINISHED and job.finished is not None and now - job.finished > self.ttl:
                    removed.append(self._jobs.pop(job.id))
            done = sorted((j for j in self._jobs.values() if j.state in FINISHED), key=lambda j: j.finished or 0.0)
            while done and self._result_bytes() > self.max_bytes:
                job = done.pop(0)
                removed.append(self._jobs.pop(job.id))
        for job in removed:
            self._delete_files(job)
        return [j.id for j in removed]

    def remove(self, job: Job) -> None:
        """Forget a job and delete its files (cancel it first if it is running)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        self._delete_files(job)

    def _delete_files(self, job: Job) -> None:
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
    root.mkdir(parents=True, exist_ok=True)
    return root, False


def remove_spool(root: Path) -> None:
    """Delete a temporary spool folder."""
    shutil.rmtree(root, ignore_errors=True)

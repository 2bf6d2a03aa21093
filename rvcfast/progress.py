"""Small, dependency-free progress reporting for the command line.

Two reporters:

* :class:`BatchProgress` -- files and seconds of audio converted, the rate (seconds
  of audio per second of wall time) and an ETA. On a terminal it redraws one status
  line with ``\\r``; otherwise (a log file, a pipe, CI) it prints one plain line per
  finished file, so logs stay readable.
* :class:`DownloadProgress` -- bytes received, speed and ETA; a callable with the
  ``progress(done_bytes, total_bytes)`` signature of :func:`rvcfast.weights.download`.

Both write to ``sys.stderr`` by default and never need tqdm.

Example::

    from rvcfast.progress import BatchProgress

    with BatchProgress(total_files=len(paths), total_seconds=120.0) as bar:
        for result in conv.iter_batch(paths, "out", audio_progress=bar.advance):
            bar.update(result)

``audio_progress=bar.advance`` moves the bar inside long files too (a one-hour input
otherwise shows 0/1 until it is written).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import threading
import time
from typing import IO, Any

__all__ = ["BatchProgress", "DownloadProgress", "format_duration", "format_bytes", "is_tty"]


def is_tty(stream: IO[str]) -> bool:
    """True when ``stream`` is an interactive terminal (and ``TERM`` is not ``dumb``)."""
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``; ``"?"`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: float) -> str:
    """``181184272`` -> ``"181.2 MB"`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"  # pragma: no cover


def _bar(fraction: float, width: int) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class _Line:
    """The redraw-in-place machinery shared by both reporters.

    A stream that cannot be written any more (its reader went away: ``2>&1 | tee`` with ``tee``
    killed, a closed log pipe) turns the reporter off: progress is never a reason for a batch
    to stop halfway."""

    def __init__(self, stream: IO[str] | None, tty: bool | None, enabled: bool) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_tty(self.stream) if tty is None else bool(tty)
        self.enabled = enabled
        self._drawn = 0  # characters of the status line currently on screen

    def write(self, text: str) -> None:
        """Write and flush ``text``; a broken stream disables the reporter instead of raising."""
        if not self.enabled:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # EPIPE, EIO, a closed file
            self.enabled = False
            self._drawn = 0

    def draw(self, text: str) -> None:
        if not (self.enabled and self.tty):
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = text[:width]
        pad = " " * max(0, self._drawn - len(text))
        self.write("\r" + text + pad)
        self._drawn = len(text) if self.enabled else 0

    def clear(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def end(self) -> None:
        """End the status line on a terminal (a newline after it), leaving it on screen."""
        if self.enabled and self.tty and self._drawn:
            self.write("\n")
            self._drawn = 0

    def println(self, text: str) -> None:
        """Print a full line (above the status line on a terminal)."""
        if not self.enabled:
            return
        self.clear()
        self.write(text + "\n")


class BatchProgress:
    """Progress of a batch of files: count, seconds of audio, rate and ETA.

    Args:
        total_files: number of inputs in the batch.
        total_seconds: expected seconds of input audio (e.g. from file headers), or
            ``None`` when unknown; the ETA then counts files instead.
        stream: where to write (default ``sys.stderr``).
        tty: force terminal (``True``) or plain (``False``) output; default: detect.
        enabled: ``False`` prints nothing (``--quiet``).
        label: word shown before the counters.
        min_interval: minimum seconds between two redraws of the terminal line.
        plain_interval: without a terminal, the seconds between two lines saying how far
            the files in progress are (:meth:`advance`); finished files always get a line.

    :meth:`update` counts a finished file; :meth:`advance` (the batch's ``audio_progress``)
    the audio of files still in progress. Both may be called from any thread.
    """

    def __init__(
        self,
        total_files: int,
        total_seconds: float | None = None,
        *,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        enabled: bool = True,
        label: str = "converting",
        min_interval: float = 0.1,
        plain_interval: float = 30.0,
    ) -> None:
        self.total_files = int(total_files)
        self.total_seconds = total_seconds
        self.done_files = 0
        self.failed = 0
        self.skipped = 0
        self.done_seconds = 0.0  # audio of every finished file (the bar)
        self.converted_seconds = 0.0  # audio of the files converted (the rate)
        self.partial: dict[int, float] = {}  # input index -> seconds through the models, files in progress
        self.label = label
        self.min_interval = min_interval
        self.plain_interval = plain_interval
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_plain = self.start
        self._lock = threading.RLock()
        self._line = _Line(stream, tty, enabled)
        self.draw(force=True)

    @property
    def tty(self) -> bool:
        """Whether the status line is redrawn in place."""
        return self._line.tty

    # -- numbers --------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        """Seconds of audio converted per second of wall time (0 before anything is converted).

        Only converted files count: a file that failed or was skipped adds its audio to the
        bar but not to the rate, which would otherwise overstate the speed."""
        t = self.elapsed()
        return (self.converted_seconds + self.partial_seconds()) / t if t > 0 else 0.0

    def partial_seconds(self) -> float:
        """Seconds of audio through the models in files not finished yet."""
        return sum(self.partial.values())

    def eta(self) -> float:
        """Estimated seconds left (``nan`` when nothing can be estimated yet)."""
        t = self.elapsed()
        if self.done_files >= self.total_files:
            return 0.0
        if self.total_seconds is not None and self.total_seconds > 0:
            rate = self.rate()
            if rate <= 0:
                return float("nan")  # only failed or skipped files so far: no rate yet
            left = max(self.total_seconds - self.done_seconds - self.partial_seconds(), 0.0)
            return left / rate
        if self.done_files:
            return t / self.done_files * (self.total_files - self.done_files)
        return float("nan")

    def status(self) -> str:
        """The one-line status text."""
        frac = self.done_files / self.total_files if self.total_files else 1.0
        seconds = self.done_seconds + self.partial_seconds()
        if self.total_seconds is not None and self.total_seconds > 0:
            frac = min(seconds / self.total_seconds, 1.0)
            audio = f"{seconds:.1f}/{self.total_seconds:.1f} s audio"
        else:
            audio = f"{seconds:.1f} s audio"
        parts = [
            f"{self.label} {self.done_files}/{self.total_files} files",
            _bar(frac, 20),
            audio,
            f"{self.rate():.2f}x real-time" if self.converted_seconds or self.partial else "",
            f"ETA {format_duration(self.eta())}",
        ]
        if self.failed:
            parts.append(f"{self.failed} failed")
        return "  ".join(p for p in parts if p)

    # -- events ---------------------------------------------------------------------

    def draw(self, force: bool = False) -> None:
        with self._lock:
            now = time.perf_counter()
            if force or now - self._last_draw >= self.min_interval:
                self._last_draw = now
                self._line.draw(self.status())

    def advance(self, index: int, seconds: float) -> None:
        """Input ``index`` (its Result's ``index``), not finished yet, has ``seconds`` of its
        audio through the models so far: the batch's ``audio_progress`` callback (a long
        input's F0 blocks count as the first fifth of its seconds: :mod:`rvcfast.engine_progress`).
        The bar, the rate and the ETA count it until :meth:`update` counts the whole file.

        On a terminal the status line is redrawn; otherwise a line saying how far the files
        in progress are is printed every ``plain_interval`` seconds.
        """
        with self._lock:
            self.partial[int(index)] = max(float(seconds), self.partial.get(int(index), 0.0))
            if self._line.tty:
                self.draw()
                return
            now = time.perf_counter()
            if now - self._last_plain >= self.plain_interval:
                self._last_plain = now
                head = f"[{self.done_files}/{self.total_files}] in progress:"
                total = f"/{self.total_seconds:.1f}" if self.total_seconds else ""
                self._line.println(
                    f"{head} {self.done_seconds + self.partial_seconds():.1f}{total} s audio converted "
                    f"({self.elapsed():.1f} s elapsed, ETA {format_duration(self.eta())})"
                )

    def update(self, result: Any = None, *, seconds: float | None = None, expected_seconds: float | None = None,
               name: str | None = None, error: str | None = None, skipped: bool | None = None,
               output: str | None = None) -> None:
        """Count one finished file.

        Pass a :class:`~rvcfast.api.Result` (its ``input_seconds``, ``source``,
        ``error``, ``skipped`` and ``output_path`` are used), or the same facts as
        keywords. ``expected_seconds`` is what this file was counted as in
        ``total_seconds``; the total is corrected by the difference.
        """
        with self._lock:
            self._update(result, seconds, expected_seconds, name, error, skipped, output)

    def _update(self, result: Any, seconds: float | None, expected_seconds: float | None, name: str | None,
                error: str | None, skipped: bool | None, output: str | None) -> None:
        if result is not None:
            self.partial.pop(getattr(result, "index", None), None)  # type: ignore[arg-type]
            seconds = result.input_seconds if seconds is None else seconds
            name = result.source if name is None else name
            error = result.error if error is None else error
            skipped = result.skipped if skipped is None else skipped
            output = result.output_path if output is None else output
        seconds = float(seconds or 0.0)
        self.done_files += 1
        self.done_seconds += seconds
        if error is None and not skipped:
            self.converted_seconds += seconds
        if self.total_seconds is not None and expected_seconds is not None:
            self.total_seconds = max(self.total_seconds + seconds - expected_seconds, self.done_seconds)
        if error is not None:
            self.failed += 1
        if skipped:
            self.skipped += 1
        if not self._line.tty:
            self._line.println(self._plain(name, seconds, error, bool(skipped), output))
        else:
            if error is not None:
                self._line.println(f"FAILED: {' '.join(str(error).split())}")
            self.draw(force=True)

    def _plain(self, name: str | None, seconds: float, error: str | None, skipped: bool, output: str | None) -> str:
        head = f"[{self.done_files}/{self.total_files}] {name or ''}".rstrip()
        if error is not None:
            reason = " ".join(str(error).split())
            if name and reason.startswith(f"{name}: "):
                reason = reason[len(name) + 2 :]  # the line already starts with the name
            return f"{head}: FAILED: {reason}"
        if skipped:  # the output names it (several voices: which voice's output it was)
            return f"{head}: skipped (output exists{f': {output}' if output else ''})"
        where = f" -> {output}" if output else ""
        return f"{head}{where} ({seconds:.1f} s audio, {self.elapsed():.1f} s elapsed, ETA {format_duration(self.eta())})"

    def println(self, text: str) -> None:
        """Print a message line without breaking the status line."""
        with self._lock:
            self._line.println(text)
            self.draw(force=True)

    def close(self) -> None:
        """Finish: leave the final status line on a terminal."""
        with self._lock:
            if self._line.enabled and self._line.tty and self._line._drawn:
                self._line.draw(self.status())
                self._line.end()

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class DownloadProgress:
    """Bytes received, speed and ETA; call it as ``progress(done_bytes, total_bytes)``.

    On a terminal the line is redrawn in place; otherwise a line is printed when the download
    starts, one every ``plain_interval`` seconds saying how far it got (a CI log is not silent
    for the minutes a large file takes), and one when it ends.
    """

    def __init__(self, name: str, *, stream: IO[str] | None = None, tty: bool | None = None, enabled: bool = True,
                 min_interval: float = 0.1, plain_interval: float = 30.0) -> None:
        self.name = name
        self.min_interval = min_interval
        self.plain_interval = plain_interval
        self._line = _Line(stream, tty, enabled)
        self.start = time.perf_counter()
        self._first: int | None = None  # bytes already there when this run started (a resume)
        self._last_draw = 0.0
        self._announced = False
        self.done = 0
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        if self._first is None:
            self._first = done
            self.start = time.perf_counter()
        self.done, self.total = done, total
        now = time.perf_counter()
        if not self._line.tty:
            if not self._announced:
                self._announced = True
                self._last_draw = now
                size = format_bytes(total) if total else "unknown size"
                resumed = f", resuming at {format_bytes(done)}" if done else ""
                self._line.println(f"downloading {self.name} ({size}{resumed})")
            elif now - self._last_draw >= self.plain_interval and not (total and done >= total):
                self._last_draw = now
                self._line.println(self.status())
            return
        if now - self._last_draw >= self.min_interval or (total and done >= total):
            self._last_draw = now
            self._line.draw(self.status())

    def status(self) -> str:
        t = time.perf_counter() - self.start
        got = self.done - (self._first or 0)
        speed = got / t if t > 0 else 0.0
        if self.total:
            left = (self.total - self.done) / speed if speed > 0 else float("nan")
            return (f"{self.name}  {_bar(self.done / self.total, 20)}  {format_bytes(self.done)}/"
                    f"{format_bytes(self.total)}  {format_bytes(speed)}/s  ETA {format_duration(left)}")
        return f"{self.name}  {format_bytes(self.done)}  {format_bytes(speed)}/s"

    def close(self, ok: bool = True) -> None:
        """End the status line (terminal) and print the closing line: ``downloaded NAME: ...``
        after a download that worked (``ok``; plain output only, a terminal keeps its final
        status line), else where it stopped (``NAME: download stopped at X of Y``; nothing when
        every byte arrived and the file was refused afterwards: the error says why)."""
        if not self._line.enabled:
            return
        if not ok:
            complete = bool(self.total) and self.done >= self.total  # e.g. refused by its checksum afterwards
            if self._first is not None and not complete:  # bytes were counted: say how far it got
                of = f" of {format_bytes(self.total)}" if self.total else ""
                self._line.println(f"{self.name}: download stopped at {format_bytes(self.done)}{of}")
            else:
                self._line.clear()
            return
        if self._line.tty:
            self._line.end()
        elif self._announced:
            t = time.perf_counter() - self.start
            self._line.println(f"downloaded {self.name}: {format_bytes(self.done)} in {t:.1f} s")

    def __enter__(self) -> DownloadProgress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(ok=exc_type is None)

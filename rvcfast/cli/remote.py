"""``rvcfast convert ... --server URL``: the same command, converted by a running ``rvcfast serve``.

The server keeps its models loaded, so a command that converts a few files pays no start-up
beyond its own (no model is loaded here, and torch is not imported). The files are planned,
named, skipped and reported as a local run does them (:func:`rvcfast.batch_inputs.expand_inputs`,
``--report``, ``--skip-existing``; with ``--voice``, every input to every voice, named per
voice as a local run names them); each is sent to ``POST /v1/convert`` as it is (the server
decodes it) with the conversion options and its ``source_id`` (recorded in the output, as a
local run records its input) as query fields, ``--workers`` requests at a time (the server
batches concurrent requests), and the answer is written whole or not at all. A server that is
busy (503) is asked again after its ``Retry-After``; a file longer than it converts in one
request goes through ``POST /v1/jobs`` (a stopped command deletes its jobs before it ends).

Only the standard library talks HTTP here: a client needs no server extra.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ..errors import RvcfastError
from ._common import BatchStopped, UsageError, params_from_args

__all__ = [
    "check_remote_args", "check_outputs", "voice_id", "request_fields", "file_fields", "plan_voices", "Server", "ServerLost",
    "iter_remote",
]

#: Options that are the server's to choose, refused with ``--server`` (flag, given?).
_SERVERS = (
    ("--index", lambda a: a.index is not None), ("--encoder", lambda a: a.encoder is not None),
    ("--f0-weights", lambda a: a.f0_weights is not None), ("--f0-option", lambda a: bool(a.f0_option)),
    ("--download", lambda a: a.download), ("--device", lambda a: a.device not in (None, "auto")),
    ("--dtype", lambda a: a.dtype not in (None, "float32")), ("--batch-seconds", lambda a: a.batch_seconds is not None),
    ("--compute-workers", lambda a: a.compute_workers is not None),
    ("--decode-workers", lambda a: a.decode_workers is not None),
    ("--write-workers", lambda a: a.write_workers is not None),
    ("--f0-workers", lambda a: a.f0_workers is not None), ("--ray", lambda a: a.ray is not None),
    ("--gpus-per-worker", lambda a: bool(a.gpus_per_worker)), ("--manifest", lambda a: a.manifest is not None),
)
#: Times a file is sent again to a server that answers 503 (busy, or its models still loading).
BUSY_TRIES = 20
#: Longest wait between two tries, whatever ``Retry-After`` says (seconds).
BUSY_WAIT_MAX = 30.0
#: Seconds a request may take, upload, conversion and answer (a long file converts for minutes on a CPU).
REQUEST_TIMEOUT = 3600.0
#: Seconds a stopped command waits for the server to cancel a job.
CANCEL_TIMEOUT = 10.0
#: Seconds the first question (``GET /v1/voices``) may take: an address that does not answer is not waited on for long.
HELLO_TIMEOUT = 60.0
#: Seconds a job followed waits for a server that stopped answering (restarting) before the command gives up.
RESTART_WAIT = 60.0


def check_remote_args(args: argparse.Namespace) -> None:
    """Usage errors for options the server decides (its models, device, batching) or that a
    run through it cannot honour; ``--workers`` at least 1."""
    given = [flag for flag, on in _SERVERS if on(args)]
    if given:
        raise UsageError(
            f"{', '.join(given)}: with --server the server's own settings apply (its voices, index, base "
            "weights, device and batching, set when `rvcfast serve` starts); only the conversion and output options are sent"
        )
    indexed = next((text for text in args.voice or [] if "," in text), None)
    if indexed is not None:
        raise UsageError(
            f"--voice {indexed!r}: with --server the server decides each voice's index (the one it serves the voice "
            "with); give --voice MODEL"
        )
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    check_url(args.server)


def check_url(url: str) -> None:
    """A usage error unless ``url`` is an http(s) address with a host, and no query or fragment
    (the API's paths are added to it: ``http://host:8000`` or a proxy's ``https://host/rvc``)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise UsageError(f"--server {url}: not a valid address ({exc}); expected e.g. http://127.0.0.1:8000") from None
    if parsed.scheme.lower() not in ("http", "https") or not parsed.hostname:
        hint = f" (did you mean http://{url}?)" if "://" not in url and url.strip() else ""
        raise UsageError(f"--server {url}: expected the server's address, e.g. http://127.0.0.1:8000{hint}")
    if parsed.query or parsed.fragment or url.rstrip().endswith(("?", "#")):
        raise UsageError(
            f"--server {url}: the address cannot carry a query or fragment ('?', '#'): the API's paths "
            "(/v1/convert...) are added to it; give e.g. http://127.0.0.1:8000 or https://host/prefix"
        )


def voice_id(model: str) -> str:
    """MODEL as the server's voice id: a voice file's stem (``alice.pth`` is served as ``alice``)."""
    path = Path(model)
    return path.stem if path.suffix.lower() in (".pth", ".onnx") else model


def _text(value: Any) -> str:
    """A parameter's value as the server reads it back (:func:`rvcfast.params.coerce_param`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return ",".join(_text(float(v)) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def request_fields(args: argparse.Namespace, pitch: float | None = None) -> list[tuple[str, str]]:
    """The query fields of every request: the conversion options that differ from the defaults
    (the server's defaults are the same), the F0 backend when given, the output format.
    ``pitch``: a voice's own key (``--voice-pitch``) instead of ``--pitch``."""
    from ..params import ConversionParams

    defaults = ConversionParams()
    given = {**params_from_args(args), **({} if pitch is None else {"pitch": pitch})}
    fields = [(name, _text(value)) for name, value in given.items() if value is not None and value != getattr(defaults, name)]
    if args.f0 is not None:
        fields.append(("f0", args.f0))
    fields.append(("format", args.format))
    if args.subtype is not None:
        fields.append(("subtype", args.subtype))
    if args.bitrate is not None:
        fields.append(("bitrate", str(args.bitrate)))
    return fields


def plan_voices(args: argparse.Namespace, listed: list[Any], name_template: str, voices: list[str],
                pitches: dict[str, float]) -> list[Any]:
    """The outputs of every (input, voice), voice after voice as a local run converts them:
    ``(voice, job)`` pairs, ``voice`` ``None`` for a run to one voice. ``listed``: the inputs
    (:func:`rvcfast.cli.scale.planned_jobs`), named for each voice as its batch names them
    (:func:`rvcfast.batch_inputs.expand_inputs` with the voice's ``{voice}`` and ``{pitch}``)."""
    from ..batch_inputs import BatchOptions, expand_inputs, pitch_text
    from ..params import ConversionParams

    options = BatchOptions(
        out_dir=args.output, format=args.format, skip_existing=args.skip_existing, recursive=args.recursive,
        name_template=name_template,
    )
    paths = [j.path for j in listed]
    planned: list[Any] = []
    for voice in voices:
        key = pitches.get(voice)
        pitch = ConversionParams.build(None, **{**params_from_args(args), **({} if key is None else {"pitch": key})}).pitch
        jobs = expand_inputs(paths, options, {"voice": voice, "pitch": pitch_text(pitch)})
        planned += [(voice if len(voices) > 1 else None, job) for job in jobs]
    return planned


def file_fields(fields: list[tuple[str, str]], path: Path) -> list[tuple[str, str]]:
    """The fields of the request for the input ``path``: ``fields`` and its
    :func:`~rvcfast.writing.source_id`, which the server records in the output as a local run
    records it (the path itself is not sent)."""
    from ..writing import source_id

    return [*fields, ("source_id", source_id(path))]


class ServerLost(BatchStopped):
    """The server cannot be reached (refused, reset, a TLS mismatch), or it refused this client's
    API key in the middle of a run: nothing more is sent and the batch ends with it, whatever
    ``--on-error`` says (the report says so for every file not converted)."""

    def __init__(self, message: str, why: str = "the server could not be reached") -> None:
        super().__init__(message, why)


class _JobLost(Exception):
    """The job followed is unknown to the server (404, 410): it restarted, or the job expired."""


class _NotAudio(Exception):
    """A 200 answer that is not what was asked for: not the audio (a proxy's page, another format), no job."""


def _rate(value: Any) -> int | None:
    """A voice's sample rate as ``GET /v1/voices`` says it, or ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_outputs(args: argparse.Namespace, rates: dict[str, int | None], pitches: dict[str, float]) -> None:
    """A usage error, before any file is sent, when the output asked for cannot be written at a
    voice's rate (``rates``: the server's voices used), as a local run refuses it: an Opus file
    at 40 kHz would fail every file with the same 422. m4a needs PyAV to be checked here; without
    it the server checks."""
    from ..errors import BackendUnavailableError, ParameterError
    from ..params import ConversionParams

    for voice, rate in rates.items():
        if rate is None:
            continue
        given = {**params_from_args(args), **({"pitch": pitches[voice]} if voice in pitches else {})}
        try:
            ConversionParams.build(None, **given).check_output(args.format, args.subtype, rate, args.bitrate)
        except BackendUnavailableError:
            continue
        except ParameterError as exc:
            raise UsageError(f"{exc} (voice {voice!r} is {rate} Hz on the server)") from None


class ServerError(Exception):
    """An answer that is not the audio: its status and the server's message."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class Server:
    """The address of a running ``rvcfast serve`` and its API key."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = REQUEST_TIMEOUT) -> None:
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout
        self._jobs: set[str] = set()  # the jobs created and not yet fetched, failed or cancelled
        self._jobs_lock = threading.Lock()
        self.parts = _Parts()  # the temporary files of the answers being written
        self.records = True  # whether it takes source_id (a server older than the field refuses it)

    def without_records(self) -> None:
        """The server refused ``source_id`` as unknown (an older rvcfast): later requests leave it
        out, and the command says once that these outputs record no input."""
        with self._jobs_lock:
            said, self.records = not self.records, False
        if not said:
            from ._common import say

            say(
                f"warning: {self.url} is an older rvcfast server that cannot record each output's input "
                "(source_id): a later --skip-existing run matches these outputs to inputs by name alone"
            )

    def voices(self) -> dict[str, int | None]:
        """The voice ids the server has (``GET /v1/voices``), each with its sample rate (``None``
        where the server does not say: a voice that failed to load)."""
        try:
            with self._request("/v1/voices", timeout=min(self.timeout, HELLO_TIMEOUT)) as answer:
                return {str(v["id"]): _rate(v.get("sample_rate")) for v in json.loads(answer.read())["voices"]}
        except ServerError as exc:
            hint = {
                401: " (give the key with --api-key or $RVCFAST_API_KEY)",
                404: f": GET {self.url}/v1/voices was not found; is {self.url} the address of an `rvcfast serve` "
                "(with its path prefix, behind a proxy)?",
            }.get(exc.status, "")
            raise RvcfastError(f"the server at {self.url} answered {exc.status}: {exc}{hint}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RvcfastError(f"{self.url} is not an rvcfast server: GET /v1/voices gave no voice list ({exc})") from None

    def _request(
        self, path: str, data: Any = None, headers: dict[str, str] | None = None, method: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        head = {"X-API-Key": self.api_key} if self.api_key else {}
        method = method or ("POST" if data is not None else "GET")
        req = urllib.request.Request(self.url + path, data=data, headers={**head, **(headers or {})}, method=method)
        wait = self.timeout if timeout is None else timeout
        try:
            return urllib.request.urlopen(req, timeout=wait)  # noqa: S310 - http(s) only (check_remote_args)
        except urllib.error.HTTPError as exc:
            raise _server_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            tls = "SSL" in str(reason) and self.url.lower().startswith("https:")
            hint = " (is it a plain http:// server? `rvcfast serve` speaks HTTP; https needs a TLS proxy in front)" if tls else ""
            raise ServerLost(f"cannot reach the server at {self.url}: {reason}{hint}") from None

    def _upload(self, route: str, path: Path, fields: list[tuple[str, str]]) -> Any:
        """``POST route`` with the file ``path`` as the body and ``fields`` in the query; the open answer."""
        query = urllib.parse.urlencode([*fields, ("filename", path.name)])
        with open(path, "rb") as body:
            return self._request(
                f"{route}?{query}", body, {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
            )

    def convert(self, path: Path, fields: list[tuple[str, str]], target: Path, stop: threading.Event) -> dict[str, str] | None:
        """Send the file ``path``; its answer written to ``target`` (whole, or nothing); the answer's
        headers, or ``None`` when ``stop`` was set before the answer was written (nothing written)."""
        with self._upload("/v1/convert", path, fields) as answer:
            return _write_answer(answer, target, stop, fields, self.parts)

    def convert_as_job(self, path: Path, fields: list[tuple[str, str]], target: Path, stop: threading.Event) -> tuple[dict[str, str], list[str]] | None:
        """:meth:`convert` through ``POST /v1/jobs``, for an input longer than the server converts in one
        request: the job followed until it is done (a stopped command cancels it); the audio's headers
        and the job's warnings, or ``None`` when stopped."""
        with self._upload("/v1/jobs", path, fields) as answer:
            try:
                job = str(json.loads(answer.read())["id"])
            except (ValueError, KeyError, TypeError):
                raise _NotAudio(f"the server's answer to POST /v1/jobs is no job ({answer.headers.get('Content-Type')})") from None
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            return self._follow(job, target, stop, fields)
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)

    def _follow(
        self, job: str, target: Path, stop: threading.Event, fields: list[tuple[str, str]]
    ) -> tuple[dict[str, str], list[str]] | None:
        """The job ``job`` followed until it is done, its audio written to ``target`` (see :meth:`convert_as_job`).
        A 502, 503 or 504 (a proxy's while the server restarts, a busy server) is asked again, not the job
        sent again; a server that cannot be reached is asked again for up to :data:`RESTART_WAIT` seconds
        (a restart: it then forgets the job); a job the server does not know (404, 410: it restarted, or
        the job expired) is :class:`_JobLost`."""
        wait, busy = 0.2, 0
        gone: float | None = None  # when the server stopped answering
        status: dict[str, Any] = {}
        while not stop.is_set():
            try:
                if status.get("state") != "done":
                    status = self._job("", job, _job_status)
                if status["state"] == "done":
                    headers = self._job("/audio", job, lambda answer: _write_answer(answer, target, stop, fields, self.parts))
                    return None if headers is None else (headers, [str(w) for w in status.get("warnings") or []])
            except ServerLost:
                gone = time.monotonic() if gone is None else gone
                if time.monotonic() - gone >= RESTART_WAIT:
                    raise
                stop.wait(1.0)
                continue
            except _NotAudio:
                self._delete(job)  # not followed any longer: not left running on the server
                raise
            except ServerError as exc:
                busy += 1
                if exc.status not in (502, 503, 504) or busy >= BUSY_TRIES:
                    raise
                stop.wait(min(exc.retry_after if exc.retry_after is not None else 1.0, BUSY_WAIT_MAX))
                continue
            busy, gone = 0, None
            if status["state"] not in ("queued", "running"):  # failed, cancelled
                raise ServerError(422 if status.get("error") else 500, str(status.get("error") or f"the job was {status['state']}"))
            stop.wait(wait)  # a stopped command cancels the job at once
            wait = min(2 * wait, 2.0)
        self._delete(job)
        return None

    def _job(self, route: str, job: str, read: Any) -> Any:
        """``read(answer)`` of ``GET /v1/jobs/{job}{route}``; :class:`_JobLost` when the server does not know the job."""
        try:
            with self._request(f"/v1/jobs/{job}{route}") as answer:
                return read(answer)
        except ServerError as exc:
            if exc.status in (404, 410):
                raise _JobLost(str(exc)) from None
            raise

    def cancel_jobs(self) -> None:
        """Cancel (``DELETE``) every job still under way: the command stopped. Called by the thread
        that stops the command, so that the jobs are gone before it ends (the threads following
        them are daemons, ended with the process); a server that does not answer is given up."""
        with self._jobs_lock:
            jobs, self._jobs = sorted(self._jobs), set()
        for job in jobs:
            self._delete(job)

    def _delete(self, job: str) -> None:
        with contextlib.suppress(Exception), self._request(f"/v1/jobs/{job}", method="DELETE", timeout=CANCEL_TIMEOUT):
            pass


def _job_status(answer: Any) -> dict[str, Any]:
    """The state of a job as ``GET /v1/jobs/{id}`` answers it; :class:`_NotAudio` for an answer
    that is no job's state (a proxy's page answered 200)."""
    try:
        status = json.loads(answer.read())
    except ValueError:
        status = None
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        ctype = answer.headers.get("Content-Type") or "no content type"
        raise _NotAudio(f"the server's answer to {answer.geturl() or 'GET /v1/jobs/...'} is no job state ({ctype})")
    return status


class _Parts:
    """The temporary files of the answers being written, removed at once by a command that stops
    (:meth:`remove`): the threads that write them are daemons, ended with the process before
    they could remove them themselves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[Path] = set()

    @contextlib.contextmanager
    def new(self, target: Path) -> Generator[Path, None, None]:
        """A new temporary file for ``target``, named as a local run names its own (``.<name>.<host>~<pid>~...``:
        a later run removes it if this process was killed; :func:`iter_remote` does, before its first file)."""
        from ..atomic import new_temporary
        from ..writing import this_host

        tmp = new_temporary(target, f"{this_host()}~{os.getpid()}")
        with self._lock:
            self._paths.add(tmp)
        try:
            yield tmp
        finally:
            with self._lock:
                self._paths.discard(tmp)

    def remove(self) -> None:
        """Delete every temporary file still being written (a thread writing one then fails quietly)."""
        with self._lock:
            paths, self._paths = sorted(self._paths), set()
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def _format(fields: list[tuple[str, str]]) -> str:
    """The output format a request asks for (``wav`` when not given)."""
    return next((value for name, value in fields if name == "format"), "wav")


def _check_audio(answer: Any, fmt: str) -> None:
    """:class:`_NotAudio` unless the answer's content type is audio, and not another format's
    (a proxy's login page answered 200 was written as the output)."""
    from ..serve.encode import MEDIA_TYPES

    ctype = (answer.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    other = next((name for name, media in MEDIA_TYPES.items() if media == ctype and name != fmt), None)
    if ctype and (not ctype.startswith("audio/") or other is not None):
        said = f"{other} audio ({ctype})" if other is not None else f"{ctype}, not audio"
        raise _NotAudio(f"the server's answer is {said}, where {fmt} audio was asked for")


def _check_rate(path: Path, fields: list[tuple[str, str]]) -> None:
    """:class:`_NotAudio` when the audio at ``path`` does not read to its end (wav, flac, ogg,
    mp3: what a local run's output always does) or is not at the rate ``--sample-rate`` asked
    for (as the format writes it: mp3 and AAC at their nearest rate)."""
    import soundfile as sf

    from ..sndfile import reads_to_its_end, sndfile_path
    from ..writing import written_rate

    fmt = _format(fields)
    if fmt == "m4a":  # libsndfile cannot read an m4a, and PyAV may be missing here: its boxes, then PyAV if it is
        got = _length(path)[1]
        if not _mp4_boxes_whole(path) or (not got and _have_av()):
            raise _NotAudio("the server's answer does not read as m4a audio to its end")
    else:  # one open: whole, and its rate
        try:
            with sf.SoundFile(sndfile_path(path)) as f:
                whole, got = reads_to_its_end(f), int(f.samplerate)
        except Exception:  # noqa: BLE001 - whatever libsndfile cannot open
            whole, got = False, 0
        if not whole:
            raise _NotAudio(f"the server's answer does not read as {fmt} audio to its end")
    asked = next((int(float(v)) for k, v in fields if k == "output_sample_rate"), None)
    if asked is None:
        return
    subtype = next((v for k, v in fields if k == "subtype"), None)
    want = written_rate(fmt, subtype, asked)
    if got and got != want:  # (an answer no decoder here opens is not checked: an m4a without PyAV)
        raise _NotAudio(f"the server's answer is at {got} Hz, where --sample-rate asked for {want} Hz")


def _mp4_boxes_whole(path: Path) -> bool:
    """Whether ``path`` is laid out as an MP4 file: top-level boxes whose sizes run exactly to its
    end (one whose size is 0 runs to the end), ``ftyp`` first, with a ``moov`` and an ``mdat``
    (what any m4a the server writes is). Read without a decoder: PyAV may be missing here."""
    import struct

    kinds: list[bytes] = []
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        at = 0
        while at < end:
            head = f.read(8)
            if len(head) < 8:
                return False
            size, kind = struct.unpack(">I4s", head)
            header = 8
            if size == 1:  # a 64-bit size follows
                more = f.read(8)
                if len(more) < 8:
                    return False
                size, header = struct.unpack(">Q", more)[0], 16
            elif size == 0:  # the last box, to the end of the file
                size = end - at
            if size < header or at + size > end:
                return False
            kinds.append(kind)
            at += size
            f.seek(at)
    return bool(kinds) and kinds[0] == b"ftyp" and b"moov" in kinds and b"mdat" in kinds


def _have_av() -> bool:
    """Whether PyAV can be imported here (found, not imported)."""
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _write_answer(
    answer: Any, target: Path, stop: threading.Event, fields: list[tuple[str, str]], parts: _Parts
) -> dict[str, str] | None:
    """The audio ``answer`` to the request of ``fields`` written to ``target`` whole, or nothing
    (``None``: ``stop`` was set; :class:`_NotAudio`: not the audio asked for); its headers. The
    temporary file it is written to first is one of ``parts``."""
    from ..atomic import atomic_write

    if stop.is_set():
        return None
    _check_audio(answer, _format(fields))
    target.parent.mkdir(parents=True, exist_ok=True)
    promised = answer.headers.get("Content-Length")
    try:
        with parts.new(target) as part, atomic_write(target, part) as tmp:
            with open(tmp, "wb") as out:
                while chunk := answer.read(1 << 20):
                    if stop.is_set():
                        raise _Stopped
                    out.write(chunk)
                # http.client's read(n) ends quietly where the connection does, whatever the length said
                if promised is not None and out.tell() != int(promised):
                    raise http.client.IncompleteRead(b"", int(promised) - out.tell())
            _check_rate(tmp, fields)
    except _Stopped:
        return None  # the temporary file is gone, an earlier output at target as it was
    return dict(answer.headers.items())


class _Stopped(Exception):
    """The command stopped while an answer was written."""


def _server_error(exc: urllib.error.HTTPError) -> ServerError:
    try:
        text = exc.read().decode("utf-8", "replace")
        message = str(json.loads(text).get("error") or text)
    except (ValueError, AttributeError, OSError):
        message = str(exc.reason)
    retry = exc.headers.get("Retry-After") if exc.headers else None
    try:
        wait = float(retry) if retry is not None else None
    except ValueError:  # an HTTP date: the default wait
        wait = None
    if wait is not None and not 0 <= wait < float("inf"):  # "-1", "nan": time.sleep refused them (a traceback)
        wait = None
    return ServerError(exc.code, " ".join(message.split()), wait)


def _named(message: str, name: str, source: str) -> str:
    """The server's message about the upload ``name`` naming ``source`` instead: the server knows
    the file by that name alone, reduced to a harmless one (``é #1.wav`` is ``_ _1.wav`` there)."""
    from ..serve.intake import safe_name

    for said in (f"{name}: ", f"{safe_name(name, 'audio')}: ", "audio: "):
        if message.startswith(said):
            return f"{source}: {message[len(said):]}"
    return f"{source}: {message}"


def _send(server: Server, path: Path, fields: list[tuple[str, str]], target: Path,
          stop: threading.Event) -> tuple[dict[str, str] | None, list[str]]:
    """``path`` converted by the server into ``target``: the answer's headers (``None``: stopped)
    and a job's warnings. A busy server is asked again, a file too long for one request goes
    through a job (sent again once if the server forgets the job: it restarted), an older server
    gets no ``source_id``; another refusal raises its :class:`ServerError`."""
    as_job = False  # an input longer than one request takes: through POST /v1/jobs
    lost = 0
    for tries in range(1, BUSY_TRIES + 1):
        try:
            if not as_job:
                return server.convert(path, fields, target, stop), []
            done = server.convert_as_job(path, fields, target, stop)
            return done if done is not None else (None, [])
        except _JobLost as exc:
            lost += 1
            if lost > 1:
                raise ServerError(404, f"the server lost the job converting it twice ({exc}): did the server restart?") from None
        except ServerError as exc:
            if exc.status == 503 and tries < BUSY_TRIES:
                time.sleep(min(exc.retry_after if exc.retry_after is not None else 1.0, BUSY_WAIT_MAX))
            elif exc.status == 413 and not as_job and "POST /v1/jobs" in str(exc):
                as_job = True
            elif exc.status == 422 and str(exc).startswith("unknown conversion parameter 'source_id'"):
                server.without_records()  # an older server: converted without the record
                fields = [f for f in fields if f[0] != "source_id"]
            else:
                raise
    raise ServerError(503, f"the server was still busy after {BUSY_TRIES} tries")


def _one(server: Server, work: Any, skip_existing: bool, stop: threading.Event) -> Any:
    """The :class:`~rvcfast.Result` of one planned (input, voice): ``work`` is ``(voice, job, fields)``.
    Raises :class:`ServerLost` (naming the file) when the server cannot be reached or refuses the
    API key, never for the file's own failure. The input's :func:`~rvcfast.writing.source_id` is
    sent with it: the server records it in the output, as a local run does."""
    import numpy as np

    from ..result import Result
    from ..writing import finished_output

    voice, job, fields = work
    source, target = str(job.path), job.out_path

    def result(rate: int = 0, **fields: Any) -> Any:  # the audio is in the file (or there is none)
        return Result(np.zeros(0, np.float32), rate, source=source, index=job.number, voice=voice, **fields)

    if skip_existing and finished_output(target):
        return result(output_path=str(target), skipped=True)
    if job.problem is not None:
        return result(error=job.problem)
    fields = file_fields(fields, job.path) if server.records else fields
    t0 = time.perf_counter()
    try:
        headers, job_warnings = _send(server, job.path, fields, target, stop)
    except ServerLost as exc:
        raise ServerLost(f"{source}: {exc}; nothing more was sent (the outputs written are whole: "
                         "the same command with --skip-existing goes on)", exc.why) from None
    except ServerError as exc:
        why = f"{_named(str(exc), job.path.name, source)} (the server answered {exc.status})"
        if exc.status == 401:  # the key was taken at the start (GET /v1/voices): changed on the server since
            raise ServerLost(
                f"{why}; nothing more was sent (give the key with --api-key or $RVCFAST_API_KEY)", "the server refused the API key"
            ) from None
        return result(error=why)
    except _NotAudio as exc:
        return result(error=f"{source}: {exc}; nothing was written")
    except OSError as exc:  # the input cannot be read, the output cannot be written, the answer was cut
        return result(error=f"{source}: {exc.strerror or exc}")
    except http.client.HTTPException as exc:  # the answer ended before its length (the server stopped)
        return result(error=f"{source}: the server's answer was cut short ({type(exc).__name__}); nothing was written")
    if headers is None:
        return None  # stopped: not reported (its output was not written)
    lower = {k.lower(): v for k, v in headers.items()}
    # the server's stages (and its queue); its "total" is the request's, measured here with the upload
    timings = {k: v for k, v in _header(lower, "x-rvcfast-timings", dict).items() if k != "total"}
    timings["request"] = time.perf_counter() - t0
    warnings = [str(w) for w in _header(lower, "x-rvcfast-warnings", list)] + job_warnings
    seconds, rate = _length(target)
    said_rate = _header(lower, "x-rvcfast-sample-rate", int) if not rate else 0
    return result(
        rate or said_rate, timings=timings, output_path=str(target),
        input_seconds=_length(job.path)[0], warnings=[_named(w, job.path.name, source) for w in warnings],
        frames=round(seconds * rate),
    )


def _header(headers: dict[str, str], name: str, kind: type) -> Any:
    """The JSON value of the answer's header ``name`` (for the summary and report) when it is a
    ``kind`` (a dict's numbers as floats), else an empty one: a header a proxy or another
    server version changed does not fail a file whose audio was written."""
    try:
        value = json.loads(headers.get(name) or "null")
    except ValueError:
        value = None
    if kind is dict and isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
    return value if isinstance(value, kind) else kind()


def _length(path: Path) -> tuple[float, int]:
    """Seconds and sample rate of the audio file ``path`` from its header, through the decoder a
    local run reads it with (an m4a through PyAV); ``(0, 0)`` when none opens it (summary only)."""
    from ..audio import _source

    try:
        src = _source(path)
    except Exception:  # noqa: BLE001 - lengths for the summary only
        return 0.0, 0
    try:
        rate = int(src.rate)
        return (src.frames / rate if rate > 0 and src.frames > 0 else 0.0), rate
    except Exception:  # noqa: BLE001
        return 0.0, 0
    finally:
        src.close()


def iter_remote(server: Server, planned: list[tuple[str | None, Any, list[tuple[str, str]]]], workers: int,
                skip_existing: bool) -> Generator[Any, None, None]:
    """The Results of ``planned`` ``(voice, job, fields)`` in their order, ``workers`` requests in
    flight. When the caller stops (Ctrl-C, ``--on-error stop``; closing this generator) no other
    file is sent, an answer still on its way is not written, and the jobs under way are cancelled
    before it returns; the threads are daemons: the command does not wait for the conversions under way.
    A :class:`ServerLost` is raised in its file's turn, and no file is sent after it."""
    work: queue.Queue[tuple[int, Any]] = queue.Queue()
    done: dict[int, Any] = {}
    ready = threading.Condition()
    stop = threading.Event()
    lost = threading.Event()  # the server is gone: the answers under way are awaited, nothing more is sent
    from ..writing import remove_stale_parts

    # temporary files of a killed command, as a local batch removes them: once per output folder, not per write
    for folder in dict.fromkeys(Path(job.out_path).parent for _, job, _ in planned):
        remove_stale_parts(folder)
    for k, item in enumerate(planned):
        work.put((k, item))

    def worker() -> None:
        while not stop.is_set() and not lost.is_set():
            try:
                k, item = work.get_nowait()
            except queue.Empty:
                return
            try:
                res = _one(server, item, skip_existing, stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, in its turn
                if isinstance(exc, ServerLost):
                    lost.set()
                res = exc
            with ready:
                done[k] = res
                ready.notify_all()

    threads = [threading.Thread(target=worker, name="rvcfast-remote", daemon=True) for _ in range(max(1, min(workers, len(planned))))]
    for thread in threads:
        thread.start()
    try:
        for k in range(len(planned)):
            with ready:
                while k not in done:
                    if lost.is_set() and not any(t.is_alive() for t in threads):
                        raise next(v for _, v in sorted(done.items()) if isinstance(v, ServerLost))
                    ready.wait(0.5)
                res = done.pop(k)
            if isinstance(res, BaseException):
                raise res
            yield res
    finally:
        stop.set()
        server.parts.remove()  # an answer still on its way: its thread may not get to remove it (a daemon)
        server.cancel_jobs()


def api_key(args: argparse.Namespace) -> str | None:
    """``--api-key``, else ``$RVCFAST_API_KEY`` (the variable ``rvcfast serve`` reads too)."""
    return args.api_key if args.api_key is not None else os.environ.get("RVCFAST_API_KEY") or None

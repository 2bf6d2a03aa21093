"""The conversion routes: ``POST /v1/convert`` (whole file or streamed) and the job routes.

Every conversion goes the same way: admission (``max_queue``) → the request's fields
and audio (:mod:`~rvcfast.serve.intake`, :mod:`~rvcfast.serve.forms`) → the input's
length, read from its header (``max_input_seconds``, ``max_job_seconds``) → the voice's
engine (loaded on demand) → ``Engine.prepare`` in the prepare pool → the model worker
(:mod:`~rvcfast.serve.scheduler`): inputs of one segment as one-shot conversions that
may share model calls with other requests, longer ones and streams one segment per
turn → encoding in the prepare pool. The answer carries ``X-Rvcfast-Timings`` (seconds
per stage, JSON) and, when the input had oddities, ``X-Rvcfast-Warnings``.

A client that disconnects before its answer is ready gives its work up: a queued
conversion is dropped, a running one stops at its next model batch (once every request
sharing its engine call has left), a long one before its next segment; the admission slot
is free at once, and the request is counted with status 499 in the metrics.

This module imports FastAPI; :func:`rvcfast.serve.create_app` imports it only after
checking that the ``serve`` extra is installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from ..errors import AudioError, AudioTooLongError, BackendUnavailableError, ModelLoadError, ParameterError
from .answers import FieldError, dumps_header, error_response
from .encode import MEDIA_TYPES, check_output_rate, encode_audio, pcm_bytes, wav_stream_header
from .forms import ConvertOptions, check_values, form_schema, parse_fields
from .intake import CLIENT_CLOSED, Intake, read_request
from .jobs import ACTIVE, JOB_ID, Job
from .middleware import current_request, request_id
from .scheduler import ShuttingDown, call_contained
from .state import ServerState

if TYPE_CHECKING:
    from ..engine import Engine
    from ..params import ConversionParams
    from ..pipeline import PreparedAudio

__all__ = ["add_routes", "InputTooLong", "input_seconds", "CLIENT_CLOSED"]

T = TypeVar("T")

_log = logging.getLogger("rvcfast.serve")


def _noted(name: str | None = None, voice: str | None = None) -> None:
    """Tell the request's log line the input's file name and the voice."""
    info = current_request()
    if info is not None:
        info.input = name if name is not None else info.input
        info.voice = voice if voice is not None else info.voice


def _log_failure(what: str, name: str, voice: str, exc: BaseException | None, traceback: bool = True) -> None:
    """A conversion that failed on the server: logged with the request id, the input's name and, for
    a failure of the server's own (not a bad input), the traceback (unless uvicorn logs it)."""
    trace = exc if traceback and exc is not None and not isinstance(exc, (AudioError, ParameterError)) else None
    why = "" if exc is None else f": {type(exc).__name__}: {exc}"
    _log.error("%s of %s (voice %s) failed (request_id=%s)%s", what, name, voice, request_id(), why, exc_info=trace)



class InputTooLong(Exception):
    """An input is longer than the server accepts for its route (answered with 413)."""

    def __init__(self, message: str, seconds: float, limit: float) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.limit = limit


def input_seconds(path: Path, limit: float) -> tuple[float, bool] | None:
    """Seconds of audio in ``path`` and whether that is its whole length (see
    :func:`rvcfast.audio.measure_seconds`); ``None`` if no decoder opens it."""
    from ..audio import measure_seconds

    return measure_seconds(path, limit)


def input_channels(path: Path) -> int | None:
    """Channels of the audio in ``path`` (see :func:`rvcfast.audio.count_channels`)."""
    from ..audio import count_channels

    return count_channels(path)


async def _check_length(state: ServerState, intake: Intake, route: str, each: bool = False) -> int:
    """Refuse an input longer than the route's limit (:class:`InputTooLong`), before it is decoded;
    the channels that will be converted. With ``each`` (``channels=each``) every channel is, and
    the limit is on the seconds of all of them together."""
    jobs = route == "/v1/jobs"
    limit = float(state.cfg.max_job_seconds if jobs else state.cfg.max_input_seconds)
    assert intake.path is not None
    found_channels: int | None = await state.in_pool(input_channels, intake.path) if each else 1
    channels = max(1, found_channels or 1)
    found = await state.in_pool(input_seconds, intake.path, limit / channels)
    if found is None or found[0] * channels <= limit:
        return channels
    if channels > 1:
        raise InputTooLong(
            f"{intake.name} has {channels} channels of {found[0]:.1f} s{'' if found[1] else ' or more'}: converting each "
            f"is {found[0] * channels:.1f} s of audio; {route} takes at most {limit:g} s (leave out channels=each to mix them down)",
            found[0] * channels, limit,
        )
    seconds, whole = found
    length = f"{seconds:.1f} s long" if whole else f"longer than {limit:g} s"
    message = f"{intake.name} is {length}; {route} takes inputs of at most {limit:g} s"
    if jobs:
        message += " (the server's --max-job-seconds)"
    elif float(state.cfg.max_job_seconds) > limit:
        message += f" (--max-input-seconds): send longer ones to POST /v1/jobs, up to {float(state.cfg.max_job_seconds):g} s"
    raise InputTooLong(message, seconds, limit)


@dataclass
class _Work:
    """A request ready for the model worker."""

    engine: Engine
    params: ConversionParams
    prep: PreparedAudio
    f0: Any
    options: ConvertOptions
    name: str
    prepare_seconds: float

    @property
    def rate(self) -> int:
        q = self.params.output_sample_rate
        return int(q) if q is not None else int(self.engine.sample_rate)


async def _engine(state: ServerState, options: ConvertOptions) -> Engine:
    """The voice's engine; a voice or F0 backend that cannot be loaded is named in the error."""
    try:
        return await state.engine_for(options.voice, options.f0)
    except BackendUnavailableError as exc:  # the backend needs an extra the server lacks
        raise FieldError("f0", str(exc)) from None
    except ModelLoadError as exc:  # answered 500 (a server-side file), the message names the file only
        raise ModelLoadError(None, f"voice {options.voice!r} cannot be used: {state._hide_paths(str(exc))}") from None


async def _counted(state: ServerState, stage: str, step: Awaitable[T]) -> T:
    """Await ``step``; a failure other than a refused parameter is counted as a conversion failure at ``stage``."""
    try:
        return await step
    except ParameterError:  # the client's choice (422), not a failed conversion
        raise
    except Exception:
        state.metrics.inc("rvcfast_conversion_failures_total", stage=stage)
        raise


async def _prepare(state: ServerState, intake: Intake, options: ConvertOptions) -> _Work:
    """The voice's engine, the checked parameters, the decoded input (and a CPU F0 track)."""
    # before the voice is loaded or the input decoded
    channels = await _check_length(state, intake, "/v1/convert", options.overrides.get("channels") == "each")
    engine = await _engine(state, options)
    params = check_values(options.overrides, engine.vocoder)
    check_output_rate(options.format, options.subtype, params.output_rate(engine.sample_rate), options.bitrate)  # before any work
    params.check_output(options.format, options.subtype, engine.sample_rate)  # noise reduction's rates too
    t0 = time.perf_counter()
    limit = float(state.cfg.max_input_seconds)
    try:
        prep = await _counted(state, "decode", state.in_pool(_prepared, engine, intake.path, params, limit / channels))
    except AudioTooLongError:  # a header that under-states the length: found while decoding, bounded
        what = f"is longer than {limit:g} s" if channels == 1 else f"has {channels} channels of more than {limit / channels:g} s"
        raise InputTooLong(
            f"{intake.name} {what}; /v1/convert takes inputs of at most {limit:g} s", limit, limit
        ) from None
    except AudioError as exc:
        raise AudioError(None, intake.hide(str(exc))) from None
    ext = engine.f0_extractor_for(params)
    f0: np.ndarray | tuple[np.ndarray, ...] | Exception | None = None
    if ext is not None and getattr(ext, "cpu_bound", False):
        # numpy trackers (harvest, dio, pm) run beside the model worker, not on it
        try:  # every channel's track (channels="each"), not only the first's
            tracks = [await state.in_pool(ext.extract, c.padded) for c in (prep, *prep.more_channels)]
            f0 = tracks[0] if len(tracks) == 1 else tuple(tracks)
        except Exception as exc:  # noqa: BLE001 - the engine reports it for this request
            f0 = exc
    return _Work(engine, params, prep, f0, options, intake.name, time.perf_counter() - t0)


def _prepared(engine: Engine, path: Path, params: ConversionParams, limit: float) -> PreparedAudio:
    """``Engine.prepare``, and an :class:`AudioError` for an input too short to give one output
    sample (the client's input, answered 422 before the model worker is asked, not a failed conversion)."""
    prep = engine.prepare(path, params=params, max_seconds=limit)
    engine.check_convertible(prep, params)
    return prep


async def _convert_whole(
    state: ServerState, work: _Work
) -> tuple[np.ndarray, int, dict[str, float], str | None, list[str]]:
    """Audio, rate, timings, error and warnings of a whole-file conversion.

    Cancelling it (the client left) drops a one-shot conversion that has not started, stops
    a running one at its next model batch (unless it shares the call with other requests)
    and a long one before its next segment.
    """
    from ..pipeline import finish

    assert state.scheduler is not None
    failed = np.zeros(0, np.float32), work.engine.sample_rate
    notes = list(work.prep.warnings)
    if len(work.prep.segments) <= 1 or work.prep.more_channels:  # channels="each": converted whole
        future = state.scheduler.submit(work.engine, work.prep, work.params, work.f0)
        try:
            res = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client left: dropped if queued, stopped if running alone
            state.scheduler.give_up(future)
            raise
        except Exception as exc:  # noqa: BLE001 - the model call failed for this request alone
            _log_failure("conversion", work.name, work.options.voice, exc)
            return *failed, {}, f"{type(exc).__name__}: {exc}", notes
        if res.error is not None:  # failed inside a model call it may have shared with other requests
            _log_failure("conversion", work.name, work.options.voice, res.exception)
        return res.audio, res.sample_rate, res.timings, res.error, res.warnings
    # a long input: one segment per turn of the model worker, finished as Engine.run finishes it
    timings: dict[str, float] = {}
    t_queue = time.perf_counter()
    pieces: list[np.ndarray] = []
    try:
        async for piece in state.steps(work.engine.stream(work.prep, work.params, f0=work.f0, raw=True, timings=timings, pauses=True)):
            pieces.append(piece)
    except ShuttingDown:  # refused at shutdown: a 503, as for a one-shot conversion
        raise
    except Exception as exc:  # noqa: BLE001 - reported as this request's failure
        _log_failure("conversion", work.name, work.options.voice, exc)
        return *failed, timings, f"{type(exc).__name__}: {exc}", notes
    # waiting for the model worker: before the first segment and between segments (other requests' turns)
    timings["queue"] = max(0.0, time.perf_counter() - t_queue - sum(timings.values()))
    t0 = time.perf_counter()
    audio, rate = await _counted(
        state, "convert", state.in_pool(finish, pieces, work.prep, work.engine.sample_rate, work.params, notes)
    )
    timings["post"] = timings.get("post", 0.0) + time.perf_counter() - t0
    return audio, rate, timings, None, notes


def _headers(timings: dict[str, float], warnings: list[str], intake: Intake) -> dict[str, str]:
    out = {"X-Rvcfast-Timings": dumps_header({k: round(v, 4) for k, v in timings.items()})}
    if warnings:
        out["X-Rvcfast-Warnings"] = dumps_header([intake.hide(w) for w in warnings])
    return out


async def _client_gone(receive: Callable[[], Awaitable[Any]]) -> None:
    """Return when the client disconnects (the request body has been read already)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def _unless_client_leaves(request: Any, work: Coroutine[Any, Any, Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it and answer 499 (which only the metrics see).

    Cancelling gives the model worker's share back: a queued one-shot conversion is
    dropped, a step task stops at its next turn (the segment in progress finishes).
    """
    task: asyncio.Future[Any] = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(request.receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait((task,))  # its cleanup (spool files, the step task) runs before the slot is given back
        return Response(status_code=CLIENT_CLOSED)
    finally:
        gone.cancel()
        task.cancel()


async def _convert(state: ServerState, request: Any) -> Any:
    t_start = time.perf_counter()
    intake = await read_request(request, state.uploads)
    _noted(intake.name)
    try:
        return await _unless_client_leaves(request, _convert_input(state, intake, t_start))
    finally:
        intake.cleanup()


async def _convert_input(state: ServerState, intake: Intake, t_start: float) -> Any:
    try:
        options = parse_fields(intake.fields)
        _noted(voice=options.voice)
        work = await _prepare(state, intake, options)
    finally:
        intake.cleanup()
    if options.stream:
        return await _stream(state, work, intake, t_start)
    audio, rate, timings, error, warnings = await _convert_whole(state, work)
    if error is not None:
        state.metrics.inc("rvcfast_conversion_failures_total", stage="convert")
        return error_response(500, state._hide_paths(intake.hide(error)))
    t0 = time.perf_counter()
    extra: dict[str, Any] = {"bitrate": options.bitrate} if options.bitrate is not None else {}  # given only when asked for
    extra.update({"recorded": options.source_id} if options.source_id is not None else {})
    body, rate = await _counted(
        state, "encode", state.in_pool(encode_audio, audio, rate, options.format, options.subtype, **extra)
    )
    timings = {"decode": work.prepare_seconds, **timings, "encode": time.perf_counter() - t0}
    state.metrics.add_stages(timings)
    state.metrics.inc("rvcfast_audio_seconds_total", work.prep.seconds)
    timings["total"] = time.perf_counter() - t_start
    headers = _headers(timings, warnings, intake)
    headers["X-Rvcfast-Sample-Rate"] = str(rate)
    return Response(body, media_type=MEDIA_TYPES[options.format], headers=headers)


async def _stream(state: ServerState, work: _Work, intake: Intake, t_start: float) -> Any:
    """A chunked WAV: the header, then each finished piece as the model worker produces it."""
    timings: dict[str, float] = {}
    pieces = state.steps(work.engine.stream(work.prep, work.params, f0=work.f0, timings=timings, pauses=True))  # an async generator: its own iterator
    try:
        first = await pieces.__anext__()  # F0 and the first segment: failures still get a proper status
    except StopAsyncIteration:
        first = np.zeros(0, np.float32)
    except Exception as exc:  # noqa: BLE001
        await pieces.aclose()
        _log_failure("streamed conversion", work.name, work.options.voice, exc)
        state.metrics.inc("rvcfast_conversion_failures_total", stage="convert")
        return error_response(500, state._hide_paths(intake.hide(f"{type(exc).__name__}: {exc}")))
    rate, subtype = work.rate, work.options.subtype
    try:  # NaN in the first piece (a diverging model): refused before the status, as a whole file is
        first_bytes = await state.in_pool(pcm_bytes, first, rate, subtype)
    except AudioError as exc:
        await pieces.aclose()
        state.metrics.inc("rvcfast_conversion_failures_total", stage="convert")
        return error_response(422, state._hide_paths(intake.hide(str(exc))))

    async def body() -> Any:
        try:
            yield wav_stream_header(rate, subtype)
            yield first_bytes
            async for piece in pieces:
                yield await state.in_pool(pcm_bytes, piece, rate, subtype)
            state.metrics.add_stages(timings)
            state.metrics.inc("rvcfast_audio_seconds_total", work.prep.seconds)
        except Exception as exc:  # noqa: BLE001 - headers are gone: the client sees a short stream
            state.metrics.inc("rvcfast_conversion_failures_total", stage="stream")
            # re-raised: uvicorn logs the traceback ("Exception in ASGI application"), this line the request
            _log_failure("streamed conversion (cut short after its headers)", work.name, work.options.voice, exc, traceback=False)
            raise

    async def release() -> None:
        await pieces.aclose()
        state.admission.leave(time.perf_counter() - t_start)

    first_at = {"decode": work.prepare_seconds, **timings, "first_piece": time.perf_counter() - t_start}
    headers = _headers(first_at, work.prep.warnings, intake)
    headers["X-Rvcfast-Sample-Rate"] = str(rate)
    return _SlotStream(body(), release, media_type="audio/wav", headers=headers)


class _SlotStream(StreamingResponse):
    """A streamed answer that gives its admission slot back however it ends (done, failed, client gone)."""

    rvcfast_owns_slot = True

    def __init__(self, content: Any, release: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


# ---------------------------------------------------------------------- jobs


async def _to_the_end(state: ServerState, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """:meth:`ServerState.in_pool`, except that a cancelled caller still waits for the thread to finish.

    A job cancelled while its result is written must not see the file appear after it
    has cleaned up: its cleanup runs only once no thread works for it any more.
    """
    fut = asyncio.get_running_loop().run_in_executor(state.pool, lambda: call_contained(fn, *args, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            try:
                await asyncio.wait((fut,))
            except asyncio.CancelledError:
                continue  # cancelled again: still wait, then cancel once
        raise


def _channel_tracks(engine: Engine, channels: list[PreparedAudio], params: ConversionParams) -> Iterator[list[np.ndarray] | None]:
    """Every channel's raw F0 track, then the list of them: block by block where the backend
    tracks in blocks, a ``None`` between blocks and channels (the other requests' turns)."""
    from ..engine_progress import stream_f0

    ext = engine.f0_extractor_for(params)
    tracks: list[np.ndarray] = []
    for k, channel in enumerate(channels):
        if k:
            yield None
        track, _ = yield from stream_f0(ext, channel.padded, True, None)
        if track is None:  # a backend without blocks: the whole track at once
            whole = engine.extract_f0([channel], params)[0]
            if isinstance(whole, BaseException):
                raise whole
            track = np.asarray(whole)
        tracks.append(track)
    yield tracks


def _job_progress(job: Job, channel: int, channels: int) -> Callable[[int, float], None]:
    """``Engine.stream``'s ``on_progress`` for channel ``channel`` of ``channels``: sets ``job.progress``
    (0 to 0.95 over the conversion, F0 blocks of a long input included; finishing and writing the
    file are the rest). It only moves forward."""

    def moved(_k: int, fraction: float) -> None:
        job.progress = max(job.progress, 0.95 * (channel + min(max(fraction, 0.0), 1.0)) / max(1, channels))

    return moved


async def _run_job(state: ServerState, job: Job, engine: Engine, params: ConversionParams, source: Path) -> None:
    """Decode, convert segment by segment into ``<id>.raw``, finish, write ``<id>.<format>``."""
    from ..pipeline import finish
    from ..writing import write_audio_atomic, written_rate

    raw_path, out_path = state.jobs.path(job, ".raw"), state.jobs.path(job, f".{job.format}")
    try:
        t0 = time.perf_counter()
        limit = float(state.cfg.max_job_seconds)
        if params.channels == "each":  # the limit is on every channel's seconds together
            found_channels: int | None = await state.in_pool(input_channels, source)
            limit /= max(1, found_channels or 1)
        prep = await _to_the_end(state, engine.prepare, source, params=params, max_seconds=limit)
        job.timings["decode"] = time.perf_counter() - t0
        job.started, job.state = time.time(), "running"
        job.input_seconds, job.segments = prep.seconds, len(prep.segments)
        job.warnings = [w.replace(str(source), job.input_name) for w in prep.warnings]
        # channels="each": the channels one after the other, each segment by segment
        channels = [dataclasses.replace(c, more_channels=()) for c in (prep, *prep.more_channels)]
        tracks: list[Any] = [None] * len(channels)
        key = None
        from ..engine_items import shared_key_target

        target = shared_key_target(params)
        if len(channels) > 1 and target is not None and engine.vocoder.has_f0:
            # one proposed-pitch key for every channel (each worked out its own: channels a semitone apart)
            async for step in state.steps(_channel_tracks(engine, channels, params)):
                tracks = step if step is not None else tracks
            from ..f0.post import proposed_pitch_offset_of_channels

            key = proposed_pitch_offset_of_channels(tracks, target)
        with open(raw_path, "wb") as raw:
            for c, channel in enumerate(channels):
                moved = _job_progress(job, c, len(channels))
                async for piece in state.steps(engine.stream(
                    channel, params, f0=tracks[c], key=key, raw=True, timings=job.timings, pauses=True, on_progress=moved
                )):
                    raw.write(np.ascontiguousarray(piece, dtype=np.float32).tobytes())
        del channels
        t0 = time.perf_counter()
        audio: np.ndarray = np.memmap(raw_path, dtype=np.float32, mode="r+") if raw_path.stat().st_size else np.zeros(0, np.float32)
        if prep.more_channels:
            audio = audio.reshape(prep.n_channels, -1).T  # [samples, channels], a view of the file
        notes: list[str] = []
        out, rate = await _to_the_end(state, finish, audio, prep, engine.sample_rate, params, notes)
        job.warnings += [w.replace(str(source), job.input_name) for w in notes]
        del audio, prep
        await _to_the_end(
            state, write_audio_atomic, out_path, out, rate, format=job.format, subtype=job.subtype, bitrate=job.bitrate,
            recorded=job.source_id,
        )
        job.timings["post"] = job.timings.get("post", 0.0) + time.perf_counter() - t0
        job.sample_rate = written_rate(job.format, job.subtype, rate)
        job.result, job.bytes = out_path, out_path.stat().st_size
        job.finished = time.time()
        job.state, job.progress = "done", 1.0
        state.metrics.add_stages(job.timings)
        state.metrics.inc("rvcfast_audio_seconds_total", job.input_seconds or 0.0)
        _log.info("job %s done: %s (voice %s, %.1f s of audio) in %.1f s (request_id=%s)", job.id, job.input_name, job.voice,
                  job.input_seconds or 0.0, job.finished - job.created, request_id())
    except Exception as exc:  # noqa: BLE001 - the job's failure, reported by GET /v1/jobs/{id}
        text = f"{exc}" if isinstance(exc, AudioError) else f"{type(exc).__name__}: {exc}"
        job.error = state._hide_paths(text.replace(str(source), job.input_name))
        job.finished = time.time()
        job.state = "failed"
        state.metrics.inc("rvcfast_conversion_failures_total", stage="job")
        trace = None if isinstance(exc, (AudioError, ParameterError)) else exc  # a bad input: no traceback
        _log.error("job %s failed: %s (voice %s): %s (request_id=%s)", job.id, job.input_name, job.voice, job.error,
                   request_id(), exc_info=trace)


def _start_job(state: ServerState, job: Job, engine: Engine, params: ConversionParams, source: Path) -> None:
    """Run the job in a task whose end (done, failed or cancelled, even before it started) cleans up."""
    t_start = time.perf_counter()
    task = asyncio.create_task(_run_job(state, job, engine, params, source))
    job.handle = task
    task.add_done_callback(lambda _: _job_ended(state, job, source, t_start))


def _job_ended(state: ServerState, job: Job, source: Path, t_start: float) -> None:
    """Delete the job's input and raw file (all its files if it was deleted), give its slot back."""
    try:
        if job.state in ACTIVE:  # cancelled: deleted by its client, or the server is stopping
            job.error = "the job was cancelled: the server stopped before it finished"
            job.finished = time.time()
            job.state = "failed"
            if state.jobs.holds(job):  # not deleted (DELETE forgets the job before its task ends): the server stops
                _log.warning("job %s cancelled: %s (voice %s) at %.0f %%: the server stopped before it finished (request_id=%s)",
                             job.id, job.input_name, job.voice, 100 * job.progress, request_id())
        for p in (state.jobs.path(job, ".raw"), source):
            p.unlink(missing_ok=True)
        if not state.jobs.holds(job):  # deleted while it ran: nothing it wrote may stay
            state.jobs.delete_files(job)
    finally:
        state.admission.leave(time.perf_counter() - t_start)
        state.jobs.sweep()


async def _create_job(state: ServerState, request: Any) -> Any:
    intake = await read_request(request, state.uploads)
    _noted(intake.name)
    try:
        options = parse_fields(intake.fields)
        _noted(voice=options.voice)
        if options.stream:
            raise FieldError("stream", "stream=true is for POST /v1/convert; a job's result is fetched when it is done")
        await _check_length(state, intake, "/v1/jobs", options.overrides.get("channels") == "each")
        engine = await _engine(state, options)
        params = check_values(options.overrides, engine.vocoder)
        check_output_rate(options.format, options.subtype, params.output_rate(engine.sample_rate), options.bitrate)
        params.check_output(options.format, options.subtype, engine.sample_rate)
        job = state.jobs.create(
            options.voice, intake.name, options.format, options.subtype, options.bitrate, options.source_id
        )
        assert intake.path is not None
        source = state.jobs.path(job, ".in" + intake.path.suffix)
        try:
            intake.path.replace(source)
        except OSError:  # the spool's disk: no job left "queued" for ever
            state.jobs.remove(job)
            raise
        intake.path = None
    finally:
        intake.cleanup()
    _start_job(state, job, engine, params, source)
    return JSONResponse(
        {**job.public(), "status_url": f"/v1/jobs/{job.id}"}, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


def _job(state: ServerState, job_id: str) -> Job:
    if not JOB_ID.match(job_id):
        raise HTTPException(404, f"no job {job_id!r} (ids are 32 hex digits)")
    try:
        return state.jobs.get(job_id)
    except KeyError:
        raise HTTPException(404, f"no job {job_id!r}: unknown, deleted, or expired and removed") from None


def _fetched(job: Job) -> None:
    job.fetched = True  # sent once: the result may now be removed for space


# ---------------------------------------------------------------------- registration


async def _admitted(state: ServerState, request: Any, handler: Any, keep_slot: bool = False) -> Any:
    """Run ``handler`` holding an admission slot (released here unless the response or a job keeps it)."""
    state.check_ready()
    state.admission.enter()
    t0 = time.perf_counter()
    kept = False
    try:
        response = await handler(state, request)
        kept = keep_slot and getattr(response, "status_code", 0) == 202
        kept = kept or bool(getattr(response, "rvcfast_owns_slot", False))
        return response
    finally:
        if not kept:
            state.admission.leave(time.perf_counter() - t0)


def add_routes(app: Any, state: ServerState) -> None:
    """Register the conversion and job routes on ``app``."""
    body_doc = {"requestBody": form_schema()}
    audio_doc = {"200": {"content": {m: {} for m in sorted(set(MEDIA_TYPES.values()))}, "description": "the converted audio"}}

    async def too_long(request: Any, exc: InputTooLong) -> Any:
        return error_response(413, str(exc), input_seconds=round(exc.seconds, 3), limit_seconds=exc.limit)

    app.add_exception_handler(InputTooLong, too_long)

    @app.post("/v1/convert", summary="convert one input (whole file, or streamed with stream=true)",
              openapi_extra=body_doc, responses=audio_doc)
    async def convert(request: Request) -> Any:
        return await _admitted(state, request, _convert)

    @app.post("/v1/jobs", status_code=202, summary="convert a long input in the background", openapi_extra=body_doc)
    async def create_job(request: Request) -> Any:
        return await _admitted(state, request, _create_job, keep_slot=True)

    @app.get("/v1/jobs/{job_id}", summary="a job's state and progress")
    async def job_status(job_id: str) -> Any:
        return JSONResponse(_job(state, job_id).public())

    @app.get("/v1/jobs/{job_id}/audio", summary="a finished job's audio", responses=audio_doc)
    async def job_audio(job_id: str) -> Any:
        job = _job(state, job_id)
        if job.state != "done" or job.result is None:
            reason = f": {job.error}" if job.error else f" (progress {100 * job.progress:.0f} %)"
            return error_response(409, f"job {job.id} is {job.state}{reason}", state=job.state)
        if not Path(job.result).is_file():  # removed from the spool by someone else
            return error_response(410, f"job {job.id}: its result is no longer on disk", state=job.state)
        stem = job.input_name.rsplit(".", 1)[0] or "audio"
        return FileResponse(
            job.result, media_type=MEDIA_TYPES[job.format], filename=f"{stem}_{job.voice}.{job.format}",
            headers={"X-Rvcfast-Timings": dumps_header({k: round(v, 4) for k, v in job.timings.items()})},
            background=BackgroundTask(_fetched, job),
        )

    @app.delete("/v1/jobs/{job_id}", summary="cancel a job, delete its files and forget it")
    async def delete_job(job_id: str) -> Any:
        job = _job(state, job_id)
        if job.handle is not None and not job.handle.done():
            job.handle.cancel()  # its task deletes what it still writes when it ends
        state.jobs.remove(job)
        return JSONResponse({"id": job.id, "state": "deleted"})

"""The FastAPI application: :func:`create_app`, error handling and the service routes.

Routes (JSON errors ``{"error": "..."}`` everywhere; OpenAPI docs at ``/docs``):

* ``GET /health`` — 200 once the models are loaded, 503 before (or if loading failed, or once the server is closed);
* ``GET /metrics`` — Prometheus text (see :mod:`rvcfast.serve.metrics`);
* ``GET /v1/voices`` — every voice: id, sample rate, version, F0, index, loaded;
* ``POST /v1/voices`` — upload a voice model (only with a models folder);
* ``POST /v1/convert``, ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/audio``,
  ``DELETE /v1/jobs/{id}`` — see :mod:`rvcfast.serve.routes`.

This module imports FastAPI; :func:`rvcfast.serve.create_app` checks the ``serve`` extra
before importing it.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from .._version import __version__
from ..errors import AudioError, ModelLoadError, ParameterError
from .answers import FieldError, error_response
from .config import ServeConfig, require_serve_extra
from .intake import UnsupportedMedia, read_request
from .jobs import JobStoreFull
from .middleware import (
    ApiKey,
    BodyLimit,
    BodyStalled,
    BodyTooLarge,
    RequestMetrics,
    request_id,
)
from .scheduler import QueueFull, ShuttingDown, call_contained
from .state import NotReady, ServerState
from .voices import UnknownVoice, onnx_external_data, save_upload, upload_name_problem

__all__ = ["create_app"]

_log = logging.getLogger("rvcfast.serve")


def create_app(config: ServeConfig | None = None, /, **options: Any) -> Any:
    """The ASGI app of ``rvcfast serve``, to run with uvicorn or mount in another service.

    Give a :class:`~rvcfast.serve.ServeConfig` and/or its fields as keywords, e.g.
    ``create_app(voices=["voices/"], encoder="hubert_base.pt", max_queue=32)``. Settings
    and voice files are checked here; the models load in the background once the app
    starts (its lifespan, or the first request when it is mounted where the lifespan
    does not run). ``app.state.rvcfast`` is the :class:`~rvcfast.serve.state.ServerState`;
    call its ``close()`` when a mounted app goes away.
    """
    require_serve_extra()
    cfg = ServeConfig.build(config, **options)
    state = ServerState(cfg)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        state.start()
        sweeper = asyncio.create_task(_sweep_jobs(state))
        try:
            yield
        finally:
            sweeper.cancel()
            await state.aclose()

    app = FastAPI(
        title="rvcfast",
        version=__version__,
        description="RVC voice conversion with resident models and cross-request batching.",
        lifespan=lifespan,
    )
    app.state.rvcfast = state
    _error_handlers(app)
    _service_routes(app, state)
    from .routes import add_routes

    add_routes(app, state)
    from .live import add_live_routes

    add_live_routes(app, state)
    _ops_gauges(state)
    # outermost last: metrics see every answer, the key is checked before the body limit,
    # and failures of the routes are answered innermost, where the connection survives them
    app.add_middleware(InternalErrors, state=state)
    app.add_middleware(BodyLimit, limit=cfg.max_upload_bytes, timeout=float(cfg.body_timeout_seconds))
    app.add_middleware(ApiKey, key=cfg.api_key)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app


async def _sweep_jobs(state: ServerState) -> None:
    period = max(1.0, min(60.0, state.cfg.jobs_ttl / 2))
    while True:
        await asyncio.sleep(period)
        state.jobs.sweep()


def _ops_gauges(state: ServerState) -> None:
    """Gauges an operator needs beside the state's own: voices that failed to load, open live streams."""

    def failed_voices() -> float:
        # a voice whose files failed to load keeps its error (answered again without another load)
        # until its files change; the first voices' errors are also kept in their description
        failed = state.registry.failed_ids()
        failed.update(v.id for v in state.registry_voices() if isinstance(v.info, dict) and "error" in v.info)
        return float(len(failed))

    state.metrics.gauge("rvcfast_voices_failed", "voices whose files failed to load (see GET /v1/voices)", failed_voices)
    state.metrics.gauge("rvcfast_live_streams", "live streams open now (WS /v1/live)", lambda: float(state.live_streams))


def _load_failed(request: Any, exc: ModelLoadError) -> Any:
    """A voice (or F0 weights) file on the server that cannot be loaded: the request fails alone (500)."""
    state: ServerState = request.app.state.rvcfast
    state.metrics.inc("rvcfast_conversion_failures_total", stage="load")
    return error_response(500, state._hide_paths(str(exc)))


def _internal_message(state: ServerState, exc: BaseException) -> str:
    return "internal error: " + state._hide_paths(f"{type(exc).__name__}: {exc}")


class InternalErrors:
    """Answer an exception that escaped a route with a 500 JSON error, and keep the connection open.

    Starlette runs the handler of ``Exception`` in its outermost middleware, which
    re-raises after answering, so uvicorn logs "Exception in ASGI application" and closes
    the connection: a keep-alive client's next request on it fails. This middleware sits
    innermost, below the others (the metrics count the 500), and ends the exception here.
    A failure after the answer has started (a stream) is re-raised: the connection must
    close, or the client would take a cut stream for a whole one.
    """

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            _log.error("%s %s failed (request_id=%s)", scope.get("method"), scope.get("path"), request_id(), exc_info=exc)
            await error_response(500, _internal_message(self.state, exc))(scope, receive, send)


class _NameLocks:
    """One asyncio lock per name, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> Any:
        lock, users = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[name]


def _error_handlers(app: Any) -> None:
    async def http_error(request: Any, exc: HTTPException) -> Any:
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def validation_error(request: Any, exc: RequestValidationError) -> Any:
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_response(422, problems or "invalid request")

    async def field_error(request: Any, exc: FieldError) -> Any:
        return error_response(422, str(exc), parameter=exc.field)

    handlers: dict[Any, Any] = {
        HTTPException: http_error,
        RequestValidationError: validation_error,
        FieldError: field_error,
        ParameterError: lambda r, e: error_response(422, str(e)),
        ModelLoadError: _load_failed,
        AudioError: lambda r, e: error_response(422, str(e)),
        UnknownVoice: lambda r, e: error_response(404, e.message),
        UnsupportedMedia: lambda r, e: error_response(415, str(e)),
        BodyTooLarge: lambda r, e: error_response(413, str(e)),
        # the rest of the body may still come: the connection is closed after the answer
        BodyStalled: lambda r, e: error_response(408, str(e), {"Connection": "close"}),
        QueueFull: lambda r, e: error_response(503, str(e), {"Retry-After": str(e.retry_after)}),
        JobStoreFull: lambda r, e: error_response(503, str(e), {"Retry-After": "60"}),
        NotReady: lambda r, e: error_response(503, str(e), {"Retry-After": "5"}),
        ShuttingDown: lambda r, e: error_response(503, str(e), {"Retry-After": "10"}),
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, _async(handler))

    async def internal(request: Any, exc: Exception) -> Any:  # a failure in a middleware (InternalErrors takes the routes')
        return error_response(500, _internal_message(request.app.state.rvcfast, exc))

    app.add_exception_handler(Exception, internal)


def _async(handler: Any) -> Any:
    async def wrapped(request: Any, exc: Exception) -> Any:
        out = handler(request, exc)
        return await out if asyncio.iscoroutine(out) else out

    return wrapped


def _service_routes(app: Any, state: ServerState) -> None:
    @app.get("/health", summary="200 once the models are loaded")
    async def health() -> Any:
        state.check_ready()
        return JSONResponse({"status": "ok", "voices": len(state.registry.ids()), "loaded": state.registry.loaded_ids()})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Any:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/voices", summary="voices: id, sample rate, version, F0, index, loaded")
    async def voices() -> Any:
        ids = state.registry.ids()
        # on the decode pool, not the loader: a listing never waits behind a slow voice load
        described = await state.in_pool(lambda: [state.registry.describe(v) for v in ids])
        return JSONResponse({"voices": described})

    upload_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["name", "model"],
                        "properties": {
                            "name": {"type": "string", "description": "voice id"},
                            "model": {"type": "string", "format": "binary", "description": "the .pth voice model"},
                            "index": {"type": "string", "format": "binary", "description": "its .index (optional)"},
                            "replace": {"type": "boolean", "default": False},
                        },
                    }
                }
            },
        }
    }

    upload_locks = _NameLocks()

    @app.post("/v1/voices", status_code=201, summary="upload a voice model (needs --models-dir)", openapi_extra=upload_doc)
    async def upload_voice(request: Request) -> Any:
        if state.cfg.models_dir is None:
            return error_response(403, "uploading voices is disabled: the operator enables it with --models-dir FOLDER")
        state.check_ready()
        intake = await read_request(request, state.uploads, file_fields=("model", "index"))
        try:
            fields = dict(intake.fields)
            name = fields.pop("name", "").strip()
            replace = fields.pop("replace", "false").strip().lower() in ("1", "true", "yes", "on")
            if fields:
                raise FieldError(sorted(fields)[0], f"unexpected field {sorted(fields)[0]!r} (expected name, model, index, replace)")
            problem = upload_name_problem(name)
            if problem is not None:
                raise FieldError("name", problem)
            index = intake.extra_files.get("index", (None, ""))[0]
            model_tmp = intake.path
            assert model_tmp is not None  # read_request refuses a request without the model file
            models_dir = Path(state.cfg.models_dir)
            # one upload of a name at a time, from the existence check to the registry: a refused
            # upload never moves its files over the accepted one's
            # names differing in case are one file on macOS and Windows: one lock, and refused below
            async with upload_locks.hold(name.lower()):
                twin = next((v for v in state.registry.ids() if v.lower() == name.lower() and v != name), None)
                if twin is not None:
                    raise FieldError(
                        "name", f"voice {twin!r} exists already; {name!r} differs from it only in case, which is one "
                        "file on case-insensitive file systems (macOS, Windows): choose another name"
                    )
                # a server's own voice first: "send replace=true" would only lead to this refusal
                if name in state.registry.ids() and state.registry.get(name).model.parent != models_dir.resolve():
                    # its <name>.pth in --models-dir would be a second voice of that name at the next start
                    raise FieldError(
                        "name", f"voice {name!r} is one of the server's own voices, not an uploaded one: "
                        "uploads replace only uploaded voices; choose another name"
                    )
                if name in state.registry.ids() and not replace:
                    raise FieldError("name", f"voice {name!r} exists already (send replace=true to replace it)")
                voice = await asyncio.get_running_loop().run_in_executor(
                    state.loader, lambda: call_contained(save_upload, models_dir, name, model_tmp, index, _check_voice_files)
                )
                state.registry.add(voice, replace=replace)
        except (ModelLoadError, AudioError) as exc:
            return error_response(422, state._hide_paths(intake.hide(str(exc))))
        finally:
            intake.cleanup()
        info = await state.in_pool(state.registry.describe, voice.id)
        return JSONResponse(info, status_code=201)


def _check_voice_files(model: Path, index: Path | None) -> None:
    """Load an uploaded model (and index) through the safe loader; raise if it is not a usable voice."""
    from ..describe import describe_index, describe_model

    if model.suffix.lower() == ".onnx":
        try:
            external = onnx_external_data(model)
        except Exception:  # noqa: BLE001 - not readable as ONNX: describe_model below says why
            external = []
        if external:
            raise ModelLoadError(
                model, f"refused: the ONNX file keeps tensors in external data files ({', '.join(external[:3])}"
                f"{' ...' if len(external) > 3 else ''}); an uploaded voice must be one self-contained file "
                "(save it with onnx.save(model, path, save_as_external_data=False))",
            )
    try:
        info = describe_model(model)
        idx = describe_index(index) if index is not None else None
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the file is, it is not a voice
        raise ModelLoadError(model, f"not a usable voice model or index: {type(exc).__name__}: {exc}") from None
    if info.get("sample_rate") is None:  # an ONNX export without metadata: the server could never run it
        rate = 100 * int(info.get("hop_length") or 400)
        raise ModelLoadError(
            model, "the ONNX file does not say its sample rate (RVC WebUI's exporter writes no metadata), so the "
            "server cannot run it: write it into the file before uploading, with "
            f"rvcfast.models.onnx_vocoder.add_onnx_metadata(path, sample_rate={rate})",
        )
    if index is not None and idx is not None:
        if idx["dim"] != info["feature_dim"]:
            raise ModelLoadError(
                index, f"index dimension {idx['dim']} does not match the voice model's feature dimension {info['feature_dim']}"
            )


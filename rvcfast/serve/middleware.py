"""ASGI middleware of the server: API key, body size limit and request metrics.

They are plain ASGI callables (no FastAPI import) and answer with JSON errors
``{"error": "..."}`` themselves, before a byte of the body is read where they can:

* :class:`ApiKey` — with a key set, every route but ``/health``, ``/docs`` and the
  OpenAPI schema needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (401 otherwise);
  the key is compared as UTF-8 bytes. A WebSocket handshake may carry it as the subprotocol
  ``rvcfast.key.<KEY in unpadded base64url>`` instead (browsers cannot set headers on a
  WebSocket; :func:`key_subprotocol`).
* :class:`BodyLimit` — a ``Content-Length`` above the limit is answered 413 at once; a
  body without a length is counted as it arrives and :class:`BodyTooLarge` is raised
  inside the route when it passes the limit (answered 413 by the app). A body that
  stops arriving (no byte for ``timeout`` seconds while the route reads it) raises
  :class:`BodyStalled` (answered 408, and the connection is closed), so a client that
  sends its headers and then trickles or withholds the body cannot hold an admission
  slot for ever.
* :class:`RequestMetrics` — gives every request an id (the client's or the load balancer's
  ``X-Request-ID`` when it is a plain token, else a new one), answers it in ``X-Request-ID``
  (and in JSON error bodies, ``"request_id"``), counts requests by route and status, times
  them, and logs each one once it has ended (logger ``rvcfast.serve.access``): client,
  method, path, status, seconds, request id, and the input's file name, voice and error
  when there are any. 5xx answers are logged at ERROR (503 at WARNING), the rest at INFO.

Paths are matched relative to the app (:func:`app_path`): when it is mounted under a
prefix (``parent.mount("/rvc", app)``, or a proxy's ``root_path``), ``/rvc/health`` is
``/health``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .metrics import Metrics

__all__ = [
    "ApiKey", "BodyLimit", "BodyTooLarge", "BodyStalled", "RequestMetrics", "send_json", "route_label", "app_path", "OPEN_PATHS",
    "KEY_PROTOCOL_PREFIX", "key_subprotocol", "RequestInfo", "current_request", "request_id", "with_request_id",
    "RequestIdFilter", "REQUEST_ID_HEADER", "JsonFormatter",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths served without the API key.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
#: A WebSocket subprotocol starting with this carries the API key (unpadded base64url of its UTF-8 bytes).
KEY_PROTOCOL_PREFIX = "rvcfast.key."
#: The header that carries a request's id, both ways.
REQUEST_ID_HEADER = "X-Request-ID"
#: A request id sent by a client or a load balancer is kept when it is a plain token (a UUID, a
#: hex string, an AWS or Cloudflare id...): nothing that could forge a log line or a header.
_GOOD_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
#: Longest JSON error body whose message the access log reads.
_MAX_ERROR_BODY = 16384

_access_log = logging.getLogger("rvcfast.serve.access")
#: Paths polled by load balancers and Prometheus: their successful answers are logged at DEBUG.
_POLLED = frozenset({"/health", "/metrics"})


@dataclass
class RequestInfo:
    """What the logs say about the request being served: its id, and once the route knows them,
    the input's file name (the client's, reduced to a base name) and the voice."""

    id: str
    input: str | None = None
    voice: str | None = None


#: The request being served (set by :class:`RequestMetrics`; inherited by the tasks it starts, jobs included).
_CURRENT: ContextVar[RequestInfo | None] = ContextVar("rvcfast_request", default=None)


def current_request() -> RequestInfo | None:
    """The :class:`RequestInfo` of the request being served, or ``None`` outside one."""
    return _CURRENT.get()


def request_id() -> str | None:
    """The id of the request being served, or ``None`` outside one."""
    info = _CURRENT.get()
    return None if info is None else info.id


def with_request_id(payload: dict[str, Any]) -> dict[str, Any]:
    """A JSON error body with the request's id added (``"request_id"``), when there is one."""
    rid = request_id()
    return payload if rid is None or "request_id" in payload else {**payload, "request_id": rid}


class RequestIdFilter(logging.Filter):
    """Give every log record a ``request_id`` attribute (``"-"`` outside a request), for a
    logging configuration whose format names it (``%(request_id)s``, a JSON formatter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id() or "-"
        return True


#: Attributes of a request's log records that :class:`JsonFormatter` writes as fields of their own.
_RECORD_FIELDS = ("request_id", "method", "path", "status", "duration_s", "client", "input", "voice", "error", "close_code")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``rvcfast serve --log-format json``): ``time`` (UTC, ISO 8601),
    ``level``, ``logger``, ``message``, the request's fields when there are any (``request_id``,
    ``method``, ``path``, ``status``, ``duration_s``, ``client``, ``input``, ``voice``, ``error``,
    ``close_code``) and ``exception`` (the traceback) for a failure of the server's own."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"time": stamp, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in _RECORD_FIELDS:
            value = getattr(record, key, None)
            if value is not None and value != "-":
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _new_request_id(scope: Scope) -> str:
    given = _raw_header(scope, b"x-request-id")
    if given is not None:
        text = given.decode("latin-1").strip()
        if _GOOD_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


def key_subprotocol(key: str) -> str:
    """The WebSocket subprotocol that carries ``key``: what a browser offers, beside
    ``rvcfast.live``, as ``new WebSocket(url, ["rvcfast.live", "rvcfast.key.<...>"])``."""
    return KEY_PROTOCOL_PREFIX + base64.urlsafe_b64encode(key.encode("utf-8")).rstrip(b"=").decode("ascii")


def _subprotocol_key(scope: Scope) -> bytes | None:
    """The API key a WebSocket handshake offers as a subprotocol (:func:`key_subprotocol`); ``b""``
    for one that does not decode (a wrong key), ``None`` when none is offered."""
    prefix = KEY_PROTOCOL_PREFIX.encode("ascii")
    for value in scope.get("subprotocols", ()) or ():
        item = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        if item.startswith(prefix):
            token = item[len(prefix):]
            try:
                return base64.b64decode(token + b"=" * (-len(token) % 4), altchars=b"-_", validate=True)
            except (binascii.Error, ValueError):
                return b""
    return None


class BodyTooLarge(Exception):
    """The request body passed the upload limit while it was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the upload limit of {_mb(limit)}")
        self.limit = limit


class BodyStalled(Exception):
    """No byte of the request body arrived for the body timeout while the route read it."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"the request body stalled: no data arrived for {timeout:g} s (the server's body timeout); send it again"
        )
        self.timeout = timeout


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


async def send_json(send: Send, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Answer a request with a JSON body (an error's with the request's id)."""
    if "error" in payload:
        payload = with_request_id(payload)
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _raw_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    value = _raw_header(scope, name)
    return None if value is None else value.decode("latin-1")


def app_path(scope: Scope) -> str:
    """The request path within this app: ``scope["path"]`` without the ``root_path`` it is mounted at.

    Starlette's ``Mount`` (and servers given a root path) keep the prefix in ``path`` and
    name it in ``root_path``; a path outside the prefix is returned as it is, as
    Starlette's router does.
    """
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "") or "").rstrip("/")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path


class ApiKey:
    """Refuse requests without the API key (401), except on :data:`OPEN_PATHS`; a WebSocket
    handshake without it (``/v1/live``) is closed before it is accepted (HTTP 403). A
    WebSocket handshake may offer the key as a subprotocol (:func:`key_subprotocol`).

    The key is compared byte for byte with the header as sent, taking the key as UTF-8
    (what clients send for a non-ASCII key).
    """

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key.encode("utf-8") if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.key is None or app_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = _raw_header(scope, b"x-api-key")
        auth = _raw_header(scope, b"authorization")
        if given is None and auth is not None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is None and scope["type"] == "websocket":
            given = _subprotocol_key(scope)
        if given is not None and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # closed before the handshake: the client gets HTTP 403
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})
            return
        problem = "missing API key" if given is None else "wrong API key"
        await send_json(
            send, 401, {"error": f"{problem}: send Authorization: Bearer KEY or X-API-Key: KEY"},
            {"www-authenticate": 'Bearer realm="rvcfast"'},
        )


class BodyLimit:
    """Bound the request body to ``limit`` bytes (413), and the wait for each of its pieces to
    ``timeout`` seconds (408, :class:`BodyStalled`; ``None``: no bound)."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float | None = None) -> None:
        self.app = app
        self.limit = int(limit)
        self.timeout = timeout if timeout is not None and math.isfinite(timeout) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            await send_json(
                send, 413, {"error": f"the request body ({_mb(int(length))}) is larger than the upload limit of {_mb(self.limit)}"}
            )
            return
        seen = 0
        complete = False  # once the body is read, receive() waits for a disconnect: no bound then

        async def counted() -> Message:
            nonlocal seen, complete
            if complete or self.timeout is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.timeout)
                except TimeoutError:
                    raise BodyStalled(self.timeout) from None
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


_JOB_PATH = re.compile(r"^/v1/jobs/[^/]+(/audio)?$")
_VOICE_PATH = re.compile(r"^/v1/voices/[^/]+$")
_KNOWN = frozenset({"/health", "/metrics", "/v1/voices", "/v1/convert", "/v1/jobs", "/docs", "/openapi.json"})


def route_label(path: str) -> str:
    """A bounded label for a request path (ids replaced, unknown paths as ``other``)."""
    if path in _KNOWN:
        return path
    m = _JOB_PATH.match(path)
    if m:
        return "/v1/jobs/{id}" + (m.group(1) or "")
    if _VOICE_PATH.match(path):
        return "/v1/voices/{id}"
    return "other"


class RequestMetrics:
    """Give every request an id, count it by route and status, time it, and log it once it has ended."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info = RequestInfo(_new_request_id(scope))
        _CURRENT.set(info)
        status = 500
        started = False
        error_body: bytearray | None = None  # a JSON error's body, read for the log
        cut: str | None = None  # a failure after the answer started (a stream cut short)

        async def watched(message: Message) -> None:
            nonlocal status, started, error_body
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
                message = {**message, "headers": _with_id(message.get("headers") or [], info.id)}
                ctype = next((v for k, v in message["headers"] if bytes(k).lower() == b"content-type"), b"")
                if status >= 400 and bytes(ctype).startswith(b"application/json"):
                    error_body = bytearray()
            elif message["type"] == "http.response.body" and error_body is not None and len(error_body) < _MAX_ERROR_BODY:
                error_body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            # the server is shutting down and --shutdown-timeout has run out: a request with no
            # answer yet gets a JSON 503 (uvicorn's would be a plain-text 500 and a traceback);
            # one whose answer has started (a stream) just ends
            if started:
                cut = "the server shut down before the answer was complete (--shutdown-timeout)"
                raise
            try:
                await send_json(
                    watched, 503,
                    {"error": "the server shut down before this request finished (--shutdown-timeout); send it again"},
                    {"Retry-After": "10"},
                )
            except Exception:  # noqa: BLE001 - the client is gone too: nobody to answer
                status = 503
        except Exception as exc:  # a failure above the routes' own handling (InternalErrors): logged, re-raised
            cut = f"{'the answer was cut short: ' if started else ''}{type(exc).__name__}: {exc}"
            raise
        finally:
            seconds = time.perf_counter() - t0
            label = route_label(app_path(scope))
            self.metrics.inc("rvcfast_requests_total", route=label, status=str(status))
            self.metrics.observe("rvcfast_request_seconds", seconds, route=label)
            error = cut if cut is not None else _error_message(error_body)
            _log_request(scope, scope.get("method", "GET"), status, seconds, info, error, failed=cut is not None)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket session: its id in the handshake's answer (``X-Request-ID``), and one log line when it ends."""
        t0 = time.perf_counter()
        info = RequestInfo(_new_request_id(scope))
        _CURRENT.set(info)
        accepted = False
        code: int | None = None
        reason: str | None = None

        async def watched(message: Message) -> None:
            nonlocal accepted, code, reason
            if message["type"] == "websocket.accept":
                accepted = True
                message = {**message, "headers": _with_id(message.get("headers") or [], info.id)}
            elif message["type"] == "websocket.close" and code is None:
                code, reason = int(message.get("code", 1000)), message.get("reason") or None
            await send(message)

        async def listened() -> Message:
            nonlocal code
            message = await receive()
            if message.get("type") == "websocket.disconnect" and code is None:
                code = int(message.get("code", 1005))
            return message

        try:
            await self.app(scope, listened, watched)
        finally:
            status = 101 if accepted else 403
            failed = code == 1011  # the server's failure (a conversion); 1008, 1013: the client's or a busy server's
            _log_request(scope, "WS", status, time.perf_counter() - t0, info, reason, failed=failed, close_code=code)


def _with_id(headers: Any, rid: str) -> list[tuple[bytes, bytes]]:
    """Response headers with ``X-Request-ID`` (unless the app set one)."""
    out = [(bytes(k), bytes(v)) for k, v in headers]
    if not any(k.lower() == b"x-request-id" for k, _ in out):
        out.append((b"x-request-id", rid.encode("latin-1")))
    return out


def _error_message(body: bytearray | None) -> str | None:
    """The ``"error"`` of a JSON error body, if it has one."""
    if not body:
        return None
    try:
        message = json.loads(bytes(body)).get("error")
    except (ValueError, AttributeError):
        return None
    return None if message is None else str(message)


def _log_request(
    scope: Scope, method: str, status: int, seconds: float, info: RequestInfo, error: str | None,
    failed: bool = False, close_code: int | None = None,
) -> None:
    """One line for a request that has ended: INFO, WARNING for a 503, ERROR for another 5xx or an
    answer cut short; DEBUG for a load balancer's health check or a metrics scrape that worked (every
    few seconds, for ever: 17,000 lines a day of nothing)."""
    path = app_path(scope)
    if failed or (status >= 500 and status != 503):
        level = logging.ERROR
    elif status == 503 and path != "/health":  # busy, shutting down (a loading server's /health: INFO)
        level = logging.WARNING
    elif path in _POLLED and status < 400:
        level = logging.DEBUG
    else:
        level = logging.INFO
    if not _access_log.isEnabledFor(level):
        return
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    path = urllib.parse.quote(str(scope.get("path", "")), safe="/:@!$&'()*+,;=-._~")
    extra = f" close={close_code}" if close_code is not None else ""
    if info.input is not None:
        extra += f" input={json.dumps(info.input)}"
    if info.voice is not None:
        extra += f" voice={json.dumps(info.voice)}"
    if error is not None:
        extra += f" error={json.dumps(error[:1000])}"
    _access_log.log(
        level, '%s "%s %s" %d %.3fs request_id=%s%s', where, method, path, status, seconds, info.id, extra,
        extra={"request_id": info.id, "method": method, "path": path, "status": status, "duration_s": round(seconds, 6),
               "client": where, "input": info.input, "voice": info.voice, "error": error, "close_code": close_code},
    )

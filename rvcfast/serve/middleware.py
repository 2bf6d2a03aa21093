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
* :class:`RequestMetrics` — counts requests by route and status, and their durations.

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
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .metrics import Metrics

__all__ = [
    "ApiKey", "BodyLimit", "BodyTooLarge", "BodyStalled", "RequestMetrics", "send_json", "route_label", "app_path", "OPEN_PATHS",
    "KEY_PROTOCOL_PREFIX", "key_subprotocol",
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
    """Answer a request with a JSON body."""
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
    """Count every HTTP request by route and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        started = False

        async def watched(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            # the server is shutting down and --shutdown-timeout has run out: a request with no
            # answer yet gets a JSON 503 (uvicorn's would be a plain-text 500 and a traceback);
            # one whose answer has started (a stream) just ends
            if started:
                raise
            status = 503
            try:
                await send_json(
                    send, 503,
                    {"error": "the server shut down before this request finished (--shutdown-timeout); send it again"},
                    {"Retry-After": "10"},
                )
            except Exception:  # noqa: BLE001 - the client is gone too: nobody to answer
                pass
        finally:
            label = route_label(app_path(scope))
            self.metrics.inc("rvcfast_requests_total", route=label, status=str(status))
            self.metrics.observe("rvcfast_request_seconds", time.perf_counter() - t0, route=label)

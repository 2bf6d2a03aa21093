"""``WS /v1/live``: a live stream converted block by block over a WebSocket.

The client opens ``ws://HOST/v1/live?voice=NAME&sample_rate=48000`` (with the API key in
the ``Authorization`` or ``X-API-Key`` header when the server has one; a browser, which
cannot set headers on a WebSocket, offers the subprotocols ``rvcfast.live`` and
``rvcfast.key.<KEY in unpadded base64url>`` instead, and the server accepts with
``rvcfast.live``). Query fields:

* ``voice`` (required), ``f0`` and every conversion parameter of ``/v1/convert``
  (``pitch``, ``index_rate``, ``protect``, ``seed``...), read the same way; the settings
  that need a whole file (``loudness``, ``formant``, ``clean``, ``effects``,
  ``proposed_pitch``, ``channels=each``) and the output-file fields (``format``,
  ``subtype``, ``bitrate``, ``stream``) are refused;
* ``sample_rate``: the stream's rate, in and out (default 48000, a multiple of 25 Hz: 48000,
  44100, 22050, 16000...);
* ``block_seconds``, ``context_seconds``, ``crossfade_seconds``: those of
  :class:`~rvcfast.RealtimeConverter` (defaults 0.25, 1.0, 0.05, or 0.24, 1.0, 0.04 at 22050
  and 11025 Hz; a block of at most 10 s, a context of at most 30 s);
* ``encoding``: ``f32le`` (default, float samples in [-1, 1]) or ``s16le`` (16-bit PCM);
* ``channels``: interleaved channels of the binary messages, 1 (default) to 8. A stereo
  stream (a DAW, a virtual audio cable) is mixed down to mono, converted, and answered with
  the converted voice on every channel, interleaved as it came. (``channels=mix`` is the
  same as 1; ``channels=each``, per-channel conversion of whole files, is refused.)

Once the voice is ready the server sends one JSON text message, ``{"type": "ready",
"sample_rate", "block_size", "latency_seconds", "latency_samples", "encoding", "channels",
"request_id"}`` (the id the server's log names the stream by).
Then every binary message of samples (frames of ``channels`` interleaved samples) is answered
by one binary message of exactly as many converted frames, delayed by ``latency_samples``
frames (see :class:`~rvcfast.RealtimeConverter`).
The text message ``flush`` is answered by the last ``latency_samples`` of output (binary)
and starts the stream again from silence.

A refused field is answered ``{"type": "error", "error": ..., "parameter": NAME}`` and the
socket is closed with code 1008; a server that is full (``max_live`` streams at once), not
ready or shutting down closes with 1013 (try again later); a stream that sends nothing for
``live_idle_seconds`` (60) closes with 1008; a failure while converting closes with 1011,
after an error message. Each stream's blocks run one after the other in
a pool of ``max_live`` threads beside the model worker, so a long file conversion does
not hold a live stream up. Messages are read as they arrive, while earlier ones convert
(so the WebSocket's keepalive pings are answered however far behind the conversion is): a
client may keep several messages in flight, up to ``live_max_ahead_seconds`` (10) of audio
sent and not yet answered (a flush counts as the ``latency_samples`` it answers with), in at most
as many messages as that holds :data:`MIN_MESSAGE_SAMPLES`; a message beyond that closes the stream with
1008 and says so, instead of the server buffering without bound or the connection timing out.
A stream whose audio is still converting is not idle. A client that takes no answer for
``live_idle_seconds`` (it stopped reading) is closed with 1008 too: its answers would wait for
room in the socket for ever, holding one of the ``max_live`` slots.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from ..errors import BackendUnavailableError, ModelLoadError, ParameterError, RvcfastError
from ..params import param_specs
from .answers import FieldError
from .forms import parse_fields
from .middleware import request_id
from .scheduler import call_contained
from .state import NotReady
from .voices import UnknownVoice

if TYPE_CHECKING:
    from ..realtime import RealtimeConverter
    from .state import ServerState

_log = logging.getLogger("rvcfast.serve")

__all__ = ["add_live_routes", "LIVE_FIELDS", "ENCODINGS", "MAX_MESSAGE_SECONDS", "MAX_GEOMETRY_SECONDS", "LIVE_PROTOCOL"]

#: Query fields of ``/v1/live`` besides the voice, ``f0`` and the conversion parameters (``None``: the
#: :class:`~rvcfast.RealtimeConverter` default at the stream's rate: 0.25 s, 1 s and 0.05 s, or 0.24 s,
#: 1 s and 0.04 s at 22050 and 11025 Hz).
LIVE_FIELDS = {"sample_rate": 48000, "block_seconds": None, "context_seconds": None, "crossfade_seconds": None}
#: Sample encodings of the binary messages: name -> numpy dtype.
ENCODINGS = {"f32le": "<f4", "s16le": "<i2"}
#: Most interleaved channels a binary message may carry (they are mixed down to one).
MAX_CHANNELS = 8
#: Longest audio one binary message may hold (a bound on the memory a client can ask for).
MAX_MESSAGE_SECONDS = 10.0
#: Longest ``block_seconds`` and ``context_seconds`` a stream may ask for: every block runs the
#: encoders on ``context + crossfade + block`` (at most 50 s, about one segment of a file conversion).
MAX_GEOMETRY_SECONDS = {"block_seconds": MAX_MESSAGE_SECONDS, "context_seconds": 30.0}
#: Fields of ``/v1/convert`` that describe an output file, not a live stream.
_FILE_FIELDS = ("format", "subtype", "bitrate", "stream", "output_sample_rate", "source_id")

POLICY, TRY_LATER, SERVER_ERROR = 1008, 1013, 1011
#: A stream may have as many messages in flight as ``live_max_ahead_seconds`` holds of this many samples
#: (a browser AudioWorklet's render quantum): empty messages and flushes cannot queue without bound,
#: and a client of 128-sample messages may still keep ``live_max_ahead_seconds`` in flight.
MIN_MESSAGE_SAMPLES = 128
#: How long a refusal (its error message, then the close) may wait for a client that takes nothing.
REFUSE_SECONDS = 10.0
#: The subprotocol the server accepts a stream with when the client offers it (a browser that
#: offers the key as a subprotocol must offer this one too: the server never echoes the key).
LIVE_PROTOCOL = "rvcfast.live"


@dataclass(frozen=True)
class Wire:
    """How a stream's binary messages hold their samples: the encoding and the interleaved channels."""

    encoding: str = "f32le"
    channels: int = 1


def _wire_channels(text: str) -> int | None:
    """``channels`` as the messages' channel count (a number, or ``mix``: 1); ``None`` for another
    word (``each``), which the conversion fields refuse with their own message."""
    word = text.strip().lower()
    if word == "mix":
        return 1
    if not word.lstrip("+-").isdigit():
        return None
    n = int(word)
    if not 1 <= n <= MAX_CHANNELS:
        raise FieldError("channels", f"channels must be 1..{MAX_CHANNELS} interleaved channels (mixed down to one), got {text!r}")
    return n


def _live_settings(pairs: list[tuple[str, str]]) -> tuple[dict[str, Any], Wire, list[tuple[str, str]]]:
    """Split the query into the stream's geometry, its wire format and the ``/v1/convert`` fields."""
    settings: dict[str, Any] = {}
    encoding, channels = "f32le", 1
    rest: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, text in pairs:
        if name in seen and (name in LIVE_FIELDS or name in ("encoding", "channels")):
            raise FieldError(name, f"field {name!r} is given more than once")
        seen.add(name)
        if name in _FILE_FIELDS:
            raise FieldError(name, f"{name!r} describes an output file: a live stream answers with raw samples at its own sample_rate")
        if name == "encoding":
            encoding = text.strip().lower()
            if encoding not in ENCODINGS:
                raise FieldError(name, f"encoding must be one of {', '.join(ENCODINGS)}, got {text!r}")
        elif name == "channels" and (count := _wire_channels(text)) is not None:
            channels = count
        elif name == "sample_rate":  # "44100.0" as the library takes 44100.0; not "44100.5", "nan", "1e400"
            try:
                rate = float(text)
            except ValueError:
                rate = math.nan
            if not rate.is_integer():
                raise FieldError(name, f"sample_rate must be a whole number of Hz, got {text!r}")
            settings[name] = int(rate)
        elif name in LIVE_FIELDS:
            try:
                settings[name] = float(text)
            except ValueError:
                raise FieldError(name, f"{name} must be a number of seconds, got {text!r}") from None
            top = MAX_GEOMETRY_SECONDS.get(name)
            if top is not None and settings[name] > top:
                raise FieldError(
                    name, f"{name} must be at most {top:g} s on a live stream (each block's compute and memory grow with it), got {text}"
                )
        else:
            rest.append((name, text))
    return {**LIVE_FIELDS, **settings}, Wire(encoding, channels), rest


def _decode(data: bytes, wire: Wire, limit: int) -> np.ndarray:
    """A binary message as mono float32 samples (its channels mixed down); ``limit``: most frames."""
    dtype = np.dtype(ENCODINGS[wire.encoding])
    frame = dtype.itemsize * wire.channels
    if len(data) % frame:
        what = f"{wire.encoding} samples ({dtype.itemsize} bytes each)"
        if wire.channels > 1:
            what = f"frames of {wire.channels} interleaved {wire.encoding} samples ({frame} bytes each)"
        raise ParameterError(f"a binary message of {len(data)} bytes is not whole {what}")
    if len(data) // frame > limit:
        raise ParameterError(
            f"a binary message holds {len(data) // frame} samples, more than {MAX_MESSAGE_SECONDS:g} s "
            f"({limit}): send the stream in smaller pieces"
        )
    x = np.frombuffer(data, dtype=dtype)
    if wire.encoding == "s16le":
        x = x.astype(np.float32) / 32768.0
    elif not np.isfinite(x).all():  # the client's samples, not a failed conversion: 1008, not 1011
        raise ParameterError(f"a binary message holds {int((~np.isfinite(x)).sum())} NaN or infinite samples")
    elif x.size and float(np.abs(x).max()) > _max_peak():  # the converter refuses it: the client's samples too
        raise ParameterError(
            f"a binary message peaks at {float(np.abs(x).max()):g}, beyond any PCM format's full scale: f32le samples are in [-1, 1]"
        )
    if wire.channels > 1:  # the mean in float64: a float32 sum of loud channels overflows to infinity
        x = x.reshape(-1, wire.channels).mean(axis=1, dtype=np.float64)
    return x.astype(np.float32)


def _max_peak() -> float:
    from ..realtime import MAX_INPUT_PEAK  # the converter refuses louder samples

    return MAX_INPUT_PEAK


def _encode(y: np.ndarray, wire: Wire) -> bytes:
    """Mono samples as a binary message: every channel the converted voice, interleaved."""
    if wire.channels > 1:
        y = np.repeat(y[:, None], wire.channels, axis=1).reshape(-1)
    if wire.encoding == "s16le":
        return np.clip(np.round(y * 32767.0), -32768, 32767).astype("<i2").tobytes()
    return y.astype("<f4").tobytes()


def _refused_field(text: str, overrides: dict[str, Any]) -> str | None:
    """The field a :class:`~rvcfast.RealtimeConverter` refusal is about: the one its message starts
    with, else the first setting it cannot apply because it needs a whole file (``loudness``...)."""
    from ..params import ConversionParams
    from ..realtime import whole_file_settings

    named = next((n for n in (*LIVE_FIELDS, *overrides) if text.startswith(n)), None)
    return named or next(iter(whole_file_settings(ConversionParams.build(None, **overrides))), None)


async def _within(step: Any, seconds: float) -> bool:
    """Await ``step`` for at most ``seconds``; ``False`` when it did not finish (a send to a client that
    stopped reading waits for room in the socket's buffer for ever)."""
    try:
        await asyncio.wait_for(step, seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def _close(ws: WebSocket, code: int, message: str, seconds: float) -> None:
    """Close with ``code``, waiting at most ``seconds`` (the access log has the code and reason either way)."""
    await _within(ws.close(code=code, reason=message[:120]), seconds)


async def _refuse(ws: WebSocket, code: int, message: str, parameter: str | None = None) -> None:
    body: dict[str, Any] = {"type": "error", "error": message}
    if parameter is not None:
        body["parameter"] = parameter
    taken = await _within(ws.send_json(body), REFUSE_SECONDS)
    await _close(ws, code, message, REFUSE_SECONDS if taken else 0.1)


#: The query fields of a live stream besides the conversion parameters.
STREAM_FIELDS = ("voice", "f0", *LIVE_FIELDS, "encoding", "channels")


def _conversion_fields(rest: list[tuple[str, str]]) -> Any:
    """The ``/v1/convert`` fields of a live stream's query; an unknown name is told the live stream's
    own fields (and the closest of them), not the output-file fields a stream refuses."""
    try:
        return parse_fields(rest)
    except FieldError as exc:
        if not str(exc).startswith("unknown conversion parameter"):
            raise
        params = sorted(spec.name for spec in param_specs() if spec.name not in _FILE_FIELDS)  # none a stream refuses
        close = difflib.get_close_matches(exc.field or "", [*STREAM_FIELDS, *params], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FieldError(exc.field, (
            f"unknown conversion parameter {exc.field!r}{hint}; valid parameters: {', '.join(params)}; "
            f"or one of the stream's {', '.join(STREAM_FIELDS)}"
        )) from None


async def _open(state: ServerState, ws: WebSocket) -> tuple[RealtimeConverter, Wire] | None:
    """The stream's converter and wire format, or ``None`` after refusing the stream."""
    from ..realtime import RealtimeConverter

    try:
        settings, wire, rest = _live_settings(list(ws.query_params.multi_items()))
        options = _conversion_fields(rest)
    except FieldError as exc:
        await _refuse(ws, POLICY, str(exc), exc.field)
        return None
    try:
        state.check_ready()
        engine = await state.engine_for(options.voice, options.f0)
    except NotReady as exc:
        await _refuse(ws, TRY_LATER, str(exc))
        return None
    except UnknownVoice as exc:
        await _refuse(ws, POLICY, exc.message, "voice")
        return None
    except BackendUnavailableError as exc:
        await _refuse(ws, POLICY, str(exc), "f0")
        return None
    except ModelLoadError as exc:
        await _refuse(ws, SERVER_ERROR, f"voice {options.voice!r} cannot be used: {state._hide_paths(str(exc))}")
        return None
    from ..voices import without_shared

    try:  # a stream's blocks never come back: they stay out of the analysis cache
        rt = RealtimeConverter(without_shared(engine), settings["sample_rate"], settings["block_seconds"], settings["context_seconds"],
                               settings["crossfade_seconds"], **options.overrides)
    except ParameterError as exc:
        text = str(exc)
        await _refuse(ws, POLICY, text, _refused_field(text, options.overrides))
        return None
    return rt, wire


class _Inbox:
    """The messages of one stream read ahead of its conversion, in order.

    Items are ``("audio", samples)``, ``("flush", None)``; :meth:`stop` ends the stream
    at once (a bad message, too far ahead, idle, or the client gone): the conversion
    loop sees it before any item still queued. ``ahead`` counts the samples received and
    not yet answered (a flush: the ``latency_samples`` it answers with), ``waiting`` the messages.
    """

    def __init__(self, rt: Any = None) -> None:
        self.rt = rt  # the stream's converter: how fast it converts (speed)
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.ahead = 0
        self.waiting = 0
        self.problem: tuple[int, str] | None = None  # (close code, message); code 0: the client left
        self.stopped = False
        self.first_at: float | None = None  # when the first audio message arrived
        self.received = 0.0  # seconds of audio received
        self.answered = 0.0  # seconds of audio converted and answered

    def arrived(self, seconds: float) -> None:
        """An audio message of ``seconds`` arrived now."""
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.received += seconds

    def sent_in_real_time(self) -> bool:
        """Whether the client's audio arrives about as fast as it plays (at most 1.25 times): a
        stream fed by a microphone, not a client sending ahead of its answers."""
        if self.first_at is None:
            return False
        return self.received <= 1.25 * (time.monotonic() - self.first_at) + 0.5

    def speed(self) -> float | None:
        """Seconds of conversion per second of audio so far (above 1: slower than real time: the
        converter's :attr:`~rvcfast.RealtimeConverter.real_time_factor`), ``None`` until a second of
        audio after the stream's warm-up has been answered (one slow block says little)."""
        from ..realtime import WARMUP_BLOCKS  # the blocks its real_time_factor leaves out

        if self.rt is None or self.answered < 1.0 + WARMUP_BLOCKS * self.rt.block_size / self.rt.sample_rate:
            return None
        factor = self.rt.real_time_factor
        return None if factor is None else float(factor)

    def stop(self, code: int = 0, message: str = "") -> None:
        if not self.stopped:
            self.stopped, self.problem = True, (code, message) if code else None
            self.queue.put_nowait(("stop", None))  # wakes a conversion loop waiting for work

    async def next(self) -> tuple[str, Any]:
        if self.stopped:
            return ("stop", None)
        return await self.queue.get()


def _faster_hint(rt: Any) -> str:
    """How this server could convert faster: bfloat16, where it computes float32 on a CPU."""
    engine = getattr(rt, "engine", None)
    if engine is None or engine.device.type != "cpu" or str(engine.dtype) != "torch.float32":
        return ""
    return " (on a CPU with native bfloat16: serve --dtype auto)"


def _too_far_ahead(inbox: _Inbox, cost: int, max_ahead: int, rate: int, cfg: Any) -> str | None:
    """Why a message that adds ``cost`` samples cannot be taken on top of those in flight, or ``None``."""
    if not inbox.waiting:  # nothing in flight: one long message is not "ahead"
        return None
    if inbox.ahead + cost > max_ahead:
        if inbox.sent_in_real_time():  # audio arriving as it plays, yet this far behind: the conversion is slower
            speed = inbox.speed()
            said = f" ({speed:.2f} s of conversion per second of audio)" if speed is not None and speed > 1.0 else ""
            return (
                f"the stream fell {(inbox.ahead + cost) / rate:.2f} s behind (the server's limit is "
                f"{cfg.live_max_ahead_seconds:g} s): this server converts it slower than real time{said}. Open it "
                f"with a longer block_seconds or a shorter context_seconds, or use a faster server{_faster_hint(inbox.rt)}"
            )
        return (
            f"the client sent {(inbox.ahead + cost) / rate:.2f} s of audio ahead of the conversion, more "
            f"than the server's {cfg.live_max_ahead_seconds:g} s: send each block after its answer, or keep fewer in flight"
        )
    most = max(1, max_ahead // MIN_MESSAGE_SAMPLES)
    if inbox.waiting >= most:
        return (
            f"the client sent {inbox.waiting + 1} messages ahead of the conversion, more than the server's {most} "
            f"({cfg.live_max_ahead_seconds:g} s of {MIN_MESSAGE_SAMPLES}-sample messages): send larger messages, "
            "or keep fewer in flight"
        )
    return None


async def _read_messages(
    ws: WebSocket, inbox: _Inbox, wire: Wire, limit: int, rate: int, cfg: Any, flush_samples: int = 0
) -> None:
    """Read the stream's messages as they arrive into ``inbox`` (run beside the conversion).
    ``flush_samples``: the samples a flush is answered with (the stream's ``latency_samples``)."""
    max_ahead = int(cfg.live_max_ahead_seconds * rate)
    while not inbox.stopped:
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=cfg.live_idle_seconds)
        except asyncio.TimeoutError:
            if inbox.ahead:  # the client waits for its answers: not idle
                continue
            inbox.stop(POLICY, f"nothing received for {cfg.live_idle_seconds:g} s: the live stream is closed")
            return
        except Exception:  # noqa: BLE001 - the connection is gone
            inbox.stop()
            return
        if message["type"] == "websocket.disconnect":
            inbox.stop()
            return
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            try:
                item: tuple[str, Any] = ("audio", _decode(data, wire, limit))
            except ParameterError as exc:
                inbox.stop(POLICY, str(exc))
                return
            cost = item[1].shape[0]
            inbox.arrived(cost / rate)
        elif text is not None and text.strip().lower() == "flush":
            item, cost = ("flush", None), flush_samples
        else:
            inbox.stop(POLICY, _unknown_text(text))
            return
        problem = _too_far_ahead(inbox, cost, max_ahead, rate, cfg)
        if problem is not None:
            inbox.stop(POLICY, problem)
            return
        inbox.ahead += cost
        inbox.waiting += 1
        inbox.queue.put_nowait(item)


def _push_while_connected(rt: RealtimeConverter, x: np.ndarray, inbox: _Inbox) -> np.ndarray | None:
    """``rt.push(x)`` a block at a time (the same output: a stream's output does not depend on how
    it is cut), ``None`` once the client has left: a long message of a client gone would hold its
    ``--max-live`` slot, refusing its reconnection with 1013, until every block of it was converted."""
    pieces = []
    for start in range(0, x.shape[0], rt.block_size):
        if inbox.stopped and inbox.problem is None:
            return None
        pieces.append(rt.push(x[start : start + rt.block_size]))
    return np.concatenate(pieces) if pieces else rt.push(x)


def _unknown_text(text: str | None) -> str:
    what = f"unknown text message {str(text)[:40]!r}: send audio as binary messages, or 'flush'"
    if str(text).lstrip().startswith("{"):  # a settings change: they are the URL's, fixed for the stream
        what += (
            "; a stream's settings (sample_rate, pitch...) are the query fields of its URL, fixed when it opens: "
            "to change them, flush and open a new stream"
        )
    return what


async def _serve_stream(state: ServerState, ws: WebSocket, rt: RealtimeConverter, wire: Wire) -> None:
    loop = asyncio.get_running_loop()
    await ws.send_json({
        "type": "ready", "sample_rate": rt.sample_rate, "block_size": rt.block_size,
        "latency_seconds": rt.latency_seconds, "latency_samples": rt.latency_samples, "encoding": wire.encoding,
        "channels": wire.channels, "request_id": request_id(),  # a browser cannot read the handshake's headers
    })
    inbox = _Inbox(rt)
    warned = False  # the log's warning that this stream converts slower than real time, once
    idle = state.cfg.live_idle_seconds
    reader = asyncio.create_task(_read_messages(
        ws, inbox, wire, int(MAX_MESSAGE_SECONDS * rt.sample_rate), rt.sample_rate, state.cfg, rt.latency_samples
    ))
    try:
        while True:
            kind, x = await inbox.next()
            if kind == "stop":
                if inbox.problem is not None:
                    await _refuse(ws, *inbox.problem)
                return
            if kind == "audio":
                y = await loop.run_in_executor(state.live_pool, call_contained, _push_while_connected, rt, x, inbox)
                if y is None:  # the client left in the middle of the message
                    return
                inbox.ahead -= x.shape[0]
                inbox.answered += x.shape[0] / rt.sample_rate
                if not warned and (speed := inbox.speed()) is not None and speed > 1.0:
                    warned = True
                    _log.warning(
                        "live stream: converted slower than real time (%.2f s per second of audio, block_seconds %g): "
                        "a client sending in real time falls behind and is closed once %g s behind",
                        speed, rt.block_size / rt.sample_rate, state.cfg.live_max_ahead_seconds,
                    )
            else:
                y = await loop.run_in_executor(state.live_pool, call_contained, rt.flush)
                inbox.ahead -= rt.latency_samples
            inbox.waiting -= 1
            if not await _within(ws.send_bytes(_encode(y, wire)), idle):
                # the client stopped reading: its answers would wait for room in the socket for ever,
                # holding one of the --max-live slots (its close frame cannot get through either)
                await _close(ws, POLICY, f"the client took no answer for {idle:g} s: the live stream is closed", 0.1)
                return
            state.metrics.inc("rvcfast_live_seconds_total", value=y.shape[0] / rt.sample_rate)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def add_live_routes(app: Any, state: ServerState) -> None:
    """Register ``WS /v1/live`` on ``app``."""

    @app.websocket("/v1/live")
    async def live(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol=LIVE_PROTOCOL if LIVE_PROTOCOL in offered else None)
        if state.live_streams >= state.cfg.max_live:
            await _refuse(ws, TRY_LATER, f"the server converts {state.cfg.max_live} live stream(s) at once; retry later")
            return
        state.live_streams += 1
        try:
            opened = await _open(state, ws)
            if opened is not None:
                await _serve_stream(state, ws, *opened)
        except WebSocketDisconnect:
            pass
        except (RvcfastError, Exception) as exc:  # noqa: BLE001 - a failed block ends this stream only
            state.metrics.inc("rvcfast_conversion_failures_total", stage="live")
            try:
                await _refuse(ws, SERVER_ERROR, state._hide_paths(f"live conversion failed: {type(exc).__name__}: {exc}"))
            except Exception:  # noqa: BLE001 - the client is gone
                pass
        finally:
            state.live_streams -= 1

"""Realtime conversion and ``WS /v1/live`` as streaming clients use them: a voice model that gives
NaN, loud interleaved channels, a client that floods tiny messages or flushes, one that sends a
settings change as a text message, and one that stops reading its answers.

The protocol pieces run against stand-in sockets (no timing asserts: every wait is bounded and
fails the test when it runs out); one real ``rvcfast serve`` (127.0.0.1, tiny random models)
checks that a client that stops reading gives its live slot back.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import json
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

from rvcfast.errors import ParameterError, RvcfastError
from rvcfast.realtime import RealtimeConverter

pytest.importorskip("fastapi")

from rvcfast.serve.live import POLICY, Wire, _decode, _Inbox, _read_messages, _serve_stream  # noqa: E402

RATE = 1000
#: The most any wait in these tests may take before the test gives up (a hang is a failure, not a stall).
DEADLINE = 60.0


def _tone(n: int, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 180 * np.arange(n) / rate)).astype(np.float32)


# ------------------------------------------------------------------ the library


def test_a_voice_model_that_gives_nan_fails_the_push_instead_of_putting_out_nan(tiny_converter, monkeypatch) -> None:
    """np.clip keeps NaN: a vocoder overflowing (float16 on a loud input) put NaN into the
    "clipped to [-1, 1]" output, and into the next block's crossfade. Now the push fails as a
    model error (as Converter.convert does), resets, and the stream goes on from silence."""
    rt = RealtimeConverter(tiny_converter, sample_rate=16000, block_seconds=0.1, context_seconds=0.1, noise=False)
    voc = rt.engine.vocoder
    real = voc.synthesize
    calls = {"n": 0}

    def overflowing(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out = out.clone()
            out[..., -400:] = float("nan")
        return out

    monkeypatch.setattr(voc, "synthesize", overflowing)
    x = _tone(rt.block_size * 4)
    with pytest.raises(RvcfastError, match=r"NaN or infinite output samples for block 3"):
        rt.push(x)
    y = np.concatenate([rt.push(x), rt.flush()])  # restarted from silence: whole, finite, in range
    assert y.shape == (x.shape[0] + rt.latency_samples,)
    assert np.isfinite(y).all() and np.abs(y).max() <= 1


# ------------------------------------------------------------------ the wire


def test_loud_interleaved_channels_mix_down_to_finite_samples_or_are_refused_as_the_clients() -> None:
    """Two channels near float32's largest value summed to infinity in float32: the stream was closed
    with 1011 "live conversion failed" (a server failure) for audio that one channel alone passes.
    Such samples are beyond any PCM full scale: refused as the client's (1008); up to that scale
    the channels mix down exactly."""
    from rvcfast.realtime import MAX_INPUT_PEAK

    frames = np.full((50, 2), 3e38, dtype="<f4")
    frames[::2, 1] = -3e38
    with pytest.raises(ParameterError, match="peaks at 3e\\+38, beyond any PCM format's full scale"):
        _decode(frames.tobytes(), Wire("f32le", 2), 100)
    frames = np.full((50, 2), MAX_INPUT_PEAK, dtype="<f4")
    frames[::2, 1] = -MAX_INPUT_PEAK
    mono = _decode(frames.tobytes(), Wire("f32le", 2), 100)
    assert mono.dtype == np.float32 and np.isfinite(mono).all()
    np.testing.assert_array_equal(mono[1::2], np.float32(MAX_INPUT_PEAK))
    np.testing.assert_array_equal(mono[::2], 0)


class FakeSocket:
    """Messages the test feeds to ``receive()``; sends recorded, or never finishing (``stuck``)."""

    def __init__(self, stuck: bool = False) -> None:
        self.incoming: asyncio.Queue[dict] = asyncio.Queue()
        self.stuck = stuck
        self.sent: list = []
        self.closed: tuple[int, str] | None = None

    async def receive(self) -> dict:
        return await self.incoming.get()

    def put(self, **message) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", **message})

    async def _send(self, item) -> None:
        if self.stuck:  # a client that stopped reading: its socket never has room again
            await asyncio.Event().wait()
        self.sent.append(item)

    async def send_json(self, body: dict) -> None:
        await self._send(body)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)  # recorded first, as the server's access log records it
        await self._send(("close", code))


def _cfg(idle: float = 30.0, ahead: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(live_idle_seconds=idle, live_max_ahead_seconds=ahead)


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def _read(feed, flush_samples: int = 0) -> _Inbox:
    """The inbox after the reader has taken what ``feed(ws)`` put in (it stops, or is cancelled once settled)."""

    async def run() -> _Inbox:
        ws, inbox = FakeSocket(), _Inbox()
        feed(ws)
        more = {"flush_samples": flush_samples} if flush_samples else {}
        reader = asyncio.create_task(_read_messages(ws, inbox, Wire(), 10 * RATE, RATE, _cfg(ahead=1.0), **more))
        await _settle()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return inbox

    return asyncio.run(run())


def test_flushes_sent_without_reading_count_against_the_audio_ahead() -> None:
    """A flush is answered with latency_samples of converted audio, but counted as nothing: a client
    could queue any number of them (a million in 15 s grew the server by 15 MB, and each converts)."""

    def feed(ws):
        for _ in range(1000):
            ws.put(text="flush")

    inbox = _read(feed, flush_samples=300)  # 0.3 s each, 1 s allowed ahead
    assert inbox.stopped and inbox.problem[0] == POLICY
    assert "1.20 s of audio ahead" in inbox.problem[1]
    assert inbox.queue.qsize() <= 4  # three flushes and the stop


def test_empty_and_tiny_messages_cannot_queue_without_bound() -> None:
    """Empty binary messages added nothing to the audio ahead: they queued without bound."""

    def feed(ws):
        for _ in range(1000):
            ws.put(bytes=b"")

    inbox = _read(feed)
    most = RATE // 128  # 1 s of 128-sample messages (a browser AudioWorklet's quantum)
    assert inbox.stopped and inbox.problem[0] == POLICY
    assert f"{most + 1} messages ahead" in inbox.problem[1] and "128-sample messages" in inbox.problem[1]
    assert inbox.waiting == most

    def quanta(ws):  # a client of 128-sample messages may keep the whole second in flight
        for _ in range(most):
            ws.put(bytes=np.zeros(128, "<f4").tobytes())

    assert not _read(quanta).stopped


def test_a_settings_message_is_told_that_settings_are_fixed_by_the_url() -> None:
    def feed(ws):
        ws.put(text=json.dumps({"type": "config", "pitch": 3}))

    inbox = _read(feed)
    assert inbox.problem[0] == POLICY
    assert "unknown text message" in inbox.problem[1] and "query fields of its URL" in inbox.problem[1]
    assert "open a new stream" in inbox.problem[1]


class _FakeConverter:
    sample_rate, block_size, latency_samples, latency_seconds = RATE, 100, 150, 0.15

    def push(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)

    def flush(self) -> np.ndarray:
        return np.zeros(self.latency_samples, dtype=np.float32)


def _state(idle: float) -> SimpleNamespace:
    return SimpleNamespace(cfg=_cfg(idle=idle, ahead=10.0), live_pool=cf.ThreadPoolExecutor(1),
                           metrics=SimpleNamespace(inc=lambda *a, **k: None))


def _served(converter: _FakeConverter, idle: float, client: Callable[[FakeSocket], Awaitable[None]]) -> FakeSocket:
    """A stream of ``converter`` served to a client that takes the ready message, then does what
    ``client(ws)`` (a coroutine) does; the socket once the stream has ended."""

    async def run(ws: FakeSocket) -> None:
        state = _state(idle=idle)
        task = asyncio.create_task(_serve_stream(state, ws, converter, Wire()))
        await _settle()  # the ready message goes out
        await client(ws)
        try:
            await asyncio.wait_for(task, DEADLINE)
        finally:
            state.live_pool.shutdown()

    ws = FakeSocket()
    asyncio.run(run(ws))
    return ws


def _served_until_the_client_stops_reading(idle: float, message: bytes) -> FakeSocket:
    """A stream served to a client that takes the ready message, then stops reading and sends ``message``."""

    async def client(ws: FakeSocket) -> None:
        ws.stuck = True
        ws.put(bytes=message)

    return _served(_FakeConverter(), idle, client)


def test_a_client_that_stops_reading_is_closed_and_gives_its_slot_back() -> None:
    """The answer to a client that reads nothing waited for room in its socket for ever: the stream
    held one of the --max-live slots until the client went away (neither the idle timeout nor the
    keepalive ping could end it). Now it is closed with 1008 after live_idle_seconds."""
    ws = _served_until_the_client_stops_reading(idle=0.2, message=np.zeros(100, "<f4").tobytes())
    assert ws.closed is not None and ws.closed[0] == POLICY and "took no answer for 0.2 s" in ws.closed[1]
    assert ws.sent[0]["type"] == "ready" and len(ws.sent) == 1


def test_a_refusal_to_a_client_that_reads_nothing_is_bounded(monkeypatch) -> None:
    """A bad message from a client whose socket is full: the error message cannot be sent, the stream still ends."""
    import rvcfast.serve.live as live

    monkeypatch.setattr(live, "REFUSE_SECONDS", 0.2, raising=False)  # (a hang, not an AttributeError, before)
    ws = _served_until_the_client_stops_reading(idle=30.0, message=b"\x00" * 5)  # not whole float32 samples
    assert ws.closed is not None and ws.closed[0] == POLICY and "5 bytes" in ws.closed[1]


def test_a_client_that_leaves_mid_message_frees_its_slot_after_one_block() -> None:
    """A client that sent a long message and left: the whole message was converted before the
    stream ended, holding its --max-live slot (a reconnection got 1013) for up to 10 s of audio.
    Now the conversion stops at the next block."""
    pushed: list[int] = []

    class Slow(_FakeConverter):
        def push(self, x: np.ndarray) -> np.ndarray:
            pushed.append(x.shape[0])
            time.sleep(0.02 * -(-x.shape[0] // self.block_size))  # the models' time, per block
            return np.zeros_like(x)

    async def client(ws: FakeSocket) -> None:  # a long message, then gone
        ws.put(bytes=np.zeros(50 * Slow.block_size, "<f4").tobytes())
        await _settle()
        ws.incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})

    ws = _served(Slow(), 30.0, client)
    assert 0 < sum(pushed) <= 5 * Slow.block_size, pushed  # not the 50 blocks of the message
    assert len(ws.sent) == 1  # the ready message; no answer to a client gone


# ------------------------------------------------------------------ a real server


def _raw_stream(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A WebSocket opened by hand that reads nothing after the handshake (a tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(DEADLINE)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers.items())]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return s


def _binary_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytes([0x82]) + (bytes([0xFF]) + struct.pack(">Q", len(payload)) if len(payload) >= 65536
                            else bytes([0xFE]) + struct.pack(">H", len(payload)))
    data = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), len(payload))
    return head + mask + data.tobytes()


def test_a_server_frees_the_slot_of_a_client_that_stopped_reading(tiny_models, tmp_path) -> None:
    httpx = pytest.importorskip("httpx")
    ws_client = pytest.importorskip("websockets.sync.client")
    from serve_helpers import API_KEY, running_server, voice_folder

    voices = voice_folder(tiny_models, tmp_path / "voices")
    with running_server([voices], tiny_models, tmp_path / "server.log", "--api-key", API_KEY, "--max-live", "1",
                        "--live-idle-seconds", "2") as srv:
        query = "voice=carol&sample_rate=48000&block_seconds=0.1&context_seconds=0.1&noise=false&channels=8"

        def live_streams() -> float:
            text = httpx.get(f"{srv.url}/metrics", headers={"X-API-Key": API_KEY}, timeout=30).text
            return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("rvcfast_live_streams ")))

        stuck = _raw_stream(srv.port, f"/v1/live?{query}", {"X-API-Key": API_KEY})
        try:
            # 8 channels of 48 kHz float32: each second of answers is 1.5 MB, more than the socket buffers hold
            second = _binary_frame(np.zeros(48000 * 8, "<f4").tobytes())
            stuck.settimeout(2)
            for _ in range(8):
                try:
                    stuck.sendall(second)
                except TimeoutError:
                    break  # the server stopped reading too
            end = time.monotonic() + DEADLINE
            while live_streams() != 0:  # was: 1 until the client closed its socket
                assert time.monotonic() < end, "the stream of a client that reads nothing kept its live slot"
                time.sleep(0.2)
            with ws_client.connect(srv.url.replace("http://", "ws://") + f"/v1/live?{query}",
                                   additional_headers={"X-API-Key": API_KEY}, open_timeout=DEADLINE) as ws:
                assert json.loads(ws.recv(timeout=DEADLINE))["type"] == "ready"  # the slot is free again
        finally:
            stuck.close()


def test_an_unknown_field_is_told_only_fields_a_stream_takes() -> None:
    """The list of valid parameters named output_sample_rate, which a live stream refuses."""
    from rvcfast.serve.answers import FieldError
    from rvcfast.serve.live import _conversion_fields

    with pytest.raises(FieldError) as info:
        _conversion_fields([("voice", "a"), ("zzz", "1")])
    text = str(info.value)
    assert info.value.field == "zzz" and "pitch" in text and "block_seconds" in text
    assert "output_sample_rate" not in text and "format" not in text

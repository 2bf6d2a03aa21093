"""How ``WS /v1/live`` reads a stream's messages beside its conversion (``rvcfast.serve.live``).

The reader runs against a stand-in WebSocket whose messages the test feeds, so timing-free
properties can be checked exactly: messages are taken as they arrive (not one per answer),
the audio in flight is bounded by ``live_max_ahead_seconds``, a stream waiting for its
answers is not idle, and the conversion loop sees a stop before the messages still queued.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")

from rvcfast.serve.live import POLICY, Wire, _Inbox, _read_messages  # noqa: E402

RATE = 1000


class FakeSocket:
    """``receive()`` returns the messages put in ``incoming``, waiting for the next one."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict] = asyncio.Queue()

    async def receive(self) -> dict:
        return await self.incoming.get()

    def audio(self, seconds: float) -> None:
        x = np.zeros(int(seconds * RATE), dtype="<f4")
        self.incoming.put_nowait({"type": "websocket.receive", "bytes": x.tobytes()})


def _cfg(idle: float = 30.0, ahead: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(live_idle_seconds=idle, live_max_ahead_seconds=ahead)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_messages_are_read_as_they_arrive_up_to_the_limit():
    async def run():
        ws, inbox = FakeSocket(), _Inbox()
        reader = asyncio.create_task(_read_messages(ws, inbox, Wire(), 10 * RATE, RATE, _cfg(ahead=1.0)))
        for _ in range(4):
            ws.audio(0.25)  # 1.0 s in flight: allowed
        await _settle()
        assert inbox.queue.qsize() == 4 and inbox.ahead == RATE and not inbox.stopped
        ws.audio(0.01)  # one sample too many
        await asyncio.wait_for(reader, 5)
        return inbox

    inbox = asyncio.run(run())
    assert inbox.stopped and inbox.problem[0] == POLICY
    assert "1.01 s of audio ahead" in inbox.problem[1] and "1 s" in inbox.problem[1]


def test_one_long_message_is_taken_whatever_the_limit():
    async def run():
        ws, inbox = FakeSocket(), _Inbox()
        reader = asyncio.create_task(_read_messages(ws, inbox, Wire(), 10 * RATE, RATE, _cfg(ahead=1.0)))
        ws.audio(5.0)  # nothing in flight before it: a long block is not "ahead"
        await _settle()
        reader.cancel()
        return inbox

    inbox = asyncio.run(run())
    assert not inbox.stopped and inbox.ahead == 5 * RATE


def test_a_stream_waiting_for_its_answers_is_not_idle():
    async def run():
        ws, inbox = FakeSocket(), _Inbox()
        reader = asyncio.create_task(_read_messages(ws, inbox, Wire(), 10 * RATE, RATE, _cfg(idle=0.02)))
        ws.audio(0.1)
        await asyncio.sleep(0.2)  # ten idle periods while its block is (still) converting
        waiting = inbox.stopped
        inbox.ahead = 0  # answered
        await asyncio.wait_for(reader, 5)
        return waiting, inbox

    waiting, inbox = asyncio.run(run())
    assert not waiting
    assert inbox.stopped and inbox.problem[0] == POLICY and "nothing received" in inbox.problem[1]


def test_a_stop_comes_before_the_queued_messages_and_a_gone_client_is_no_error():
    async def run():
        ws, inbox = FakeSocket(), _Inbox()
        reader = asyncio.create_task(_read_messages(ws, inbox, Wire(), 10 * RATE, RATE, _cfg()))
        ws.audio(0.1)
        ws.incoming.put_nowait({"type": "websocket.receive", "text": "flush"})
        ws.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(reader, 5)
        return inbox, await inbox.next()

    inbox, first = asyncio.run(run())
    assert first == ("stop", None) and inbox.problem is None  # the client left: nothing to convert or tell
    assert inbox.queue.qsize() == 3  # the audio and the flush were read, then the stop


def test_a_bad_message_stops_the_stream_with_policy():
    async def run():
        ws, inbox = FakeSocket(), _Inbox()
        reader = asyncio.create_task(_read_messages(ws, inbox, Wire(), 10 * RATE, RATE, _cfg()))
        ws.incoming.put_nowait({"type": "websocket.receive", "text": "hello"})
        await asyncio.wait_for(reader, 5)
        return inbox

    inbox = asyncio.run(run())
    assert inbox.problem[0] == POLICY and "unknown text message 'hello'" in inbox.problem[1]


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan")])
def test_the_limit_must_be_a_positive_finite_number_of_seconds(value):
    from rvcfast.errors import ParameterError
    from rvcfast.serve.config import ServeConfig

    with pytest.raises(ParameterError, match="live_max_ahead_seconds"):
        ServeConfig.build(voices=["v.pth"], live_max_ahead_seconds=value)
    assert ServeConfig.build(voices=["v.pth"]).live_max_ahead_seconds == 10.0


def test_stereo_messages_are_mixed_down_and_answered_on_every_channel():
    from rvcfast.errors import ParameterError
    from rvcfast.serve.live import _decode, _encode

    frames = np.array([[0.5, -0.25], [1.0, 0.0], [-1.0, -0.5]], dtype="<f4")
    mono = _decode(frames.tobytes(), Wire("f32le", 2), 10)
    np.testing.assert_array_equal(mono, np.array([0.125, 0.5, -0.75], dtype=np.float32))
    answer = np.frombuffer(_encode(mono, Wire("f32le", 2)), dtype="<f4").reshape(-1, 2)
    np.testing.assert_array_equal(answer, np.stack([mono, mono], axis=1))
    pcm = np.array([[16384, -16384, 0]], dtype="<i2")  # one frame of three channels
    assert _decode(pcm.tobytes(), Wire("s16le", 3), 10).tolist() == [0.0]
    with pytest.raises(ParameterError, match=r"12 bytes is not whole frames of 2 interleaved f32le samples \(8 bytes each\)"):
        _decode(b"\x00" * 12, Wire("f32le", 2), 10)
    with pytest.raises(ParameterError, match=r"holds 3 samples, more than"):
        _decode(frames.tobytes(), Wire("f32le", 2), 2)  # the limit counts frames


def test_a_client_sending_in_real_time_to_a_slower_conversion_is_told_the_server_is_slow():
    """A microphone stream to a server converting it slower than real time fell behind and was
    closed with "the client sent N s of audio ahead ...: send each block after its answer",
    blaming a client that had sent nothing early."""

    async def run():
        # a converter that takes 2 s per second of audio, and 1.5 s answered already
        rt = SimpleNamespace(real_time_factor=2.0, block_size=100, sample_rate=RATE)
        ws, inbox = FakeSocket(), _Inbox(rt)
        inbox.answered = 1.5
        reader = asyncio.create_task(_read_messages(ws, inbox, Wire(), 10 * RATE, RATE, _cfg(ahead=0.5)))
        for _ in range(20):  # 0.15 s of audio every 0.15 s, nothing answered: the backlog grows
            ws.audio(0.15)
            await asyncio.sleep(0.15)
            if inbox.stopped:
                break
        await asyncio.wait_for(reader, 5)
        return inbox

    inbox = asyncio.run(run())
    assert inbox.stopped and inbox.problem[0] == POLICY
    said = inbox.problem[1]
    assert said.startswith("the stream fell 0.60 s behind (the server's limit is 0.5 s)"), said
    assert "slower than real time (2.00 s of conversion per second of audio)" in said and "block_seconds" in said
    assert "ahead of the conversion" not in said
    assert said.endswith("or use a faster server")  # no engine here: nothing to say about its precision


def test_the_slow_stream_message_suggests_bfloat16_only_to_a_float32_cpu_server():
    import torch

    from rvcfast.serve.live import _faster_hint

    def rt(device: str, dtype: torch.dtype) -> SimpleNamespace:
        return SimpleNamespace(engine=SimpleNamespace(device=torch.device(device), dtype=dtype))

    assert _faster_hint(rt("cpu", torch.float32)) == " (on a CPU with native bfloat16: serve --dtype auto)"
    assert _faster_hint(rt("cpu", torch.bfloat16)) == ""  # the server runs bfloat16 already
    assert _faster_hint(rt("cuda", torch.float32)) == ""
    assert _faster_hint(None) == ""


def test_the_log_says_once_when_a_stream_converts_slower_than_real_time(caplog):
    """The server's log now names a stream that cannot keep up, before it falls behind: once, and
    only after a second of audio past the warm-up has been answered."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from rvcfast.serve.live import _serve_stream

    class Stream(FakeSocket):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[bytes] = []

        async def send_json(self, body: dict) -> None:
            pass

        async def send_bytes(self, data: bytes) -> None:
            self.sent.append(data)

        async def close(self, code: int = 1000, reason: str = "") -> None:
            pass

    class Converter:  # 2 s of conversion per second of audio, as RealtimeConverter measures it
        sample_rate, block_size, latency_seconds, latency_samples = RATE, 40, 0.04, 40
        real_time_factor = 2.0

        def push(self, x: np.ndarray) -> np.ndarray:
            return x

    rt = Converter()
    metrics = SimpleNamespace(inc=lambda *a, **k: None)
    with ThreadPoolExecutor(1) as pool:
        state = SimpleNamespace(cfg=_cfg(ahead=10.0), live_pool=pool, metrics=metrics)

        async def run(ws: Stream) -> list[int]:
            serving = asyncio.create_task(_serve_stream(state, ws, rt, Wire()))
            said = []
            for _ in range(16):  # 0.1 s messages: 1.6 s of audio
                ws.audio(0.1)
                while len(ws.sent) < len(said) + 1:
                    await asyncio.sleep(0.01)
                said.append(sum("slower than real time" in r.getMessage() for r in caplog.records))
            ws.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
            await asyncio.wait_for(serving, 10)
            return said

        with caplog.at_level(logging.WARNING, logger="rvcfast.serve"):
            said = asyncio.run(run(Stream()))
    # not before 1.08 s answered (1 s past the two 0.04 s warm-up blocks), then once
    assert said == [0] * 10 + [1] * 6, said
    [warning] = [r.getMessage() for r in caplog.records if "slower than real time" in r.getMessage()]
    assert "(2.00 s per second of audio, block_seconds 0.04)" in warning and "closed once 10 s behind" in warning

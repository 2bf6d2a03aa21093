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

from rvcfast.serve.live import POLICY, _Inbox, _read_messages  # noqa: E402

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
        reader = asyncio.create_task(_read_messages(ws, inbox, "f32le", 10 * RATE, RATE, _cfg(ahead=1.0)))
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
        reader = asyncio.create_task(_read_messages(ws, inbox, "f32le", 10 * RATE, RATE, _cfg(ahead=1.0)))
        ws.audio(5.0)  # nothing in flight before it: a long block is not "ahead"
        await _settle()
        reader.cancel()
        return inbox

    inbox = asyncio.run(run())
    assert not inbox.stopped and inbox.ahead == 5 * RATE


def test_a_stream_waiting_for_its_answers_is_not_idle():
    async def run():
        ws, inbox = FakeSocket(), _Inbox()
        reader = asyncio.create_task(_read_messages(ws, inbox, "f32le", 10 * RATE, RATE, _cfg(idle=0.02)))
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
        reader = asyncio.create_task(_read_messages(ws, inbox, "f32le", 10 * RATE, RATE, _cfg()))
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
        reader = asyncio.create_task(_read_messages(ws, inbox, "f32le", 10 * RATE, RATE, _cfg()))
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

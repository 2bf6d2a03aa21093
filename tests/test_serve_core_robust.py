"""The server's core under stress: a failed shared call, stopping with work parked, and a closed app.

Fake engines only (nothing is loaded from disk), so every test runs in well under a second;
nothing is timed: every wait is for an event or a condition, with a generous deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rvcfast.errors import Cancelled
from rvcfast.result import Result
from rvcfast.serve.scheduler import END, Scheduler

DEADLINE = 60.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"gave up waiting: {what}"
        time.sleep(0.01)


def prep(label: str) -> Any:
    return SimpleNamespace(label=label, padded=np.zeros(16000), seconds=1.0, n_channels=1)


class SharedCallFails:
    """An engine whose shared calls (more than one input) fail once the test lets them go on;
    calls of one input succeed. ``cancel`` is honoured as ``Engine.run`` honours it."""

    sample_rate = 40000

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.in_shared_call = threading.Event()
        self.fail_now = threading.Event()

    def run(self, preps: Any, params: Any, f0: Any = None, cancel: Any = None) -> list[Result]:
        if cancel is not None and cancel.is_set():
            raise Cancelled("the conversion was cancelled")
        labels = [p.label for p in preps]
        self.calls.append(labels)
        if len(labels) > 1:
            self.in_shared_call.set()
            assert self.fail_now.wait(DEADLINE)
            raise RuntimeError("the shared call failed")
        return [Result(np.zeros(3, np.float32), self.sample_rate, {}, p.label) for p in preps]


def test_a_request_given_up_during_a_failed_shared_call_is_not_run_again() -> None:
    """A shared call that fails is retried one request at a time; a request whose client left
    while the shared call ran must not be converted again for nobody (it ran alone, to the end)."""
    engine = SharedCallFails()
    sched = Scheduler(group_seconds=30)
    kept1, gone, kept2 = (sched.submit(engine, prep(name), None) for name in ("kept1", "gone", "kept2"))
    sched.start()
    try:
        assert engine.in_shared_call.wait(DEADLINE)
        sched.give_up(gone)
        engine.fail_now.set()
        assert kept1.result(DEADLINE).ok and kept2.result(DEADLINE).ok
        with pytest.raises(Cancelled):
            gone.result(DEADLINE)
    finally:
        sched.close(DEADLINE)
    assert engine.calls == [["kept1", "gone", "kept2"], ["kept1"], ["kept2"]]
    assert sched._converts == {}


def test_a_parked_stream_is_told_when_the_worker_stops() -> None:
    """A stream parked for want of credit when the scheduler closes gets an error and its
    iterator is closed; its receiver used to wait for ever (the worker had gone)."""
    received: list[Any] = []
    got = threading.Event()
    closed = threading.Event()

    def pieces() -> Iterator[int]:
        try:
            yield from range(5)
        finally:
            closed.set()

    def sink(item: Any) -> None:
        received.append(item)
        got.set()

    sched = Scheduler(group_seconds=0)
    sched.start()
    task = sched.submit_steps(pieces(), sink, credit=1)
    assert got.wait(DEADLINE)
    wait_for(lambda: task.parked, "the stream to park")
    sched.close(DEADLINE)
    assert not sched._thread.is_alive()
    assert received[0] == 0 and len(received) == 2, received
    assert isinstance(received[1], RuntimeError) and "shutting down" in str(received[1])
    assert closed.is_set() and not task.parked
    sched.grant(task)  # a receiver that takes the error afterwards: nothing queued, nothing sent
    assert len(received) == 2 and sched.depth == 0


def test_a_stream_that_keeps_its_credit_still_finishes_when_the_worker_stops() -> None:
    """Stopping finishes the queued work: a stream whose receiver keeps up is not cut."""
    received: list[Any] = []
    sched = Scheduler(group_seconds=0)
    sched.submit_steps(iter(range(3)), received.append, credit=10)
    sched.start()
    sched.close(DEADLINE)
    assert received == [0, 1, 2, END]


# ---------------------------------------------------------------------- a closed app


def fake_engine() -> Any:
    vocoder = SimpleNamespace(version="v2", sample_rate=40000, has_f0=True, num_speakers=1)
    return SimpleNamespace(vocoder=vocoder)


@pytest.fixture
def voices(tmp_path: Path) -> Path:
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "alice.pth").write_bytes(b"never read: Engine.load is replaced")
    return folder


def test_a_closed_app_is_not_ready_and_refuses_requests_with_503(voices, tmp_path, monkeypatch) -> None:
    """After ``close()`` (a mounted app going away) ``/health`` said 200 and ``rvcfast_ready`` 1,
    while every conversion failed with a 500 "internal error" (its pools were shut down)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from serve_helpers import run_in_process

    from rvcfast.engine import Engine
    from rvcfast.serve import create_app

    monkeypatch.setattr(Engine, "load", staticmethod(lambda *a, **k: fake_engine()))
    app = create_app(voices=[voices], device="cpu", threads=1, jobs_dir=tmp_path / "spool")
    state = app.state.rvcfast

    async def body(client: Any) -> list[Any]:
        state.close()
        health = await client.get("/health")
        metrics = await client.get("/metrics")
        convert = await client.post(
            "/v1/convert", params={"voice": "alice"}, content=b"RIFF", headers={"content-type": "audio/wav"}
        )
        return [health, metrics, convert]

    try:
        health, metrics, convert = run_in_process(app, body, DEADLINE)
    finally:
        state.close()
    assert health.status_code == 503 and "shut down" in health.json()["error"]
    assert "rvcfast_ready 0" in metrics.text.splitlines()
    assert convert.status_code == 503 and "shut down" in convert.json()["error"], convert.text
    assert state.admission.count == 0
    assert state.scheduler is not None and not state.scheduler._thread.is_alive()


def test_a_server_closed_before_it_started_does_not_start(voices, tmp_path, monkeypatch) -> None:
    from rvcfast.engine import Engine
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import NotReady, ServerState

    loads: list[Any] = []
    monkeypatch.setattr(Engine, "load", staticmethod(lambda *a, **k: loads.append(a) or fake_engine()))
    state = ServerState(ServeConfig.build(voices=[str(voices)], device="cpu", threads=1, jobs_dir=str(tmp_path / "spool")))
    state.close()
    with pytest.raises(NotReady, match="shut down"):
        state.check_ready()
    state.start()
    assert state.scheduler is None and loads == []


def test_a_voice_that_finishes_loading_after_close_is_not_kept(voices, tmp_path, monkeypatch) -> None:
    """``close()`` lets go of the loaded voices; a first voice still loading then was put in
    the registry when its load ended (its models held for as long as the app object lives),
    and the server reported itself ready."""
    from rvcfast.engine import Engine
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import ServerState

    loading, finish = threading.Event(), threading.Event()

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        loading.set()
        assert finish.wait(DEADLINE)
        return fake_engine()

    monkeypatch.setattr(Engine, "load", staticmethod(slow_load))
    state = ServerState(ServeConfig.build(voices=[str(voices)], device="cpu", threads=1, jobs_dir=str(tmp_path / "spool")))
    state.start()
    assert loading.wait(DEADLINE)
    state.close()
    finish.set()
    wait_for(lambda: state.registry.loads > 0 or "alice" in state.registry._failed, "the load to end")
    assert state.registry.loaded_ids() == []
    assert not state.ready.is_set() and state.load_error is None


def test_an_error_every_voice_shares_is_said_once(voices, tmp_path, monkeypatch, caplog) -> None:
    """Missing base weights fail every voice with the same message: it was logged once per voice
    and repeated per voice in the server's final error (four copies for two voices)."""
    import logging

    from rvcfast.engine import Engine
    from rvcfast.errors import WeightsNotFoundError
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import ServerState

    for name in ("bob", "carol"):
        (voices / f"{name}.pth").write_bytes(b"never read: Engine.load is replaced")

    def load(model: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(model).stem == "carol":
            raise ValueError("carol's own problem")
        raise WeightsNotFoundError("hubert_base.pt not found: get it with `rvcfast download`")

    monkeypatch.setattr(Engine, "load", staticmethod(load))
    stopped = threading.Event()
    state = ServerState(ServeConfig.build(voices=[str(voices)], device="cpu", threads=1, jobs_dir=str(tmp_path / "spool")))
    state.on_fatal = stopped.set
    with caplog.at_level(logging.ERROR, logger="rvcfast.serve"):
        state.start()
        assert stopped.wait(DEADLINE)
    try:
        assert state.load_error == (
            "voices alice, bob: WeightsNotFoundError: hubert_base.pt not found: get it with `rvcfast download`; "
            "voice carol: ValueError: carol's own problem"
        )
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loading voice")]
        assert logged == [
            "loading voice alice failed: WeightsNotFoundError: hubert_base.pt not found: get it with `rvcfast download`",
            "loading voice bob failed: the same error as voice alice",
            "loading voice carol failed: ValueError: carol's own problem",
        ]
    finally:
        state.close()


def test_clients_never_see_where_the_server_looked_for_base_weights(voices, tmp_path, monkeypatch) -> None:
    """A missing hubert_base.pt names the folders looked in: the operator's message keeps them,
    what a client can read (/v1/voices, 503s) had them too."""
    from rvcfast.engine import Engine
    from rvcfast.errors import WeightsNotFoundError
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import ServerState

    home = tmp_path / "private-weights"
    monkeypatch.setenv("RVCFAST_HOME", str(home))

    def load(*args: Any, **kwargs: Any) -> Any:
        raise WeightsNotFoundError(f"hubert_base.pt not found. Looked in: {home / 'hubert_base.pt'}, {home}")

    monkeypatch.setattr(Engine, "load", staticmethod(load))
    stopped = threading.Event()
    state = ServerState(ServeConfig.build(voices=[str(voices)], device="cpu", threads=1, jobs_dir=str(tmp_path / "spool")))
    state.on_fatal = stopped.set
    state.start()
    try:
        assert stopped.wait(DEADLINE)
        shown = state.registry.get("alice").info["error"]
        assert str(home) not in shown and str(home) not in (state.load_error or "")
        assert shown == "WeightsNotFoundError: hubert_base.pt not found. Looked in: hubert_base.pt, (the weights folder)"
        assert str(home / "hubert_base.pt") in (state.load_failure or "")
    finally:
        state.close()

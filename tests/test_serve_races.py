"""The server's concurrency and error paths: what a plugin's ``sys.exit()`` (or any other
:class:`BaseException`) does to the model worker, the pools and the event loop; futures that
must always end; slots, step tasks and job files that must come back however a request ends.

Fake engines where the models do not matter; the tiny models of the test suite where they do.
Nothing is timed: every wait is for an event or a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401
from serve_helpers import wait_for

from rvcfast.errors import RvcfastError
from rvcfast.result import Result
from rvcfast.serve.scheduler import END, Scheduler

DEADLINE = 60.0

#: Exceptions that are not :class:`Exception`: what a plugin's ``sys.exit()`` or a hand-raised
#: interrupt throws. None of them may end the model worker or reach the event loop.
EXITS = [SystemExit(3), KeyboardInterrupt(), GeneratorExit()]


def prep(label: str) -> Any:
    return SimpleNamespace(label=label, padded=np.zeros(16000), seconds=1.0, n_channels=1)


class Exits:
    """An engine whose calls holding an input labelled ``exit`` raise ``exc``; other calls convert."""

    sample_rate = 40000

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls: list[list[str]] = []

    def run(self, preps: Any, params: Any, f0: Any = None, cancel: Any = None) -> list[Result]:
        labels = [p.label for p in preps]
        self.calls.append(labels)
        if "exit" in labels:
            raise self.exc
        return [Result(np.zeros(3, np.float32), self.sample_rate, {}, p.label) for p in preps]


# ---------------------------------------------------------------------- the model worker


@pytest.mark.parametrize("exc", EXITS, ids=lambda e: type(e).__name__)
def test_a_base_exception_in_a_model_call_fails_that_request_and_the_worker_goes_on(exc: BaseException) -> None:
    """It ended the worker thread: the request's future was never resolved (its client waited for
    ever) and so was every later one's."""
    eng = Exits(exc)
    sched = Scheduler(group_seconds=0)
    sched.start()
    try:
        bad = sched.submit(eng, prep("exit"), None)
        error = bad.exception(DEADLINE)
        assert isinstance(error, RvcfastError) and type(exc).__name__ in str(error) or "sys.exit(3)" in str(error), error
        assert sched.submit(eng, prep("after"), None).result(DEADLINE).ok  # the worker is alive
    finally:
        sched.close(DEADLINE)


@pytest.mark.parametrize("exc", EXITS, ids=lambda e: type(e).__name__)
def test_a_base_exception_in_a_shared_call_fails_only_the_request_that_raised_it(exc: BaseException) -> None:
    eng = Exits(exc)
    sched = Scheduler(group_seconds=30)
    futures = [sched.submit(eng, prep(name), None) for name in ("good1", "exit", "good2")]
    sched.start()
    try:
        results = [f.result(DEADLINE) for f in futures]
    finally:
        sched.close(DEADLINE)
    assert eng.calls[0] == ["good1", "exit", "good2"]  # shared, then each alone
    assert results[0].ok and results[2].ok
    assert results[1].error is not None and isinstance(results[1].exception, RvcfastError)


def test_an_engine_answering_fewer_results_than_inputs_fails_the_rest_instead_of_leaving_them_waiting() -> None:
    """``zip`` dropped the requests beyond the results: their futures never ended."""

    class Short:
        sample_rate = 40000

        def run(self, preps: Any, params: Any, f0: Any = None, cancel: Any = None) -> list[Result]:
            return [Result(np.zeros(3, np.float32), 40000, {}, p.label) for p in preps[:1]] if len(preps) > 1 else []

    sched = Scheduler(group_seconds=30)
    futures = [sched.submit(Short(), prep(f"x{i}"), None) for i in range(3)]
    sched.start()
    try:
        outcomes = [f.exception(DEADLINE) or f.result(0) for f in futures]
    finally:
        sched.close(DEADLINE)
    for outcome in outcomes:  # every request ends: each alone then, and an engine returning nothing fails it
        failed = outcome if isinstance(outcome, BaseException) else outcome.exception
        assert isinstance(failed, RvcfastError) and "results" in str(failed), outcome


@pytest.mark.parametrize("exc", EXITS, ids=lambda e: type(e).__name__)
def test_a_step_task_raising_a_base_exception_gets_an_exception_and_the_worker_goes_on(exc: BaseException) -> None:
    """A stream (long input, job) whose step raised one ended the worker; an exception handed to the
    receiver must also be an :class:`Exception`, or ``ServerState.steps`` raises it in the event loop."""

    def steps() -> Iterator[Any]:
        yield "first"
        raise exc

    got: list[Any] = []
    done = threading.Event()

    def sink(item: Any) -> None:
        got.append(item)
        if item is END or isinstance(item, BaseException):
            done.set()

    sched = Scheduler(group_seconds=0)
    sched.start()
    try:
        sched.submit_steps(steps(), sink, credit=4)
        assert done.wait(DEADLINE), got
        assert got[0] == "first" and isinstance(got[1], RvcfastError), got
        assert sched.submit(Exits(exc), prep("after"), None).result(DEADLINE).ok
    finally:
        sched.close(DEADLINE)


def test_cancelling_a_stream_whose_cleanup_calls_sys_exit_does_not_raise_in_the_caller() -> None:
    """``cancel`` closes a waiting step task's iterator in the caller's thread (the event loop)."""
    started, closed = threading.Event(), threading.Event()

    def steps() -> Iterator[Any]:
        try:
            started.set()
            yield "first"
            yield "second"
        finally:
            closed.set()
            sys.exit(4)

    sched = Scheduler(group_seconds=0)
    sched.start()
    try:
        task = sched.submit_steps(steps(), lambda item: None, credit=1)
        wait_for(lambda: task.parked, "the task to park")  # one item, no credit left
        sched.cancel(task)
        assert closed.is_set()
        assert sched.submit(Exits(SystemExit(0)), prep("after"), None).result(DEADLINE).ok
    finally:
        sched.close(DEADLINE)


def test_work_offered_to_a_stopped_scheduler_is_refused_as_a_shutdown_and_not_kept() -> None:
    from rvcfast.serve.scheduler import ShuttingDown

    sched = Scheduler(group_seconds=0)
    sched.start()
    sched.close(DEADLINE)
    with pytest.raises(ShuttingDown, match="shutting down"):
        sched.submit(Exits(SystemExit(0)), prep("late"), None)
    with pytest.raises(ShuttingDown):
        sched.submit_steps(iter(()), lambda item: None)
    assert sched._converts == {}  # nothing waits for a worker that is gone


# ---------------------------------------------------------------------- the pools and the event loop


def fake_engine() -> Any:
    vocoder = SimpleNamespace(version="v2", sample_rate=40000, has_f0=True, num_speakers=1)
    return SimpleNamespace(vocoder=vocoder, sample_rate=40000)


@pytest.fixture
def voices(tmp_path: Path) -> Path:
    folder = tmp_path / "voices"
    folder.mkdir()
    for name in ("alice", "bob", "carol"):
        (folder / f"{name}.pth").write_bytes(b"never read: Engine.load is replaced")
    return folder


def exiting_load(*exit_for: str) -> Callable[..., Any]:
    """``Engine.load`` that calls ``sys.exit(7)`` for the voices named, and gives a fake engine otherwise."""

    def load(model: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(model).stem in exit_for:
            sys.exit(7)
        return fake_engine()

    return load


def test_a_pool_function_calling_sys_exit_is_an_error_not_the_end_of_the_event_loop(voices, tmp_path, monkeypatch) -> None:
    """``await loop.run_in_executor(...)`` re-raised the ``SystemExit`` in the event loop: a bare
    loop (``asyncio.run``, httpx's ASGI transport) stopped; under uvicorn the request got a
    plain-text 500 with no message, not the route's JSON error (a CPU F0 tracker, a plugin, runs
    in the prepare pool)."""
    from rvcfast.engine import Engine
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import ServerState

    monkeypatch.setattr(Engine, "load", staticmethod(exiting_load()))
    state = ServerState(ServeConfig.build(voices=[str(voices)], device="cpu", threads=1, jobs_dir=str(tmp_path / "spool")))

    async def main() -> str:
        with pytest.raises(RvcfastError, match=r"sys\.exit\(3\)"):
            await state.in_pool(sys.exit, 3)
        return await state.in_pool(lambda: "still here")

    try:
        assert asyncio.run(main()) == "still here"
    finally:
        state.close()


def test_a_first_voice_whose_load_calls_sys_exit_fails_alone_and_the_server_gets_ready(voices, tmp_path, monkeypatch) -> None:
    """The loading thread died with the ``SystemExit``: the other voices were never loaded and
    ``/health`` said "still loading" for ever."""
    from rvcfast.engine import Engine
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import ServerState

    monkeypatch.setattr(Engine, "load", staticmethod(exiting_load("alice")))
    state = ServerState(ServeConfig.build(voices=[str(voices)], device="cpu", threads=1, jobs_dir=str(tmp_path / "spool")))
    try:
        state._preload()
        assert state.ready.is_set() and state.load_error is None
        assert state.registry.loaded_ids() == ["bob", "carol"]
        assert "sys.exit(7)" in state.registry.describe("alice")["error"]
    finally:
        state.close()


def test_a_voice_loaded_on_demand_that_calls_sys_exit_is_a_500_and_the_server_goes_on(voices, tmp_path, monkeypatch) -> None:
    """Loaded in the loader pool, its ``SystemExit`` reached the event loop (see above): no JSON
    error naming the voice, not counted as a load failure, and not kept, so every request for the
    voice loaded it again (and called ``sys.exit()`` again)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from helpers import tone
    from serve_helpers import run_in_process, wav_bytes

    from rvcfast.engine import Engine
    from rvcfast.serve import create_app

    monkeypatch.setattr(Engine, "load", staticmethod(exiting_load("carol")))
    app = create_app(voices=[voices], device="cpu", threads=1, jobs_dir=tmp_path / "spool", max_loaded_voices=1)
    state = app.state.rvcfast
    clip = wav_bytes(tone(0.5, 16000), 16000)

    async def body(client: Any) -> list[Any]:
        files = {"file": ("take.wav", clip, "audio/wav")}
        first = await client.post("/v1/convert", files=files, data={"voice": "carol"})
        again = await client.post("/v1/convert", files=files, data={"voice": "carol"})  # its error is kept
        return [first, again, await client.get("/health"), await client.get("/metrics")]

    try:
        first, again, health, metrics = run_in_process(app, body, DEADLINE)
    finally:
        state.close()
    for r in (first, again):
        assert r.status_code == 500 and "carol" in r.json()["error"] and "sys.exit(7)" in r.json()["error"], r.text
    assert health.status_code == 200
    assert 'rvcfast_conversion_failures_total{stage="load"} 2' in metrics.text.splitlines()
    assert state.admission.count == 0


# ---------------------------------------------------------------------- a served app with the tiny models


@pytest.fixture(scope="module")
def served_app(tiny_models, tmp_path_factory) -> Iterator[tuple[str, Any]]:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from serve_helpers import served, voice_folder

    from rvcfast.serve import create_app

    voices = voice_folder(tiny_models, tmp_path_factory.mktemp("races") / "voices")
    app = create_app(
        voices=[voices], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads=1,
        jobs_dir=tmp_path_factory.mktemp("races_spool"), max_loaded_voices=2,
    )
    with served(app) as url:
        yield url, app.state.rvcfast


class EndlessStream:
    """``Engine.stream`` replaced by a stream of silent pieces that never ends by itself: the test
    decides when the client goes; ``closed`` is set once the server has let go of it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.closed = threading.Event()

    def __call__(self, engine: Any, prep: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        try:
            self.started.set()
            for _ in range(100_000):
                yield np.zeros(1600, np.float32)
        finally:
            self.closed.set()


def settled(state: Any) -> bool:
    """No request, step task or conversion left in the server."""
    sched = state.scheduler
    return state.admission.count == 0 and sched.depth == 0 and not sched._parked and not sched._converts


@pytest.mark.parametrize("round_", range(3))
def test_a_client_that_leaves_a_streamed_answer_gives_back_its_slot_and_its_stream(served_app, monkeypatch, round_) -> None:
    httpx = pytest.importorskip("httpx")
    from helpers import tone
    from serve_helpers import wav_bytes

    from rvcfast.engine import Engine

    url, state = served_app
    stream = EndlessStream()
    monkeypatch.setattr(Engine, "stream", stream)
    clip = wav_bytes(tone(0.5, 16000), 16000)
    with httpx.Client(timeout=DEADLINE) as client:
        with client.stream("POST", f"{url}/v1/convert", files={"file": ("a.wav", clip, "audio/wav")},
                           data={"voice": "bob", "stream": "true"}) as r:
            assert r.status_code == 200, r.read()
            next(r.iter_raw())  # the header and the first piece, then the client goes
    assert stream.closed.wait(DEADLINE), "the stream was never closed"
    wait_for(lambda: settled(state), "the slot and the step task to be given back")
    assert httpx.get(f"{url}/health", timeout=DEADLINE).status_code == 200


def test_a_job_deleted_while_it_runs_leaves_no_file_and_no_slot(served_app, monkeypatch) -> None:
    httpx = pytest.importorskip("httpx")
    from helpers import tone
    from serve_helpers import wav_bytes

    from rvcfast.engine import Engine

    url, state = served_app
    stream = EndlessStream()
    monkeypatch.setattr(Engine, "stream", stream)
    clip = wav_bytes(tone(0.5, 16000), 16000)
    r = httpx.post(f"{url}/v1/jobs", files={"file": ("long.wav", clip, "audio/wav")}, data={"voice": "bob"}, timeout=DEADLINE)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert stream.started.wait(DEADLINE)
    wait_for(lambda: any(state.jobs.root.glob(f"{job}.raw")), "the job to write its raw file")
    assert httpx.delete(f"{url}/v1/jobs/{job}", timeout=DEADLINE).status_code == 200
    assert stream.closed.wait(DEADLINE)
    wait_for(lambda: settled(state), "the job's slot and step task to be given back")
    wait_for(lambda: not list(state.jobs.root.glob(f"{job}.*")), "the job's files to be deleted")
    assert httpx.get(f"{url}/v1/jobs/{job}", timeout=DEADLINE).status_code == 404


def test_a_live_block_that_calls_sys_exit_ends_that_stream_only(served_app, monkeypatch) -> None:
    """The ``SystemExit`` of a block (run in the live pool) escaped the route: the client's connection
    was dropped without an error message or a close frame, and no failure was counted."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("websockets")
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from rvcfast.realtime import RealtimeConverter

    url, state = served_app
    before = state.metrics.counter_value("rvcfast_conversion_failures_total", stage="live")
    monkeypatch.setattr(RealtimeConverter, "push", lambda self, x: sys.exit(5))
    with connect(f"{url.replace('http', 'ws')}/v1/live?voice=bob&sample_rate=16000", open_timeout=DEADLINE) as ws:
        ready = json.loads(ws.recv(timeout=DEADLINE))
        ws.send(np.zeros(ready["block_size"], "<f4").tobytes())
        error = json.loads(ws.recv(timeout=DEADLINE))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=DEADLINE)
    assert error["type"] == "error" and "sys.exit(5)" in error["error"], error
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert httpx.get(f"{url}/health", timeout=DEADLINE).status_code == 200  # the server goes on
    wait_for(lambda: state.live_streams == 0, "the stream to be counted out")
    assert state.metrics.counter_value("rvcfast_conversion_failures_total", stage="live") == before + 1


def test_work_refused_by_a_stopping_worker_is_answered_503_with_retry_after(voices, tmp_path, monkeypatch) -> None:
    """A request admitted just before ``close()`` whose work reached the stopped worker got a 500
    "internal error: RuntimeError"; it is the server going away: 503, as any request refused then."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from serve_helpers import run_in_process

    from rvcfast.engine import Engine
    from rvcfast.serve import create_app

    monkeypatch.setattr(Engine, "load", staticmethod(exiting_load()))
    app = create_app(voices=[voices], device="cpu", threads=1, jobs_dir=tmp_path / "spool")
    state = app.state.rvcfast

    async def late() -> Any:  # what a conversion route does once the worker has stopped
        return state.scheduler.submit(fake_engine(), prep("late"), None)

    app.add_api_route("/late", late)

    async def body(client: Any) -> Any:
        state.scheduler.close(DEADLINE)
        return await client.get("/late")

    try:
        r = run_in_process(app, body, DEADLINE)
    finally:
        state.close()
    assert r.status_code == 503 and "shutting down" in r.json()["error"] and r.headers["retry-after"] == "10", r.text


def test_a_job_whose_finishing_calls_sys_exit_fails_alone_and_the_server_goes_on(served_app, monkeypatch) -> None:
    """A job's decode, finish and write run in the pool through their own helper, which let a
    ``SystemExit`` through to the event loop: the job stayed "running" and its slot taken."""
    httpx = pytest.importorskip("httpx")
    from helpers import tone
    from serve_helpers import wav_bytes

    import rvcfast.pipeline

    def exits(*args: Any, **kwargs: Any) -> Any:
        sys.exit(5)

    url, state = served_app
    monkeypatch.setattr(rvcfast.pipeline, "finish", exits)
    clip = wav_bytes(tone(0.5, 16000), 16000)
    r = httpx.post(f"{url}/v1/jobs", files={"file": ("take.wav", clip, "audio/wav")}, data={"voice": "bob"}, timeout=DEADLINE)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job}", timeout=DEADLINE).json()["state"] == "failed", "the job to fail")
    assert "sys.exit(5)" in httpx.get(f"{url}/v1/jobs/{job}", timeout=DEADLINE).json()["error"]
    wait_for(lambda: settled(state), "the job's slot to be given back")
    monkeypatch.undo()
    again = httpx.post(f"{url}/v1/jobs", files={"file": ("take.wav", clip, "audio/wav")}, data={"voice": "bob"}, timeout=DEADLINE)
    job2 = again.json()["id"]
    wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job2}", timeout=DEADLINE).json()["state"] == "done", "the next job to finish")


def test_a_job_whose_upload_cannot_be_moved_into_the_spool_leaves_no_queued_job(served_app, monkeypatch) -> None:
    """An OSError moving the upload into the spool left the job "queued" for ever (and counted)."""
    httpx = pytest.importorskip("httpx")
    from helpers import tone
    from serve_helpers import wav_bytes

    url, state = served_app
    before = state.jobs.counts().get("queued", 0)
    real = Path.replace

    def full_disk(self: Path, target: Any) -> Any:
        if str(target).startswith(str(state.jobs.root)):
            raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", full_disk)
    r = httpx.post(f"{url}/v1/jobs", files={"file": ("take.wav", wav_bytes(tone(0.5, 16000), 16000), "audio/wav")},
                   data={"voice": "bob"}, timeout=DEADLINE)
    monkeypatch.undo()
    assert r.status_code >= 500, r.text
    assert state.jobs.counts().get("queued", 0) == before
    wait_for(lambda: settled(state), "the request's slot to be given back")

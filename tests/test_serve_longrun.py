"""The server over a long life: what requests, voices and failures leave behind.

Each test checks that something a request or a voice used is let go when it should be:
a failed voice load's partly built model, the decoded audio of requests whose clients
left, the F0 backends named by requests, the voices of a closed server, an earlier
version of a base model file, and (on a real uvicorn server on 127.0.0.1) the spool
files, open files, threads, queue entries and metric series after rounds of mixed
requests. Objects are followed with weak references; nothing is timed, and every
load is bounded in requests.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401
from serve_helpers import run_in_process, voice_folder, wav_bytes

from rvcfast import cache
from rvcfast.errors import ModelLoadError
from rvcfast.serve.scheduler import Scheduler
from rvcfast.serve.voices import Voice, VoiceRegistry

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

DEADLINE = 120.0  # seconds any wait may take on a loaded machine before the test gives up


def wait_for(condition: Any, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"gave up waiting: {what}"
        time.sleep(0.02)


class Held:
    """Something big a load or a request built (weak-referenceable)."""


# ---------------------------------------------------------------------- voices


def test_a_failed_voice_load_keeps_nothing_it_built(tmp_path) -> None:
    """The error of a voice that failed to load is kept (not loaded again per request), but not
    its traceback: those frames held the model (and index) the load had built before failing."""
    built: list[weakref.ref[Held]] = []
    calls = []

    def load(voice: Voice) -> Any:
        calls.append(voice.id)
        model = Held()  # e.g. the voice model, loaded before its index was found not to fit
        built.append(weakref.ref(model))
        raise ModelLoadError(voice.model, "index dimension 256 does not match the voice model's feature dimension 768")

    model_file = tmp_path / "alice.pth"
    model_file.write_bytes(b"x")
    reg = VoiceRegistry([Voice("alice", model_file)], load, max_loaded=2)
    messages = []
    for _ in range(3):
        with pytest.raises(ModelLoadError) as info:
            reg.engine("alice")
        messages.append(str(info.value))
        del info
    gc.collect()
    assert calls == ["alice"]  # the same files are not loaded again
    assert len(set(messages)) == 1 and "does not match" in messages[0]
    assert built[0]() is None, "the kept load error still holds what the failed load built"


def test_a_closed_server_lets_go_of_its_voices(tiny_models, tmp_path) -> None:
    """close() drops the loaded voices and F0 backends, even while the app object lives on
    (FastAPI keeps a closed app's route functions, and so its state, in a cache)."""
    from rvcfast.serve import create_app

    folder = voice_folder(tiny_models, tmp_path / "voices")
    app = create_app(voices=[folder / "alice.pth", folder / "bob.pth"], encoder=tiny_models.encoder,
                     f0_weights=tiny_models.rmvpe, device="cpu", threads=1, jobs_dir=tmp_path / "spool")
    state = app.state.rvcfast

    async def body(client: Any) -> None:
        r = await client.post("/v1/convert", params={"voice": "alice", "f0": "pm", "noise": "false"},
                              content=wav_bytes(tone(0.6, 16000), 16000), headers={"content-type": "audio/wav"})
        assert r.status_code == 200, r.text

    state.start()
    try:
        run_in_process(app, body, DEADLINE)
        engines = [weakref.ref(state.registry.loaded_engine(v)) for v in state.registry.loaded_ids()]
        extractors = [weakref.ref(x) for x in state._f0_extractors.values()]
        assert len(engines) == 2 and len(extractors) == 1
    finally:
        state.close()
    gc.collect()
    assert app.state.rvcfast is state  # the app (and its state) still exist
    assert [r() for r in engines] == [None, None], "a closed server still holds its voices"
    assert [r() for r in extractors] == [None]


# ---------------------------------------------------------------------- F0 backends named by requests


def test_spellings_of_one_f0_backend_share_one_extractor_and_the_set_is_bounded(tiny_models, tmp_path) -> None:
    """Requests choose the F0 backend by name; spellings of one backend build it once, and the
    built ones are bounded (a name padded with spaces was a new entry, kept for ever)."""
    from rvcfast.f0.registry import available_f0_extractors
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import MAX_F0_EXTRACTORS, ServerState

    cfg = ServeConfig.build(voices=[tiny_models.voice], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe,
                            device="cpu", threads=1, jobs_dir=tmp_path / "spool")
    state = ServerState(cfg)
    voice = tiny_models.voice.stem
    cheap = [n for n in ("pm", "dio", "harvest") if n in available_f0_extractors()]
    assert len(cheap) == 3, available_f0_extractors()
    # what the form parser hands on: stripped and lower-cased, otherwise as the client wrote it
    spellings = ["hybrid:pm+dio", "hybrid[pm+dio]", "hybrid: pm + dio", "hybrid:pm" + " " * 5000 + "+dio"]
    others = [f"hybrid:{a}+{b}" for a in cheap for b in cheap if a != b]
    others += [f"hybrid:{a}+{b}+{c}" for a in cheap for b in cheap for c in cheap if len({a, b, c}) == 3]

    async def main() -> None:
        default = await state.engine_for(voice)
        assert await state.engine_for(voice, "rmvpe") is default  # the server's own backend
        firsts = [await state.engine_for(voice, name) for name in spellings]
        assert len({id(e.f0_extractor) for e in firsts}) == 1 and len(state._f0_extractors) == 1
        for name in others:
            engine = await state.engine_for(voice, name)
            assert engine.f0_extractor.name.startswith("hybrid")
        assert len(others) > MAX_F0_EXTRACTORS
        assert len(state._f0_extractors) == MAX_F0_EXTRACTORS
        assert all(len(k) < 40 for k in state._f0_extractors)  # keys are canonical names, not client text

    try:
        asyncio.run(main())
    finally:
        state.close()


# ---------------------------------------------------------------------- the model worker's queue


class FakeEngine:
    sample_rate = 40000

    def __init__(self) -> None:
        self.labels: list[str] = []

    def run(self, preps, params, f0=None, cancel=None):
        from rvcfast.result import Result

        self.labels += [p.label for p in preps]
        return [Result(np.zeros(3, np.float32), 40000, {}, p.label) for p in preps]


class Prep:
    def __init__(self, label: str, seconds: float) -> None:
        self.label, self.seconds, self.n_channels = label, seconds, 1
        self.padded = np.zeros(int(seconds * 16000), np.float32)


@pytest.fixture
def busy_worker() -> Iterator[tuple[Scheduler, threading.Event]]:
    """A scheduler whose worker is held inside a step task until the event is set."""
    started, release = threading.Event(), threading.Event()

    def blocker() -> Iterator[int]:
        started.set()
        release.wait(DEADLINE)
        yield 1

    sched = Scheduler(0)
    sched.start()
    sched.submit_steps(blocker(), lambda item: None)
    assert started.wait(DEADLINE)
    try:
        yield sched, release
    finally:
        release.set()
        sched.close(DEADLINE)


def test_given_up_conversions_leave_the_queue_at_once(busy_worker) -> None:
    """A client that leaves frees its admission slot at once, so what its queued conversion holds
    (the decoded input) must go at once too, not when the busy worker reaches it."""
    sched, release = busy_worker
    engine = FakeEngine()
    kept = sched.submit(engine, Prep("kept", 1.0), None)
    refs = []
    for i in range(20):
        prep = Prep(f"gone{i}", 10.0)
        future = sched.submit(engine, prep, None)
        sched.give_up(future)
        refs.append(weakref.ref(prep))
        del prep, future
    gc.collect()
    assert sched.depth == 1 and len(sched._converts) == 1  # only the request still waited for
    assert all(r() is None for r in refs), "given-up requests' audio is still held by the queue"
    release.set()
    assert kept.result(DEADLINE).ok
    assert engine.labels == ["kept"]


def test_a_waiting_stream_that_is_cancelled_is_closed_at_once(busy_worker) -> None:
    """A step task cancelled while it waits (queued, or parked for want of credit) has its
    iterator closed at once: its input is freed without waiting for the busy worker."""
    sched, release = busy_worker
    closed: list[str] = []
    produced: list[str] = []

    def stream(name: str, prep: Held) -> Iterator[str]:
        try:
            for k in range(3):
                produced.append(f"{name}{k}")
                yield f"{name}{k}"
        finally:
            closed.append(name)

    prep = Held()
    held = weakref.ref(prep)
    queued = sched.submit_steps(stream("q", prep), lambda item: None)
    del prep
    sched.cancel(queued)
    gc.collect()
    assert held() is None, "a cancelled stream's input is held until the busy worker reaches it"
    assert produced == [] and sched.depth == 0
    # a parked task: it produced its credit's worth, and nobody takes the pieces
    release.set()
    parked = sched.submit_steps(stream("p", Held()), lambda item: None, credit=1)
    wait_for(lambda: parked.parked, "the task to park")
    sched.cancel(parked)
    assert closed == ["p"] and produced == ["p0"]
    sched.cancel(parked)  # twice: nothing more
    assert closed == ["p"]


# ---------------------------------------------------------------------- the process-wide model cache


def test_an_earlier_version_of_a_base_model_file_is_not_kept(tmp_path) -> None:
    """A base model file replaced on disk loads again (new size/mtime); the cache then drops the
    old version's model instead of holding one model per version for the process's life."""
    weights = tmp_path / "encoder.pt"
    weights.write_bytes(b"v1")
    loads: list[weakref.ref[Held]] = []

    def loader() -> Held:
        model = Held()
        loads.append(weakref.ref(model))
        return model

    first = cache.get_or_load("longrun-test", weights, "cpu", np.float32, loader)
    assert cache.get_or_load("longrun-test", weights, "cpu", np.float32, loader) is first
    user = first  # an engine built earlier keeps using the old model
    del first
    weights.write_bytes(b"version 2")
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = cache.get_or_load("longrun-test", weights, "cpu", np.float32, loader)
    assert second is not user and len(loads) == 2
    assert loads[0]() is user  # still alive while used
    del user
    gc.collect()
    assert loads[0]() is None, "the cache still holds the replaced file's model"
    kept = [k for k in cache.cached_keys() if k[0] == "longrun-test"]
    assert len(kept) == 1
    assert cache.get_or_load("longrun-test", weights, "cpu", np.float32, loader) is second and len(loads) == 2


# ---------------------------------------------------------------------- rounds of mixed requests on a real server


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count open files")
def _assert_only_pools_grew(first: list[str], last: list[str]) -> None:
    """Threads after more rounds: the same, or more workers of the bounded pools, which start
    threads lazily as load demands (on a loaded machine round 1 may not have needed them all:
    ``asyncio_2``, ``rvcfast-load_1``, another ``AnyIO worker thread``). A leak shows as a thread
    of no pool, or as a second thread of a name already there (a new executor per request)."""
    import collections

    grown = collections.Counter(last) - collections.Counter(first)
    for name, extra in grown.items():
        if name == "AnyIO worker thread":  # anyio's pool: one name, at most its 40 tokens
            assert collections.Counter(last)[name] <= 40, last
            continue
        assert re.fullmatch(r"asyncio_\d+|rvcfast-[a-z_]+_\d+", name), f"a thread of no pool appeared: {name} in {last}"
        assert name not in first and extra == 1, f"a second thread named {name}: a new pool per request? {last}"


def test_rounds_of_mixed_requests_leave_nothing_behind(tiny_models, tmp_path) -> None:
    """Good and bad audio, unknown voices, streams, clients that leave mid-upload and mid-conversion,
    jobs (done, failed, deleted) and voice re-uploads: after each round the spool holds only
    job results, the worker's queue and the admission count are empty, and the open files,
    threads and metric series are what they were after the first round."""
    from rvcfast.serve import create_app

    folder = voice_folder(tiny_models, tmp_path / "voices")
    (folder / "zoe.pth").unlink()
    app = create_app(voices=[folder], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads=1,
                     jobs_dir=tmp_path / "spool", models_dir=tmp_path / "uploaded", max_loaded_voices=2)
    state = app.state.rvcfast
    short, long_clip = wav_bytes(tone(0.6, 16000), 16000), wav_bytes(tone(45.0, 16000), 16000)
    model, index = tiny_models.voice.read_bytes(), tiny_models.index.read_bytes()

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)

    def leave_mid_upload(body: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"POST /v1/convert?voice=alice HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])

    def one_round(client: Any) -> None:
        for i in range(6):
            r = client.post("/v1/convert", params={"voice": "alice", "pitch": str(i), "noise": "false"}, content=short,
                            headers={"content-type": "audio/wav"})
            assert r.status_code == 200, r.text
            r = client.post("/v1/convert", files={"file": ("b.wav", b"RIFF not audio" * 40, "audio/wav")}, data={"voice": "bob"})
            assert r.status_code == 422
            assert client.post("/v1/convert", files={"file": ("c.wav", short)}, data={"voice": "nobody"}).status_code == 404
            with client.stream("POST", "/v1/convert", files={"file": ("s.wav", short)},
                               data={"voice": "bob", "stream": "true"}) as r:
                assert r.status_code == 200 and len(r.read()) > 44
            leave_mid_upload(short)
        # a client that leaves while its long conversion runs
        gone = socket.create_connection(("127.0.0.1", port))
        gone.sendall(f"POST /v1/convert?voice=carol HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                     f"Content-Length: {len(long_clip)}\r\n\r\n".encode() + long_clip)
        wait_for(lambda: state.admission.count >= 1, "the long conversion to be admitted")
        gone.close()
        ids = []
        for data in (short, b"RIFF junk" * 30, short):
            r = client.post("/v1/jobs", files={"file": ("j.wav", data)}, data={"voice": "bob", "noise": "false"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        assert client.delete(f"/v1/jobs/{ids[2]}").status_code == 200
        for name in ("up1", "up1", "up2"):
            r = client.post("/v1/voices", data={"name": name, "replace": "true"},
                            files={"model": ("m.pth", model), "index": ("m.index", index)})
            assert r.status_code == 201, r.text
            r = client.post("/v1/convert", params={"voice": name, "noise": "false"}, content=short,
                            headers={"content-type": "audio/wav"})
            assert r.status_code == 200, r.text
        wait_for(lambda: not state.jobs.active() and state.admission.count == 0, "the jobs and requests to end")
        assert state.jobs.get(ids[0]).state == "done" and state.jobs.get(ids[1]).state == "failed"
        assert client.get(f"/v1/jobs/{ids[0]}/audio").status_code == 200
        for job_id in ids[:2]:
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 200

    def snapshot() -> dict[str, Any]:
        gc.collect()
        return {
            # the server's lock on its --jobs-dir stays while it runs; nothing else may
            "spool": sorted(p.name for p in state.spool.rglob("*") if p.is_file() and p.name != ".rvcfast-serve.lock"),
            "queue": (state.scheduler.depth, len(state.scheduler._converts), state.admission.count),
            "files": _open_files(),
            "threads": threading.active_count(),
            "names": sorted(t.name for t in threading.enumerate()),
            "series": sorted(key for key, _ in state.metrics._counters) + sorted(key for key, _ in state.metrics._histograms),
            "loads": len(state._loads),
        }

    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/health", timeout=10).status_code == 200, "the models to load")
        with httpx.Client(base_url=url, timeout=DEADLINE) as client:
            one_round(client)
            first = snapshot()
            for _ in range(2):
                one_round(client)
            last = snapshot()
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        sock.close()
    assert first["spool"] == [] and last["spool"] == []
    assert first["queue"] == last["queue"] == (0, 0, 0) and last["loads"] == 0
    assert last["files"] <= first["files"]
    _assert_only_pools_grew(first["names"], last["names"])
    assert last["series"] == first["series"]  # no metric label grows with requests, voices or files


def test_the_thread_check_tells_lazy_pool_growth_from_a_leak() -> None:
    first = ["MainThread", "asyncio_0", "rvcfast-load_0", "AnyIO worker thread"]
    _assert_only_pools_grew(first, first + ["asyncio_1", "rvcfast-load_1", "AnyIO worker thread"])
    for leaked in (["Thread-7 (run)"], ["rvcfast-load_0"], ["asyncio_0"]):
        with pytest.raises(AssertionError):
            _assert_only_pools_grew(first, first + leaked)

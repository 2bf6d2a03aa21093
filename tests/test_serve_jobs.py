"""The server's robustness: input length limits, clean 500s on a kept-alive connection, concurrent
voice uploads, clients that leave, job files and job space.

The app runs in this process (tiny random models), either through httpx's ASGI transport or
under a real uvicorn server on 127.0.0.1 in a thread, so a test can hold a conversion or a
write at a chosen point (a gate on a threading event) and look at the server's state. Nothing
is timed: every wait is for an event or a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401
from serve_helpers import run_in_process, served, voice_folder, wav_bytes

from rvcfast.engine import Engine
from rvcfast.errors import ParameterError
from rvcfast.serve import ServeConfig, create_app
from rvcfast.serve.jobs import JobStore, JobStoreFull

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
app_module = importlib.import_module("rvcfast.serve.app")
routes = importlib.import_module("rvcfast.serve.routes")

DEADLINE = 120.0  # seconds any wait may take on a loaded machine before the test gives up


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"gave up waiting: {what}"
        time.sleep(0.02)


def flac_bytes(seconds: float, rate: int = 44100, unknown_length: bool = False) -> bytes:
    """A FLAC of silence (a few KB per minute); ``unknown_length`` zeroes STREAMINFO's total samples."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(rate * 10, np.float32)
        for _ in range(int(seconds // 10)):
            f.write(block)
    data = bytearray(buf.getvalue())
    if unknown_length:
        # STREAMINFO follows "fLaC" and its 4-byte block header; total samples: the low 36 bits of bytes 10..17
        field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = field.to_bytes(8, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_jobs")
    return {"root": root, "voices": voice_folder(tiny_models, root / "voices")}


def make_app(tiny_models, folders, tmp_path: Path, **options: Any) -> Any:
    settings: dict[str, Any] = dict(
        voices=[folders["voices"]], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads=1,
        jobs_dir=tmp_path / "spool", max_loaded_voices=3,
    )
    settings.update(options)
    return create_app(**settings)


@contextmanager
def in_process(app: Any) -> Iterator[Any]:
    """An event loop running ``app`` behind an ``httpx.AsyncClient``: yields ``run(coroutine_function)``."""

    def run(body: Callable[[Any], Any]) -> Any:
        return run_in_process(app, body, DEADLINE)

    try:
        yield run
    finally:
        app.state.rvcfast.close()


@pytest.fixture(scope="module")
def live(tiny_models, folders, tmp_path_factory) -> Iterator[tuple[str, Any]]:
    """One uvicorn server for the tests that need real connections: its URL and its state."""
    app = make_app(tiny_models, folders, tmp_path_factory.mktemp("live"), max_input_seconds=100)
    with served(app, timeout_keep_alive=60) as url:
        yield url, app.state.rvcfast


def raw_request(path: str, body: bytes, content_type: str = "audio/wav") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# ---------------------------------------------------------------------- input length (413 before decoding)


def test_length_limits_are_settings_with_defaults() -> None:
    cfg = ServeConfig.build(voices=["v.pth"])
    assert (cfg.max_input_seconds, cfg.max_job_seconds) == (600.0, 3600.0)
    for name in ("max_input_seconds", "max_job_seconds"):
        with pytest.raises(ParameterError, match=name):
            ServeConfig.build(voices=["v.pth"], **{name: 0})


def test_input_seconds_reads_the_header_or_decodes_only_up_to_the_limit(tmp_path) -> None:
    known, unknown, short = tmp_path / "known.flac", tmp_path / "unknown.flac", tmp_path / "short.flac"
    known.write_bytes(flac_bytes(60))
    unknown.write_bytes(flac_bytes(60, unknown_length=True))
    short.write_bytes(flac_bytes(20, unknown_length=True))
    assert sf.info(str(unknown)).frames > 2**62  # libsndfile: "length unknown"
    assert routes.input_seconds(known, 10) == (60.0, True)
    seconds, whole = routes.input_seconds(unknown, 10)
    assert not whole and 10 < seconds < 20  # decoded block by block, stopped just past the limit
    seconds, whole = routes.input_seconds(short, 30)
    assert whole and 0 < seconds <= 20  # all of it read, under the limit (libsndfile may drop a last partial block)
    (tmp_path / "junk.wav").write_bytes(b"RIFF not audio at all" * 10)
    assert routes.input_seconds(tmp_path / "junk.wav", 10) is None  # left to the decoder's own error


def test_long_inputs_are_refused_before_decoding(tiny_models, folders, tmp_path, monkeypatch) -> None:
    """A small FLAC of long silence is a 413 naming the limit and its length; the decoder never runs."""
    decoded: list[str] = []
    real_prepare = Engine.prepare

    def counting_prepare(self, source, *args, **kwargs):
        decoded.append(str(source))
        return real_prepare(self, source, *args, **kwargs)

    monkeypatch.setattr(Engine, "prepare", counting_prepare)
    app = make_app(tiny_models, folders, tmp_path, max_input_seconds=10, max_job_seconds=30)
    bomb = flac_bytes(60)
    assert len(bomb) < 100_000  # 60 s in a few KB: the upload limit alone cannot stop it

    async def body(client):
        files = {"file": ("bomb.flac", bomb, "audio/flac")}
        r = await client.post("/v1/convert", files=files, data={"voice": "alice"})
        assert r.status_code == 413, r.text
        answer = r.json()
        assert "bomb.flac is 60.0 s long" in answer["error"] and "at most 10 s" in answer["error"]
        assert "/v1/jobs" in answer["error"] and (answer["input_seconds"], answer["limit_seconds"]) == (60.0, 10.0)
        r = await client.post("/v1/jobs", files=files, data={"voice": "alice"})
        assert r.status_code == 413 and "at most 30 s" in r.json()["error"], r.text
        r = await client.post("/v1/convert?voice=alice&filename=stream.flac", content=flac_bytes(60, unknown_length=True),
                              headers={"content-type": "audio/flac"})
        assert r.status_code == 413 and "stream.flac is longer than 10 s" in r.json()["error"], r.text
        assert decoded == []
        assert app.state.rvcfast.admission.count == 0
        # within the limits: converted as before
        short = wav_bytes(tone(1.2, 16000), 16000)
        r = await client.post("/v1/convert?voice=bob&noise=false", content=short, headers={"content-type": "audio/wav"})
        assert r.status_code == 200, r.text
        r = await client.post("/v1/jobs", files={"file": ("twenty.flac", flac_bytes(20), "audio/flac")}, data={"voice": "bob"})
        assert r.status_code == 202, r.text
        assert (await client.delete(f"/v1/jobs/{r.json()['id']}")).status_code == 200

    with in_process(app) as run:
        run(body)


def test_serve_help_lists_the_length_limits(capsys) -> None:
    from rvcfast.cli import main

    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-input-seconds" in out and "--max-job-seconds" in out


# ---------------------------------------------------------------------- clean 500s on a kept-alive connection


def test_a_failure_is_a_clean_500_and_the_connection_stays_open(live, monkeypatch, caplog) -> None:
    url, state = live
    port = int(url.rsplit(":", 1)[1])
    clip = wav_bytes(tone(1.0, 16000), 16000)
    real_encode = routes.encode_audio

    def encode(audio, rate, fmt, subtype=None):
        if fmt == "flac":
            raise RuntimeError("the encoder exploded")
        return real_encode(audio, rate, fmt, subtype)

    monkeypatch.setattr(routes, "encode_audio", encode)
    encode_failures = state.metrics.counter_value("rvcfast_conversion_failures_total", stage="encode")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        def post(query: str) -> tuple[int, bytes]:
            conn.request("POST", f"/v1/convert?{query}", body=clip, headers={"Content-Type": "audio/wav"})
            response = conn.getresponse()
            return response.status, response.read()

        status, body = post("voice=bob&noise=false")
        assert status == 200
        sock = conn.sock
        with caplog.at_level(logging.ERROR):
            for query, message in (("voice=zoe", b"zoe.pth"), ("voice=bob&noise=false&format=flac", b"the encoder exploded")):
                status, body = post(query)
                assert status == 500 and message in body, body
                assert str(state.spool).encode() not in body and b"upload-" not in body
                status, _ = post("voice=bob&noise=false")  # the same connection still answers
                assert status == 200 and conn.sock is sock
        assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    finally:
        conn.close()
    assert state.metrics.counter_value("rvcfast_conversion_failures_total", stage="encode") == encode_failures + 1


# ---------------------------------------------------------------------- concurrent voice uploads


def test_a_refused_concurrent_upload_leaves_the_accepted_voice_alone(tiny_models, folders, tmp_path, monkeypatch) -> None:
    """Two uploads of one new name: the second is checked only after the first is registered (422),
    and the file on disk is the accepted one's."""
    checking, release = threading.Event(), threading.Event()
    real_check, real_read = app_module._check_voice_files, app_module.read_request
    calls: list[str] = []

    def gated_check(model, index):
        calls.append(model.name)
        if len(calls) == 1:
            checking.set()
            release.wait(DEADLINE)
        return real_check(model, index)

    uploads = tmp_path / "uploads"
    app = make_app(tiny_models, folders, tmp_path, models_dir=uploads)
    monkeypatch.setattr(app_module, "_check_voice_files", gated_check)

    async def body(client):
        second_read = asyncio.Event()  # the second upload's body is read: it is past its route's first await

        async def read(request, folder, **kwargs):
            intake = await real_read(request, folder, **kwargs)
            if intake.name == "second.pth":
                second_read.set()
            return intake

        monkeypatch.setattr(app_module, "read_request", read)

        def upload(name: str, model: Path) -> Any:
            return client.post("/v1/voices", data={"name": "newvoice"}, files={"model": (name, model.read_bytes())})

        first = asyncio.ensure_future(upload("first.pth", tiny_models.voice))
        try:
            assert await asyncio.to_thread(checking.wait, DEADLINE), "the first upload was never checked"
            second = asyncio.ensure_future(upload("second.pth", tiny_models.voice_nof0))
            await asyncio.wait_for(second_read.wait(), DEADLINE)
        finally:
            release.set()
        r1, r2 = await first, await second
        assert r1.status_code == 201 and r1.json()["f0"] is True, r1.text
        assert r2.status_code == 422 and "exists already" in r2.json()["error"], r2.text
        listed = {v["id"]: v for v in (await client.get("/v1/voices")).json()["voices"]}
        assert listed["newvoice"]["f0"] is True

    with in_process(app) as run:
        run(body)
    assert (uploads / "newvoice.pth").read_bytes() == tiny_models.voice.read_bytes()
    assert len(calls) == 1  # the refused upload never got as far as the model check


# ---------------------------------------------------------------------- a client that leaves


def test_a_client_that_leaves_gives_its_work_and_slot_back(live, monkeypatch) -> None:
    """A whole-file conversion whose client disconnects: queued work is dropped, running work stops
    before its next segment, the slot is free at once and the request is counted as 499."""
    url, state = live
    port = int(url.rsplit(":", 1)[1])
    started, release, closed = threading.Event(), threading.Event(), threading.Event()
    pieces: list[int] = []
    run_seconds: list[float] = []
    real_stream, real_run = Engine.stream, Engine.run

    def gated_stream(self, *args, **kwargs):
        try:
            for piece in real_stream(self, *args, **kwargs):
                pieces.append(len(piece))
                started.set()
                release.wait(DEADLINE)
                yield piece
        finally:
            closed.set()

    def counting_run(self, preps, *args, **kwargs):
        run_seconds.extend(round(p.seconds, 2) for p in preps)
        return real_run(self, preps, *args, **kwargs)

    monkeypatch.setattr(Engine, "stream", gated_stream)
    monkeypatch.setattr(Engine, "run", counting_run)
    gone_before = state.metrics.counter_value("rvcfast_requests_total", route="/v1/convert", status="499")
    long_clip = wav_bytes(tone(45.0, 16000), 16000)  # two segments: a step task on the model worker
    short_clip = wav_bytes(tone(1.3, 16000), 16000)  # one segment: a one-shot conversion in the queue
    holder = socket.create_connection(("127.0.0.1", port))
    queued = socket.create_connection(("127.0.0.1", port))
    try:
        holder.sendall(raw_request("/v1/convert?voice=alice", long_clip))
        assert started.wait(DEADLINE), "the long conversion never started"
        queued.sendall(raw_request("/v1/convert?voice=alice", short_clip))
        wait_for(lambda: state.scheduler.depth >= 1, "the short request to be queued behind the long one")
        holder.close()
        queued.close()
        # the model worker is still held inside the first segment: only cancelling frees the slots
        wait_for(lambda: state.admission.count == 0, "both slots to be given back")
        wait_for(
            lambda: state.metrics.counter_value("rvcfast_requests_total", route="/v1/convert", status="499") == gone_before + 2,
            "both requests to be counted as 499",
        )
    finally:
        release.set()
        holder.close()
        queued.close()
    assert closed.wait(DEADLINE), "the long conversion was never stopped"
    # a request queued after both: once it is answered, the worker has passed the dropped one
    after = httpx.post(f"{url}/v1/convert?voice=bob&noise=false", content=wav_bytes(tone(1.1, 16000), 16000),
                       headers={"content-type": "audio/wav"}, timeout=DEADLINE)
    assert after.status_code == 200
    assert len(pieces) == 1  # the second segment was never computed
    assert 1.3 not in run_seconds and 1.1 in run_seconds  # the dropped request never reached the models
    assert state.metrics.counter_value("rvcfast_requests_total", route="/v1/convert", status="200") >= 1


def test_a_client_that_leaves_stops_its_running_one_shot_conversion(live, monkeypatch) -> None:
    """A one-shot conversion already on the models stops at the engine's next check once its
    client has gone (Engine.run(cancel=...)): it is never assembled or encoded."""
    url, state = live
    port = int(url.rsplit(":", 1)[1])
    started, release = threading.Event(), threading.Event()
    assembled: list[str] = []
    real_segments, real_assemble = Engine.synthesize_segments, Engine._assemble

    def gated_segments(self, segs, *args, **kwargs):
        started.set()
        release.wait(DEADLINE)
        return real_segments(self, segs, *args, **kwargs)

    def recording_assemble(self, item, *args, **kwargs):
        assembled.append(str(item.prep.label))
        return real_assemble(self, item, *args, **kwargs)

    monkeypatch.setattr(Engine, "synthesize_segments", gated_segments)
    monkeypatch.setattr(Engine, "_assemble", recording_assemble)
    client = socket.create_connection(("127.0.0.1", port))
    try:
        client.sendall(raw_request("/v1/convert?voice=alice", wav_bytes(tone(1.3, 16000), 16000)))
        assert started.wait(DEADLINE), "the conversion never reached the models"
        client.close()
        wait_for(lambda: state.admission.count == 0, "the slot to be given back")
    finally:
        release.set()
        client.close()
    monkeypatch.setattr(Engine, "synthesize_segments", real_segments)
    after = httpx.post(f"{url}/v1/convert?voice=bob&noise=false", content=wav_bytes(tone(1.1, 16000), 16000),
                       headers={"content-type": "audio/wav"}, timeout=DEADLINE)
    assert after.status_code == 200
    assert len(assembled) == 1  # only the later request: the abandoned one stopped before assembly


# ---------------------------------------------------------------------- job files


def test_a_job_leaves_only_its_result(tiny_models, folders, tmp_path) -> None:
    """Done or failed, a job's spooled input (``<id>.in.<ext>``) and raw file are deleted when it ends."""
    app = make_app(tiny_models, folders, tmp_path)
    state = app.state.rvcfast

    async def body(client):
        ids = []
        for name, data in (("take.wav", wav_bytes(tone(1.5, 16000), 16000)), ("broken.wav", b"RIFF not audio" * 50)):
            r = await client.post("/v1/jobs", files={"file": (name, data, "audio/wav")}, data={"voice": "bob"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        for job_id in ids:
            await asyncio.wait([state.jobs.get(job_id).handle], timeout=DEADLINE)
        states = [(await client.get(f"/v1/jobs/{i}")).json()["state"] for i in ids]
        assert states == ["done", "failed"]
        return ids

    with in_process(app) as run:
        done_id, _ = run(body)
        assert sorted(p.name for p in state.jobs.root.iterdir()) == [f"{done_id}.wav"]
        assert state.admission.count == 0


def test_deleting_a_job_while_its_result_is_written_leaves_no_file(tiny_models, folders, tmp_path, monkeypatch) -> None:
    import rvcfast.writing

    entered, release, written = threading.Event(), threading.Event(), threading.Event()
    real_write = rvcfast.writing.write_audio_atomic

    def gated_write(*args, **kwargs):
        entered.set()
        release.wait(DEADLINE)
        try:
            return real_write(*args, **kwargs)
        finally:
            written.set()

    monkeypatch.setattr(rvcfast.writing, "write_audio_atomic", gated_write)
    app = make_app(tiny_models, folders, tmp_path)
    state = app.state.rvcfast

    async def body(client):
        r = await client.post("/v1/jobs", files={"file": ("a.wav", wav_bytes(tone(1.5, 16000), 16000), "audio/wav")},
                              data={"voice": "bob"})
        job = state.jobs.get(r.json()["id"])
        try:
            assert await asyncio.to_thread(entered.wait, DEADLINE), "the job never reached its write"
            r = await client.delete(f"/v1/jobs/{job.id}")
            assert r.status_code == 200 and r.json() == {"id": job.id, "state": "deleted"}
            assert (await client.get(f"/v1/jobs/{job.id}")).status_code == 404  # no "cancelled" job to see
        finally:
            release.set()
        await asyncio.wait([job.handle], timeout=DEADLINE)
        assert job.handle.done() and written.is_set()  # the task ended only after the write did
        assert list(state.jobs.root.glob(f"{job.id}*")) == [] and state.admission.count == 0

    with in_process(app) as run:
        run(body)


# ---------------------------------------------------------------------- job space


def test_unfetched_young_results_are_kept_and_new_jobs_refused(tmp_path) -> None:
    store = JobStore(tmp_path, ttl=3600, max_bytes=100, min_keep=600)
    assert set(store.counts()) == {"queued", "running", "done", "failed"}
    now = time.time()
    big = store.create("v", "big.wav", "wav", None)
    store.path(big, ".wav").write_bytes(b"x" * 150)
    big.state, big.bytes, big.finished = "done", 150, now
    assert store.sweep(now=now + 599) == []  # alone above the bound, but not fetched and young: kept
    with pytest.raises(JobStoreFull, match="fetch or delete"):
        store.create("v", "next.wav", "wav", None)
    big.fetched = True
    nxt = store.create("v", "next.wav", "wav", None)  # the fetched result made room
    assert not store.holds(big) and not store.path(big, ".wav").exists() and store.holds(nxt)
    old = store.create("v", "old.wav", "wav", None)
    old.state, old.bytes, old.finished = "done", 150, now - 601
    assert store.sweep(now=now) == [old.id]  # unfetched, but older than min_keep
    failed = store.create("v", "f.wav", "wav", None)
    failed.state, failed.finished = "failed", now
    assert store.sweep(now=now + 3601) == [failed.id] and store.holds(nxt)  # expiry by ttl is unchanged


def test_a_result_above_the_space_bound_stays_until_fetched(tiny_models, folders, tmp_path) -> None:
    app = make_app(tiny_models, folders, tmp_path, jobs_max_mb=0.02)  # 20 KB: less than one result
    state = app.state.rvcfast
    clip = wav_bytes(tone(1.5, 16000), 16000)

    async def body(client):
        files = {"file": ("a.wav", clip, "audio/wav")}
        r = await client.post("/v1/jobs", files=files, data={"voice": "bob"})
        job = state.jobs.get(r.json()["id"])
        await asyncio.wait([job.handle], timeout=DEADLINE)
        state.jobs.sweep()
        status = (await client.get(f"/v1/jobs/{job.id}")).json()
        assert status["state"] == "done" and status["bytes"] > 20 * 1024
        refused = await client.post("/v1/jobs", files=files, data={"voice": "bob"})
        assert refused.status_code == 503 and "spool is full" in refused.json()["error"] and refused.headers["retry-after"]
        audio = await client.get(f"/v1/jobs/{job.id}/audio")
        assert audio.status_code == 200 and len(audio.content) == status["bytes"]
        accepted = await client.post("/v1/jobs", files=files, data={"voice": "bob"})
        assert accepted.status_code == 202, accepted.text
        assert (await client.get(f"/v1/jobs/{job.id}")).status_code == 404  # fetched, then removed for space
        await asyncio.wait([state.jobs.get(accepted.json()["id"]).handle], timeout=DEADLINE)
        assert state.admission.count == 0

    with in_process(app) as run:
        run(body)


# ---------------------------------------------------------------------- a long input's F0 in turns


def test_long_inputs_give_their_f0_turns_to_other_requests(tiny_models, folders, tmp_path: Path, monkeypatch) -> None:
    # whole-file, streamed and job conversions of a long input ask the engine for its F0 one
    # network pass per turn (Engine.stream(pauses=True)); the pauses themselves are tested in
    # test_engine_stream.py and the scheduler's handling of them in test_serve_units.py
    seen: list[bool] = []
    real = Engine.stream

    def spy(self, *args, **kwargs):
        seen.append(bool(kwargs.get("pauses")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "stream", spy)
    long = wav_bytes(tone(50.0, 16000, 170.0), 16000)  # two segments: stepped, not one-shot
    app = make_app(tiny_models, folders, tmp_path)

    async def body(client) -> None:
        files = {"file": ("long.wav", long, "audio/wav")}
        assert (await client.post("/v1/convert", files=files, data={"voice": "alice"})).status_code == 200
        r = await client.post("/v1/convert", files=files, data={"voice": "alice", "stream": "true"})
        assert r.status_code == 200 and len(r.content) > 0
        job = (await client.post("/v1/jobs", files=files, data={"voice": "alice"})).json()
        end = time.monotonic() + DEADLINE
        while (state := (await client.get(f"/v1/jobs/{job['id']}")).json()["state"]) not in ("done", "failed"):
            assert time.monotonic() < end, "the job never finished"
            await asyncio.sleep(0.05)
        assert state == "done"

    with in_process(app) as run:
        run(body)
    assert seen == [True, True, True]


def test_a_header_that_understates_the_length_is_caught_while_decoding(tiny_models, folders, tmp_path: Path, monkeypatch) -> None:
    # a container whose stated duration is shorter than its stream passes the header check;
    # decoding itself stops at the limit (413 for /v1/convert, a failed job for /v1/jobs)
    monkeypatch.setattr(routes, "input_seconds", lambda path, limit: (1.0, True))  # the header says 1 s
    app = make_app(tiny_models, folders, tmp_path, max_input_seconds=10, max_job_seconds=10)
    long = wav_bytes(tone(30.0, 16000, 170.0), 16000)

    async def body(client) -> None:
        files = {"file": ("long.wav", long, "audio/wav")}
        r = await client.post("/v1/convert", files=files, data={"voice": "alice"})
        assert r.status_code == 413 and "long.wav is longer than 10 s" in r.json()["error"]
        job = (await client.post("/v1/jobs", files=files, data={"voice": "alice"})).json()
        end = time.monotonic() + DEADLINE
        while (answer := (await client.get(f"/v1/jobs/{job['id']}")).json())["state"] not in ("done", "failed"):
            assert time.monotonic() < end, "the job never ended"
            await asyncio.sleep(0.05)
        assert answer["state"] == "failed" and "longer than the 10 s allowed" in answer["error"]
        assert "long.wav" in answer["error"] and str(tmp_path) not in answer["error"]

    with in_process(app) as run:
        run(body)


def test_an_upload_cannot_replace_one_of_the_operators_voices(tiny_models, folders, tmp_path) -> None:
    """``replace=true`` on a voice from the operator's folders would save ``alice.pth`` in
    ``--models-dir`` beside the operator's ``alice``: the next start refuses two voices of one name.
    Uploaded voices stay replaceable."""
    from rvcfast.serve.voices import discover_voices

    uploads = tmp_path / "uploads"
    app = make_app(tiny_models, folders, tmp_path, models_dir=uploads)

    async def body(client):
        def upload(name: str, replace: str = "true") -> Any:
            data = {"name": name, "replace": replace}
            return client.post("/v1/voices", data=data, files={"model": ("m.pth", tiny_models.voice.read_bytes())})

        r = await upload("alice")
        assert r.status_code == 422 and "server's own voices" in r.json()["error"], r.text
        # without replace, the same answer: "send replace=true" would only lead to this refusal
        r = await upload("alice", replace="false")
        assert r.status_code == 422 and "server's own voices" in r.json()["error"] and "replace=true" not in r.json()["error"], r.text
        assert not (uploads / "alice.pth").exists()
        assert (await upload("mine")).status_code == 201
        assert (await upload("mine")).status_code == 201  # an uploaded voice is replaced

    with in_process(app) as run:
        run(body)
    assert sorted(v.id for v in discover_voices([folders["voices"], uploads])) == ["alice", "bob", "carol", "mine", "zoe"]


class _LevelTracker:
    """A stand-in F0 backend: every frame voiced, a semitone higher on a loud channel (peak above
    0.3) than on a quiet one, so the channels' proposed-pitch offsets can round apart."""

    name = "level"
    cpu_bound = False

    def __init__(self) -> None:
        self.tracks: list[np.ndarray] = []

    def extract(self, audio16k: Any) -> np.ndarray:
        audio = np.asarray(audio16k)
        track = np.full(audio.shape[-1] // 160 + 1, 200.0 * (2 ** (1 / 12) if np.abs(audio).max() > 0.3 else 1.0))
        self.tracks.append(track)
        return track

    def extract_batch(self, batch: Any) -> list[np.ndarray]:
        return [self.extract(a) for a in batch]


def test_a_job_gives_every_channel_one_proposed_key(tiny_models, folders, tmp_path, monkeypatch) -> None:
    """A job converts channels="each" channel after channel, each streamed on its own: with
    proposed_pitch each worked out its own key, so a job's stereo answer could have its channels
    a semitone apart, unlike the same request to /v1/convert."""
    from rvcfast.f0.post import proposed_pitch_offset

    tracker = _LevelTracker()
    monkeypatch.setattr(Engine, "f0_extractor_for", lambda self, params: tracker)
    target = float(200.0 * 2 ** (1 / 24) * 2 ** (0.5 / 12))  # between the two channels' medians, past a rounding point
    app = make_app(tiny_models, folders, tmp_path)
    state = app.state.rvcfast
    fields = {"voice": "carol", "channels": "each", "proposed_pitch": str(target), "noise": "false", "subtype": "FLOAT"}
    data = wav_bytes(tone(1.0, 16000, channels=2) * [1.0, 0.5], 16000)

    async def body(client):
        r = await client.post("/v1/jobs", files={"file": ("take.wav", data, "audio/wav")}, data=fields)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        await asyncio.wait([state.jobs.get(job_id).handle], timeout=DEADLINE)
        answer = await client.get(f"/v1/jobs/{job_id}/audio")
        assert answer.status_code == 200, answer.text
        whole = await client.post("/v1/convert", files={"file": ("take.wav", data, "audio/wav")}, data=fields)
        assert whole.status_code == 200, whole.text
        return answer.content, whole.content

    with in_process(app) as run:
        job, whole = run(body)
    own = {proposed_pitch_offset(t, target) for t in tracker.tracks}
    assert own == {0, 1}, own  # the construction: each channel on its own would take another key
    job_audio, whole_audio = (sf.read(io.BytesIO(b), dtype="float32")[0] for b in (job, whole))
    assert job_audio.shape == whole_audio.shape and job_audio.ndim == 2
    # the same samples but for float rounding (the answer batches the channels' segments, the job does not)
    assert np.abs(job_audio - whole_audio).max() <= 1e-4 * np.abs(whole_audio).max(), np.abs(job_audio - whole_audio).max(axis=0)

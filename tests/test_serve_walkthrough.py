"""``rvcfast serve`` as docs/serving.md describes it to an operator: what a server started on a
kept ``--jobs-dir`` deletes, a port already in use, the ``/v1/voices`` entry of a voice that
cannot be loaded, ``POST /v1/voices``' answer, a finished job's status fields, and the timings
header of a streamed answer. In process, with the tiny random models.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401
from serve_helpers import run_in_process, voice_folder, wav_bytes

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

DEADLINE = 120.0
FULL_ENTRY = {"id", "sample_rate", "version", "f0", "speakers", "index", "loaded"}


def _speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _app(tiny_models: Any, voices: Path, spool: Path, **options: Any) -> Any:
    from rvcfast.serve import create_app

    return create_app(
        voices=[voices], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads=1,
        jobs_dir=spool, max_loaded_voices=4, **options,
    )


def _run(app: Any, body: Callable[[Any], Any]) -> Any:
    """``body(client)`` against ``app`` once it is healthy; the app is closed afterwards."""

    try:
        return run_in_process(app, body, DEADLINE)
    finally:
        app.state.rvcfast.close()


def test_a_kept_jobs_dir_loses_the_earlier_servers_job_files_at_start(tiny_models, tmp_path) -> None:
    """serving.md, Jobs, Restarts: a server started on a kept --jobs-dir deletes the job files
    (jobs/ID.*) and uploads an earlier server left there; other files stay."""
    voices = voice_folder(tiny_models, tmp_path / "voices")
    spool = tmp_path / "spool"
    (spool / "jobs").mkdir(parents=True)
    (spool / "uploads").mkdir()
    job_id = "0123456789abcdef0123456789abcdef"
    left = [spool / "jobs" / f"{job_id}.wav", spool / "jobs" / f"{job_id}.in.wav", spool / "jobs" / f"{job_id}.raw",
            spool / "uploads" / "upload-1a2b3c"]
    kept = [spool / "jobs" / "notes.txt", spool / "jobs" / "take.wav", spool / "readme.txt"]
    for f in left + kept:
        f.write_bytes(b"x")
    app = _app(tiny_models, voices, spool)  # no model is loaded before the first request
    try:
        assert [f.name for f in left if f.exists()] == []
        assert [f.name for f in kept if not f.exists()] == []
    finally:
        app.state.rvcfast.close()


def test_a_port_in_use_stops_the_server_at_start_with_status_2(tiny_models, tmp_path, capsys) -> None:
    """serving.md: a port already in use stops it at start with exit status 2, saying so."""
    from rvcfast.cli import main

    voices = voice_folder(tiny_models, tmp_path / "voices")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = main(["serve", str(voices), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                     "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in err


def test_voices_list_entry_of_a_broken_voice_and_the_answer_to_an_upload(tiny_models, tmp_path) -> None:
    """serving.md, Endpoints: a voice that could not be loaded has "error" (its file, never its
    folder) instead of sample_rate, version, f0 and speakers; POST /v1/voices answers 201 with
    the new voice's /v1/voices entry."""
    voices = voice_folder(tiny_models, tmp_path / "voices")  # zoe.pth is not a model
    app = _app(tiny_models, voices, tmp_path / "spool", models_dir=tmp_path / "uploaded")

    async def body(client: Any) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        listed = {v["id"]: v for v in (await client.get("/v1/voices")).json()["voices"]}
        with open(tiny_models.voice_nof0, "rb") as f:
            up = await client.post("/v1/voices", data={"name": "dave"}, files={"model": ("dave.pth", f.read())})
        again = {v["id"]: v for v in (await client.get("/v1/voices")).json()["voices"]}
        return listed, up, again

    listed, up, again = _run(app, body)
    zoe = listed["zoe"]
    assert set(zoe) == {"id", "error", "index", "loaded"}
    assert zoe["loaded"] is False
    assert "zoe.pth" in zoe["error"] and str(tmp_path) not in zoe["error"]
    assert set(listed["alice"]) == FULL_ENTRY
    assert up.status_code == 201, up.text
    assert set(up.json()) == FULL_ENTRY
    assert up.json()["id"] == "dave" and up.json()["f0"] is False
    assert up.json() == again["dave"]


def test_a_done_jobs_status_fields_and_a_streams_timings(tiny_models, tmp_path) -> None:
    """serving.md: a done job adds sample_rate, bytes, audio_url and timings (segments: the
    input's count); a streamed answer's X-Rvcfast-Timings holds decode, first_piece and, for an
    input of one segment, its stages."""
    voices = voice_folder(tiny_models, tmp_path / "voices")
    app = _app(tiny_models, voices, tmp_path / "spool")
    audio = wav_bytes(_speech_like(1.0), 16000)

    async def body(client: Any) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
        posted = await client.post("/v1/jobs", data={"voice": "alice"}, files={"file": ("take.wav", audio)})
        assert posted.status_code == 202, posted.text
        created = posted.json()
        end = time.monotonic() + DEADLINE
        while (status := (await client.get(created["status_url"])).json())["state"] in ("queued", "running"):
            assert time.monotonic() < end, "the job did not finish"
            await asyncio.sleep(0.05)
        fetched = await client.get(status["audio_url"])
        streamed = await client.post("/v1/convert", data={"voice": "alice", "stream": "true"},
                                     files={"file": ("take.wav", audio)})
        return created, status, fetched, streamed

    created, status, fetched, streamed = _run(app, body)
    assert created["status_url"] == f"/v1/jobs/{created['id']}"
    assert status["state"] == "done", status
    assert status["segments"] == 1 and status["progress"] == 1.0 and status["input_seconds"] == pytest.approx(1.0)
    assert {"sample_rate", "bytes", "audio_url", "timings"} <= set(status)
    assert status["audio_url"] == f"/v1/jobs/{created['id']}/audio"
    assert fetched.status_code == 200 and len(fetched.content) == status["bytes"]
    assert status["sample_rate"] == 40000
    assert streamed.status_code == 200, streamed.text
    timings = json.loads(streamed.headers["X-Rvcfast-Timings"])
    # an input of one segment: every stage is timed by its first (and only) piece (before, the
    # stages were added only once the stream's generator had ended, which raced with the header)
    assert {"decode", "first_piece", "f0", "features", "synth", "post"} <= set(timings)
    assert timings["first_piece"] > 0


# ------------------------------------------------------------------ fixes from the operator's walkthrough


def test_a_second_server_on_a_used_port_leaves_the_first_ones_jobs_dir_alone(tiny_models, tmp_path, capsys) -> None:
    """Before, the second server created its app (deleting the first one's job files in the shared
    --jobs-dir) and only then found the port taken; the port is now taken first. The message
    is the reason and what to do, without the usage lines."""
    from rvcfast.cli import main

    voices = voice_folder(tiny_models, tmp_path / "voices")
    spool = tmp_path / "spool"
    (spool / "jobs").mkdir(parents=True)
    result = spool / "jobs" / "0123456789abcdef0123456789abcdef.wav"
    result.write_bytes(b"the first server's finished job")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = main(["serve", str(voices), "--port", str(port), "--jobs-dir", str(spool), "--device", "cpu",
                     "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe)])
    err = capsys.readouterr().err
    assert code == 2 and result.exists()
    assert err.strip().splitlines() == [
        f"rvcfast serve: error: cannot listen on 127.0.0.1:{port}: Address already in use; another server is "
        "listening there: stop it or give --port (0: any free port)"
    ]


def test_a_jobs_dir_is_one_servers_at_a_time(tiny_models, tmp_path) -> None:
    """Two servers on one kept --jobs-dir (on different ports) would delete each other's job files."""
    from rvcfast.errors import ParameterError

    voices = voice_folder(tiny_models, tmp_path / "voices")
    spool = tmp_path / "spool"
    first = _app(tiny_models, voices, spool)
    try:
        result = spool / "jobs" / "0123456789abcdef0123456789abcdef.wav"
        result.write_bytes(b"the first server's finished job")
        with pytest.raises(ParameterError, match=r"--jobs-dir .*spool is in use by another rvcfast serve"):
            _app(tiny_models, voices, spool)
        assert result.exists()
    finally:
        first.state.rvcfast.close()
    _app(tiny_models, voices, spool).state.rvcfast.close()  # free again once the first one is closed


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_a_jobs_dir_that_cannot_be_a_folder_is_a_parameter_error(tiny_models, tmp_path, kind) -> None:
    # before: a FileExistsError / FileNotFoundError traceback
    from rvcfast.errors import ParameterError

    voices = voice_folder(tiny_models, tmp_path / "voices")
    (tmp_path / "afile").write_text("x")
    spool = tmp_path / "afile" if kind == "file" else tmp_path / "afile" / "spool"
    with pytest.raises(ParameterError, match=r"^--jobs-dir .*afile"):
        _app(tiny_models, voices, spool)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # before: accepted; then every voice with pitch answered 422 "parameter": "f0", blaming the client
        (["--f0", "nope"], "rvcfast serve: error: --f0: unknown F0 backend 'nope'"),
        (["--f0-option", "foo=1"], "rvcfast serve: error: --f0-option: F0 extractor 'rmvpe' does not accept option(s) foo"),
        # before: "max_queue must be at least 1" (the Python field, not the option)
        (["--max-queue", "0"], "rvcfast serve: error: --max-queue: max_queue must be"),
        (["--jobs-ttl", "-1"], "rvcfast serve: error: --jobs-ttl: jobs_ttl must be"),
        (["--body-timeout", "0"], "rvcfast serve: error: --body-timeout: body_timeout_seconds must be"),
    ],
)
def test_bad_serve_options_are_usage_errors_naming_the_option(tiny_models, tmp_path, capsys, flags, message) -> None:
    from rvcfast.cli import main

    voices = voice_folder(tiny_models, tmp_path / "voices")
    code = main(["serve", str(voices), "--port", "0", "--device", "cpu", *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith(message), lines


def test_a_jobs_result_gone_from_disk_is_410_not_500(tiny_models, tmp_path) -> None:
    # before: 500 "internal error: RuntimeError: File at path .../jobs/<id>.wav does not exist."
    voices = voice_folder(tiny_models, tmp_path / "voices")

    async def body(client: Any) -> None:
        r = await client.post("/v1/jobs", files={"file": ("take.wav", wav_bytes(_speech_like(0.5), 16000))}, data={"voice": "alice"})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        end = time.monotonic() + DEADLINE
        while (status := (await client.get(f"/v1/jobs/{job}")).json())["state"] not in ("done", "failed"):
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        assert status["state"] == "done"
        for f in (tmp_path / "spool" / "jobs").glob(f"{job}.*"):
            f.unlink()
        r = await client.get(f"/v1/jobs/{job}/audio")
        assert r.status_code == 410 and r.json()["error"] == f"job {job}: its result is no longer on disk"
        assert str(tmp_path) not in r.text

    _run(_app(tiny_models, voices, tmp_path / "spool"), body)


def test_a_full_spool_folder_is_507_with_retry_after(tiny_models, tmp_path, monkeypatch) -> None:
    # before: 500 "internal error: OSError: [Errno 28] No space left on device"
    import errno
    import shutil

    from rvcfast.serve import intake

    voices = voice_folder(tiny_models, tmp_path / "voices")

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def body(client: Any) -> None:
        monkeypatch.setattr(intake.shutil, "copyfileobj", full)
        r = await client.post("/v1/convert", files={"file": ("take.wav", wav_bytes(_speech_like(0.5), 16000))}, data={"voice": "alice"})
        monkeypatch.setattr(intake.shutil, "copyfileobj", shutil.copyfileobj)
        assert r.status_code == 507 and r.headers["retry-after"] == "60"
        assert r.json()["error"] == "the server's spool folder (--jobs-dir) is full: try again later"
        assert list((tmp_path / "spool" / "uploads").iterdir()) == []  # nothing left behind

    _run(_app(tiny_models, voices, tmp_path / "spool"), body)


def test_a_request_cut_off_at_shutdown_gets_a_json_503() -> None:
    """uvicorn cancels the requests still running when --shutdown-timeout runs out: one without an
    answer yet got uvicorn's plain-text 500; a stream already answering just ends."""
    from rvcfast.serve.metrics import Metrics
    from rvcfast.serve.middleware import RequestMetrics

    async def cut_off(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise asyncio.CancelledError

    async def call(app: Any) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        await RequestMetrics(app, Metrics())({"type": "http", "path": "/v1/convert", "method": "POST"}, None, send)
        return sent

    sent = asyncio.run(call(cut_off))
    assert sent[0]["status"] == 503 and dict(sent[0]["headers"])[b"retry-after"] == b"10"
    assert json.loads(sent[1]["body"])["error"] == (
        "the server shut down before this request finished (--shutdown-timeout); send it again"
    )
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call(streaming))

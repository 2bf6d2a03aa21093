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
from serve_helpers import voice_folder, wav_bytes

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

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=DEADLINE) as client:
            end = time.monotonic() + DEADLINE
            while (await client.get("/health")).status_code != 200:
                assert time.monotonic() < end, "the app never became healthy"
                await asyncio.sleep(0.05)
            return await body(client)

    try:
        return asyncio.run(main())
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
    assert {"decode", "first_piece", "f0", "features", "synth"} <= set(timings)
    assert timings["first_piece"] > 0

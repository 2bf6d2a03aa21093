"""``rvcfast serve``: odd requests get a clear 4xx (or 499) instead of a 500, and leave nothing behind.

Against a real server process on 127.0.0.1 with the tiny random models:

* an input too short to give one output sample (a few milliseconds) was answered 500
  ("audio is too short to convert"), whole-file and streamed, although it is the client's
  input: now 422, before the model worker is asked;
* ``effects`` nested deeper than Python's recursion limit made the JSON decoder raise
  ``RecursionError``, answered 500 "internal error": now 422 naming ``effects``;
* a client that disconnects while its upload is still being read (raw body or multipart)
  was logged as "Exception in ASGI application" with a traceback and counted as a 500 in
  ``rvcfast_requests_total``: now counted as 499 (the client closed), nothing is logged as
  an error, and the spooled part of the upload is deleted.

In process: ``max_upload_mb`` or ``jobs_max_mb`` of ``inf`` passed the settings check and
then crashed the app's construction with ``OverflowError``: now a usage error naming it.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import tiny_models_fixture, tone  # noqa: F401
from serve_helpers import running_server, voice_folder, wav_bytes

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

RATE = 44100


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-robust")
    return {"root": root, "voices": voice_folder(tiny_models, root / "voices"), "spool": root / "spool"}


@pytest.fixture(scope="module")
def server(tiny_models, folders):
    with running_server(
        [folders["voices"]], tiny_models, folders["root"] / "server.log", "--max-loaded-voices", "2",
        "--jobs-dir", str(folders["spool"]),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def post(client, audio: bytes, name: str = "clip.wav", **fields: Any):
    data = {"voice": "alice", **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/convert", files={"file": (name, audio, "audio/wav")}, data=data)


def requests_counted(client, status: str) -> float:
    """``rvcfast_requests_total`` of ``/v1/convert`` with ``status`` (0 when absent)."""
    text = client.get("/metrics").text
    m = re.search(r'^rvcfast_requests_total\{route="/v1/convert",status="' + status + r'"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def assert_alive(server, client) -> None:
    assert server.proc.poll() is None, f"the server died:\n{server.log.read_text()[-2000:]}"
    assert client.get("/health").status_code == 200


# ---------------------------------------------------------------------- too short to convert


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("ms", "keep_length"), [(5, False), (20, False), (5, True)])
def test_an_input_too_short_to_convert_is_a_client_error(server, client, ms, keep_length, stream) -> None:
    audio = wav_bytes(tone(ms / 1000, RATE, 220.0), RATE)
    r = post(client, audio, name="blip.wav", keep_length=str(keep_length).lower(), stream=str(stream).lower())
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert "too short" in message and "blip.wav" in message, message
    assert "uploads" not in message and "upload-" not in message  # the client's name, never the spool path
    assert_alive(server, client)


def test_the_shortest_convertible_inputs_still_convert(server, client) -> None:
    # 30 ms converts; 12 ms converts with keep_length (the engine's own bounds: 25 ms and 10 ms)
    for ms, keep_length in ((30, False), (12, True)):
        r = post(client, wav_bytes(tone(ms / 1000, RATE, 220.0), RATE), keep_length=str(keep_length).lower())
        assert r.status_code == 200, r.text


def test_a_job_too_short_to_convert_fails_with_the_reason(client) -> None:
    r = client.post(
        "/v1/jobs", files={"file": ("blip.wav", wav_bytes(tone(0.005, RATE), RATE), "audio/wav")}, data={"voice": "alice"}
    )
    assert r.status_code == 202, r.text
    url = r.json()["status_url"]
    deadline = time.monotonic() + 60
    while (status := client.get(url).json())["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status["state"] == "failed"
    assert "too short" in status["error"] and "blip.wav" in status["error"]


def test_noise_reduction_at_a_rate_it_cannot_run_is_refused_before_any_work(client) -> None:
    """``clean`` with a 384 kHz output failed only after the conversion (noisereduce's defaults
    need 5120..256000 Hz); both routes refuse it up front, and a job is not even created."""
    audio = wav_bytes(tone(0.3, RATE, 220.0), RATE)
    r = post(client, audio, clean=0.5, sample_rate=384000)
    assert r.status_code == 422 and "noise reduction works at 5120..256000 Hz" in r.text, r.text
    r = client.post("/v1/jobs", files={"file": ("a.wav", audio, "audio/wav")},
                    data={"voice": "alice", "clean": "0.5", "sample_rate": "384000"})
    assert r.status_code == 422 and "noise reduction" in r.text, r.text


# ---------------------------------------------------------------------- effects nested too deep


def test_effects_nested_too_deep_are_refused_naming_the_field(server, client) -> None:
    deep = '{"reverb": ' + "[" * 5000 + "]" * 5000 + "}"
    r = post(client, wav_bytes(tone(0.5, RATE), RATE), effects=deep)
    assert r.status_code == 422, r.text
    assert r.json()["parameter"] == "effects"
    assert "internal error" not in r.json()["error"]
    assert_alive(server, client)


def test_deep_effects_are_refused_by_the_form_parser() -> None:
    from rvcfast.serve.forms import FieldError, parse_fields

    with pytest.raises(FieldError) as info:
        parse_fields([("voice", "alice"), ("effects", '{"reverb": ' + "[" * 5000 + "]" * 5000 + "}")])
    assert info.value.field == "effects"


# ---------------------------------------------------------------------- client gone mid-upload


def _send_half(port: int, headers: bytes, body: bytes) -> None:
    """Send the headers and half the body of a request, then close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(headers + b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        time.sleep(0.3)  # let the server start reading the body


def _multipart(audio: bytes) -> tuple[bytes, bytes]:
    body = (
        b'--zz\r\nContent-Disposition: form-data; name="voice"\r\n\r\nalice\r\n'
        b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        + audio + b"\r\n--zz--\r\n"
    )
    return b"Content-Type: multipart/form-data; boundary=zz\r\n", body


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_a_client_gone_mid_upload_is_a_499_not_a_server_error(server, client, folders, kind) -> None:
    audio = wav_bytes(tone(3.0, RATE), RATE)
    if kind == "raw":
        ctype, body, path = b"Content-Type: audio/wav\r\n", audio, "/v1/convert?voice=alice"
    else:
        (ctype, body), path = _multipart(audio), "/v1/convert"
    before_499, before_500 = requests_counted(client, "499"), requests_counted(client, "500")
    log_before = len(server.log.read_text())
    _send_half(server.port, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + ctype, body)
    deadline = time.monotonic() + 30
    while requests_counted(client, "499") == before_499 and requests_counted(client, "500") == before_500:
        assert time.monotonic() < deadline, "the request was never counted"
        time.sleep(0.05)
    assert requests_counted(client, "500") == before_500
    assert requests_counted(client, "499") == before_499 + 1
    log = server.log.read_text()[log_before:]
    assert "Traceback" not in log and "ClientDisconnect" not in log, log
    assert list((folders["spool"] / "uploads").iterdir()) == []
    assert_alive(server, client)


def test_the_server_still_converts_after_the_odd_requests(client) -> None:
    r = post(client, wav_bytes(tone(1.0, RATE), RATE))
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["X-Rvcfast-Timings"])["total"] > 0
    assert np.isfinite(float(r.headers["X-Rvcfast-Sample-Rate"]))


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("name", ["max_upload_mb", "jobs_max_mb"])
def test_an_infinite_size_limit_is_a_usage_error_naming_the_option(name) -> None:
    # it passed the "positive" check, then int(inf * 2**20) raised OverflowError while the app was built
    from rvcfast.errors import ParameterError
    from rvcfast.serve.config import ServeConfig

    with pytest.raises(ParameterError, match=name):
        ServeConfig.build(voices=("voices",), **{name: float("inf")})
    assert ServeConfig.build(voices=("voices",), **{name: 1e6}).max_upload_bytes > 0


@pytest.mark.parametrize("fmt", ["mp3", "flac", "wav"])
def test_encoding_non_finite_output_is_an_error_not_a_dead_server(fmt: str) -> None:
    """A conversion whose output holds NaN (a diverging model or effect) must fail that request
    alone: LAME aborts the whole process on NaN (exit 134), which would take the server with it.
    Run in a child so that the old behaviour fails the test instead of killing pytest."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from rvcfast.errors import AudioError\n"
        "from rvcfast.serve.encode import encode_audio\n"
        "x = np.sin(np.arange(4410) / 10).astype(np.float32); x[100] = np.nan\n"
        "try:\n"
        f"    encode_audio(x, 44100, {fmt!r})\n"
        "except AudioError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "NaN or infinite" in out.stdout

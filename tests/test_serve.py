"""``rvcfast serve`` against a real uvicorn process on 127.0.0.1 (tiny random models).

Outputs are compared with an in-process :class:`rvcfast.Converter` given the same file
and parameters, to the golden README's end-to-end tolerance (1e-4 of the peak: the
server runs one torch thread, the test process may not). Every limit and bad input is
answered with a 4xx JSON error naming the problem, and the server stays healthy.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401
from serve_helpers import (
    API_KEY,
    ServerProcess,
    close_to,
    read_audio,
    running_server,
    voice_folder,
    wav_bytes,
)

import rvcfast
from rvcfast.params import param_specs

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

RATE = 44100


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    clips = root / "clips"
    clips.mkdir()
    for name, seconds, freq, rate in (("short", 1.5, 220.0, RATE), ("other", 1.2, 310.0, RATE), ("long", 45.0, 180.0, 16000)):
        (clips / f"{name}.wav").write_bytes(wav_bytes(tone(seconds, rate, freq), rate))
    return {"root": root, "voices": voice_folder(tiny_models, root / "voices"), "clips": clips, "uploads": root / "uploads"}


@pytest.fixture(scope="module")
def server(tiny_models, folders):
    with running_server(
        [folders["voices"]], tiny_models, folders["root"] / "server.log",
        "--api-key", API_KEY, "--max-upload-mb", "3", "--max-queue", "16", "--max-loaded-voices", "2",
        "--models-dir", str(folders["uploads"]),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def alice(tiny_models) -> rvcfast.Converter:
    return tiny_models.converter()  # the same files the server's "alice" has


@pytest.fixture(scope="module")
def bob(tiny_models) -> rvcfast.Converter:
    return rvcfast.Converter.from_pretrained(tiny_models.voice_nof0, encoder=tiny_models.encoder, device="cpu")


def post(client, clip: Path, **fields):
    data = {k: str(v) for k, v in fields.items()}
    return client.post("/v1/convert", files={"file": (clip.name, clip.read_bytes(), "audio/wav")}, data=data)


def healthy(client) -> bool:
    return client.get("/health").status_code == 200


# ---------------------------------------------------------------------- service routes


def test_health_voices_docs_and_metrics(server, client) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # no key needed
    voices = {v["id"]: v for v in client.get("/v1/voices").json()["voices"]}
    assert set(voices) == {"alice", "bob", "carol", "zoe"}
    assert "zoe.pth" in voices["zoe"]["error"] and str(server.log.parent) not in voices["zoe"]["error"]
    assert voices["alice"] | {"loaded": None} == {
        "id": "alice", "version": "v2", "sample_rate": 40000, "f0": True, "speakers": 4, "index": True, "loaded": None,
    }
    assert voices["bob"]["f0"] is False and voices["bob"]["index"] is False and voices["carol"]["index"] is False
    assert httpx.get(f"{server.url}/docs").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    form = schema["paths"]["/v1/convert"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    expected = {s.name for s in param_specs()} - {"output_sample_rate"} | {"file", "voice", "f0", "format", "subtype", "bitrate", "sample_rate", "stream", "source_id"}
    assert set(form["properties"]) == expected
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    text = client.get("/metrics").text
    for family in ("rvcfast_requests_total", "rvcfast_queue_depth", "rvcfast_loaded_voices", "rvcfast_batch_requests",
                   "rvcfast_stage_seconds_total", "rvcfast_model_loads"):
        assert f"# TYPE {family} " in text


# ---------------------------------------------------------------------- conversions


SETTINGS = [
    {"noise": "false"},
    {"noise": "false", "pitch": 3, "index_rate": 0.5, "protect": 0.2, "rms_mix_rate": 0.5, "filter_radius": 2, "speaker": 1,
     "sample_rate": 44100},
    {"noise": "true", "seed": 5, "pitch": -2},
]


@pytest.mark.parametrize("fields", SETTINGS, ids=["defaults", "many", "seeded-noise"])
def test_output_equals_in_process_convert(client, alice, folders, fields) -> None:
    clip = folders["clips"] / "short.wav"
    r = post(client, clip, voice="alice", subtype="FLOAT", **fields)
    assert r.status_code == 200, r.text
    audio, rate = read_audio(r.content)
    kw = {k: v for k, v in fields.items() if k != "sample_rate"}
    kw = {k: (v == "true") if v in ("true", "false") else v for k, v in kw.items()}
    expected = alice.convert(str(clip), output_sample_rate=fields.get("sample_rate"), **kw)
    assert rate == expected.sample_rate
    assert close_to(audio, expected.audio)
    timings = json.loads(r.headers["x-rvcfast-timings"])
    assert {"decode", "f0", "features", "synth", "queue", "encode", "total"} <= set(timings)


def test_f0_backend_per_request(client, tiny_models, folders) -> None:
    """``f0`` picks the F0 backend for one request; the output is what a Converter with that backend gives."""
    clip = folders["clips"] / "short.wav"
    r = post(client, clip, voice="alice", f0="harvest", noise="false", subtype="FLOAT")
    assert r.status_code == 200, r.text
    harvest = tiny_models.converter(f0="harvest", f0_weights=None).convert(str(clip), noise=False).audio
    assert close_to(read_audio(r.content)[0], harvest)
    default = post(client, clip, voice="alice", noise="false", subtype="FLOAT")
    assert not close_to(read_audio(default.content)[0], harvest)  # the server's own backend (rmvpe) differs
    bad = post(client, clip, voice="alice", f0="yin")
    assert bad.status_code == 422 and bad.json()["parameter"] == "f0" and "unknown F0 backend 'yin'" in bad.json()["error"]
    assert healthy(client)


def test_raw_body_formats_and_a_voice_without_f0(client, bob, folders) -> None:
    clip = folders["clips"] / "other.wav"
    r = client.post("/v1/convert?voice=bob&noise=false&subtype=FLOAT&filename=take.wav", content=clip.read_bytes(),
                    headers={"content-type": "audio/wav"})
    assert r.status_code == 200, r.text
    expected = bob.convert(str(clip), noise=False).audio
    assert close_to(read_audio(r.content)[0], expected)
    for fmt, ctype in (("flac", "audio/flac"), ("ogg", "audio/ogg")):
        r = post(client, clip, voice="bob", noise="false", format=fmt)
        assert r.status_code == 200 and r.headers["content-type"] == ctype
        audio, rate = read_audio(r.content)
        assert rate == 40000 and audio.shape == expected.shape


def test_eight_concurrent_clients(client, alice, folders) -> None:
    clips = [folders["clips"] / "short.wav", folders["clips"] / "other.wav"]
    expected = {(c.name, p): alice.convert(str(c), pitch=p, noise=False).audio for c in clips for p in range(8)}

    def one_client(pitch: int) -> list[bool]:
        with httpx.Client(base_url=client.base_url, headers={"X-API-Key": API_KEY}, timeout=120) as own:
            out = []
            for clip in clips:
                r = post(own, clip, voice="alice", pitch=pitch, noise="false", subtype="FLOAT")
                out.append(r.status_code == 200 and close_to(read_audio(r.content)[0], expected[(clip.name, pitch)]))
            return out

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one_client, range(8)))
    assert all(all(r) for r in results), results
    assert healthy(client)


def test_stream_sends_the_pieces_in_order(client, folders) -> None:
    clip = folders["clips"] / "long.wav"  # 45 s: two segments
    whole = post(client, clip, voice="alice", noise="false", subtype="FLOAT")
    assert whole.status_code == 200
    expected, rate = read_audio(whole.content)
    assert np.abs(expected).max() < 0.99  # no peak guard, no RMS mix: the stream reproduces it exactly
    chunks: list[bytes] = []
    data = {"voice": "alice", "noise": "false", "subtype": "FLOAT", "stream": "true"}
    with client.stream("POST", "/v1/convert", files={"file": (clip.name, clip.read_bytes(), "audio/wav")}, data=data) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        assert r.headers.get("transfer-encoding") == "chunked" and "first_piece" in r.headers["x-rvcfast-timings"]
        for chunk in r.iter_raw():
            chunks.append(chunk)
    streamed, srate = read_audio(b"".join(chunks))
    assert srate == rate
    np.testing.assert_array_equal(streamed, expected)


def test_jobs(client, folders) -> None:
    clip = folders["clips"] / "long.wav"
    r = client.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes(), "audio/wav")},
                    data={"voice": "alice", "noise": "false", "subtype": "FLOAT"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and job["state"] in ("queued", "running")
    progress = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job['id']}").json()
        progress.append(status["progress"])
        if status["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert status["state"] == "done", status
    assert progress == sorted(progress) and status["segments"] == 2 and status["input_seconds"] == pytest.approx(45.0)
    audio, _ = read_audio(client.get(f"/v1/jobs/{job['id']}/audio").content)
    expected, _ = read_audio(post(client, clip, voice="alice", noise="false", subtype="FLOAT").content)
    np.testing.assert_array_equal(audio, expected)
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert client.get("/v1/jobs/../../etc/passwd").status_code == 404
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 404
    # a job whose input is not audio fails on its own; the answer names the client's file
    r = client.post("/v1/jobs", files={"file": ("notes.txt", b"not audio at all", "text/plain")}, data={"voice": "bob"})
    assert r.status_code == 202
    for _ in range(100):
        status = client.get(f"/v1/jobs/{r.json()['id']}").json()
        if status["state"] == "failed":
            break
        time.sleep(0.05)
    assert status["state"] == "failed" and "notes.txt" in status["error"] and "upload-" not in status["error"]
    audio_r = client.get(f"/v1/jobs/{status['id']}/audio")
    assert audio_r.status_code == 409 and "failed" in audio_r.json()["error"]
    assert healthy(client)


# ---------------------------------------------------------------------- limits and bad input

BAD_FIELDS = [
    ({"voice": "nobody"}, 404, "unknown voice 'nobody'"),
    ({"voice": "../voices/alice"}, 404, "unknown voice"),
    ({"voice": "alice", "pitch": "abc"}, 422, "pitch must be a number"),
    ({"voice": "alice", "pitch": "99"}, 422, "pitch must be within"),
    ({"voice": "alice", "pich": "2"}, 422, "did you mean 'pitch'"),
    ({"voice": "alice", "speaker": "9"}, 422, "speaker 9 is out of range"),
    ({"voice": "alice", "effects": "{not json"}, 422, "effects must be a JSON object"),
    ({"voice": "alice", "effects": '{"echo": {}}'}, 422, "unknown effect 'echo'"),
    ({"voice": "alice", "formant": "1.0"}, 422, "formant must be two numbers"),
    ({"voice": "alice", "format": "aiff"}, 422, "format must be one of"),
    ({"voice": "alice", "subtype": "PCM_99"}, 422, "subtype 'PCM_99' is not valid"),
    ({"voice": "alice", "stream": "true", "format": "flac"}, 422, "stream=true sends WAV only"),
    ({"voice": "alice", "sample_rate": "100"}, 422, "must be within 8000..384000 Hz"),
    ({"pitch": "1"}, 422, "field 'voice' is required"),
]


@pytest.mark.parametrize(("fields", "status", "message"), BAD_FIELDS, ids=[m for _, _, m in BAD_FIELDS])
def test_bad_fields(client, folders, fields, status, message) -> None:
    r = client.post("/v1/convert", files={"file": ("a.wav", (folders["clips"] / "other.wav").read_bytes(), "audio/wav")},
                    data=fields)
    assert r.status_code == status and message in r.json()["error"], r.text
    if status == 422 and "parameter" in r.json():
        assert r.json()["parameter"] in {*fields, "voice"}
    assert healthy(client)


def test_bad_uploads(client, folders) -> None:
    good = (folders["clips"] / "other.wav").read_bytes()
    cases = [
        (dict(files={"file": ("notes.txt", b"hello, not audio", "text/plain")}, data={"voice": "alice"}), 422, "notes.txt"),
        (dict(files={"file": ("empty.wav", b"", "audio/wav")}, data={"voice": "alice"}), 422, "empty"),
        (dict(data={"voice": "alice"}), 415, "carries no audio"),
        (dict(files={"other": ("a.wav", good, "audio/wav")}, data={"voice": "alice"}), 422, "unexpected file field 'other'"),
        (dict(json={"voice": "alice"}), 415, "application/json"),
        (dict(content=b"x" * 100, headers={"content-type": "text/plain"}), 415, "text/plain"),
        (dict(content=b"", headers={"content-type": "audio/wav"}, params={"voice": "alice"}), 422, "empty"),
        (dict(content=b"\0" * 4_000_000, headers={"content-type": "audio/wav"}, params={"voice": "alice"}), 413, "upload limit"),
        # no Content-Length (chunked): counted while it arrives
        (dict(content=iter([b"\0" * 500_000] * 8), headers={"content-type": "audio/wav"}, params={"voice": "alice"}), 413,
         "upload limit"),
    ]
    for kwargs, status, message in cases:
        r = client.post("/v1/convert", **kwargs)
        assert r.status_code == status and message in r.json()["error"], (kwargs.get("data"), r.status_code, r.text)
        assert "upload-" not in r.json()["error"]  # spool paths are never shown
        assert healthy(client)


def test_input_warnings_and_strict(client, folders) -> None:
    cut = wav_bytes(tone(1.0, RATE), RATE)[:-20000]  # the header promises more than the file holds
    files = {"file": ("cut.wav", cut, "audio/wav")}
    r = client.post("/v1/convert", files=files, data={"voice": "bob"})
    assert r.status_code == 200
    warnings = json.loads(r.headers["x-rvcfast-warnings"])
    assert warnings and all("cut.wav" in w and "upload-" not in w for w in warnings)
    r = client.post("/v1/convert", files=files, data={"voice": "bob", "strict": "true"})
    assert r.status_code == 422 and "strict" in r.json()["error"] and "cut.wav" in r.json()["error"]
    assert healthy(client)


def test_api_key(server) -> None:
    files = {"file": ("a.wav", b"RIFF", "audio/wav")}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"{server.url}/v1/convert", files=files, data={"voice": "alice"}, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(f"{server.url}/v1/voices", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(f"{server.url}/v1/nothing", headers={"X-API-Key": API_KEY}).json()["error"] == "Not Found"


def test_voices_are_kept_in_an_lru_and_base_models_load_once(client, folders) -> None:
    clip = folders["clips"] / "other.wav"
    for voice in ("carol", "bob", "alice", "carol"):
        assert post(client, clip, voice=voice, noise="false").status_code == 200
    loaded = {v["id"] for v in client.get("/v1/voices").json()["voices"] if v["loaded"]}
    assert loaded == {"alice", "carol"}
    text = client.get("/metrics").text
    assert 'rvcfast_model_loads_total{kind="encoder"} 1' in text and 'rvcfast_model_loads_total{kind="rmvpe"} 1' in text
    assert "# TYPE rvcfast_model_loads_total counter" in text
    # the gauge of the same name without _total stays for dashboards made before the counter
    assert 'rvcfast_model_loads{kind="encoder"} 1' in text and "# TYPE rvcfast_model_loads gauge" in text


def test_a_broken_voice_file_fails_alone(client, folders) -> None:
    r = post(client, folders["clips"] / "other.wav", voice="zoe")
    assert r.status_code == 500 and "zoe.pth" in r.json()["error"] and str(folders["voices"]) not in r.json()["error"]
    assert post(client, folders["clips"] / "other.wav", voice="bob", noise="false").status_code == 200
    assert healthy(client)


def test_model_upload_goes_through_the_safe_loader(client, tiny_models, folders, tmp_path) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"\x80\x04cos\nsystem\n(S'touch /tmp/rvcfast-pwned'\ntR.")  # a pickle that would run a command
    r = client.post("/v1/voices", data={"name": "evil"}, files={"model": ("evil.pth", evil.read_bytes())})
    assert r.status_code == 422 and "evil.pth" in r.json()["error"], r.text
    assert not Path("/tmp/rvcfast-pwned").exists() and not list(folders["uploads"].glob("evil*"))
    r = client.post("/v1/voices", data={"name": "../../x"}, files={"model": ("m.pth", tiny_models.voice.read_bytes())})
    assert r.status_code == 422 and r.json()["parameter"] == "name"
    r = client.post("/v1/voices", data={"name": "bob"}, files={"model": ("m.pth", tiny_models.voice.read_bytes())})
    assert r.status_code == 422 and "one of the server's own voices" in r.json()["error"]  # not "send replace=true"
    r = client.post("/v1/voices", data={"name": "dave"},
                    files={"model": ("d.pth", tiny_models.voice.read_bytes()), "index": ("d.index", tiny_models.index.read_bytes())})
    assert r.status_code == 201 and r.json()["index"] is True, r.text
    assert post(client, folders["clips"] / "other.wav", voice="dave", noise="false").status_code == 200
    assert healthy(client)


def test_memory_is_flat_over_a_few_hundred_requests(server, client, folders) -> None:
    data = (folders["clips"] / "short.wav").read_bytes()

    def run(n: int) -> None:
        def one(_: int) -> int:
            return client.post("/v1/convert?voice=bob&noise=false", content=data, headers={"content-type": "audio/wav"}).status_code

        with cf.ThreadPoolExecutor(4) as pool:
            assert set(pool.map(one, range(n))) == {200}

    run(40)  # warm-up: allocator pools, first-call buffers
    start = server.rss_mb()
    run(100)
    middle = server.rss_mb()
    run(100)
    end = server.rss_mb()
    # a leak of each request's audio (~0.5 MB of upload, output and encoded bytes) would add ~50 MB per 100 requests
    assert end - middle < 15 and end - start < 25, (start, middle, end)


# ---------------------------------------------------------------------- a second server: queue limit and SIGTERM


def test_queue_limit_and_sigterm_drain(tiny_models, folders) -> None:
    srv = ServerProcess([folders["voices"] / "alice.pth"], tiny_models, folders["root"] / "small.log", "--max-queue", "1")
    try:
        # the start line says what the voices run on (--device cpu, the default float32)
        assert "(1 voices on cpu, float32; GET /health" in srv.log.read_text()
        srv.wait_healthy()
        long_clip = (folders["clips"] / "long.wav").read_bytes()
        short_clip = (folders["clips"] / "other.wav").read_bytes()
        files = {"file": ("long.wav", long_clip, "audio/wav")}
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            assert c.post("/v1/voices", data={"name": "x"}, files={"model": ("m.pth", b"x")}).status_code == 403
            # a stream that is not read holds its slot (and at most two pieces): the queue is full
            with c.stream("POST", "/v1/convert", files=files, data={"voice": "alice", "stream": "true"}) as held:
                assert held.status_code == 200
                busy = c.post("/v1/convert?voice=alice", content=short_clip, headers={"content-type": "audio/wav"})
                assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["error"]
            assert c.get("/health").status_code == 200
            assert c.post("/v1/convert?voice=alice", content=short_clip, headers={"content-type": "audio/wav"}).status_code == 200

            # SIGTERM while a long conversion is in flight: it is finished and answered, then the server exits
            answer: dict[str, object] = {}

            def convert() -> None:
                answer["r"] = c.post("/v1/convert", files=files, data={"voice": "alice", "noise": "false"})

            worker = threading.Thread(target=convert)
            worker.start()
            deadline = time.monotonic() + 30
            while "rvcfast_requests_in_flight 1" not in c.get("/metrics").text:
                assert time.monotonic() < deadline, "the conversion never started"
                time.sleep(0.02)
            srv.terminate()
            worker.join(120)
        r = answer["r"]
        assert r.status_code == 200  # type: ignore[attr-defined]
        audio, rate = read_audio(r.content)  # type: ignore[attr-defined]
        assert abs(audio.shape[0] / rate - 45.0) < 0.1
        assert srv.wait(60) in (0, -15)  # uvicorn re-raises the signal once it has shut down cleanly
        assert "Traceback" not in srv.log.read_text()
    finally:
        srv.kill()


def test_a_server_whose_voices_all_fail_to_load_exits(tiny_models, folders) -> None:
    srv = ServerProcess([folders["voices"] / "zoe.pth"], tiny_models, folders["root"] / "broken.log")
    try:
        assert srv.wait(60) == 1
        log = srv.log.read_text()
        assert "the server stopped" in log and "zoe.pth" in log
    finally:
        srv.kill()


# ---------------------------------------------------------------------- packaging


def test_importing_rvcfast_does_not_import_fastapi() -> None:
    code = "import sys, rvcfast, rvcfast.serve; print(any(m in sys.modules for m in ('fastapi', 'uvicorn', 'starlette')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_serve_without_the_extra_says_what_to_install(tmp_path) -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from rvcfast.cli import main\n"
        f"sys.exit(main(['serve', {str(tmp_path)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and 'pip install "rvcfast[serve]"' in out.stderr


def test_serve_help(capsys) -> None:
    from rvcfast.cli import main

    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rvcfast serve") and "example" in out and "--max-queue" in out


def test_shutdown_waits_for_requests_in_flight_at_most_the_shutdown_timeout(folders, tiny_models, monkeypatch) -> None:
    # uvicorn waited forever for a stream whose client stopped reading: SIGTERM never finished
    import uvicorn

    from rvcfast.cli import main

    seen: dict[str, object] = {}

    class Server:
        def __init__(self, config) -> None:
            seen["grace"] = config.timeout_graceful_shutdown

        def run(self, sockets) -> None:
            for s in sockets:
                s.close()

    monkeypatch.setattr(uvicorn, "Server", Server)
    args = ["serve", str(folders["voices"]), "--port", "0", "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe)]
    assert main(args) == 0 and seen["grace"] == 300.0  # the default
    assert main([*args, "--shutdown-timeout", "12.5"]) == 0 and seen["grace"] == 12.5
    for bad in ("0", "-1", "nan"):
        assert main([*args, "--shutdown-timeout", bad]) == 2

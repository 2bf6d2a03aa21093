"""A security review of ``rvcfast serve`` walked through with real HTTP requests (docs/serving.md, Security).

Against a real server process on 127.0.0.1 (tiny random models, ``--api-key``,
``--models-dir``): names of voices and jobs that look like paths, hostile uploads, body
limits, fields that might name server files, and what errors, ``/health`` and ``/metrics``
show. Defects found and fixed:

* a request that sent its headers and then stalled its body held its ``--max-queue`` slot for
  ever (uvicorn has no body timeout): a few idle connections made the server answer 503 to
  everyone. Now a body that sends nothing for ``body_timeout_seconds`` (60 s) is answered 408
  and its connection closed (tested in process with a 1 s timeout, on a real socket);
* an ONNX voice upload that keeps tensors in external data files (which onnxruntime reads
  from the model's folder, i.e. from files already on the server) reached onnxruntime, whose
  error then named the server's spool folder: now refused before onnxruntime sees it, and an
  upload's error never names a server folder;
* an ONNX upload that does not say its sample rate was accepted (201) although the server
  could never run it (every conversion a 500): now 422 with the one-line fix;
* upload names that are Windows device names (``CON``, ``nul.x``) or differ from a voice only
  in case (one file on macOS and Windows) were accepted: now 422 naming ``name``;
* a stray file field in a voice upload said "the audio goes in 'model'": now it lists the
  expected fields.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import tiny_models_fixture, tone  # noqa: F401
from serve_helpers import API_KEY, running_server, voice_folder, wav_bytes

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

WAV = wav_bytes(tone(0.5, 16000), 16000)


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("security")
    return {
        "root": root, "voices": voice_folder(tiny_models, root / "voices"), "models": root / "uploaded",
        "spool": root / "spool",
    }


@pytest.fixture(scope="module")
def server(tiny_models, folders):
    with running_server(
        [folders["voices"]], tiny_models, folders["root"] / "server.log", "--api-key", API_KEY,
        "--models-dir", str(folders["models"]), "--jobs-dir", str(folders["spool"]), "--max-upload-mb", "2",
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120, headers={"X-API-Key": API_KEY}) as c:
        yield c


def no_server_path(text: str, folders: dict[str, Path]) -> bool:
    """``text`` names none of the server's folders and holds no traceback."""
    return str(folders["root"]) not in text and "Traceback" not in text and 'File "' not in text


def upload(client, model: bytes, name: str, filename: str = "model.pth", **fields: str):
    return client.post("/v1/voices", files={"model": (filename, model)}, data={"name": name, **fields})


# ---------------------------------------------------------------------- names are never paths


ODD_VOICES = [
    "../voices/alice", "/etc/passwd", "alice\x00", "..%2Falice", "ａｌｉｃｅ", "CON", "alice.pth", "alice/../alice", "ALICE",
]


@pytest.mark.parametrize("voice", ODD_VOICES)
def test_a_voice_named_like_a_path_is_an_unknown_voice(client, folders, voice: str) -> None:
    r = client.post("/v1/convert", files={"file": ("a.wav", WAV)}, data={"voice": voice})
    assert r.status_code == 404, r.text
    assert r.json()["error"].startswith("unknown voice") and no_server_path(r.text, folders)


@pytest.mark.parametrize("field", ["f0_weights", "encoder", "index", "model", "f0_options", "device"])
def test_no_field_names_a_server_file(client, folders, field: str) -> None:
    r = client.post("/v1/convert", files={"file": ("a.wav", WAV)}, data={"voice": "alice", field: "/etc/passwd"})
    assert r.status_code == 422 and r.json()["parameter"] == field, r.text
    r = client.post("/v1/convert", files={"file": ("a.wav", WAV)}, data={"voice": "alice", "f0": "hybrid:rmvpe+../../x"})
    assert r.status_code == 422 and r.json()["parameter"] == "f0", r.text


def test_job_ids_are_random_capabilities_and_odd_ids_are_404(client, folders) -> None:
    ids = []
    for _ in range(2):
        r = client.post("/v1/jobs", files={"file": ("a.wav", WAV)}, data={"voice": "alice"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]
    for odd in ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "0" * 32, ids[0].upper(), ids[0][:-1]]:
        for method, path in (("GET", f"/v1/jobs/{odd}"), ("GET", f"/v1/jobs/{odd}/audio"), ("DELETE", f"/v1/jobs/{odd}")):
            r = client.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert no_server_path(r.text, folders)
    for job in ids:
        assert client.delete(f"/v1/jobs/{job}").status_code == 200


# ---------------------------------------------------------------------- uploads


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickles_are_refused_without_running(client, folders, tmp_path) -> None:
    marker = tmp_path / "ran"
    legacy = pickle.dumps({"weight": _Hostile(marker), "config": [1]}, protocol=2)
    buf = io.BytesIO()
    torch.save({"weight": {"w": torch.zeros(2)}, "config": _Hostile(marker)}, buf)
    for payload in (legacy, buf.getvalue()):
        r = upload(client, payload, "evil")
        assert r.status_code == 422 and "could run code" in r.json()["error"], r.text
        assert no_server_path(r.text, folders)
    assert not marker.exists()
    assert not list(folders["models"].glob("evil*"))


def test_zip_bombs_and_traversal_entries_are_refused_unpacked(client, folders, tmp_path) -> None:
    traversal = io.BytesIO()
    with zipfile.ZipFile(traversal, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": {}, "config": []}, protocol=2))
        z.writestr(f"../../../../{tmp_path.name}/escaped", b"x")
        z.writestr(str(tmp_path / "absolute"), b"x")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": {}, "config": []}, protocol=2))
        z.writestr("archive/data/0", b"\0" * (200 << 20))
    for payload, says in ((traversal.getvalue(), "not a PyTorch file"), (bomb.getvalue(), "zip bomb")):
        r = upload(client, payload, "zipped")
        assert r.status_code == 422 and says in r.json()["error"], r.text
    assert not (tmp_path / "absolute").exists() and not list(tmp_path.parent.glob("escaped"))
    assert not list(folders["models"].glob("zipped*"))


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a/b", ".hidden", "evil\x00", "ａｌｉｃｅ", "x" * 65])
def test_upload_names_that_are_paths_are_refused(client, tiny_models, name: str) -> None:
    r = upload(client, tiny_models.voice.read_bytes(), name)
    assert r.status_code == 422 and r.json()["parameter"] == "name", r.text


def test_upload_names_windows_reserves_or_differing_only_in_case_are_refused(client, tiny_models, folders) -> None:
    model = tiny_models.voice.read_bytes()
    for name in ("CON", "nul.x", "Com1", "lpt9"):
        r = upload(client, model, name)
        assert r.status_code == 422 and r.json()["parameter"] == "name" and "device name" in r.json()["error"], r.text
    assert upload(client, model, "dave").status_code == 201
    for twin in ("Dave", "DAVE", "Alice"):  # an uploaded voice's and a server voice's
        r = upload(client, model, twin, replace="true")
        assert r.status_code == 422 and r.json()["parameter"] == "name" and "only in case" in r.json()["error"], r.text
    assert sorted(p.name for p in folders["models"].glob("*.pth")) == ["dave.pth"]


def test_a_stray_upload_file_field_names_the_expected_ones(client, tiny_models) -> None:
    r = client.post("/v1/voices", files={"model": ("m.pth", tiny_models.voice.read_bytes()), "audio": ("a.wav", WAV)},
                    data={"name": "stray"})
    assert r.status_code == 422 and r.json()["parameter"] == "audio", r.text
    assert "expected model, index" in r.json()["error"] and "audio goes" not in r.json()["error"]


@pytest.fixture(scope="module")
def onnx_voice(tiny_models, tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from rvcfast.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "voice.onnx"
    export_onnx(tiny_models.voice, path, verify=False)
    return path


def _onnx_variant(source: Path, target: Path, *, external: str | None = None, rate: bool = True) -> bytes:
    """``source`` with its largest initializer moved to the external file ``external``, and/or
    without its sample rate (rvcfast's and w-okada's metadata)."""
    import json

    import onnx

    proto = onnx.load(str(source))
    if external is not None:
        tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
        size = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(size))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    if not rate:
        kept = []
        for prop in proto.metadata_props:
            if prop.key == "sample_rate":
                continue
            value = prop.value
            if prop.key == "metadata":
                value = json.dumps({k: v for k, v in json.loads(value).items() if k != "samplingRate"})
            kept.append((prop.key, value))
        del proto.metadata_props[:]
        for key, value in kept:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    data = proto.SerializeToString()
    target.write_bytes(data)
    return data


@pytest.mark.parametrize("location", ["dave.pth", "../../../../etc/hostname", "/etc/hostname"])
def test_an_onnx_upload_reading_external_files_is_refused_before_onnxruntime(
    client, folders, onnx_voice, tmp_path, location: str
) -> None:
    data = _onnx_variant(onnx_voice, tmp_path / "ext.onnx", external=location)
    r = upload(client, data, "external", "ext.onnx")
    assert r.status_code == 422, r.text
    assert "external data" in r.json()["error"] and "onnxruntime" not in r.json()["error"], r.text
    assert no_server_path(r.text, folders)
    assert not list(folders["models"].glob("external*"))


def test_an_onnx_upload_without_its_sample_rate_is_refused(client, folders, onnx_voice, tmp_path) -> None:
    data = _onnx_variant(onnx_voice, tmp_path / "norate.onnx", rate=False)
    r = upload(client, data, "norate", "norate.onnx")
    assert r.status_code == 422 and "sample rate" in r.json()["error"] and "add_onnx_metadata" in r.json()["error"], r.text
    assert not list(folders["models"].glob("norate*"))
    r = upload(client, onnx_voice.read_bytes(), "whole", "whole.onnx")  # the same export with its metadata
    assert r.status_code == 201 and r.json()["sample_rate"] == 40000, r.text


# ---------------------------------------------------------------------- limits, errors, open routes


def test_bodies_over_the_limit_are_413_with_or_without_a_length(client) -> None:
    big = b"\0" * (3 << 20)
    r = client.post("/v1/convert?voice=alice", content=big, headers={"content-type": "audio/wav"})
    assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"\0" * (1 << 20)

    r = client.post("/v1/convert?voice=alice", content=chunks(), headers={"content-type": "audio/wav"})
    assert r.status_code == 413, r.text
    r = client.post("/v1/voices", files={"model": ("m.pth", big)}, data={"name": "big"})
    assert r.status_code == 413, r.text


def test_errors_are_json_without_tracebacks_or_server_paths(client, folders) -> None:
    r = client.post("/v1/convert", files={"file": ("a.wav", WAV)}, data={"voice": "zoe"})  # a broken voice file
    assert r.status_code == 500 and "zoe.pth" in r.json()["error"], r.text
    r2 = client.post("/v1/convert", files={"file": ("a.wav", b"RIFF" + b"\0" * 100)}, data={"voice": "alice"})
    assert r2.status_code == 422, r2.text
    for text in (r.text, r2.text, client.get("/v1/voices").text, client.get("/metrics").text):
        assert no_server_path(text, folders)


def test_only_health_and_the_api_docs_are_open_without_the_key(server) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/openapi.json").status_code == 200
    for path in ("/metrics", "/v1/voices", "/v1/jobs/" + "0" * 32):
        assert httpx.get(f"{server.url}{path}").status_code == 401, path
        assert httpx.get(f"{server.url}{path}", headers={"X-API-Key": API_KEY + "x"}).status_code == 401, path
    # no CORS headers: a page of another origin cannot read an answer
    r = httpx.get(f"{server.url}/health", headers={"Origin": "http://elsewhere.example"})
    assert not any(k.lower().startswith("access-control-") for k in r.headers)


# ---------------------------------------------------------------------- a stalled body


@contextmanager
def thread_server(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 in a thread; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _stalled(port: int, multipart: bool) -> socket.socket:
    """A connection that sends a request's headers and the start of its body, then nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if multipart:
        head = (b"POST /v1/convert HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=bb\r\n"
                b"Content-Length: 100000\r\n\r\n--bb\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF")
    else:
        head = b"POST /v1/convert?voice=alice HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 100000\r\n\r\nRIFF"
    s.sendall(head)
    return s


def test_a_stalled_body_is_408_and_gives_its_slot_back(tiny_models, folders) -> None:
    from rvcfast.serve import create_app

    app = create_app(
        voices=[folders["voices"]], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads=1,
        max_queue=1, body_timeout_seconds=1.0, jobs_dir=folders["root"] / "spool-thread",
    )
    try:
        with thread_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            deadline = time.monotonic() + 60
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "the app never became healthy"
                time.sleep(0.1)
            port = int(url.rsplit(":", 1)[1])
            for multipart in (False, True):
                s = _stalled(port, multipart)
                try:
                    time.sleep(0.3)  # it holds the only slot while its body is awaited
                    busy = client.post("/v1/convert", files={"file": ("a.wav", WAV)}, data={"voice": "alice"})
                    assert busy.status_code == 503, busy.text
                    answer = b""
                    while piece := s.recv(4096):  # the old server never answered: the socket timed out
                        answer += piece  # until the server closes the connection
                    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
                    assert b"connection: close" in answer.lower() and b"stalled" in answer, answer
                finally:
                    s.close()
                r = client.post("/v1/convert", files={"file": ("a.wav", WAV)}, data={"voice": "alice"})
                assert r.status_code == 200, r.text
            assert 'status="408"' in client.get("/metrics").text
    finally:
        app.state.rvcfast.close()

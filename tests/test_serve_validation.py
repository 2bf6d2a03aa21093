"""``rvcfast serve``: requests the server must refuse as client errors, and its registry, loader and middleware.

Against a real server process (127.0.0.1, tiny random models): an output format, subtype
and rate libsndfile cannot write (OGG/Vorbis above 192 kHz crashed the whole process;
Opus at 40 kHz and MPEG Layer I/II answered 500) and effect values outside their
plugin's range (500 after the whole conversion) are answered 422 naming the field, and
the server stays up. In process: a voice replaced while it loads is never served from
its old file, loaded voices are looked up without the loader pool, a mounted app matches
its paths without the mount prefix, a non-ASCII API key matches, and an empty voices
folder is a usage error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401
from serve_helpers import read_audio, running_server, voice_folder, wav_bytes

from rvcfast.errors import ParameterError

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

RATE = 44100


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-validation")
    clip = root / "short.wav"
    clip.write_bytes(wav_bytes(tone(1.0, RATE, 220.0), RATE))
    return {"root": root, "voices": voice_folder(tiny_models, root / "voices"), "clip": clip}


@pytest.fixture(scope="module")
def server(tiny_models, folders):
    with running_server([folders["voices"]], tiny_models, folders["root"] / "server.log", "--max-loaded-voices", "2") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def post(client, clip: Path, route: str = "/v1/convert", **fields: Any):
    data = {"voice": "alice", **{k: str(v) for k, v in fields.items()}}
    return client.post(route, files={"file": (clip.name, clip.read_bytes(), "audio/wav")}, data=data)


def assert_alive(server, client) -> None:
    """The server process is still running and healthy."""
    assert server.proc.poll() is None, f"the server died:\n{server.log.read_text()[-2000:]}"
    assert client.get("/health").status_code == 200


# ---------------------------------------------------------------------- output format vs rate


@pytest.mark.parametrize("rate", [250000, 384000])
def test_ogg_vorbis_above_its_rate_limit_is_refused_and_the_server_lives(server, client, folders, rate) -> None:
    r = post(client, folders["clip"], format="ogg", sample_rate=rate)
    assert r.status_code == 422, r.text
    assert r.json()["parameter"] == "sample_rate"
    assert "sample_rate" in r.json()["error"] and "192000" in r.json()["error"]
    assert_alive(server, client)


def test_ogg_vorbis_at_its_rate_limit_is_written(server, client, folders) -> None:
    r = post(client, folders["clip"], format="ogg", sample_rate=192000)
    assert r.status_code == 200, r.text
    audio, rate = read_audio(r.content)
    assert rate == 192000 and audio.size > 0
    assert r.headers["X-Rvcfast-Sample-Rate"] == "192000"


def test_a_job_for_ogg_vorbis_above_its_rate_limit_fails_cleanly(server, client, folders) -> None:
    r = post(client, folders["clip"], route="/v1/jobs", format="ogg", sample_rate=250000)
    if r.status_code == 202:  # accepted: the write refuses it and the job reports why
        deadline = time.monotonic() + 120
        job = r.json()
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = client.get(f"/v1/jobs/{job['id']}").json()
        assert job["state"] == "failed", job
        assert "sample_rate" in job["error"] and "192000" in job["error"]
    else:  # refused at once
        assert r.status_code == 422, r.text
        assert "sample_rate" in r.json()["error"]
    assert_alive(server, client)


@pytest.mark.parametrize(
    ("fields", "parameter", "words"),
    [
        ({"format": "ogg", "subtype": "OPUS"}, "subtype", ("OPUS", "sample_rate", "48000", "40000")),
        ({"format": "ogg", "subtype": "OPUS", "sample_rate": 44100}, "subtype", ("OPUS", "sample_rate", "44100")),
        ({"format": "mp3", "subtype": "MPEG_LAYER_I"}, "subtype", ("MPEG_LAYER_I", "MPEG_LAYER_III")),
        ({"format": "mp3", "subtype": "MPEG_LAYER_II"}, "subtype", ("MPEG_LAYER_II", "MPEG_LAYER_III")),
    ],
)
def test_unwritable_subtype_and_rate_are_client_errors(server, client, folders, fields, parameter, words) -> None:
    r = post(client, folders["clip"], **fields)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["parameter"] == parameter
    assert "internal error" not in body["error"] and "Libsndfile" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]
    assert_alive(server, client)


def test_opus_at_an_opus_rate_is_written(server, client, folders) -> None:
    r = post(client, folders["clip"], format="ogg", subtype="OPUS", sample_rate=48000)
    assert r.status_code == 200, r.text
    audio, rate = read_audio(r.content)
    assert rate == 48000 and audio.size > 0


# ---------------------------------------------------------------------- effect values


@pytest.mark.parametrize("stream", ["false", "true"])
@pytest.mark.parametrize(
    ("effects", "words"),
    [
        ({"reverb": {"room_size": 5}}, ("reverb", "room_size", "0..1")),
        ({"chorus": {"rate": -1}}, ("chorus", "rate", "0..100")),
        ({"bitcrush": {"bit_depth": 100}}, ("bitcrush", "bit_depth", "0..32")),
        ({"compressor": {"ratio": 0.1}}, ("compressor", "ratio", ">= 1")),
        ({"pitch_shift": {"semitones": 500}}, ("pitch_shift", "semitones", "-72..72")),
        ({"delay": {"seconds": 60}}, ("delay", "seconds", "0..30")),
    ],
)
def test_effect_values_outside_their_range_are_client_errors(server, client, folders, effects, words, stream) -> None:
    r = post(client, folders["clip"], effects=json.dumps(effects), stream=stream)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["parameter"] == "effects"
    assert body["error"].startswith("effects: ")
    for word in words:
        assert word in body["error"], body["error"]
    assert_alive(server, client)


# ---------------------------------------------------------------------- voice registry


class _FakeEngine:
    def __init__(self, model: Path) -> None:
        self.model = model
        self.vocoder = SimpleNamespace(version="v2", sample_rate=40000, has_f0=True, num_speakers=1)
        self.f0 = None

    def with_f0(self, extractor: Any) -> _FakeEngine:
        other = _FakeEngine(self.model)
        other.f0 = extractor
        return other


def test_a_voice_replaced_while_it_loads_serves_the_new_model() -> None:
    from rvcfast.serve.voices import Voice, VoiceRegistry

    loading, release = threading.Event(), threading.Event()
    loaded: list[Path] = []

    def load(voice: Voice) -> _FakeEngine:
        loaded.append(voice.model)
        if voice.model.name == "old.pth":
            loading.set()
            assert release.wait(60)
        return _FakeEngine(voice.model)

    registry = VoiceRegistry([Voice("v", Path("old.pth"))], load, max_loaded=4)
    served: list[Any] = []
    worker = threading.Thread(target=lambda: served.append(registry.engine("v")))
    worker.start()
    try:
        assert loading.wait(60)
        registry.add(Voice("v", Path("new.pth")), replace=True)  # the upload finished during the load
    finally:
        release.set()
        worker.join(60)
    assert [e.model.name for e in served] == ["new.pth"]
    assert registry.engine("v").model.name == "new.pth"
    assert [m.name for m in loaded] == ["old.pth", "new.pth"]
    assert registry.loaded_ids() == ["v"]


# ---------------------------------------------------------------------- loader pool


class _NoPool(cf.ThreadPoolExecutor):
    """A loader pool that must not be used."""

    def submit(self, *args: Any, **kwargs: Any) -> cf.Future:  # type: ignore[override]
        raise AssertionError("the loader pool was used for a voice that is loaded already")


class _CountingPool(cf.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> cf.Future:  # type: ignore[override]
        self.submitted += 1
        return super().submit(*args, **kwargs)


@pytest.fixture
def bare_state(tmp_path):
    """A server state that is never started; its voices are fake engines (nothing is loaded from disk)."""
    from rvcfast.serve import ServeConfig
    from rvcfast.serve.state import ServerState

    folder = tmp_path / "voices"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.pth").write_bytes(b"never loaded")
    state = ServerState(ServeConfig.build(voices=[str(folder)], device="cpu", jobs_dir=str(tmp_path / "spool")))
    yield state
    state.close()


def test_loaded_voices_are_looked_up_without_the_loader_pool(bare_state) -> None:
    from rvcfast.serve.voices import VoiceRegistry

    state = bare_state
    state.registry = VoiceRegistry(state.registry_voices(), lambda v: _FakeEngine(v.model), 2)
    engine = state.registry.engine("a")
    state.loader.shutdown()
    state.loader = _NoPool(1)
    state._f0_extractors["harvest"] = "the harvest extractor"  # built before: shared, not built again

    async def lookups() -> tuple[Any, Any]:
        return await state.engine_for("a"), await state.engine_for("a", "harvest")

    same, with_f0 = asyncio.run(lookups())
    assert same is engine
    assert with_f0.model == engine.model and with_f0.f0 == "the harvest extractor"


def test_requests_for_a_loading_voice_share_one_load(bare_state) -> None:
    from rvcfast.serve.voices import VoiceRegistry

    state = bare_state
    release = threading.Event()

    def load(voice: Any) -> _FakeEngine:
        assert release.wait(60)
        return _FakeEngine(voice.model)

    state.registry = VoiceRegistry(state.registry_voices(), load, 2)
    state.loader.shutdown()
    pool = state.loader = _CountingPool()

    async def three_requests() -> list[Any]:
        tasks = [asyncio.create_task(state.engine_for("b")) for _ in range(3)]
        try:
            for _ in range(5):
                await asyncio.sleep(0)  # every task reaches its wait for the engine
            submitted = pool.submitted
        finally:
            release.set()
        engines = await asyncio.gather(*tasks)
        assert submitted == 1
        return engines

    engines = asyncio.run(three_requests())
    assert all(e is engines[0] for e in engines)
    assert state.registry.loads == 1


# ---------------------------------------------------------------------- middleware


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps({"path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_a_mounted_app_matches_paths_without_its_prefix() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from rvcfast.serve.metrics import Metrics
    from rvcfast.serve.middleware import ApiKey, RequestMetrics

    metrics = Metrics()
    app = RequestMetrics(ApiKey(_ok_app, key="k"), metrics=metrics)
    parent = Starlette(routes=[Mount("/rvc", app=app)])

    async def requests() -> dict[str, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=parent), base_url="http://t") as c:
            return {
                "health": (await c.get("/rvc/health")).status_code,
                "docs": (await c.get("/rvc/docs")).status_code,
                "openapi": (await c.get("/rvc/openapi.json")).status_code,
                "voices": (await c.get("/rvc/v1/voices")).status_code,
                "voices with key": (await c.get("/rvc/v1/voices", headers={"X-API-Key": "k"})).status_code,
                "job": (await c.get("/rvc/v1/jobs/0123/audio", headers={"X-API-Key": "k"})).status_code,
            }

    codes = asyncio.run(requests())
    assert codes == {"health": 200, "docs": 200, "openapi": 200, "voices": 401, "voices with key": 200, "job": 200}
    for route, status in (("/health", "200"), ("/v1/voices", "401"), ("/v1/voices", "200"), ("/v1/jobs/{id}/audio", "200")):
        assert metrics.counter_value("rvcfast_requests_total", route=route, status=status) == 1, metrics.render()
    assert metrics.counter_value("rvcfast_requests_total", route="other", status="200") == 0


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/rvc/health", "/rvc", "/health"),
        ("/rvc", "/rvc", "/"),
        ("/health", "", "/health"),
        ("/health", "/rvc", "/health"),  # a server that strips the prefix itself
        ("/rvcx/health", "/rvc", "/rvcx/health"),  # not under the prefix
        ("/a/b/v1/voices", "/a/b/", "/v1/voices"),
    ],
)
def test_app_path(path, root_path, expected) -> None:
    from rvcfast.serve.middleware import app_path

    assert app_path({"path": path, "root_path": root_path}) == expected


def test_a_non_ascii_api_key_matches_what_a_client_sends() -> None:
    from rvcfast.serve.middleware import ApiKey

    key = "clé-secrète"
    app = ApiKey(_ok_app, key=key)

    async def requests() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            out = []
            for headers in (
                [(b"x-api-key", key.encode("utf-8"))],
                [(b"authorization", b"Bearer " + key.encode("utf-8"))],
                [(b"x-api-key", key.encode("latin-1"))],  # other bytes: not the key
                [(b"x-api-key", b"cle-secrete")],
            ):
                out.append((await c.get("/metrics", headers=headers)).status_code)
            return out

    assert asyncio.run(requests()) == [200, 200, 401, 401]


# ---------------------------------------------------------------------- startup


def test_an_empty_voices_folder_is_a_usage_error(tmp_path, capsys) -> None:
    from rvcfast.cli import main
    from rvcfast.cli._common import EXIT_USAGE
    from rvcfast.serve import create_app

    empty = tmp_path / "voices"
    empty.mkdir()
    with pytest.raises(ParameterError, match="no .pth voice models found in"):
        create_app(voices=[str(empty)], device="cpu")
    assert main(["serve", str(empty), "--host", "127.0.0.1", "--port", "0", "--device", "cpu"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no .pth voice models found in" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- loudness


def test_loudness_is_refused_for_a_streamed_answer(server, client, folders) -> None:
    r = post(client, folders["clip"], loudness="-14", stream="true")
    assert r.status_code == 422, r.text
    assert r.json()["parameter"] == "loudness" and "whole output" in r.json()["error"]
    r = post(client, folders["clip"], loudness="loudest")
    assert r.status_code == 422 and r.json()["parameter"] == "loudness", r.text
    assert_alive(server, client)


def test_loudness_reports_what_it_could_not_do(server, client, folders) -> None:
    """The tiny voice's output is below BS.1770's -70 LUFS gate: left as it is, and the answer says so."""
    r = post(client, folders["clip"], loudness="match")
    assert r.status_code == 200, r.text
    warnings = json.loads(r.headers["x-rvcfast-warnings"])
    assert warnings == ["short.wav: loudness not normalised: the output is silent, its loudness cannot be measured"]
    job = post(client, folders["clip"], route="/v1/jobs", loudness="-20").json()
    deadline = time.monotonic() + 120
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["state"] == "done", job
    assert any("loudness not normalised" in w for w in job["warnings"]), job


# ---------------------------------------------------------------------- channels


def test_channels_each_answers_with_the_input_channels(server, client, folders) -> None:
    import numpy as np

    stereo = folders["root"] / "stereo.wav"
    stereo.write_bytes(wav_bytes(np.stack([tone(1.0, RATE, 220.0), tone(1.0, RATE, 330.0, amp=0.1)], axis=1), RATE))
    r = post(client, stereo, channels="each", format="flac", noise="false")
    assert r.status_code == 200, r.text
    audio, rate = read_audio(r.content)
    assert audio.ndim == 2 and audio.shape[1] == 2 and rate == 40000
    mixed, _ = read_audio(post(client, stereo).content)
    assert mixed.ndim == 1 and mixed.shape[0] == audio.shape[0]
    r = post(client, stereo, channels="each", stream="true")
    assert r.status_code == 422 and r.json()["parameter"] == "channels" and "not a stream" in r.json()["error"], r.text
    # a job converts the channels one after the other into the same answer
    job = post(client, stereo, route="/v1/jobs", channels="each", format="flac", noise="false").json()
    deadline = time.monotonic() + 120
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["state"] == "done", job
    result, rate = read_audio(client.get(f"/v1/jobs/{job['id']}/audio").content)
    assert rate == 40000 and result.shape == audio.shape
    np.testing.assert_allclose(result, audio, atol=1.01 / 32768)  # the same conversion (PCM_16), whole or as a job
    assert_alive(server, client)


def test_channels_each_counts_every_channel_against_the_input_limit(server, client, folders) -> None:
    """A small upload of 255 channels of 15 s is 3825 s of audio to convert with channels=each
    (19 GB decoded at 600 s): the input limits count every channel, read from the header first."""
    import numpy as np
    import soundfile as sf

    p = folders["root"] / "many.ogg"
    with sf.SoundFile(p, "w", 8000, 255, format="OGG", subtype="VORBIS") as f:
        f.write(np.zeros((8000 * 15, 255), np.float32))
    r = post(client, p, channels="each", format="wav")
    assert r.status_code == 413 and "255 channels of 15.0 s" in r.json()["error"], r.text
    r = post(client, p, format="wav")  # mixed down: 15 s
    assert r.status_code == 200, r.text
    r = post(client, p, route="/v1/jobs", channels="each")  # jobs take up to 3600 s (the default)
    assert r.status_code == 413 and "255 channels of 15.0 s" in r.json()["error"] and "3600" in r.json()["error"], r.text
    assert_alive(server, client)

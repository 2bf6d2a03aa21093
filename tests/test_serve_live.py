"""``WS /v1/live``: a live stream converted block by block by a real ``rvcfast serve`` process.

One server (127.0.0.1, tiny random models, an API key, one live stream at a time). The
answers are checked against :class:`rvcfast.RealtimeConverter` run in this process on the
same audio and settings (``noise=False``), the stream's length and latency against what the
ready message announced, and the refusals by their close codes and named fields.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401
from serve_helpers import API_KEY, running_server, voice_folder

import rvcfast

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")
ws_exceptions = pytest.importorskip("websockets.exceptions")

RATE = 16000
KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-live")
    voices = voice_folder(tiny_models, root / "voices")
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        # dave: carol's model (alice's, no index) exported to ONNX, run by onnxruntime
        rvcfast.export_onnx(tiny_models.voice, voices / "dave.onnx", noise=False, verify=False)
    with running_server([voices], tiny_models, root / "server.log", "--api-key", API_KEY, "--max-live", "1",
                        "--live-idle-seconds", "4", "--live-max-ahead-seconds", "1") as srv:
        yield srv


def _url(server, **query) -> str:
    fields = {"voice": "carol", "sample_rate": RATE, "block_seconds": 0.1, "context_seconds": 0.3, "noise": "false", **query}
    return server.url.replace("http://", "ws://") + "/v1/live?" + "&".join(f"{k}={v}" for k, v in fields.items())


def _connect(server, **query):
    return ws_client.connect(_url(server, **query), additional_headers=KEY, open_timeout=60, close_timeout=10)


def _refusal(server, **query) -> tuple[dict, int]:
    """The error message and close code of a stream the server refuses."""
    with _connect(server, **query) as ws:
        message = json.loads(ws.recv(timeout=120))
        with pytest.raises(ws_exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=30)
    return message, closed.value.rcvd.code


def _pieces(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    cuts = np.cumsum(sizes)
    return [p for p in np.split(x, cuts[cuts < x.shape[0]]) if p.shape[0]]


def test_a_stream_is_answered_piece_by_piece_as_the_library_converts_it(server, tiny_models):
    x = tone(1.3, RATE, 180.0).astype(np.float32)
    pieces = _pieces(x, [700, 1600, 333, 2400, 1] * 10)
    with _connect(server) as ws:
        ready = json.loads(ws.recv(timeout=120))
        assert ready["type"] == "ready" and ready["sample_rate"] == RATE and ready["encoding"] == "f32le"
        assert ready["block_size"] == RATE // 10
        out = []
        for p in pieces:
            ws.send(p.astype("<f4").tobytes())
            answer = np.frombuffer(ws.recv(timeout=120), dtype="<f4")
            assert answer.shape == p.shape  # every message answered by as many samples
            out.append(answer)
        ws.send("flush")
        tail = np.frombuffer(ws.recv(timeout=120), dtype="<f4")
    assert tail.shape[0] == ready["latency_samples"]
    got = np.concatenate([*out, tail])
    # the library, in this process, on the same voice (carol: alice's model without an index)
    rt = rvcfast.RealtimeConverter(tiny_models.converter(index=None), RATE, 0.1, 0.3, noise=False)
    assert rt.latency_samples == ready["latency_samples"]
    want = np.concatenate([rt.push(p) for p in pieces] + [rt.flush()])
    assert got.shape == want.shape and np.abs(want[ready["latency_samples"]:]).max() > 1e-5  # not silence
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_several_blocks_in_flight_are_answered_in_order(server, tiny_models):
    x = tone(0.8, RATE, 210.0).astype(np.float32)
    pieces = _pieces(x, [1600] * 8)  # 0.1 s each: 0.8 s in flight, within --live-max-ahead-seconds 1
    with _connect(server) as ws:
        ready = json.loads(ws.recv(timeout=120))
        for p in pieces:  # all sent before the first answer is read
            ws.send(p.astype("<f4").tobytes())
        out = [np.frombuffer(ws.recv(timeout=120), dtype="<f4") for _ in pieces]
        ws.send("flush")
        out.append(np.frombuffer(ws.recv(timeout=120), dtype="<f4"))
    assert [o.shape[0] for o in out] == [p.shape[0] for p in pieces] + [ready["latency_samples"]]
    rt = rvcfast.RealtimeConverter(tiny_models.converter(index=None), RATE, 0.1, 0.3, noise=False)
    want = np.concatenate([rt.push(p) for p in pieces] + [rt.flush()])
    np.testing.assert_allclose(np.concatenate(out), want, atol=1e-4 * np.abs(want).max())


def test_a_client_too_far_ahead_is_told_and_closed_1008(server):
    block = tone(0.1, RATE, 200.0).astype("<f4").tobytes()
    with _connect(server) as ws:
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        for _ in range(40):  # 4 s sent at once, --live-max-ahead-seconds 1 (was: read one by one, held by TCP)
            ws.send(block)
        answers = 0
        while isinstance(message := ws.recv(timeout=120), bytes):  # the blocks converted before it
            answers += 1
        error = json.loads(message)
        with pytest.raises(ws_exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1008 and error["type"] == "error"
    assert "ahead of the conversion" in error["error"] and "1 s" in error["error"]
    assert answers < 40


def test_a_22050_hz_stream_is_answered_sample_for_sample(server):
    # 10 ms is 220.5 samples at 22050 Hz: the durations are whole 20 ms spans (was: refused, "multiple of 100")
    x = tone(0.5, 22050, 200.0).astype("<f4")
    with _connect(server, sample_rate=22050, block_seconds=0.2, context_seconds=0.4) as ws:
        ready = json.loads(ws.recv(timeout=120))
        assert ready["type"] == "ready" and ready["sample_rate"] == 22050 and ready["block_size"] == 4410
        assert ready["latency_samples"] == 4410 + 882 + 441  # block + crossfade (0.04 s) + search (0.02 s)
        ws.send(x.tobytes())
        assert len(ws.recv(timeout=120)) == x.nbytes


def test_a_sample_rate_written_as_a_float_is_taken_as_the_library_takes_it(server):
    with _connect(server, sample_rate="22050.0", block_seconds=0.2, context_seconds=0.4) as ws:  # was: refused
        ready = json.loads(ws.recv(timeout=120))
        assert ready["type"] == "ready" and ready["sample_rate"] == 22050


def test_sixteen_bit_pcm_in_and_out(server):
    x = (tone(0.5, RATE, 200.0) * 32767).astype("<i2")
    with _connect(server, encoding="s16le") as ws:
        assert json.loads(ws.recv(timeout=120))["encoding"] == "s16le"
        ws.send(x.tobytes())
        answer = ws.recv(timeout=120)
    assert len(answer) == x.nbytes  # two bytes a sample, as many samples as sent


@pytest.mark.parametrize("encoding", ["f32le", "s16le"])
def test_a_stereo_stream_is_converted_as_its_mix_and_answered_on_both_channels(server, encoding):
    """``channels=2``: interleaved stereo in (a DAW, a virtual cable), the converted mix out on
    both channels. Before, a stereo stream could only be sent as if mono (twice as long, its
    channels alternating sample by sample)."""
    left = tone(0.6, RATE, 180.0)
    right = 0.5 * tone(0.6, RATE, 240.0)
    stereo = np.stack([left, right], axis=1)
    mono = stereo.mean(axis=1)
    if encoding == "s16le":
        stereo, mono = np.round(stereo * 32767) / 32768, None  # what the server reads back
    scale, dtype = (32767.0, "<i2") if encoding == "s16le" else (1.0, "<f4")
    wire = (stereo * scale).astype(dtype) if encoding == "s16le" else stereo.astype(dtype)
    with _connect(server, channels=2, encoding=encoding) as ws:
        ready = json.loads(ws.recv(timeout=120))
        assert ready["channels"] == 2 and ready["encoding"] == encoding
        ws.send(wire[:1000].tobytes())
        first = np.frombuffer(ws.recv(timeout=120), dtype=dtype).reshape(-1, 2)
        ws.send(wire[1000:].tobytes())
        rest = np.frombuffer(ws.recv(timeout=120), dtype=dtype).reshape(-1, 2)
    out = np.concatenate([first, rest])
    assert first.shape == (1000, 2) and out.shape == (wire.shape[0], 2)  # as many frames as sent
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    if mono is not None:  # the same answer as the mix sent as a mono stream
        with _connect(server) as ws:
            json.loads(ws.recv(timeout=120))
            ws.send(mono.astype("<f4")[:1000].tobytes())
            a = np.frombuffer(ws.recv(timeout=120), dtype="<f4")
            ws.send(mono.astype("<f4")[1000:].tobytes())
            b = np.frombuffer(ws.recv(timeout=120), dtype="<f4")
        np.testing.assert_allclose(out[:, 0], np.concatenate([a, b]), atol=1e-6)


def test_messages_are_not_compressed(server):
    # the client offers permessage-deflate; the server declines it (a compressed burst of
    # silence would be inflated into many large queued messages before the route reads one)
    with _connect(server) as ws:
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        assert "permessage-deflate" not in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ({"voice": "nobody"}, "voice", "unknown voice 'nobody'"),
        ({"format": "wav"}, "format", "describes an output file"),
        ({"source_id": "0" * 32}, "source_id", "describes an output file"),  # was accepted, and meant nothing
        ({"loudness": "match"}, "loudness", "cannot apply loudness"),  # was: no "parameter"
        ({"pitch": 2, "formant": "1.0,1.2", "clean": 0.5}, "formant", "cannot apply formant, clean"),
        ({"channels": "each"}, "channels", "one mono stream"),
        ({"block_seconds": 0.255}, "block_seconds", "not a multiple of 10 ms"),
        ({"pitch": 99}, "pitch", "pitch"),
        ({"encoding": "mp3"}, "encoding", "encoding must be one of"),
        ({"channels": 9}, "channels", "channels must be 1..8 interleaved channels"),
        ({"channels": 0}, "channels", "channels must be 1..8 interleaved channels"),
        # bounds on what one stream may make the server allocate (was: accepted; 1e9 Hz took 1.5 GB at once)
        ({"sample_rate": 1000000000}, "sample_rate", "8000..384000"),
        ({"block_seconds": 20, "crossfade_seconds": 0.05}, "block_seconds", "at most 10 s"),
        ({"context_seconds": 3000}, "context_seconds", "at most 30 s"),
        ({"sample_rate": "44100.5"}, "sample_rate", "whole number of Hz"),
        ({"sample_rate": "nan"}, "sample_rate", "whole number of Hz"),
        # a misspelt stream field is told the stream's fields (was: the output-file fields a stream refuses)
        ({"blok_seconds": 0.2}, "blok_seconds", "did you mean 'block_seconds'?"),
        ({"sampel_rate": 16000}, "sampel_rate", "did you mean 'sample_rate'?"),
    ],
)
def test_a_bad_field_is_named_and_the_stream_closed_1008(server, query, field, words):
    message, code = _refusal(server, **query)
    assert code == 1008 and message["type"] == "error" and words in message["error"]
    assert message["parameter"] == field


def test_bad_audio_messages_end_the_stream_and_the_server_carries_on(server):
    with _connect(server) as ws:
        json.loads(ws.recv(timeout=120))
        ws.send(b"\x00" * 7)  # not whole float32 samples
        message = json.loads(ws.recv(timeout=30))
        assert "not whole f32le samples" in message["error"]
        with pytest.raises(ws_exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008
    failures = _live_failures(server)
    with _connect(server) as ws:  # the one live slot is free again
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        ws.send(np.full(5, np.nan, dtype="<f4").tobytes())  # NaN samples: a bad message, not a failed conversion
        message = json.loads(ws.recv(timeout=60))
        assert message["type"] == "error" and "NaN" in message["error"]
        with pytest.raises(ws_exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008  # was 1011, counted as a failed conversion
    with _connect(server) as ws:
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        ws.send(np.full(4800, 1e20, dtype="<f4").tobytes())  # finite, but no PCM: was 1011, blamed on the F0 backend
        message = json.loads(ws.recv(timeout=60))
        assert message["type"] == "error" and "beyond any PCM format's full scale" in message["error"]
        with pytest.raises(ws_exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008
    assert _live_failures(server) == failures


def _live_failures(server) -> float:
    """``rvcfast_conversion_failures_total{stage="live"}`` of the server (0 before the first)."""
    import httpx

    text = httpx.get(f"{server.url}/metrics", headers=KEY, timeout=30).text
    lines = [line for line in text.splitlines() if line.startswith('rvcfast_conversion_failures_total{stage="live"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_the_api_key_is_needed_and_one_live_stream_is_the_limit(server):
    with pytest.raises(ws_exceptions.InvalidStatus) as refused:
        ws_client.connect(_url(server), open_timeout=60).close()
    assert refused.value.response.status_code == 403
    with _connect(server) as first:
        assert json.loads(first.recv(timeout=120))["type"] == "ready"
        message, code = _refusal(server)  # --max-live 1: the second waits for the first
        assert code == 1013 and "1 live stream(s) at once" in message["error"]
    with _connect(server) as again:  # the first has closed: its slot is free
        assert json.loads(again.recv(timeout=120))["type"] == "ready"


def test_a_browser_gives_the_api_key_as_a_subprotocol(server):
    """Browsers cannot set headers on a WebSocket: the key comes as the subprotocol
    rvcfast.key.<base64url>, beside rvcfast.live, which the server accepts (never the key)."""
    from rvcfast.serve.live import LIVE_PROTOCOL
    from rvcfast.serve.middleware import key_subprotocol

    offered = [LIVE_PROTOCOL, key_subprotocol(API_KEY)]
    with ws_client.connect(_url(server), subprotocols=offered, open_timeout=60, close_timeout=10) as ws:
        assert ws.subprotocol == LIVE_PROTOCOL
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        ws.send(tone(0.2, RATE, 200.0).astype("<f4").tobytes())
        assert len(ws.recv(timeout=120)) == 4 * int(0.2 * RATE)
    for wrong in (key_subprotocol(API_KEY + "x"), "rvcfast.key.!!not~base64", key_subprotocol("")):
        with pytest.raises(ws_exceptions.InvalidStatus) as refused:
            ws_client.connect(_url(server), subprotocols=[LIVE_PROTOCOL, wrong], open_timeout=60).close()
        assert refused.value.response.status_code == 403, wrong


def test_an_idle_stream_is_closed_and_frees_its_slot(server):
    import time

    with _connect(server) as ws:
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        t0 = time.monotonic()
        message = json.loads(ws.recv(timeout=60))  # sends nothing: closed after --live-idle-seconds 4
        assert "nothing received for 4 s" in message["error"] and time.monotonic() - t0 >= 3.5
        with pytest.raises(ws_exceptions.ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008
    with _connect(server) as ws:  # --max-live 1: the slot is free again
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"


def test_an_onnx_voice_is_served_like_its_pth(server, tiny_models):
    """A folder's .onnx export is a voice too: its answers equal the .pth voice's (noise off)."""
    pytest.importorskip("onnxruntime")
    import httpx
    from serve_helpers import read_audio, wav_bytes

    voices = httpx.get(f"{server.url}/v1/voices", headers=KEY, timeout=60).json()["voices"]
    dave = next(v for v in voices if v["id"] == "dave")
    assert dave["sample_rate"] == 40000 and dave["f0"] and dave["index"] is False
    clip = wav_bytes(tone(0.8, RATE, 190.0), RATE)
    answers = {}
    for voice in ("carol", "dave"):
        r = httpx.post(f"{server.url}/v1/convert", headers=KEY, timeout=120,
                       files={"file": ("a.wav", clip, "audio/wav")}, data={"voice": voice, "noise": "false"})
        assert r.status_code == 200, r.text
        answers[voice] = read_audio(r.content)[0]
    assert answers["carol"].shape == answers["dave"].shape and np.abs(answers["carol"]).max() > 0
    # 16-bit WAV answers: equal to within a few LSB of float32 rounding between torch and onnxruntime
    assert np.abs(answers["carol"] - answers["dave"]).max() <= 4 / 32768
    x = tone(0.6, RATE, 170.0).astype("<f4")
    out = {}
    for voice in ("carol", "dave"):
        with _connect(server, voice=voice) as ws:
            json.loads(ws.recv(timeout=120))
            ws.send(x.tobytes())
            out[voice] = np.frombuffer(ws.recv(timeout=120), dtype="<f4")
    np.testing.assert_allclose(out["dave"], out["carol"], atol=1e-4 * max(np.abs(out["carol"]).max(), 1e-6))

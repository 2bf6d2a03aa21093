"""The server's analysis cache (``--analysis-cache-mb``): the same audio sent again, to another
voice or with another key, skips F0 and the content encoder, and the answer is the library's.

A real ``rvcfast serve`` process on 127.0.0.1 with the tiny random models; the answers are
checked against :class:`rvcfast.Converter` on the same audio (``noise=false``), the reuse by
``rvcfast_analysis_reused_total`` in ``/metrics``.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401
from serve_helpers import API_KEY, read_audio, running_server, voice_folder, wav_bytes

import rvcfast

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

KEY = {"X-API-Key": API_KEY}
RATE = 16000


@pytest.fixture(scope="module")
def servers(tiny_models, tmp_path_factory):
    """One server with the cache (8 MB) and one without (0)."""
    root = tmp_path_factory.mktemp("serve-analysis")
    voices = voice_folder(tiny_models, root / "voices")
    with running_server([voices], tiny_models, root / "on.log", "--api-key", API_KEY, "--analysis-cache-mb", "8") as on:
        with running_server([voices], tiny_models, root / "off.log", "--api-key", API_KEY, "--analysis-cache-mb", "0") as off:
            yield on, off


def _reused(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", headers=KEY, timeout=30).text
    out = {"f0": 0.0, "features": 0.0}
    for line in text.splitlines():
        if line.startswith("rvcfast_analysis_reused_total{"):
            kind = line.split('kind="')[1].split('"')[0]
            out[kind] = float(line.split()[-1])
    return out


def _convert(server, clip: bytes, **fields) -> np.ndarray:
    data = {"noise": "false", **{k: str(v) for k, v in fields.items()}}
    r = httpx.post(f"{server.url}/v1/convert", headers=KEY, timeout=120, files={"file": ("a.wav", clip, "audio/wav")}, data=data)
    assert r.status_code == 200, r.text
    return read_audio(r.content)[0]


def test_the_same_audio_again_skips_f0_and_features_and_answers_as_the_library(servers, tiny_models):
    on, off = servers
    x = tone(0.9, RATE, 170.0)
    clip = wav_bytes(x, RATE)
    before = _reused(on)
    first = _convert(on, clip, voice="alice")
    assert _reused(on) == before  # new audio: computed
    # the same audio to another voice (alice's model without the index) and another key: both stages reused
    again = _convert(on, clip, voice="carol", pitch=3)
    after = _reused(on)
    assert after["f0"] == before["f0"] + 1 and after["features"] > before["features"]
    # and the answers are what the library gives for those settings
    conv = rvcfast.Converter.from_pretrained(tiny_models.voice, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe,
                                             device="cpu")
    audio16 = read_audio(clip)[0]
    want = conv.convert(audio16, RATE, pitch=3, noise=False).audio
    np.testing.assert_allclose(again, want, rtol=0, atol=1e-6 * np.abs(want).max() + 2 / 32768)
    assert np.abs(first - again).max() > 1e-4  # another key: another output
    # the server without the cache gives the same answers and reuses nothing
    np.testing.assert_allclose(_convert(off, clip, voice="carol", pitch=3), again, rtol=0, atol=2 / 32768)
    _convert(off, clip, voice="alice")
    assert _reused(off) == {"f0": 0.0, "features": 0.0}


def test_other_audio_is_not_taken_for_audio_seen_before(servers):
    on, _ = servers
    a = wav_bytes(tone(0.7, RATE, 200.0), RATE)
    b = wav_bytes(tone(0.7, RATE, 200.0) * 0.5, RATE)  # same length and pitch, other samples
    _convert(on, a, voice="alice")
    before = _reused(on)
    _convert(on, b, voice="alice")
    assert _reused(on) == before

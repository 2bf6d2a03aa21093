"""Containers libsndfile cannot read (m4a, mp4...) decode through PyAV; mp3 output; the install hint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.audio import decode
from rvcfast.errors import AudioError

av = pytest.importorskip("av", reason="PyAV (the av extra) is not installed")


def _tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * np.minimum(1.0, t * 4)
    x[: rate // 10] = 0
    x[rate // 10 : rate // 10 + 40] = 0.8  # a click: marks where the audio starts
    return x.astype(np.float32)


def write_aac(path: Path, audio: np.ndarray, rate: int, channels: int = 1, video: bool = False) -> None:
    """Encode ``audio`` as AAC in an mp4-family container with PyAV (optionally beside a video stream)."""
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as out:
        if video:
            vs = out.add_stream("mpeg4", rate=10)
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        st = out.add_stream("aac", rate=rate, layout=layout)
        data = np.stack([audio] * channels)
        for i in range(0, audio.shape[0], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i : i + 1024]), format="fltp", layout=layout)
            fr.sample_rate, fr.pts = rate, i
            for pkt in st.encode(fr):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
        if video:
            for k in range(int(audio.shape[0] / rate * 10)):
                frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
                frame.pts = k
                for pkt in vs.encode(frame):
                    out.mux(pkt)
            for pkt in vs.encode(None):
                out.mux(pkt)


@pytest.mark.parametrize("ext,video", [(".m4a", False), (".mp4", False), (".mp4", True)])
def test_aac_containers_decode_aligned_and_at_length(tmp_path: Path, ext: str, video: bool) -> None:
    x = _tone(44100, 2.0)
    p = tmp_path / f"a{ext}"
    write_aac(p, x, 44100, channels=2, video=video)
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(p))  # libsndfile cannot read it
    d = decode(p)
    assert (d.source_rate, d.channels) == (44100, 2)
    assert d.audio.shape[0] == pytest.approx(2.0 * 16000, abs=2)
    ref = rvcfast.load_audio_16k(x, 44100)
    # the encoder's priming samples are dropped: the click is where it was
    assert abs(int(np.argmax(np.abs(d.audio))) - int(np.argmax(np.abs(ref)))) <= 2
    err = d.audio[3200:-3200] - ref[3200:-3200]
    assert 10 * np.log10(np.sum(ref[3200:-3200] ** 2) / np.sum(err**2)) > 20  # lossy, but the same signal


def test_m4a_and_mp4_convert_in_a_folder_batch(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    write_aac(src / "phone.m4a", _tone(48000, 1.0), 48000)
    write_aac(src / "clip.mp4", _tone(44100, 1.0), 44100, video=True)
    sf.write(src / "plain.wav", _tone(16000, 1.0), 16000)
    results = tiny_converter.convert_batch([src], tmp_path / "out", noise=False)
    assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.wav", "phone.wav", "plain.wav"]


def test_missing_extra_gives_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.m4a"
    write_aac(p, _tone(44100, 0.5), 44100)
    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails
    with pytest.raises(AudioError, match=r'pip install "rvcfast\[av\]"'):
        decode(p)


def test_not_audio_at_all_is_named(tmp_path: Path) -> None:
    p = tmp_path / "notes.m4a"
    p.write_text("not audio")
    with pytest.raises(AudioError, match="notes.m4a: cannot decode audio"):
        decode(p)


def test_mp3_output_at_an_mp3_rate(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", _tone(16000, 1.0), 16000)
    res = tiny_converter.convert_batch([tmp_path / "a.wav"], tmp_path / "out", format="mp3", noise=False)[0]
    assert res.ok, res.error
    info = sf.info(str(tmp_path / "out" / "a.mp3"))
    assert info.samplerate == 44100  # the 40 kHz model output, written at the nearest MP3 rate
    assert info.frames == pytest.approx(44100, rel=0.05)  # 1 s of input

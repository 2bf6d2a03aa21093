"""Input decoding of odd but valid files and arrays: the whole audio, no false warnings, clear errors.

Expectations are independent of rvcfast: the number of samples that were encoded (a
lossy codec adds at most a few frames of delay and padding), the PCM convention for
integer arrays (full scale is ``2**(bits-1)``, unsigned PCM is centred on it), and
libsndfile's own reading of an intact file.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvcfast.audio import decode
from rvcfast.errors import AudioError, ParameterError


def _tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.3 * np.sin(2 * np.pi * 220 * t)


def _no_av(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails


# ------------------------------------------------------------------ arrays


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_unsigned_integer_arrays_are_centred_pcm(dtype) -> None:
    bits = np.iinfo(dtype).bits
    half = 2 ** (bits - 1)
    x = _tone(16000, 0.5)
    pcm = np.round(x * (half - 1) + half).astype(dtype)
    expected = (pcm.astype(np.float64) - half) / half  # the PCM convention, no DC, full level
    d = decode(pcm, 16000)
    np.testing.assert_allclose(d.audio, expected, rtol=0, atol=1e-12)
    assert not any("DC offset" in w for w in d.warnings), d.warnings


def test_signed_integer_arrays_use_full_scale() -> None:
    x = np.array([-32768, 0, 16384, 32767] * 100, dtype=np.int16)
    np.testing.assert_array_equal(decode(x, 16000).audio, x / 32768.0)


@pytest.mark.parametrize("shape", [(16, 8000), (3, 500)])
def test_channels_first_arrays_are_refused(shape) -> None:
    # more channels than samples: a [channels, samples] array, never a [samples, channels] one
    with pytest.raises(AudioError, match="channels-first"):
        decode(np.zeros(shape), 16000, name="take.npy")


def test_an_array_without_channels_is_refused() -> None:
    with pytest.raises(AudioError, match="no channels"):
        decode(np.zeros((1600, 0)), 16000)


@pytest.mark.parametrize("rate", [44100.5, float("nan"), "fast"])
def test_a_sample_rate_that_is_not_whole_is_refused(rate) -> None:
    with pytest.raises(ParameterError, match="sample_rate must be a whole number"):
        decode(_tone(16000, 0.1), rate)


def test_a_whole_float_sample_rate_is_accepted() -> None:
    x = _tone(16000, 0.1)
    np.testing.assert_array_equal(decode(x, 16000.0).audio, decode(x, 16000).audio)


def test_a_fractional_sample_rate_for_a_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    sf.write(p, _tone(16000, 0.1), 16000)
    with pytest.raises(ParameterError, match="a.wav: sample_rate"):
        decode(p, float("nan"))


# ------------------------------------------------------------------ WAV headers without sizes


def _wav_with_sizes(path: Path, riff: int, data: int) -> np.ndarray:
    sf.write(path, _tone(16000, 2.0), 16000, subtype="PCM_16")
    pcm, _ = sf.read(str(path), dtype="float64")  # the intact file, as libsndfile reads it
    raw = bytearray(path.read_bytes())
    at = raw.find(b"data")
    raw[4:8] = struct.pack("<I", riff)
    raw[at + 4 : at + 8] = struct.pack("<I", data)
    path.write_bytes(bytes(raw))
    return pcm


def test_a_wav_written_to_a_pipe_is_not_called_truncated(tmp_path: Path) -> None:
    # a writer that cannot seek back leaves 0xFFFFFFFF ("unknown") in the size fields
    p = tmp_path / "piped.wav"
    pcm = _wav_with_sizes(p, 0xFFFFFFFF, 0xFFFFFFFF)
    d = decode(p)
    assert d.warnings == []
    np.testing.assert_allclose(d.audio, pcm, rtol=0, atol=1e-12)


def test_an_unfinished_recording_is_read_whole(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV (the av extra) is not installed")
    p = tmp_path / "unfinished.wav"
    pcm = _wav_with_sizes(p, 0, 0)  # the recorder never wrote the sizes: libsndfile sees 0 frames
    d = decode(p)
    assert d.audio.shape == pcm.shape
    np.testing.assert_allclose(d.audio, pcm, rtol=0, atol=1e-6)


def test_an_unfinished_recording_without_pyav_names_the_cause(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "unfinished.wav"
    _wav_with_sizes(p, 0, 0)
    _no_av(monkeypatch)
    with pytest.raises(AudioError) as info:
        decode(p)
    text = str(info.value)
    assert "unfinished.wav" in text and "holds no audio" in text and 'pip install "rvcfast[av]"' in text


# ------------------------------------------------------------------ lengths that are only estimates


def _vbr_mp3_without_length_header(path: Path, rate: int = 44100) -> int:
    """A 10 s VBR MP3 whose Xing header is blanked out (as some encoders write them); returns its samples."""
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    rng = np.random.default_rng(0)
    x = np.concatenate([0.5 * rng.standard_normal(rate * 5), 1e-4 * rng.standard_normal(rate * 5)])
    sf.write(path, x, rate, format="MP3", bitrate_mode="VARIABLE", compression_level=0.9)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"Xing")
    assert 0 <= at < 200, "expected a Xing header in the first frame"
    raw[at : at + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(raw))
    return x.shape[0]


def test_a_vbr_mp3_without_a_length_header_is_read_whole(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="PyAV (the av extra) is not installed")
    p = tmp_path / "podcast.mp3"
    n = _vbr_mp3_without_length_header(p)
    assert sf.info(str(p)).frames < n / 2  # libsndfile's estimate: what was decoded before
    d = decode(p)
    # the whole 10 s, plus at most the codec's delay, padding and the blanked frame (< 0.1 s)
    assert 10.0 <= d.seconds <= 10.1
    assert d.warnings == []


def test_a_vbr_mp3_without_a_length_header_and_pyav_is_an_error(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "podcast.mp3"
    _vbr_mp3_without_length_header(p)
    _no_av(monkeypatch)
    with pytest.raises(AudioError) as info:
        decode(p)
    text = str(info.value)
    assert "podcast.mp3" in text and "without a length header" in text and 'pip install "rvcfast[av]"' in text


def test_mp3_length_headers_and_id3_tags_keep_libsndfiles_reading(tmp_path: Path) -> None:
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    x = _tone(44100, 1.0)
    p = tmp_path / "plain.mp3"
    sf.write(p, x, 44100, format="MP3")
    tagged = tmp_path / "tagged.mp3"
    tag = b"ID3\x03\x00\x00" + bytes([0, 0, 0x10, 0]) + b"\0" * 0x800  # a 2 KiB ID3v2 tag
    tagged.write_bytes(tag + p.read_bytes())
    ref, _ = sf.read(str(p), dtype="float64")
    for path in (p, tagged):
        d = decode(path)
        assert d.warnings == [] and d.audio.shape == (16000,)
        np.testing.assert_array_equal(d.audio, decode(ref, 44100).audio)


def _write_adts(path: Path, x: np.ndarray, rate: int) -> None:
    av = pytest.importorskip("av", reason="PyAV (the av extra) is not installed")
    x = x.astype(np.float32)
    with av.open(str(path), "w", format="adts") as out:
        st = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(0, x.shape[0], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, i : i + 1024]), format="flt", layout="mono")
            fr.sample_rate, fr.pts = rate, i
            for pkt in st.encode(fr):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)


@pytest.mark.parametrize("loud_first", [True, False])
def test_raw_aac_is_read_whole_whatever_its_estimated_length(tmp_path: Path, loud_first: bool) -> None:
    # a raw AAC stream has no length: FFmpeg estimates one from the first frames' bitrate
    # (half the real length when they are loud, ten times it when they are quiet)
    rate = 44100
    rng = np.random.default_rng(1)
    loud, quiet = 0.5 * rng.standard_normal(rate * 5), np.zeros(rate * 5)
    x = np.concatenate([loud, quiet] if loud_first else [quiet, loud])
    p = tmp_path / "voice.aac"
    _write_adts(p, x, rate)
    d = decode(p)
    assert 10.0 <= d.seconds <= 10.1  # all of it, plus at most the encoder's priming and padding
    assert d.warnings == []


def test_audio_info_of_a_stream_without_a_length_is_zero_seconds(tmp_path: Path) -> None:
    from rvcfast.audio import audio_info

    p = tmp_path / "stream.flac"
    sf.write(p, _tone(22050, 1.0), 22050, format="FLAC", subtype="PCM_16")
    raw = bytearray(p.read_bytes())
    # STREAMINFO's total samples (the low 36 bits of bytes 18..25) = 0: "unknown", as a streaming encoder writes
    field = int.from_bytes(raw[18:26], "big") & ~((1 << 36) - 1)
    raw[18:26] = field.to_bytes(8, "big")
    p.write_bytes(bytes(raw))
    assert audio_info(p) == (0.0, 22050, 1)  # not 2**62 samples (millions of years for a progress bar)
    sf.write(tmp_path / "plain.wav", _tone(22050, 1.0), 22050)
    assert audio_info(tmp_path / "plain.wav") == (1.0, 22050, 1)

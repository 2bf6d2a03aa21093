"""Output formats, from an audio engineer's walkthrough of every format rvcfast writes.

* m4a (AAC and ALAC) holds exactly the samples written: the edit list that drops AAC's
  priming samples was in milliseconds, so a length that is not a whole number of
  milliseconds came back up to a millisecond short or long, and an output under 1 ms held
  no audio at all (unreadable, never a finished output for ``skip_existing``).
* ogg with 6 channels (Vorbis) or 6 to 8 (Opus) is refused: the encoder takes the last
  channel for the LFE and low-passes the voice out of it.
* an m4a write that fails on the disk names the error, not the removed temporary file.
* loudness of an output holding NaN is reported as such, not as silence.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvcfast.errors import AudioError
from rvcfast.loudness import normalize_loudness
from rvcfast.writing import finished_output, write_audio_atomic

av = pytest.importorskip("av")


def _sine(n: int, channels: int = 1, rate: int = 48000) -> np.ndarray:
    t = np.arange(n) / rate
    cols = [0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]
    x = np.stack(cols, axis=1) if channels > 1 else cols[0]
    return x.astype(np.float32)


def _m4a_samples(path: Path) -> int:
    """Samples of the file's audio track as its container states them (duration in the track's time base)."""
    with av.open(str(path)) as container:
        s = container.streams.audio[0]
        return int(s.duration * s.time_base * s.rate)


@pytest.mark.parametrize("subtype", ["AAC", "ALAC"])
@pytest.mark.parametrize("rate", [44100, 48000, 96000])
def test_m4a_holds_exactly_the_samples_written(tmp_path: Path, subtype: str, rate: int) -> None:
    # 1023 at 48 kHz came back as 1008, 2049 as 2064, 10 samples as none at all
    for n in (1, 10, 1023, 2049, 44101):
        p = tmp_path / f"a{n}.m4a"
        write_audio_atomic(p, _sine(n, rate=rate), rate, format="m4a", subtype=subtype)
        assert _m4a_samples(p) == n, (subtype, rate, n)
        assert finished_output(p)


def test_m4a_decodes_to_the_written_length_and_signal(tmp_path: Path) -> None:
    from rvcfast.audio import decode

    rate, n = 48000, 48000 + 371  # not a whole number of milliseconds
    x = _sine(n, 2, rate)
    p = tmp_path / "st.m4a"
    write_audio_atomic(p, x, rate, format="m4a", bitrate=256)
    decoded = decode(str(p), keep_channels=True)  # rvcfast's reader: 16 kHz, trimmed to the container's length
    assert decoded.source_rate == rate and decoded.audio.shape == (round(n * 16000 / rate), 2)
    with av.open(str(p)) as c:  # aligned: the priming samples are dropped, not kept or over-trimmed
        y = np.concatenate([f.to_ndarray().T for f in c.decode(audio=0)])[:n]  # AAC decodes planar: [channels, samples]
    err = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2))
    assert err < 0.1


def test_server_m4a_answer_holds_the_samples_converted(tmp_path: Path) -> None:
    from rvcfast.serve.encode import encode_audio

    data, rate = encode_audio(_sine(1001), 48000, "m4a")
    assert rate == 48000
    p = tmp_path / "answer.m4a"
    p.write_bytes(data)
    assert _m4a_samples(p) == 1001  # was 960 (20 ms)


@pytest.mark.parametrize(("subtype", "channels"), [(None, 6), ("VORBIS", 6), ("OPUS", 6), ("OPUS", 7), ("OPUS", 8)])
def test_ogg_channel_counts_with_an_lfe_channel_are_refused(tmp_path: Path, subtype: str | None, channels: int) -> None:
    p = tmp_path / "six.ogg"
    with pytest.raises(AudioError) as info:
        write_audio_atomic(p, _sine(4800, channels), 48000, format="ogg", subtype=subtype)
    text = str(info.value)
    assert str(p) in text and "LFE" in text and f"channel {channels}" in text and "wav, flac or m4a" in text
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file


def test_server_refuses_an_ogg_with_an_lfe_channel() -> None:
    from rvcfast.serve.encode import encode_audio

    with pytest.raises(AudioError, match="LFE"):
        encode_audio(_sine(4800, 6), 48000, "ogg", "OPUS")


@pytest.mark.parametrize(("subtype", "channels"), [("VORBIS", 5), ("VORBIS", 8), ("OPUS", 5), ("OPUS", 9)])
def test_ogg_channel_counts_without_an_lfe_keep_every_channel(tmp_path: Path, subtype: str, channels: int) -> None:
    rate = 48000
    x = _sine(rate, channels, rate)
    p = tmp_path / "many.ogg"
    write_audio_atomic(p, x, rate, format="ogg", subtype=subtype)
    y, sr = sf.read(p, dtype="float32", always_2d=True)
    assert sr == rate and y.shape == x.shape
    err = np.sqrt(np.mean((y - x) ** 2, axis=0)) / np.sqrt(np.mean(x**2, axis=0))
    assert err.max() < 0.35, err  # a low-passed LFE channel is ~0.8


def test_m4a_on_a_full_disk_names_the_error_not_the_temporary_file(tmp_path: Path) -> None:
    # a file size limit stands in for a full disk (EFBIG instead of ENOSPC): FFmpeg's error named the
    # temporary file, which is removed; the message now is the system's error alone, as for wav or flac
    script = textwrap.dedent(
        f"""
        import errno, resource, signal
        import numpy as np
        from rvcfast.writing import write_audio_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        x = (np.random.default_rng(0).standard_normal(48000 * 2) * 0.2).astype(np.float32)
        try:
            write_audio_atomic({str(tmp_path / 'big.m4a')!r}, x, 48000, format="m4a", subtype="ALAC")
        except OSError as exc:
            print("ERRNO", exc.errno == errno.EFBIG, "FILENAME", exc.filename, "TEXT", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "ERRNO True FILENAME None" in out.stdout, out.stdout + out.stderr
    assert ".part" not in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_loudness_of_nan_output_is_not_called_silent() -> None:
    x = np.full(16000, np.nan, dtype=np.float32)
    out, warnings = normalize_loudness(x, 16000, -20.0, "take.wav")
    assert len(warnings) == 1 and "NaN" in warnings[0] and "silent" not in warnings[0]
    assert warnings[0].startswith("take.wav: ")
    assert out.shape == x.shape


def test_subtype_lists_offer_only_what_can_be_written() -> None:
    from rvcfast.errors import ParameterError
    from rvcfast.writing import check_write_format, valid_subtypes

    assert set(valid_subtypes("mp3")) == {"MPEG_LAYER_III"}  # Layer I/II: libsndfile reads them only
    with pytest.raises(ParameterError) as info:
        check_write_format("mp3", "PCM_16", 44100)
    assert "MPEG_LAYER_III" in str(info.value) and "MPEG_LAYER_I," not in str(info.value)
    for fmt in ("wav", "flac", "ogg", "mp3"):
        for sub in valid_subtypes(fmt):  # every subtype listed is one that can be written
            rate = 48000 if sub in ("OPUS", "MPEG_LAYER_III") else 8000
            check_write_format(fmt, sub, rate)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_streamed_pcm_refuses_nan_as_the_whole_file_does(subtype: str) -> None:
    from rvcfast.serve.encode import encode_audio, pcm_bytes

    audio = np.full(800, 0.1, dtype=np.float32)
    audio[100:300] = np.nan  # a diverging model: the whole file is refused (422)...
    with pytest.raises(AudioError, match="NaN"):
        encode_audio(audio, 16000, "wav", subtype)
    with pytest.raises(AudioError, match="200 NaN or infinite samples of 800"):  # ...and was streamed as full scale
        pcm_bytes(audio, 16000, subtype)
    assert len(pcm_bytes(np.full(800, 0.1, np.float32), 16000, subtype)) == 800 * {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[subtype]


def test_a_stream_whose_first_piece_holds_nan_is_answered_422(tmp_path: Path, monkeypatch) -> None:
    """A stream sent the WAV header and a 200 status, then broke off when the first piece held
    NaN (a diverging model); a whole-file answer is a 422. The first piece is now checked
    before the status is sent."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from helpers import build_tiny_models, write_tone
    from serve_helpers import run_in_process

    from rvcfast.engine import Engine
    from rvcfast.serve import create_app

    models = build_tiny_models(tmp_path / "models")

    def diverging(self, prep, params=None, **kwargs):
        yield np.full(4000, np.nan, dtype=np.float32)

    monkeypatch.setattr(Engine, "stream", diverging)
    wav = write_tone(tmp_path / "in", seconds=0.5)
    app = create_app(voices=[models.voice], encoder=models.encoder, f0_weights=models.rmvpe, device="cpu", threads=1,
                     jobs_dir=tmp_path / "spool")
    state = app.state.rvcfast

    async def body(client):
        return await client.post("/v1/convert", params={"voice": models.voice.stem, "stream": "true"},
                                 content=wav.read_bytes(), headers={"content-type": "audio/wav"})

    try:
        r = run_in_process(app, body, 120)
    finally:
        state.close()
    assert r.status_code == 422, (r.status_code, r.content[:200])
    assert "NaN or infinite samples" in r.json()["error"]
    assert state.admission.count == 0

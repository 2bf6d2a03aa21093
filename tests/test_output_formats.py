"""Output formats: m4a (AAC/ALAC through PyAV) and the ``bitrate`` of lossy outputs.

m4a files are decoded back through FFmpeg (PyAV) and compared with what was written: rate,
channels, exact length (the encoder's 1024 priming samples must be covered by the file's
edit list) and the signal itself. Bitrates are checked on the bytes written: a constant
bitrate of ``k`` kbit/s gives ``k * seconds / 8`` kB plus a container's small overhead. The
batch, command line, server and Ray paths use the tiny random models (``tests/helpers.py``).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from helpers import no_loading_fixture, one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast import writing
from rvcfast.cli import main
from rvcfast.errors import AudioError, ParameterError
from rvcfast.writing import (
    check_bitrate,
    check_write_format,
    finished_output,
    recorded_source,
    source_id,
    write_audio_atomic,
    written_rate,
)

av = pytest.importorskip("av")


def sine(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(round(seconds * rate))) / rate)).astype(np.float32)


def noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """White noise: every encoder spends its whole bitrate on it (a sine would need far less)."""
    x = 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def decode(path: Path | bytes) -> tuple[np.ndarray, int, dict[str, str]]:
    """The samples ``[n, channels]`` of the first audio stream, its rate and the file's tags.

    As a player does: the decoder drops the priming samples the edit list skips, and the
    output ends at the stream's duration (the edit list's length), before the encoder's padding.
    """
    with av.open(io.BytesIO(path) if isinstance(path, bytes) else str(path)) as container:
        stream = container.streams.audio[0]
        # packed doubles (PyAV 18 cannot hand out planar frames of 8 channels: it sees 9 planes)
        to_packed = av.AudioResampler(format="dbl", layout=stream.layout, rate=stream.rate)
        frames = [out for f in container.decode(stream) for out in to_packed.resample(f)] + list(to_packed.resample(None))
        y = np.concatenate([f.to_ndarray().reshape(f.samples, -1) for f in frames])
        return y[: int(round(stream.duration * stream.time_base * stream.rate))], int(stream.rate), dict(container.metadata)


def snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((actual - reference) ** 2)))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------ m4a on disk


def test_m4a_round_trip_has_the_aac_rate_the_exact_length_and_the_signal(tmp_path: Path) -> None:
    # 40 kHz (an RVC voice's rate) is no AAC rate: written at the nearest, 44.1 kHz, as mp3 is
    x = sine(1.0, 40000)
    path = write_audio_atomic(tmp_path / "a.m4a", x, 40000)
    y, rate, _ = decode(path)
    assert rate == 44100 == written_rate("m4a", None, 40000)
    assert y.shape == (44100, 1)  # exact: without the edit list the 1024 priming samples (and padding) are decoded too
    # the signal, sample-aligned (a 1024-sample shift would leave it below 0 dB at 440 Hz); measured ~36 dB
    # away from the ends, where the tone's abrupt start and stop ring through the resampler and AAC's windows
    middle = slice(2048, -2048)
    assert snr_db(sine(1.0, 44100).astype(np.float64)[middle], y[middle, 0]) > 25
    assert leftovers(tmp_path) == ["a.m4a"]


def test_m4a_holds_up_to_eight_channels_each_its_own(tmp_path: Path) -> None:
    # a different tone per channel: each must come back in its place. Surround layouts with an LFE
    # channel (5.1, 7.1) low-pass their 4th channel, which came back silent.
    rate, freqs = 44100, [330 + 110 * k for k in range(8)]
    x = np.stack([sine(0.5, rate, f, 0.3) for f in freqs], axis=1)
    path = write_audio_atomic(tmp_path / "eight.m4a", x, rate, bitrate=320)
    y, _, _ = decode(path)
    assert y.shape == x.shape
    corr = np.corrcoef(x.T, y.T)[:8, 8:]  # input channel i against output channel j
    # measured 0.94..0.99 at 40 kbit/s a channel; an erased (LFE) or swapped channel gives ~0
    assert np.all(np.diag(corr) > 0.8), np.diag(corr)
    assert np.all(np.abs(corr - np.diag(np.diag(corr))) < 0.2)  # no channel swapped or mixed
    with pytest.raises(AudioError, match="at most 8 channels"):
        write_audio_atomic(tmp_path / "nine.m4a", np.zeros((4410, 9), np.float32), rate)
    assert leftovers(tmp_path) == ["eight.m4a"]


def test_m4a_alac_is_lossless_at_the_voice_rate(tmp_path: Path) -> None:
    x = np.round(sine(0.5, 40000, 300.0, 0.7) * 32767) / 32767  # on the 16-bit grid: ALAC gives it back exactly
    path = write_audio_atomic(tmp_path / "a.m4a", x, 40000, subtype="alac")
    y, rate, _ = decode(path)
    assert rate == 40000 == written_rate("m4a", "ALAC", 40000)  # ALAC takes any rate: not resampled
    assert y.shape == (len(x), 1)
    np.testing.assert_allclose(y[:, 0], x, atol=1.01 / 32767)  # 16-bit steps of 1/32767 read back as 1/32768
    with pytest.raises(ParameterError, match="bitrate"):
        write_audio_atomic(tmp_path / "b.m4a", x, 40000, subtype="ALAC", bitrate=128)


def test_m4a_records_its_source_and_resume_reads_it(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.2), 16000)
    out = write_audio_atomic(tmp_path / "out.m4a", sine(0.3, 44100), 44100, source=src)
    assert decode(out)[2]["comment"] == f"rvcfast voice conversion; source {source_id(src)}"
    assert recorded_source(out) == source_id(src)
    assert finished_output(out)
    plain = write_audio_atomic(tmp_path / "plain.m4a", sine(0.3, 44100), 44100)
    assert recorded_source(plain) is None and finished_output(plain)
    junk = tmp_path / "junk.m4a"
    junk.write_bytes(b"\0\0\0\x20ftypM4A " + b"x" * 200)  # looks like an m4a, holds nothing
    assert recorded_source(junk) is None and not finished_output(junk)


def test_m4a_refuses_what_it_cannot_write_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = sine(0.2, 44100)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        write_audio_atomic(tmp_path / "nan.m4a", bad, 44100)
    with pytest.raises(AudioError, match="no audio"):
        write_audio_atomic(tmp_path / "empty.m4a", np.zeros(0, np.float32), 44100)
    with pytest.raises(ParameterError, match="subtype 'MP3' is not valid for m4a"):
        write_audio_atomic(tmp_path / "x.m4a", sine(0.2, 44100), 44100, subtype="MP3")
    assert leftovers(tmp_path) == []

    # an encoder failing half-way: the old file stays, no temporary file is left
    target = write_audio_atomic(tmp_path / "keep.m4a", sine(0.2, 44100), 44100)
    before = target.read_bytes()
    import rvcfast.av_encode

    real = rvcfast.av_encode.write_m4a

    def half_then_fail(file, audio, *args, **kwargs):
        real(file, audio[: len(audio) // 2], *args, **kwargs)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(rvcfast.av_encode, "write_m4a", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        write_audio_atomic(target, sine(1.0, 44100), 44100)
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == ["keep.m4a"]


def test_the_aac_rates() -> None:
    # FFmpeg's own list for its AAC encoder, which check_write_format holds to
    assert sorted(av.codec.Codec("aac", "w").audio_rates) == sorted(writing.M4A_RATES)
    assert [written_rate("m4a", None, r) for r in (8000, 32000, 40000, 48000, 192000)] == [8000, 32000, 44100, 48000, 96000]
    with pytest.raises(ParameterError, match="sample_rate 40000 Hz"):
        check_write_format("m4a", None, 40000)
    from rvcfast.params import ConversionParams

    ConversionParams().check_output("m4a", None, 40000)  # the voice's 40 kHz: written at 44.1 kHz


# ------------------------------------------------------------------------------ bitrate


def _kbps(path: Path, seconds: float) -> float:
    return path.stat().st_size * 8 / seconds / 1000


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "low", "high"),
    [("mp3", None, 44100, 64, 192), ("ogg", "OPUS", 48000, 32, 128), ("m4a", None, 44100, 48, 160)],
)
def test_bitrate_sets_the_size_of_the_file(tmp_path: Path, fmt: str, subtype: str | None, rate: int, low: int, high: int) -> None:
    # 4 s of noise. Measured: mp3 (constant bitrate) within 2 %, Opus (libsndfile leaves its VBR on)
    # and AAC within 5 % above the target (headers, the encoder's first and last frames, the index);
    # 10 % either way is far from the other bitrate (a factor of 3) and from the defaults (~70..80).
    seconds = 4.0
    x = noise(seconds, rate, seed=1)
    sizes = {}
    for k in (low, high):
        p = write_audio_atomic(tmp_path / f"{k}.{fmt}", x, rate, subtype=subtype, bitrate=k)
        sizes[k] = _kbps(p, seconds)
        assert k * 0.9 <= sizes[k] <= k * 1.1, (fmt, k, sizes[k])
    default = _kbps(write_audio_atomic(tmp_path / f"default.{fmt}", x, rate, subtype=subtype), seconds)
    assert low * 1.1 < default < high * 0.9  # without a bitrate the encoder's own default, as before


def test_mp3_bitrate_at_a_low_rate_and_in_stereo(tmp_path: Path) -> None:
    # MPEG-2 (22.05 kHz) has its own bitrates; the bitrate is the total of both channels
    p = write_audio_atomic(tmp_path / "a.mp3", noise(4.0, 22050, 2), 22050, bitrate=32)
    assert 32 * 0.9 <= _kbps(p, 4.0) <= 32 * 1.1
    assert sf.info(str(p)).channels == 2 and sf.info(str(p)).samplerate == 22050


@pytest.mark.parametrize(
    ("fmt", "subtype", "bitrate", "rate", "words"),
    [
        ("wav", None, 128, None, ("wav takes none",)),
        ("flac", None, 128, None, ("flac takes none",)),
        ("m4a", "ALAC", 128, None, ("ALAC takes none",)),
        ("ogg", None, 128, None, ("VORBIS", "OPUS")),  # libsndfile encodes Vorbis at a quality
        ("mp3", None, 0, None, ("bitrate 0", "mp3", "320")),
        ("mp3", None, -128, None, ("bitrate -128", "mp3")),
        ("mp3", None, 100, None, ("bitrate 100", "96, 112")),  # no MPEG bitrate (LAME would write 96)
        ("mp3", None, 192, 22050, ("bitrate 192", "22050 Hz", "160")),  # MPEG-2 tops out at 160
        ("mp3", None, 100000, None, ("bitrate 100000",)),
        ("ogg", "OPUS", 5, None, ("bitrate 5", "Opus", "6..256")),
        ("ogg", "OPUS", 300, None, ("bitrate 300", "6..256")),
        ("m4a", None, 8, None, ("bitrate 8", "AAC", "16..320")),
        ("m4a", None, 400, None, ("bitrate 400", "AAC", "16..320")),
        ("m4a", None, 128.0, None, ("whole number",)),
        ("m4a", None, "128", None, ("whole number",)),
        ("m4a", None, True, None, ("whole number",)),
    ],
)
def test_bad_bitrates_are_refused_naming_the_bitrate(fmt, subtype, bitrate, rate, words) -> None:
    with pytest.raises(ParameterError) as info:
        check_bitrate(fmt, subtype, bitrate, rate)
    message = str(info.value)
    assert "bitrate" in message and all(w in message for w in words), message


def test_a_bad_bitrate_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the encoder was started for a bitrate it cannot write")

    monkeypatch.setattr(writing, "_encode", never)
    for name, kwargs in (("a.mp3", {"bitrate": 100}), ("a.wav", {"bitrate": 128}), ("a.ogg", {"bitrate": 128}),
                         ("a.m4a", {"bitrate": 400})):
        with pytest.raises(ParameterError, match="bitrate"):
            write_audio_atomic(tmp_path / name, sine(0.2, 44100), 44100, **kwargs)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ batch and command line


def test_batch_writes_m4a_at_a_bitrate_and_resumes_it(tiny_converter, tmp_path: Path) -> None:
    src = tmp_path / "in" / "a.wav"
    src.parent.mkdir()
    sf.write(src, tone(0.6), 16000)
    out = tmp_path / "out"
    (first,) = tiny_converter.convert_batch([src], out, format="m4a", bitrate=96)
    assert first.ok, first.error
    path = out / "a.m4a"
    y, rate, _ = decode(path)
    assert rate == 44100 and y.shape[1] == 1 and abs(len(y) - 0.6 * 44100) < 0.05 * 44100
    assert recorded_source(path) == source_id(src)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    (again,) = tiny_converter.convert_batch([src], out, format="m4a", bitrate=96, skip_existing=True)
    assert again.skipped and (path.read_bytes(), path.stat().st_mtime_ns) == before
    with pytest.raises(ParameterError, match="bitrate"):  # before any file is converted
        tiny_converter.convert_batch([src], tmp_path / "out2", format="flac", bitrate=96)
    assert not (tmp_path / "out2").exists()


def test_cli_writes_m4a_with_bitrate(tiny_models, tmp_path: Path) -> None:
    src = tmp_path / "take.wav"
    sf.write(src, tone(0.5), 16000)
    out = tmp_path / "out"
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(out), "--format", "m4a", "--bitrate", "64",
            "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "-q"]
    assert main(argv) == 0
    assert leftovers(out) == ["take.m4a"] and decode(out / "take.m4a")[1] == 44100


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "mp3", "--bitrate", "0"], "--bitrate: bitrate 0"),
        (["--format", "mp3", "--bitrate", "-64"], "--bitrate: bitrate -64"),
        (["--format", "mp3", "--bitrate", "128.5"], "whole number of kbit/s"),
        (["--format", "m4a", "--bitrate", "128k"], "whole number of kbit/s"),
        (["--format", "m4a", "--bitrate", "99999"], "16..320"),
        (["--bitrate", "128"], "wav takes none"),
        (["--format", "ogg", "--bitrate", "128"], "subtype OPUS"),
        (["--format", "mp3", "--bitrate", "192", "--sample-rate", "22050"], "22050 Hz"),
        (["--format", "m4a", "--subtype", "PCM_16"], "--subtype 'PCM_16' is not valid for --format m4a"),
    ],
)
def test_cli_refuses_bad_bitrates_before_loading(no_loading, tiny_models, tmp_path, capsys, options, message) -> None:
    src = tmp_path / "take.wav"
    sf.write(src, tone(0.3), 16000)
    out = tmp_path / "out"
    assert main(["convert", str(tiny_models.voice), str(src), "-o", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------ server


@contextmanager
def in_process(app: Any) -> Iterator[Callable[[Callable[[Any], Any]], Any]]:
    """``run(body)``: ``body(client)`` against ``app`` through httpx's ASGI transport, once it is healthy."""
    httpx = pytest.importorskip("httpx")

    def run(body: Callable[[Any], Any]) -> Any:
        async def go() -> Any:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as client:
                end = time.monotonic() + 120
                while (await client.get("/health")).status_code != 200:
                    assert time.monotonic() < end, "the app never became healthy"
                    await asyncio.sleep(0.05)
                return await body(client)

        return asyncio.run(go())

    try:
        yield run
    finally:
        app.state.rvcfast.close()


def test_server_answers_m4a_as_audio_mp4_and_refuses_bad_bitrates(tiny_models, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from serve_helpers import voice_folder, wav_bytes

    from rvcfast.serve import create_app

    app = create_app(
        voices=[voice_folder(tiny_models, tmp_path / "voices")], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe,
        device="cpu", threads=1, jobs_dir=tmp_path / "spool",
    )
    state = app.state.rvcfast
    clip = ("take.wav", wav_bytes(tone(0.6, 16000), 16000), "audio/wav")

    async def body(client):
        r = await client.post("/v1/convert", files={"file": clip}, data={"voice": "bob", "format": "m4a", "bitrate": "64"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/mp4" and r.headers["x-rvcfast-sample-rate"] == "44100"
        y, rate, _ = decode(r.content)
        assert rate == 44100 and abs(len(y) - 0.6 * 44100) < 0.05 * 44100
        refused = {}
        for fields in ({"bitrate": "0", "format": "mp3"}, {"bitrate": "128"}, {"bitrate": "fast", "format": "m4a"},
                       {"bitrate": "192", "format": "mp3", "sample_rate": "22050"}):  # an MP3 bitrate 22.05 kHz has not
            r = await client.post("/v1/convert", files={"file": clip}, data={"voice": "bob", **fields})
            refused[fields["bitrate"]] = (r.status_code, r.json().get("parameter"))
        assert refused == {b: (422, "bitrate") for b in ("0", "128", "fast", "192")}
        r = await client.post("/v1/jobs", files={"file": clip}, data={"voice": "bob", "format": "m4a", "bitrate": "48"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        await asyncio.wait([state.jobs.get(job_id).handle], timeout=120)
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert (job["state"], job["format"], job["bitrate"], job["sample_rate"]) == ("done", "m4a", 48, 44100), job
        r = await client.get(f"/v1/jobs/{job_id}/audio")
        assert r.status_code == 200 and r.headers["content-type"] == "audio/mp4"
        assert decode(r.content)[1] == 44100

    with in_process(app) as run:
        run(body)


# ------------------------------------------------------------------------------ Ray's writes


def test_ray_rows_write_m4a_at_the_bitrate_and_check_suffixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from rvcfast.integrations.ray._stages import JobSpec, _CrashHook, _plan_row, _write_row
    from rvcfast.params import ConversionParams

    spec = JobSpec(files=None, params=ConversionParams(), out_dir=str(tmp_path), format="m4a", bitrate=64, skip_existing=False)
    src = tmp_path / "a.wav"
    sf.write(src, tone(0.2), 16000)
    row = {"path": str(src), "output_path": str(tmp_path / "a.m4a"), "status": "pending", "error": None}
    _write_row(row, noise(4.0, 40000, seed=2), 40000, spec, _CrashHook(None))
    assert row["status"] == "ok", row["error"]
    assert decode(tmp_path / "a.m4a")[1] == 44100 and 64 * 0.9 <= _kbps(tmp_path / "a.m4a", 4.0) <= 64 * 1.1
    assert recorded_source(tmp_path / "a.m4a") == source_id(src)
    wav_spec = JobSpec(files=None, params=ConversionParams(), out_dir=str(tmp_path), skip_existing=False)
    import rvcfast.integrations.ray._stages as stages

    # a row without a Ray node to name
    monkeypatch.setattr(stages, "_new_row", lambda path, out: {"path": path, "output_path": out, "status": "pending", "error": None})
    planned = _plan_row(str(src), str(tmp_path / "b.m4a"), wav_spec)  # an .m4a name for a wav job
    assert planned["status"] == "error" and "format='m4a'" in planned["error"]

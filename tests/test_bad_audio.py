"""Bad, odd and extreme audio inputs: each converts sensibly or fails with a clear error naming the file.

"Sensibly" means: the result is finite, at the model's rate, and its length is the
input's duration times the model rate within a few 10 ms frames (RVC's frame
arithmetic drops up to two frames per segment: the content encoder's 400-sample
receptive field gives ``2 * ((L - 400) // 320 + 1)`` frames for ``L // 160`` pitch frames).
In a batch, a failing file is reported in its Result and the others still convert.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (  # noqa: F401 (fixtures)
    MODEL_SR,
    is_root,
    names_file,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast
from rvcfast.errors import AudioError, ParameterError, RvcfastError

HOP = MODEL_SR // 100  # output samples per 10 ms frame


def check_output(result: rvcfast.Result, n_in: int, in_rate: int, *, segments: int = 1) -> None:
    """Finite output at the model rate; length = duration × rate within RVC's shortfall (≤ 2 frames a segment)."""
    assert result.ok, result.error
    assert result.sample_rate == MODEL_SR
    y = np.asarray(result.audio)
    assert y.ndim == 1 and y.dtype == np.float32
    assert np.isfinite(y).all(), "output has NaN/Inf"
    ideal = n_in * MODEL_SR / in_rate
    short = ideal - y.shape[0]
    assert -HOP <= short <= (2 * segments + 1) * HOP, (y.shape[0], ideal)
    if y.size:
        assert np.abs(y).max() <= 0.99 + 1e-6  # RVC's output peak guard


def check_error(exc: BaseException, path: Path | str) -> None:
    assert isinstance(exc, RvcfastError), repr(exc)
    assert names_file(str(exc), path), str(exc)


# ------------------------------------------------------------------ the cases


@dataclass
class Case:
    """A file to convert: ``ok`` cases convert (``n_in`` samples decoded at ``rate``); others raise."""

    path: Path
    ok: bool
    n_in: int = 0
    rate: int = 16000
    error: str = ""  # a word the error message must contain
    segments: int = 1


def _write(path: Path, x: np.ndarray, rate: int, **kw) -> Case:
    sf.write(path, x, rate, **kw)
    n = sf.info(path).frames if kw.get("format", "").upper() not in ("MP3", "OGG") else len(sf.read(path)[0])
    return Case(path, True, n, rate)


def _wav_bytes(x: np.ndarray, rate: int, tmp: Path, **kw) -> bytes:
    p = tmp / ".scratch.wav"
    sf.write(p, x, rate, **kw)
    data = p.read_bytes()
    p.unlink()
    return data


def case_empty_file(d: Path) -> Case:
    p = d / "empty.wav"
    p.write_bytes(b"")
    return Case(p, False, error="empty")


def case_zero_samples(d: Path) -> Case:
    p = d / "zero_samples.wav"
    sf.write(p, np.zeros(0), 16000)
    return Case(p, False, error="no samples")


def case_one_sample(d: Path) -> Case:
    sf.write(d / "one_sample.wav", np.array([0.5]), 16000)
    return Case(d / "one_sample.wav", False, error="too short to convert")


def case_100_samples(d: Path) -> Case:
    # 6 ms: less than one output frame (25 ms), an error naming it rather than an empty "success"
    sf.write(d / "hundred.wav", tone(100 / 16000), 16000)
    return Case(d / "hundred.wav", False, error="too short to convert")


def case_25_ms(d: Path) -> Case:
    return _write(d / "quarter.wav", tone(400 / 16000), 16000)  # the shortest input that gives output


def case_400_samples(d: Path) -> Case:
    return _write(d / "four_hundred.wav", tone(400 / 16000), 16000)


def case_50ms(d: Path) -> Case:
    return _write(d / "fifty_ms.wav", tone(0.05, 44100), 44100)


def case_80ms(d: Path) -> Case:
    return _write(d / "eighty_ms.wav", tone(0.08, 22050), 22050)


def case_silence(d: Path) -> Case:
    return _write(d / "silence.wav", np.zeros(12000), 16000)


def case_nan(d: Path) -> Case:
    x = tone(0.5)
    x[100:110] = np.nan
    p = d / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    return Case(p, False, error="NaN")


def case_inf(d: Path) -> Case:
    x = tone(0.5)
    x[200] = np.inf
    x[300] = -np.inf
    p = d / "inf.wav"
    sf.write(p, x, 16000, subtype="DOUBLE")
    return Case(p, False, error="Inf")


def case_dc_offset(d: Path) -> Case:
    return _write(d / "dc.wav", tone(0.5, amp=0.2) + 0.6, 16000, subtype="FLOAT")


def case_clipping(d: Path) -> Case:
    x = np.clip(4 * tone(0.5), -1, 1)  # full-scale square-ish wave
    return _write(d / "clipped.wav", x, 16000)


def case_loud_float(d: Path) -> Case:
    """Float WAV far above full scale (the input peak guard rescales it)."""
    return _write(d / "loud.wav", tone(0.5) * 1e6, 16000, subtype="FLOAT")


def case_corrupt_header(d: Path) -> Case:
    data = bytearray(_wav_bytes(tone(0.5), 16000, d))
    data[20:36] = b"\xff" * 16  # the fmt chunk
    p = d / "corrupt_header.wav"
    p.write_bytes(bytes(data))
    return Case(p, False, error="decode")


def case_truncated_data(d: Path) -> Case:
    data = _wav_bytes(tone(1.0), 16000, d, subtype="PCM_16")
    p = d / "truncated.wav"
    p.write_bytes(data[: len(data) // 2 + 1])  # the header still claims 1 s; an odd cut splits a sample
    return Case(p, True, len(sf.read(p)[0]), 16000)


def case_text_as_wav(d: Path) -> Case:
    p = d / "notes.wav"
    p.write_text("this is a text file, not audio\n" * 20)
    return Case(p, False, error="decode")


def case_png_as_flac(d: Path) -> Case:
    p = d / "picture.flac"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    return Case(p, False, error="decode")


def case_riff_garbage(d: Path) -> Case:
    p = d / "riff_garbage.wav"
    p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40)
    return Case(p, False, error="decode")


def case_directory(d: Path) -> Case:
    p = d / "folder.wav"
    p.mkdir()
    return Case(p, False, error="directory")


def case_missing(d: Path) -> Case:
    return Case(d / "does_not_exist.wav", False, error="does not exist")


def case_unicode_name(d: Path) -> Case:
    return _write(d / "ünïcødé_声音_🎤.wav", tone(0.4), 16000)


def case_spaced_name(d: Path) -> Case:
    return _write(d / "  a file with  spaces .wav", tone(0.4), 16000)


def case_flac(d: Path) -> Case:
    return _write(d / "speech.flac", tone(0.5, 48000), 48000, format="FLAC")


def case_ogg(d: Path) -> Case:
    return _write(d / "speech.ogg", tone(0.5, 44100), 44100, format="OGG")


def case_opus(d: Path) -> Case:
    return _write(d / "speech.opus", tone(0.5, 48000), 48000, format="OGG", subtype="OPUS")


def case_mp3(d: Path) -> Case:
    return _write(d / "speech.mp3", tone(0.5, 44100), 44100, format="MP3")


def case_aiff(d: Path) -> Case:
    return _write(d / "speech.aiff", tone(0.5, 22050), 22050, format="AIFF")


CASES: dict[str, Callable[[Path], Case]] = {
    name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_") and callable(fn)
}

#: A directory given to convert_batch is a folder to expand, not a bad file.
BATCH_CASES = [name for name in sorted(CASES) if name != "directory"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name: str, tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    case = CASES[name](tmp_path)
    if case.ok:
        check_output(tiny_converter.convert(case.path), case.n_in, case.rate, segments=case.segments)
    else:
        with pytest.raises(RvcfastError) as info:
            tiny_converter.convert(case.path)
        check_error(info.value, case.path)
        assert case.error.lower() in str(info.value).lower(), str(info.value)


# ------------------------------------------------------------------ rates, sample formats, channels


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_sample_rates(rate: int, tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    case = _write(tmp_path / f"r{rate}.wav", tone(0.5, rate), rate)
    check_output(tiny_converter.convert(case.path), case.n_in, rate)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_sample_formats(subtype: str, tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    case = _write(tmp_path / f"{subtype}.wav", tone(0.5, 22050), 22050, subtype=subtype)
    check_output(tiny_converter.convert(case.path), case.n_in, 22050)


def test_sample_formats_decode_to_the_same_signal(tmp_path: Path) -> None:
    """Integer and float WAVs are scaled to the same [-1, 1] range before conversion."""
    from rvcfast.audio import load_audio_16k

    x = tone(0.25)
    ref = None
    for subtype, tol in [("DOUBLE", 1e-12), ("FLOAT", 1e-6), ("PCM_32", 1e-8), ("PCM_24", 1e-6), ("PCM_16", 1e-4), ("PCM_U8", 2e-2)]:
        p = tmp_path / f"{subtype}.wav"
        sf.write(p, x, 16000, subtype=subtype)
        y = load_audio_16k(p)
        if ref is None:
            ref = y
        assert np.abs(y - ref).max() <= tol, subtype


@pytest.mark.parametrize("channels", range(1, 9))
def test_channel_counts(channels: int, tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    case = _write(tmp_path / f"ch{channels}.wav", tone(0.5, channels=channels) if channels > 1 else tone(0.5), 16000)
    result = tiny_converter.convert(case.path)
    check_output(result, case.n_in, 16000)


def test_stereo_is_the_mean_of_channels(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    x = tone(0.5)
    sf.write(tmp_path / "mono.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "stereo.wav", np.stack([x, x], 1), 16000, subtype="FLOAT")
    a = tiny_converter.convert(tmp_path / "mono.wav", noise=False).audio
    b = tiny_converter.convert(tmp_path / "stereo.wav", noise=False).audio
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_unreadable_permissions(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    if is_root():
        pytest.skip("running as root: file permissions do not apply, so chmod 000 cannot make a file unreadable")
    p = tmp_path / "locked.wav"
    sf.write(p, tone(0.3), 16000)
    p.chmod(0)
    try:
        with pytest.raises(AudioError) as info:
            tiny_converter.convert(p)
        check_error(info.value, p)
        assert "permission" in str(info.value)
    finally:
        p.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_very_long_input_two_split_points(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    """95 s: quiet-point splitting cuts it near 38 s and 76 s (three segments)."""
    rate = 16000
    x = tone(95.0, rate, amp=0.2)
    x[::4000] *= 0.1  # some texture so the quiet-point search has minima to find
    p = tmp_path / "long_95s.flac"
    sf.write(p, x, rate, format="FLAC")
    result = tiny_converter.convert(p)
    check_output(result, x.shape[0], rate, segments=3)
    # the joins are seamless: no dropout around the split points
    y = result.audio
    for t in (38, 76):
        around = y[(t - 6) * MODEL_SR : (t + 6) * MODEL_SR]
        frames = around[: around.size // HOP * HOP].reshape(-1, HOP)
        assert (np.abs(frames).max(axis=1) > 0).all()


@pytest.mark.slow
def test_one_hour_input(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    rate = 16000
    x = tone(3600.0, rate, amp=0.2).astype(np.float32)
    p = tmp_path / "one_hour.flac"
    sf.write(p, x, rate, format="FLAC")
    del x
    result = tiny_converter.convert(p)
    n_seg = len(range(38, 3600, 38)) + 1
    check_output(result, 3600 * rate, rate, segments=n_seg)


_PEAK_CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(1)
import rvcfast
a = json.loads(sys.argv[1])
conv = rvcfast.Converter.from_pretrained(a["voice"], index=a["index"], encoder=a["encoder"], f0_weights=a["rmvpe"],
                                         device="cpu")
result = conv.convert(a["path"])
assert result.ok
print("PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _peak_rss_mb(tiny_models, path: Path) -> float:
    args = {"voice": str(tiny_models.voice), "index": str(tiny_models.index), "encoder": str(tiny_models.encoder),
            "rmvpe": str(tiny_models.rmvpe), "path": str(path)}
    proc = subprocess.run([sys.executable, "-c", _PEAK_CHILD, json.dumps(args)], capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_MB")]
    assert line, proc.stderr[-3000:]
    return float(line[0].split()[1])


@pytest.mark.slow
def test_long_input_memory_is_bounded(tiny_models, tmp_path: Path) -> None:
    """Peak memory for an 8-minute input exceeds that of a 2-minute one by little more than the audio arrays."""
    peaks = {}
    for minutes in (2, 8):
        p = tmp_path / f"long_{minutes}min.flac"
        sf.write(p, tone(60.0 * minutes, 16000, amp=0.2), 16000, format="FLAC")
        peaks[minutes] = _peak_rss_mb(tiny_models, p)
    print(f"peak RSS: 2 min {peaks[2]:.0f} MB, 8 min {peaks[8]:.0f} MB")
    # 6 more minutes: ~90 MB of float64 input, ~60 MB of float32 output and a few working copies of each
    assert peaks[8] - peaks[2] < 700


# ------------------------------------------------------------------ array inputs


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: (np.zeros((2, 16000)), 16000), "channels-first"),
        (lambda: (np.zeros((10, 10, 2)), 16000), "shape"),
        (lambda: (np.zeros(0), 16000), "no samples"),
        (lambda: (np.array(["a", "b"]), 16000), "dtype"),
        (lambda: (np.zeros(1600, dtype=complex), 16000), "dtype"),
        (lambda: (np.full(1600, np.nan), 16000), "NaN"),
        (lambda: (tone(0.1), 500), "sample rate"),
        (lambda: (tone(0.1), 10_000_000), "sample rate"),
        (lambda: (tone(0.1), None), "sample_rate"),
    ],
    ids=["channels-first", "3-d", "empty", "strings", "complex", "nan", "rate-too-low", "rate-too-high", "no-rate"],
)
def test_bad_arrays(make, error: str, tiny_converter: rvcfast.Converter) -> None:
    x, rate = make()
    with pytest.raises(RvcfastError) as info:
        tiny_converter.convert(x, rate)
    assert isinstance(info.value, (AudioError, ParameterError))
    assert error.lower() in str(info.value).lower(), str(info.value)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.float32, np.float64, np.float16])
def test_array_dtypes(dtype, tiny_converter: rvcfast.Converter) -> None:
    x = tone(0.3)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = (x * info.max).astype(dtype) if info.min < 0 else ((x + 1) / 2 * info.max).astype(dtype)
    else:
        x = x.astype(dtype)
    check_output(tiny_converter.convert(x, 16000), x.shape[0], 16000)


def test_sample_rate_mismatch_for_a_file(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    sf.write(p, tone(0.2), 16000)
    with pytest.raises(ParameterError) as info:
        tiny_converter.convert(p, 44100)
    check_error(info.value, p)


def test_extreme_channel_values_do_not_overflow(tiny_converter: rvcfast.Converter) -> None:
    """Two channels near the float64 maximum: their mean is finite, so the input converts."""
    t = tone(0.3)
    x = np.stack([t, t], 1) / np.abs(t).max() * 1.5e308  # the sum of the channels would overflow to inf
    check_output(tiny_converter.convert(x, 16000), x.shape[0], 16000)


# ------------------------------------------------------------------ all of it in one batch


def test_batch_with_every_bad_case_and_good_files(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    cases = {}
    for name in BATCH_CASES:
        sub = src / name
        sub.mkdir()
        cases[name] = CASES[name](sub)
    good = []
    for i in range(3):
        sub = src / f"good{i}"
        sub.mkdir()
        good.append(_write(sub / "good.wav", tone(0.3 + 0.1 * i), 16000))
    inputs = [c.path for c in cases.values()] + [g.path for g in good]
    out = tmp_path / "out"
    results = tiny_converter.convert_batch(inputs, out, keep_audio=True)
    assert len(results) == len(inputs)
    by_source = {r.source: r for r in results}
    for name, case in list(cases.items()) + [(f"good{i}", g) for i, g in enumerate(good)]:
        r = by_source[str(case.path)]
        if case.ok:
            check_output(r, case.n_in, case.rate, segments=case.segments)
            assert r.output_path is not None and Path(r.output_path).is_file()
            y, sr = sf.read(r.output_path)
            assert sr == MODEL_SR and y.shape[0] == r.audio.shape[0]
        else:
            assert not r.ok and r.output_path is None, name
            assert names_file(r.error, case.path), (name, r.error)
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == sum(c.ok for c in cases.values()) + len(good)
    assert not [n for n in written if n.endswith(".part")]
    # names with unicode and spaces keep their stem
    assert "ünïcødé_声音_🎤.wav" in written and "  a file with  spaces .wav" in written


def _streamed_flac(path: Path, seconds: float, rate: int = 22050) -> np.ndarray:
    """A FLAC whose header gives no length (as a streaming encoder writes it); returns its samples."""
    x = (0.3 * np.sin(2 * np.pi * 220.0 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    sf.write(path, x, rate, format="FLAC", subtype="PCM_16")
    data = bytearray(path.read_bytes())
    # STREAMINFO follows "fLaC" and its 4-byte block header; total samples: the low 36 bits of bytes 18..25
    field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return x


def test_a_flac_without_a_length_in_its_header_decodes_whole(tmp_path: Path, monkeypatch) -> None:
    from rvcfast.audio import decode

    pytest.importorskip("av")  # libsndfile alone drops the end of such a stream
    x = _streamed_flac(tmp_path / "stream.flac", 7.3)
    assert sf.info(tmp_path / "stream.flac").frames >= 1 << 62  # libsndfile: length unknown
    d = decode(tmp_path / "stream.flac")
    assert d.audio.shape[0] == int(np.ceil(x.shape[0] * 16000 / 22050))
    assert not d.warnings  # not "truncated", not "damaged"
    reference = decode(_plain_flac(tmp_path / "plain.flac", x, 22050))
    np.testing.assert_allclose(d.audio, reference.audio, atol=1e-6)
    monkeypatch.setattr("rvcfast.av_decode.av_available", lambda: False)  # without the av extra: say so
    with pytest.raises(AudioError, match=r"stream\.flac: .*does not give its length.*rvcfast\[av\]"):
        decode(tmp_path / "stream.flac")


def _plain_flac(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate, format="FLAC", subtype="PCM_16")
    return path


def test_max_seconds_stops_decoding_at_the_bound(tmp_path: Path, monkeypatch) -> None:
    from rvcfast import audio
    from rvcfast.errors import AudioTooLongError

    long = np.zeros(16000 * 30, np.float32)
    sf.write(tmp_path / "long.wav", long, 16000)
    read: list[int] = []
    real = audio._blocks

    def counted(*args):
        for block in real(*args):
            read.append(block.shape[0])
            yield block

    monkeypatch.setattr(audio, "_blocks", counted)
    with pytest.raises(AudioTooLongError, match=r"long\.wav: audio is longer than the 5 s allowed") as info:
        audio.decode(tmp_path / "long.wav", max_seconds=5)
    assert info.value.limit == 5.0
    assert sum(read) < 16000 * 5 + (1 << 18)  # stopped within one block of the bound, not at the end
    assert audio.decode(tmp_path / "long.wav", max_seconds=30).audio.shape[0] == long.shape[0]  # at the bound: fine
    with pytest.raises(AudioTooLongError):
        audio.decode(long, 16000, max_seconds=29.9)
    _streamed_flac(tmp_path / "stream.flac", 12.0)  # no length in the header: bounded all the same
    with pytest.raises(AudioTooLongError):
        audio.decode(tmp_path / "stream.flac", max_seconds=4)


def test_too_short_with_keep_length_and_in_a_stream(tiny_converter: rvcfast.Converter) -> None:
    x = tone(300 / 16000)  # 19 ms: one 10 ms frame with keep_length, none without
    assert tiny_converter.convert(x, 16000, noise=False, keep_length=True).audio.shape[0] > 0
    engine = tiny_converter.engine
    prep = engine.prepare(x, 16000, name="blip")
    with pytest.raises(AudioError, match=r"blip: audio is too short to convert: 18\.8 ms gives no output"):
        next(iter(engine.stream(prep, engine.params(noise=False))))
    result = engine.run([prep, engine.prepare(tone(0.5), 16000)], engine.params(noise=False))
    assert not result[0].ok and "too short" in result[0].error and result[1].ok  # the other input converts
    # the same refusal before any network runs (a server answers it as the client's error)
    with pytest.raises(AudioError, match=r"blip: audio is too short to convert: 18\.8 ms"):
        engine.check_convertible(prep)
    engine.check_convertible(prep, {"keep_length": True})  # one 10 ms frame: convertible
    engine.check_convertible(engine.prepare(tone(0.5), 16000))

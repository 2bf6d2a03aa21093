"""Resampling: the reference's soxr VHQ input stage and output resampling, level and stop band.

Golden fixtures (../shared/golden-features/resample) hold Applio's ``load_audio_infer``
output for inputs at several rates and channel counts; the analytic tests pin what any
correct resampler must do (a sine keeps its amplitude, nothing above the new Nyquist
frequency survives) independently of the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SHARED
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.audio import decode
from rvcfast.dsp import Resampler, input_peak_guard, resample, resampled_length

RESAMPLE = SHARED / "golden-features" / "resample"
CASES = [
    "in44100_mono_pcm16",
    "in48000_stereo_float",
    "in22050_mono_pcm24",
    "in8000_mono_pcm16",
    "in96000_stereo_float",
    "in40000_mono_float",
    "in16000_stereo_pcm16",
]
COMMON_RATES = [8000, 11025, 12000, 22050, 24000, 32000, 40000, 44100, 48000, 88200, 96000]


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not (RESAMPLE / "inputs").is_dir():
        pytest.skip(f"resample fixtures not found at {RESAMPLE} (set RVCFAST_SHARED to the shared/ folder)")
    return RESAMPLE


@pytest.mark.parametrize("case", CASES)
def test_input_stage_matches_the_reference(fixtures: Path, case: str) -> None:
    ref = np.load(fixtures / f"{case}_16k.npz")
    path = fixtures / "inputs" / f"{case}.wav"
    frames, rate = sf.info(str(path)).frames, sf.info(str(path)).samplerate
    audio = rvcfast.load_audio_16k(path)
    assert audio.dtype == np.float64
    assert audio.shape == ref["audio"].shape == (int(np.ceil(frames * 16000 / rate)),)
    assert np.abs(audio - ref["audio"]).max() <= 1e-9
    if "audio_peak_guarded" in ref.files:
        assert np.abs(input_peak_guard(audio) - ref["audio_peak_guarded"]).max() <= 1e-9


@pytest.mark.parametrize("case", CASES)
def test_array_input_equals_file_input(fixtures: Path, case: str) -> None:
    path = fixtures / "inputs" / f"{case}.wav"
    data, rate = sf.read(str(path), dtype="float64")
    np.testing.assert_allclose(rvcfast.load_audio_16k(data, rate), rvcfast.load_audio_16k(path), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["wav40000_to_flac", "wav30000_to_flac"])
def test_output_resampling_matches_the_reference_export(fixtures: Path, case: str) -> None:
    ref = np.load(fixtures / f"{case}_out.npz")
    x, rate = sf.read(str(fixtures / "inputs" / f"{case}_in.wav"), dtype="float32")
    y = resample(x, rate, int(ref["sr"]))
    assert y.dtype == np.float32 and y.shape == ref["audio"].shape
    assert np.abs(y - ref["audio"]).max() <= 1e-6


@pytest.mark.parametrize("rate", COMMON_RATES)
def test_a_sine_keeps_its_level(rate: int) -> None:
    t = np.arange(2 * rate) / rate
    for freq in (100.0, 440.0, 1000.0, 3000.0, 7000.0):
        if freq >= 0.45 * rate:
            continue
        y = resample(0.5 * np.sin(2 * np.pi * freq * t), rate, 16000)
        mid = np.arange(2000, y.shape[0] - 2000)
        basis = np.stack([np.sin(2 * np.pi * freq * mid / 16000), np.cos(2 * np.pi * freq * mid / 16000)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, y[mid], rcond=None)
        level_db = 20 * np.log10(np.hypot(*coef) / 0.5)
        assert abs(level_db) <= 0.01, (rate, freq, level_db)


@pytest.mark.parametrize("rate", [r for r in COMMON_RATES if r > 17000])
def test_content_above_8khz_is_removed(rate: int) -> None:
    n = 2 * rate
    spectrum = np.fft.rfft(np.random.default_rng(rate).standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / rate) < 8500] = 0
    x = np.fft.irfft(spectrum, n)
    y = resample(x, rate, 16000)
    assert 20 * np.log10(np.std(y[800:-800]) / np.std(x)) < -120


@pytest.mark.parametrize("n", [1, 2, 3, 441, 52917, 48013, 100003])
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_length_rule(n: int, rate: int) -> None:
    y = resample(np.random.default_rng(n).standard_normal(n), rate, 16000)
    assert y.shape == (resampled_length(n, rate, 16000),) == (int(np.ceil(n * 16000 / rate)),)


def test_stream_equals_one_shot() -> None:
    x = np.random.default_rng(1).standard_normal(3_000_001)  # over the one-shot limit: resampled in blocks
    whole = resample(x, 44100, 16000)
    rs = Resampler(44100, 16000)
    parts, pos = [], 0
    for size in (1, 999, 65536, 4097, 1_000_000):
        parts.append(rs.push(x[pos : pos + size]))
        pos += size
    parts.append(rs.push(x[pos:]))
    parts.append(rs.flush())
    # the same samples as one call (bit-identical here; 1e-12 leaves room for another CPU's SIMD path)
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-12)
    import soxr

    one_shot = soxr.resample(x, 44100, 16000, quality="VHQ")
    np.testing.assert_allclose(whole[: one_shot.shape[0]], one_shot, rtol=0, atol=1e-12)


def test_long_file_is_decoded_in_blocks_with_the_same_samples(tmp_path: Path) -> None:
    import soxr

    rng = np.random.default_rng(2)
    data = (0.2 * rng.standard_normal((44100 * 40, 2))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, data, 44100, subtype="FLOAT")
    mono = np.mean(data.astype(np.float64).T, axis=0)
    expected = soxr.resample(mono, 44100, 16000, quality="VHQ")
    got = rvcfast.load_audio_16k(path)
    assert got.shape == (resampled_length(data.shape[0], 44100, 16000),)
    np.testing.assert_allclose(got[: expected.shape[0]], expected, rtol=0, atol=1e-12)


def test_output_sample_rate_keeps_the_level(tiny_converter) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(3 * 16000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + 0.1 * rng.standard_normal(t.shape[0]))
    native = tiny_converter.convert(x, 16000, noise=False)
    rms = np.sqrt(np.mean(native.audio.astype(np.float64) ** 2))
    for rate in (22050, 32000, 44100, 48000):
        res = tiny_converter.convert(x, 16000, noise=False, output_sample_rate=rate)
        assert res.sample_rate == rate
        assert res.audio.shape[0] == resampled_length(native.audio.shape[0], native.sample_rate, rate)
        assert np.sqrt(np.mean(res.audio.astype(np.float64) ** 2)) == pytest.approx(rms, rel=0.02)


def test_decode_reports_rate_and_channels(fixtures: Path) -> None:
    d = decode(fixtures / "inputs" / "in48000_stereo_float.wav")
    assert (d.source_rate, d.channels) == (48000, 2)
    assert any("2 channels mixed down to mono" in w for w in d.warnings)


def test_the_streaming_resampler_takes_a_numpy_bool_for_last() -> None:
    """``last=i == n - 1`` with NumPy integers is a NumPy bool, which soxr refused (TypeError)."""
    x = np.sin(2 * np.pi * 200 * np.arange(4410) / 44100)
    whole = Resampler(44100, 16000).push(x, last=True)
    rs = Resampler(44100, 16000)
    ends = np.arange(1, 4)
    pieces = [rs.push(block, last=k == ends[-1]) for k, block in zip(ends, np.array_split(x, 3))]
    assert isinstance(ends[-1] == ends[-1], np.bool_)
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-9)

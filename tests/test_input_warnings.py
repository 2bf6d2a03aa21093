"""Damaged or odd inputs are reported: Result.warnings, the CLI summary, and strict=True."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.audio import decode
from rvcfast.cli import main
from rvcfast.errors import AudioError


def speech_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.shape[0]))


@pytest.fixture()
def truncated_wav(tmp_path: Path) -> Path:
    full = tmp_path / "full.wav"
    sf.write(full, speech_like(5.0, 44100), 44100, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[:20000])  # the header still promises 5 s
    return cut


def test_truncated_wav_is_reported(truncated_wav: Path) -> None:
    d = decode(truncated_wav)
    assert len(d.warnings) == 1
    w = d.warnings[0]
    assert str(truncated_wav) in w and "truncated" in w and "5.00 s" in w
    # what is there is still converted: about 0.23 s
    assert d.audio.shape[0] == pytest.approx((20000 - 44) / 2 * 16000 / 44100, abs=2)


def test_intact_files_have_no_warnings(tmp_path: Path) -> None:
    for fmt, ext in (("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")):
        p = tmp_path / f"ok.{ext}"
        sf.write(p, speech_like(1.0, 48000), 48000, format=fmt)
        assert decode(p).warnings == []


def test_damaged_flac_keeps_the_readable_part(tmp_path: Path) -> None:
    p = tmp_path / "a.flac"
    sf.write(p, speech_like(5.0, 16000), 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    d = decode(cut)
    assert len(d.warnings) == 1 and "damaged" in d.warnings[0] and "5.00 s" in d.warnings[0]
    assert 0.5 * 16000 < d.audio.shape[0] < 5 * 16000


def test_clipping_dc_and_channels_are_reported() -> None:
    x = speech_like(1.0, 16000)
    clipped = np.clip(3 * x, -1, 1)
    assert any("clipped" in w for w in decode(clipped, 16000, name="clip").warnings)
    assert not any("clipped" in w for w in decode(x, 16000, name="clean").warnings)
    # a float signal above full scale that is not flat-topped is not "clipped"
    assert not any("clipped" in w for w in decode(1.2 * x / np.abs(x).max(), 16000).warnings)
    dc = decode(x + 0.05, 16000, name="dc").warnings
    assert any("dc: DC offset of +0.050" in w for w in dc)
    stereo = np.stack([x, x], axis=1)
    assert decode(stereo, 16000, name="st").warnings == ["st: 2 channels mixed down to mono"]


def test_convert_carries_warnings_and_strict_refuses(tiny_converter: rvcfast.Converter, truncated_wav: Path) -> None:
    res = tiny_converter.convert(truncated_wav, noise=False)
    assert res.ok and any("truncated" in w for w in res.warnings)
    with pytest.raises(AudioError, match="truncated.*strict mode"):
        tiny_converter.convert(truncated_wav, noise=False, strict=True)


def test_batch_strict_fails_only_the_damaged_file(tiny_converter: rvcfast.Converter, truncated_wav: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, speech_like(1.0, 16000), 16000)
    results = tiny_converter.convert_batch([truncated_wav, good], tmp_path / "out", strict=True, noise=False)
    assert results[0].error is not None and "truncated" in results[0].error
    assert results[1].ok and results[1].warnings == []
    assert not (tmp_path / "out" / "cut.wav").exists() and (tmp_path / "out" / "good.wav").exists()
    lenient = tiny_converter.convert_batch([truncated_wav, good], tmp_path / "out2", noise=False)
    assert lenient[0].ok and any("truncated" in w for w in lenient[0].warnings)


def test_cli_summary_names_files_with_warnings(tiny_models, truncated_wav: Path, tmp_path: Path, capsys) -> None:
    argv = [
        "convert", str(tiny_models.voice), str(truncated_wav), "-o", str(tmp_path / "out"),
        "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "--no-noise",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning" in err and str(truncated_wav) in err and "truncated" in err
    assert main(argv + ["--strict", "-o", str(tmp_path / "strict")]) == 1
    assert "truncated" in capsys.readouterr().err

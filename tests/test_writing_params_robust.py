"""Writing outputs and reading parameters: odd samples, odd spellings, long names, honest Results."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (  # noqa: F401 (fixtures)
    TINY_VOICE,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast
from rvcfast.describe import model_metadata
from rvcfast.errors import AudioError, ParameterError
from rvcfast.params import ConversionParams
from rvcfast.testing import save_random_voice_model
from rvcfast.writing import write_audio_atomic


def leftovers(folder: Path) -> list[str]:
    """Every file in ``folder`` (outputs and temporary files alike)."""
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ subtype spelling


@pytest.mark.parametrize("subtype", [" pcm_16", "pcm_24 ", "", "  "])
def test_subtype_written_as_the_check_reads_it(tmp_path: Path, subtype: str) -> None:
    """A subtype the format check accepts (any case, spaces around, blank = the default) is written."""
    ConversionParams().check_output("wav", subtype, 40000)  # accepted before any work...
    p = write_audio_atomic(tmp_path / "a.wav", tone(0.1), 16000, subtype=subtype)  # ...so it must be writable
    expected = subtype.strip().upper() or "PCM_16"
    assert sf.info(p).subtype == expected
    assert leftovers(tmp_path) == ["a.wav"]


def test_batch_with_blank_subtype_writes_every_file(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    (res,) = tiny_converter.convert_batch([tmp_path / "a.wav"], tmp_path / "out", subtype="", noise=False)
    assert res.error is None
    assert sf.info(res.output_path).subtype == "PCM_16"


# ------------------------------------------------------------------ samples that cannot be written as they are


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_before_writing(tmp_path: Path, ext: str, bad: float) -> None:
    audio = np.full(4000, 0.1, np.float32)
    audio[123] = bad
    with pytest.raises(AudioError, match=r"1 NaN or infinite samples of 4000") as info:
        write_audio_atomic(tmp_path / f"a.{ext}", audio, 16000)
    assert info.value.path == str(tmp_path / f"a.{ext}")
    assert leftovers(tmp_path) == []  # no output, no temporary file


def test_nan_mp3_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """LAME aborts the whole process on NaN input: the write must refuse it first (in a child process,
    so that the old behaviour fails this test instead of killing the test run)."""
    code = textwrap.dedent(
        f"""
        import numpy as np
        from rvcfast.errors import AudioError
        from rvcfast.writing import write_audio_atomic
        audio = np.full(44100, 0.1, np.float32)
        audio[100] = np.nan
        try:
            write_audio_atomic({str(tmp_path / "a.mp3")!r}, audio, 44100)
        except AudioError as exc:
            print("refused:", exc)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused:" in run.stdout and "NaN" in run.stdout
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("subtype", ["ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM"])
def test_samples_beyond_full_scale_are_clipped_not_wrapped(tmp_path: Path, subtype: str) -> None:
    """µ-law, A-law and ADPCM wrap a sample above 1 around to a small or negative value; they are clipped."""
    t = np.arange(16000) / 16000
    audio = (1.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    given = audio.copy()
    write_audio_atomic(tmp_path / "a.wav", audio, 16000, subtype=subtype)
    np.testing.assert_array_equal(audio, given)  # the caller's array is not clipped in place
    back = sf.read(tmp_path / "a.wav", dtype="float32")[0][: given.size]  # ADPCM pads to whole blocks
    expected = np.clip(given, -1, 1)
    peaks = np.flatnonzero(np.abs(given) > 1.4)  # samples well beyond full scale...
    assert np.all(back[peaks] * np.sign(given[peaks]) > 0.8)  # ...come back near full scale, same sign
    assert np.sqrt(np.mean((back - expected) ** 2)) < 0.1


@pytest.mark.parametrize(("fmt", "subtype"), [("wav", "FLOAT"), ("ogg", "VORBIS")])
def test_float_and_lossy_outputs_keep_samples_beyond_full_scale(tmp_path: Path, fmt: str, subtype: str) -> None:
    t = np.arange(16000) / 16000
    audio = (1.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    write_audio_atomic(tmp_path / f"a.{fmt}", audio, 16000, subtype=subtype)
    back, _ = sf.read(tmp_path / f"a.{fmt}", dtype="float32")
    assert np.abs(back).max() > 1.2


@pytest.mark.parametrize("ext", ["flac", "mp3"])
def test_empty_flac_or_mp3_is_refused_not_a_zero_byte_file(tmp_path: Path, ext: str) -> None:
    with pytest.raises(AudioError, match="no audio to write"):
        write_audio_atomic(tmp_path / f"a.{ext}", np.zeros(0, np.float32), 44100)
    assert leftovers(tmp_path) == []


def test_empty_wav_is_still_written(tmp_path: Path) -> None:
    p = write_audio_atomic(tmp_path / "a.wav", np.zeros(0, np.float32), 16000)
    assert sf.info(p).frames == 0


# ------------------------------------------------------------------ long output names


def test_output_name_near_the_file_name_limit(tmp_path: Path) -> None:
    """A 250-byte output name is a valid file name; its temporary file's name must be one too."""
    name = "n" * 246 + ".wav"
    p = write_audio_atomic(tmp_path / name, tone(0.1), 16000)
    assert p.name == name and sf.info(p).frames == 1600
    assert leftovers(tmp_path) == [name]
    multibyte = "é" * 120 + ".wav"  # 244 bytes in UTF-8
    write_audio_atomic(tmp_path / multibyte, tone(0.1), 16000)
    assert sorted(leftovers(tmp_path)) == sorted([name, multibyte])


def test_stale_temporary_file_of_a_long_name_is_removed(tmp_path: Path) -> None:
    """A process killed while writing a long-named output leaves its temporary file; the next write removes it."""
    target = tmp_path / ("x" * 240 + ".flac")
    code = textwrap.dedent(
        f"""
        import os
        import numpy as np
        import soundfile
        from rvcfast import writing
        real = writing._encode
        def write_then_die(path, *args, **kwargs):
            real(path, *args, **kwargs)
            os._exit(3)  # killed after encoding, before the rename
        writing._encode = write_then_die
        writing.write_audio_atomic({str(target)!r}, np.zeros(1600, np.float32), 16000)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr[-2000:]
    (stale,) = leftovers(tmp_path)
    assert stale.endswith(".part") and len(stale.encode()) <= 255
    write_audio_atomic(target, tone(0.1), 16000)
    assert leftovers(tmp_path) == [target.name]


# ------------------------------------------------------------------ results


def test_duration_of_a_written_result_whose_audio_was_dropped(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    """With ``out_dir`` the audio is not kept; ``duration`` still says how long the output is."""
    sf.write(tmp_path / "a.wav", tone(0.5), 16000)
    (res,) = tiny_converter.convert_batch([tmp_path / "a.wav"], tmp_path / "out", noise=False)
    assert res.ok and res.audio.size == 0
    written = sf.info(res.output_path)
    assert written.frames > 0
    assert res.duration == pytest.approx(written.frames / written.samplerate)
    (kept,) = tiny_converter.convert_batch([tmp_path / "a.wav"], noise=False)  # kept in memory: the same
    assert kept.duration == pytest.approx(res.duration)


# ------------------------------------------------------------------ parameters


def test_mapping_with_a_non_text_key_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match=r"unknown conversion parameter '1'"):
        ConversionParams.build({1: 2})
    assert ConversionParams.build({"pitch": 2}).pitch == 2


# ------------------------------------------------------------------ describing models


def test_deeply_nested_metadata_is_summarised_not_a_crash(tmp_path: Path) -> None:
    """A checkpoint's metadata is untrusted: one nested deeper than the interpreter's recursion
    limit must be described (summarised), not crash ``rvcfast info`` with a RecursionError."""
    voice = save_random_voice_model(tmp_path / "v.pth", "v2", 40000, True, seed=1, **TINY_VOICE)
    checkpoint = torch.load(voice, weights_only=True)
    depth = sys.getrecursionlimit() + 500
    deep: list = []
    node = deep
    for _ in range(depth):
        node.append([])
        node = node[0]
    checkpoint["notes"] = deep
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(depth * 4)  # only to save the file
    try:
        torch.save(checkpoint, tmp_path / "deep.pth")
    finally:
        sys.setrecursionlimit(before)
    meta = model_metadata(tmp_path / "deep.pth")
    text = json.dumps(meta, allow_nan=False)
    assert "nested too deeply" in text
    assert meta["version"] == "v2"


def test_writable_samples_for_writers_in_memory() -> None:
    """What the in-memory encoders (the server's responses) call before libsndfile: same rules, no path."""
    from rvcfast.writing import writable_samples

    bad = np.array([0.1, np.nan], np.float32)
    with pytest.raises(AudioError, match="1 NaN or infinite samples of 2") as info:
        writable_samples(bad, "mp3")
    assert info.value.path is None
    loud = np.array([0.5, 1.5, -2.0], np.float32)
    np.testing.assert_array_equal(writable_samples(loud, "wav", "ulaw"), [0.5, 1.0, -1.0])
    assert writable_samples(loud, "wav", "FLOAT") is loud


def test_a_mapping_nested_past_the_recursion_limit_is_a_parameter_error() -> None:
    """``--effects`` / a server form field holding JSON nested deeper than Python's recursion
    limit made json raise RecursionError (a 500, a traceback); it is a refused value, and the
    message does not echo all of it."""
    from rvcfast.params import coerce_param

    deep = '{"reverb": ' * 5000 + "{}" + "}" * 5000
    with pytest.raises(ParameterError, match=r"effects must be a JSON object.*characters\)") as info:
        coerce_param("effects", deep)
    assert len(str(info.value)) < 500


def test_noise_reduction_at_an_output_rate_it_cannot_run_is_refused_before_any_work() -> None:
    """noisereduce's defaults need 5120..256000 Hz: ``clean`` with a 384 kHz output failed only
    after the whole conversion; ``check_output`` (run before a batch starts) refuses it."""
    ok = ConversionParams(clean=0.5, output_sample_rate=48000)
    assert ok.check_output("wav", None, 40000) is ok
    ConversionParams(output_sample_rate=384000).check_output("wav", None, 40000)  # no clean: fine
    with pytest.raises(ParameterError, match=r"clean: noise reduction works at 5120\.\.256000 Hz.*384000"):
        ConversionParams(clean=0.5, output_sample_rate=384000).check_output("wav", None, 40000)

"""The errors a newcomer meets first: a wrong argument names itself, the problem and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.errors import ParameterError


def test_convert_given_a_list_of_paths_points_at_convert_batch(tiny_converter: rvcfast.Converter) -> None:
    for paths in (["a.wav", "b.wav"], (Path("a.wav"),)):
        with pytest.raises(ParameterError) as err:
            tiny_converter.convert(paths)
        assert "convert_batch" in str(err.value)
        assert "sample_rate is required" not in str(err.value)


@pytest.mark.parametrize(("typo", "option"), [("outdir", "out_dir"), ("skip_exist", "skip_existing"), ("fromat", "format")])
def test_misspelled_batch_option_suggests_the_option(tiny_converter: rvcfast.Converter, tmp_path: Path, typo: str, option: str) -> None:
    with pytest.raises(ParameterError) as err:
        tiny_converter.convert_batch([tmp_path / "missing.wav"], **{typo: True})
    assert f"did you mean the option {option!r}?" in str(err.value)
    assert not list(tmp_path.iterdir())  # refused at the call, before any work


def test_misspelled_setting_still_suggests_the_setting(tiny_converter: rvcfast.Converter) -> None:
    with pytest.raises(ParameterError, match=r"'pich' \(did you mean 'pitch'\?\)"):
        tiny_converter.convert(tone(0.3), 16000, pich=2)
    with pytest.raises(ParameterError, match=r"did you mean 'pitch'\?"):
        tiny_converter.convert_batch([(tone(0.3), 16000)], pich=2)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("f0_up_key", "use 'pitch'"),
        ("transpose", "use 'pitch'"),
        ("sid", "use 'speaker'"),
        ("resample_sr", "use 'output_sample_rate'"),
        ("volume_envelope", "use 'rms_mix_rate'"),
        ("f0_method", "f0='rmvpe'"),
        ("f0", "chosen when the model is loaded"),
        ("sr", "convert(samples, sample_rate)"),
        ("samplerate", "convert(samples, sample_rate)"),
    ],
)
def test_names_from_other_tools_say_what_to_write(tiny_converter: rvcfast.Converter, name: str, says: str) -> None:
    with pytest.raises(ParameterError) as err:
        tiny_converter.convert(tone(0.3), 16000, **{name: 1})
    assert repr(name) in str(err.value) and says in str(err.value)
    with pytest.raises(ParameterError, match=says.replace("(", r"\(").replace(")", r"\)")):
        rvcfast.ConversionParams.build(None, **{name: 1})


@pytest.mark.parametrize("make", [lambda x: [int(v) for v in x], lambda x: x.astype("int64")], ids=["list of ints", "int64"])
def test_64_bit_integer_samples_are_refused_not_made_near_silent(tiny_converter, make) -> None:
    # before: scaled from 2**63 as PCM, 16-bit sample values became ~1e-15: a silent conversion
    import numpy as np

    from rvcfast.errors import AudioError

    pcm16 = (tone(0.3) * 20000).astype(np.int16)
    with pytest.raises(AudioError, match=r"int64: integer samples are PCM.*\.astype\(np\.int16\)"):
        tiny_converter.convert(make(pcm16), 16000)
    # the same values as int16 are 16-bit PCM, read as a 16-bit WAV would be
    assert np.abs(tiny_converter.convert(pcm16, 16000, noise=False).audio).max() > 0


@pytest.mark.parametrize(("typed", "meant"), [("rmpve", "rmvpe"), ("crepe_tiny", "crepe-tiny"), ("harvset", "harvest")])
def test_a_misspelled_f0_backend_suggests_the_backend(typed: str, meant: str) -> None:
    from rvcfast.errors import BackendUnavailableError
    from rvcfast.f0.registry import get_f0_extractor

    with pytest.raises(BackendUnavailableError, match=rf"unknown F0 extractor {typed!r} \(did you mean {meant!r}\?\); available: "):
        get_f0_extractor(typed)


def test_an_array_pair_with_a_zero_rate_says_what_a_rate_must_be(tiny_converter) -> None:
    # before: "must be a whole number of Hz, got 0" (0 is a whole number)
    with pytest.raises(ParameterError, match=r"input 0: .* whole number of Hz above 0, got 0"):
        tiny_converter.convert_batch([(tone(0.3), 0)])

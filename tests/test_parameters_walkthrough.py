"""docs/parameters.md, walked through as a user reads it: every ranged conversion parameter is
refused just outside its range and accepted exactly at its ends, the same way in the library
(``ConversionParams.validate``), on the command line (``rvcfast convert``'s check, with the flag)
and in the server's form fields (``parse_fields``, with the field); the front-end name table of
the docs matches the real flags and fields; F0 post-processing refuses a key shift that leaves
the float range instead of crashing or returning an infinite F0.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_weights, one_thread_fixture, tiny_models_fixture, write_tone  # noqa: F401

import rvcfast
from rvcfast.cli import main
from rvcfast.cli._common import UsageError, check_params
from rvcfast.errors import ParameterError
from rvcfast.f0.post import postprocess, shift_f0
from rvcfast.params import ConversionParams, param_specs
from rvcfast.serve.forms import FieldError, parse_fields

DOCS = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"

#: (parameter, value just outside, words the message must hold: the name and the whole range)
OUT_OF_RANGE = [
    ("pitch", 48.5, ("pitch", "-48..48")),
    ("pitch", -49, ("pitch", "-48..48")),
    ("index_rate", 1.01, ("index_rate", "0..1")),
    ("index_rate", -0.01, ("index_rate", "0..1")),
    ("protect", 0.51, ("protect", "0..0.5")),
    ("rms_mix_rate", 1.5, ("rms_mix_rate", "0..1")),
    ("filter_radius", -1, ("filter_radius", ">= 0")),
    ("speaker", -1, ("speaker", ">= 0")),
    ("output_sample_rate", 7999, ("output_sample_rate", "8000..384000")),
    ("output_sample_rate", 384001, ("output_sample_rate", "8000..384000")),
    ("v1_output_layer", 0, ("v1_output_layer", ">= 1")),
    ("autotune", 1.001, ("autotune", "0..1")),
    ("clean", -0.5, ("clean", "0..1")),
    ("proposed_pitch", 0.0, ("proposed_pitch", "above 0")),
    ("loudness", 0.5, ("loudness", "-70..0")),
    ("loudness", -70.5, ("loudness", "-70..0")),
    ("formant", (0.0, 1.0), ("formant quefrency", "above 0")),
    ("formant", (1.0, 0.009), ("formant timbre", "0.01")),
]

#: values exactly at the ends of the documented ranges
BOUNDARIES = [
    ("pitch", 48.0), ("pitch", -48.0), ("index_rate", 0.0), ("index_rate", 1.0), ("protect", 0.0), ("protect", 0.5),
    ("rms_mix_rate", 0.0), ("rms_mix_rate", 1.0), ("filter_radius", 0), ("speaker", 0), ("output_sample_rate", 8000),
    ("output_sample_rate", 384000), ("v1_output_layer", 1), ("autotune", 0.0), ("autotune", 1.0), ("clean", 0.0),
    ("clean", 1.0), ("loudness", -70.0), ("loudness", 0.0), ("formant", (1e-6, 0.01)),
]

FLAGS = {s.name: s.flag for s in param_specs()}


def _field_text(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize(("name", "value", "words"), OUT_OF_RANGE)
def test_out_of_range_is_refused_alike_in_the_library_the_command_line_and_the_server(name, value, words) -> None:
    with pytest.raises(ParameterError) as api:
        ConversionParams.build(None, **{name: value}).validate()
    with pytest.raises(UsageError) as cli:
        check_params({name: value})
    field = "sample_rate" if name == "output_sample_rate" else name  # the server's own name for it
    with pytest.raises(FieldError) as server:
        parse_fields([("voice", "v"), (field, _field_text(value))])
    for message in (str(api.value), str(cli.value), str(server.value)):
        for word in words:
            assert word in message, (word, message)
    assert str(cli.value).startswith(f"{FLAGS[name]}: "), str(cli.value)
    assert server.value.field == field


@pytest.mark.parametrize(("name", "value"), BOUNDARIES)
def test_the_ends_of_every_range_are_accepted_everywhere(name, value) -> None:
    ConversionParams.build(None, **{name: value}).validate()
    check_params({name: value})
    field = "sample_rate" if name == "output_sample_rate" else name
    options = parse_fields([("voice", "v"), (field, _field_text(value))])
    assert options.overrides[name] == value


def _front_end_table() -> list[list[str]]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Names in each front end", 1)[1].split("\n\n", 3)[2]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def test_the_docs_front_end_table_names_real_flags_and_fields() -> None:
    rows = _front_end_table()
    documented = {re.match(r"`(\w+)", python).group(1) for python, _, _ in rows}
    assert documented == set(FLAGS), documented ^ set(FLAGS)  # every parameter, nothing else
    for python, cli, server in rows:
        name = re.match(r"`(\w+)", python).group(1)
        assert f"`{FLAGS[name]}" in cli, (name, cli)
        field = re.match(r"`(\w+)", server).group(1)
        assert field == name or (name, field) == ("output_sample_rate", "sample_rate"), (name, server)


@pytest.mark.parametrize("semitones", [1e5, 12000.0])
def test_a_key_shift_past_the_float_range_is_a_parameter_error(semitones: float) -> None:
    """1e5 raised a bare OverflowError; 12000 returned an infinite pitchf (a NaN NSF source)."""
    with pytest.raises(ParameterError, match="semitones"):
        postprocess(np.array([100.0, 0.0, 200.0]), 3, semitones=semitones)
    if semitones > 20000:
        with pytest.raises(ParameterError, match="semitones"):
            shift_f0(np.array([100.0]), semitones)


def test_large_but_representable_shifts_still_work() -> None:
    coarse, pitchf = postprocess(np.array([100.0, 0.0, 200.0]), 3, semitones=48)
    np.testing.assert_allclose(pitchf, [1600.0, 0.0, 3200.0])
    assert coarse.tolist() == [255, 1, 255]


def test_boundary_values_convert_to_finite_audio(tiny_models) -> None:
    """The ends of the ranges run through a real conversion (tiny random voice, 0.5 s)."""
    conv = tiny_models.converter()
    t = np.arange(8000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 180 * t)
    low = conv.convert(x, 16000, pitch=-48, index_rate=1.0, protect=0.0, rms_mix_rate=0.0, output_sample_rate=8000,
                       autotune=1.0, speaker=3, filter_radius=0, seed=-1)
    high = conv.convert(x, 16000, pitch=48, index_rate=0.0, protect=0.5, rms_mix_rate=1.0, output_sample_rate=384000,
                        keep_length=True, noise=False)
    assert low.sample_rate == 8000 and np.isfinite(low.audio).all()
    assert high.sample_rate == 384000 and np.isfinite(high.audio).all()
    assert high.audio.shape[0] == pytest.approx(len(x) * 384000 / 16000, abs=384000 // 100)


def test_clean_at_a_rate_it_cannot_run_names_the_rate_option() -> None:
    """``--clean 0.5 --sample-rate 384000`` named only ``clean``, not the option that set the rate."""
    params = ConversionParams(clean=0.5, output_sample_rate=384000)
    with pytest.raises(ParameterError, match=r"clean: noise reduction works at 5120\.\.256000 Hz.*--sample-rate"):
        params.check_output("wav", None, 40000)
    ConversionParams(clean=0.5, output_sample_rate=256000).check_output("wav", None, 40000)  # the range's top end


# ------------------------------------------------------------------ the fixes proposed by this walkthrough


def test_a_hybrid_option_for_pm_is_not_forced_on_a_crepe_or_fcpe_member() -> None:
    """docs/f0.md: an option goes to every member that accepts it. crepe-tiny and fcpe took
    ``**unused`` and refused ``voicing_threshold`` meant for pm; they now take their own
    options only, and an option no member takes is still refused."""
    for spec in ("hybrid:crepe-tiny+pm", "hybrid:fcpe+pm"):
        ext = rvcfast.get_f0_extractor(spec, voicing_threshold=0.5)
        pm = [m for m in ext.backends if m.name == "pm"][0]
        assert pm.voicing_threshold == 0.5
    for name in ("crepe-tiny", "fcpe", "hybrid:crepe-tiny+fcpe"):
        with pytest.raises(ParameterError, match="voicing_threshold"):
            rvcfast.get_f0_extractor(name, voicing_threshold=0.5)


@pytest.mark.parametrize(
    ("name", "options", "words"),
    [("rmvpe", {"pad_mode": "zeros"}, "rmvpe F0 option pad_mode"), ("rmvpe", {"chunk_frames": 33}, "rmvpe F0 option chunk_frames"),
     ("harvest", {"filter_radius": -1}, "harvest F0 option filter_radius"), ("harvest", {"filter_radius": 1.5}, "harvest F0 option filter_radius")],
)
def test_every_f0_option_error_names_its_backend(tiny_models, name: str, options: dict, words: str) -> None:
    with pytest.raises(ParameterError, match=words):
        rvcfast.get_f0_extractor(name, **({"weights": tiny_models.rmvpe} if name == "rmvpe" else {}), **options)


def test_the_command_lines_speaker_and_voice_pitch_errors_name_their_flags(tiny_models, tmp_path, capsys) -> None:
    """--speaker 4 on a 4-speaker voice is found once the voice is loaded and named with its flag;
    --voice-pitch bob=99 is blamed on --voice-pitch bob, not on --pitch."""
    wav = write_tone(tmp_path / "in")
    head = ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), *cli_weights(tiny_models)]
    assert main([*head, "--speaker", "4"]) == 2
    err = capsys.readouterr().err
    assert "--speaker" in err and "speaker 4" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    bob = tmp_path / "bob.pth"
    bob.write_bytes(tiny_models.voice.read_bytes())
    assert main([*head, "--voice", str(bob), "--voice-pitch", "bob=99"]) == 2
    err = capsys.readouterr().err
    assert "--voice-pitch bob: pitch must be within -48..48" in err and "--pitch:" not in err


def test_a_samples_rate_tuple_given_to_convert_is_a_clear_error(tiny_models) -> None:
    """``convert((samples, 16000))`` (the batch's pair form) and a ragged list raised NumPy's
    'setting an array element with a sequence'; both are ParameterErrors saying what to do."""
    conv = tiny_models.converter()
    x = np.zeros(16000, dtype=np.float32)
    with pytest.raises(ParameterError, match=r"convert\(samples, sample_rate\)"):
        conv.convert((x, 16000))
    with pytest.raises(ParameterError, match="not an array of numbers"):
        conv.convert([[0.1, 0.2], [0.3]], 16000)


def test_ray_convert_files_refuses_a_bad_value_before_starting_ray(tmp_path) -> None:
    """A pitch of 49 was found only inside the job, after a local cluster had started (12-20 s)."""
    ray = pytest.importorskip("ray")
    from rvcfast.integrations.ray import convert_files

    was_running = ray.is_initialized()
    wav = write_tone(tmp_path / "in")
    with pytest.raises(ParameterError, match=r"pitch must be within -48..48"):
        convert_files([str(wav)], tmp_path / "out", "voice.pth", pitch=49)
    assert ray.is_initialized() == was_running

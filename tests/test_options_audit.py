"""Applio's inference options (autotune, proposed_pitch, formant, clean, effects, loudness,
channels, output rate) as each front end meets them: the same bad value is refused by the
library, the command line and the server alike, with a message naming the option, never a
traceback or an internal error.

* An effect value beyond the float range (an integer of 400 digits, as JSON or Python gives
  it) raised OverflowError from ``float()``: the server answered 500, ``rvcfast convert
  --effects`` printed a traceback.
* An integer past Python's 4300-digit int-to-text limit (``pitch=10**5000``) raised
  ValueError from the error message's own ``repr``, instead of the ParameterError it built.
* ``formant`` given as a set or a mapping: a TypeError (a set is not subscriptable), or a
  message about the mapping's keys, instead of "formant must be a pair".
* ``clean`` with an ``output_sample_rate`` noise reduction cannot run at passed
  ``validate()``: ``Converter.convert`` failed only after the whole conversion, with a message
  about a ``sample_rate`` the caller never gave.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

from rvcfast.errors import ParameterError
from rvcfast.params import ConversionParams

HUGE = 10**400  # an integer float() cannot hold
HUGE_JSON = "1" + "0" * 400


def test_an_effect_value_beyond_the_float_range_is_refused_naming_the_effect() -> None:
    from rvcfast.effects import apply_effects, check_effects

    with pytest.raises(ParameterError, match=r"effect 'gain' parameter 'db' must be finite.*beyond the float range") as info:
        ConversionParams(effects={"gain": {"db": HUGE}}).validate()
    assert len(str(info.value)) < 300
    with pytest.raises(ParameterError, match=r"'reverb' parameter 'room_size' must be finite"):
        check_effects({"reverb": {"room_size": -HUGE}})
    with pytest.raises(ParameterError, match=r"sample_rate: audio effects works at"):
        apply_effects(np.zeros(100, np.float32), HUGE, {"gain": {"db": 1}})


def test_the_server_refuses_an_effect_value_beyond_the_float_range_as_the_effects_field() -> None:
    from rvcfast.serve.forms import FieldError, parse_fields

    with pytest.raises(FieldError, match=r"must be finite") as info:
        parse_fields([("voice", "alice"), ("effects", f'{{"gain": {{"db": {HUGE_JSON}}}}}')])
    assert info.value.field == "effects"


def test_the_command_line_refuses_an_effect_value_beyond_the_float_range_without_a_traceback(
    tiny_models, tmp_path, capsys
) -> None:
    from rvcfast.cli import main

    clip = tmp_path / "in.wav"
    clip.write_bytes(b"")  # never read: the options are checked first
    status = main([
        "convert", str(tiny_models.voice), str(clip), "-o", str(tmp_path / "out"), "--encoder", str(tiny_models.encoder),
        "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "--effects", f'{{"gain": {{"db": {HUGE_JSON}}}}}',
    ])
    assert status == 2
    err = capsys.readouterr().err
    assert "--effect/--effects" in err and "must be finite" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("pitch", 10**5000, "pitch must be finite"),
        ("loudness", -(10**5000), "loudness must be finite"),
        ("speaker", -(10**5000), "speaker must be an integer >= 0"),
        ("filter_radius", -(10**5000), "filter_radius must be an integer >= 0"),
        ("output_sample_rate", 10**5000, "output_sample_rate must be within 8000..384000 Hz"),
        ("formant", (10**5000, 1.0), "formant quefrency must be finite"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else "",
)
def test_an_integer_too_long_for_text_is_named_not_a_valueerror(name, value, words) -> None:
    with pytest.raises(ParameterError, match=words) as info:
        ConversionParams(**{name: value}).validate()
    assert "digits" in str(info.value) and len(str(info.value)) < 300


def test_f0_post_processing_refuses_a_shift_beyond_the_float_range() -> None:
    from rvcfast.f0.post import postprocess, proposed_pitch_offset, shift_f0

    track = np.full(10, 200.0)
    with pytest.raises(ParameterError, match="semitones must be finite"):
        shift_f0(track, HUGE)
    with pytest.raises(ParameterError, match="autotune must be finite"):
        postprocess(track, 10, autotune=-HUGE)
    with pytest.raises(ParameterError, match="proposed_pitch threshold must be finite"):
        proposed_pitch_offset(track, HUGE)


@pytest.mark.parametrize("formant", [{1.0, 1.2}, {"quefrency": 1.0, "timbre": 1.2}, np.array([[1.0, 1.2]]), b"12"])
def test_formant_must_be_an_ordered_pair(formant) -> None:
    with pytest.raises(ParameterError, match=r"^formant must be a pair \(quefrency, timbre\), got "):
        ConversionParams(formant=formant).validate()


@pytest.mark.parametrize("formant", [(1.0, 1.2), [1, 1.2], np.array([1.0, 1.2])])
def test_formant_as_a_tuple_list_or_array_of_two_is_taken(formant) -> None:
    pytest.importorskip("stftpitchshift")
    ConversionParams(formant=formant).validate()


def test_clean_at_an_output_rate_noise_reduction_cannot_run_is_refused_before_the_conversion(
    tiny_converter, monkeypatch
) -> None:
    pytest.importorskip("noisereduce")
    with pytest.raises(ParameterError, match=r"^clean: noise reduction works at 5120\.\.256000 Hz.*384000"):
        ConversionParams(clean=0.5, output_sample_rate=384000).validate()
    ConversionParams(clean=0.5, output_sample_rate=256000).validate()  # the range's top end
    ConversionParams(clean=0.0, output_sample_rate=384000).validate()  # no clean: any rate

    def no_work(*args, **kwargs):
        raise AssertionError("the conversion started")

    monkeypatch.setattr(tiny_converter.engine, "convert", no_work)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)
    with pytest.raises(ParameterError, match=r"^clean: .*output_sample_rate"):
        tiny_converter.convert(tone, 16000, clean=0.5, output_sample_rate=384000)


def test_applio_post_process_given_as_text_is_refused_like_the_effect_flags() -> None:
    """``{"post_process": "False", "reverb": True}`` (a JSON config read as text) applied the reverb:
    the string is truthy. The effect flags already refuse text; ``post_process`` does too."""
    from rvcfast.effects import effects_from_applio_kwargs

    with pytest.raises(ParameterError, match=r"^Applio flag 'post_process' must be True or False, got the string 'False'"):
        effects_from_applio_kwargs({"post_process": "False", "reverb": True})
    assert effects_from_applio_kwargs({"post_process": False, "reverb": True}) == {}
    assert effects_from_applio_kwargs({"post_process": True, "reverb": True}) == {"reverb": {}}


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"reverb": {"room_size": 0.2}, "reverb": {"damping": 0.9}}', "reverb"),
        ('{"reverb": {"room_size": 0.2, "room_size": 0.9}}', "room_size"),
    ],
)
def test_the_server_refuses_an_effects_json_with_a_key_given_twice(text, key) -> None:
    """JSON's decoder keeps the last of two equal keys: the first reverb's ``room_size`` was dropped
    unsaid (the server refuses a form field given twice; the same holds inside its JSON)."""
    from rvcfast.serve.forms import FieldError, parse_fields

    with pytest.raises(FieldError, match=rf"^effects: '{key}' is given more than once") as info:
        parse_fields([("voice", "alice"), ("effects", text)])
    assert info.value.field == "effects"
    assert parse_fields([("voice", "alice"), ("effects", '{"reverb": {"room_size": 0.2}}')]).overrides == {
        "effects": {"reverb": {"room_size": 0.2}}
    }


def test_formant_on_a_too_short_input_says_how_long_in_milliseconds(tiny_converter) -> None:
    """The input converts without ``formant`` (25 ms is enough); with it, the refusal counted
    16 kHz samples only, a rate the caller's file (44.1 kHz here) does not have."""
    pytest.importorskip("stftpitchshift")
    from rvcfast.errors import AudioError

    clip = (0.3 * np.sin(2 * np.pi * 220 * np.arange(2205) / 44100)).astype(np.float32)  # 50 ms
    with pytest.raises(AudioError, match=r"at least 1024 samples at 16 kHz \(64 ms of audio\), got 800 \(50 ms\)"):
        tiny_converter.convert(clip, 44100, formant=(1.0, 1.2), noise=False)


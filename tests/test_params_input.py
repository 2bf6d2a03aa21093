"""What the library takes as input: numbers (never text), batch inputs and batch options.

A value the conversion cannot use is a :class:`ParameterError` naming it, raised before
any work, never a ``TypeError`` in the middle of a conversion or a batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401 (fixtures)

import rvcfast
from rvcfast.errors import ParameterError
from rvcfast.params import ConversionParams, coerce_param, param_specs

NUMBER_KINDS = ("number", "optional-number")
NUMBER_PARAMS = [s.name for s in param_specs() if s.kind in NUMBER_KINDS]
#: a value inside each number parameter's range
IN_RANGE = {"pitch": 2, "index_rate": 0.5, "protect": 0.2, "rms_mix_rate": 0.5, "autotune": 0.5, "proposed_pitch": 155, "clean": 0.0}


# ------------------------------------------------------------------ numbers given as text


def test_every_number_parameter_is_listed() -> None:
    assert set(NUMBER_PARAMS) == set(IN_RANGE)


@pytest.mark.parametrize("name", NUMBER_PARAMS)
@pytest.mark.parametrize("wrap", [str, lambda v: str(v).encode(), lambda v: np.array(v)], ids=["str", "bytes", "0-d array"])
def test_a_number_given_as_text_is_refused_naming_the_parameter_and_type(name: str, wrap) -> None:
    value = wrap(IN_RANGE[name])
    ConversionParams(**{name: IN_RANGE[name]}).validate()  # the number itself is fine
    with pytest.raises(ParameterError, match=rf"{name} must be a number, got .*\({type(value).__name__}\)"):
        ConversionParams(**{name: value}).validate()


@pytest.mark.parametrize("name", ["index_rate", "pitch"])
def test_a_boolean_is_not_a_number(name: str) -> None:
    with pytest.raises(ParameterError, match=rf"{name} must be a number, got True \(bool\)"):
        ConversionParams(**{name: True}).validate()


def test_a_formant_pair_of_text_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"formant quefrency must be a number, got '1' \(str\)"):
        ConversionParams(formant=("1", "1.2")).validate()


def test_an_integer_given_as_text_is_refused_naming_its_type() -> None:
    with pytest.raises(ParameterError, match=r"speaker must be an integer, got '1' \(str\)"):
        ConversionParams(speaker="1").validate()


@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.int64(0)])
def test_numpy_numbers_are_numbers(value) -> None:
    ConversionParams(protect=value, index_rate=value).validate()


def test_front_ends_that_read_text_convert_it_first() -> None:
    # the CLI, the server's forms and environment settings go through coerce_param
    overrides = {name: coerce_param(name, str(IN_RANGE[name])) for name in NUMBER_PARAMS}
    params = ConversionParams(**overrides).validate()
    assert params.protect == pytest.approx(0.2) and isinstance(params.pitch, float)


@pytest.mark.parametrize("name", ["protect", "rms_mix_rate", "pitch"])
def test_convert_refuses_text_before_converting(tiny_converter: rvcfast.Converter, name: str) -> None:
    # protect="0.2" used to pass the check and fail with a TypeError inside the engine;
    # pitch="2" was kept as text
    with pytest.raises(ParameterError, match=name):
        tiny_converter.convert(tone(0.3), 16000, **{name: str(IN_RANGE[name])})


def test_batch_refuses_text_at_the_call(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    with pytest.raises(ParameterError, match="protect"):
        tiny_converter.iter_batch([tmp_path / "a.wav"], tmp_path / "out", protect="0.2")
    assert not (tmp_path / "out").exists()


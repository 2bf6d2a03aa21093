"""What the library takes as input: numbers (never text), batch inputs and batch options.

A value the conversion cannot use is a :class:`ParameterError` naming it, raised before
any work, never a ``TypeError`` in the middle of a conversion or a batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401 (fixtures)

import rvcfast
from rvcfast.batch import BatchOptions
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


# ------------------------------------------------------------------ settings as the second argument


def test_convert_takes_a_mapping_as_its_second_argument(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.4), 16000)
    by_keyword = tiny_converter.convert(tmp_path / "a.wav", pitch=5, noise=False)
    by_mapping = tiny_converter.convert(tmp_path / "a.wav", {"pitch": 5, "noise": False})
    by_object = tiny_converter.convert(tmp_path / "a.wav", ConversionParams(pitch=5, noise=False))
    np.testing.assert_array_equal(by_mapping.audio, by_keyword.audio)
    np.testing.assert_array_equal(by_object.audio, by_keyword.audio)
    with pytest.raises(ParameterError, match="unknown conversion parameter 'pich'"):
        tiny_converter.convert(tmp_path / "a.wav", {"pich": 5})


# ------------------------------------------------------------------ batch inputs


def _solo(conv: rvcfast.Converter, x: np.ndarray) -> np.ndarray:
    return conv.convert(x, 16000, noise=False).audio


@pytest.mark.parametrize(
    ("make", "dtype"),
    [
        (lambda x: (torch.from_numpy(x), 16000), np.float64),
        (lambda x: (torch.from_numpy(x).to(torch.float32), 16000), np.float32),
        (lambda x: (x.tolist(), 16000), np.float64),
        (lambda x: (x, 16000.0), np.float64),
        (lambda x: [(torch.from_numpy(x), np.int64(16000))], np.float64),
        (lambda x: [(x.tolist(), 16000)], np.float64),
    ],
    ids=["top tensor", "top float32 tensor", "top list", "float rate", "tensor in a list", "list in a list"],
)
def test_array_pairs_of_any_array_type(tiny_converter: rvcfast.Converter, make, dtype) -> None:
    # a top-level (tensor, rate) or (list, rate) pair used to be taken as two paths
    x = tone(0.4)
    results = tiny_converter.convert_batch(make(x), noise=False)
    assert len(results) == 1 and results[0].ok, results[0].error
    expected = _solo(tiny_converter, x.astype(dtype))
    np.testing.assert_allclose(results[0].audio, expected, atol=1e-5 * max(np.abs(expected).max(), 1e-3))


def test_a_tuple_of_two_pairs_is_two_inputs(tiny_converter: rvcfast.Converter) -> None:
    a, b = tone(0.3), tone(0.5, freq=330)
    results = tiny_converter.convert_batch(((a, 16000), (b, 16000)), noise=False)
    assert [r.ok for r in results] == [True, True]
    assert results[1].audio.shape == _solo(tiny_converter, b).shape


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([5], ("input 0", "got int")),
        (["a.wav", None], ("input 1", "got NoneType")),
        ([[np.zeros(8000), 16000]], ("input 0", "got a list", "tuple")),
        ([np.zeros(8000)], ("input 0", "sample rate")),
        ([(np.zeros(8000), "x")], ("input 0", "sample rate", "'x'")),
        ([(np.zeros(8000), None)], ("input 0", "sample rate", "None")),
        ([(np.zeros(8000), 16000.5)], ("input 0", "sample rate", "16000.5")),
        ([(np.zeros(8000), True)], ("input 0", "sample rate", "True")),
        ([(np.zeros(8000), 16000, 1)], ("input 0", "tuple of 3")),
        ([("a.wav", 16000)], ("input 0", "samples", "str")),
        (np.zeros(8000), ("sample rate", "ndarray")),
        (5, ("inputs must be", "int")),
    ],
    ids=["int", "None", "list pair", "bare array", "text rate", "None rate", "fractional rate", "bool rate", "triple", "path pair", "top array", "top int"],
)
def test_malformed_inputs_are_refused_naming_the_item(tiny_converter: rvcfast.Converter, inputs, words) -> None:
    with pytest.raises(ParameterError) as info:
        tiny_converter.convert_batch(inputs)
    for word in words:
        assert word in str(info.value)


# ------------------------------------------------------------------ batch options


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"decode_workers": 1.5}, ("decode_workers", "1.5")),
        ({"write_workers": True}, ("write_workers", "True")),
        ({"f0_workers": "2"}, ("f0_workers", "'2'")),
        ({"compute_workers": 2.0}, ("compute_workers", "2.0")),
        ({"format": 5}, ("format", "5")),
        ({"format": None}, ("format", "None")),
        ({"batch_seconds": "5"}, ("batch_seconds", "'5'")),
        ({"name_template": 3}, ("name_template", "int")),
    ],
)
def test_batch_options_of_the_wrong_type_are_parameter_errors(options: dict, words: tuple[str, ...]) -> None:
    with pytest.raises(ParameterError) as info:
        BatchOptions(**options).validate()
    for word in words:
        assert word in str(info.value)


def test_batch_options_of_the_right_type_pass() -> None:
    BatchOptions(decode_workers=np.int64(2), compute_workers=3, batch_seconds=np.float32(4.5), format="FLAC").validate()

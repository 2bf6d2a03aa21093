"""Validation before work starts, and property tests over arrays, rates and parameters.

Every parameter is checked against its documented range before any file is
decoded or written; the message names the parameter. Property tests (hypothesis)
check that any finite array at any rate from 8 kHz to 192 kHz converts with an
output length proportional to its input length, or raises a documented
:class:`~rvcfast.errors.RvcfastError` -- never an internal error.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (  # noqa: F401 (fixtures)
    MODEL_SR,
    TinyModels,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rvcfast
from rvcfast import audio as rvc_audio
from rvcfast import writing
from rvcfast.errors import AudioError, BackendUnavailableError, ModelLoadError, ParameterError, RvcfastError
from rvcfast.params import ConversionParams

HOP = MODEL_SR // 100
NUM_SPEAKERS = 4  # the tiny voice model's speaker count

#: More examples with e.g. RVCFAST_PROPERTY_EXAMPLES=500 (the default suite stays fast).
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("RVCFAST_PROPERTY_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------ validation before work starts

BAD_PARAMS = [
    ("pitch", 48.5),
    ("pitch", -49),
    ("pitch", float("nan")),
    ("pitch", float("inf")),
    ("pitch", "high"),
    ("index_rate", -0.01),
    ("index_rate", 1.01),
    ("index_rate", float("nan")),
    ("rms_mix_rate", -0.5),
    ("rms_mix_rate", 1.5),
    ("protect", -0.1),
    ("protect", 0.51),
    ("protect", None),
    ("speaker", NUM_SPEAKERS),
    ("speaker", -1),
    ("speaker", 1.5),
    ("speaker", True),
    ("filter_radius", -1),
    ("filter_radius", 2.5),
    ("seed", "7"),
    ("output_sample_rate", 7999),
    ("output_sample_rate", 384001),
]


class _Spy:
    """Counts decodes and writes; validation must happen before either."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded = 0
        self.written = 0
        real_read, real_write = rvc_audio.sf.read, writing._encode

        def read(*a, **kw):
            self.decoded += 1
            return real_read(*a, **kw)

        def write(*a, **kw):
            self.written += 1
            return real_write(*a, **kw)

        monkeypatch.setattr(rvc_audio.sf, "read", read)
        monkeypatch.setattr(writing, "_encode", write)


@pytest.fixture()
def wav(tmp_path: Path) -> Path:
    p = tmp_path / "in.wav"
    sf.write(p, tone(0.3), 16000)
    return p


@pytest.mark.parametrize("name,value", BAD_PARAMS, ids=[f"{n}={v!r}" for n, v in BAD_PARAMS])
def test_bad_parameter_is_refused_before_decoding(
    name: str, value: Any, tiny_converter: rvcfast.Converter, wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    with pytest.raises(ParameterError, match=name):
        tiny_converter.convert(wav, **{name: value})
    assert spy.decoded == 0


@pytest.mark.parametrize("name,value", BAD_PARAMS[::3], ids=[f"{n}={v!r}" for n, v in BAD_PARAMS[::3]])
def test_bad_parameter_is_refused_before_a_batch_starts(
    name: str, value: Any, tiny_converter: rvcfast.Converter, wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match=name):
        tiny_converter.convert_batch([wav, wav], out, **{name: value})
    assert spy.decoded == 0 and spy.written == 0 and not out.exists()


@pytest.mark.parametrize(
    "option,value",
    [("format", "aiff"), ("on_error", "ignore"), ("batch_seconds", 0), ("decode_workers", 0), ("name_template", "out"),
     ("bitrate", 128)],  # wav takes no bitrate
)
def test_bad_batch_option_is_refused_before_work(
    option: str, value: Any, tiny_converter: rvcfast.Converter, wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ParameterError):
        tiny_converter.convert_batch([wav], out, **{option: value})
    assert spy.decoded == 0 and spy.written == 0 and not out.exists()


def test_iter_batch_validates_options_at_call_time(tiny_converter: rvcfast.Converter, wav: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError):
        tiny_converter.iter_batch([wav], tmp_path / "out", format="aiff")


def test_speaker_range_follows_the_model(tiny_converter: rvcfast.Converter) -> None:
    assert tiny_converter.vocoder.num_speakers == NUM_SPEAKERS
    x = tone(0.2)
    assert tiny_converter.convert(x, 16000, speaker=NUM_SPEAKERS - 1).ok
    with pytest.raises(ParameterError, match=rf"speaker {NUM_SPEAKERS} is out of range.*{NUM_SPEAKERS} speaker"):
        tiny_converter.convert(x, 16000, speaker=NUM_SPEAKERS)


def test_index_dimension_must_match_the_model(tiny_models: TinyModels) -> None:
    with pytest.raises(ModelLoadError) as info:
        tiny_models.converter(index=tiny_models.index_256)
    msg = str(info.value)
    assert str(tiny_models.index_256) in msg and "256" in msg and "768" in msg


def test_index_dimension_checked_by_the_constructor(tiny_converter: rvcfast.Converter, tiny_models: TinyModels) -> None:
    from rvcfast.index import load_index

    with pytest.raises(ModelLoadError, match="dimension 256"):
        rvcfast.Converter(
            tiny_converter.vocoder, tiny_converter.encoder, tiny_converter.f0_extractor, load_index(tiny_models.index_256),
            device=torch.device("cpu"),
        )


def test_f0_model_needs_an_f0_extractor(tiny_converter: rvcfast.Converter) -> None:
    with pytest.raises(ParameterError, match="F0"):
        rvcfast.Converter(tiny_converter.vocoder, tiny_converter.encoder, None, device=torch.device("cpu"))


def test_model_without_f0_needs_no_f0_weights(tiny_models: TinyModels) -> None:
    conv = rvcfast.Converter.from_pretrained(
        tiny_models.voice_nof0, encoder=tiny_models.encoder, f0_weights=tiny_models.root / "missing_rmvpe.pt", device="cpu"
    )
    assert conv.f0_extractor is None and conv.convert(tone(0.3), 16000).ok


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"f0": "no-such-backend"}, BackendUnavailableError),
        ({"f0": 42}, ParameterError),
        ({"f0_weights": "/nonexistent/rmvpe.pt"}, RvcfastError),
        ({"dtype": "int8"}, ParameterError),
        ({"dtype": torch.float16}, ParameterError),  # CPU
        pytest.param({"device": "cuda"}, ParameterError, marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")),
    ],
)
def test_from_pretrained_argument_errors(tiny_models: TinyModels, kwargs: dict, error: type) -> None:
    kw: dict[str, Any] = dict(encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")
    kw.update(kwargs)
    with pytest.raises(error):
        rvcfast.Converter.from_pretrained(tiny_models.voice, **kw)


@pytest.mark.parametrize("rate", [0, -16000, 999, 768001, 10**9])
def test_array_rate_out_of_range(rate: int, tiny_converter: rvcfast.Converter) -> None:
    with pytest.raises(AudioError, match="sample rate"):
        tiny_converter.convert(tone(0.1), rate)


# ------------------------------------------------------------------ properties: arrays and rates

COMMON_RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000]
rates = st.one_of(st.sampled_from(COMMON_RATES), st.integers(8000, 192000))


def _signal(kind: str, n: int, channels: int, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, channels) if channels else (n,)
    if kind == "noise":
        x = rng.standard_normal(shape)
    elif kind == "tone":
        t = np.arange(n) / 997.0
        x = np.sin(2 * np.pi * t)
        x = np.repeat(x[:, None], channels, 1) if channels else x
    elif kind == "constant":
        x = np.ones(shape)
    elif kind == "impulses":
        x = np.zeros(shape)
        x.reshape(n, -1)[:: max(1, n // 7)] = 1.0
    else:  # "zeros"
        x = np.zeros(shape)
    return x * scale


def _check_converts(conv: rvcfast.Converter, x: np.ndarray, rate: int) -> None:
    n = x.shape[0]
    channels_first = x.ndim == 2 and x.shape[0] < x.shape[1] and x.shape[0] <= 8
    too_short = math.ceil(n * 16000 / rate) < 400  # under 25 ms at 16 kHz: not one output frame
    try:
        result = conv.convert(x, rate, noise=False)
    except RvcfastError as exc:
        assert isinstance(exc, (AudioError, ParameterError)), repr(exc)
        # within these inputs the only refusals: the channels-first guard, and too short to give output
        assert channels_first or (too_short and "too short to convert" in str(exc)), f"refused a valid input: {exc}"
        return
    assert not channels_first and not too_short
    y = result.audio
    assert result.sample_rate == MODEL_SR and y.dtype == np.float32
    assert np.isfinite(y).all()
    ideal = n * MODEL_SR / rate
    assert -HOP <= ideal - y.shape[0] <= 3 * HOP, (n, rate, y.shape[0], ideal)
    if y.size:
        assert np.abs(y).max() <= 0.99 + 1e-6


@PROPERTY_SETTINGS
@given(
    rate=rates,
    seconds=st.floats(0.0, 0.6),
    kind=st.sampled_from(["noise", "tone", "constant", "impulses", "zeros"]),
    channels=st.sampled_from([0, 0, 1, 2, 3]),
    log_scale=st.sampled_from([-300, -30, -3, -1, 0, 1, 3, 30, 300]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
@example(rate=192000, seconds=0.0, kind="noise", channels=0, log_scale=0, dtype=np.float64, seed=0)
@example(rate=8000, seconds=0.6, kind="constant", channels=2, log_scale=300, dtype=np.float64, seed=0)
@example(rate=44099, seconds=0.01, kind="impulses", channels=0, log_scale=-300, dtype=np.float64, seed=1)
def test_any_finite_signal_converts(
    tiny_converter: rvcfast.Converter, rate: int, seconds: float, kind: str, channels: int, log_scale: int, dtype, seed: int
) -> None:
    n = max(1, int(seconds * rate))
    x = _signal(kind, n, channels, 10.0**log_scale, seed)
    if dtype == np.float32:
        x = np.clip(x, -np.finfo(np.float32).max, np.finfo(np.float32).max)
    x = x.astype(dtype)
    if not np.isfinite(x).all():  # e.g. 1e300 in float32 would be inf: not a finite input
        return
    _check_converts(tiny_converter, x, rate)


@PROPERTY_SETTINGS
@given(
    x=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=48),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    rate=rates,
)
def test_any_small_finite_array_converts_or_is_refused_clearly(
    tiny_converter: rvcfast.Converter, x: np.ndarray, rate: int
) -> None:
    """Arbitrary element values (subnormals, float maxima, signed zeros) in tiny arrays of any shape."""
    if x.ndim == 2 and x.shape[1] > 8:
        x = x[:, :8]
    _check_converts(tiny_converter, x, rate)


def test_output_length_is_proportional_to_input_length(tiny_converter: rvcfast.Converter) -> None:
    for rate in (8000, 44100, 192000):
        lengths = []
        for seconds in (0.5, 1.0, 2.0):
            y = tiny_converter.convert(tone(seconds, rate), rate, noise=False).audio
            lengths.append(y.shape[0])
        # doubling the input doubles the output, up to RVC's per-segment shortfall of at most two frames
        assert abs(lengths[1] - 2 * lengths[0]) <= 3 * HOP and abs(lengths[2] - 2 * lengths[1]) <= 3 * HOP


# ------------------------------------------------------------------ properties: parameters

_RANGES = {
    "pitch": (-48, 48),
    "index_rate": (0, 1),
    "protect": (0, 0.5),
    "rms_mix_rate": (0, 1),
}


def _valid(params: dict[str, Any]) -> bool:
    for name, (lo, hi) in _RANGES.items():
        v = params[name]
        if not (math.isfinite(v) and lo <= v <= hi):
            return False
    if not (0 <= params["speaker"] < NUM_SPEAKERS) or params["filter_radius"] < 0:
        return False
    sr = params["output_sample_rate"]
    return sr is None or 8000 <= sr <= 384000


@PROPERTY_SETTINGS
@given(
    pitch=st.one_of(st.floats(-60, 60), st.sampled_from([-48.0, 48.0, float("nan"), float("inf")])),
    index_rate=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0])),
    protect=st.one_of(st.floats(-0.2, 0.7), st.sampled_from([0.0, 0.5])),
    rms_mix_rate=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0])),
    speaker=st.integers(-2, NUM_SPEAKERS + 2),
    filter_radius=st.integers(-1, 6),
    output_sample_rate=st.one_of(st.none(), st.sampled_from([7999, 8000, 16000, 22050, 44100, 48000, 96000, 384000, 384001])),
    seed=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_parameters_validate_exactly_their_documented_ranges(tiny_converter: rvcfast.Converter, **params: Any) -> None:
    x = tone(0.25)
    try:
        result = tiny_converter.convert(x, 16000, **params)
    except ParameterError:
        assert not _valid(params), f"refused valid parameters {params}"
        return
    assert _valid(params), f"accepted invalid parameters {params}"
    rate = params["output_sample_rate"] or MODEL_SR
    y = result.audio
    assert result.sample_rate == rate and np.isfinite(y).all()
    assert abs(y.shape[0] - 0.25 * rate) <= 3 * rate // 100


def test_params_object_validate_matches_converter() -> None:
    with pytest.raises(ParameterError):
        ConversionParams(protect=0.7).validate()
    ConversionParams(pitch=-48, index_rate=0, protect=0.5, rms_mix_rate=1).validate()

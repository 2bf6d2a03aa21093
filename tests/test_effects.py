"""rvcfast.effects against Applio's formant / clean / effects fixtures (../shared/golden-features).

Tolerances are the fixture README's suggested checks: formant max abs <= 1e-9 (float64
NumPy FFTs), clean <= 1e-6, effects bit-exact with pedalboard 0.9.24 (the version the fixtures were
made with, pinned in constraints.txt). Another pedalboard release runs the same DSP with
other float rounding: there the check is an SNR of at least 60 dB (measured with 0.9.26:
114-148 dB for single effects, 66 dB for the ten-effect chain, where the limiter,
compressor and pitch shifter pass small differences on).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import SHARED

from rvcfast import effects as fx
from rvcfast.errors import AudioError, BackendUnavailableError, ParameterError

FEATURES = SHARED / "golden-features"
PEDALBOARD_REFERENCE = "0.9.24"

#: Applio's post_process_audio keywords and fallbacks, as the fixture README's section 6 lists them.
README_FALLBACKS = {
    "reverb": {
        "reverb_room_size": 0.5,
        "reverb_damping": 0.5,
        "reverb_wet_level": 0.33,
        "reverb_dry_level": 0.4,
        "reverb_width": 1.0,
        "reverb_freeze_mode": 0,
    },
    "pitch_shift": {"pitch_shift_semitones": 0},
    "limiter": {"limiter_threshold": -6, "limiter_release": 0.05},
    "gain": {"gain_db": 0},
    "distortion": {"distortion_gain": 25},
    "chorus": {
        "chorus_rate": 1.0,
        "chorus_depth": 0.25,
        "chorus_delay": 7,
        "chorus_feedback": 0.0,
        "chorus_mix": 0.5,
    },
    "bitcrush": {"bitcrush_bit_depth": 8},
    "clipping": {"clipping_threshold": 0},
    "compressor": {
        "compressor_threshold": 0,
        "compressor_ratio": 1,
        "compressor_attack": 1.0,
        "compressor_release": 100,
    },
    "delay": {"delay_seconds": 0.5, "delay_feedback": 0.0, "delay_mix": 0.5},
}


def _fixtures() -> dict | None:
    path = FEATURES / "manifest.json"
    return json.loads(path.read_text())["fixtures"] if path.is_file() else None


_FIXTURES = _fixtures()
_SKIP = pytest.mark.skipif(
    _FIXTURES is None, reason=f"golden-features fixtures not found at {FEATURES} (set RVCFAST_SHARED)"
)


def _read(rel: str, dtype: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    return sf.read(FEATURES / rel, dtype=dtype)


def _pedalboard():
    return pytest.importorskip("pedalboard", reason="pedalboard not installed (extra 'effects')")


#: the smallest SNR accepted against the fixtures from a pedalboard other than the reference's
OTHER_VERSION_SNR_DB = 60.0


def _assert_reference(out: np.ndarray, expected: np.ndarray) -> None:
    """Bit-exact with the reference's pedalboard; within its float rounding with another release."""
    import pedalboard

    assert out.shape == expected.shape
    if pedalboard.__version__ == PEDALBOARD_REFERENCE:
        np.testing.assert_array_equal(out, expected)
        return
    error = float(np.sum((out.astype(np.float64) - expected) ** 2))
    snr = 10 * np.log10(float(np.sum(expected.astype(np.float64) ** 2)) / max(error, 1e-300))
    assert snr >= OTHER_VERSION_SNR_DB, f"pedalboard {pedalboard.__version__}: SNR {snr:.1f} dB against the fixture"


def _nested_from_flat(kwargs: dict) -> dict:
    """The nested form written by hand from Applio's keywords: the effect prefix is dropped."""
    effects = {name: {} for name in README_FALLBACKS if kwargs.get(name)}
    for key, value in kwargs.items():
        owners = [name for name in effects if key.startswith(name + "_")]
        if owners:
            owner = max(owners, key=len)
            effects[owner][key[len(owner) + 1 :]] = value
    return effects


# ----------------------------------------------------------------------------- formant


@_SKIP
@pytest.mark.golden
@pytest.mark.parametrize(
    "pair", [] if _FIXTURES is None else _FIXTURES["formant"]["pairs"], ids=lambda p: p["key"]
)
def test_formant_shift_matches_applio(pair):
    pytest.importorskip("stftpitchshift", reason="stftpitchshift not installed (extra 'formant')")
    audio, sr = _read(_FIXTURES["formant"]["input"], "float64")
    assert sr == fx.FORMANT_SAMPLE_RATE
    expected = np.load(FEATURES / "formant" / "outputs.npz")[pair["key"]]
    out = fx.formant_shift(audio, pair["formant_qfrency"], pair["formant_timbre"])
    assert out.dtype == np.float64 and out.shape == expected.shape == (pair["n_out"],)
    assert np.max(np.abs(out - expected)) <= 1e-9


def test_formant_shift_changes_the_signal_and_keeps_its_length():
    pytest.importorskip("stftpitchshift", reason="stftpitchshift not installed (extra 'formant')")
    t = np.arange(8000) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 900 * t))
    out = fx.formant_shift(audio.astype(np.float32), 1.0, 1.3)
    assert out.dtype == np.float64 and out.shape == audio.shape
    assert np.max(np.abs(out - audio)) > 1e-3


# ----------------------------------------------------------------------------- clean


@_SKIP
@pytest.mark.golden
@pytest.mark.parametrize(
    "case", [] if _FIXTURES is None else _FIXTURES["clean"]["outputs"], ids=lambda c: str(c["clean_strength"])
)
def test_denoise_matches_applio(case):
    pytest.importorskip("noisereduce", reason="noisereduce not installed (extra 'clean')")
    audio, sr = _read(_FIXTURES["clean"]["input"], "float32")
    assert sr == _FIXTURES["clean"]["sr"]
    expected, _ = _read(case["file"], "float32")
    out = fx.denoise(audio, sr, case["clean_strength"])
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert np.max(np.abs(out - expected)) <= 1e-6


@_SKIP
@pytest.mark.golden
def test_e2e_b_clean_and_effects_stages():
    """Applio's e2e (b): clean at the relabelled 44.1 kHz, then reverb + compressor."""
    pytest.importorskip("noisereduce", reason="noisereduce not installed (extra 'clean')")
    _pedalboard()
    debug = np.load(FEATURES / "e2e" / "b_debug.npz")
    params = json.loads((FEATURES / "e2e" / "b_params.json").read_text())
    rate = params["resample_sr"]
    cleaned = fx.denoise(debug["pipeline_out"], rate, params["clean_strength"])
    assert np.max(np.abs(cleaned - debug["cleaned"])) <= 1e-6
    expected, written_rate = _read("e2e/b_out.wav", "float32")
    assert written_rate == rate
    out = fx.apply_effects(debug["cleaned"], rate, fx.effects_from_applio_kwargs(params))
    _assert_reference(out, expected)


# ----------------------------------------------------------------------------- effects


@_SKIP
@pytest.mark.golden
@pytest.mark.parametrize("name", [] if _FIXTURES is None else list(_FIXTURES["effects"]["cases"]))
def test_effects_match_applio_bit_exact(name):
    _pedalboard()
    case = _FIXTURES["effects"]["cases"][name]
    audio, sr = _read(_FIXTURES["effects"]["input"], "float32")
    assert sr == _FIXTURES["effects"]["sr"]
    expected, _ = _read(case["file"], "float32")

    converted = fx.effects_from_applio_kwargs(case["kwargs"])
    out = fx.apply_effects(audio, sr, converted)
    assert out.dtype == np.float32
    _assert_reference(out, expected)

    nested = _nested_from_flat(case["kwargs"])
    assert converted == nested
    np.testing.assert_array_equal(fx.apply_effects(audio, sr, nested), out)
    reordered = dict(reversed(list(nested.items())))
    np.testing.assert_array_equal(fx.apply_effects(audio, sr, reordered), out)


@_SKIP
@pytest.mark.golden
def test_effect_order_is_fixed_whatever_the_mapping_order():
    _pedalboard()
    audio, sr = _read(_FIXTURES["effects"]["input"], "float32")
    chain = {
        "delay": {"seconds": 0.05, "mix": 0.25},
        "distortion": {"gain": 4.0},
        "reverb": {"room_size": 0.3},
    }
    out = fx.apply_effects(audio, sr, chain)
    np.testing.assert_array_equal(out, fx.apply_effects(audio, sr, dict(sorted(chain.items()))))
    # chaining by hand in the reference order gives the same; another order does not
    by_hand = audio
    for effect in ("reverb", "distortion", "delay"):
        by_hand = fx.apply_effects(by_hand, sr, {effect: chain[effect]})
    np.testing.assert_array_equal(out, by_hand)
    other = audio
    for effect in ("delay", "distortion", "reverb"):
        other = fx.apply_effects(other, sr, {effect: chain[effect]})
    assert not np.array_equal(out, other)


def test_parameter_table_matches_applio_fallbacks():
    assert fx.EFFECT_ORDER == tuple(README_FALLBACKS)
    for effect, fallbacks in README_FALLBACKS.items():
        params = fx.EFFECT_PARAMETERS[effect]
        assert {p.applio_kwarg: p.default for p in params} == fallbacks
        assert all(p.effect == effect for p in params)
    assert fx.resolve_effects({"gain": {}})["gain"] == {"db": 0.0}
    assert fx.resolve_effects({"distortion": None})["distortion"] == {"gain": 25.0}
    assert fx.resolve_effects({"chorus": {"rate": 1.2, "mix": 0.4}})["chorus"] == {
        "rate": 1.2,
        "depth": 0.25,
        "delay": 7.0,
        "feedback": 0.0,
        "mix": 0.4,
    }
    assert list(fx.resolve_effects({"delay": {}, "reverb": {}})) == ["reverb", "delay"]


def test_flat_kwargs_conversion_follows_applio_flags():
    kwargs = {
        "pitch": 3,
        "f0_method": "rmvpe",
        "reverb": True,
        "reverb_room_size": 0.3,
        "gain": False,
        "gain_db": 6.0,
        "delay": 1,
        "delay_mix": 0.2,
    }
    assert fx.effects_from_applio_kwargs(kwargs) == {"reverb": {"room_size": 0.3}, "delay": {"mix": 0.2}}
    assert fx.effects_from_applio_kwargs({**kwargs, "post_process": False}) == {}
    assert fx.effects_from_applio_kwargs({**kwargs, "post_process": True}) == {
        "reverb": {"room_size": 0.3},
        "delay": {"mix": 0.2},
    }


def test_no_effects_returns_the_audio_without_pedalboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "pedalboard", None)
    audio = np.linspace(-0.5, 0.5, 100)
    out = fx.apply_effects(audio, 40000, {})
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, audio.astype(np.float32))


@pytest.mark.parametrize(
    ("effects", "message"),
    [
        ({"flanger": {}}, r"unknown effect 'flanger'; valid effects: reverb, pitch_shift, limiter"),
        (
            {"reverb": {"size": 0.3}},
            r"unknown parameter 'size' for effect 'reverb'; valid parameters: room_size",
        ),
        ({"gain": {"gain_db": 3}}, r"unknown parameter 'gain_db' for effect 'gain'; valid parameters: db"),
        ({"gain": {"db": "loud"}}, r"effect 'gain' parameter 'db' must be a number, got 'loud'"),
        ({"gain": {"db": True}}, r"must be a number"),
        ({"gain": {"db": float("nan")}}, r"must be finite"),
        ({"gain": 3.0}, r"effect 'gain': parameters must be a mapping"),
        (["reverb"], r"effects must be a mapping"),
    ],
)
def test_bad_effect_mappings_are_rejected(effects, message):
    with pytest.raises(ParameterError, match=message):
        fx.apply_effects(np.zeros(100, np.float32), 40000, effects)


def test_out_of_range_values_name_the_effect():
    pytest.importorskip("pedalboard", reason="pedalboard not installed (extra 'effects')")
    with pytest.raises(ParameterError, match=r"effect 'reverb': Room Size value must be between 0.0 and 1.0"):
        fx.apply_effects(np.zeros(100, np.float32), 40000, {"reverb": {"room_size": 2.0}})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"reverb": True, "reverb_roomsize": 0.3},
            r"unknown Applio keyword 'reverb_roomsize' for effect 'reverb'",
        ),
        (
            {"limiter": True, "limiter_release_time": 1.0},
            r"command-line name; its keyword argument is 'limiter_release'",
        ),
        ({"reverb": "False"}, r"flag 'reverb' must be True or False"),
        ({"gain": True, "gain_db": "6"}, r"must be a number"),
    ],
)
def test_bad_applio_kwargs_are_rejected(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        fx.effects_from_applio_kwargs(kwargs)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: fx.denoise(np.zeros(4000), 40000, 1.5),
            ParameterError,
            "clean strength must be between 0 and 1",
        ),
        (
            lambda: fx.denoise(np.zeros(4000), 0, 0.5),
            ParameterError,
            "sample_rate must be a positive integer",
        ),
        (lambda: fx.denoise(np.zeros(4000), 44100.5, 0.5), ParameterError, "sample_rate must be a positive"),
        (lambda: fx.denoise(np.zeros((2, 4000)), 40000, 0.5), AudioError, "1-D array"),
        (lambda: fx.denoise(np.zeros(4000, np.int16), 40000, 0.5), AudioError, "floating-point"),
        (lambda: fx.formant_shift(np.zeros(4000), 0.0, 1.0), ParameterError, "quefrency must be > 0"),
        (lambda: fx.formant_shift(np.zeros(4000), 1.0, -1.0), ParameterError, "timbre must be at least 0.01"),
        (lambda: fx.formant_shift(np.zeros(4000), float("inf"), 1.0), ParameterError, "must be finite"),
        (lambda: fx.formant_shift(np.zeros(500), 1.0, 1.0), AudioError, "at least 1024 samples"),
        (lambda: fx.formant_shift(np.full(4000, np.nan), 1.0, 1.0), AudioError, "NaN or infinite"),
        (lambda: fx.apply_effects(np.zeros(0), 40000, {"gain": {}}), AudioError, "empty"),
        (lambda: fx.apply_effects(np.zeros(10), -1, {"gain": {}}), ParameterError, "sample_rate"),
    ],
)
def test_invalid_arguments_are_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("module", "extra", "call"),
    [
        ("stftpitchshift", "formant", lambda: fx.formant_shift(np.zeros(2048), 1.0, 1.0)),
        ("noisereduce", "clean", lambda: fx.denoise(np.zeros(2048, np.float32), 40000, 0.5)),
        ("pedalboard", "effects", lambda: fx.apply_effects(np.zeros(2048, np.float32), 40000, {"gain": {}})),
    ],
)
def test_missing_extra_says_what_to_install(monkeypatch, module, extra, call):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail as if not installed
    with pytest.raises(BackendUnavailableError, match=rf'install it with: pip install "rvcfast\[{extra}\]"'):
        call()


def test_importing_the_module_imports_no_optional_library():
    import subprocess

    code = (
        "import sys, rvcfast.effects; "
        "print([m for m in ('pedalboard', 'noisereduce', 'stftpitchshift') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- value ranges


#: Values pedalboard's plugins refuse, the words the error must name.
OUT_OF_RANGE = [
    ({"reverb": {"room_size": 5}}, "effects: reverb room_size must be within 0..1, got 5"),
    ({"chorus": {"rate": -1}}, "effects: chorus rate must be within 0..100 Hz, got -1"),
    ({"bitcrush": {"bit_depth": 100}}, "effects: bitcrush bit_depth must be within 0..32 bits, got 100"),
    ({"compressor": {"ratio": 0.1}}, "effects: compressor ratio must be >= 1, got 0.1"),
    ({"pitch_shift": {"semitones": 500}}, "effects: pitch_shift semitones must be within -72..72 semitones, got 500"),
    ({"delay": {"seconds": 60}}, "effects: delay seconds must be within 0..30 s, got 60"),
    ({"delay": {"mix": 1.5}}, "effects: delay mix must be within 0..1, got 1.5"),
    ({"reverb": {"width": -0.5}}, "effects: reverb width must be within 0..1, got -0.5"),
]


@pytest.mark.parametrize("without_pedalboard", [False, True])
@pytest.mark.parametrize(("effects", "message"), OUT_OF_RANGE)
def test_out_of_range_values_are_refused_by_validate(monkeypatch, effects, message, without_pedalboard):
    from rvcfast.params import ConversionParams

    if without_pedalboard:
        monkeypatch.setitem(sys.modules, "pedalboard", None)
    with pytest.raises(ParameterError) as info:
        ConversionParams(effects=effects).validate()  # before any conversion, with or without the extra
    assert str(info.value) == message


@pytest.mark.parametrize(
    "effects",
    [
        {"delay": {"seconds": 30, "feedback": 1, "mix": 0}},
        {"pitch_shift": {"semitones": -72}},
        {"compressor": {"ratio": 1}},
        {"bitcrush": {"bit_depth": 0}},
        {"chorus": {"rate": 100, "depth": 5, "feedback": 0.9}},
        {"gain": {"db": -60}},
    ],
)
def test_values_at_the_range_bounds_are_accepted(effects):
    assert fx.check_effects(effects) == fx.resolve_effects(effects)


def test_the_range_table_is_what_pedalboard_accepts():
    pedalboard = _pedalboard()
    for params in fx.EFFECT_PARAMETERS.values():
        for p in params:
            plugin = getattr(pedalboard, p.pedalboard_class)
            for bound in (p.minimum, p.maximum):
                if bound is not None:
                    plugin(**{p.pedalboard_arg: bound})  # the bound itself is accepted
            for outside in ((p.minimum - 0.5) if p.minimum is not None else None, (p.maximum + 0.5) if p.maximum is not None else None):
                if outside is not None:
                    with pytest.raises(ValueError):
                        plugin(**{p.pedalboard_arg: outside})


def test_validate_builds_the_effect_chain_when_pedalboard_is_installed(monkeypatch):
    pedalboard = _pedalboard()

    class NarrowerReverb:  # a pedalboard release that accepts less than the table says
        def __init__(self, **kwargs):
            raise ValueError("Room Size value must be between 0.0 and 0.5.")

    monkeypatch.setattr(pedalboard, "Reverb", NarrowerReverb)
    with pytest.raises(ParameterError, match=r"^effects: effect 'reverb': Room Size value must be between 0.0 and 0.5"):
        fx.check_effects({"reverb": {"room_size": 0.8}})


def test_effects_that_blow_up_are_an_error_not_a_file_of_nan():
    _pedalboard()
    x = np.sin(2 * np.pi * 220 * np.arange(40000) / 40000).astype(np.float32) * 0.3
    with pytest.raises(AudioError, match=r"the effects \(chorus\) produced \d+ NaN or infinite samples"):
        fx.apply_effects(x, 40000, {"chorus": {"feedback": 2.0}})  # feedback beyond 1 diverges
    assert np.isfinite(fx.apply_effects(x, 40000, {"chorus": {"feedback": 0.5}})).all()


def test_denoise_leaves_digital_silence_alone():
    pytest.importorskip("noisereduce")
    silence = np.zeros(40000)
    out = fx.denoise(silence, 40000, 0.8)
    assert out.shape == silence.shape and not np.any(out)


def test_a_formant_timbre_with_no_envelope_left_is_refused():
    from rvcfast.params import ConversionParams

    with pytest.raises(ParameterError, match="formant timbre must be at least 0.01, got 0.001"):
        ConversionParams(formant=(1.0, 0.001)).validate()
    with pytest.raises(ParameterError, match="formant timbre must be at least 0.01"):
        fx.formant_shift(np.zeros(4000), 1.0, 0.001)

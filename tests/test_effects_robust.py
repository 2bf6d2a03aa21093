"""rvcfast.effects on edge input: sample rates the libraries cannot run at, digital silence
longer than noisereduce's chunk, values pedalboard silently clamps, concurrent calls.

The expectations come from the libraries themselves (noisereduce called directly, pedalboard's
outputs compared with each other), not from rvcfast.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rvcfast import effects as fx
from rvcfast.errors import AudioError, ParameterError
from rvcfast.params import ConversionParams


def _noise(n: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- sample rates


@pytest.mark.parametrize(("effect", "rate"), [("reverb", 100), ("reverb", 2_000_000), ("pitch_shift", 100)])
def test_effects_at_a_rate_pedalboard_cannot_run_are_refused_not_a_crash(effect, rate):
    """pedalboard's Reverb kills the process (SIGFPE, SIGSEGV) at these rates and its
    PitchShift never returns; run in a child so a regression cannot take pytest down."""
    pytest.importorskip("pedalboard", reason="pedalboard not installed (extra 'effects')")
    code = textwrap.dedent(
        f"""
        import numpy as np
        from rvcfast import effects as fx
        from rvcfast.errors import AudioError, ParameterError
        try:
            fx.apply_effects(np.full(4000, 0.1, np.float32), {rate}, {{{effect!r}: {{"semitones": 2}} if {effect!r} == "pitch_shift" else {{}}}})
        except ParameterError as exc:
            print("refused:", exc)
        """
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{effect} at {rate} Hz did not return")
    assert proc.returncode == 0, f"{effect} at {rate} Hz: exit status {proc.returncode} {proc.stderr[-300:]}"
    assert f"refused: sample_rate: audio effects works at 1000..768000 Hz, got {rate}" in proc.stdout


def test_effects_sample_rate_bounds():
    pytest.importorskip("pedalboard", reason="pedalboard not installed (extra 'effects')")
    chain = {"reverb": {}, "pitch_shift": {"semitones": -3}, "chorus": {}, "delay": {"seconds": 0.01}}
    lo, hi = fx.EFFECTS_SAMPLE_RATES
    assert (lo, hi) == (1000, 768000)
    for rate in (lo, hi):
        out = fx.apply_effects(_noise(3000), rate, chain)
        assert out.shape == (3000,) and np.isfinite(out).all()
    for rate in (lo - 1, hi + 1):
        with pytest.raises(ParameterError, match=rf"^sample_rate: audio effects works at 1000..768000 Hz, got {rate}$"):
            fx.apply_effects(_noise(3000), rate, chain)


@pytest.mark.parametrize("rate", [384000, 256001, 5119, 4000])
def test_denoise_at_a_rate_noisereduce_cannot_run_is_a_parameter_error(rate):
    """384 kHz is a valid output_sample_rate; noisereduce's defaults raise a bare ValueError there."""
    pytest.importorskip("noisereduce", reason="noisereduce not installed (extra 'clean')")
    with pytest.raises(ParameterError, match=rf"^sample_rate: noise reduction works at 5120..256000 Hz, got {rate}$"):
        fx.denoise(_noise(20000), rate, 0.5)


@pytest.mark.parametrize("rate", [5120, 256000])
def test_denoise_at_the_rate_bounds_matches_noisereduce(rate):
    noisereduce = pytest.importorskip("noisereduce", reason="noisereduce not installed (extra 'clean')")
    assert fx.DENOISE_SAMPLE_RATES == (5120, 256000)
    x = _noise(20000)
    expected = noisereduce.reduce_noise(y=x, sr=rate, prop_decrease=0.5)
    np.testing.assert_array_equal(fx.denoise(x, rate, 0.5), expected)


# ----------------------------------------------------------------------------- silence


def test_denoise_keeps_a_chunk_of_digital_silence_silent():
    """noisereduce works in chunks of 600,000 samples and gives NaN for a chunk of zeros."""
    noisereduce = pytest.importorskip("noisereduce", reason="noisereduce not installed (extra 'clean')")
    x = np.concatenate([np.zeros(700_000, np.float32), _noise(40_000, seed=3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the library's 0/0 there is mended, not shown to the user
        out = fx.denoise(x, 40000, 0.5)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.isfinite(out).all()
    assert not np.any(out[:600_000])
    with np.errstate(invalid="ignore"):
        expected = noisereduce.reduce_noise(y=x, sr=40000, prop_decrease=0.5)
    assert np.isnan(expected[:600_000]).all()  # the library's own result there
    np.testing.assert_array_equal(out[600_000:], expected[600_000:])
    assert np.any(out[700_000:])


def test_formant_shift_of_digital_silence_is_silence_without_warnings():
    """The shifter divides 0 by 0 on silence: a silent input printed numpy's "invalid value"
    warning (its answer was silence all the same)."""
    pytest.importorskip("stftpitchshift", reason="stftpitchshift not installed (extra 'formant')")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fx.formant_shift(np.zeros(32000, np.float32), 1.0, 0.7)
    assert out.dtype == np.float64 and out.shape == (32000,) and not np.any(out)
    quiet = np.concatenate([np.zeros(16000), 0.1 * np.sin(np.arange(16000) / 5)])  # not all silence: shifted
    assert np.any(fx.formant_shift(quiet, 1.0, 0.7)[16000:])


# ----------------------------------------------------------------------------- silent clamps

#: Values pedalboard accepts but does not use as given, and what the error must say.
SILENTLY_CHANGED = [
    ({"chorus": {"delay": 200}}, "effects: chorus delay must be within 1..100 ms (pedalboard clamps values outside to this range), got 200"),
    ({"chorus": {"delay": 0.5}}, "effects: chorus delay must be within 1..100 ms (pedalboard clamps values outside to this range), got 0.5"),
    ({"chorus": {"feedback": -2}}, "effects: chorus feedback must be within -1..1 (beyond it the output grows without bound), got -2"),
    ({"limiter": {"release": -1}}, "effects: limiter release must be >= 0 ms (a negative time acts as 0), got -1"),
    ({"compressor": {"attack": -5}}, "effects: compressor attack must be >= 0 ms (a negative time acts as 0), got -5"),
    ({"compressor": {"release": -0.5}}, "effects: compressor release must be >= 0 ms (a negative time acts as 0), got -0.5"),
    # before: accepted, and every file then failed after its whole conversion (NaN/inf output)
    ({"gain": {"db": 800}}, "effects: gain db must be <= 700 dB (float32 audio overflows to infinity near 770 dB), got 800"),
    ({"distortion": {"gain": 1000}}, "effects: distortion gain must be <= 700 dB (float32 audio overflows to infinity near 770 dB), got 1000"),
]


@pytest.mark.parametrize("without_pedalboard", [False, True])
@pytest.mark.parametrize(("effects", "message"), SILENTLY_CHANGED)
def test_values_pedalboard_would_not_use_as_given_are_refused(monkeypatch, effects, message, without_pedalboard):
    if without_pedalboard:
        monkeypatch.setitem(sys.modules, "pedalboard", None)
    with pytest.raises(ParameterError) as info:
        ConversionParams(effects=effects).validate()
    assert str(info.value) == message


def test_what_pedalboard_does_with_those_values():
    """The reasons in the messages above, measured (a pedalboard that stops clamping shows here)."""
    pytest.importorskip("pedalboard", reason="pedalboard not installed (extra 'effects')")
    x = np.sin(2 * np.pi * 220 * np.arange(40000) / 40000).astype(np.float32) * 0.3

    def run(effects):
        return fx.apply_effects(x, 40000, effects)

    np.testing.assert_array_equal(run({"chorus": {"delay": 200}}), run({"chorus": {"delay": 100}}))
    np.testing.assert_array_equal(run({"chorus": {"delay": 0.5}}), run({"chorus": {"delay": 1}}))
    assert not np.array_equal(run({"chorus": {"delay": 99}}), run({"chorus": {"delay": 100}}))
    np.testing.assert_array_equal(run({"limiter": {"release": -1}}), run({"limiter": {"release": 0}}))
    squeeze = {"threshold": -20, "ratio": 4}
    np.testing.assert_array_equal(
        run({"compressor": {**squeeze, "attack": -5}}), run({"compressor": {**squeeze, "attack": 0}})
    )
    for signal in (x, _noise(40000, seed=5)):  # diverges: to NaN, or to huge finite samples
        try:
            peak = float(np.abs(fx.apply_effects(signal, 40000, {"chorus": {"feedback": -2}})).max())
        except AudioError:
            peak = float("inf")
        assert peak > 1e6
    # the gain ceiling: 800 dB overflows float32 (the output is not finite), 700 dB does not
    quiet = x * 1e-36
    with pytest.raises(AudioError):
        fx.apply_effects(x, 40000, {"gain": {"db": 800}})
    assert np.isfinite(fx.apply_effects(quiet, 40000, {"gain": {"db": 700}})).all()


@pytest.mark.parametrize(
    "effects",
    [
        {"chorus": {"delay": 1, "feedback": -1}},
        {"chorus": {"delay": 100, "feedback": 1}},
        {"limiter": {"release": 0}},
        {"compressor": {"attack": 0, "release": 0}},
        {"gain": {"db": 700}, "distortion": {"gain": 700}},
        {"gain": {"db": -1000}},
    ],
)
def test_the_bounds_of_those_ranges_are_accepted(effects):
    assert fx.check_effects(effects) == fx.resolve_effects(effects)


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_calls_give_the_serial_results():
    """The server converts requests in threads: no call may see another's state."""
    pytest.importorskip("pedalboard", reason="pedalboard not installed (extra 'effects')")
    pytest.importorskip("noisereduce", reason="noisereduce not installed (extra 'clean')")
    pytest.importorskip("stftpitchshift", reason="stftpitchshift not installed (extra 'formant')")
    chain = {"reverb": {"room_size": 0.7}, "pitch_shift": {"semitones": 3}, "chorus": {}, "delay": {"seconds": 0.05, "feedback": 0.3}}
    jobs = [
        lambda x: fx.apply_effects(x, 40000, chain),
        lambda x: fx.denoise(x, 40000, 0.7),
        lambda x: fx.formant_shift(x, 1.0, 1.3),
    ]
    inputs = [_noise(20000, seed=s, scale=0.2) for s in range(4)]
    serial = [[job(x) for x in inputs] for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        for job, expected in zip(jobs, serial):
            for got, want in zip(pool.map(job, inputs * 2), expected * 2):
                np.testing.assert_array_equal(got, want)

"""Applio's audio effects as library functions: formant shifting, noise reduction, effect chain.

Each function calls the same third-party library, with the same arguments, as
Applio's ``convert_audio`` does, so results match it sample for sample:

* :func:`formant_shift` — ``stftpitchshift`` (extra ``formant``), on the 16 kHz input;
* :func:`denoise` — ``noisereduce`` (extra ``clean``), on the converted output;
* :func:`apply_effects` — ``pedalboard`` (extra ``effects``), Applio's post-processing
  chain in its fixed order, with its fallback value for every parameter not given.

The libraries are imported only when a function needs them; a missing one raises
:class:`~rvcfast.errors.BackendUnavailableError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from .constants import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SR_16K
from .errors import AudioError, BackendUnavailableError, ParameterError
from .errors import shown as _shown

__all__ = [
    "EffectParameter",
    "EFFECT_PARAMETERS",
    "EFFECT_ORDER",
    "FORMANT_SAMPLE_RATE",
    "EFFECTS_SAMPLE_RATES",
    "DENOISE_SAMPLE_RATES",
    "formant_shift",
    "denoise",
    "apply_effects",
    "resolve_effects",
    "check_effects",
    "effects_from_applio_kwargs",
]

#: Rate :func:`formant_shift` works at (Applio shifts the 16 kHz input signal).
FORMANT_SAMPLE_RATE = SR_16K
_FORMANT_FRAME = 1024
_FORMANT_HOP = 32

#: Sample rates (Hz, inclusive) :func:`apply_effects` accepts: the rates rvcfast reads. Outside
#: them pedalboard's native code fails: its Reverb kills the process (SIGFPE) below 196 Hz and
#: (SIGSEGV) above about 1 MHz, and its PitchShift never returns below about 200 Hz.
EFFECTS_SAMPLE_RATES = (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)

#: Sample rates (Hz, inclusive) :func:`denoise` accepts: noisereduce's default smoothing
#: (500 Hz across a 1024-point STFT, 50 ms across hops of 256) needs at least one bin and
#: one hop, i.e. ``sr / 512 <= 500`` and ``256 / sr <= 50 ms``; outside, it raises ValueError.
DENOISE_SAMPLE_RATES = (5120, 256000)


@dataclass(frozen=True)
class EffectParameter:
    """One parameter of a post-processing effect and how Applio and pedalboard name it."""

    effect: str  #: effect name, also Applio's on/off flag (``"reverb"``)
    name: str  #: rvcfast's name, without the effect prefix (``"room_size"``)
    applio_kwarg: str  #: Applio's keyword argument (``"reverb_room_size"``)
    pedalboard_class: str  #: pedalboard plugin class (``"Reverb"``)
    pedalboard_arg: str  #: argument of that class (``"room_size"``)
    default: float  #: Applio's fallback when the keyword is absent
    minimum: float | None = None  #: lowest value pedalboard accepts (``None``: no bound)
    maximum: float | None = None  #: highest value pedalboard accepts (``None``: no bound)
    unit: str = ""  #: unit of the value, for messages (``"Hz"``, ``"s"``...)

    def range_text(self) -> str:
        """The allowed range as text, e.g. ``0..1``, ``0..30 s`` or ``>= 1``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum:g}..{self.maximum:g}{unit}"
        if self.minimum is not None:
            return f">= {self.minimum:g}{unit}"
        if self.maximum is not None:
            return f"<= {self.maximum:g}{unit}"
        return "any number"


# One row per parameter, effects in the order Applio chains them:
# effect, pedalboard class, our name, Applio kwarg, pedalboard argument, Applio fallback.
_TABLE: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("reverb", "Reverb", "room_size", "reverb_room_size", "room_size", 0.5),
    ("reverb", "Reverb", "damping", "reverb_damping", "damping", 0.5),
    ("reverb", "Reverb", "wet_level", "reverb_wet_level", "wet_level", 0.33),
    ("reverb", "Reverb", "dry_level", "reverb_dry_level", "dry_level", 0.4),
    ("reverb", "Reverb", "width", "reverb_width", "width", 1.0),
    ("reverb", "Reverb", "freeze_mode", "reverb_freeze_mode", "freeze_mode", 0.0),
    ("pitch_shift", "PitchShift", "semitones", "pitch_shift_semitones", "semitones", 0.0),
    ("limiter", "Limiter", "threshold", "limiter_threshold", "threshold_db", -6.0),
    ("limiter", "Limiter", "release", "limiter_release", "release_ms", 0.05),
    ("gain", "Gain", "db", "gain_db", "gain_db", 0.0),
    ("distortion", "Distortion", "gain", "distortion_gain", "drive_db", 25.0),
    ("chorus", "Chorus", "rate", "chorus_rate", "rate_hz", 1.0),
    ("chorus", "Chorus", "depth", "chorus_depth", "depth", 0.25),
    ("chorus", "Chorus", "delay", "chorus_delay", "centre_delay_ms", 7.0),
    ("chorus", "Chorus", "feedback", "chorus_feedback", "feedback", 0.0),
    ("chorus", "Chorus", "mix", "chorus_mix", "mix", 0.5),
    ("bitcrush", "Bitcrush", "bit_depth", "bitcrush_bit_depth", "bit_depth", 8.0),
    ("clipping", "Clipping", "threshold", "clipping_threshold", "threshold_db", 0.0),
    ("compressor", "Compressor", "threshold", "compressor_threshold", "threshold_db", 0.0),
    ("compressor", "Compressor", "ratio", "compressor_ratio", "ratio", 1.0),
    ("compressor", "Compressor", "attack", "compressor_attack", "attack_ms", 1.0),
    ("compressor", "Compressor", "release", "compressor_release", "release_ms", 100.0),
    ("delay", "Delay", "seconds", "delay_seconds", "delay_seconds", 0.5),
    ("delay", "Delay", "feedback", "delay_feedback", "feedback", 0.0),
    ("delay", "Delay", "mix", "delay_mix", "mix", 0.5),
)


# The ranges pedalboard's plugins accept (their constructors raise outside them; checked
# against pedalboard 0.9.24): (effect, parameter) -> (minimum, maximum, unit). Parameters
# not listed take any finite number.
_RANGES: dict[tuple[str, str], tuple[float | None, float | None, str]] = {
    ("reverb", "room_size"): (0.0, 1.0, ""),
    ("reverb", "damping"): (0.0, 1.0, ""),
    ("reverb", "wet_level"): (0.0, 1.0, ""),
    ("reverb", "dry_level"): (0.0, 1.0, ""),
    ("reverb", "width"): (0.0, 1.0, ""),
    ("reverb", "freeze_mode"): (0.0, 1.0, ""),
    ("pitch_shift", "semitones"): (-72.0, 72.0, "semitones"),
    ("chorus", "rate"): (0.0, 100.0, "Hz"),
    ("chorus", "mix"): (0.0, 1.0, ""),
    ("bitcrush", "bit_depth"): (0.0, 32.0, "bits"),
    ("compressor", "ratio"): (1.0, None, ""),
    ("delay", "seconds"): (0.0, 30.0, "s"),
    ("delay", "feedback"): (0.0, 1.0, ""),
    ("delay", "mix"): (0.0, 1.0, ""),
}


# Values pedalboard accepts but does not use as given, refused by check_effects (not part of
# EffectParameter.minimum/maximum, which are what the plugins' constructors accept):
# (effect, parameter) -> (minimum, maximum, unit, why). Measured with pedalboard 0.9.24: the
# chorus clamps its centre delay to 1..100 ms, a chorus feedback beyond +-1 grows without
# bound, and negative times act as 0.
_SILENT_RANGES: dict[tuple[str, str], tuple[float | None, float | None, str, str]] = {
    ("limiter", "release"): (0.0, None, "ms", "a negative time acts as 0"),
    ("chorus", "delay"): (1.0, 100.0, "ms", "pedalboard clamps values outside to this range"),
    ("chorus", "feedback"): (-1.0, 1.0, "", "beyond it the output grows without bound"),
    ("compressor", "attack"): (0.0, None, "ms", "a negative time acts as 0"),
    ("compressor", "release"): (0.0, None, "ms", "a negative time acts as 0"),
    ("gain", "db"): (None, 700.0, "dB", "float32 audio overflows to infinity near 770 dB"),
    ("distortion", "gain"): (None, 700.0, "dB", "float32 audio overflows to infinity near 770 dB"),
}


def _parameter_table() -> Mapping[str, tuple[EffectParameter, ...]]:
    grouped: dict[str, list[EffectParameter]] = {}
    for effect, cls, name, kwarg, arg, default in _TABLE:
        lo, hi, unit = _RANGES.get((effect, name), (None, None, ""))
        grouped.setdefault(effect, []).append(EffectParameter(effect, name, kwarg, cls, arg, default, lo, hi, unit))
    return MappingProxyType({effect: tuple(params) for effect, params in grouped.items()})


#: Effect name -> its parameters, effects in the order they are applied.
EFFECT_PARAMETERS: Mapping[str, tuple[EffectParameter, ...]] = _parameter_table()

#: The fixed order effects are applied in, whatever order they are given in.
EFFECT_ORDER: tuple[str, ...] = tuple(EFFECT_PARAMETERS)

# Names Applio's command line uses for some of these keywords (its core.py renames them).
_CLI_ALIASES = {
    "reverb_wet_gain": "reverb_wet_level",
    "reverb_dry_gain": "reverb_dry_level",
    "limiter_release_time": "limiter_release",
    "chorus_center_delay": "chorus_delay",
}


# ----------------------------------------------------------------------------- validation


def _import_extra(module: str, extra: str, feature: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{feature} needs the optional package {module!r}, which could not be imported ({exc}); "
            f'install it with: pip install "rvcfast[{extra}]"'
        ) from exc


#: feature -> (module, extra) of the optional package behind it.
_EXTRAS = {
    "formant": ("stftpitchshift", "formant"),
    "clean": ("noisereduce", "clean"),
    "effects": ("pedalboard", "effects"),
}


def require_extra(feature: str) -> None:
    """Raise the install hint now if ``feature`` (``formant``, ``clean``, ``effects``) cannot run.

    Looks for the package without importing it, so a batch refuses the job before any
    work instead of failing every file.
    """
    module, extra = _EXTRAS[feature]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found or sys.modules.get(module, ...) is None:
        raise BackendUnavailableError(
            f"{feature} needs the optional package {module!r}, which is not installed; "
            f'install it with: pip install "rvcfast[{extra}]"'
        )


def _number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(f"{what} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range: JSON's 1000...0 of 400 digits
        raise ParameterError(f"{what} must be finite, got {_shown(value)}: beyond the float range") from None
    if not math.isfinite(number):
        raise ParameterError(f"{what} must be finite, got {_shown(value)}")
    return number


def _sample_rate(sample_rate: object, what: str, bounds: tuple[int, int]) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise ParameterError(f"sample_rate must be a positive integer (Hz), got {_shown(sample_rate)}")
    # float() is what numbers.Real promises (int() on a Real is not: it may need __trunc__)
    try:
        number = float(sample_rate)
    except OverflowError:  # an integer beyond the float range
        raise ParameterError(f"sample_rate: {what} works at {bounds[0]}..{bounds[1]} Hz, got {_shown(sample_rate)}") from None
    if not math.isfinite(number) or not number.is_integer() or number <= 0:
        raise ParameterError(f"sample_rate must be a positive integer (Hz), got {_shown(sample_rate)}")
    rate = int(number)
    lo, hi = bounds
    if not lo <= rate <= hi:
        raise ParameterError(f"sample_rate: {what} works at {lo}..{hi} Hz, got {rate}")
    return rate


def _mono(audio: object, what: str) -> np.ndarray:
    array = np.asarray(audio)
    if array.ndim != 1:
        raise AudioError(None, f"{what} needs mono audio as a 1-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioError(None, f"{what} needs floating-point samples, got dtype {array.dtype}")
    if array.size == 0:
        raise AudioError(None, f"{what} got an empty signal")
    if not np.all(np.isfinite(array)):
        raise AudioError(None, f"{what}: the signal contains NaN or infinite samples")
    return array


# ----------------------------------------------------------------------------- formant / clean


#: The smallest formant ``timbre``: the shift resizes the 513-bin spectral envelope by it, and
#: below 1/513 none is left (stftpitchshift divides by zero); at 0.01 five bins remain.
FORMANT_MIN_TIMBRE = 0.01


def formant_shift(audio16k: np.ndarray, quefrency: float, timbre: float) -> np.ndarray:
    """Applio's formant shifting of a 16 kHz signal (``formant_qfrency``, ``formant_timbre``).

    ``StftPitchShift(1024, 32, 16000).shiftpitch(audio, factors=1,
    quefrency=quefrency * 1e-3, distortion=timbre)``: the pitch is kept, the spectral
    envelope (lifter cut-off ``quefrency`` ms) is stretched by ``timbre``. Computed
    and returned in float64, same length as the input (at least 1024 samples); digital
    silence stays silence.
    Applio applies it to the loaded 16 kHz input before its peak guard.
    Needs ``pip install "rvcfast[formant]"``.
    """
    quefrency = _number("formant quefrency", quefrency)
    timbre = _number("formant timbre", timbre)
    if quefrency <= 0:
        raise ParameterError(f"formant quefrency must be > 0 (milliseconds), got {quefrency!r}")
    if timbre < FORMANT_MIN_TIMBRE:
        raise ParameterError(f"formant timbre must be at least {FORMANT_MIN_TIMBRE:g}, got {timbre!r}")
    signal = _mono(audio16k, "formant shifting").astype(np.float64, copy=False)
    if signal.shape[0] < _FORMANT_FRAME:
        raise AudioError(None, (
            f"formant shifting needs at least {_FORMANT_FRAME} samples at 16 kHz ({_FORMANT_FRAME / 16:g} ms of audio), "
            f"got {signal.shape[0]} ({signal.shape[0] / 16:g} ms): leave formant out for so short an input"
        ))
    module = _import_extra("stftpitchshift", "formant", "formant shifting")
    shifter = module.StftPitchShift(_FORMANT_FRAME, _FORMANT_HOP, FORMANT_SAMPLE_RATE)
    # frames of digital silence divide 0 by 0 inside the shifter, which then zeroes what is not a
    # normal number itself: numpy's warnings about it would only alarm the user
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(shifter.shiftpitch(signal, factors=1, quefrency=quefrency * 1e-3, distortion=timbre), dtype=np.float64)
    _check_finite(out, "formant shifting", "an input it cannot analyse")
    return out


def denoise(audio: np.ndarray, sample_rate: int, strength: float) -> np.ndarray:
    """Applio's ``clean_audio``: non-stationary spectral gating with noisereduce's defaults.

    ``noisereduce.reduce_noise(y=audio, sr=sample_rate, prop_decrease=strength)``;
    ``strength`` (0..1) is the fraction of the estimated noise removed. The result has
    the input's length and dtype. ``sample_rate`` must be within
    :data:`DENOISE_SAMPLE_RATES` (5120..256000 Hz, what noisereduce's defaults allow).
    Digital silence stays silence, also where noisereduce would give NaN (it works in
    chunks of 600,000 samples and divides 0 by 0 on a chunk of zeros). Unlike Applio, a
    failure raises instead of silently keeping the original.
    Needs ``pip install "rvcfast[clean]"``.
    """
    strength = _number("clean strength", strength)
    if not 0.0 <= strength <= 1.0:
        raise ParameterError(f"clean strength must be between 0 and 1, got {strength!r}")
    rate = _sample_rate(sample_rate, "noise reduction", DENOISE_SAMPLE_RATES)
    signal = _mono(audio, "noise reduction")
    module = _import_extra("noisereduce", "clean", "noise reduction")
    if not np.any(signal):
        return np.array(signal, copy=True)  # digital silence: nothing to gate (noisereduce divides 0 by 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # its 0/0 on a chunk of zeros is mended below
        out = np.asarray(module.reduce_noise(y=signal, sr=rate, prop_decrease=strength))
    bad = ~np.isfinite(out)
    if bad.any() and not np.any(signal[bad]):
        out[bad] = 0  # a chunk of digital silence: gating zeros gives zeros
    _check_finite(out, "noise reduction", "an input it cannot estimate noise from")
    return out


# ----------------------------------------------------------------------------- effect chain


def _effect_values(effect: str, params: object) -> dict[str, float]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ParameterError(
            f"effect {effect!r}: parameters must be a mapping of parameter name -> number, got {_shown(params)}"
        )
    known = {p.name: p for p in EFFECT_PARAMETERS[effect]}
    values: dict[str, float] = {}
    for name, value in params.items():
        if name not in known:
            raise ParameterError(
                f"unknown parameter {_shown(name)} for effect {effect!r}; valid parameters: {', '.join(known)}"
            )
        values[name] = _number(f"effect {effect!r} parameter {name!r}", value)
    return values


def resolve_effects(effects: Mapping[str, Mapping[str, float] | None] | None) -> dict[str, dict[str, float]]:
    """Validate an effects mapping and fill in Applio's fallbacks.

    ``effects`` maps effect names (:data:`EFFECT_ORDER`) to mappings of parameter
    names (:data:`EFFECT_PARAMETERS`, without the effect prefix) to numbers; ``None``
    or ``{}`` for an effect means all its fallbacks. Returns every given effect with
    every parameter, in application order. Raises :class:`ParameterError` for an
    unknown effect or parameter name or a non-numeric value.
    """
    if effects is None:
        return {}
    if not isinstance(effects, Mapping):
        raise ParameterError(f"effects must be a mapping of effect name -> parameters, got {_shown(effects)}")
    given: dict[str, dict[str, float]] = {}
    for effect, params in effects.items():
        if effect not in EFFECT_PARAMETERS:
            raise ParameterError(f"unknown effect {_shown(effect)}; valid effects: {', '.join(EFFECT_ORDER)}")
        given[effect] = _effect_values(effect, params)
    return {
        effect: {p.name: given[effect].get(p.name, p.default) for p in EFFECT_PARAMETERS[effect]}
        for effect in EFFECT_ORDER
        if effect in given
    }


def check_effects(effects: Mapping[str, Mapping[str, float] | None] | None) -> dict[str, dict[str, float]]:
    """:func:`resolve_effects`, and every value within the range its plugin accepts.

    Raises :class:`ParameterError` naming ``effects``, the effect, the parameter and the
    allowed range (``effects: reverb room_size must be within 0..1, got 5``), so a bad
    value is refused before any conversion. The ranges are those of
    :data:`EFFECT_PARAMETERS` (``minimum``, ``maximum``); when pedalboard is installed the
    plugins are also built, so a release with narrower ranges is caught here too. Without
    pedalboard only the table is checked. Values pedalboard accepts but would not use as
    given are refused too, with the reason: ``chorus`` ``delay`` outside 1..100 ms
    (clamped), ``chorus`` ``feedback`` outside -1..1 (diverges), and negative ``limiter``
    ``release``, ``compressor`` ``attack`` and ``release`` (act as 0). Returns the resolved
    effects.
    """
    resolved = resolve_effects(effects)
    for effect, values in resolved.items():
        for p in EFFECT_PARAMETERS[effect]:
            value = values[p.name]
            if (p.minimum is not None and value < p.minimum) or (p.maximum is not None and value > p.maximum):
                bound = "within " if p.minimum is not None and p.maximum is not None else ""
                raise ParameterError(f"effects: {effect} {p.name} must be {bound}{p.range_text()}, got {value:g}")
            if (effect, p.name) in _SILENT_RANGES:
                lo, hi, unit, why = _SILENT_RANGES[effect, p.name]
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    limit = EffectParameter(effect, p.name, "", "", "", 0.0, lo, hi, unit).range_text()
                    bound = "within " if lo is not None and hi is not None else ""
                    raise ParameterError(f"effects: {effect} {p.name} must be {bound}{limit} ({why}), got {value:g}")
    if resolved and importlib.util.find_spec("pedalboard") is not None and sys.modules.get("pedalboard", ...) is not None:
        try:
            _board(importlib.import_module("pedalboard"), resolved)
        except ImportError:
            pass  # a broken install: apply_effects reports it with the install hint
        except ParameterError as exc:
            raise ParameterError(f"effects: {exc}") from None
    return resolved


def _board(pedalboard: ModuleType, resolved: Mapping[str, Mapping[str, float]]) -> Any:
    plugins = []
    for effect, values in resolved.items():
        params = EFFECT_PARAMETERS[effect]
        plugin_class = getattr(pedalboard, params[0].pedalboard_class)
        try:
            plugins.append(plugin_class(**{p.pedalboard_arg: values[p.name] for p in params}))
        except (ValueError, TypeError) as exc:
            raise ParameterError(f"effect {effect!r}: {exc} (parameters {dict(values)})") from None
    return pedalboard.Pedalboard(plugins)


def apply_effects(
    audio: np.ndarray, sample_rate: int, effects: Mapping[str, Mapping[str, float] | None] | None
) -> np.ndarray:
    """Applio's ``post_process`` chain through pedalboard; returns float32 of the input's length.

    ``effects`` maps effect names to their parameters without the effect prefix,
    e.g. ``{"chorus": {"rate": 1.2, "mix": 0.4}, "delay": {"seconds": 0.09}}``.
    The effects run in Applio's fixed order (:data:`EFFECT_ORDER`: reverb,
    pitch_shift, limiter, gain, distortion, chorus, bitcrush, clipping, compressor,
    delay) whatever the mapping's order, each parameter not given takes Applio's
    fallback (:data:`EFFECT_PARAMETERS`), and the chain starts from a clean state
    on every call. An empty mapping returns the audio unchanged (as float32).
    ``sample_rate`` must be within :data:`EFFECTS_SAMPLE_RATES` (1000..768000 Hz).
    Only the values pedalboard refuses raise here; :func:`check_effects` also refuses
    the ones it would silently clamp or that diverge.
    Needs ``pip install "rvcfast[effects]"``.
    """
    resolved = resolve_effects(effects)
    rate = _sample_rate(sample_rate, "audio effects", EFFECTS_SAMPLE_RATES)
    signal = _mono(audio, "audio effects").astype(np.float32, copy=False)
    if not resolved:
        return signal.copy()
    pedalboard = _import_extra("pedalboard", "effects", "audio effects")
    board = _board(pedalboard, resolved)
    out = np.asarray(board(signal, rate), dtype=np.float32)
    _check_finite(out, "the effects (" + ", ".join(resolved) + ")", "a feedback or gain too large?")
    return out


def _check_finite(out: np.ndarray, what: str, hint: str) -> None:
    """An :class:`AudioError` when a processing step gave NaN or infinite samples (never written)."""
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise AudioError(None, f"{what} produced {bad} NaN or infinite samples of {out.size} ({hint})")


def _effects_flagged(kwargs: Mapping[str, Any]) -> list[str]:
    flagged = []
    for effect in EFFECT_ORDER:
        flag = kwargs.get(effect, False)
        if isinstance(flag, str):
            raise ParameterError(f"Applio flag {effect!r} must be True or False, got the string {_shown(flag)}")
        if flag:
            flagged.append(effect)
    return flagged


def _check_applio_names(kwargs: Mapping[str, Any]) -> None:
    known = {p.applio_kwarg for params in EFFECT_PARAMETERS.values() for p in params}
    for key in kwargs:
        if key in known or key in EFFECT_PARAMETERS:
            continue
        if key in _CLI_ALIASES:
            raise ParameterError(
                f"{key!r} is Applio's command-line name; its keyword argument is {_CLI_ALIASES[key]!r}"
            )
        for effect in EFFECT_ORDER:
            if isinstance(key, str) and key.startswith(effect + "_"):
                valid = ", ".join(p.applio_kwarg for p in EFFECT_PARAMETERS[effect])
                raise ParameterError(f"unknown Applio keyword {key!r} for effect {effect!r}; valid: {valid}")


def effects_from_applio_kwargs(kwargs: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Convert Applio's flat ``post_process`` keyword arguments into an :func:`apply_effects` mapping.

    ``{"reverb": True, "reverb_room_size": 0.3, "gain": True, "gain_db": -2}`` becomes
    ``{"reverb": {"room_size": 0.3}, "gain": {"db": -2.0}}``. As in Applio, an effect
    is used only when its flag is truthy, parameters of disabled effects are ignored,
    and with ``post_process`` present and false nothing is applied. Keys that belong
    to no effect (``pitch``, ``f0_method``, ...) are ignored; a key in an effect's
    namespace that Applio does not know (a typo) raises :class:`ParameterError`.
    """
    if not isinstance(kwargs, Mapping):
        raise ParameterError(f"expected a mapping of Applio keyword arguments, got {_shown(kwargs)}")
    _check_applio_names(kwargs)
    if isinstance(kwargs.get("post_process"), (str, bytes)):  # "False" is truthy: every flagged effect would run
        raise ParameterError(f"Applio flag 'post_process' must be True or False, got the string {_shown(kwargs['post_process'])}")
    if "post_process" in kwargs and not kwargs["post_process"]:
        return {}
    effects = {
        effect: {
            p.name: kwargs[p.applio_kwarg] for p in EFFECT_PARAMETERS[effect] if p.applio_kwarg in kwargs
        }
        for effect in _effects_flagged(kwargs)
    }
    return {effect: _effect_values(effect, params) for effect, params in effects.items()}

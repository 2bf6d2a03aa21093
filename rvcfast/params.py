"""Conversion settings: one :class:`ConversionParams` object, shared by every front end.

The library (``Converter.convert(..., **overrides)``), the command line, the server and
the cluster runner all build their options from the fields declared here, so a parameter
is named, documented, range-checked and defaulted in exactly one place.

Each field carries metadata that front ends read through :func:`param_specs`:
``help`` (one line), ``metavar`` and ``kind`` (``"number"``, ``"int"``, ``"bool"``,
``"optional-int"``, ``"optional-number"``, or ``"mapping"``/``"pair"`` for structured values:
a JSON object and two numbers; ``"loudness"``: ``"match"``, a number or nothing; ``"choice"``:
one of the field's ``choices``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ParameterError
from .errors import shown as _shown

__all__ = ["ConversionParams", "ParamSpec", "param_specs", "coerce_param", "check_one_model_call"]


def _meta(
    help: str, kind: str, metavar: str | None = None, cli: bool = True, flag: str | None = None, choices: tuple[str, ...] | None = None
) -> dict[str, Any]:
    return {"help": help, "kind": kind, "metavar": metavar, "cli": cli, "flag": flag, "choices": choices}


#: Values of the ``channels`` parameter.
CHANNEL_MODES = ("mix", "each")


@dataclass(frozen=True)
class ConversionParams:
    """Every conversion parameter, with the reference defaults.

    Build one directly, with :meth:`replace` from another, or let
    ``Converter.convert(audio, pitch=2, ...)`` build it from keyword overrides.
    Values are numbers and booleans, never text: :meth:`validate` refuses ``protect="0.2"``
    (front ends that read text convert it with :func:`coerce_param`).

    Attributes
    ----------
    pitch:
        Key shift in semitones (RVC ``f0_up_key``); +12 is an octave up. Range -48..48.
    index_rate:
        Share of retrieved index features blended into the content features, 0..1
        (0 = index unused, 1 = only retrieved features). Default 0.75.
    protect:
        Protection of unvoiced consonants and breaths, 0..0.5: on unvoiced frames only
        ``protect`` of the index-blended features is used, the rest is the original.
        0.5 switches protection off; lower values protect more. Default 0.33.
    rms_mix_rate:
        Loudness envelope: 1 keeps the converted voice's own envelope (default, and
        what Applio calls volume_envelope = 1), 0 copies the input's envelope.
    filter_radius:
        Harvest only: a value > 2 applies a 3-tap median filter to the F0 track (default 3).
    speaker:
        Speaker id for multi-speaker models (default 0).
    noise:
        Sample the model's noise (prior noise and NSF excitation noise), as the
        reference does. ``False`` makes the output deterministic.
    seed:
        Seed for that noise (any integer); the same seed gives the same output. The noise
        is drawn per file segment from the seed and the segment's place in the file, so it
        does not depend on the other files of a batch, their order, ``batch_seconds``, the
        compute workers or the front end. The same call on its own repeats bit for bit;
        batched with other files (other tensor shapes, another thread count) the samples
        move by float rounding only (about 1e-6 of the peak in float32, 1e-2 in bfloat16).
        ``None`` (default): new noise on every run, so runs differ. (An ONNX voice exported
        with its noise in the graph draws that noise unseeded: see ``docs/onnx.md``.)
    output_sample_rate:
        Resample the output to this rate (soxr, very high quality); ``None`` keeps the model's rate.
    v1_output_layer:
        Content-encoder layer for v1 models (RVC: 9; Applio uses the last, 12).
    fill_unvoiced:
        Interpolate F0 through unvoiced frames before the key shift (RVC 2026 ``main``);
        off by default, as in the classic pipeline.
    keep_length:
        Length-exact output: every segment is synthesised for its full span (the last
        content frame is repeated to fill the 10-20 ms the encoder's frame grid leaves
        out), so the output is ``len(input) * rate / 16000`` to within one hop and long
        inputs do not drift at segment joins. Off by default: the reference drops up to
        two frames per segment (RVC WebUI #2317), and the default reproduces it exactly.
    autotune:
        Autotune strength 0..1 (Applio's ``f0_autotune_strength``; 0 = off): every frame's
        F0 moves this share of the way to the nearest note G1..C6. As in Applio it
        replaces the key shift and proposed pitch, and voices unvoiced frames.
    proposed_pitch:
        Target pitch in Hz (Applio's ``proposed_pitch_threshold``; ``None`` = off): the
        key shift is raised by the whole semitones (within ±12) that bring the input's
        median F0 to this pitch, added to ``pitch``.
    formant:
        ``(quefrency, timbre)`` formant shift of the input (Applio's
        ``formant_qfrency`` / ``formant_timbre``), through stftpitchshift
        (``pip install "rvcfast[formant]"``); ``None`` = off.
    clean:
        Noise reduction strength 0..1 of the output (Applio's ``clean_strength``),
        through noisereduce (``pip install "rvcfast[clean]"``); 0 = off.
    effects:
        Effects on the output, effect name → parameters, e.g.
        ``{"reverb": {"room_size": 0.3}, "compressor": {"threshold": -20}}``: Applio's
        effects and parameter names without the effect prefix, applied in Applio's order,
        missing parameters at Applio's fallbacks, through pedalboard
        (``pip install "rvcfast[effects]"``). See ``docs/parameters.md``.
    loudness:
        Loudness normalisation of the output (ITU-R BS.1770 integrated loudness, by a
        gain): ``"match"`` gives it the input's loudness, a number in -70..0 sets it in
        LUFS (e.g. -14 or -23); ``None`` = off. Applied last; the 0.99 peak limit still
        holds (a warning says when it keeps the output below the target). Needs the whole
        output, so streamed output (``Engine.stream``) refuses it. See :mod:`rvcfast.loudness`.
    channels:
        ``"mix"`` (default, as the references): a multi-channel input is mixed down to mono
        and the output is mono. ``"each"``: every channel is converted on its own (the
        same settings and seed; split at the same points) and the output has the input's
        channels, stereo in, stereo out; the input and output peak limits and ``loudness``
        act on all channels together, so their balance is kept. Whole outputs only:
        ``Engine.stream`` refuses it.
    strict:
        Turn every input warning (truncated file, clipped input, DC offset, channels
        mixed down) into an error for that input. Off by default: warnings are reported
        in ``Result.warnings`` and the conversion goes on.
    """

    pitch: float = field(default=0.0, metadata=_meta("key shift in semitones, -48..48 (+12 = an octave up)", "number", "SEMITONES"))
    index_rate: float = field(default=0.75, metadata=_meta("share of retrieved index features, 0..1", "number", "RATE"))
    protect: float = field(default=0.33, metadata=_meta("protection of consonants/breaths, 0..0.5 (0.5 = off)", "number", "P"))
    rms_mix_rate: float = field(default=1.0, metadata=_meta("loudness envelope: 1 = the voice's own, 0 = the input's", "number", "RATE"))
    filter_radius: int = field(default=3, metadata=_meta("harvest only: > 2 median-filters the F0 track", "int", "N"))
    speaker: int = field(default=0, metadata=_meta("speaker id of multi-speaker models", "int", "ID"))
    noise: bool = field(
        default=True, metadata=_meta("no noise at all: deterministic output", "bool", flag="--no-noise")
    )
    seed: int | None = field(default=None, metadata=_meta("seed for the model's noise (same seed, same output)", "optional-int", "N"))
    output_sample_rate: int | None = field(
        default=None,
        metadata=_meta("resample the output to HZ (default: the model's rate)", "optional-int", "HZ", flag="--sample-rate"),
    )
    v1_output_layer: int = field(default=9, metadata=_meta("content-encoder layer for v1 models (RVC 9, Applio 12)", "int", "N"))
    fill_unvoiced: bool = field(default=False, metadata=_meta("interpolate F0 through unvoiced frames before the shift", "bool"))
    keep_length: bool = field(
        default=False, metadata=_meta("length-exact output (no drift at segment joins of long files)", "bool")
    )
    autotune: float = field(default=0.0, metadata=_meta("autotune strength 0..1 (0 = off); replaces the key shift", "number", "STRENGTH"))
    proposed_pitch: float | None = field(
        default=None, metadata=_meta("shift towards this median pitch in Hz (whole semitones, within 12)", "optional-number", "HZ")
    )
    formant: tuple[float, float] | None = field(
        default=None, metadata=_meta("formant shift of the input: QUEFRENCY TIMBRE (e.g. 1.0 1.2)", "pair", "Q T")
    )
    clean: float = field(default=0.0, metadata=_meta("noise reduction strength of the output, 0..1 (0 = off)", "number", "STRENGTH"))
    effects: Mapping[str, Mapping[str, float]] | None = field(
        default=None, metadata=_meta("effects on the output: {effect: {parameter: value}}", "mapping", "JSON")
    )
    loudness: float | str | None = field(
        default=None,
        metadata=_meta("normalise the output's loudness: 'match' (the input's) or LUFS, -70..0 (e.g. -14)", "loudness", "LUFS|match"),
    )
    channels: str = field(
        default="mix",
        metadata=_meta("multi-channel input: 'mix' to mono, or convert 'each' channel (stereo out)", "choice", choices=CHANNEL_MODES),
    )
    strict: bool = field(default=False, metadata=_meta("treat input warnings (truncated, clipped...) as errors", "bool"))

    # ------------------------------------------------------------------ building

    def replace(self, **overrides: Any) -> ConversionParams:
        """A copy with ``overrides`` applied; an unknown name is a :class:`ParameterError` naming it."""
        if not overrides:
            return self
        names = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in names:
                raise ParameterError(_unknown_message(key, names))
        return dataclasses.replace(self, **overrides)

    @classmethod
    def build(cls, params: ConversionParams | Mapping[str, Any] | None = None, **overrides: Any) -> ConversionParams:
        """``params`` (an object, a mapping or ``None`` for the defaults) with keyword ``overrides`` applied."""
        if params is None:
            base = cls()
        elif isinstance(params, ConversionParams):
            base = params
        elif isinstance(params, Mapping):
            # str(): a non-text key is an unknown parameter named as such, not a TypeError from **
            base = cls().replace(**{str(k): v for k, v in params.items()})
        else:
            raise ParameterError(f"params must be a ConversionParams or a mapping, got {type(params).__name__}")
        return base.replace(**overrides)

    # ------------------------------------------------------------------ checking

    def validate(self, vocoder: Any | None = None) -> ConversionParams:
        """Raise :class:`ParameterError` for any value outside its range (checked before work starts).

        ``vocoder`` (anything with ``num_speakers``) also checks the speaker id. Returns ``self``.
        """
        _check_range("pitch", self.pitch, -48, 48, "semitones")
        _check_range("index_rate", self.index_rate, 0, 1)
        _check_range("protect", self.protect, 0, 0.5, "(0.5 = off)")
        _check_range("rms_mix_rate", self.rms_mix_rate, 0, 1)
        _check_int("filter_radius", self.filter_radius, 0)
        _check_int("speaker", self.speaker, 0)
        _check_int("v1_output_layer", self.v1_output_layer, 1)
        for name in ("noise", "fill_unvoiced", "keep_length", "strict"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ParameterError(f"{name} must be true or false, got {_given(getattr(self, name))}")
        if self.seed is not None:
            _check_int("seed", self.seed, None)
        if self.output_sample_rate is not None:
            _check_int("output_sample_rate", self.output_sample_rate, None)
            if not 8000 <= int(self.output_sample_rate) <= 384000:
                raise ParameterError(f"output_sample_rate must be within 8000..384000 Hz, got {_shown(self.output_sample_rate)}")
        self._validate_applio_options()
        if self.output_sample_rate is not None:
            # also where no output format is checked (Converter.convert): before the work, not after it
            self._check_clean_rate(int(self.output_sample_rate))
        if vocoder is not None and self.speaker >= vocoder.num_speakers:
            raise ParameterError(
                f"speaker {_shown(self.speaker)} is out of range: this model has {vocoder.num_speakers} speaker(s) "
                f"(0..{vocoder.num_speakers - 1})"
            )
        return self

    def output_rate(self, model_rate: int) -> int:
        """The rate the output has: ``output_sample_rate``, or ``model_rate`` (the voice's) without it."""
        return int(self.output_sample_rate) if self.output_sample_rate is not None else int(model_rate)

    def check_output(
        self, format: str, subtype: str | None, model_rate: int, bitrate: int | None = None
    ) -> ConversionParams:
        """Raise :class:`ParameterError` if the output cannot be written as ``format``/``subtype``
        (at ``bitrate`` kbit/s when given).

        The output rate is :meth:`output_rate` (an MP3 or AAC is written at the nearest rate
        its codec takes, :func:`rvcfast.writing.written_rate`);
        see :func:`rvcfast.writing.check_write_format`. Front ends call this with
        :meth:`validate`, so a bad combination (OGG/Vorbis above 192 kHz, Opus at 40 kHz,
        MPEG Layer I, an MP3 bitrate the rate has not), or noise reduction (``clean``) at a
        rate noisereduce cannot run, is refused before any work. Returns ``self``.
        """
        from .writing import check_write_format, written_rate

        fmt = str(format).strip().lower()
        rate = self.output_rate(model_rate)
        check_write_format(fmt, subtype, written_rate(fmt, subtype, rate), bitrate=bitrate)
        self._check_clean_rate(rate)
        return self

    def _check_clean_rate(self, rate: int) -> None:
        """Noise reduction (``clean``) runs at the output ``rate`` only within noisereduce's rates."""
        if not self.clean > 0:
            return
        from .effects import DENOISE_SAMPLE_RATES

        lo, hi = DENOISE_SAMPLE_RATES
        if not lo <= rate <= hi:
            raise ParameterError(
                f"clean: noise reduction works at {lo}..{hi} Hz, but the output rate is {rate} Hz; choose an "
                "output rate within it (output_sample_rate=, --sample-rate, the server's sample_rate) or leave clean at 0"
            )

    def _validate_applio_options(self) -> None:
        _check_range("autotune", self.autotune, 0, 1)
        _check_range("clean", self.clean, 0, 1)
        _check_loudness(self.loudness)
        if not isinstance(self.channels, str) or self.channels not in CHANNEL_MODES:
            raise ParameterError(f"channels must be one of {', '.join(map(repr, CHANNEL_MODES))}, got {_given(self.channels)}")
        if self.proposed_pitch is not None and not _finite("proposed_pitch", self.proposed_pitch) > 0:
            raise ParameterError(f"proposed_pitch must be a pitch in Hz above 0, got {_shown(self.proposed_pitch)}")
        if self.formant is not None:
            if not _is_pair(self.formant):
                raise ParameterError(f"formant must be a pair (quefrency, timbre), got {_given(self.formant)}")
            for name, value in zip(("quefrency", "timbre"), self.formant):
                if not _finite(f"formant {name}", value) > 0:
                    raise ParameterError(f"formant {name} must be above 0, got {_shown(value)}")
            from .effects import FORMANT_MIN_TIMBRE

            if self.formant[1] < FORMANT_MIN_TIMBRE:
                raise ParameterError(f"formant timbre must be at least {FORMANT_MIN_TIMBRE:g}, got {self.formant[1]!r}")
        from .effects import check_effects, require_extra

        if self.effects:
            check_effects(self.effects)  # unknown effects or parameters, values out of range: named here, before any work
        # a missing optional package is reported here too, not once per file
        for feature, used in (("formant", self.formant is not None), ("clean", self.clean > 0), ("effects", bool(self.effects))):
            if used:
                require_extra(feature)


def _is_pair(value: Any) -> bool:
    """Two items in order: a tuple, a list or a 1-D array of two (a set has no order, a mapping's
    items would be its keys)."""
    if isinstance(value, np.ndarray):
        return value.shape == (2,)
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)) and len(value) == 2


def _check_loudness(value: Any) -> None:
    from .loudness import LOUDNESS_RANGE, MATCH

    if value is None or (isinstance(value, str) and value == MATCH):
        return
    if isinstance(value, str):
        raise ParameterError(f"loudness must be {MATCH!r}, a number of LUFS or None, got {_shown(value)}")
    lo, hi = LOUDNESS_RANGE
    _check_range("loudness", value, lo, hi, "LUFS")


#: Names the RVC WebUI, Applio and other tools give a setting that rvcfast names otherwise (or
#: takes elsewhere), with what to write instead: an unknown name among them gets that hint.
_OTHER_NAMES = {
    **dict.fromkeys(("f0_up_key", "transpose", "semitones", "pitch_shift", "key"), "use 'pitch', in semitones"),
    **dict.fromkeys(("sid", "spk_id", "speaker_id"), "use 'speaker'"),
    **dict.fromkeys(("resample_sr", "output_sr", "out_sr"), "use 'output_sample_rate'"),
    "volume_envelope": "use 'rms_mix_rate'",
    **dict.fromkeys(("clean_audio", "clean_strength"), "use 'clean', its strength 0..1"),
    **dict.fromkeys(("f0_autotune", "f0_autotune_strength"), "use 'autotune', its strength 0..1"),
    **dict.fromkeys(
        ("f0_method", "f0", "method", "pitch_extractor"),
        "the F0 backend is chosen when the model is loaded: Converter.from_pretrained(..., f0='rmvpe'), --f0 on the command line",
    ),
    **dict.fromkeys(
        ("sr", "samplerate", "sampling_rate", "input_sample_rate"),
        "an array's sample rate is convert()'s second argument, convert(samples, sample_rate), "
        "or the second item of a batch input's (samples, sample_rate) pair; 'output_sample_rate' resamples the output",
    ),
}


def _unknown_message(key: str, names: set[str], options: Iterable[str] = ()) -> str:
    """The message for an unknown setting ``key``; ``options`` are the other keyword arguments
    of the call (a batch's ``out_dir``, ``format``...), offered as suggestions too."""
    options = sorted(set(options))
    close = difflib.get_close_matches(key, sorted(names) + options, n=1)
    if key in _OTHER_NAMES:
        hint = f" ({_OTHER_NAMES[key]})"
    elif close:
        hint = f" (did you mean the option {close[0]!r}?)" if close[0] in options else f" (did you mean {close[0]!r}?)"
    else:
        hint = ""
    return f"unknown conversion parameter {key!r}{hint}; valid parameters: {', '.join(sorted(names))}"


def check_setting_names(overrides: Iterable[str], options: Iterable[str] = ()) -> None:
    """Raise :class:`ParameterError` for the first name in ``overrides`` that is no conversion
    parameter; the message suggests the nearest parameter or, among ``options`` (the call's other
    keyword arguments, e.g. a batch's ``out_dir``), the nearest option."""
    names = {f.name for f in dataclasses.fields(ConversionParams)}
    for key in overrides:
        if key not in names:
            raise ParameterError(_unknown_message(str(key), names, options))


def _given(value: Any) -> str:
    """``value`` and its type, for error messages: ``'0.5' (str)``."""
    return f"{_shown(value)} ({type(value).__name__})"


def _finite(name: str, value: Any) -> float:
    """``value`` as a float; a :class:`ParameterError` names ``name`` unless it is a finite real number.

    Only numbers are taken: text (``"0.5"``), bytes and booleans are refused rather than
    converted here, because the conversion uses the value as given (a string would pass
    this check and fail in the middle of the work). Front ends that read text convert it
    with :func:`coerce_param`.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ParameterError(f"{name} must be a number, got {_given(value)}")
    try:
        v = float(value)
    except OverflowError:  # an integer beyond the float range (from JSON, or Python's 10**400)
        raise ParameterError(f"{name} must be finite, got {_shown(value)}: beyond the float range") from None
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {_given(value)}") from None
    if not math.isfinite(v):
        raise ParameterError(f"{name} must be finite, got {_shown(value)}")
    return v


def _check_range(name: str, value: Any, lo: float, hi: float, unit: str = "") -> None:
    v = _finite(name, value)
    if not lo <= v <= hi:
        suffix = f" {unit}" if unit else ""
        raise ParameterError(f"{name} must be within {lo:g}..{hi:g}{suffix}, got {_shown(value)}")


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name} must be an integer, got {_given(value)}")
    if minimum is not None and value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {_shown(value)}")


# ---------------------------------------------------------------------- front-end support


@dataclass(frozen=True)
class ParamSpec:
    """What a front end needs to expose one conversion parameter."""

    name: str
    kind: str
    default: Any
    help: str
    metavar: str | None
    cli: bool
    flag: str  # the command-line flag, e.g. "--index-rate" (booleans on by default: "--no-NAME")
    choices: tuple[str, ...] | None = None  # the values of a "choice" parameter


def param_specs() -> list[ParamSpec]:
    """Every conversion parameter with its kind, default and help, in declaration order."""
    specs = []
    for f in dataclasses.fields(ConversionParams):
        m = f.metadata
        flag = m.get("flag") or "--" + f.name.replace("_", "-")
        specs.append(ParamSpec(f.name, m["kind"], f.default, m["help"], m.get("metavar"), m.get("cli", True), flag, m.get("choices")))
    return specs


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce_param(name: str, raw: Any) -> Any:
    """Convert a text value (query string, form field, environment) to the type of parameter ``name``.

    Non-text values are returned as they are (the range check is :meth:`ConversionParams.validate`).
    """
    kinds = {s.name: s.kind for s in param_specs()}
    if name not in kinds:
        raise ParameterError(_unknown_message(name, set(kinds)))
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    kind = kinds[name]
    if kind.startswith("optional-") and text.lower() in ("", "none", "null"):
        return None
    try:
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind in ("int", "optional-int"):
            return int(text)
        if kind in ("number", "optional-number"):
            return float(text)
        if kind == "pair":
            return _pair(text)
        if kind == "mapping":
            return _mapping(text)
        if kind == "loudness":
            return _loudness(text)
        if kind == "choice":
            return text.lower()  # validate() names the choices
    except ParameterError as exc:  # readable, but not as one value (a key given twice in a JSON object)
        raise ParameterError(f"{name}: {exc}") from None
    except ValueError:
        expected = {
            "bool": "true or false",
            "int": "an integer",
            "optional-int": "an integer",
            "pair": "two numbers (e.g. '1.0,1.2')",
            "mapping": "a JSON object (e.g. '{\"reverb\": {\"room_size\": 0.3}}')",
            "loudness": "'match' or a number of LUFS (e.g. -14)",
        }.get(kind, "a number")
        shown = repr(raw) if len(repr(raw)) <= 200 else f"{repr(raw)[:200]}... ({len(str(raw))} characters)"
        raise ParameterError(f"{name} must be {expected}, got {shown}") from None
    return text


def _pair(text: str) -> tuple[float, float] | None:
    if text.lower() in ("", "none", "null", "off"):
        return None
    parts = text.replace(",", " ").split()
    if len(parts) != 2:
        raise ValueError(text)
    return float(parts[0]), float(parts[1])


def _mapping(text: str) -> dict[str, Any] | None:
    import json

    if text.lower() in ("", "none", "null", "off"):
        return None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than Python's limit
        raise ValueError(text) from None
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: with ``{"reverb": {...}, "reverb": {...}}``
    (or a parameter given twice) the decoder keeps the last and drops the rest unsaid."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise ParameterError(f"{_shown(key)} is given more than once in the same JSON object; give it once")
        value[key] = item
    return value


def _loudness(text: str) -> float | str | None:
    if text.lower() in ("", "none", "null", "off"):
        return None
    if text.lower() == "match":
        return "match"
    return float(text)


def check_one_model_call(per_seg: list[ConversionParams], n_segments: int) -> None:
    """Settings of the segments of one model call: one per segment, agreeing on what the call shares
    (speaker, noise, the v1 output layer); the rest may differ per segment."""
    if len(per_seg) != n_segments:
        raise ParameterError(f"{len(per_seg)} settings given for {n_segments} segments: give one, or one per segment")
    for name in ("speaker", "noise", "v1_output_layer"):
        values = {getattr(q, name) for q in per_seg}
        if len(values) > 1:
            raise ParameterError(f"segments of one model call must share {name}, got {sorted(values, key=repr)}")

"""Request fields → conversion parameters and output options, built from :func:`rvcfast.params.param_specs`.

Every conversion parameter of :class:`~rvcfast.ConversionParams` is a form field (or a
query parameter) under its own name: ``pitch``, ``index_rate``, ``protect``,
``rms_mix_rate``, ``filter_radius``, ``speaker``, ``seed``, ``noise``, ``autotune``,
``proposed_pitch``, ``formant`` (``"1.0,1.2"``), ``clean``, ``effects`` (a JSON object),
``keep_length``... Text is converted by :func:`~rvcfast.params.coerce_param`, so the
server accepts exactly what the command line does. Besides them: ``voice``, ``f0`` (the F0
backend for this request, e.g. ``harvest`` or ``hybrid:rmvpe+crepe``; default: the server's
``--f0``), ``format``, ``subtype``, ``bitrate`` (kbit/s, lossy formats only),
``sample_rate`` (the output rate; ``output_sample_rate`` works too), ``stream`` and
``source_id`` (the input's id, 32 lowercase hex digits as :func:`rvcfast.writing.source_id`
gives it, recorded in the output file as a local run records it; the server never sees the
input's path). Unknown names, repeated names and bad values are refused with the field named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendUnavailableError, ParameterError
from ..params import ConversionParams, coerce_param, param_specs
from .answers import FieldError

__all__ = ["FieldError", "ConvertOptions", "parse_fields", "form_schema", "OUTPUT_FIELDS"]

#: Fields that are not conversion parameters.
OUTPUT_FIELDS = ("voice", "f0", "format", "subtype", "bitrate", "sample_rate", "stream", "source_id")

#: ``source_id``: the id :func:`rvcfast.writing.source_id` gives an input (a hash of its path).
SOURCE_ID = re.compile(r"[0-9a-f]{32}")

#: Other names accepted for conversion parameters.
ALIASES = {"sample_rate": "output_sample_rate"}


@dataclass
class ConvertOptions:
    """What one convert request asks for."""

    voice: str
    overrides: dict[str, Any] = field(default_factory=dict)
    f0: str | None = None  # F0 backend for this request (None: the server's)
    format: str = "wav"
    subtype: str | None = None
    stream: bool = False
    bitrate: int | None = None  # kbit/s, lossy formats only (None: the encoder's default)
    source_id: str | None = None  # the input's id, recorded in the output (None: no record)


def _param_names() -> dict[str, str]:
    return {s.name: s.kind for s in param_specs()}


def parse_fields(pairs: Iterable[tuple[str, str]]) -> ConvertOptions:
    """Turn ``(name, text)`` pairs (query string and form fields) into :class:`ConvertOptions`.

    The conversion parameters are range-checked here (without the voice; the speaker id is
    checked once the voice is known).
    """
    from .encode import check_output, check_output_bitrate

    kinds = _param_names()
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name in seen:
            raise FieldError(name, f"field {name!r} is given more than once")
        seen[name] = value
    voice = seen.pop("voice", "").strip()
    if not voice:
        raise FieldError("voice", "field 'voice' is required: the id of a voice (GET /v1/voices lists them)")
    fmt, subtype, bitrate_text = seen.pop("format", None), seen.pop("subtype", None), seen.pop("bitrate", None)
    stream = _flag("stream", seen.pop("stream", "false"))
    f0 = _f0_name(seen.pop("f0", None))
    source = _source_id(seen.pop("source_id", None), stream)
    overrides: dict[str, Any] = {}
    for name, text in seen.items():
        target = ALIASES.get(name, name)
        if target not in kinds:
            try:
                coerce_param(name, text)  # the error names the field and the closest valid name
            except ParameterError as exc:
                raise FieldError(name, f"{exc}; or one of {', '.join(OUTPUT_FIELDS)}") from None
        if target in overrides:
            raise FieldError(name, f"{name!r} and {target!r} are the same parameter; give one")
        try:
            overrides[target] = coerce_param(target, text)
        except ParameterError as exc:
            raise FieldError(name, str(exc)) from None
        except RecursionError:  # JSON (effects) nested deeper than the decoder can go
            raise FieldError(name, f"{name} is nested too deeply to be read") from None
    try:
        fmt, subtype = check_output(fmt, subtype, stream)
    except ParameterError as exc:
        raise FieldError("subtype" if str(exc).startswith("subtype") else "format", str(exc)) from None
    try:
        bitrate = check_output_bitrate(fmt, subtype, bitrate_text)
    except ParameterError as exc:
        raise FieldError("bitrate", str(exc)) from None
    given = {ALIASES.get(n, n): n for n in seen}
    try:
        check_values(overrides)
    except FieldError as exc:
        raise FieldError(given.get(exc.field or "", exc.field), str(exc)) from None
    if stream and overrides.get("loudness") is not None:
        raise FieldError(
            given["loudness"], "loudness needs the whole output, so a streamed answer cannot have it: leave out stream=true"
        )
    if stream and overrides.get("channels") == "each":
        raise FieldError(given["channels"], "channels=each gives a whole multi-channel output, not a stream: leave out stream=true")
    return ConvertOptions(voice, overrides, f0, fmt, subtype, stream, bitrate, source)


def _source_id(text: str | None, stream: bool) -> str | None:
    """The ``source_id`` field: 32 lowercase hex digits, or ``None`` when not given (or empty); a
    streamed answer has no tag to record it in."""
    if text is None or not text.strip():
        return None
    if not SOURCE_ID.fullmatch(text):
        raise FieldError("source_id", (
            "source_id must be 32 lowercase hex digits (the input's id, as rvcfast.writing.source_id gives it), "
            f"got {text[:80]!r}"
        ))
    if stream:
        raise FieldError("source_id", "a streamed answer carries no record of its input: leave out stream=true or source_id")
    return text


def check_values(overrides: dict[str, Any], vocoder: Any = None) -> ConversionParams:
    """Build and range-check the parameters; a :class:`FieldError` names the first bad one.

    A feature whose optional package is missing on the server (``formant``, ``clean``,
    ``effects``) is refused the same way, with the ``pip install`` line.
    """
    try:
        return ConversionParams.build(None, **overrides).validate(vocoder)
    except (ParameterError, BackendUnavailableError) as exc:
        raise FieldError(_field_named(str(exc)), str(exc)) from None


def _field_named(text: str) -> str | None:
    names = sorted(_param_names(), key=len, reverse=True)
    for name in names:
        if text.startswith(name):
            return name
    if "effect" in text:
        return "effects"
    return next((n for n in names if re.search(rf"\b{n}\b", text)), None)


def _f0_name(text: str | None) -> str | None:
    """A registered F0 backend name (or ``hybrid:a+b``), checked without building it."""
    if text is None or not text.strip():
        return None
    from ..f0.registry import available_f0_extractors, parse_hybrid

    name = text.strip().lower()
    try:
        members = parse_hybrid(name) or [name]
    except ParameterError as exc:
        raise FieldError("f0", str(exc)) from None
    known = available_f0_extractors()
    unknown = [m for m in members if m not in known]
    if unknown:
        raise FieldError("f0", f"unknown F0 backend {unknown[0]!r}; available: {', '.join(sorted(known))} (or hybrid:a+b)")
    return name


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise FieldError(name, f"{name} must be true or false, got {text!r}")


# ---------------------------------------------------------------------- OpenAPI


_JSON_TYPES: dict[str, dict[str, Any]] = {
    "number": {"type": "number"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "optional-int": {"type": "integer", "nullable": True},
    "optional-number": {"type": "number", "nullable": True},
    "loudness": {"type": "string", "nullable": True, "example": "match"},
    "choice": {"type": "string"},
    "pair": {"type": "string", "example": "1.0,1.2"},
    "mapping": {"type": "string", "example": '{"reverb": {"room_size": 0.3}}'},
}


def form_schema(with_file: bool = True) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of the convert and job endpoints (multipart or a raw ``audio/*`` body)."""
    props: dict[str, Any] = {}
    if with_file:
        props["file"] = {"type": "string", "format": "binary", "description": "the audio to convert (any format rvcfast decodes)"}
    props["voice"] = {"type": "string", "description": "voice id (GET /v1/voices)"}
    props["f0"] = {"type": "string", "description": "F0 backend for this request (rmvpe, crepe, fcpe, harvest, hybrid:a+b...; default: the server's)"}
    for spec in param_specs():
        if spec.name == "output_sample_rate":
            continue
        schema = dict(_JSON_TYPES.get(spec.kind, {"type": "string"}))
        if spec.choices:
            schema["enum"] = list(spec.choices)
        if spec.default is not None and spec.kind not in ("pair", "mapping"):
            schema["default"] = spec.default
        schema["description"] = spec.help
        props[spec.name] = schema
    props["sample_rate"] = {"type": "integer", "description": "output sample rate in Hz (default: the voice's)"}
    props["format"] = {
        "type": "string", "enum": ["wav", "flac", "ogg", "mp3", "m4a"], "default": "wav",
        "description": "output format (m4a: AAC, needs PyAV on the server)",
    }
    props["subtype"] = {"type": "string", "description": "soundfile subtype, e.g. PCM_16, PCM_24, FLOAT, OPUS (ogg); AAC or ALAC (m4a)"}
    props["bitrate"] = {
        "type": "integer",
        "description": "kbit/s for lossy outputs (default: the encoder's): mp3 8..320 (MPEG bitrates), "
        "ogg with subtype OPUS 6..256, m4a (AAC) 16..320; refused for wav, flac, ogg/Vorbis and ALAC",
    }
    props["stream"] = {"type": "boolean", "default": False, "description": "send WAV pieces as segments finish (chunked)"}
    props["source_id"] = {
        "type": "string", "pattern": "^[0-9a-f]{32}$",
        "description": "the input's id (rvcfast.writing.source_id: a hash of its path), recorded in the output's comment "
        "tag as a local run records it; not with stream=true",
    }
    required = ["file", "voice"] if with_file else ["voice"]
    multipart = {"schema": {"type": "object", "properties": props, "required": required}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": multipart,
            "audio/*": {"schema": {"type": "string", "format": "binary"}, "description": "fields as query parameters"},
        },
    }

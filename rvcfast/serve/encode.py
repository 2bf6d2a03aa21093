"""Audio out of the server: checked format/subtype/bitrate, whole files in memory, and a streamable WAV.

Whole files are encoded as :func:`rvcfast.writing.write_audio_atomic` encodes them (the same
encoder settings, bitrate included), into memory.

A streamed response is a WAV file whose RIFF and data sizes are ``0xFFFFFFFF`` (the
length is unknown when the header is sent), followed by the samples of each piece as
they are converted. libsndfile, FFmpeg and browsers read such a file to its end. The
samples are encoded by libsndfile (``RAW`` with the same subtype), so they are the bytes
the non-streamed WAV would hold.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from ..errors import AudioError, BackendUnavailableError, ParameterError
from ..writing import (
    SUPPORTED_WRITE_FORMATS,
    check_bitrate,
    check_write_format,
    valid_subtypes,
    writable_samples,
    written_rate,
)
from .answers import FieldError

__all__ = [
    "MEDIA_TYPES", "STREAM_SUBTYPES", "check_output", "check_output_rate", "encode_audio", "wav_stream_header", "pcm_bytes",
]

#: Content type of each output format.
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg", "m4a": "audio/mp4"}

#: Subtypes a streamed WAV can carry: (format tag, bits per sample).
STREAM_SUBTYPES = {"PCM_16": (1, 16), "PCM_24": (1, 24), "PCM_32": (1, 32), "FLOAT": (3, 32)}


def check_output(fmt: str | None, subtype: str | None, stream: bool = False) -> tuple[str, str | None]:
    """The output format (lower case) and subtype (upper case or ``None``), or a :class:`ParameterError` naming them.

    m4a needs PyAV on the server (the ``av`` extra): without it the format is refused here.
    """
    import soundfile as sf

    name = (fmt or "wav").strip().lower()
    if name not in SUPPORTED_WRITE_FORMATS or name not in MEDIA_TYPES:
        raise ParameterError(f"format must be one of {', '.join(sorted(MEDIA_TYPES))}, got {fmt!r}")
    if name == "m4a":
        from ..av_encode import import_av

        try:
            import_av()
        except BackendUnavailableError as exc:
            raise ParameterError(f"format 'm4a' is not available on this server: {exc}") from None
    elif SUPPORTED_WRITE_FORMATS[name] not in sf.available_formats():
        raise ParameterError(f"format {name!r} is not available: this server's libsndfile cannot write it")
    sub = subtype.strip().upper() if subtype and subtype.strip() else None
    if sub is not None and sub not in valid_subtypes(name):
        valid = ", ".join(sorted(valid_subtypes(name)))
        raise ParameterError(f"subtype {subtype!r} is not valid for {name} (valid: {valid})")
    if stream:
        if name != "wav":
            raise ParameterError(f"stream=true sends WAV only, got format {name!r}")
        if sub is not None and sub not in STREAM_SUBTYPES:
            raise ParameterError(f"subtype {sub!r} cannot be streamed (choose from {', '.join(STREAM_SUBTYPES)})")
    return name, sub


def check_output_bitrate(fmt: str, subtype: str | None, text: str | None) -> int | None:
    """The ``bitrate`` field (kbit/s) as a number checked for ``fmt``/``subtype`` at any rate
    (the rate's own limits: :func:`check_output_rate`); ``None`` when not given."""
    if text is None or not str(text).strip():
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ParameterError(f"bitrate must be a whole number of kbit/s (e.g. 128), got {text!r}") from None
    return check_bitrate(fmt, subtype, value)


def check_output_rate(fmt: str, subtype: str | None, rate: int, bitrate: int | None = None) -> None:
    """Refuse a format, subtype and bitrate that cannot be written at the output ``rate`` (422, naming the field).

    ``rate`` is the output rate of the request (``sample_rate``, or the voice's); an MP3 or
    AAC is checked at the rate it is written at (:func:`rvcfast.writing.written_rate`).
    Raises a :class:`~rvcfast.serve.answers.FieldError` for ``sample_rate``, ``subtype`` or
    ``bitrate`` (:func:`rvcfast.writing.check_write_format` says why).
    """
    try:
        check_write_format(fmt, subtype, written_rate(fmt, subtype, rate), bitrate=bitrate)
    except ParameterError as exc:
        text = str(exc)
        name = "subtype" if text.startswith("subtype") else "bitrate" if text.startswith("bitrate") else "sample_rate"
        raise FieldError(name, text) from None


def encode_audio(
    audio: np.ndarray, rate: int, fmt: str, subtype: str | None = None, bitrate: int | None = None,
    recorded: str | None = None,
) -> tuple[bytes, int]:
    """The whole output as a file in memory, and the rate it was written at (MP3 and AAC at their nearest rate).

    A format, subtype, rate and bitrate that cannot be written are refused first
    (:func:`check_output_rate`); samples that cannot be written (NaN, infinity) raise
    :class:`~rvcfast.errors.AudioError`. ``recorded``: the input's id (the ``source_id``
    field), recorded in the file's comment tag as :func:`rvcfast.writing.write_audio_atomic`
    records a local input's (a job's result: ``write_audio_atomic(..., recorded=)``).
    """
    check_output_rate(fmt, subtype, rate, bitrate)
    # NaN/inf refused (LAME aborts the whole process on them), clipped where the subtype wraps
    audio = writable_samples(np.asarray(audio, dtype=np.float32), fmt, subtype)
    target = written_rate(fmt, subtype, rate)
    if target != int(rate):
        from ..dsp import resample

        audio, rate = resample(audio, int(rate), target, dtype=np.float32), target
    from .. import writing

    buf = io.BytesIO()  # seekable: the m4a muxer goes back to write its index
    comment = None if recorded is None else writing._SOURCE_TAG + recorded
    writing._encode(buf, audio, int(rate), SUPPORTED_WRITE_FORMATS[fmt], subtype, comment, bitrate=bitrate)
    return buf.getvalue(), int(rate)


def wav_stream_header(rate: int, subtype: str | None = None) -> bytes:
    """A mono WAV header of unknown length (sizes ``0xFFFFFFFF``) for ``subtype`` (default PCM_16)."""
    tag, bits = STREAM_SUBTYPES[subtype or "PCM_16"]
    block = bits // 8
    fmt_chunk = struct.pack("<HHIIHH", tag, 1, int(rate), int(rate) * block, block, bits)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", 0xFFFFFFFF)


def pcm_bytes(audio: np.ndarray, rate: int, subtype: str | None = None) -> bytes:
    """The samples of ``audio`` as the data chunk of a WAV with ``subtype`` holds them (libsndfile's conversion).

    NaN or infinite samples (a diverging model) raise :class:`~rvcfast.errors.AudioError`, as
    :func:`encode_audio` does: libsndfile turned NaN into full-scale samples (-32768 in PCM_16),
    so a stream sent seconds of full-scale DC where the whole file was refused.
    """
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return b""
    if not (np.isfinite(audio.min()) and np.isfinite(audio.max())):  # NaN propagates through min/max
        bad = int(audio.size - np.count_nonzero(np.isfinite(audio)))
        raise AudioError(None, f"not streamed: the output has {bad} NaN or infinite samples of {audio.size}")
    buf = io.BytesIO()
    sf.write(buf, audio, int(rate), format="RAW", subtype=subtype or "PCM_16", endian="LITTLE")
    return buf.getvalue()

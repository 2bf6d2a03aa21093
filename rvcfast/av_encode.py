"""Writing m4a (AAC or ALAC in an MP4/M4A container) through PyAV, and reading back what it wrote.

libsndfile writes no MP4 container, so m4a outputs are encoded by FFmpeg's own ``aac``
encoder (or ``alac``, lossless) and the ``ipod`` muxer that PyAV's wheels bundle; PyAV is
the ``av`` extra (``pip install "rvcfast[av]"``) and is imported only when an m4a is
written or read. :func:`rvcfast.writing.write_audio_atomic` is the only caller that writes:
it hands :func:`write_m4a` its temporary file, so the atomic write (temporary file, flush,
rename) is the same as for every other format.

Frames carry their timestamps from 0, so the AAC encoder's 1024 priming samples get an
edit list in the file, and the file's length (the track's duration, which rvcfast's reader
and FFmpeg's tools trim to) is exactly the written length. The edit list is written in the
movie's timescale, set to the sample rate: at the muxer's default (1000, milliseconds) the
length was rounded to whole milliseconds (up to 48 samples more or less at 48 kHz) and an
output shorter than 1 ms held no audio at all.
"""

from __future__ import annotations

import importlib
import os
from fractions import Fraction
from types import ModuleType
from typing import BinaryIO

import numpy as np

from .errors import BackendUnavailableError

__all__ = [
    "AAC_RATES",
    "AAC_LAYOUTS",
    "ALAC_LAYOUTS",
    "M4A_SUBTYPES",
    "import_av",
    "write_m4a",
    "m4a_comment",
    "m4a_frames",
]

#: The sample rates FFmpeg's AAC encoder takes (the codec's own list: MPEG-4 sampling frequency indices).
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)

#: Channel layouts an m4a is written with, by channel count. None of the AAC layouts has an LFE
#: channel: the encoder low-passes an LFE channel to ~120 Hz, which would erase a converted
#: voice there (channel 4 of "5.1" and "7.1" came back silent when measured).
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "6.0", 7: "7.0", 8: "octagonal"}
#: ALAC is lossless (an LFE channel is kept as it is), but FFmpeg's encoder takes only these layouts.
ALAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1(back)", 8: "7.1(wide)"}

#: Subtypes of m4a: the codec inside the container (AAC the default).
M4A_SUBTYPES = ("AAC", "ALAC")

_CODECS = {"AAC": "aac", "ALAC": "alac"}
_BLOCK = 1 << 16  # frames handed to the encoder at once: bounded memory for long outputs


def import_av(purpose: str = "writing m4a") -> ModuleType:
    """PyAV, or a :class:`BackendUnavailableError` saying how to install it."""
    try:
        return importlib.import_module("av")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{purpose} needs the optional package 'av' (PyAV), which could not be imported ({exc}); "
            'install it with: pip install "rvcfast[av]", or choose another format (wav, flac, ogg, mp3)'
        ) from exc


def write_m4a(
    file: str | os.PathLike[str] | BinaryIO,
    audio: np.ndarray,
    rate: int,
    subtype: str | None = None,
    comment: str | None = None,
    bitrate: int | None = None,
) -> None:
    """Encode float32 ``audio`` (``[samples]`` or ``[samples, channels]``, 1..8 channels) into ``file`` as m4a.

    ``subtype``: ``"AAC"`` (default) or ``"ALAC"`` (16-bit lossless; samples beyond ±1 must
    already be clipped). ``bitrate`` in kbit/s for AAC (``None``: FFmpeg's default, 69 kbit/s
    per single channel, 128 per stereo pair), at most 6 bits per sample and channel (FFmpeg's
    ceiling, where it would clamp it itself). ``comment`` goes into the file's ``comment``
    tag (iTunes ``©cmt``). The caller checks rate, channels, subtype and bitrate first
    (:func:`rvcfast.writing.check_write_format`); ``file`` may have any name (the container
    is named explicitly), or be a seekable binary file object (the muxer seeks back to
    write its index).
    """
    av = import_av()
    sub = (subtype or "AAC").upper()
    data = audio.reshape(len(audio), -1)
    channels = data.shape[1]
    layout = (ALAC_LAYOUTS if sub == "ALAC" else AAC_LAYOUTS)[channels]
    if sub == "ALAC":
        data, sample_format = np.round(data * 32767.0).astype(np.int16), "s16"
    else:
        data, sample_format = np.ascontiguousarray(data, dtype=np.float32), "flt"
    target: str | BinaryIO  # a path, or a seekable file object
    target = file if not isinstance(file, (str, os.PathLike)) else os.fspath(file)
    # the edit list (AAC's priming samples) in samples, not milliseconds: the exact length
    options = {"movie_timescale": str(int(rate))}
    try:
        _mux(av, target, options, data, int(rate), sub, layout, sample_format, comment, bitrate)
    except OSError as exc:
        if exc.errno is None or not exc.filename:
            raise
        # FFmpeg names the temporary file it was writing (removed by the caller): the system's error alone,
        # as libsndfile's formats give it ("[Errno 28] No space left on device")
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno)) from exc


def _mux(
    av: ModuleType,
    target: str | BinaryIO,
    options: dict[str, str],
    data: np.ndarray,
    rate: int,
    sub: str,
    layout: str,
    sample_format: str,
    comment: str | None,
    bitrate: int | None,
) -> None:
    """Encode ``data`` (``[samples, channels]``, ``sample_format``) with ``sub``'s codec into an m4a at ``target``."""
    channels = data.shape[1]
    with av.open(target, "w", format="ipod", options=options) as container:
        if comment is not None:
            container.metadata["comment"] = comment
        stream = container.add_stream(_CODECS[sub], rate=int(rate), layout=layout)
        if bitrate is not None and sub == "AAC":  # at most the encoder's ceiling: 6144 bits per frame and channel
            stream.bit_rate = min(int(bitrate) * 1000, 6 * int(rate) * channels)
        stream.time_base = Fraction(1, int(rate))
        # packed frames (one plane): PyAV 18 mishandles planar frames of 8 channels
        for start in range(0, data.shape[0], _BLOCK):
            block = np.ascontiguousarray(data[start : start + _BLOCK]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(block, format=sample_format, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = int(rate), start, Fraction(1, int(rate))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def m4a_comment(path: str | os.PathLike[str]) -> str | None:
    """The ``comment`` tag of a file FFmpeg reads (``None``: none, unreadable, or no PyAV)."""
    try:
        av = import_av("reading an m4a's tags")
        with av.open(os.fspath(path)) as container:
            return container.metadata.get("comment")
    except Exception:  # noqa: BLE001 - whatever FFmpeg cannot read records nothing
        return None


def m4a_frames(path: str | os.PathLike[str]) -> int:
    """Audio frames of the first audio stream FFmpeg finds in ``path`` (0: none, unreadable, or no PyAV)."""
    try:
        av = import_av("reading an m4a")
        with av.open(os.fspath(path)) as container:
            streams = [s for s in container.streams if s.type == "audio"]
            if not streams or not streams[0].frames:
                return 0
            s = streams[0]
            if s.duration is None or s.time_base is None:
                return int(s.frames)
            return int(Fraction(s.duration) * Fraction(s.time_base) * int(s.rate or 0))
    except Exception:  # noqa: BLE001 - whatever FFmpeg cannot read is not a finished output
        return 0

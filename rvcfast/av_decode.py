"""Decoding containers libsndfile cannot read (m4a/aac/mp4/webm/wma/...) through PyAV.

PyAV's wheels bundle FFmpeg's decoders, so no system ffmpeg is needed; it is the
``av`` extra (``pip install "rvcfast[av]"``) and is imported only when such a file is
decoded. The first audio stream is decoded at its own rate to float64
``[frames, channels]`` blocks (FFmpeg applies the container's edit list, so encoder
priming samples are dropped and the output is trimmed to the stream's duration); the
caller then mixes and resamples exactly as for any other file.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .errors import AudioError, BackendUnavailableError

__all__ = ["CONTAINER_EXTENSIONS", "AvSource", "av_available"]

#: Extensions of containers/codecs that need PyAV (libsndfile cannot read them).
CONTAINER_EXTENSIONS = frozenset(
    {".m4a", ".aac", ".mp4", ".m4b", ".mov", ".webm", ".mkv", ".mka", ".wma", ".wmv", ".asf", ".ac3", ".amr", ".3gp"}
)


def _import_av() -> ModuleType:
    try:
        return importlib.import_module("av")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"decoding this container needs the optional package 'av' (PyAV), which could not be imported ({exc}); "
            'install it with: pip install "rvcfast[av]"'
        ) from exc


def av_available() -> bool:
    """True when PyAV can be imported."""
    try:
        _import_av()
    except BackendUnavailableError:
        return False
    return True


class AvSource:
    """The first audio stream of a container: ``rate``, ``channels``, ``frames`` (0 unless exact), ``blocks()``."""

    def __init__(self, path: Path) -> None:
        self.av = _import_av()
        self.path = path
        try:
            self.container = self.av.open(str(path))
        except Exception as exc:  # noqa: BLE001 - FFmpeg's errors have many types
            raise AudioError(path, f"cannot decode audio: {_detail(exc)}") from None
        streams = [s for s in self.container.streams if s.type == "audio"]
        if not streams:
            self.container.close()
            raise AudioError(path, "cannot decode audio: the file has no audio stream")
        self.stream = streams[0]
        self.rate = int(self.stream.rate or self.stream.codec_context.sample_rate or 0)
        self.channels = int(self.stream.channels or 0)
        self.frames = self._frames()

    def _frames(self) -> int:
        """The stream's exact length, or 0 when the container only lets FFmpeg estimate it.

        A container that indexes every packet (mp4's sample table: ``stream.frames > 0``)
        gives the exact length, and the decoded audio is trimmed to it (AAC's end padding).
        Elsewhere the length is an estimate (raw AAC or AC-3: from the first frames'
        bitrate, off by minutes either way), which must neither cut the audio nor report
        the file as truncated.
        """
        s = self.stream
        if s.frames and s.duration is not None and s.time_base is not None:
            return int(round(Fraction(s.duration) * Fraction(s.time_base) * self.rate))
        return 0

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> AvSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def blocks(self, notes: list[str]) -> Iterator[np.ndarray]:
        """float64 ``[frames, channels]`` blocks; a decode error after some audio becomes a note."""
        resampler = self.av.AudioResampler(format="dbl", layout=self.stream.layout, rate=self.rate)
        done, limit = 0, self.frames or None
        try:
            for frame in self.container.decode(self.stream):
                for out in resampler.resample(frame):
                    block = self._block(out)
                    if limit is not None:
                        block = block[: max(0, limit - done)]
                    done += block.shape[0]
                    if block.shape[0]:
                        yield block
            for out in resampler.resample(None):
                block = self._block(out)[: max(0, limit - done)] if limit is not None else self._block(out)
                done += block.shape[0]
                if block.shape[0]:
                    yield block
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, (AudioError, GeneratorExit)):
                raise
            if done == 0:
                raise AudioError(self.path, f"cannot decode audio: {_detail(exc)}") from None
            notes.append(
                f"{self.path}: file is damaged: decoding stopped after {done / self.rate:.2f} s ({_detail(exc)}); "
                "the readable part was converted"
            )

    def _block(self, frame: Any) -> np.ndarray:
        data = frame.to_ndarray()  # packed doubles: [1, samples * channels]
        return np.asarray(data, dtype=np.float64).reshape(-1, self.channels)


def _detail(exc: BaseException) -> str:
    """FFmpeg's words for ``exc``: its message without the ``[Errno N]`` code and the path
    (PyAV's ``str()`` gives both, and the error already names the file)."""
    words = getattr(exc, "strerror", None)  # PyAV: FFmpegError (not always an OSError)
    text = words if isinstance(words, str) and words.strip() else str(exc)
    return text.strip().rstrip(".") or type(exc).__name__

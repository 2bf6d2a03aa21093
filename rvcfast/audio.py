"""Audio in and out: decode, mono, resample, peak guards, RVC's high-pass, atomic writes.

Everything here works on numpy float64 arrays, as the reference does, so that the
quiet-point search and the filters reproduce it exactly.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from .errors import AudioError, ParameterError

__all__ = [
    "AudioInput",
    "read_audio",
    "to_mono",
    "resample",
    "load_16k",
    "input_peak_guard",
    "output_peak_guard",
    "highpass_48hz",
    "write_audio_atomic",
    "remove_stale_parts",
    "SUPPORTED_WRITE_FORMATS",
]

AudioInput = str | os.PathLike | np.ndarray

#: Sample rate of everything between decoding and synthesis.
SR_16K = 16000
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000

SUPPORTED_WRITE_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode a file with soundfile into float64 ``[samples, channels]`` and its rate.

    Raises :class:`AudioError` naming the file for a missing file, a directory,
    an unreadable file, a format libsndfile cannot decode, or a corrupt stream.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(p, "file does not exist")
    if p.is_dir():
        raise AudioError(p, "is a directory, expected an audio file")
    if not p.is_file():
        raise AudioError(p, "is not a regular file (a device, pipe or socket)")
    if not os.access(p, os.R_OK):
        raise AudioError(p, "file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise AudioError(p, "file is empty (0 bytes)")
    try:
        data, sr = sf.read(str(p), dtype="float64", always_2d=True)
    except sf.LibsndfileError as exc:
        # libsndfile's own text ("Format not recognised.") without its "Error opening '<path>': " prefix
        detail = (getattr(exc, "error_string", "") or str(exc)).strip().rstrip(".")
        raise AudioError(p, f"cannot decode audio: {detail}") from None
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        raise AudioError(p, f"cannot decode audio ({type(exc).__name__}: {exc})") from None
    return data, int(sr)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of ``[samples, channels]`` (or pass 1-D audio through)."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise AudioError(None, f"audio must be 1-D or [samples, channels], got shape {audio.shape}")
    if audio.shape[1] == 1:
        return audio[:, 0]
    if audio.shape[1] == 0:
        return np.zeros(audio.shape[0], dtype=audio.dtype)
    # divide first: the sum of channels near the float maximum would overflow to inf
    return (audio / audio.shape[1]).sum(axis=1)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling (Kaiser-windowed sinc, scipy ``resample_poly``).

    The output has ``ceil(len * target_sr / orig_sr)`` samples.
    """
    if orig_sr == target_sr:
        return audio
    frac = Fraction(int(target_sr), int(orig_sr))
    up, down = frac.numerator, frac.denominator
    # A long, steep filter: Kaiser beta 9 (about -90 dB stop band).
    half_len = 16 * max(up, down)
    taps = signal.firwin(2 * half_len + 1, 0.97 / max(up, down), window=("kaiser", 9.0))
    taps *= up
    out = signal.resample_poly(audio, up, down, window=taps)
    n_out = int(math.ceil(len(audio) * up / down))
    return out[:n_out]


def input_peak_guard(audio: np.ndarray) -> np.ndarray:
    """RVC's input limiter: divide by ``max|x| / 0.95`` if that exceeds 1; quieter audio is untouched."""
    if audio.size == 0:
        return audio
    audio_max = np.abs(audio).max() / 0.95
    if audio_max > 1:
        audio = audio / audio_max
    return audio


def output_peak_guard(audio: np.ndarray) -> np.ndarray:
    """RVC's output limiter: divide by ``max|y| / 0.99`` if that exceeds 1."""
    if audio.size == 0:
        return audio
    audio_max = np.abs(audio).max() / 0.99
    if audio_max > 1:
        audio = audio / audio_max
    return audio


def highpass_48hz(audio: np.ndarray) -> np.ndarray:
    """Zero-phase order-5 Butterworth high-pass at 48 Hz (16 kHz), float64, scipy ``filtfilt`` defaults."""
    b, a = signal.butter(N=5, Wn=48, btype="high", fs=SR_16K)
    padlen = 3 * max(len(a), len(b))
    x = np.asarray(audio, dtype=np.float64)
    if x.shape[-1] <= padlen:
        # filtfilt needs more samples than its edge extension; pad with zeros and cut back.
        n = x.shape[-1]
        x = np.pad(x, (0, padlen + 1 - n))
        return signal.filtfilt(b, a, x)[:n]
    return signal.filtfilt(b, a, x)


def load_16k(
    source: AudioInput,
    sample_rate: int | None = None,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode/validate an input and return mono float64 audio at 16 kHz (before the peak guard).

    ``source`` is a path, or an array (``[samples]`` or ``[samples, channels]``)
    with ``sample_rate``. Errors name the file (or ``name`` for arrays).
    """
    label = name
    if isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        data, sr = read_audio(source)
        if sample_rate is not None and sample_rate != sr:
            raise ParameterError(f"{label}: sample_rate={sample_rate} given for a file whose rate is {sr}")
    else:
        if sample_rate is None:
            raise ParameterError(f"{label or 'array input'}: sample_rate is required for array input")
        data = np.asarray(source)
        sr = int(sample_rate)
        if data.ndim == 2 and data.shape[0] < data.shape[1] and data.shape[0] <= 8:
            raise AudioError(label, f"array of shape {data.shape} looks channels-first; pass [samples, channels]")
        if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
            raise AudioError(label, f"array dtype {data.dtype} is not a number type")
        if np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(data.dtype)
            data = data.astype(np.float64) / float(max(abs(info.min), info.max))
        data = data.astype(np.float64, copy=False)
    if not (MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE):
        raise AudioError(label, f"sample rate {sr} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if data.ndim not in (1, 2):
        raise AudioError(label, f"audio must be 1-D or [samples, channels], got shape {data.shape}")
    mono = to_mono(data)
    if mono.size == 0:
        raise AudioError(label, "audio has no samples")
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioError(label, f"audio contains {bad} NaN or Inf samples")
    return resample(mono, sr, SR_16K)


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:40] or "host"
# ".<name>.<host>~<pid>~<random>.part": who wrote a temporary file, so a later run can tell a stale one
_PART_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~[A-Za-z0-9_]*\.part$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process) or cannot tell: keep the file
    return True


def remove_stale_parts(directory: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete temporary files of :func:`write_audio_atomic` left behind by a killed process.

    Only files of rvcfast's own naming pattern (``.<name>.<host>~<pid>~<random>.part``)
    written on this host by a process that no longer exists are removed; with
    ``name`` only those for that output file name. Returns the paths removed.
    """
    d = Path(directory)
    removed: list[Path] = []
    pattern = f".{_glob_escape(name)}.*.part" if name is not None else ".*.part"
    try:
        candidates = list(d.glob(pattern))
    except OSError:
        return removed
    for f in candidates:
        m = _PART_RE.match(f.name)
        if m is None or (name is not None and m.group("name") != name) or m.group("host") != _HOST:
            continue
        if _pid_alive(int(m.group("pid"))):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def _glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def write_audio_atomic(
    path: str | os.PathLike[str],
    audio: np.ndarray,
    sample_rate: int,
    *,
    format: str | None = None,
    subtype: str | None = None,
) -> Path:
    """Write ``audio`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a partial file: either the old file (or nothing) or the
    complete new one. The data is flushed to disk before the rename. The temporary
    file (``.<name>.<host>~<pid>~<random>.part``) is removed if anything fails, and
    stale ones for the same ``path`` left by a killed process are removed first.
    """
    p = Path(path)
    fmt = (format or p.suffix.lstrip(".") or "wav").lower()
    if fmt not in SUPPORTED_WRITE_FORMATS:
        raise ParameterError(f"{p}: output format {fmt!r} is not supported (choose from {sorted(SUPPORTED_WRITE_FORMATS)})")
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(p.parent, p.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{_HOST}~{os.getpid()}~", suffix=".part", dir=p.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.asarray(audio, dtype=np.float32), int(sample_rate), format=SUPPORTED_WRITE_FORMATS[fmt], subtype=subtype)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p

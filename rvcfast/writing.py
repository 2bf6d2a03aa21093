"""Audio out: atomic writes and the output formats rvcfast writes.

A reader never sees a partial output file: every write goes to a temporary file in
the destination folder (``.<name>.<host>~<pid>~<random>.part``), is flushed to disk and
then renamed over the destination. Temporary files left by a killed process are
recognised by that name and removed by the next run.

Outputs of file inputs record where they came from: their ``comment`` tag says
``rvcfast voice conversion; source <id>``, where the id is a hash of the input's resolved
path (:func:`source_id`; the path itself is not written into shared files). A resumed
batch (``skip_existing``) matches outputs to inputs by it (:func:`recorded_source`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

import numpy as np
import soundfile as sf

from .atomic import atomic_write, new_temporary, short_name
from .errors import AudioError, ParameterError

__all__ = [
    "SUPPORTED_WRITE_FORMATS",
    "MP3_RATES",
    "MAX_CHANNELS",
    "mp3_rate",
    "OGG_VORBIS_MAX_RATE",
    "OPUS_RATES",
    "check_write_format",
    "write_audio_atomic",
    "writable_samples",
    "finished_output",
    "recorded_source",
    "source_id",
    "remove_stale_parts",
    "part_file_hosts",
    "this_host",
]

#: Output formats: our name -> libsndfile's format name.
SUPPORTED_WRITE_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}

#: Sample rates an MP3 stream can carry (MPEG-1/2/2.5).
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def mp3_rate(sample_rate: int) -> int:
    """The MP3 rate an output at ``sample_rate`` is written at: the nearest allowed one (lower on ties).

    40 kHz models are written as 44.1 kHz MP3, as Applio's export does.
    """
    return min(MP3_RATES, key=lambda r: abs(r - int(sample_rate)))


#: Highest rate an OGG/Vorbis file is written at: above ~200 kHz libvorbis crashes the process.
OGG_VORBIS_MAX_RATE = 192000

#: The only sample rates Opus encodes.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

# subtypes libsndfile reads but cannot write
_READ_ONLY_SUBTYPES = {"MP3": ("MPEG_LAYER_I", "MPEG_LAYER_II")}


def check_write_format(format: str, subtype: str | None, sample_rate: int) -> None:
    """Raise :class:`ParameterError` unless ``format``/``subtype`` can be written at ``sample_rate``.

    ``format`` is one of :data:`SUPPORTED_WRITE_FORMATS` (``"wav"``, ``"flac"``, ``"ogg"``,
    ``"mp3"``), ``subtype`` a libsndfile subtype or ``None`` for the format's default and
    ``sample_rate`` the rate the file is written at (MP3: after :func:`mp3_rate`). The
    message names ``sample_rate`` and/or ``subtype``. Known limits are checked first (OGG/Vorbis
    up to :data:`OGG_VORBIS_MAX_RATE` Hz, Opus at :data:`OPUS_RATES` only, MPEG Layer I/II
    are read-only); then an encoder is opened in memory, so every other combination
    libsndfile refuses is refused here too, before any audio is converted or written.
    """
    fmt = str(format).strip().lower()
    if fmt not in SUPPORTED_WRITE_FORMATS:
        raise ParameterError(f"output format {format!r} is not supported (choose from {sorted(SUPPORTED_WRITE_FORMATS)})")
    name = SUPPORTED_WRITE_FORMATS[fmt]
    sub = _subtype(subtype) or sf.default_subtype(name)
    rate = int(sample_rate)
    if sub in _READ_ONLY_SUBTYPES.get(name, ()):
        raise ParameterError(
            f"subtype {sub} cannot be written: libsndfile reads MPEG Layer I/II but writes only MPEG_LAYER_III "
            f"(the default for {fmt})"
        )
    if name == "OGG" and sub == "VORBIS" and rate > OGG_VORBIS_MAX_RATE:
        raise ParameterError(
            f"sample_rate {rate} Hz is too high for {fmt} (Vorbis): at most {OGG_VORBIS_MAX_RATE} Hz; "
            "choose a lower sample_rate, or wav or flac"
        )
    if name == "OGG" and sub == "OPUS" and rate not in OPUS_RATES:
        raise ParameterError(
            f"subtype OPUS needs a sample_rate of {', '.join(map(str, OPUS_RATES))} Hz, got {rate} Hz; "
            "give one of these sample_rate values, or subtype VORBIS"
        )
    _trial_open(name, sub, rate, fmt)


def _subtype(subtype: str | None) -> str | None:
    """``subtype`` as libsndfile names it (``" pcm_16"`` -> ``"PCM_16"``); ``None`` when blank (the default)."""
    return subtype.strip().upper() if subtype and subtype.strip() else None


def _trial_open(name: str, sub: str, rate: int, fmt: str) -> None:
    """Open an encoder in memory: what libsndfile refuses to write is refused before any work."""
    import io

    if not sf.check_format(name, sub):
        valid = ", ".join(sorted(sf.available_subtypes(name)))
        raise ParameterError(f"subtype {sub!r} is not valid for {fmt} (valid: {valid})")
    try:
        with sf.SoundFile(io.BytesIO(), "w", rate, 1, sub, format=name):
            pass
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "error_string", "") or exc).split())
        raise ParameterError(f"{fmt} with subtype {sub} cannot be written at sample_rate {rate} Hz: {reason}") from None

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:40] or "host"
# ".<name>.<host>~<pid>~<random>.part": who wrote a temporary file, so a later run can tell a stale one
_PART_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~[A-Za-z0-9_]*\.part$")


def _new_part(p: Path) -> str:
    """Create the empty temporary file for ``p`` (``.<name>.<host>~<pid>~<random>.part`` beside
    it: who wrote it, so that a later run can tell a stale one) and return its path."""
    return str(new_temporary(p, f"{_HOST}~{os.getpid()}"))


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
    key = short_name(name) if name is not None else None
    pattern = f".{_glob_escape(key)}.*.part" if key is not None else ".*.part"
    try:
        candidates = list(d.glob(pattern))
    except OSError:
        return removed
    for f in candidates:
        m = _PART_RE.match(f.name)
        if m is None or (key is not None and m.group("name") != key) or m.group("host") != _HOST:
            continue
        if _pid_alive(int(m.group("pid"))):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def part_file_hosts(directory: str | os.PathLike[str]) -> set[str]:
    """Hosts whose writers left temporary files in ``directory`` (only that host can tell if they are stale)."""
    try:
        names = [f.name for f in Path(directory).glob(".*.part")]
    except OSError:
        return set()
    return {m.group("host") for m in map(_PART_RE.match, names) if m is not None}


def this_host() -> str:
    """This host's name as :func:`write_audio_atomic` writes it into temporary file names."""
    return _HOST


#: The most channels a format's encoder takes (libsndfile: LAME and libFLAC); others take any number.
MAX_CHANNELS = {"mp3": 2, "flac": 8}

#: Subtypes that carry samples beyond ±1 as they are: everything else is clipped to ±1 first.
_UNCLIPPED_SUBTYPES = {"FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_III"}


def writable_samples(
    audio: np.ndarray, fmt: str, subtype: str | None = None, path: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """Float32 ``audio`` as it can be written as ``fmt``/``subtype`` (what :func:`write_audio_atomic` writes).

    Raises :class:`AudioError` (naming ``path`` when given) for samples that cannot be written:
    none at all for FLAC or MP3, NaN or infinity for any format (LAME aborts the process on
    them), more channels than the format holds (:data:`MAX_CHANNELS`). Returns ``audio`` clipped to ±1 (a new array) where the subtype would wrap samples
    beyond it (µ-law, A-law, ADPCM...), else ``audio`` itself.
    """
    subtype = _subtype(subtype)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    most = MAX_CHANNELS.get(fmt)
    if most is not None and channels > most:
        raise AudioError(path, f"not written: {fmt} holds at most {most} channels, the audio has {channels} (wav and ogg hold more)")
    if audio.size == 0:
        if fmt in ("flac", "mp3"):
            raise AudioError(path, f"no audio to write: an empty {fmt} file cannot be written (wav and ogg can be empty)")
        return audio
    lo, hi = float(audio.min()), float(audio.max())  # NaN propagates through min/max: no mask needed
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(audio.size - np.count_nonzero(np.isfinite(audio)))
        raise AudioError(path, f"not written: the audio has {bad} NaN or infinite samples of {audio.size}")
    sub = subtype or sf.default_subtype(SUPPORTED_WRITE_FORMATS[fmt])
    if (lo < -1.0 or hi > 1.0) and sub not in _UNCLIPPED_SUBTYPES:
        audio = np.clip(audio, -1.0, 1.0)  # a new array: the caller's audio is left as it is
    return audio


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
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``audio`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a partial file: either the old file (or nothing) or the
    complete new one. The data is flushed to disk before the rename. A format,
    subtype and rate that cannot be written (:func:`check_write_format`) raise
    :class:`ParameterError` before anything is written, as do NaN or infinite samples
    (:class:`AudioError`: LAME aborts the process on them, FLAC fails, WAV turns them into
    full-scale clicks) and an empty ``audio`` for FLAC or MP3 (libsndfile would leave a
    0-byte file). Samples beyond ±1 are clipped for the integer, companded and ADPCM
    subtypes (PCM, µ-law, A-law...: µ-law, A-law and ADPCM would wrap them around);
    the float subtypes and the lossy codecs keep them. The temporary
    file (``.<name>.<host>~<pid>~<random>.part``) is removed if anything fails, and
    stale ones for the same ``path`` left by a killed process are removed first.
    ``source``, the input file the audio was converted from, is recorded in the file's
    ``comment`` tag as its :func:`source_id`.
    """
    p = Path(path)
    fmt = (format or p.suffix.lstrip(".") or "wav").strip().lower()
    if fmt not in SUPPORTED_WRITE_FORMATS:
        raise ParameterError(f"{p}: output format {fmt!r} is not supported (choose from {sorted(SUPPORTED_WRITE_FORMATS)})")
    subtype = _subtype(subtype)  # as check_write_format reads it: " pcm_16" passed the check, then failed every write
    check_write_format(fmt, subtype, mp3_rate(sample_rate) if fmt == "mp3" else sample_rate)
    audio = writable_samples(np.asarray(audio, dtype=np.float32), fmt, subtype, p)
    if fmt == "mp3" and int(sample_rate) not in MP3_RATES:
        from .dsp import resample

        target = mp3_rate(sample_rate)
        audio, sample_rate = resample(audio, int(sample_rate), target, dtype=np.float32), target
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(p.parent, p.name)
    comment = _SOURCE_TAG + source_id(source) if source is not None else None
    with atomic_write(p, _new_part(p)) as tmp:
        _encode(tmp, audio, int(sample_rate), SUPPORTED_WRITE_FORMATS[fmt], subtype, comment)
    return p


def _encode(file: str | os.PathLike[str], audio: np.ndarray, rate: int, fmt: str, subtype: str | None, comment: str | None) -> None:
    """Encode ``audio`` into ``file`` (libsndfile's format name ``fmt``), with a ``comment`` tag
    when one is given. The one place an output's bytes are written."""
    channels = audio.shape[1] if audio.ndim > 1 else 1
    with sf.SoundFile(str(file), "w", rate, channels, subtype=subtype, format=fmt) as f:
        if comment is not None:
            f.comment = comment
        f.write(audio)


_SOURCE_TAG = "rvcfast voice conversion; source "
_SOURCE_RE = re.compile(re.escape(_SOURCE_TAG) + r"([0-9a-f]{32})\b")


def source_id(path: str | os.PathLike[str]) -> str:
    """The id an output records of the input ``path``: a hash of its resolved absolute path.

    Two spellings of one file (``in/./a.wav``, a symlink) have one id; the path itself
    cannot be read back from the id.
    """
    resolved = os.path.realpath(os.path.abspath(os.fspath(path)))
    return hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def recorded_source(path: str | os.PathLike[str]) -> str | None:
    """The :func:`source_id` an output written by rvcfast records, or ``None`` (no such tag,
    another program's file, not readable as audio)."""
    try:
        with sf.SoundFile(str(path)) as f:
            comment = f.comment or ""
    except Exception:  # noqa: BLE001 - whatever libsndfile cannot read records nothing
        return None
    match = _SOURCE_RE.search(comment)
    return match.group(1) if match else None


def finished_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``skip_existing`` may skip the input whose output is ``path``: a file there that
    reads as audio with at least one frame (every output rvcfast writes does). An empty or
    unreadable file (left by another program, a copy that was cut short) or a folder is not a
    finished output: the input is converted again and that file replaced. Used by the batch
    runner and the Ray runner alike."""
    if not Path(path).is_file():
        return False
    import soundfile as sf

    try:
        return sf.info(str(path)).frames > 0
    except Exception:  # noqa: BLE001 - whatever libsndfile cannot read is not a finished output
        return False

"""Audio out: atomic writes and the output formats rvcfast writes.

A reader never sees a partial output file: every write goes to a temporary file in
the destination folder (``.<name>.<host>~<pid>~<random>.part``), is flushed to disk and
then renamed over the destination. Temporary files left by a killed process are
recognised by that name and removed by the next run.

Outputs of file inputs record where they came from: their ``comment`` tag says
``rvcfast voice conversion; source <id>``, where the id is a hash of the input's resolved
path (:func:`source_id`; the path itself is not written into shared files). A resumed
batch (``skip_existing``) matches outputs to inputs by it (:func:`recorded_source`).

wav, flac, ogg (Vorbis or Opus) and mp3 are written by libsndfile; m4a (AAC, or ALAC
lossless) by PyAV (:mod:`rvcfast.av_encode`, the ``av`` extra). The lossy formats take a
``bitrate`` in kbit/s (:func:`check_bitrate`): mp3 (constant bitrate) and ogg/Opus through
libsndfile's compression level, which it maps linearly onto LAME's and Opus' bitrates
(:func:`_compression_level` inverts that mapping), m4a/AAC through FFmpeg's encoder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from .atomic import atomic_write, new_temporary, process_alive, short_name
from .errors import AudioError, ParameterError
from .sndfile import reads_to_its_end, sndfile_path

__all__ = [
    "SUPPORTED_WRITE_FORMATS",
    "encode_output",
    "recorded_in_bytes",
    "check_output_folder",
    "MP3_RATES",
    "MAX_CHANNELS",
    "mp3_rate",
    "OGG_VORBIS_MAX_RATE",
    "OPUS_RATES",
    "M4A_RATES",
    "m4a_rate",
    "written_rate",
    "check_write_format",
    "check_bitrate",
    "bitrate_range",
    "valid_subtypes",
    "write_audio_atomic",
    "writable_samples",
    "finished_output",
    "recorded_source",
    "source_id",
    "remove_stale_parts",
    "part_file_hosts",
    "this_host",
    "sndfile_path",
    "windows_name_problem",
    "WINDOWS_DEVICE_NAMES",
    "check_windows_output",
    "windows_long_paths",
]

#: Output formats: our name -> libsndfile's format name (``"M4A"`` for m4a, which PyAV writes:
#: not a libsndfile format, so ask :func:`valid_subtypes` rather than ``soundfile`` about it).
SUPPORTED_WRITE_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3", "m4a": "M4A"}

#: The formats libsndfile writes (the others: m4a, through PyAV).
_PYAV_FORMATS = {"M4A"}

#: Sample rates an MP3 stream can carry (MPEG-1/2/2.5).
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def mp3_rate(sample_rate: int) -> int:
    """The MP3 rate an output at ``sample_rate`` is written at: the nearest allowed one (lower on ties).

    40 kHz models are written as 44.1 kHz MP3, as Applio's export does.
    """
    return min(MP3_RATES, key=lambda r: abs(r - int(sample_rate)))


#: Sample rates an m4a/AAC stream can carry (FFmpeg's AAC encoder; ALAC takes any rate).
M4A_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def m4a_rate(sample_rate: int) -> int:
    """The rate an m4a/AAC output at ``sample_rate`` is written at: the nearest AAC rate (lower on
    ties), as :func:`mp3_rate` does for MP3: 40 kHz models are written as 44.1 kHz AAC."""
    return min(M4A_RATES, key=lambda r: abs(r - int(sample_rate)))


def written_rate(format: str, subtype: str | None, sample_rate: int) -> int:
    """The rate an output at ``sample_rate`` is written at as ``format``/``subtype``: the nearest
    MP3 rate for mp3 (:func:`mp3_rate`), the nearest AAC rate for m4a/AAC (:func:`m4a_rate`),
    ``sample_rate`` itself otherwise (ALAC, wav, flac, ogg)."""
    fmt = str(format).strip().lower()
    if fmt == "mp3":
        return mp3_rate(sample_rate)
    if fmt == "m4a" and (_subtype(subtype) or "AAC") == "AAC":
        return m4a_rate(sample_rate)
    return int(sample_rate)


#: Highest rate an OGG/Vorbis file is written at: above ~200 kHz libvorbis crashes the process.
OGG_VORBIS_MAX_RATE = 192000

#: The only sample rates Opus encodes.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

# subtypes libsndfile reads but cannot write
_READ_ONLY_SUBTYPES = {"MP3": ("MPEG_LAYER_I", "MPEG_LAYER_II"), "WAV": ("MPEG_LAYER_III",)}


def check_write_format(format: str, subtype: str | None, sample_rate: int, bitrate: int | None = None) -> None:
    """Raise :class:`ParameterError` unless ``format``/``subtype`` can be written at ``sample_rate``.

    ``format`` is one of :data:`SUPPORTED_WRITE_FORMATS` (``"wav"``, ``"flac"``, ``"ogg"``,
    ``"mp3"``, ``"m4a"``), ``subtype`` a libsndfile subtype (for m4a ``"AAC"`` or ``"ALAC"``)
    or ``None`` for the format's default and ``sample_rate`` the rate the file is written at
    (:func:`written_rate`: MP3 and AAC at their nearest rate). The message names
    ``sample_rate``, ``subtype`` and/or ``bitrate``. Known limits are checked first (OGG/Vorbis
    up to :data:`OGG_VORBIS_MAX_RATE` Hz, Opus at :data:`OPUS_RATES` only, AAC at
    :data:`M4A_RATES` only, MPEG Layer I/II are read-only, ``bitrate`` as
    :func:`check_bitrate` says); then an encoder is opened in memory, so every other
    combination libsndfile (or FFmpeg, for m4a) refuses is refused here too, before any
    audio is converted or written. m4a without PyAV installed raises
    :class:`~rvcfast.errors.BackendUnavailableError` with the ``pip install`` line.
    """
    fmt = str(format).strip().lower()
    if fmt not in SUPPORTED_WRITE_FORMATS:
        raise ParameterError(f"output format {format!r} is not supported (choose from {sorted(SUPPORTED_WRITE_FORMATS)})")
    name = SUPPORTED_WRITE_FORMATS[fmt]
    sub = _subtype(subtype) or _default_subtype(name)
    rate = int(sample_rate)
    if sub in _READ_ONLY_SUBTYPES.get(name, ()):
        raise ParameterError(
            f"subtype {sub} cannot be written: libsndfile reads MPEG Layer I/II but writes only MPEG_LAYER_III "
            f"(the default for {fmt})"
            if name == "MP3"
            else f"subtype {sub} cannot be written as {fmt}: libsndfile reads it but does not write it "
            f"(for MPEG Layer III choose format mp3; wav takes {', '.join(sorted(valid_subtypes(fmt)))})"
        )
    if name == "OGG" and sub == "VORBIS" and rate > OGG_VORBIS_MAX_RATE:
        raise ParameterError(
            f"sample_rate {rate} Hz is too high for {fmt} (Vorbis): at most {OGG_VORBIS_MAX_RATE} Hz; "
            "choose a lower output rate (output_sample_rate=, --sample-rate, the server's sample_rate), or wav or flac"
        )
    if name == "OGG" and sub == "OPUS" and rate not in OPUS_RATES:
        raise ParameterError(
            f"subtype OPUS needs a sample_rate of {', '.join(map(str, OPUS_RATES))} Hz, got {rate} Hz; "
            "set the output rate to one of these (output_sample_rate=, --sample-rate, the server's sample_rate), "
            "or subtype VORBIS"
        )
    if name == "M4A" and sub == "AAC" and rate not in M4A_RATES:
        raise ParameterError(
            f"sample_rate {rate} Hz cannot be written as m4a (AAC): AAC takes {', '.join(map(str, M4A_RATES))} Hz "
            f"(write_audio_atomic writes at the nearest one, {m4a_rate(rate)} Hz)"
        )
    if bitrate is not None:
        check_bitrate(fmt, sub, bitrate, rate)
    if name in _PYAV_FORMATS:
        _trial_open_m4a(sub, rate, fmt)
    else:
        _trial_open(name, sub, rate, fmt)


def _subtype(subtype: str | None) -> str | None:
    """``subtype`` as libsndfile names it (``" pcm_16"`` -> ``"PCM_16"``); ``None`` when blank (the default)."""
    return subtype.strip().upper() if subtype and subtype.strip() else None


def _default_subtype(name: str) -> str:
    """The subtype a format (libsndfile's name, or ``"M4A"``) is written with when none is given."""
    return "AAC" if name == "M4A" else sf.default_subtype(name)


def valid_subtypes(format: str) -> dict[str, str]:
    """The subtypes ``format`` (one of :data:`SUPPORTED_WRITE_FORMATS`) can be written with: name -> description.

    Subtypes libsndfile only reads (MP3's ``MPEG_LAYER_I``/``MPEG_LAYER_II``) are left out: a
    message listing the valid subtypes named them, and the one chosen from it was then refused.
    """
    from .av_encode import M4A_SUBTYPES

    name = SUPPORTED_WRITE_FORMATS[str(format).strip().lower()]
    if name == "M4A":
        return {sub: ("AAC (lossy)" if sub == "AAC" else "Apple Lossless, 16 bit") for sub in M4A_SUBTYPES}
    read_only = _READ_ONLY_SUBTYPES.get(name, ())
    return {sub: text for sub, text in sf.available_subtypes(name).items() if sub not in read_only}


def _trial_open(name: str, sub: str, rate: int, fmt: str) -> None:
    """Open an encoder in memory: what libsndfile refuses to write is refused before any work."""
    import io

    if not sf.check_format(name, sub):
        valid = ", ".join(sorted(valid_subtypes(fmt)))
        raise ParameterError(f"subtype {sub!r} is not valid for {fmt} (valid: {valid})")
    try:
        with sf.SoundFile(io.BytesIO(), "w", rate, 1, sub, format=name):
            pass
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "error_string", "") or exc).split())
        raise ParameterError(f"{fmt} with subtype {sub} cannot be written at sample_rate {rate} Hz: {reason}") from None


def _trial_open_m4a(sub: str, rate: int, fmt: str) -> None:
    """Open FFmpeg's encoder for ``sub`` in memory (PyAV must be installed): what it refuses is refused now."""
    from .av_encode import M4A_SUBTYPES, import_av

    if sub not in M4A_SUBTYPES:
        raise ParameterError(f"subtype {sub!r} is not valid for {fmt} (valid: {', '.join(M4A_SUBTYPES)})")
    av = import_av()
    try:
        ctx = av.codec.CodecContext.create(sub.lower(), "w")
        ctx.sample_rate, ctx.layout = rate, "mono"
        ctx.format = "fltp" if sub == "AAC" else "s16p"
        ctx.open()
    except Exception as exc:  # noqa: BLE001 - FFmpeg's errors have many types
        reason = " ".join(str(exc).split())
        raise ParameterError(f"{fmt} with subtype {sub} cannot be written at sample_rate {rate} Hz: {reason}") from None


# ---------------------------------------------------------------------------------------------- bitrate

#: MPEG Layer III bitrates (kbit/s) in constant bitrate, by the rates they apply to (MPEG-1,
#: MPEG-2, MPEG-2.5). libsndfile's compression level spans 32..320, 8..160 and 8..64 kbit/s
#: (the last is its limit, not MPEG-2.5's); LAME writes only these values.
_MP3_BITRATES = (
    (32000, (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)),
    (16000, (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)),
    (0, (8, 16, 24, 32, 40, 48, 56, 64)),
)
#: Opus through libsndfile: 6..256 kbit/s per channel (its compression level's span).
_OPUS_BITRATES = (6, 256)
#: AAC (FFmpeg's encoder): 16..320 kbit/s. Above 6 bits per sample and channel (6144 bits per
#: 1024-sample frame, the encoder's ceiling: 264 kbit/s for mono 44.1 kHz) it is written at that
#: ceiling (:func:`rvcfast.av_encode.write_m4a`); the encoder itself delivers at most ~4.6 bits
#: per sample and channel (measured: ~200 kbit/s for mono 44.1 kHz noise, ~390 for stereo).
_AAC_BITRATES = (16, 320)


def _mp3_bitrates(rate: int | None) -> tuple[int, ...]:
    """The MP3 bitrates at ``rate`` (``None``: those of any rate)."""
    if rate is None:
        return tuple(sorted({k for _, ks in _MP3_BITRATES for k in ks}))
    return next(ks for lowest, ks in _MP3_BITRATES if int(rate) >= lowest)


def bitrate_range(format: str, subtype: str | None = None, sample_rate: int | None = None) -> tuple[int, int] | None:
    """The lowest and highest ``bitrate`` (kbit/s) of ``format``/``subtype`` at ``sample_rate``
    (``None``: at any rate), or ``None`` when it takes none (wav, flac, ogg/Vorbis, m4a/ALAC).
    MP3 takes only the MPEG bitrates between them (:func:`check_bitrate`)."""
    fmt = str(format).strip().lower()
    name = SUPPORTED_WRITE_FORMATS.get(fmt)
    sub = _subtype(subtype) or (_default_subtype(name) if name else None)
    if name == "MP3":
        ks = _mp3_bitrates(sample_rate)
        return ks[0], ks[-1]
    if name == "OGG" and sub == "OPUS":
        return _OPUS_BITRATES
    if name == "M4A" and sub == "AAC":
        return _AAC_BITRATES
    return None


def check_bitrate(format: str, subtype: str | None, bitrate: object, sample_rate: int | None = None) -> int | None:
    """``bitrate`` (kbit/s, the total of all channels) checked for ``format``/``subtype``; ``None`` stays ``None``.

    Raises :class:`ParameterError` naming ``bitrate``, the format and the valid values for
    anything but a whole number the encoder writes: mp3 takes the MPEG bitrates (at 32 kHz
    and above 32..320, at 16..24 kHz 8..160, below 8..64), ogg with subtype OPUS 6..256
    (at least 6 per channel are written), m4a (AAC) 16..320 (at most 6 bits per sample and
    channel are written) (:func:`bitrate_range`); wav, flac, m4a/ALAC (lossless) and
    ogg/Vorbis (libsndfile encodes it at a quality) take none.
    ``sample_rate`` is the rate written (:func:`written_rate`); without it (not known yet)
    only what holds at every rate is checked.
    """
    if bitrate is None:
        return None
    fmt = str(format).strip().lower()
    if isinstance(bitrate, (bool, np.bool_)) or not isinstance(bitrate, (int, np.integer)):
        raise ParameterError(f"bitrate must be a whole number of kbit/s (e.g. 128), got {bitrate!r}")
    value = int(bitrate)
    span = bitrate_range(fmt, subtype, sample_rate)
    sub = _subtype(subtype) or (_default_subtype(SUPPORTED_WRITE_FORMATS[fmt]) if fmt in SUPPORTED_WRITE_FORMATS else None)
    if span is None:
        if fmt in SUPPORTED_WRITE_FORMATS and sub not in valid_subtypes(fmt):  # the subtype is the mistake, not the bitrate
            raise ParameterError(f"subtype {sub!r} is not valid for {fmt} (valid: {', '.join(sorted(valid_subtypes(fmt)))})")
        if fmt == "ogg" and sub == "VORBIS":
            raise ParameterError(
                "bitrate cannot be set for ogg with subtype VORBIS: libsndfile encodes Vorbis at a variable quality, "
                "not a bitrate; use subtype OPUS (6..256 kbit/s), mp3 or m4a for a bitrate"
            )
        raise ParameterError(
            f"bitrate is for lossy formats (mp3, ogg with subtype OPUS, m4a): {fmt}"
            f"{f' with subtype {sub}' if fmt in ('ogg', 'm4a') else ''} takes none; leave bitrate out"
        )
    where = f" at {int(sample_rate)} Hz" if sample_rate is not None else ""
    if fmt == "mp3":
        choices = _mp3_bitrates(sample_rate)
        if value not in choices:
            raise ParameterError(
                f"bitrate {value} kbit/s cannot be written as mp3{where}: MP3 takes "
                f"{', '.join(map(str, choices))} kbit/s"
                + ("" if sample_rate is not None else " (which of them depends on the rate: 32..320 at 32000 Hz and above, "
                   "8..160 at 16000..24000 Hz, 8..64 below)")
            )
    elif not span[0] <= value <= span[1]:
        what = "ogg (Opus)" if fmt == "ogg" else f"{fmt} (AAC)"
        raise ParameterError(f"bitrate {value} kbit/s is out of range for {what}{where}: {span[0]}..{span[1]} kbit/s")
    return value


def _compression_level(name: str, sub: str, bitrate: int, rate: int, channels: int) -> float:
    """libsndfile's compression level that gives ``bitrate`` kbit/s for MP3 (constant bitrate) or Opus.

    libsndfile maps the level ``c`` linearly and truncates: MP3 ``int(hi - c * (hi - lo))``
    kbit/s over the MPEG version's span, Opus ``int((1 - c) * 250000 + 6000)`` bit/s per
    channel. Half a unit more than the target survives the truncation whatever the rounding.
    """
    if name == "MP3":
        lo, hi = (32, 320) if rate >= 32000 else (8, 160) if rate >= 16000 else (8, 64)
        return min(1.0, max(0.0, (hi - bitrate - 0.5) / (hi - lo)))
    per_channel = min(256000.0, max(6000.0, bitrate * 1000.0 / max(1, channels)))
    return min(1.0, max(0.0, 1.0 - (per_channel - 5999.5) / 250000.0))


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:40] or "host"
# ".<name>.<host>~<pid>~<random>.part": who wrote a temporary file, so a later run can tell a stale one
_PART_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~[A-Za-z0-9_]*\.part$", re.DOTALL)


def _new_part(p: Path) -> str:
    """Create the empty temporary file for ``p`` (``.<name>.<host>~<pid>~<random>.part`` beside
    it: who wrote it, so that a later run can tell a stale one) and return its path."""
    return str(new_temporary(p, f"{_HOST}~{os.getpid()}"))


#: Names Windows keeps for devices, whatever their extension (``nul.wav`` is the device NUL);
#: upper case. Output names here, uploaded voice names in the server.
WINDOWS_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in [*"0123456789", "\u00b9", "\u00b2", "\u00b3"]]
)
#: Characters Windows does not allow in a file or folder name.
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*\x00-\x1f]')
#: Longest path Windows opens (260 with its terminating NUL) and longest folder path it creates,
#: unless long paths are enabled (``LongPathsEnabled``, Windows 10 1607 and later).
WINDOWS_MAX_PATH = 259
WINDOWS_MAX_FOLDER = 247


def windows_name_problem(name: str) -> str | None:
    """Why Windows cannot give a file or folder the name ``name`` (one part of a path), or ``None``."""
    bad = sorted(set(_WINDOWS_FORBIDDEN.findall(name)))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"it holds {shown}, which Windows does not allow in names"
    if name != name.rstrip(" ."):
        return "it ends in a dot or a space, which Windows drops (the file would get another name)"
    if name.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_DEVICE_NAMES:
        return f"{name.split('.', 1)[0]!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1, LPT1...)"
    return None


def windows_long_paths() -> bool:  # pragma: no cover - Windows
    """Whether Windows opens paths longer than :data:`WINDOWS_MAX_PATH` (``LongPathsEnabled`` set;
    Python declares itself long-path aware)."""
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:  # type: ignore[attr-defined]
            return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0])  # type: ignore[attr-defined]
    except (ImportError, OSError, IndexError, TypeError, ValueError):
        return False


def _utf16_length(text: str) -> int:
    """``text``'s length as Windows counts it (UTF-16 units: an emoji is two)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def check_windows_output(out_dir: str | os.PathLike[str], path: str | os.PathLike[str], label: str, long_paths: bool) -> None:
    """On Windows: raise :class:`~rvcfast.errors.ParameterError` for an output ``path`` (in ``out_dir``,
    of the input ``label``) that Windows cannot write under that name: a part of its name
    (``name_template``'s text, a voice's name, ``{stem}``) holding ``<>:"|?*``, ending in a dot or
    a space, or a device name (``CON``, ``NUL``...); or, without ``long_paths``, a path (of the
    temporary file it is first written to, which is longer) beyond :data:`WINDOWS_MAX_PATH`
    characters. Such an output otherwise failed at its write, after its conversion (and a ``:``
    names an NTFS alternate stream of another file)."""
    p = Path(path)
    try:
        parts = p.relative_to(out_dir).parts
    except ValueError:
        parts = (p.name,)
    for part in parts:
        why = windows_name_problem(part)
        if why is not None:
            raise ParameterError(f"{label}: its output {p} cannot be written on Windows: {part!r}: {why}")
    if long_paths:
        return
    full = os.path.abspath(p)
    folder = os.path.dirname(full)
    temporary = os.path.join(folder, f".{short_name(p.name)}.{_HOST}~{os.getpid()}~00000000.part")
    if _utf16_length(temporary) > WINDOWS_MAX_PATH or _utf16_length(folder) > WINDOWS_MAX_FOLDER:
        raise ParameterError(
            f"{label}: its output {full} ({_utf16_length(full)} characters; {_utf16_length(temporary)} for the "
            "temporary file it is "
            f"written to first) is longer than Windows allows ({WINDOWS_MAX_PATH} characters, a folder "
            f"{WINDOWS_MAX_FOLDER}): choose a shorter output folder or name_template, or enable long paths "
            "in Windows (LongPathsEnabled)"
        )


def check_output_folder(folder: str | os.PathLike[str], what: str = "output") -> None:
    """Raise :class:`~rvcfast.errors.ParameterError` when ``folder`` is a file, or cannot be
    created because the nearest part of its path that exists is a file (``notes.txt/out``), or
    that part cannot be written (a read-only mount, no permission): found before any work, not
    as one failed write per file afterwards; or when it is a URI (``s3://...``), which
    ``pathlib`` would take for a folder named ``s3:``."""
    from .local_paths import uri_refusal

    refusal = uri_refusal(folder)
    if refusal is not None:
        raise ParameterError(f"{what} {os.fspath(folder)} is {refusal}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"{what} {folder} exists and is not a folder")
    existing = folder if folder.is_dir() else None
    for parent in folder.parents:
        if existing is not None:
            break
        if parent.exists():
            if not parent.is_dir():
                raise ParameterError(f"{what} folder {folder} cannot be created: {parent} is a file, not a folder")
            existing = parent
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        # a read-only mount or no permission: every file would fail at its write, after converting
        readonly = hasattr(os, "statvfs") and bool(os.statvfs(existing).f_flag & getattr(os, "ST_RDONLY", 1))
        why = "is on a read-only file system" if readonly else "is not writable (permission denied)"
        verb = "written" if existing == folder else "created"
        raise ParameterError(f"{what} folder {folder} cannot be {verb}: {existing} {why}")


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
        if process_alive(int(m.group("pid"))):
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


#: The most channels a format's encoder takes (libsndfile: LAME and libFLAC; FFmpeg's AAC and
#: ALAC, see :data:`rvcfast.av_encode.AAC_LAYOUTS`); others take any number.
MAX_CHANNELS = {"mp3": 2, "flac": 8, "m4a": 8}

#: Channel counts at which libsndfile's ogg encoders take the last channel for the LFE and
#: low-pass it (measured: a voice there comes back with ~80 % error, the others ~10 %): Vorbis
#: at 6 channels (5.1), Opus at 6 to 8 (its surround mapping: 5.1, 6.1, 7.1). Refused: every
#: channel of an rvcfast output holds a voice.
_OGG_LFE_CHANNELS = {"VORBIS": (6,), "OPUS": (6, 7, 8)}

#: Subtypes that carry samples beyond ±1 as they are: everything else is clipped to ±1 first.
_UNCLIPPED_SUBTYPES = {"FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_III", "AAC"}

#: Formats that cannot be written empty (libsndfile would leave a 0-byte file; an m4a without samples reads as no audio).
_NOT_EMPTY = ("flac", "mp3", "m4a")


def writable_samples(
    audio: np.ndarray, fmt: str, subtype: str | None = None, path: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """Float32 ``audio`` as it can be written as ``fmt``/``subtype`` (what :func:`write_audio_atomic` writes).

    Raises :class:`AudioError` (naming ``path`` when given) for samples that cannot be written:
    none at all for FLAC, MP3 or m4a, NaN or infinity for any format (LAME aborts the process on
    them), more channels than the format holds (:data:`MAX_CHANNELS`), a channel count at which
    ogg would low-pass the last channel as an LFE channel (Vorbis 6, Opus 6 to 8). Returns ``audio`` clipped to ±1 (a new array) where the subtype would wrap samples
    beyond it (µ-law, A-law, ADPCM...), else ``audio`` itself.
    """
    subtype = _subtype(subtype)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    most = MAX_CHANNELS.get(fmt)
    if most is not None and channels > most:
        raise AudioError(path, f"not written: {fmt} holds at most {most} channels, the audio has {channels} (wav and ogg hold more)")
    _check_ogg_channels(fmt, subtype, channels, path)
    if audio.size == 0:
        if fmt in _NOT_EMPTY:
            raise AudioError(path, f"no audio to write: an empty {fmt} file cannot be written (wav and ogg can be empty)")
        return audio
    lo, hi = float(audio.min()), float(audio.max())  # NaN propagates through min/max: no mask needed
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(audio.size - np.count_nonzero(np.isfinite(audio)))
        raise AudioError(path, f"not written: the audio has {bad} NaN or infinite samples of {audio.size}")
    sub = subtype or _default_subtype(SUPPORTED_WRITE_FORMATS[fmt])
    if (lo < -1.0 or hi > 1.0) and sub not in _UNCLIPPED_SUBTYPES:
        audio = np.clip(audio, -1.0, 1.0)  # a new array: the caller's audio is left as it is
    return audio


def _check_ogg_channels(fmt: str, subtype: str | None, channels: int, path: str | os.PathLike[str] | None) -> None:
    """Raise :class:`AudioError` where ogg would take the last of ``channels`` for an LFE
    channel and low-pass the voice out of it (:data:`_OGG_LFE_CHANNELS`)."""
    if fmt != "ogg":
        return
    sub = subtype or "VORBIS"
    if channels in _OGG_LFE_CHANNELS.get(sub, ()):
        codec = "Opus" if sub == "OPUS" else "Vorbis"
        raise AudioError(
            path,
            f"not written: ogg ({codec}) with {channels} channels encodes channel {channels} as a low-frequency (LFE) "
            f"channel and filters the voice out of it; write {channels} channels as wav, flac or m4a",
        )


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
    bitrate: int | None = None,
    remove_stale: bool = True,
    recorded: str | None = None,
) -> Path:
    """Write ``audio`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a partial file: either the old file (or nothing) or the
    complete new one. The data is flushed to disk before the rename. A format,
    subtype and rate that cannot be written (:func:`check_write_format`) raise
    :class:`ParameterError` before anything is written, as do NaN or infinite samples
    (:class:`AudioError`: LAME aborts the process on them, FLAC fails, WAV turns them into
    full-scale clicks) and an empty ``audio`` for FLAC, MP3 or m4a (libsndfile would leave a
    0-byte file). MP3 and m4a/AAC outputs are resampled to their nearest rate first
    (:func:`written_rate`). ``bitrate`` (kbit/s, lossy formats only, :func:`check_bitrate`)
    sets the encoder's bitrate; without it each encoder's default is kept. Samples beyond ±1 are clipped for the integer, companded and ADPCM
    subtypes (PCM, µ-law, A-law...: µ-law, A-law and ADPCM would wrap them around);
    the float subtypes and the lossy codecs keep them. The temporary
    file (``.<name>.<host>~<pid>~<random>.part``) is removed if anything fails, and
    stale ones for the same ``path`` left by a killed process are removed first, unless
    ``remove_stale=False``: finding them lists the whole folder, so a batch that removed
    them from its folders before its first write (:func:`remove_stale_parts`) leaves it out
    (4,000 outputs in one folder took 5 ms more per write, 8,000 took 11 ms).
    ``source``, the input file the audio was converted from, is recorded in the file's
    ``comment`` tag as its :func:`source_id` (m4a: the iTunes comment atom); ``recorded``
    records such an id given as it is, where the input is not at hand (a server told it by
    its client).
    """
    p = Path(path)
    if source is not None and recorded is not None:
        raise ParameterError("write_audio_atomic takes source or recorded, not both")
    recorded = source_id(source) if source is not None else recorded
    encode = _output_encoder(audio, sample_rate, format or p.suffix.lstrip(".") or "wav", subtype, bitrate, recorded, p)
    p.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        remove_stale_parts(p.parent, p.name)
    with atomic_write(p, _new_part(p)) as tmp:
        encode(tmp)
    return p


def encode_output(
    file: BinaryIO, audio: np.ndarray, sample_rate: int, *, format: str, subtype: str | None = None,
    bitrate: int | None = None, recorded: str | None = None, label: str | os.PathLike[str] = "output",
) -> None:
    """The bytes :func:`write_audio_atomic` writes, into a seekable binary file object (an
    output bound for object storage): the same checks (raised before anything is written,
    naming ``label``), rate, samples and encoder; ``recorded``: the input's id to record
    (:func:`source_id` of a path, or another id of the same form for an object's URI)."""
    _output_encoder(audio, sample_rate, format, subtype, bitrate, recorded, label)(file)


def _output_encoder(
    audio: np.ndarray, sample_rate: int, fmt: str, subtype: str | None, bitrate: int | None,
    recorded: str | None, label: str | os.PathLike[str],
) -> Callable[[Any], None]:
    """An output checked and made writable: a function encoding it into a path or file object."""
    fmt = fmt.strip().lower()
    if fmt not in SUPPORTED_WRITE_FORMATS:
        raise ParameterError(f"{label}: output format {fmt!r} is not supported (choose from {sorted(SUPPORTED_WRITE_FORMATS)})")
    subtype = _subtype(subtype)  # as check_write_format reads it: " pcm_16" passed the check, then failed every write
    target = written_rate(fmt, subtype, sample_rate)
    check_write_format(fmt, subtype, target, bitrate=bitrate)
    samples = writable_samples(np.asarray(audio, dtype=np.float32), fmt, subtype, label)
    if target != int(sample_rate):
        from .dsp import resample

        samples, sample_rate = resample(samples, int(sample_rate), target, dtype=np.float32), target
    comment = _SOURCE_TAG + recorded if recorded is not None else None
    return lambda file: _encode(file, samples, int(sample_rate), SUPPORTED_WRITE_FORMATS[fmt], subtype, comment, bitrate=bitrate)


def _encode(
    file: str | os.PathLike[str] | BinaryIO,
    audio: np.ndarray,
    rate: int,
    fmt: str,
    subtype: str | None,
    comment: str | None,
    bitrate: int | None = None,
) -> None:
    """Encode ``audio`` into ``file`` (libsndfile's format name ``fmt``, or ``"M4A"`` through
    PyAV), with a ``comment`` tag when one is given and ``bitrate`` kbit/s when given (checked
    before). ``file`` is a path or a seekable binary file object. The one place an output's
    bytes are encoded."""
    if fmt in _PYAV_FORMATS:
        from .av_encode import write_m4a

        write_m4a(file, audio, rate, subtype, comment, bitrate)
        return
    channels = audio.shape[1] if audio.ndim > 1 else 1
    options: dict[str, object] = {}
    if bitrate is not None:
        sub = subtype or sf.default_subtype(fmt)
        options["compression_level"] = _compression_level(fmt, sub, int(bitrate), rate, channels)
        if fmt == "MP3":
            options["bitrate_mode"] = "CONSTANT"
    # a path (see sndfile_path: bytes, but text on Windows), or a file object (the server's answers)
    target = file if hasattr(file, "write") else sndfile_path(file)
    try:
        f = sf.SoundFile(target, "w", rate, channels, subtype=subtype, format=fmt, **options)
    except sf.LibsndfileError as exc:
        raise _with_reason(exc, None) from exc
    try:
        if comment is not None:
            f.comment = comment
        f.write(audio)
    except sf.LibsndfileError as exc:
        err = _with_reason(exc, getattr(f, "_file", None))  # read before the file is closed
        with contextlib.suppress(Exception):
            f.close()
        raise err from exc
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        raise
    try:
        f.close()
    except sf.LibsndfileError as exc:
        raise _with_reason(exc, None) from exc


def _with_reason(exc: Exception, handle: object) -> Exception:
    """libsndfile's bare "System error." as the ``OSError`` behind it ("No space left on device",
    "Read-only file system"...): soundfile raises the generic text, libsndfile keeps the
    system's (``sf_strerror``, of the open file, else the last one). Other errors as they are."""
    if not str(getattr(exc, "error_string", "")).startswith("System error"):
        return exc
    try:
        from soundfile import _ffi, _snd

        text = _ffi.string(_snd.sf_strerror(handle if handle else _ffi.NULL)).decode(errors="replace")
    except Exception:  # noqa: BLE001 - soundfile's internals moved: keep its own error
        return exc
    reason = text.split(":", 1)[1].strip().rstrip(".") if ":" in text else ""
    if not reason:
        return exc
    code = next((c for c in errno.errorcode if os.strerror(c) == reason), None)
    return OSError(code, reason) if code is not None else OSError(reason)


_SOURCE_TAG = "rvcfast voice conversion; source "
_SOURCE_RE = re.compile(re.escape(_SOURCE_TAG) + r"([0-9a-f]{32})\b")


def source_id(path: str | os.PathLike[str]) -> str:
    """The id an output records of the input ``path``: a hash of its resolved absolute path.

    Two spellings of one file (``in/./a.wav``, a symlink) have one id; the path itself
    cannot be read back from the id.
    """
    resolved = os.path.realpath(os.path.abspath(os.fspath(path)))
    return hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def recorded_in_bytes(data: bytes) -> str | None:
    """The :func:`source_id` recorded in a piece of an rvcfast output's bytes, or ``None`` where
    that piece holds no such tag. The tag lies in the first few hundred bytes of a wav, flac,
    mp3 or ogg output and in the last few kB of an m4a (its index comes last), so the two ends
    of a file that is not at hand (an object on a remote store) say what it records."""
    match = _SOURCE_BYTES_RE.search(data)
    return match.group(1).decode("ascii") if match else None


_SOURCE_BYTES_RE = re.compile(re.escape(_SOURCE_TAG.encode("ascii")) + rb"([0-9a-f]{32})\b")


def recorded_source(path: str | os.PathLike[str]) -> str | None:
    """The :func:`source_id` an output written by rvcfast records, or ``None`` (no such tag,
    another program's file, not readable as audio). An ``.m4a`` is read through PyAV."""
    if not _regular_file(path):  # a FIFO would block the open for ever; a folder records nothing
        return None
    try:
        with sf.SoundFile(sndfile_path(path)) as f:
            comment = f.comment or ""
    except Exception:  # noqa: BLE001 - whatever libsndfile cannot read records nothing...
        if not _is_m4a(path):
            return None
        from .av_encode import m4a_comment  # ...but an m4a, which FFmpeg reads

        comment = m4a_comment(path) or ""
    match = _SOURCE_RE.search(comment)
    return match.group(1) if match else None


def finished_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``skip_existing`` may skip the input whose output is ``path``: a file there that
    reads as audio with at least one frame, to the end its header promises (every output rvcfast
    writes does; an ``.m4a`` is read through PyAV). An empty or unreadable file (left by another
    program), a copy that was cut short (a WAV holding less than its header says, a FLAC or MP3
    whose last frames do not decode) or a folder is not a finished output: the input is converted
    again and that file replaced. Used by the batch runner and the Ray runner alike."""
    if not _regular_file(path):
        return False
    try:
        with sf.SoundFile(sndfile_path(path)) as f:
            return reads_to_its_end(f)
    except Exception:  # noqa: BLE001 - whatever libsndfile cannot read is not a finished output...
        if not _is_m4a(path):
            return False
    from .av_encode import m4a_frames  # ...but an m4a, which FFmpeg reads

    return m4a_frames(path) > 0


def _regular_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (through symlinks): not a folder, FIFO, socket or device."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_m4a(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named as an m4a output (read through PyAV: libsndfile cannot)."""
    return Path(path).suffix.lower() == ".m4a"

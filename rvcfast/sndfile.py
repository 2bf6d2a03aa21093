"""libsndfile's view of a file: the name to open it by, and whether it reads to the end its header promises.

Shared by audio in (:mod:`rvcfast.audio`) and audio out (:mod:`rvcfast.writing`: whether an
output already there is finished), below both.
"""

from __future__ import annotations

import os
import re
import sys

import soundfile as sf

__all__ = ["promised_seconds", "reads_to_its_end", "sndfile_path"]

#: Chunk sizes a writer that cannot seek back (a pipe) puts in a header for "unknown length".
_UNKNOWN_SIZES = frozenset({0xFFFFFFFF, 0x7FFFFFFF})

# libsndfile's header log: "data : 160000 (should be 19956)" when the file is shorter
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_SHORT_CONTAINER = re.compile(r"^\s*(RIFF|riff|FORM|Riff size)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def sndfile_path(path: str | os.PathLike[str] | bytes) -> str | bytes:
    """``path`` as soundfile must be given it for libsndfile to open the file of that name.

    Elsewhere bytes: a name that is not UTF-8 (a Latin-1 ``caf\\xe9.wav`` from an old archive)
    reaches the file. On Windows the text: soundfile opens it with ``sf_wchar_open`` (UTF-16),
    while bytes go to ``sf_open``, which reads them in the ANSI code page, so a name outside it
    (accents, Japanese, in the file's name or a folder's, ``C:\\Users\\José``) failed to open, or
    was written under a garbled name beside the empty one asked for.
    """
    raw = os.fspath(path)
    if sys.platform == "win32":
        return os.fsdecode(raw)
    return os.fsencode(raw)


def promised_seconds(f: sf.SoundFile) -> float | None:
    """Seconds the header promises when libsndfile logged it as longer than the file, else ``None``."""
    try:
        log = f.extra_info
    except Exception:  # noqa: BLE001 - the log is only a diagnostic
        return None
    for pattern in (_SHORT_CHUNK, _SHORT_CONTAINER):
        m = pattern.search(log)
        if m is not None:
            header, present = int(m.group(2)), int(m.group(3))
            if present > 0 and header > present and header not in _UNKNOWN_SIZES:
                return f.frames * header / present / f.samplerate
    return None


def reads_to_its_end(f: sf.SoundFile) -> bool:
    """Whether every frame the header of the open file ``f`` promises can be read: ``False`` for
    a WAV/AIFF whose header promises more than the file holds, and for a FLAC, MP3 or ogg cut
    short (a copy that was interrupted), whose last frames do not decode. Reads at most the last
    4096 frames; leaves ``f`` at its end."""
    if f.frames <= 0 or promised_seconds(f) is not None:
        return False
    tail = min(f.frames, 4096)
    try:
        f.seek(f.frames - tail)
        return f.read(tail, dtype="float32", always_2d=True).shape[0] == tail
    except Exception:  # noqa: BLE001 - libsndfile fails past the end of a cut file
        return False

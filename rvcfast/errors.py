"""Exception types raised by rvcfast.

Every error that concerns a file names the file and the problem. Catch
:class:`RvcfastError` to handle anything rvcfast raises on purpose; by cause:

* bad input (audio that cannot be used): :class:`AudioError`;
* bad settings or options (also a call given something that is not audio): :class:`ParameterError`;
* bad or missing model: :class:`ModelLoadError` (a voice model, index or base model file
  that is missing, unreadable or does not fit; :class:`UnsafeFileError` is one) and
  :class:`WeightsNotFoundError` (a base weights file not found);
* missing extra or unknown F0 backend: :class:`BackendUnavailableError`.

:class:`Cancelled` is not an :class:`RvcfastError` (see there). The classes also derive
from the built-in exception a caller may already catch: ``ValueError`` (the first three
kinds), ``FileNotFoundError`` (:class:`WeightsNotFoundError`), ``ImportError``
(:class:`BackendUnavailableError`).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "RvcfastError",
    "ModelLoadError",
    "UnsafeFileError",
    "WeightsNotFoundError",
    "AudioError",
    "AudioTooLongError",
    "ParameterError",
    "BackendUnavailableError",
    "Cancelled",
]


class RvcfastError(Exception):
    """Base class of every error rvcfast raises deliberately.

    Anything else escaping from rvcfast (``IndexError``, ``RuntimeError``...) is a bug.
    """


class _PathError(RvcfastError):
    """An error about one file: ``path`` (or ``None``) and ``problem``; the message is ``"<path>: <problem>"``.

    Built from those two, not from the message, so it pickles by them (:meth:`__reduce__`):
    an error raised in another process (a Ray worker, a process pool) arrives as itself,
    with its type, ``path``, ``problem`` and any attribute set on it afterwards.
    """

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem), dict(self.__dict__))


class ModelLoadError(_PathError, ValueError):
    """A model, weights or index file is missing, could not be read or does not fit.

    The message is ``"<file>: <problem>"``; ``path`` and ``problem`` hold its two parts.
    Examples: ``voice.pth: voice model file does not exist``, ``x.index: index dimension 256
    does not match the voice model's feature dimension 768 (...)``. A ``ValueError``.
    """


class UnsafeFileError(ModelLoadError):
    """A file asked to run code or build objects that are not plain data; nothing was run.

    A :class:`ModelLoadError`: ``<file>: refused to load <what>: the file references
    <module.name>, which is not plain data; ...``.
    """


class WeightsNotFoundError(RvcfastError, FileNotFoundError):
    """A base weights file (RMVPE, content encoder) is not where it was given, or anywhere rvcfast looks.

    The message names the file, the places looked in and how to get it (``rvcfast
    download``; ``allow_download=True`` fetches it on first use). A ``FileNotFoundError``, not a
    :class:`ModelLoadError`: catch both for "the models cannot be loaded".
    """


class AudioError(_PathError, ValueError):
    """An audio input could not be decoded or is not usable.

    The message is ``"<file>: <problem>"`` (``"array input: <problem>"`` for samples):
    a missing or undecodable file; NaN or infinite, empty, too short or channels-first
    samples; a sample rate outside 1000..768000 Hz; with ``strict=True``, an input warning.
    ``path`` and ``problem`` hold its two parts. A ``ValueError``.
    """


class AudioTooLongError(AudioError):
    """An input is longer than the caller's ``max_seconds``; ``limit`` holds that bound.

    Raised while decoding, as soon as the decoded audio passes the bound (whatever the
    file's header claimed), so no more than ``limit`` seconds are ever decoded.
    """

    def __init__(self, path: str | os.PathLike[str] | None, problem: str, limit: float = 0.0) -> None:
        super().__init__(path, problem)
        self.limit = float(limit)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem, self.limit), dict(self.__dict__))


class ParameterError(RvcfastError, ValueError):
    """A setting, option or argument is unknown, of the wrong type or outside its range.

    The message names it and what it got, e.g. ``pitch must be within -48..48 semitones,
    got 49``, ``protect must be a number, got '0.2' (str)``, ``unknown conversion parameter
    'pich' (did you mean 'pitch'?); ...``. Also raised for a call given something that is
    not audio (``None``, a dict) and for an array without its ``sample_rate``. Raised when
    the call is made, before any work. A ``ValueError``.
    """


class BackendUnavailableError(RvcfastError, ImportError):
    """An F0 backend is unknown, or a feature needs an optional extra that is not installed.

    The message names the backend or feature and the install command, e.g. ``formant needs
    the optional package 'stftpitchshift', which is not installed; install it with: pip
    install "rvcfast[formant]"``. An ``ImportError``.
    """


class Cancelled(BaseException):
    """Work stopped because its ``cancel`` event was set (:meth:`rvcfast.Engine.run`).

    Like :class:`asyncio.CancelledError` it derives from :class:`BaseException`, not
    :class:`RvcfastError`: the handlers that isolate one failing input (``except
    Exception``) must not take a cancelled run for a bad file and carry on with it.
    """


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut after ``limit`` characters: an integer of
    thousands of digits would fill the message, and past Python's int-to-text limit (4300
    digits) its ``repr`` raises ValueError instead of naming the parameter: its size is named."""
    try:
        text = repr(value)
    except ValueError:
        import numbers

        if isinstance(value, numbers.Integral):
            return f"an integer of about {int(value).bit_length() * 0.30103:.0f} digits"  # log10(2)
        raise
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes :func:`warnings.warn`, called by the function calling this
    one, point at the first line outside rvcfast: the user's line that led to the warning,
    whichever public entry point it went through (torch's and contextlib's decorator frames
    between rvcfast's own are skipped too)."""
    import sys
    import types

    frame: types.FrameType | None = sys._getframe(1)  # the function about to call warnings.warn: stacklevel 1
    level = 1
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_DECORATORS = (os.path.join("torch", "utils", "_contextlib.py"), os.sep + "contextlib.py")


def _internal(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR) or filename.endswith(_DECORATORS)

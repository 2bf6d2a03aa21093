"""Exception types raised by rvcfast.

Every error that concerns a file names the file and the problem. Catch
:class:`RvcfastError` to handle anything rvcfast raises on purpose.
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
    """Base class of every error rvcfast raises deliberately."""


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
    """A model, weights or index file could not be read or does not fit."""


class UnsafeFileError(ModelLoadError):
    """A file asked to run code or build objects that are not plain data."""


class WeightsNotFoundError(RvcfastError, FileNotFoundError):
    """A base weights file (RMVPE, content encoder) is not present anywhere rvcfast looks."""


class AudioError(_PathError, ValueError):
    """An audio input could not be decoded or is not usable."""


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
    """A conversion parameter is outside its allowed range."""


class BackendUnavailableError(RvcfastError, ImportError):
    """An F0 backend is unknown or needs an optional extra that is not installed."""


class Cancelled(BaseException):
    """Work stopped because its ``cancel`` event was set (:meth:`rvcfast.Engine.run`).

    Like :class:`asyncio.CancelledError` it derives from :class:`BaseException`, not
    :class:`RvcfastError`: the handlers that isolate one failing input (``except
    Exception``) must not take a cancelled run for a bad file and carry on with it.
    """

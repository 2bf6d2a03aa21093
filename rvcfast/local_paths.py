"""Paths given as text: URIs where a local path is expected, and paths from the environment.

URIs (``s3://bucket/a.wav``, ``file:///data/a.wav``) are not local paths: ``pathlib`` takes such text for a relative path (``s3:/bucket/a.wav``): an output folder given as a
URI became a folder named ``s3:`` under the working directory, with every file reported written,
and an input URI failed as ``s3:/bucket/a.wav: file does not exist``. Local runs refuse them by
name; object storage is the Ray runner's (:mod:`rvcfast.integrations.ray`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import ParameterError

__all__ = ["expanded_path", "uri_refusal"]

#: ``scheme://``: two characters at least, so a Windows drive (``C:\\``, ``C:/``) is never one.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def uri_refusal(value: Any) -> str | None:
    """What ``value``, given where a local path is expected, is instead (``"a URI: ..."``, to follow
    its name in a message), or ``None`` for a local path (or anything not text)."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not _URI.match(text):
        return None
    if text[:7].lower() == "file://":
        local = text[7:] or "/"
        if local.startswith("/"):
            return f"a file:// URI, not a path: give its local path {local!r}"
        return "a file:// URI, not a path: give the local path"
    return (
        "a URI, and this reads and writes local paths: object storage is read and written by the Ray "
        "runner alone (rvcfast.integrations.ray.convert_files, or `rvcfast convert --ray`)"
    )


def expanded_path(name: str, value: str) -> Path:
    """``value`` (a path from the variable or option ``name``: ``RVCFAST_HOME``...) with ``~``
    expanded, made absolute; a :class:`~rvcfast.errors.ParameterError` naming ``name`` where
    ``~user`` names no user (pathlib's RuntimeError was a traceback at every model load)."""
    try:
        return Path(value).expanduser().absolute()
    except RuntimeError:  # "~nosuchuser/...", or "~" where no home folder is known
        raise ParameterError(
            f"{name}={value!r}: cannot expand {value.split(os.sep)[0]!r} (no such user, or no home folder)"
        ) from None

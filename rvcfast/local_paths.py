"""Paths given as text that are not local paths: URIs (``s3://bucket/a.wav``, ``file:///data/a.wav``).

``pathlib`` takes such text for a relative path (``s3:/bucket/a.wav``): an output folder given as a
URI became a folder named ``s3:`` under the working directory, with every file reported written,
and an input URI failed as ``s3:/bucket/a.wav: file does not exist``. Local runs refuse them by
name; object storage is the Ray runner's (:mod:`rvcfast.integrations.ray`).
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["uri_refusal"]

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

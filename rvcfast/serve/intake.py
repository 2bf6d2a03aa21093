"""Reading a convert/job request: its fields and its audio, spooled to a file.

A request is either ``multipart/form-data`` with the audio in a ``file`` field and the
other fields beside it, or a raw body with an ``audio/*`` (or
``application/octet-stream``) content type and the fields in the query string. The
audio is copied into the server's spool folder under a random name (uploads are never
decoded from a client-chosen path), and error messages show the client's file name,
never the spool path. The body size is bounded by the server's upload limit
(:class:`~rvcfast.serve.middleware.BodyLimit`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answers import FieldError

__all__ = ["Intake", "UnsupportedMedia", "read_request", "spool_upload", "safe_name", "CLIENT_CLOSED"]

#: Form fields (not files) a request may carry.
MAX_FIELDS = 64

#: The status recorded for a request whose client disconnected before its answer (nginx's convention).
CLIENT_CLOSED = 499


class UnsupportedMedia(Exception):
    """The request's content type carries no audio (answered with 415)."""


@dataclass
class Intake:
    """A request's fields (``(name, text)`` pairs, query first) and its spooled audio file."""

    fields: list[tuple[str, str]]
    path: Path | None = None
    name: str = "upload"
    extra_files: dict[str, tuple[Path, str]] = field(default_factory=dict)

    def cleanup(self) -> None:
        """Delete the spooled files."""
        for p in [self.path, *(f[0] for f in self.extra_files.values())]:
            if p is not None:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

    def hide(self, text: str) -> str:
        """``text`` with spool paths replaced by the client's file names."""
        if self.path is not None:
            text = text.replace(str(self.path), self.name)
        for p, name in self.extra_files.values():
            text = text.replace(str(p), name)
        return text


def safe_name(name: str | None, default: str = "upload") -> str:
    """A client's file name reduced to a harmless base name (for messages and headers)."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")[:100]
    return base or default


def _spool_path(folder: Path, name: str) -> Path:
    suffix = Path(name).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        suffix = ""
    fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(tmp)


async def spool_upload(upload: Any, folder: Path) -> tuple[Path, str]:
    """Copy a multipart file field into the spool folder; its path and the client's (safe) file name."""
    name = safe_name(getattr(upload, "filename", None))
    path = _spool_path(folder, name)

    def copy() -> None:
        upload.file.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)

    try:
        await asyncio.to_thread(copy)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, name


async def read_request(request: Any, folder: Path, *, file_fields: tuple[str, ...] = ("file",)) -> Intake:
    """The fields and the audio of a request (see the module docstring); the caller calls :meth:`Intake.cleanup`.

    A client that disconnects before its body is read is answered (to nobody) with status
    :data:`CLIENT_CLOSED`, which the metrics count: it is not a failure of the server.
    """
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    try:
        return await _read_request(request, folder, file_fields)
    except ClientDisconnect:
        raise HTTPException(CLIENT_CLOSED, "the client disconnected before its request body was read") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        # the operator's disk, not the request: 507, and the client may try again later
        raise HTTPException(507, "the server's spool folder (--jobs-dir) is full: try again later", {"Retry-After": "60"}) from None


async def _read_request(request: Any, folder: Path, file_fields: tuple[str, ...]) -> Intake:
    fields = [(k, v) for k, v in request.query_params.multi_items()]
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart(request, folder, fields, file_fields)
    if ctype.startswith("audio/") or ctype == "application/octet-stream":
        # a raw body may name its file in the query (?filename=take1.wav), for messages only
        fields = [(k, v) for k, v in fields if k != "filename"]
        intake = Intake(fields, _spool_path(folder, ""), name=safe_name(request.query_params.get("filename"), "audio"))
        try:
            size = 0
            with open(intake.path, "wb") as out:  # type: ignore[arg-type]
                async for chunk in request.stream():
                    size += len(chunk)
                    out.write(chunk)
        except BaseException:
            intake.cleanup()
            raise
        if size == 0:
            intake.cleanup()
            raise FieldError("file", "the request body is empty: send the audio as the body")
        return intake
    shown = ctype or "none"
    raise UnsupportedMedia(
        f"content type {shown!r} carries no audio: send multipart/form-data with a 'file' field, or the audio as the "
        "body with an audio/* content type (fields in the query string)"
    )


async def _multipart(request: Any, folder: Path, fields: list[tuple[str, str]], file_fields: tuple[str, ...]) -> Intake:
    form = await request.form(max_files=len(file_fields), max_fields=MAX_FIELDS)
    intake = Intake(list(fields))
    try:
        for key, value in form.multi_items():
            if isinstance(value, str):
                intake.fields.append((key, value))
                continue
            if key not in file_fields:
                expected = "the audio goes in 'file'" if file_fields == ("file",) else f"expected {', '.join(file_fields)}"
                raise FieldError(key, f"unexpected file field {key!r} ({expected})")
            if key in intake.extra_files or (key == file_fields[0] and intake.path is not None):
                raise FieldError(key, f"file field {key!r} is given more than once")
            path, name = await spool_upload(value, folder)
            if key == file_fields[0]:
                intake.path, intake.name = path, name
            else:
                intake.extra_files[key] = (path, name)
    except BaseException:
        intake.cleanup()
        raise
    finally:
        await form.close()
    if intake.path is None:
        intake.cleanup()
        what = "the audio" if file_fields[0] == "file" else f"the {file_fields[0]} file"
        raise FieldError(file_fields[0], f"no {file_fields[0]!r} field: send {what} as a multipart file field")
    if intake.path.stat().st_size == 0:
        intake.cleanup()
        raise FieldError(file_fields[0], f"the uploaded {file_fields[0]!r} is empty")
    return intake

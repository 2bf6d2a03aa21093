"""How the server words a refusal: the errors of request fields and the JSON answers.

The lowest layer of the server's own modules: the request forms and output checks raise
:class:`FieldError`, the routes and the application's exception handlers answer with
:func:`error_response`, and headers carrying data are written by :func:`dumps_header`.
Starlette (the ``serve`` extra) is imported only when an answer is made.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ParameterError
from .middleware import with_request_id

__all__ = ["FieldError", "dumps_header", "error_response"]


class FieldError(ParameterError):
    """A request field is missing, unknown, repeated or has a bad value; ``field`` names it."""

    def __init__(self, name: str | None, message: str) -> None:
        super().__init__(message)
        self.field = name


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    """A JSON error answer ``{"error": message, ..., "request_id": ID}`` (the id of the request being served)."""
    from starlette.responses import JSONResponse

    return JSONResponse(with_request_id({"error": message, **extra}), status_code=status, headers=headers)


def dumps_header(value: Any) -> str:
    """JSON for a response header (ASCII only)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))

"""Checks of the numeric options of the built-in F0 backends (``--f0-option KEY=VALUE``).

A value may come from the command line, a server config or Python code, so it may be a
string, a bool or ``None``; these turn it into a number or raise :class:`ParameterError`
naming the backend and the option, never a bare ``ValueError``/``TypeError``.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ParameterError
from .world import option_number

__all__ = ["option_number", "option_finite", "option_count"]


def option_finite(backend: str, name: str, value: Any) -> float:
    """``value`` as a finite float (a NaN threshold would silently compare false everywhere)."""
    number = option_number(backend, name, value)
    if not math.isfinite(number):
        raise ParameterError(f"{backend} F0 option {name} must be a finite number, got {value!r}")
    return number


def option_count(backend: str, name: str, value: Any, minimum: int | None = 1) -> int:
    """``value`` as a whole number ``>= minimum`` (no bound for ``None``); ``2.0`` and ``"64"``
    are accepted, ``1.5`` is not."""
    number = option_finite(backend, name, value)
    if number != int(number) or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ParameterError(f"{backend} F0 option {name} must be a whole number{bound}, got {value!r}")
    return int(number)

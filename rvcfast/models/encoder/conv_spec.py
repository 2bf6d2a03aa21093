"""fairseq's ``conv_feature_layers`` string: parsed without ``eval``, and written back.

The string is a small Python expression such as
``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``; a recursive-descent evaluator
accepts only int literals, lists, tuples, ``+`` and ``*``, with bounded sizes and
nesting depth (a deeply bracketed string from a file is a ValueError, not a RecursionError).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["parse_conv_layers", "check_conv_layers", "format_conv_layers"]

_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([\[\]\(\),+*]))")
_MAX_ITEMS = 10_000
_MAX_INT = 1_000_000_000
_MAX_DEPTH = 16


class _ConvSpecParser:
    """Recursive-descent evaluator for int literals, lists, tuples, ``+`` and ``*``."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN_RE.match(stripped, pos)
            if m is None:
                raise ValueError(f"unexpected character {stripped[pos:].lstrip()[:1]!r} at offset {pos}")
            if m.group(1) is not None:
                value = int(m.group(1))
                if value > _MAX_INT:
                    raise ValueError(f"number {value} is too large")
                self.tokens.append(("int", value))
            else:
                self.tokens.append(("op", m.group(2)))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, op: str | None = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end of expression")
        if op is not None and tok != ("op", op):
            raise ValueError(f"expected {op!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.expr()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()[1]!r} after the expression")  # type: ignore[index]
        return value

    def expr(self) -> Any:
        value = self.term()
        while self.peek() == ("op", "+"):
            self.take("+")
            value = self._add(value, self.term())
        return value

    def term(self) -> Any:
        value = self.atom()
        while self.peek() == ("op", "*"):
            self.take("*")
            value = self._mul(value, self.atom())
        return value

    def atom(self) -> Any:
        kind, value = self.take()
        if kind == "int":
            return value
        if value not in ("[", "("):
            raise ValueError(f"unexpected {value!r}")
        if self.depth >= _MAX_DEPTH:
            raise ValueError(f"brackets nested more than {_MAX_DEPTH} deep")
        self.depth += 1
        items, had_comma = self._items("]" if value == "[" else ")")
        self.depth -= 1
        if value == "[":
            return items
        if len(items) == 1 and not had_comma:
            return items[0]
        return tuple(items)

    def _items(self, close: str) -> tuple[list[Any], bool]:
        items: list[Any] = []
        had_comma = False
        while True:
            if self.peek() == ("op", close):
                self.take(close)
                return items, had_comma
            items.append(self.expr())
            if len(items) > _MAX_ITEMS:
                raise ValueError("too many items")
            if self.peek() == ("op", ","):
                self.take(",")
                had_comma = True
            elif self.peek() != ("op", close):
                raise ValueError(f"expected ',' or {close!r}")

    @staticmethod
    def _check_joined(n: int) -> None:
        if n > _MAX_ITEMS:
            raise ValueError("too many items")

    @staticmethod
    def _add(a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        # two checks, not one "list and list or tuple and tuple": each branch adds like to like
        if isinstance(a, list) and isinstance(b, list):
            _ConvSpecParser._check_joined(len(a) + len(b))
            return a + b
        if isinstance(a, tuple) and isinstance(b, tuple):
            _ConvSpecParser._check_joined(len(a) + len(b))
            return a + b
        raise ValueError(f"cannot add {type(a).__name__} and {type(b).__name__}")

    @staticmethod
    def _mul(a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            if a * b > _MAX_INT:
                raise ValueError("number too large")
            return a * b
        seq, n = (a, b) if isinstance(b, int) else (b, a)
        if not isinstance(seq, (list, tuple)) or not isinstance(n, int):
            raise ValueError(f"cannot multiply {type(a).__name__} by {type(b).__name__}")
        if len(seq) * n > _MAX_ITEMS:
            raise ValueError("too many items")
        return seq * n


def check_conv_layers(value: Any) -> tuple[tuple[int, int, int], ...]:
    """``value`` as a tuple of ``(dim, kernel, stride)`` positive ints; ValueError otherwise."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("conv layers must be a non-empty list of (dim, kernel, stride) tuples")
    layers = []
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in item)
        ):
            raise ValueError(f"conv layer {item!r} is not (dim, kernel, stride) with positive ints")
        layers.append((int(item[0]), int(item[1]), int(item[2])))
    return tuple(layers)


def parse_conv_layers(spec: str | Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], ...]:
    """Parse fairseq's ``conv_feature_layers`` without ``eval``.

    Accepts the Python-expression string fairseq stores, e.g.
    ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"`` (int literals, lists,
    tuples, ``+`` and ``*`` only), or an already-parsed sequence. Returns a tuple of
    ``(dim, kernel, stride)``. Raises :class:`ValueError` for anything else.
    """
    if isinstance(spec, str):
        value = _ConvSpecParser(spec).parse()
    else:
        value = spec
    return check_conv_layers(value)


def format_conv_layers(layers: Sequence[tuple[int, int, int]]) -> str:
    """The fairseq string for ``layers``, with runs written as ``[(d,k,s)] * n``."""
    parts: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        while j < len(layers) and tuple(layers[j]) == tuple(layers[i]):
            j += 1
        d, k, s = layers[i]
        parts.append(f"[({d},{k},{s})]" + (f" * {j - i}" if j - i > 1 else ""))
        i = j
    return " + ".join(parts)

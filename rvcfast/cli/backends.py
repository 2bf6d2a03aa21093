"""``rvcfast backends``: list the F0 backends and where each comes from."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import EXIT_OK, HelpFormatter, out

# Built-in backends that need an optional extra: name -> (module, extra).
_BACKEND_EXTRAS = {"pm": ("parselmouth", "pm"), "fcpe": ("torchfcpe", "fcpe"), "swift": ("swift_f0", "swift")}


def cmd_backends(args: argparse.Namespace) -> int:
    """List the registered F0 backends and the package each comes from."""
    import importlib.util

    from ..f0.registry import ENTRY_POINT_GROUP, available_f0_extractors, ignored_f0_registrations

    found = available_f0_extractors()
    notes: dict[str, str] = {}
    for name, (module, extra) in _BACKEND_EXTRAS.items():
        if name in found and importlib.util.find_spec(module) is None:
            notes[name] = f'needs `pip install "rvcfast[{extra}]"`'
    if args.json:
        out(json.dumps({n: {"source": s, "note": notes.get(n)} for n, s in found.items()}, indent=2))
        return EXIT_OK
    width = max([len(n) for n in found] + [4])
    out(f"{'name':<{width}}  source")
    for name, source in found.items():
        note = f"  ({notes[name]})" if name in notes else ""
        out(f"{name:<{width}}  {source}{note}")
    for name, source, why in ignored_f0_registrations():
        out(f"ignored: {name!r} from {source} ({why})")
    out()
    out("Combine two or more as hybrid:a+b (e.g. hybrid:rmvpe+crepe).")
    out(f"Plugins register under the entry-point group {ENTRY_POINT_GROUP!r} (see docs/plugins.md).")
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "backends",
        help="list the F0 backends",
        description="List the registered F0 backends (built-in and plugins) and the package each comes from.",
        epilog="example:\n  rvcfast backends",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_backends)

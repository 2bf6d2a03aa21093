"""``rvcfast download``: fetch the base weights into the cache."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, HelpFormatter, UsageError, out


def cmd_download(args: argparse.Namespace) -> int:
    """Download the base weights into $RVCFAST_HOME, the cache, or --dest."""
    from ..progress import DownloadProgress, format_bytes
    from ..weights import KNOWN_WEIGHTS, PROGRESS_CHUNK, download, find_weights, search_dirs, source_url

    names = sorted(KNOWN_WEIGHTS) if args.name == "all" else [args.name]
    folder = Path(args.dest).expanduser() if args.dest else search_dirs()[0]
    if folder.exists() and not folder.is_dir():
        what = "--dest" if args.dest else ("RVCFAST_HOME" if os.environ.get("RVCFAST_HOME") else "the cache folder")
        raise UsageError(f"{what} {folder} exists and is not a folder")
    for name in names:
        info = KNOWN_WEIGHTS[name]
        target = folder / info.filename
        if target.is_file() and target.stat().st_size > 0 and not args.force:  # an empty one: an interrupted download
            out(f"{name}: {target} is already there (use --force to download it again)")
            continue
        # a copy where an RVC WebUI or Applio install keeps it, in the folder the download would go
        # to (RVCFAST_HOME or --dest pointing at such an install), is used as it is
        found = None if args.force else find_weights(name, [folder])
        if found is not None:
            out(f"{name}: {found} is already there (use --force to download {target} anyway)")
            continue
        url = source_url(name)
        if not args.quiet:
            print(f"{name}: {info.description}, {format_bytes(info.size)}, from {url}", file=sys.stderr)
        with DownloadProgress(info.filename, enabled=not args.quiet) as bar:
            path = download(name, target, progress=bar, chunk=PROGRESS_CHUNK, waiting=None if args.quiet else _waiting(name, target))
        out(f"{name}: {path}")
    return EXIT_OK


def _waiting(name: str, target: Path) -> Callable[[], None]:
    """What ``download`` calls when another process holds the file's lock: say why nothing moves."""

    def notice() -> None:
        print(f"{name}: another process is downloading {target}; waiting for it to finish", file=sys.stderr, flush=True)

    return notice


def add_parser(sub: Any) -> None:
    from ..weights import KNOWN_WEIGHTS

    p = sub.add_parser(
        "download",
        help="download base weights (rmvpe.pt, hubert_base.pt)",
        description=(
            "Download the base weights rvcfast needs besides a voice model, resumably and checked\n"
            "against their SHA-256, into $RVCFAST_HOME if set, else the user cache\n"
            "(~/.cache/rvcfast), or --dest. Prints where each file went. A file already in that\n"
            "folder, or where an RVC WebUI or Applio install there keeps it, is not downloaded again.\n\n"
            + "\n".join(f"  {w.name:<7} {w.filename:<15} {w.description}" for w in KNOWN_WEIGHTS.values())
        ),
        epilog="examples:\n  rvcfast download\n  rvcfast download rmvpe\n  rvcfast download hubert --dest ./weights",
        formatter_class=HelpFormatter,
    )
    p.add_argument("name", nargs="?", default="all", choices=[*sorted(KNOWN_WEIGHTS), "all"], help="which file (default: all)")
    p.add_argument("--dest", metavar="DIR", help="folder to download into (default: $RVCFAST_HOME or the cache)")
    p.add_argument("--force", action="store_true", help="download even if the file is already there")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

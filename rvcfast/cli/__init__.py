"""The ``rvcfast`` command line.

One module per subcommand (``convert``, ``f0``, ``info``, ``export`` for ``export-onnx``,
``backends``, ``download``, ``bench``, ``tune``...); each has ``add_parser(sub)`` and a ``cmd_*`` function that takes the parsed
arguments, calls library functions and returns the exit status:

* ``0`` -- everything worked;
* ``1`` -- something failed: a file of a batch (each is named with its reason), a
  missing weights file, a model that cannot be loaded (one clean line, no traceback);
* ``2`` -- a usage error (bad option, parameter out of range, no inputs found).

``main(argv)`` runs the command line in-process and returns that status, so it can be
called from Python and tests as well as through the ``rvcfast`` console script or
``python -m rvcfast``. Only argparse and the standard library are imported here; torch and
the models are imported when a command needs them, so ``rvcfast --help`` is instant.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import NoReturn

from .._version import __version__
from ..errors import ParameterError, RvcfastError
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    HelpFormatter,
    Terminated,
    UsageError,
    discard_stdout,
    err,
    say,
    stdout_identity,
)

__all__ = ["main", "run", "build_parser", "COMMANDS"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("convert", "f0", "info", "export", "backends", "download", "bench", "tune", "serve")


def build_parser() -> argparse.ArgumentParser:
    """The ``rvcfast`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "rvcfast: fast, faithful RVC voice conversion.\n\n"
            "Loads RVC/Applio voice models (.pth), their faiss .index, hubert_base.pt and rmvpe.pt\n"
            "into pure PyTorch, and converts many files at once."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast download                                   # fetch rmvpe.pt and hubert_base.pt\n"
            "  rvcfast convert voice.pth song.wav -o out/ --pitch 12\n"
            "  rvcfast f0 song.wav -o f0/ --method rmvpe\n"
            "  rvcfast info voice.pth --index voice.index\n"
            "  rvcfast export-onnx voice.pth -o voice.onnx\n"
            "\n"
            "`rvcfast COMMAND --help` explains each command. Exit status: 0 success, 1 failure\n"
            "(the failing files are named), 2 usage error."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in COMMANDS:
        importlib.import_module(f".{command}", __name__).add_parser(sub)
    parser._rvcfast_subparsers = sub  # type: ignore[attr-defined]
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    sub = getattr(parser, "_rvcfast_subparsers", None)
    if sub is not None and command in sub.choices:
        return sub.choices[command]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argparse usage error (already printed)
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    stdout_before = stdout_identity()
    try:
        status = int(args.func(args))
        # its reader went away and out() pointed it at the null device: the output is lost
        return EXIT_FAILED if status == EXIT_OK and stdout_identity() != stdout_before else status
    except (UsageError, ParameterError) as exc:
        if args.traceback:
            raise
        sp = _subparser(parser, args.command)
        if getattr(exc, "usage", True):
            sp.print_usage(sys.stderr)
        say(f"{sp.prog}: error: {' '.join(str(exc).split())}")
        return EXIT_USAGE
    except RvcfastError as exc:
        if args.traceback:
            raise
        err(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            say(f"\n{PROG}: terminated (SIGTERM)")
            return 128 + signal.SIGTERM
        say(f"\n{PROG}: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (`rvcfast info --json | head -c1`): no traceback
        discard_stdout()
        return EXIT_FAILED


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A warning as the command line prints it: ``rvcfast: warning: ...`` (no source location,
    which reads like a traceback to a user and names rvcfast's code, not their input)."""
    return f"{PROG}: warning: {message}\n"


def run() -> NoReturn:
    """The ``rvcfast`` console script (and ``python -m rvcfast``): :func:`main` on ``sys.argv``, then exit
    without tearing the interpreter down.

    Finalising a process that has imported torch takes ~0.4 s (module teardown, native
    destructors): a tenth of converting one short file. Every ``atexit`` handler
    registered while the command ran still runs first (they run before this one, last in
    first out); then logging and the standard streams are flushed and the process ends
    with the command's status. Warnings print as ``rvcfast: warning: ...``. Library use
    (:func:`main` in a Python process) is not affected.
    """
    status = [EXIT_FAILED]  # an exception escaping main() prints its traceback and ends with 1

    def leave() -> None:
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # closed or replaced stream
                pass
        os._exit(status[0])

    atexit.register(leave)
    warnings.formatwarning = _format_warning
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)  # `rvcfast serve` hands SIGTERM to uvicorn instead
    try:
        status[0] = main()
    except SystemExit as exc:  # a command that called sys.exit itself
        code = exc.code
        status[0] = code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_FAILED)
        raise
    sys.exit(status[0])


if __name__ == "__main__":  # pragma: no cover
    run()

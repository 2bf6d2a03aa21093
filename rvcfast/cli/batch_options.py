"""``rvcfast convert``'s batch options: output names, errors, worker pools, ``--report``, and the
checks of the output options ``--subtype`` and ``--bitrate`` against ``--format``.

Each option maps to a :class:`rvcfast.batch.BatchOptions` field (``--name-template`` to
``name_template``, ``--on-error`` to ``on_error``, ``--decode-workers``, ``--write-workers``,
``--f0-workers``); ``keep_audio`` has no option: the command line writes every output and
never uses a Result's audio. Every value is checked here, before any model is loaded (a bad
one is a usage error, status 2). A Ray job (``--ray``) names its outputs ``{stem}``, carries
on past a failed file and decodes in its own tasks, so an option asking for anything else
is refused with ``--ray``, as is ``--report`` (the job's manifest is its report).

``--report FILE.jsonl`` is written once, atomically (:func:`rvcfast.atomic.atomic_write`),
when the batch ends: one JSON object per input, in input order. A run that is
killed or interrupted leaves no new report (an older file at that path stays as it was), so
a report never names an output the run did not write.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ._common import UsageError, user_path

__all__ = [
    "add_batch_options", "batch_options", "check_not_on_ray", "BatchReport", "check_report_path", "kbps", "check_output_options",
]

_WORKERS = (("--decode-workers", "decode_workers"), ("--write-workers", "write_workers"), ("--f0-workers", "f0_workers"))


def add_batch_options(p: argparse.ArgumentParser | Any) -> None:
    """The options of ``rvcfast convert`` for :class:`~rvcfast.batch.BatchOptions` fields the
    other groups leave out, and ``--report``; defaults are ``None`` so that a ``--ray`` run can
    tell a given option from a default (the library's defaults are filled in by
    :func:`batch_options`)."""
    p.add_argument(
        "--name-template", metavar="TEMPLATE", default=None,
        help="output names: {stem} (input name), {parent} (its folder's name), {index} (its position), {ext}, "
        "{voice} (the voice model's file name, without extension), {pitch} (the key shift); "
        "e.g. '{parent}/{stem}' or '{index:03d}_{stem}'; subfolders are created inside OUT (default: {stem})",
    )
    p.add_argument(
        "--on-error", choices=["continue", "stop"], default=None,
        help="continue: a failed file is reported and the others carry on; stop: the files before a failed "
        "one are written, nothing after it (default: continue)",
    )
    p.add_argument("--decode-workers", type=int, metavar="N", default=None, help="threads decoding upcoming files (default: 2)")
    p.add_argument("--write-workers", type=int, metavar="N", default=None, help="threads encoding and writing outputs (default: 1)")
    p.add_argument(
        "--f0-workers", type=int, metavar="N", default=None,
        help="processes for CPU-bound F0 backends: harvest, dio, pm, swift (default: 2)",
    )
    p.add_argument(
        "--report", metavar="FILE.jsonl", default=None, type=user_path,
        help="write one JSON line per input (source, output_path, ok, skipped, error, warnings, "
        "input_seconds, duration, timings) when the batch ends; a killed run writes none",
    )


def kbps(text: str) -> int:
    """``--bitrate``'s type: a whole number of kbit/s (``128``; not ``128.5`` or ``128k``)."""
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of kbit/s is needed (e.g. 128), got {text!r}") from None


def check_output_options(args: argparse.Namespace) -> int | None:
    """``--subtype`` and ``--bitrate`` checked against ``--format`` before anything is loaded
    (a usage error naming the option); returns the bitrate. The output rate is known only
    with ``--output-sample-rate`` (else the voice's, once loaded): without it the bitrate is
    checked for every rate here, and for the voice's rate before any file is converted. An
    m4a without PyAV installed raises :class:`~rvcfast.errors.BackendUnavailableError`."""
    from ..writing import check_bitrate, valid_subtypes, written_rate

    fmt = str(args.format).lower()
    subtype = args.subtype.strip().upper() if args.subtype and args.subtype.strip() else None
    if fmt == "m4a":
        from ..av_encode import import_av

        import_av()
    if subtype is not None and subtype not in valid_subtypes(fmt):
        raise UsageError(f"--subtype {args.subtype!r} is not valid for --format {fmt} (valid: {', '.join(sorted(valid_subtypes(fmt)))})")
    bitrate = getattr(args, "bitrate", None)
    rate = getattr(args, "output_sample_rate", None)
    try:
        return check_bitrate(fmt, subtype, bitrate, None if rate is None else written_rate(fmt, subtype, rate))
    except ParameterError as exc:
        raise UsageError(f"--bitrate: {exc}") from None


def batch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The batch keyword arguments of ``Converter.iter_batch`` given on the command line, with the
    library's defaults for those not given; a usage error naming the option for a bad value
    (``--subtype`` and ``--bitrate`` too: :func:`check_output_options`)."""
    from ..batch_inputs import BatchOptions, check_name_template

    defaults = BatchOptions()
    values: dict[str, Any] = {
        "name_template": defaults.name_template if args.name_template is None else args.name_template,
        "on_error": args.on_error or defaults.on_error,
        "bitrate": check_output_options(args),
    }
    for flag, name in _WORKERS:
        given = getattr(args, name)
        if given is not None and given < 1:
            raise UsageError(f"{flag} must be at least 1, got {given}")
        values[name] = getattr(defaults, name) if given is None else given
    try:
        check_name_template(values["name_template"])
    except ParameterError as exc:
        raise UsageError(f"--name-template: {exc}") from None
    return values


def check_not_on_ray(args: argparse.Namespace) -> None:
    """A usage error for the options a Ray job cannot honour: another output name than
    ``{stem}``, stopping at a failed file, the local worker pools, and ``--report`` (the job
    writes its manifest instead)."""
    refused = [flag for flag, given in (
        ("--name-template", args.name_template not in (None, "{voice}/{stem}" if getattr(args, "voice", None) else "{stem}")),
        ("--on-error stop", args.on_error == "stop"),
        *((flag, getattr(args, name) is not None) for flag, name in _WORKERS),
        ("--report", args.report is not None),
    ) if given]
    if refused:
        raise UsageError(
            f"{' and '.join(refused)} {'is' if len(refused) == 1 else 'are'} for local runs: a --ray job names outputs "
            "{stem} ({voice}/{stem} with --voice), carries on past a failed file, decodes in its own tasks and writes its rows to --manifest"
        )
    check_output_options(args)  # --subtype and --bitrate: usage errors before connecting to a cluster


def check_report_path(report: str | None) -> Path | None:
    """The ``--report`` file, checked before anything is loaded: a ``.jsonl`` name, not a
    folder, in a folder that exists or can be created (a usage error otherwise)."""
    if report is None:
        return None
    path = Path(report)
    if path.suffix.lower() != ".jsonl":
        raise UsageError(f"--report names a .jsonl file (one JSON object per line), got {report!r}")
    if path.is_dir():
        raise UsageError(f"--report {report} is a folder, not a file")
    for folder in (path.parent, *path.parent.parents):  # the nearest part of the path that exists
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"--report {report} cannot be written: {folder} is a file, not a folder")
            break
    return path


def _line(source: str | None, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source": source, "output_path": None, "ok": False, "skipped": False, "error": None,
        "warnings": [], "input_seconds": 0.0, "duration": 0.0, "timings": {},
    }
    row.update(fields)
    return row


class BatchReport:
    """The lines of ``--report``: one per input (per input and voice with ``--voice``), added as
    results arrive, written at the end in input order (then voice order)."""

    def __init__(self, path: Path | None, planned: list[str], voices: list[str] | None = None) -> None:
        self.path = path
        self.sources = planned
        self.voices: list[str | None] = list(voices) if voices else [None]
        # every (input, voice) in the order the run converts them: those without a result are named at the end
        self.planned = [(source, voice) for voice in self.voices for source in planned]
        self.rows: list[dict[str, Any]] = []
        self.reported: set[tuple[str, str | None]] = set()

    def check_writable(self) -> None:
        """Create the report's folder and a temporary file in it (removed at once): a report that
        cannot be written is a usage error now, not after the whole batch."""
        if self.path is None:
            return
        from ..atomic import new_temporary

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new_temporary(self.path).unlink()  # the report is written as a temporary file renamed over it
        except OSError as exc:
            raise UsageError(f"--report {self.path} cannot be written: {exc.strerror or exc}") from None

    def add(self, res: Any) -> None:
        """One finished input (a :class:`~rvcfast.result.Result`)."""
        voice = getattr(res, "voice", None)
        self.reported.add((res.source or "", voice))
        self.rows.append(_line(
            res.source, output_path=res.output_path, ok=res.ok, skipped=res.skipped, error=res.error,
            warnings=list(res.warnings), input_seconds=res.input_seconds, duration=res.duration, timings=dict(res.timings),
            **({} if voice is None else {"voice": voice}),
        ))

    def stopped(self, error: str, why: str = "--on-error stop") -> str | None:
        """``--on-error stop`` (or ``why``) ended the batch with ``error``, which names the failed
        input: that input gets a line with it, every input not reached one saying so. Returns the failed
        input's name; ``None`` (and no lines) when ``error`` names no input without a result:
        it did not come from a file, and the caller lets it end the command."""
        left = [pair for pair in self.planned if pair not in self.reported]
        named = [pair for pair in left if pair[0] in error]
        if not named:
            return None
        # the longest name that fits (`a.wav` is in `a.wav.flac` too), for the voice that was running
        longest = max(len(pair[0]) for pair in named)
        failed = next(pair for pair in named if len(pair[0]) == longest)
        for source, voice in left:
            reason = error if (source, voice) == failed else f"not converted: the batch stopped at {failed[0]} ({why})"
            self.rows.append(_line(source, error=reason, **({} if voice is None else {"voice": voice})))
        self.reported.update(left)
        return failed[0]

    def interrupted(self, how: str) -> int:
        """The run was stopped (``how``: "Ctrl-C", "SIGTERM"): every input without a result gets
        a line saying so. Returns how many."""
        left = [pair for pair in self.planned if pair not in self.reported]
        for source, voice in left:
            reason = (
                f"not done: the batch was interrupted ({how}) first (an output already at its path is complete: "
                "--skip-existing keeps it)"
            )
            self.rows.append(_line(source, error=reason, **({} if voice is None else {"voice": voice})))
        self.reported.update(left)
        return len(left)

    def write(self) -> None:
        """Write the report (atomically: the file appears whole, or an older one stays)."""
        if self.path is None:
            return
        from ..atomic import atomic_write

        order = {source: k for k, source in enumerate(self.sources)}
        voices = {voice: k for k, voice in enumerate(self.voices)}
        rows = sorted(  # input order, then voice order
            self.rows, key=lambda row: (order.get(row["source"], len(order)), voices.get(row.get("voice"), 0))
        )
        text = "".join(json.dumps(row) + "\n" for row in rows)  # ASCII: any file name round-trips
        with atomic_write(self.path) as tmp:
            tmp.write_text(text, encoding="ascii")

"""``rvcfast convert ... --ray [ADDRESS]``: the same conversion as a job on a Ray cluster.

:mod:`rvcfast.cli.convert` parses the options (its "scale out" group) and hands the run
to :func:`cmd_convert_ray`, which calls :func:`rvcfast.integrations.ray.convert_files`:
decoding in CPU tasks, the models in a pool of actors, one manifest row per input (per
input and voice with ``--voice``: every voice in the one job, each input decoded once).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from ._common import (
    UsageError,
    check_f0_name,
    check_inputs_exist,
    check_model_files,
    check_output_dir,
    check_params,
    out,
    params_from_args,
    parse_options,
    report_failures,
    report_warnings,
)

__all__ = ["add_scale_options", "cmd_convert_ray", "planned_inputs", "object_storage_args"]


def object_storage_args(args: argparse.Namespace) -> list[str]:
    """The inputs, ``-o`` and ``--manifest`` given as object-storage URIs (``s3://``, ``gs://``...; not ``file://``)."""
    given = [*args.inputs, args.output, *([args.manifest] if args.manifest else [])]
    return [g for g in given if re.match(r"^(?!file://)[A-Za-z][A-Za-z0-9+.-]+://", str(g), re.IGNORECASE)]


def planned_inputs(args: argparse.Namespace, name_template: str = "{stem}") -> list[Path]:
    """The files ``rvcfast convert`` will convert, for its counts and progress (:func:`planned_jobs`'s)."""
    return [j.path for j in planned_jobs(args, name_template)]


def planned_jobs(args: argparse.Namespace, name_template: str = "{stem}") -> list[Any]:
    """The files ``rvcfast convert`` will convert, each with its output (:class:`rvcfast.batch_inputs.Job`).

    Expanded as the batch itself expands ``args.inputs`` (:func:`rvcfast.batch_inputs.expand_inputs`
    with the output folder, format and ``--skip-existing``), so the folders themselves go to
    the batch: only there do the rules for folders apply (an in-place batch resumed with
    ``--skip-existing`` leaves out its earlier ``*_rvc`` outputs; an output folder inside a
    ``--recursive`` input folder is not read as input). The outputs are named with
    ``name_template`` as the batch names them, so a template that puts an output outside the
    output folder (through a symlink) is a usage error here, before anything is loaded.
    """
    from ..batch_inputs import BatchOptions, expand_inputs
    from ..errors import ParameterError

    options = BatchOptions(
        out_dir=args.output, format=args.format, skip_existing=args.skip_existing, recursive=args.recursive,
        name_template=name_template,
    )
    try:
        jobs = [j for j in expand_inputs(list(args.inputs), options) if j.path is not None]
    except ParameterError as exc:
        raise UsageError(f"--name-template: {exc}" if "name_template" in str(exc) else str(exc)) from None
    if not jobs:
        raise UsageError(f"no audio files found in {', '.join(args.inputs)}" + ("" if args.recursive else " (use --recursive for sub-folders)"))
    return jobs


def add_scale_options(p: argparse.ArgumentParser | Any) -> None:
    """The "scale out" option group of ``rvcfast convert``."""
    p.add_argument(
        "--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
        help="run as a Ray job: no ADDRESS joins the running cluster (RAY_ADDRESS or `ray start`; "
        "else starts a local one), 'local' starts a local one, or ray://HOST:10001 / HOST:6379",
    )
    p.add_argument("--workers", type=int, metavar="N", help="with --ray: at most N model workers (default: one single-threaded worker per core, as many as memory holds, or one per GPU share); with --server: requests at a time (default 2)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="F", help="with --ray: GPUs per model worker (e.g. 1, or 0.5 to share a GPU)")
    p.add_argument("--manifest", metavar="FILE", help="with --ray: the manifest of the rows, .jsonl or .parquet (default: OUT/rvcfast-manifest.jsonl)")


def _summary(rows: list[dict[str, Any]], wall: float) -> Any:
    from ..batch import BatchSummary
    from ..integrations.ray import STAGES

    summary = BatchSummary(files=len(rows), wall_seconds=wall)
    for row in rows:
        summary.failed += row["status"] == "error"
        summary.skipped += row["status"] == "skipped"
        summary.audio_seconds += float(row["audio_seconds"] or 0.0)
        for stage in STAGES:
            if row.get(f"{stage}_s"):
                summary.timings[stage] = summary.timings.get(stage, 0.0) + float(row[f"{stage}_s"])
    return summary


def _check(args: argparse.Namespace) -> None:
    if args.batch_seconds is not None and not (math.isfinite(args.batch_seconds) and args.batch_seconds > 0):
        raise UsageError(f"--batch-seconds must be a positive number of seconds, got {args.batch_seconds}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if not args.gpus_per_worker >= 0:
        raise UsageError(f"--gpus-per-worker must be >= 0, got {args.gpus_per_worker}")
    if object_storage_args(args):  # listed and checked by convert_files, before any model is read
        return
    check_output_dir(args.output, "-o")
    planned_inputs(args)  # none found: a usage error before connecting to anything


def _models(
    args: argparse.Namespace, voices: list[tuple[str, str | None]], pitches: dict[str, float], params: dict[str, Any]
) -> dict[str, Any]:
    """``convert_files``' model keywords: MODEL and its index, or every voice (``voices``: MODEL's
    and each ``--voice``'s, named by the model file's stem) with its ``--voice-pitch``."""
    if len(voices) == 1:
        return {"model": args.model, "index": args.index, **params, **({"pitch": next(iter(pitches.values()))} if pitches else {})}
    named = {Path(model).stem: (model, index) for model, index in voices}
    return {"voices": named, "voice_params": {name: {"pitch": pitch} for name, pitch in pitches.items()}, **params}


def _failures(rows: list[dict[str, Any]]) -> list[str]:
    """One line per error row, naming its input (and its voice)."""
    lines = []
    for r in rows:
        if r["status"] == "error":
            line = r["error"] if r["path"] in (r["error"] or "") else f"{r['path']}: {r['error']}"
            lines.append(f"{line} (voice {r['voice']})" if r.get("voice") else line)
    return lines


def cmd_convert_ray(
    args: argparse.Namespace, voices: list[tuple[str, str | None]] | None = None, pitches: dict[str, float] | None = None
) -> int:
    """Convert files or folders to the voice of MODEL (and of each ``--voice``: ``voices``, with
    their ``--voice-pitch`` keys in ``pitches``) on a Ray cluster and write them to OUT."""
    _check(args)
    voices = voices or [(args.model, args.index)]
    params = params_from_args(args)
    check_params(params)  # a bad value is a usage error, found before connecting to anything
    check_f0_name("--f0", args.f0, parse_options(args.f0_option), args.f0_weights is not None)
    from ..integrations.ray import MANIFEST_NAME, check_manifest, connected, convert_files

    if args.manifest is not None:
        check_manifest(args.manifest)  # a bad name is a usage error before any work, not after the job
    for model, index in voices:
        check_model_files(model, index)  # a missing file (status 1): before connecting to anything
    remote = bool(object_storage_args(args))
    if not remote:
        check_inputs_exist(args.inputs)
    target: Any = args.output if remote else Path(args.output)
    start = time.perf_counter()
    with connected(args.ray, fallback_local=True, note=lambda text: print(f"rvcfast: {text}", file=sys.stderr)):
        rows = convert_files(
            list(args.inputs), target, recursive=args.recursive, manifest=args.manifest, progress=not args.quiet,
            encoder=args.encoder, f0=args.f0, f0_weights=args.f0_weights,
            f0_options=parse_options(args.f0_option), device=args.device, dtype=args.dtype, allow_download=args.download,
            batch_seconds=args.batch_seconds, format=args.format, subtype=args.subtype, bitrate=args.bitrate, skip_existing=args.skip_existing,
            num_workers=(1, args.workers) if args.workers else None, gpus_per_worker=args.gpus_per_worker,
            **_models(args, voices, pitches or {}, params),
        )
    if not args.quiet:
        out(_summary(rows, time.perf_counter() - start).table())
        nodes = len({r["node"] for r in rows if r["status"] == "ok"})
        default = f"{target.rstrip('/')}/{MANIFEST_NAME}" if remote else target / MANIFEST_NAME
        out(f"converted on {nodes} node(s); manifest: {args.manifest or default}")
    warned = {r["path"]: r["warnings"] for r in rows if r["warnings"]}  # an input's warnings once, not once per voice
    if not args.quiet:  # -q: failures alone, as a local run
        report_warnings([w for text in warned.values() for w in text.splitlines()])
    return report_failures(_failures(rows), len(rows))

"""``rvcfast bench``: measure conversion speed on random-weight models in the real formats."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..constants import SR_16K
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    HelpFormatter,
    UsageError,
    add_device_options,
    check_f0_name,
    err,
    out,
)


def check_models_folder(args: argparse.Namespace) -> None:
    """``--models`` (where random models are built, without ``--model``) must be a folder or a new
    one: a :class:`UsageError` naming it otherwise, before anything is built."""
    if args.model is not None or not args.models:
        return
    folder = Path(args.models).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--models {folder}: not a folder")
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--models {folder}: {parent} is a file, not a folder")


def _check_numbers(args: argparse.Namespace) -> None:
    """``--files``, ``--seconds`` and ``--batch-seconds``: a :class:`UsageError` naming the option and value."""
    if args.files < 1:
        raise UsageError(f"--files must be at least 1, got {args.files}")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a number of seconds above 0, got {args.seconds:g}")
    if args.batch_seconds is not None and not (math.isfinite(args.batch_seconds) and args.batch_seconds > 0):
        raise UsageError(f"--batch-seconds must be a number of seconds above 0, got {args.batch_seconds:g}")


def cmd_bench(args: argparse.Namespace) -> int:
    """Build (or reuse) models, synthesise test clips, run convert_batch and print the stage table."""
    import soundfile as sf

    from ..api import Converter
    from ..batch import BatchOptions, BatchSummary, compute_workers, usable_workers
    from ..testing import build_bench_models, synth_test_audio
    from ..tuning import apply_threads
    from ..weights import cache_dir

    _check_numbers(args)
    check_f0_name("--f0", args.f0)  # before models are built (full-size ones are ~500 MB)
    if args.model is not None and (args.small or args.models):  # accepted and ignored before
        given = " and ".join(flag for flag, on in (("--small", args.small), ("--models", args.models)) if on)
        raise UsageError(f"{given}: random models are built only without --model")
    check_models_folder(args)
    paths: dict[str, Any] = {k: getattr(args, k) for k in ("model", "index", "encoder", "f0_weights")}
    if args.model is None:  # random models; any real file given replaces its random counterpart
        folder = Path(args.models).expanduser() if args.models else cache_dir() / "bench-models"
        print(f"models: random {'small' if args.small else 'full-size'} models in {folder}", file=sys.stderr)
        built = build_bench_models(folder, small=args.small, log=lambda m: print(m, file=sys.stderr))
        paths = {k: v if v is not None else built[k] for k, v in paths.items()}
    t0 = time.perf_counter()
    weights = paths["f0_weights"] if "rmvpe" in args.f0.lower() else None
    conv = Converter.from_pretrained(
        paths["model"], index=paths["index"], encoder=paths["encoder"], f0=args.f0,
        f0_weights=weights, device=args.device, dtype=args.dtype,
    )
    load_seconds = time.perf_counter() - t0
    # what `rvcfast convert` runs: the tuned thread count (unless OMP_NUM_THREADS or MKL_NUM_THREADS
    # says otherwise), as the tuned batch size and compute workers that convert_batch takes itself
    threads = apply_threads(conv.engine.profile)
    workers = usable_workers(compute_workers(conv.engine, BatchOptions()), args.files, conv.device.type)
    with tempfile.TemporaryDirectory(prefix="rvcfast-bench-") as tmp:
        clips = []
        for i in range(args.files):
            p = Path(tmp) / "in" / f"clip{i:03d}.wav"
            p.parent.mkdir(exist_ok=True)
            sf.write(p, synth_test_audio(args.seconds, 44100, seed=i), 44100, subtype="PCM_16")
            clips.append(str(p))
        if not args.no_warmup:
            conv.convert(synth_test_audio(1.0, SR_16K, seed=999), SR_16K)
        summary = BatchSummary()
        start = time.perf_counter()
        results = conv.convert_batch(clips, Path(tmp) / "out", batch_seconds=args.batch_seconds)
        summary.wall_seconds = time.perf_counter() - start
    for r in results:
        summary.add(r)
    bad = [r for r in results if not r.ok]
    dtype = str(conv.dtype).replace("torch.", "") + (" (auto)" if args.dtype == "auto" else "")
    out(
        f"device {conv.device}, {dtype}, {threads} thread{'s' if threads != 1 else ''}, batch {args.batch_seconds or conv.engine.batch_seconds:g} s, "
        f"{workers} compute worker{'s' if workers != 1 else ''}, F0 {args.f0}; {args.files} clips x {args.seconds:g} s; "
        f"models loaded in {load_seconds:.1f} s"
    )
    out(summary.table())
    speed = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds else float("nan")
    out(f"speed: {speed:.2f}x real-time (real-time factor {1 / speed if speed else math.nan:.4f})")
    for r in bad:
        reason = " ".join(str(r.error).split())
        err(reason if r.source and r.source in reason else f"{r.source}: {reason}")
    return EXIT_FAILED if bad else EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure conversion speed",
        description=(
            "Measure conversion speed: synthesise N test clips of S seconds (harmonic tones with\n"
            "vibrato), convert them with convert_batch and print the stage table and the real-time\n"
            "factor (wall seconds per second of audio; below 1 is faster than real time).\n\n"
            "Without --model, random-weight models in the real formats are built once and cached in\n"
            "--models: a full-size v2 40 kHz voice, hubert_base.pt (fairseq), rmvpe.pt and a\n"
            "20000 x 768 index (about 500 MB); --index/--encoder/--f0-weights replace their random\n"
            "counterparts. Random weights compute exactly like trained ones, so the timings are\n"
            "those of real models.\n\n"
            "It runs what `rvcfast convert` runs: the `rvcfast tune` profile's threads, batch size and\n"
            "compute workers where there is one (OMP_NUM_THREADS or MKL_NUM_THREADS, --batch-seconds\n"
            "still win); the first line says the precision, threads, batch size and workers used."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast bench\n"
            "  rvcfast bench --small --files 2 --seconds 2          # quick check\n"
            "  rvcfast bench --files 16 --seconds 30 --device cuda --dtype float16\n"
            "  rvcfast bench --model voice.pth --index voice.index --encoder hubert_base.pt --f0-weights rmvpe.pt"
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--files", type=int, metavar="N", default=8, help="number of test clips")
    p.add_argument("--seconds", type=float, metavar="S", default=10.0, help="length of each clip in seconds")
    p.add_argument("--models", metavar="DIR", help="where random models are built and cached (default: <cache>/bench-models)")
    p.add_argument("--small", action="store_true", help="tiny random models (a quick check, not a benchmark)")
    p.add_argument("--model", metavar="FILE", help="a real voice model .pth instead of the random one")
    p.add_argument("--index", metavar="FILE", help="a real .index")
    p.add_argument("--encoder", metavar="PATH", help="a real hubert_base.pt / ContentVec folder")
    p.add_argument("--f0-weights", metavar="FILE", help="a real rmvpe.pt")
    p.add_argument("--f0", metavar="NAME", default="rmvpe", help="F0 backend")
    add_device_options(p)
    p.add_argument("--batch-seconds", type=float, metavar="S", default=None, help="seconds of audio batched together (default: the `rvcfast tune` profile's, else 8 on CPU, 120 on GPU)")
    p.add_argument("--no-warmup", action="store_true", help="do not run a 1 s warm-up conversion first")
    p.set_defaults(func=cmd_bench)

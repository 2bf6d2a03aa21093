"""``rvcfast f0``: write the F0 track of each input."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..constants import F0_HOP, SR_16K
from ..errors import AudioError, RvcfastError
from ._common import (
    HelpFormatter,
    UsageError,
    check_f0_name,
    check_inputs_exist,
    check_output_dir,
    expand_inputs,
    parse_options,
    report_failures,
    say,
    user_path,
)


def _fit_frames(f0: Any, n_frames: int) -> Any:
    import numpy as np

    f0 = np.asarray(f0, dtype=np.float64).reshape(-1)
    if f0.shape[0] >= n_frames:
        return f0[:n_frames]
    return np.pad(f0, (0, n_frames - f0.shape[0]))


def cmd_f0(args: argparse.Namespace) -> int:
    """Write the F0 track of each input (CSV ``time,f0`` or ``.npy``) into OUT."""
    import numpy as np

    from ..audio import decode
    from ..f0.base import checked_track
    from ..f0.registry import build_f0_extractor
    from ..runtime import resolve_device

    check_output_dir(args.output, "-o")
    out = Path(args.output)
    check_f0_name("--method", args.method, parse_options(args.f0_option), args.f0_weights is not None)
    check_inputs_exist(args.inputs)  # a mistyped name: at once, not after the F0 model is loaded
    inputs = expand_inputs(args.inputs, args.recursive)
    if not inputs:
        raise UsageError(f"no audio files found in {', '.join(args.inputs)}")
    extractor = build_f0_extractor(
        args.method, weights=args.f0_weights, allow_download=args.download,
        options=parse_options(args.f0_option), device=resolve_device(args.device),
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # permission denied, a read-only file system...: one line, not a traceback
        raise RvcfastError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    ext = "csv" if args.format == "csv" else "npy"
    used: set[str] = set()
    failures: list[str] = []
    for n, path in enumerate(inputs, 1):
        stem = path.stem or "audio"
        name, k = f"{stem}.{ext}", 1
        # two inputs with the same stem from different folders; names differing only in case are
        # one file on macOS and Windows
        while name.casefold() in used:
            name, k = f"{stem}_{k}.{ext}", k + 1
        used.add(name.casefold())
        target = out / name
        t0 = time.perf_counter()
        try:
            decoded = decode(path)  # its warnings too: a truncated file's track is shorter than the header says
            audio = decoded.audio
            if audio.shape[0] < F0_HOP:  # one frame at t=0 from a few samples: no pitch can be read from it
                raise AudioError(
                    path, f"audio is too short for an F0 track: {1000 * audio.shape[0] / SR_16K:.1f} ms; at least 10 ms "
                    "(one frame) is needed",
                )
            n_frames = audio.shape[0] // F0_HOP + 1
            track = checked_track(extractor.extract(audio), n_frames, f"{path}: F0 backend {extractor.name!r}")
            f0 = _fit_frames(track, n_frames)
            with atomic_write(target) as tmp:
                if ext == "csv":
                    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                        fh.write("time,f0\n")
                        for i, v in enumerate(f0):
                            fh.write(f"{i * 0.01:.2f},{v:.3f}\n")
                else:
                    with open(tmp, "wb") as fh:
                        np.save(fh, f0.astype(np.float32))
        except Exception as exc:  # noqa: BLE001 - reported per file, the others carry on
            reason = str(exc) if isinstance(exc, RvcfastError) else f"{type(exc).__name__}: {exc}"
            reason = " ".join(reason.split())
            failures.append(reason if str(path) in reason else f"{path}: {reason}")
            if not args.quiet:
                short = reason[len(str(path)) + 2 :] if reason.startswith(f"{path}: ") else reason
                say(f"[{n}/{len(inputs)}] {path}: FAILED: {short}")
            continue
        if not args.quiet:
            voiced = float((f0 > 0).mean()) if f0.size else 0.0
            say(
                f"[{n}/{len(inputs)}] {path} -> {target} ({f0.shape[0]} frames, {100 * voiced:.0f}% voiced, "
                f"{time.perf_counter() - t0:.2f} s)"
            )
            for line in decoded.warnings:  # as `rvcfast convert` prints them
                say(f"  warning: {line}")
    return report_failures(failures, len(inputs), named_above=not args.quiet)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "f0",
        help="extract pitch (F0) tracks",
        description=(
            "Extract the F0 track of each input with an F0 backend and write one file per input into\n"
            "OUT: CSV with a `time,f0` header (seconds, Hz; 0 = unvoiced), one row per 10 ms frame\n"
            "(len/160 + 1 frames of the 16 kHz signal), or a float32 .npy array of the F0 values.\n"
            "Inputs are decoded, mixed to mono and resampled to 16 kHz first."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast f0 song.wav -o f0/\n"
            "  rvcfast f0 vocals/ --method crepe -o f0/ --format npy\n"
            "  rvcfast f0 a.wav --method rmvpe --f0-weights rmvpe.pt -o f0/\n"
            "  rvcfast f0 a.wav --method harvest --f0-option f0_min=70 -o f0/"
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("inputs", metavar="INPUT", nargs="+", type=user_path, help="audio files and/or folders")
    p.add_argument("-o", "--output", metavar="OUT", required=True, type=user_path, help="output folder (created if missing)")
    p.add_argument("-m", "--method", default="rmvpe", metavar="NAME", help="F0 backend (see `rvcfast backends`), or hybrid:a+b")
    p.add_argument("--format", default="csv", choices=["csv", "npy"], help="output format")
    p.add_argument("--f0-weights", metavar="FILE", type=user_path, help="weights file for the backend (rmvpe.pt)")
    p.add_argument("--f0-option", metavar="KEY=VALUE", action="append", help="extra option for the backend, repeatable")
    p.add_argument("--download", action="store_true", help="download rmvpe.pt if it is missing")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="'auto', 'cpu', 'cuda', 'cuda:1'...")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    p.set_defaults(func=cmd_f0)

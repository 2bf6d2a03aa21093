"""``rvcfast tune``: measure precision, threads and batch size on this machine and store a profile."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import RvcfastError
from ._common import EXIT_OK, HelpFormatter, UsageError, out
from .bench import check_models_folder


def _models(args: argparse.Namespace) -> dict[str, Any]:
    paths: dict[str, Any] = {k: getattr(args, k) for k in ("model", "index", "encoder", "f0_weights")}
    if args.model is None:
        from ..testing import build_bench_models
        from ..weights import cache_dir

        folder = Path(args.models).expanduser() if args.models else cache_dir() / "bench-models"
        print(f"models: random full-size models in {folder} (real formats, real cost)", file=sys.stderr)
        built = build_bench_models(folder, log=lambda m: print(m, file=sys.stderr))
        paths = {k: v if v is not None else built[k] for k, v in paths.items()}
    return paths


def _number_list(option: str, text: str | None, kind: type) -> list[Any] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (``kind`` int or float), range-checked: whole numbers from 1 to
    :data:`~rvcfast.tuning.MAX_THREADS` (what a profile may hold), or finite numbers > 0;
    :class:`UsageError` naming ``option`` otherwise. ``None`` stays ``None``."""
    from ..tuning import MAX_THREADS

    if text is None:
        return None
    what = f"whole numbers from 1 to {MAX_THREADS}" if kind is int else "numbers > 0"
    values: list[Any] = []
    for item in text.split(","):
        try:
            value = kind(item.strip())
        except ValueError:
            raise UsageError(f"{option} expects a comma-separated list of {what}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0) or (kind is int and not 1 <= value <= MAX_THREADS):
            raise UsageError(f"{option} expects a comma-separated list of {what}, got {text!r}")
        values.append(value)
    return values


def _check_counts(args: argparse.Namespace) -> None:
    """``--files``, ``--seconds`` and ``--min-snr``: a :class:`UsageError` naming the option and its value."""
    if args.files < 1:
        raise UsageError(f"--files must be at least 1, got {args.files}")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a number of seconds above 0, got {args.seconds:g}")
    if math.isnan(args.min_snr):
        raise UsageError("--min-snr must be a number of dB, got nan")


def _chosen(profile: Any) -> str:
    return (
        f"{profile.dtype}, {profile.threads} thread(s), batch {profile.batch_seconds:g} s, "
        f"{profile.compute_workers} compute worker(s)"
    )


def _profile_target(args: argparse.Namespace) -> Path:
    """Where the profile goes, checked before minutes of calibration (a usage error otherwise)."""
    from ..errors import ParameterError
    from ..local_paths import expanded_path
    from ..tuning import check_profile_target, profile_location, profiles_off

    try:
        target, chosen_by = (expanded_path("--output", args.output), "--output") if args.output else profile_location()
    except ParameterError as exc:  # "~nosuchuser/..."
        raise UsageError(str(exc)) from None
    if target is None:
        raise UsageError(f"{profiles_off()}; pass --output FILE")
    # rvcfast's own profile file (in $RVCFAST_HOME or the cache) may be replaced when broken; a file
    # the user named, by --output or RVCFAST_PROFILE, never: it may be anything
    named = chosen_by if chosen_by in ("--output", "RVCFAST_PROFILE") else None
    try:
        check_profile_target(target, replace_invalid=named is None)
    except ValueError as exc:
        raise UsageError(f"{named + ': ' if named else ''}{exc}") from None
    return target


def cmd_tune(args: argparse.Namespace) -> int:
    """Calibrate on this machine; write the profile later runs use."""
    _check_counts(args)
    # every option is checked before models are built or loaded (full-size ones are ~500 MB)
    if args.model is not None and str(args.model).lower().endswith(".onnx"):
        # an ONNX voice runs in float32 only: its profile would say float32 for every .pth voice too
        raise UsageError(
            f"--model {args.model}: tune measures the PyTorch path that --dtype auto and the profile apply to; "
            "give the voice's .pth (an ONNX voice always runs in float32)"
        )
    threads = _number_list("--threads", args.threads, int)
    batch = _number_list("--batch-seconds", args.batch_seconds, float)
    workers = _number_list("--compute-workers", args.compute_workers, int)
    target = _profile_target(args)
    check_models_folder(args)

    from ..api import Converter
    from ..runtime import resolve_device
    from ..testing import synth_test_audio
    from ..tuning import calibrate, save_profile

    device = resolve_device(args.device)
    if batch is None:  # calibrate's defaults (8 and 30 s on a CPU, the device's own on a GPU); --quick: one
        batch = [8.0] if args.quick and device.type == "cpu" else None
    paths = _models(args)
    clips = [synth_test_audio(args.seconds, 16000, seed=i) for i in range(args.files)]

    def make(dtype: str) -> Converter:
        return Converter.from_pretrained(
            paths["model"], index=paths["index"], encoder=paths["encoder"], f0="rmvpe",
            f0_weights=paths["f0_weights"], device=device, dtype=dtype,
        )

    profile = calibrate(
        make, clips, device=device, threads=threads, batch_seconds=batch, compute_workers=workers, min_snr_db=args.min_snr,
        log=None if args.quiet else (lambda m: print(m, file=sys.stderr)),
    )
    try:
        _profile_target(args)  # still writable after the calibration (nothing else put a file there)
        save_profile(profile, target)
    except (OSError, UsageError) as exc:  # the disk filled up, the folder became read-only, a file appeared...
        why = exc.strerror or exc if isinstance(exc, OSError) else exc
        raise RvcfastError(
            f"cannot write the profile {target}: {why}; the measured settings were: "
            f"{_chosen(profile)} (nothing was saved)"
        ) from None
    if args.json:
        out(profile.to_json())
    else:
        out(f"chosen: {_chosen(profile)}")
        out(f"profile: {target}")
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="measure the fastest settings on this machine",
        description=(
            "Convert a few synthetic clips with each candidate setting -- precision (float32; bfloat16\n"
            "and float16 where the CPU or GPU computes them natively), intra-op threads, batch size,\n"
            "compute workers -- and store the fastest in a profile ($RVCFAST_HOME/profile.json or the\n"
            "user cache; one entry per machine and device). Later runs on this machine use it: --dtype\n"
            "auto means the profile's precision, and the profile's threads, batch size and compute\n"
            "workers are the defaults. A lower precision is chosen only when its output's SNR against\n"
            "float32's is at least --min-snr dB; a setting whose conversions fail is never chosen.\n"
            "Without --model, random full-size models are used (built once)."
        ),
        epilog="examples:\n  rvcfast tune\n  rvcfast tune --quick\n  rvcfast tune --model voice.pth --encoder hubert_base.pt --f0-weights rmvpe.pt",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", metavar="FILE", help="a voice model .pth (default: random full-size models)")
    p.add_argument("--index", metavar="FILE", help="its .index")
    p.add_argument("--encoder", metavar="PATH", help="hubert_base.pt or a ContentVec folder")
    p.add_argument("--f0-weights", metavar="FILE", help="rmvpe.pt")
    p.add_argument("--models", metavar="DIR", help="where random models are built and cached")
    p.add_argument("--files", type=int, metavar="N", default=3, help="calibration clips")
    p.add_argument("--seconds", type=float, metavar="S", default=5.0, help="length of each clip")
    p.add_argument("--threads", metavar="LIST", help="thread counts to try, e.g. 1,2,4 (default: 1 and all usable cores: the CPU affinity, capped by a cgroup CPU quota)")
    p.add_argument("--batch-seconds", metavar="LIST", help="batch sizes to try, e.g. 8,30 (default on a CPU: 8,30, --quick: 8; on a GPU: 120)")
    p.add_argument(
        "--compute-workers", metavar="LIST",
        help="compute workers to try with all the threads, e.g. 1,2 (default: 1,2 on a CPU with 2+ cores)",
    )
    p.add_argument("--quick", action="store_true", help="fewer trials (one batch size)")
    p.add_argument("--min-snr", type=float, metavar="DB", default=20.0, help="lowest SNR (dB) against float32's output a lower precision may have")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="'auto', 'cpu', 'cuda'...")
    p.add_argument("--output", metavar="FILE", help="write the profile here instead (a new file or an existing profile file)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-trial lines")
    p.set_defaults(func=cmd_tune)

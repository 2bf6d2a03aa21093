"""Whole-process ``rvcfast convert`` on batch12, per precision and per code version, alternated.

    python benchmarks/cpu_convert.py                       # this tree, 3 rounds: float32 (+ bfloat16 on AVX512-BF16/AMX)
    python benchmarks/cpu_convert.py --tree base=/tmp/old --tree new=.  --rounds 3
    python benchmarks/cpu_convert.py --dtype float32 bfloat16 float16 --rounds 1
    python benchmarks/cpu_convert.py --variant w1='--compute-workers 1' --variant w2='--compute-workers 2'
    python benchmarks/cpu_convert.py --small --rounds 1 --warmup 0 --inputs <folder of one clip>  # smoke test

Every run is a fresh process timing exactly what a user runs (12 x 5 s files at 44.1 kHz,
full-size v2 40 kHz random-weight model, index, RMVPE, ``--device cpu``): imports, model
loading, decoding, the networks, writing. Runs alternate (tree A, tree B, A, B ... for
each precision) after one unmeasured warm-up per tree and precision, so machine drift
hits every variant alike; ratios are taken pair by pair within a round. Each line
carries the CPU model, its key flags, the usable CPUs and torch's version and threads, so
figures from different machines are never mixed up. A precision rvcfast refuses on this
CPU (float16 without AVX512-FP16 or AMX-FP16) is skipped with rvcfast's reason; a variant
whose process fails is reported and not run again, and the others go on (exit status 1).
The measured processes run with ``RVCFAST_PROFILE=off``, so that a profile written by
``rvcfast tune`` (threads, compute workers, batch size) does not change what the newer
trees run while older ones ignore it; ``--use-profile`` measures the tuned settings. ``--tree NAME=PATH`` runs the ``rvcfast``
package found in ``PATH`` (e.g. a ``git worktree`` of an older commit) with the same
Python and torch. Peak memory is the child's own maximum resident set size (``wait4``).

The full-size models are built once into ``$RVCFAST_BENCH_MODELS`` (default
``~/.cache/rvcfast/bench-models``) by :func:`rvcfast.testing.build_bench_models`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))


def default_threads() -> int:
    """The intra-op threads a fresh ``rvcfast convert`` without a profile uses: the count set in
    the environment (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), else torch's own capped at the usable cores."""
    import torch

    from rvcfast.runtime import available_cores, env_thread_count

    return env_thread_count() or min(torch.get_num_threads(), available_cores())


def machine_line() -> str:
    """CPU model, key feature flags, usable CPUs, torch version and threads: printed with every figure."""
    import torch

    from rvcfast.runtime import available_cores, cpu_features
    from rvcfast.tuning import KEY_FLAGS, cpu_model

    flags = ",".join(f for f in KEY_FLAGS if f in cpu_features()) or "none of " + ",".join(KEY_FLAGS[:3])
    isa = torch.backends.cpu.get_cpu_capability()  # what torch's kernels use; AMX also needs the kernel's permission
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return (f"{cpu_model()} | flags {flags} | {available_cores()} usable CPUs of {os.cpu_count()} | "
            f"torch {torch.__version__}, {default_threads()} threads, {isa}{' + AMX' if amx else ', no AMX'}")


def default_dtypes() -> list[str]:
    """The precisions measured when ``--dtype`` is not given: float32, and bfloat16 where this CPU
    computes it natively (AVX512-BF16 or AMX). Without that hardware bfloat16 is many times slower
    than float32 (a 12x trap on an AVX2-only Zen 3) and timing it by default costs hours; an
    explicit ``--dtype float32 bfloat16`` measures it anyway."""
    import torch

    from rvcfast.runtime import native_bf16

    return ["float32", "bfloat16"] if native_bf16(torch.device("cpu")) else ["float32"]


def _check_dtypes(dtypes: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(refused, slow): the precisions rvcfast refuses on this CPU and those it runs with a warning
    (no hardware for them), each with rvcfast's words."""
    import warnings

    import torch

    from rvcfast.errors import ParameterError
    from rvcfast.runtime import resolve_dtype

    refused, slow = {}, {}
    for dtype in dtypes:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                resolve_dtype(dtype, torch.device("cpu"))
            except ParameterError as exc:
                refused[dtype] = str(exc)
        said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        if said and dtype not in refused:
            slow[dtype] = said[0]
    return refused, slow


def refused_dtypes(dtypes: list[str]) -> dict[str, str]:
    """The precisions rvcfast refuses on this CPU (float16 without AVX512-FP16/AMX-FP16, a misspelt
    name), each with rvcfast's reason; measuring them would only time the refusal."""
    return _check_dtypes(dtypes)[0]


def slow_dtypes(dtypes: list[str]) -> dict[str, str]:
    """The precisions rvcfast runs on this CPU without hardware for them (bfloat16 without
    AVX512-BF16 or AMX), each with rvcfast's warning: their figures are no precision's speed."""
    return _check_dtypes(dtypes)[1]


def dtype_notes(
    by_default: bool, asked: list[str], refused: dict[str, str], slow: dict[str, str], prefix: str = ""
) -> list[str]:
    """Header lines on the precisions: bfloat16 left out by default (no hardware for it), those
    skipped (rvcfast refuses them here) and those measured without hardware for them."""
    lines = []
    if by_default and "bfloat16" not in asked:
        lines.append(f"{prefix}bfloat16: not measured by default, this CPU has no AVX512-BF16 or AMX "
                     "(--dtype float32 bfloat16 measures it anyway)")
    lines += [f"{prefix}{dtype}: skipped, rvcfast refuses it here: {why}" for dtype, why in refused.items()]
    lines += [f"{prefix}{dtype}: measured on a slow path, no hardware for it here: {why}" for dtype, why in slow.items()]
    return lines


def profile_note(use_profile: bool) -> str:
    """Which ``rvcfast tune`` profile the measured processes read (the header says it)."""
    if not use_profile:
        return "rvcfast tune profile: off (RVCFAST_PROFILE=off in every measured process; --use-profile to read it)"
    from rvcfast.tuning import load_profile, profile_path

    prof = load_profile("cpu")
    if prof is None:
        return f"rvcfast tune profile: {profile_path()} (no entry for this machine)"
    return (f"rvcfast tune profile: {profile_path()} (dtype {prof.dtype}, {prof.threads} threads, "
            f"{prof.compute_workers} compute workers, batch {prof.batch_seconds:g} s; older trees may ignore it)")


def describe_inputs(inputs: Path) -> str:
    """How many audio files ``inputs`` (a folder or a file) holds and how long they are; a missing
    folder or one without audio stops the run before anything is measured."""
    import soundfile as sf

    candidates = sorted(inputs.iterdir()) if inputs.is_dir() else [inputs] if inputs.is_file() else []
    seconds, count = 0.0, 0
    for f in candidates:
        try:
            seconds += sf.info(f).duration
            count += 1
        except (RuntimeError, OSError):  # not audio soundfile reads: rvcfast convert may still take it
            continue
    if count == 0:
        raise SystemExit(f"--inputs {inputs}: no audio files found there (pass --inputs or set RVCFAST_SHARED)")
    return f"{count} file{'s' if count != 1 else ''}, {seconds:.1f} s of audio, from {inputs}"


def child_env(tree: Path, use_profile: bool = False) -> dict[str, str]:
    """The environment of a measured process: ``tree``'s rvcfast first on the path and, unless
    ``use_profile``, profiles off (one left by ``rvcfast tune`` changes the threads, workers and
    batch size of the trees that read profiles, and not of older ones)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    if not use_profile:
        env["RVCFAST_PROFILE"] = "off"
    return env


def _run_once(
    tree: Path, dtype: str, paths: dict[str, Path], inputs: Path, extra: list[str], use_profile: bool = False
) -> dict[str, float]:
    """One fresh ``python -m rvcfast convert`` process: wall, user, sys seconds, peak RSS, faults."""
    out = Path(tempfile.mkdtemp(prefix="rvcfast-bench-out-"))
    cmd = [
        sys.executable, "-m", "rvcfast", "convert", str(paths["model"]), str(inputs), "-o", str(out),
        "--index", str(paths["index"]), "--encoder", str(paths["encoder"]), "--f0-weights", str(paths["f0_weights"]),
        "--device", "cpu", "--dtype", dtype, "-q", *extra,
    ]
    env = child_env(tree, use_profile)
    try:
        with tempfile.TemporaryFile() as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=log)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            log.seek(0)
            err = log.read().decode(errors="replace")
    finally:  # also when interrupted: the outputs of a whole batch12 run are ~25 MB
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    return {
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "minor_faults": float(usage.ru_minflt),
    }


def _wait_for_quiet(max_load: float) -> float:
    """Wait (up to 10 minutes) until the 1-minute load average is at most ``max_load``."""
    for _ in range(60):
        load = os.getloadavg()[0]
        if load <= max_load:
            return load
        time.sleep(10)
    return os.getloadavg()[0]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="a source tree to run (repeatable); default: this repository")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="this repository with extra convert arguments (repeatable), e.g. w2='--compute-workers 2'")
    ap.add_argument("--dtype", nargs="+", default=None,
                    help="precisions to measure (default: float32, and bfloat16 where the CPU has AVX512-BF16 or "
                         "AMX); one rvcfast refuses on this CPU (float16 without AVX512-FP16/AMX-FP16) is "
                         "skipped with its reason")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured runs per tree and dtype first")
    ap.add_argument("--inputs", type=Path, default=SHARED / "audio" / "batch12")
    ap.add_argument("--max-load", type=float, default=None,
                    help="wait (up to 10 minutes) before each run until the 1-minute load average is at most "
                         "this; default 0.75 x the usable CPUs (1.5 on 2 CPUs); with --small no wait")
    ap.add_argument("--use-profile", action="store_true",
                    help="let the measured processes read rvcfast tune's profile (default: RVCFAST_PROFILE=off)")
    ap.add_argument("--small", action="store_true",
                    help="tiny models in the same formats: a smoke test of the script, not a measurement")
    ap.add_argument("--json", type=Path, default=None, help="also write every run here")
    ap.add_argument("extra", nargs="*", help="extra arguments for rvcfast convert (after --)")
    return ap


def _variants(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """(name, source tree, extra convert arguments) per variant; a malformed NAME=PATH is a usage error."""
    variants = []
    for opt, items in (("--tree", args.tree), ("--variant", args.variant)):
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise SystemExit(f"{opt} {item!r}: expected NAME={'PATH' if opt == '--tree' else 'ARGS'}")
            if opt == "--tree":
                tree = Path(value).resolve()
                if not (tree / "rvcfast" / "__init__.py").is_file():
                    raise SystemExit(f"--tree {item!r}: {tree} holds no rvcfast package (rvcfast/__init__.py)")
                variants.append((name, tree, list(args.extra)))
            else:
                variants.append((name, REPO, [*args.extra, *shlex.split(value)]))
    names = [v[0] for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names must differ: {names}")
    return variants or [("this", REPO, list(args.extra))]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rvcfast.runtime import available_cores
    from rvcfast.testing import build_bench_models

    trees = _variants(args)
    inputs = describe_inputs(args.inputs)
    # a smoke test (--small) measures nothing worth a quiet machine: it does not wait for one
    max_load = args.max_load if args.max_load is not None else math.inf if args.small else 0.75 * available_cores()
    asked = args.dtype if args.dtype is not None else default_dtypes()
    refused, slow = _check_dtypes(asked)
    dtypes = [d for d in asked if d not in refused]
    paths = build_bench_models(MODELS, small=args.small)
    machine = machine_line()
    print(f"# {machine}")
    print(f"# inputs: {inputs}; models {paths['model'].parent}{' (SMALL: figures meaningless)' if args.small else ''}; {args.rounds} rounds after {args.warmup} warm-up; "
          + (f"waiting for a 1-minute load <= {max_load:g} before each run" if math.isfinite(max_load)
             else "not waiting for a quiet machine"))
    print(f"# {profile_note(args.use_profile)}")
    for line in dtype_notes(args.dtype is None, asked, refused, slow, "# "):
        print(line)
    failed: dict[tuple[str, str], str] = {}

    def measure(name: str, tree: Path, dtype: str, extra: list[str]) -> dict[str, float] | None:
        if (name, dtype) in failed:
            return None
        try:
            return _run_once(tree, dtype, paths, args.inputs, extra, args.use_profile)
        except RuntimeError as exc:
            failed[name, dtype] = str(exc)
            print(f"# FAILED {name} {dtype} (no more runs of it): {exc}", flush=True)
            return None

    runs: list[dict] = []
    for dtype in dtypes:
        for name, tree, extra in trees:
            for _ in range(args.warmup):
                _wait_for_quiet(max_load)
                measure(name, tree, dtype, extra)
    for r in range(args.rounds):
        for dtype in dtypes:
            for name, tree, extra in trees:
                if (name, dtype) in failed:
                    continue
                load = _wait_for_quiet(max_load)
                m = measure(name, tree, dtype, extra)
                if m is None:
                    continue
                m.update(tree=name, dtype=dtype, round=r, load_before=load, machine=machine)
                runs.append(m)
                print(f"{name:>8s} {dtype:>9s} round {r}: wall {m['wall_s']:6.2f} s  user {m['user_s']:6.2f}  "
                      f"sys {m['sys_s']:5.2f}  peak {m['peak_rss_mib']:6.0f} MiB  faults {m['minor_faults']:9.0f}  "
                      f"(load {load:.2f})  [{machine}]", flush=True)
    print("\n".join(summary(runs, [t[0] for t in trees], dtypes, machine)))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    if failed:
        print(f"\n# {len(failed)} variant(s) failed: " + ", ".join(f"{n} {d}" for n, d in failed))
    return 1 if failed else 0


def _ratio_line(label: str, pairs: list[float], digits: int, unit: str = "") -> str:
    """``label: median R (min, max)`` over the ratios of pairs run in the same round."""
    if not pairs:
        return f"{label}: no round has both"
    return (f"{label}: median {statistics.median(pairs):.{digits}f}{unit} "
            f"(min {min(pairs):.{digits}f}, max {max(pairs):.{digits}f}; {len(pairs)} round{'s' if len(pairs) != 1 else ''})")


def summary(runs: list[dict], names: list[str], dtypes: list[str], machine: str) -> list[str]:
    """Medians per (variant, precision) and ratios of runs made in the same round (pairs matched by round)."""
    by = {(m["tree"], m["dtype"], m["round"]): m for m in runs}
    rounds = sorted({m["round"] for m in runs})

    def pairs(a: tuple[str, str], b: tuple[str, str]) -> list[float]:
        """wall(a) / wall(b) for each round where both ran."""
        return [by[(*a, r)]["wall_s"] / by[(*b, r)]["wall_s"] for r in rounds if (*a, r) in by and (*b, r) in by]

    lines = [f"\n# medians [{machine}]"]
    for name in names:
        for dtype in dtypes:
            ms = [m for m in runs if m["tree"] == name and m["dtype"] == dtype]
            if not ms:
                lines.append(f"{name:>8s} {dtype:>9s}: no successful run")
                continue
            lines.append(f"{name:>8s} {dtype:>9s}: wall {statistics.median(m['wall_s'] for m in ms):6.2f} s, "
                         f"peak RSS {statistics.median(m['peak_rss_mib'] for m in ms):6.0f} MiB "
                         f"(max {max(m['peak_rss_mib'] for m in ms):.0f}; {len(ms)} run{'s' if len(ms) != 1 else ''})")
        if "float32" in dtypes:
            for dtype in dtypes:
                if dtype != "float32":
                    lines.append(_ratio_line(f"{name:>8s} float32/{dtype} (same round)",
                                             pairs((name, "float32"), (name, dtype)), 2, "x"))
    for name in names[1:]:
        for dtype in dtypes:
            lines.append(_ratio_line(f"{name}/{names[0]} {dtype} wall (same round)", pairs((name, dtype), (names[0], dtype)), 3))
    return lines


if __name__ == "__main__":
    raise SystemExit(main())

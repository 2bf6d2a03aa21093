"""Whole-process ``rvcfast convert`` on batch12, per precision and per code version, alternated.

    python benchmarks/cpu_convert.py                       # this tree, float32 and bfloat16, 3 rounds
    python benchmarks/cpu_convert.py --tree base=/tmp/old --tree new=.  --rounds 3
    python benchmarks/cpu_convert.py --dtype float32 bfloat16 float16 --rounds 1
    python benchmarks/cpu_convert.py --variant w1='--compute-workers 1' --variant w2='--compute-workers 2'

Every run is a fresh process timing exactly what a user runs (12 x 5 s files at 44.1 kHz,
full-size v2 40 kHz random-weight model, index, RMVPE, ``--device cpu``): imports, model
loading, decoding, the networks, writing. Runs alternate (tree A, tree B, A, B ... for
each precision) after one unmeasured warm-up per tree and precision, so machine drift
hits every variant alike; ratios are taken pair by pair within a round. Each line
carries the CPU model, its key flags, the core count and torch's version, so figures
from different machines are never mixed up. ``--tree NAME=PATH`` runs the ``rvcfast``
package found in ``PATH`` (e.g. a ``git worktree`` of an older commit) with the same
Python and torch. Peak memory is the child's own maximum resident set size (``wait4``).

The full-size models are built once into ``$RVCFAST_BENCH_MODELS`` (default
``~/.cache/rvcfast/bench-models``) by :func:`rvcfast.testing.build_bench_models`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))


def machine_line() -> str:
    """CPU model, key feature flags, cores and torch version: printed with every figure."""
    import torch

    from rvcfast.runtime import cpu_features
    from rvcfast.tuning import KEY_FLAGS, cpu_model

    flags = ",".join(f for f in KEY_FLAGS if f in cpu_features()) or "none of " + ",".join(KEY_FLAGS[:3])
    return f"{cpu_model()} | flags {flags} | {os.cpu_count()} cores | torch {torch.__version__}"


def _run_once(tree: Path, dtype: str, paths: dict[str, Path], inputs: Path, extra: list[str]) -> dict[str, float]:
    """One fresh ``python -m rvcfast convert`` process: wall, user, sys seconds, peak RSS, faults."""
    out = Path(tempfile.mkdtemp(prefix="rvcfast-bench-out-"))
    cmd = [
        sys.executable, "-m", "rvcfast", "convert", str(paths["model"]), str(inputs), "-o", str(out),
        "--index", str(paths["index"]), "--encoder", str(paths["encoder"]), "--f0-weights", str(paths["f0_weights"]),
        "--device", "cpu", "--dtype", dtype, "-q", *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        err = log.read().decode(errors="replace")
    for f in out.iterdir():
        f.unlink()
    out.rmdir()
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="a source tree to run (repeatable); default: this repository")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="this repository with extra convert arguments (repeatable), e.g. w2='--compute-workers 2'")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured runs per tree and dtype first")
    ap.add_argument("--inputs", type=Path, default=SHARED / "audio" / "batch12")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait before each run until the load is below this")
    ap.add_argument("--json", type=Path, default=None, help="also write every run here")
    ap.add_argument("extra", nargs="*", help="extra arguments for rvcfast convert (after --)")
    args = ap.parse_args(argv)

    from rvcfast.testing import build_bench_models

    # (name, source tree, extra convert arguments) per variant
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve(), list(args.extra)) for t in args.tree]
    trees += [(v.split("=", 1)[0], REPO, [*args.extra, *shlex.split(v.split("=", 1)[1])]) for v in args.variant]
    trees = trees or [("this", REPO, list(args.extra))]
    paths = build_bench_models(MODELS)
    machine = machine_line()
    print(f"# {machine}")
    print(f"# batch12 from {args.inputs}, models {MODELS / 'full'}; {args.rounds} rounds after {args.warmup} warm-up")
    runs: list[dict] = []
    for dtype in args.dtype:
        for _name, tree, extra in trees:
            for _ in range(args.warmup):
                _wait_for_quiet(args.max_load)
                _run_once(tree, dtype, paths, args.inputs, extra)
    for r in range(args.rounds):
        for dtype in args.dtype:
            for name, tree, extra in trees:
                load = _wait_for_quiet(args.max_load)
                m = _run_once(tree, dtype, paths, args.inputs, extra)
                m.update(tree=name, dtype=dtype, round=r, load_before=load, machine=machine)
                runs.append(m)
                print(f"{name:>8s} {dtype:>9s} round {r}: wall {m['wall_s']:6.2f} s  user {m['user_s']:6.2f}  "
                      f"sys {m['sys_s']:5.2f}  peak {m['peak_rss_mib']:6.0f} MiB  faults {m['minor_faults']:9.0f}  "
                      f"(load {load:.2f})  [{machine}]", flush=True)
    _summary(runs, trees, args.dtype, machine)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


def _summary(runs: list[dict], trees: list[tuple[str, Path, list[str]]], dtypes: list[str], machine: str) -> None:
    def pick(tree: str, dtype: str) -> list[dict]:
        return [m for m in runs if m["tree"] == tree and m["dtype"] == dtype]

    print(f"\n# medians [{machine}]")
    for name, *_ in trees:
        for dtype in dtypes:
            ms = pick(name, dtype)
            print(f"{name:>8s} {dtype:>9s}: wall {statistics.median(m['wall_s'] for m in ms):6.2f} s, "
                  f"peak RSS {statistics.median(m['peak_rss_mib'] for m in ms):6.0f} MiB "
                  f"(max {max(m['peak_rss_mib'] for m in ms):.0f})")
        if "float32" in dtypes:
            for dtype in dtypes:
                if dtype == "float32":
                    continue
                ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(pick(name, "float32"), pick(name, dtype))]
                print(f"{name:>8s} float32/{dtype} (same round): median {statistics.median(ratios):.2f}x "
                      f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
    if len(trees) > 1:
        base = trees[0][0]
        for name, *_ in trees[1:]:
            for dtype in dtypes:
                ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(pick(base, dtype), pick(name, dtype))]
                print(f"{name}/{base} {dtype} wall (same round): median {statistics.median(ratios):.3f} "
                      f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    raise SystemExit(main())

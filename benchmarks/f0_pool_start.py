"""What a batch's F0 process pool costs to start, per start method: harvest, dio or pm tracks.

    python benchmarks/f0_pool_start.py                                  # this tree, 5 rounds
    python benchmarks/f0_pool_start.py --tree base=/tmp/old --tree new=. --rounds 7
    python benchmarks/f0_pool_start.py --backend pm --workers 1 --methods spawn

``convert_batch`` runs the ``cpu_bound`` trackers (harvest, dio, pm, swift) in a process pool of
its own, started for the batch and ended with it. With ``fork`` (Linux before Python 3.14) a
worker is a copy of the caller; with ``spawn`` (Windows, macOS) or ``forkserver`` (Linux from
Python 3.14) each worker is a fresh interpreter that unpickles the tracker, importing its module.
Each measurement is one fresh process (per tree and start method, alternated round by round)
that times, after a warm-up in this process, ``F0Pool(tracker, workers)`` + one 1 s track per
worker + ``shutdown``: the seconds a batch pays beyond its tracks are the pool's time minus the
same tracks in the process itself (also printed). The figure line carries the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_convert import machine_line  # noqa: E402

_CHILD = r"""
import json, multiprocessing, sys, time
import numpy as np

if __name__ == "__main__":
    method, backend, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    multiprocessing.set_start_method(method)
    from rvcfast.f0.registry import get_f0_extractor
    from rvcfast.f0_pool import F0Pool

    ext = get_f0_extractor(backend, device="cpu")
    t = np.arange(16000) / 16000
    x = sum(0.3 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 6)).astype(np.float32)
    ext.extract(x)  # the tracker's own first-call costs, here and not in the pool's figure
    t0 = time.perf_counter()
    for _ in range(workers):
        ext.extract(x)
    alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = F0Pool(ext, workers)
    futures = [pool.submit(x) for _ in range(workers)]
    tracks = [f.result() for f in futures]
    pool.shutdown()
    pooled = time.perf_counter() - t0
    assert all(np.array_equal(tr, ext.extract(x)) for tr in tracks)
    print("RESULT " + json.dumps({"pool": pooled, "alone": alone}))
"""


def _run(tree: Path, method: str, backend: str, workers: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
           "RVCFAST_PROFILE": "off"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, method, backend, str(workers)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tree)
    if proc.returncode != 0 or "RESULT " not in proc.stdout:
        raise RuntimeError(f"{tree} ({method}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="an rvcfast checkout to measure (repeatable; default: this one)")
    ap.add_argument("--methods", nargs="+", default=["fork", "spawn", "forkserver"],
                    choices=["fork", "spawn", "forkserver"])
    ap.add_argument("--backend", default="harvest", choices=["harvest", "dio", "pm", "swift"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if args.workers < 1 or args.rounds < 1:
        raise SystemExit("--workers and --rounds must be at least 1")
    trees: dict[str, Path] = {}
    for item in args.tree or [f"this={REPO}"]:
        name, sep, path = item.partition("=")
        if not sep or not name or not (Path(path) / "rvcfast" / "__init__.py").is_file():
            raise SystemExit(f"--tree {item!r}: expected NAME=PATH of a checkout holding rvcfast/__init__.py")
        trees[name] = Path(path).resolve()
    seen: dict[tuple[str, str], list[dict[str, float]]] = {(n, m): [] for n in trees for m in args.methods}
    for _ in range(args.rounds):
        for method in args.methods:
            for name, tree in trees.items():
                seen[name, method].append(_run(tree, method, args.backend, args.workers))
    print(f"# {machine_line()}")
    print(f"# {args.backend}, {args.workers} worker(s), one 1 s track each, {args.rounds} rounds, medians")
    first = next(iter(trees))
    for method in args.methods:
        base = statistics.median(r["pool"] for r in seen[first, method])
        for name in trees:
            pool = statistics.median(r["pool"] for r in seen[name, method])
            alone = statistics.median(r["alone"] for r in seen[name, method])
            print(f"{method:10s} {name:8s} pool {pool:6.3f} s  tracks alone {alone:6.3f} s  "
                  f"start cost {pool - alone / args.workers:6.3f} s  {pool / base:5.2f}x {first}")


if __name__ == "__main__":
    main()

"""Retrieval indexes of a voice trained on hours of audio: load time and memory, a second load
of the same file, and search time, per index size (docs/benchmarks.md, "Big retrieval indexes").

    python benchmarks/big_index.py                      # 10k and 100k vectors (768-d), IVF and flat
    python benchmarks/big_index.py --vectors 500000     # 1.5 GB on disk and in memory
    python benchmarks/big_index.py --keep /tmp/idx      # keep the index files there

Each index is written in faiss's file format (clustered vectors with 1 % duplicates, RVC's
``nlist = 4·sqrt(n)`` with centroids sampled from the data, nprobe 1; ``--flat`` also a flat
index, one list), then read in a fresh process. Every figure comes with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, os, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from rvcfast.index import load_index

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))

path, queries = sys.argv[1], np.load(sys.argv[2])
base = rss()
t0 = time.perf_counter(); first = load_index(path); load_s = time.perf_counter() - t0
load_peak, held = peak() - base, rss() - base
t0 = time.perf_counter(); second = load_index(path); again_s = time.perf_counter() - t0
again_mb = rss() - base - held
del second
def median_ms(fn, x, rounds=7):
    fn(x)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter(); fn(x); times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))

search = {t: median_ms(lambda x: first.search(x, 8), torch.from_numpy(queries[:t])) for t in (50, 500)}
# exactness: the same ids as a brute-force scan of the probed list (nprobe 1), ties by id
_, got = first.search(torch.from_numpy(queries[:100]), 8)
cen = first.centroids.double().numpy()
every = first.vectors.double().numpy()  # in id order
same = 0
for row, q in enumerate(queries[:100].astype(np.float64)):
    li = int(np.argmin(((cen - q) ** 2).sum(1).astype(np.float32))) if first.nlist > 1 else 0
    ids = first.list_ids(li).numpy()
    vec = every[ids]
    dist = ((vec - q) ** 2).sum(1).astype(np.float32)
    order = np.lexsort((ids, dist))[:8]
    ref = np.full(8, -1); ref[: len(order)] = ids[order]
    same += bool((ref == got[row].numpy()).all())
# faiss on the same file and queries, in the same process (same threads), when it is installed
faiss_ms = None
try:
    import faiss
except ImportError:
    pass
else:
    faiss.omp_set_num_threads(int(sys.argv[3]))
    del first, every
    fi = faiss.read_index(path)
    faiss_ms = {t: median_ms(lambda x: fi.search(x, 8), np.ascontiguousarray(queries[:t])) for t in (50, 500)}
print(json.dumps({"load_s": load_s, "load_peak_mb": load_peak, "held_mb": held, "again_s": again_s,
                  "again_mb": again_mb, "search_ms": search, "faiss_ms": faiss_ms, "exact_rows": same}))
"""


def cpu_model() -> str:
    """The CPU's model name, with whether it has AVX-512 and AMX (the matrix products depend on them)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"
    flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags")), [])
    has = [f for f in ("avx512f", "amx_tile") if f in flags]
    return f"{name} ({', '.join(has) if has else 'no AVX-512, no AMX'})"


def build(folder: Path, n: int, dim: int, flat: bool) -> tuple[Path, Path]:
    """An index of ``n`` clustered vectors in faiss's format, and 500 queries near them."""
    import torch

    from rvcfast.index import RetrievalIndex

    rng = np.random.default_rng(n)
    centers = rng.standard_normal((max(50, n // 250), dim)).astype(np.float32) * 0.8
    labels = rng.integers(0, centers.shape[0], n)
    x = centers[labels] + rng.standard_normal((n, dim)).astype(np.float32) * 0.5
    dup = rng.choice(n, n // 100, replace=False)
    x[dup] = x[dup[0]]  # silence frames: identical vectors
    if flat:
        index = RetrievalIndex(x, np.arange(n), [n], np.zeros((1, dim), np.float32), kind="flat")
        path = folder / f"flat_{n}_v2.index"
    else:
        nlist = int(4 * math.sqrt(n))
        index = RetrievalIndex.from_vectors(torch.from_numpy(x), centroids=x[rng.choice(n, nlist, replace=False)])
        path = folder / f"added_IVF{nlist}_Flat_nprobe_1_{n}_v2.index"
    index.save(path)
    queries = folder / f"queries_{n}.npy"
    np.save(queries, x[rng.choice(n, 500)] + rng.standard_normal((500, dim)).astype(np.float32) * 0.3)
    return path, queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--flat", action="store_true", help="also a flat index (one list) of each size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="write the index files here and keep them")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}")
    with tempfile.TemporaryDirectory(prefix="rvcfast-index-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(
            "| index | file | load | load peak RSS | held | 2nd load (shared) | search T=50 / T=500 "
            "| faiss T=50 / T=500 (rvcfast/faiss) | exact ids |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.vectors:
            for flat in (False, True) if args.flat else (False,):
                t0 = time.perf_counter()
                path, queries = build(folder, n, args.dim, flat)
                built = time.perf_counter() - t0
                run = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(path), str(queries), str(args.threads)],
                    capture_output=True, text=True, check=True,
                )
                r = json.loads(run.stdout.strip().splitlines()[-1])
                mb = path.stat().st_size / 2**20
                kind = "flat" if flat else "IVF"
                ms, fms = r["search_ms"], r["faiss_ms"]
                faiss_col = "faiss not installed"
                if fms is not None:
                    faiss_col = (
                        f"{fms['50']:.1f} / {fms['500']:.1f} ms "
                        f"(×{ms['50'] / fms['50']:.1f} / ×{ms['500'] / fms['500']:.1f})"
                    )
                print(
                    f"| {kind} {n:,} (built in {built:.0f} s) | {mb:.0f} MiB | {r['load_s']:.2f} s | +{r['load_peak_mb']:.0f} MiB "
                    f"| +{r['held_mb']:.0f} MiB | {r['again_s']:.2f} s, +{r['again_mb']:.0f} MiB "
                    f"| {ms['50']:.1f} / {ms['500']:.1f} ms | {faiss_col} | {r['exact_rows']}/100 |"
                )
                if args.keep is None:
                    path.unlink()


if __name__ == "__main__":
    main()

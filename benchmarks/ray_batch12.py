"""batch12 in one process vs. through a one-node Ray cluster, timed in the same run.

Workload: the 12 × 5 s clips of ``shared/audio/batch12`` (44.1 kHz) through full-size
random-weight models (v2 40 kHz voice with RMVPE and a 20,000-vector index; compute does
not depend on the weight values). Variants, in this order:

* ``convert_batch``: ``Converter.from_pretrained`` + ``Converter.convert_batch`` (the
  whole job in one process; the load is also shown on its own);
* Ray start-up: ``ray.init`` of a local one-node cluster (stated separately);
* ``convert_files``: :func:`rvcfast.integrations.ray.convert_files` on that running cluster
  (checks on the driver, the model actors started and loaded, decoding tasks, conversion,
  writes, manifest) with its default pool (one single-threaded worker per core), writing
  in the actor (the default) and in CPU tasks (``write_in="task"``), and with one worker
  running a thread per core (``num_workers=1``: the default before 2026-12-05);
* ``convert_batch`` again, to show how much the machine's load moved during the run.

With ``--voices N`` the job goes to N voices instead (the same model under N names: compute
does not depend on the weights), on the running cluster, in turn: one ``convert_files`` job
per voice, then one job with ``voices=`` (each input decoded once, its F0 and content
features computed once in a worker for all the voices); the outputs of the two must agree.

Prints a Markdown table with the machine (CPU model, flags, threads). Run::

    python benchmarks/ray_batch12.py [--audio ../shared/audio/batch12] [--models ~/.cache/rvcfast/bench-models]
    python benchmarks/ray_batch12.py --voices 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_convert_batch(models: dict[str, Path], files: list[Path], out: Path) -> tuple[float, float]:
    """(load seconds, convert_batch seconds) in this process."""
    import rvcfast
    from rvcfast import cache

    cache.clear()  # the load is part of the job
    t0 = time.perf_counter()
    conv = rvcfast.Converter.from_pretrained(
        models["model"], index=models["index"], encoder=models["encoder"], f0_weights=models["f0_weights"], device="cpu"
    )
    t1 = time.perf_counter()
    results = conv.convert_batch([str(f) for f in files], out)
    t2 = time.perf_counter()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    del conv
    cache.clear()
    return t1 - t0, t2 - t1


def run_convert_files(models: dict[str, Path], files: list[Path], out: Path, write_in: str, **layout: int) -> float:
    from rvcfast.integrations.ray import convert_files

    t0 = time.perf_counter()
    rows = convert_files(
        [str(f) for f in files], out, models["model"], index=models["index"], encoder=models["encoder"],
        f0_weights=models["f0_weights"], device="cpu", write_in=write_in, progress=False, **layout,
    )
    seconds = time.perf_counter() - t0
    assert [r["status"] for r in rows] == ["ok"] * len(files), [r["error"] for r in rows if r["status"] != "ok"]
    return seconds


def run_voices(models: dict[str, Path], files: list[Path], scratch: Path, n: int) -> list[tuple[str, float, str]]:
    """N one-voice ``convert_files`` jobs, then one job of N voices, on the running cluster."""
    import shutil as sh

    import numpy as np
    import soundfile as sf

    from rvcfast.integrations.ray import convert_files

    names = [f"voice{k}" for k in range(n)]
    for name in names:
        sh.copyfile(models["model"], scratch / f"{name}.pth")
    common = dict(encoder=models["encoder"], f0_weights=models["f0_weights"], device="cpu", progress=False, seed=0)
    rows = []
    before, t0 = _load(), time.perf_counter()
    for name in names:
        done = convert_files([str(f) for f in files], scratch / "apart" / name, scratch / f"{name}.pth", index=models["index"], **common)
        assert all(r["status"] == "ok" for r in done), [r["error"] for r in done if r["status"] != "ok"]
    rows.append((f"{n} convert_files jobs, one per voice", time.perf_counter() - t0, f"{before} -> {_load()}"))
    before, t0 = _load(), time.perf_counter()
    done = convert_files([str(f) for f in files], scratch / "together",
                         voices={name: (scratch / f"{name}.pth", models["index"]) for name in names}, **common)
    rows.append((f"one convert_files job, voices= ({n} voices)", time.perf_counter() - t0, f"{before} -> {_load()}"))
    assert all(r["status"] == "ok" for r in done) and len(done) == n * len(files)
    worst = 0.0
    for name in names:
        for f in files:
            a = sf.read(scratch / "apart" / name / f"{f.stem}.wav", dtype="float32")[0]
            b = sf.read(scratch / "together" / name / f"{f.stem}.wav", dtype="float32")[0]
            worst = max(worst, float(np.abs(a - b).max()))
    print(f"largest difference between the two ways' outputs: {worst:.3g} (16-bit WAV: one step is {1 / 32768:.3g})")
    return rows


def _load() -> str:
    """The 1-minute load average (other processes share the machine)."""
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, default=REPO.parent / "shared" / "audio" / "batch12")
    parser.add_argument("--models", type=Path, default=Path("~/.cache/rvcfast/bench-models").expanduser())
    parser.add_argument("--voices", type=int, default=0, metavar="N", help="time N one-voice jobs against one job of N voices")
    args = parser.parse_args()
    if args.voices == 1 or args.voices < 0:
        parser.error("--voices needs at least 2 voices")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RVCFAST_PROFILE"] = "off"  # here and in Ray's workers: rvcfast's defaults, not a tuned profile

    from cpu_convert import machine_line  # this folder's helper

    from rvcfast.testing import build_bench_models

    models = build_bench_models(args.models, log=print)
    files = sorted(args.audio.glob("*.wav"))
    assert len(files) == 12, f"expected the 12 clips of batch12 in {args.audio}, found {len(files)}"
    scratch = Path(tempfile.mkdtemp(prefix="rvcfast-ray-bench-"))
    rows: list[tuple[str, float, str]] = []  # (variant, seconds, load average before -> after)
    try:
        before = _load()
        load, batch = run_convert_batch(models, files, scratch / "batch")
        rows += [("convert_batch: load + run (whole job)", load + batch, f"{before} -> {_load()}"), ("  of which model load", load, "")]

        import ray

        before = _load()
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")
        start = time.perf_counter() - t0
        rows.append(("Ray start-up (ray.init, one node)", start, f"{before} -> {_load()}"))
        if args.voices:
            rows += run_voices(models, files, scratch, args.voices)
            ray.shutdown()
            print(f"\nbatch12 (12 x 5 s, 44.1 kHz) to {args.voices} voices, full-size random models, CPU float32 - [{machine_line()}]\n")
            print("| variant | seconds | load average |\n|---|---:|---|")
            for name, seconds, loadavg in rows:
                print(f"| {name} | {seconds:.1f} | {loadavg} |")
            print(f"\none job / separate jobs: {rows[-1][1] / rows[-2][1]:.3f}")
            return
        variants = (
            ("actor", {}, "writes in the actor"),
            ("task", {}, "writes in CPU tasks"),
            ("actor", {"num_workers": 1}, f"one worker of {os.cpu_count()} threads, writes in the actor"),
        )
        for k, (write_in, layout, what) in enumerate(variants):
            before = _load()
            seconds = run_convert_files(models, files, scratch / f"ray_{k}", write_in, **layout)
            rows.append((f"convert_files, {what} (running cluster)", seconds, f"{before} -> {_load()}"))
        t0 = time.perf_counter()
        ray.shutdown()
        rows.append(("ray.shutdown", time.perf_counter() - t0, ""))
        before = _load()
        load2, batch2 = run_convert_batch(models, files, scratch / "batch2")
        rows.append(("convert_batch again: load + run", load2 + batch2, f"{before} -> {_load()}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = min(load + batch, load2 + batch2)
    print(f"\nbatch12 (12 x 5 s, 44.1 kHz), full-size random models, CPU float32 - [{machine_line()}]\n")
    print("| variant | seconds | / convert_batch | load average |")
    print("|---|---:|---:|---|")
    for name, seconds, loadavg in rows:
        ratio = f"{seconds / base:.2f}x" if name.startswith(("convert_files", "convert_batch")) else ""
        print(f"| {name} | {seconds:.1f} | {ratio} | {loadavg} |")
    ray_actor = next(s for n, s, _ in rows if n.startswith("convert_files, writes in the actor"))
    whole = ray_actor + start + rows[-2][1]
    print(f"\nconvert_files (actor writes) + Ray start-up + shutdown: {whole:.1f} s = {whole / base:.2f}x convert_batch "
          f"(the better of its two runs, {base:.1f} s)")


if __name__ == "__main__":
    main()

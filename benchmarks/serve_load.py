"""Load benchmark of ``rvcfast serve`` against in-process conversion, all in one run.

Workload: the 12 × 5 s files of ``shared/audio/batch12`` (44.1 kHz) through full-size
random-weight models in the real formats (v2 40 kHz voice, ``hubert_base.pt``, ``rmvpe.pt``,
a 20 000 × 768 index; built once by :func:`rvcfast.testing.build_bench_models` into
``~/.cache/rvcfast/bench-models``). Measured, in this order:

1. for 1, 4 and 8 concurrent clients: ``Converter.convert_batch`` on the 12 files
   (in-process, writing WAV files), then at once the same 12 files sent to a real
   ``rvcfast serve`` process on 127.0.0.1 by that many clients (each takes the next file
   from a shared list), with p50/p95 latency and throughput; each pair runs back to back
   so both see the same machine;
2. one 5 s request at a time against one in-process ``convert``, alternating (median of 3);
3. 8 clients against the server (on a CPU one request per engine call) and against a
   second one with ``--batch-seconds 30`` (up to four 5 s requests per call), to compare
   cross-request batching on this device. ``--engine-batching N`` measures the same at the
   engine alone: ``Engine.run`` on four requests in one call against four calls, alternated.

Besides wall time, the CPU seconds each side used (the benchmark process for
``convert_batch``, the server process for the server runs, from ``/proc``) are reported:
on a machine shared with other work they compare the work done more fairly than wall time.

Run: ``python benchmarks/serve_load.py`` (prints a markdown table; ``--help`` for options).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))


def cpu_model() -> str:
    """The machine every figure is printed with: CPU model, key flags, usable CPUs, torch and threads."""
    from cpu_convert import machine_line  # this folder's helper

    return machine_line()


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Server:
    """A ``rvcfast serve`` subprocess on a free port of 127.0.0.1."""

    def __init__(self, models: dict[str, Path], log: Path, *extra: str) -> None:
        cmd = [
            sys.executable, "-m", "rvcfast", "serve", str(models["model"]), "--port", "0", "--encoder", str(models["encoder"]),
            "--f0-weights", str(models["f0_weights"]), "--device", "cpu", "--no-access-log", "--log-level", "warning", *extra,
        ]
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            if m:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text())
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{m.group(1)}"
        self.voice = Path(models["model"]).stem

    def wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(self.log.read_text())

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._out.close()


def post_file(client, voice: str, path: Path) -> float:
    t0 = time.perf_counter()
    r = client.post("/v1/convert", files={"file": (path.name, path.read_bytes(), "audio/wav")}, data={"voice": voice})
    if r.status_code != 200:
        raise RuntimeError(f"{path.name}: {r.status_code} {r.text}")
    return time.perf_counter() - t0


def load(server: Server, files: list[Path], concurrency: int) -> dict[str, float]:
    """Send every file once from ``concurrency`` clients; wall time and latency percentiles."""
    import httpx

    todo = list(files)
    latencies: list[float] = []

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            while todo:
                try:
                    path = todo.pop(0)
                except IndexError:
                    return
                latencies.append(post_file(c, server.voice, path))

    t0, c0 = time.perf_counter(), cpu_seconds(server.proc.pid)
    with cf.ThreadPoolExecutor(concurrency) as pool:
        for fut in [pool.submit(client_loop) for _ in range(concurrency)]:
            fut.result()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server.proc.pid) - c0
    return {"wall": wall, "cpu": cpu, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}


def single_latency(server: Server, path: Path, rounds: int = 3) -> float:
    import httpx

    with httpx.Client(base_url=server.url, timeout=600) as c:
        return statistics.median(post_file(c, server.voice, path) for _ in range(rounds))


def engine_batching(engine, files: list[Path], rounds: int) -> int:
    """Engine.run with several requests' inputs (one parameter set each) in one call, against one call each.

    The two are alternated so that drift of a shared machine hits both alike; wall and CPU
    seconds of each round are printed, then the medians.
    """
    params = [engine.params(pitch=k, noise=False) for k in range(len(files))]
    preps = [engine.prepare(str(f)) for f in files]
    together, alone = [], []
    for r in range(rounds):
        for kind in ("together", "alone") if r % 2 == 0 else ("alone", "together"):
            t0, c0 = time.perf_counter(), cpu_seconds()
            if kind == "together":
                results = engine.run(preps, params)
            else:
                results = [engine.run([p], q)[0] for p, q in zip(preps, params)]
            assert all(res.ok for res in results)
            (together if kind == "together" else alone).append((time.perf_counter() - t0, cpu_seconds() - c0))
            print(f"round {r} {kind}: {together[-1] if kind == 'together' else alone[-1]}", file=sys.stderr)
    wt, ct = statistics.median(w for w, _ in together), statistics.median(c for _, c in together)
    wa, ca = statistics.median(w for w, _ in alone), statistics.median(c for _, c in alone)
    print(f"Engine.run, {len(files)} requests of 5 s, {rounds} alternating rounds (medians) - [{cpu_model()}]:")
    print("| | wall s | CPU s |\n|---|---:|---:|")
    print(f"| one call for all | {wt:.1f} | {ct:.1f} |\n| one call each | {wa:.1f} | {ca:.1f} |")
    print(f"one call each / one call for all: wall {wa / wt:.3f}×, CPU {ca / ct:.3f}×")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="~/.cache/rvcfast/bench-models", help="where the random full-size models are cached")
    ap.add_argument("--audio", default=str(SHARED / "audio" / "batch12"), help="folder of the 12 input files")
    ap.add_argument("--concurrency", default="1,4,8", help="client counts, comma-separated")
    ap.add_argument("--no-grouping-run", action="store_true", help="skip the --batch-seconds 30 comparison")
    ap.add_argument("--engine-batching", type=int, default=0, metavar="ROUNDS",
                    help="only measure Engine.run on 4 requests in one call against one call each, alternating, ROUNDS times")
    args = ap.parse_args(argv)
    os.environ["RVCFAST_PROFILE"] = "off"  # here and in the servers: rvcfast's defaults, not a tuned profile

    import torch

    import rvcfast
    from rvcfast.audio import audio_info
    from rvcfast.testing import build_bench_models

    files = sorted(Path(args.audio).glob("*.wav"))
    if len(files) != 12:
        print(f"expected the 12 batch12 files in {args.audio}", file=sys.stderr)
        return 2
    audio_seconds = sum(audio_info(f)[0] for f in files)
    models = build_bench_models(args.models, log=lambda m: print(m, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="rvcfast-serve-bench-"))
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(files)} files, {audio_seconds:.1f} s of audio", file=sys.stderr)

    conv = rvcfast.Converter.from_pretrained(
        models["model"], index=models["index"], encoder=models["encoder"], f0_weights=models["f0_weights"], device="cpu"
    )
    conv.convert(str(files[0]))  # warm-up
    if args.engine_batching:
        return engine_batching(conv.engine, files[:4], args.engine_batching)

    def batch_run(tag: str) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), cpu_seconds()
        results = conv.convert_batch([str(f) for f in files], work / tag)
        assert all(r.ok for r in results)
        return time.perf_counter() - t0, cpu_seconds() - c0

    rows: list[str] = []
    server = Server(models, work / "server.log")
    others: Server | None = None
    try:
        server.wait_healthy()
        single_latency(server, files[0], rounds=1)  # warm-up
        rss0 = server.rss_mb()
        # each server run right after a convert_batch run: the pair sees the same machine
        for c in [int(x) for x in args.concurrency.split(",")]:
            tb, cb = batch_run(f"c{c}")
            f = load(server, files, c)
            print(f"c={c}: convert_batch {tb:.1f} s wall / {cb:.1f} s CPU; server {f}", file=sys.stderr)
            rows.append(f"| {c} | {tb:.1f} | {f['wall']:.1f} | {audio_seconds / f['wall']:.2f} | {f['p50']:.2f} | "
                        f"{f['p95']:.2f} | **{tb / f['wall']:.2f}×** | {cb:.1f} | {f['cpu']:.1f} |")
        # single 5 s requests, alternating with in-process convert
        lat_in, lat_srv = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            conv.convert(str(files[0]))
            lat_in.append(time.perf_counter() - t0)
            lat_srv.append(single_latency(server, files[0], rounds=1))
        l_in, l_srv = statistics.median(lat_in), statistics.median(lat_srv)
        rss1 = server.rss_mb()
        if not args.no_grouping_run:
            others = Server(models, work / "server30.log", "--batch-seconds", "30")
            others.wait_healthy()
            single_latency(others, files[0], rounds=1)
            single, grouped = load(server, files, 8), load(others, files, 8)
            print(f"8 clients: one request per call {single}, gathered {grouped}", file=sys.stderr)
    finally:
        server.stop()
        if others is not None:
            others.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nCPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(files)} files, {audio_seconds:.1f} s of audio; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| clients | convert_batch s | server wall s | audio s per s | p50 latency s | p95 latency s "
          "| throughput vs convert_batch | convert_batch CPU s | server CPU s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nsingle 5 s request (median of 3, alternating): server {l_srv:.2f} s, in-process convert {l_in:.2f} s "
          f"(**{l_srv / l_in:.2f}×**)")
    if not args.no_grouping_run:
        print(f"8 clients, one request per engine call (the CPU default): {single['wall']:.1f} s, p50 {single['p50']:.1f} s; "
              f"up to 30 s of requests per call (--batch-seconds 30): {grouped['wall']:.1f} s, p50 {grouped['p50']:.1f} s")
    print(f"server memory: {rss0:.0f} MB after warm-up, {rss1:.0f} MB after the load runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

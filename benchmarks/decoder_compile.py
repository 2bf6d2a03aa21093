"""The HiFi-GAN decoder per precision: rvcfast's fused eager path (also with every weight
prepacked, ``HiFiGAN.prepack_all``), the plain eager path and ``torch.compile`` with
inductor's ``freezing`` (weight prepacking, conv + pointwise fusion).

One 544-frame window (the CPU decoder window) of the full-size v2 40 kHz voice, 2 threads (``--threads``),
each variant in a fresh process; prints the compile time, the median of 5 calls after 2
warm-up calls, and the SNR of each variant's output against the fused path. Run::

    python benchmarks/decoder_compile.py [--dtypes float32 bfloat16] [--threads 2] [--models ~/.cache/rvcfast/bench-models]
    python benchmarks/decoder_compile.py --frames 32 --variants fused compile   # a quick check that it runs

The header line names the CPU, its flags and whether torch's kernels can use AMX (on a Linux
kernel that grants it). A variant that fails (``torch.compile`` needs a C++ compiler) is
reported in its row and the others still run (exit status 1).

A second run finds inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) warm; its compile
time is the one a later job would pay.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("fused", "prepacked", "plain", "compile")

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[6]))
from rvcfast.models.synthesizer import load_vocoder
model, dtype, variant, frames, out = sys.argv[1], getattr(torch, sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
dec = load_vocoder(model, "cpu", dtype).dec.eval()
gen = torch.Generator().manual_seed(0)
x = torch.randn(1, 192, frames, generator=gen).to(dtype)
g = torch.randn(1, 256, 1, generator=gen).to(dtype)
src = (0.1 * torch.randn(1, 1, frames * dec.upp, generator=gen)).to(dtype)
dec.fused_cpu = variant in ("fused", "prepacked")
if variant == "prepacked":  # every resblock weight handed to oneDNN prepacked, not only the noise convs'
    dec.prepack_all = True
    dec.prepare()
fn, compile_s = dec, 0.0
with torch.inference_mode():
    if variant == "compile":
        t = time.perf_counter()
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # a throwaway process: set inductor's switch directly
        fn = torch.compile(dec)
        fn(x, g, src, None)
        compile_s = time.perf_counter() - t
    for _ in range(2):
        y = fn(x, g, src, None)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        y = fn(x, g, src, None)
        times.append(time.perf_counter() - t)
torch.save(y.float(), out)
print(json.dumps({"compile_s": compile_s, "median_s": sorted(times)[2]}))
"""


def _snr(ref_path: str, out: str) -> str:
    """SNR of a variant's output against the fused path's, in dB ("exact" when equal)."""
    import torch

    ref, y = torch.load(ref_path), torch.load(out)
    err = (y - ref).pow(2).sum().item()
    return "exact" if err == 0 else f"{10 * torch.log10(ref.pow(2).sum() / err).item():.1f}"


def _measure(model: Path, dtype: str, variant: str, args: argparse.Namespace, out: str) -> dict | str:
    """One variant in a fresh process: ``{"compile_s", "median_s"}``, or why it failed (one line)."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), dtype, variant, str(args.frames), out, str(args.threads)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception)\b", ln)]  # the raised exception's line
        why = (errors or lines or ["no output"])[-1]
        return f"failed ({proc.returncode}): {why[:300]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        help="float16 runs only on a CPU with AVX512-FP16/AMX-FP16 (rvcfast refuses it elsewhere)")
    parser.add_argument("--frames", type=int, default=544, help="window length in frames (544: the CPU window)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each measured process (default 2)")
    parser.add_argument("--models", type=Path, default=Path("~/.cache/rvcfast/bench-models").expanduser())
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which variants (the fused one always runs: it is the reference)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpu_convert import machine_line, refused_dtypes

    from rvcfast.testing import build_bench_models

    model = build_bench_models(args.models, log=print)["model"]
    refused = refused_dtypes(args.dtypes)
    variants = ["fused", *(v for v in args.variants if v != "fused")]
    print(f"\ndecoder, one {args.frames}-frame window, {args.threads} threads - [{machine_line()}]\n")
    for dtype, why in refused.items():
        print(f"{dtype}: skipped, rvcfast refuses it here: {why}\n")
    print("| dtype | variant | compile s | per window s | vs fused | SNR vs fused (dB) |")
    print("|---|---|---:|---:|---:|---:|")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (d for d in args.dtypes if d not in refused):
            ref_path = os.path.join(tmp, f"{dtype}_fused.pt")
            fused_s = None
            for variant in variants:
                out = os.path.join(tmp, f"{dtype}_{variant}.pt")
                r = _measure(model, dtype, variant, args, out)
                if isinstance(r, str):  # e.g. inductor without a C++ compiler: the other rows still come
                    failures += 1
                    print(f"| {dtype} | {variant} | | | | {r} |", flush=True)
                    if variant == "fused":
                        break
                    continue
                fused_s = fused_s or r["median_s"]
                print(
                    f"| {dtype} | {variant} | {r['compile_s']:.1f} | {r['median_s']:.3f} | "
                    f"{r['median_s'] / fused_s:.2f}x | {_snr(ref_path, out)} |",
                    flush=True,
                )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

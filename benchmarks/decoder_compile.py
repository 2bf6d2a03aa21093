"""The HiFi-GAN decoder per precision: rvcfast's fused eager path (also with every weight
prepacked, ``HiFiGAN.prepack_all``), the plain eager path and ``torch.compile`` with
inductor's ``freezing`` (weight prepacking, conv + pointwise fusion).

One 544-frame window (the CPU decoder window) of the full-size v2 40 kHz voice, 2 threads,
each variant in a fresh process; prints the compile time, the median of 5 calls after 2
warm-up calls, and the SNR of each variant's output against the fused path. Run::

    python benchmarks/decoder_compile.py [--dtypes float32 bfloat16] [--models ~/.cache/rvcfast/bench-models]

A second run finds inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) warm; its compile
time is the one a later job would pay.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("fused", "prepacked", "plain", "compile")

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--frames", type=int, default=544)
    parser.add_argument("--models", type=Path, default=Path("~/.cache/rvcfast/bench-models").expanduser())
    args = parser.parse_args()

    import torch

    from rvcfast.testing import build_bench_models
    from rvcfast.tuning import cpu_model

    model = build_bench_models(args.models, log=print)["model"]
    print(f"\ndecoder, one {args.frames}-frame window, 2 threads - {cpu_model()}, torch {torch.__version__}\n")
    print("| dtype | variant | compile s | per window s | vs fused | SNR vs fused (dB) |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            res = {}
            for variant in VARIANTS:
                out = os.path.join(tmp, f"{dtype}_{variant}.pt")
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, str(model), dtype, variant, str(args.frames), out],
                    capture_output=True, text=True, check=True,
                )
                res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
                ref, y = torch.load(os.path.join(tmp, f"{dtype}_fused.pt")), torch.load(out)
                err = (y - ref).pow(2).sum().item()
                snr = "exact" if err == 0 else f"{10 * torch.log10(ref.pow(2).sum() / err).item():.1f}"
                r = res[variant]
                print(
                    f"| {dtype} | {variant} | {r['compile_s']:.1f} | {r['median_s']:.3f} | "
                    f"{r['median_s'] / res['fused']['median_s']:.2f}x | {snr} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

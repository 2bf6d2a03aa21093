"""Real-time factor of :class:`rvcfast.realtime.RealtimeConverter`, block by block.

    python benchmarks/realtime.py                                  # full-size models, 3 settings
    python benchmarks/realtime.py --settings 0.25:1.0 0.5:2.0 --seconds 8 --threads 2
    python benchmarks/realtime.py --small --seconds 2              # smoke test (tiny models)

For each ``block:context`` setting (seconds), a converter at ``--rate`` converts
``speech_5s_44100.wav`` (looped to ``--seconds``; a synthetic sung-like signal when the
shared audio is absent) pushed one block at a time. The first two blocks are a warm-up
(oneDNN builds its kernels for each new shape); every later block is timed. Reported per
setting: the mean, median and worst compute seconds per block, the real-time factor (mean
compute / block length: below 1 keeps up with a live stream on this machine, with the
margin left for the device and the rest of the application), the latency the converter
adds by construction, and the share of the models (content encoder, F0, synthesizer) in
each block. The machine line (CPU model from ``lscpu``, usable CPUs, torch and its
threads) comes with every figure.

Models: the full-size random-weight v2 40 kHz voice, ``hubert_base.pt`` and RMVPE built once
by :func:`rvcfast.testing.build_bench_models` into ``$RVCFAST_BENCH_MODELS`` (default
``~/.cache/rvcfast/bench-models``): compute does not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))
DEFAULT_SETTINGS = ["0.25:1.0", "0.5:1.0", "0.1:0.5"]
WARMUP_BLOCKS = 2


def parse_setting(text: str) -> tuple[float, float]:
    """``"0.25:1.0"`` -> ``(block_seconds, context_seconds)``."""
    try:
        block, context = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is BLOCK:CONTEXT in seconds (e.g. 0.25:1.0), got {text!r}") from None
    return block, context


def machine_line() -> str:
    """CPU model (``lscpu``'s, else /proc/cpuinfo's), usable CPUs, torch version and threads."""
    import torch

    from rvcfast.runtime import available_cores
    from rvcfast.tuning import cpu_model

    model = cpu_model()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model} | {available_cores()} usable CPUs of {os.cpu_count()} | torch {torch.__version__}, {torch.get_num_threads()} threads"


def stream_audio(seconds: float, rate: int) -> np.ndarray:
    """Speech looped to ``seconds`` at ``rate`` (float32 mono)."""
    from rvcfast.dsp import resample

    path = SHARED / "audio" / "speech_5s_44100.wav"
    if path.is_file():
        import soundfile as sf

        x, sr = sf.read(path, dtype="float32", always_2d=True)
        x = resample(x.mean(axis=1), sr, rate, dtype=np.float32)
    else:
        from rvcfast.testing import synth_test_audio

        x = synth_test_audio(5.0, rate).astype(np.float32)
    n = int(round(seconds * rate))
    return np.resize(x, n).astype(np.float32)


def _timed(obj: Any, name: str, bucket: dict[str, float], key: str) -> None:
    """Wrap ``obj.name`` so that its seconds add up in ``bucket[key]``."""
    real: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            bucket[key] = bucket.get(key, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


def measure(conv: Any, block: float, context: float, seconds: float, rate: int) -> dict[str, Any]:
    """Push ``seconds`` of audio block by block; the timings of every block after the warm-up."""
    from rvcfast.realtime import RealtimeConverter

    rt = RealtimeConverter(conv, sample_rate=rate, block_seconds=block, context_seconds=context)
    eng = conv.engine
    stages: dict[str, float] = {}
    _timed(eng.encoder, "encode", stages, "encoder")
    if rt._extractor is not None:
        _timed(rt._extractor, "extract", stages, "f0")
    _timed(eng.vocoder, "synthesize", stages, "synthesizer")
    x = stream_audio(seconds, rate)
    b = rt.block_size
    times: list[float] = []
    totals: dict[str, float] = {}
    for k in range(x.shape[0] // b):
        stages.clear()
        t0 = time.perf_counter()
        rt.push(x[k * b : (k + 1) * b])
        dt = time.perf_counter() - t0
        if k >= WARMUP_BLOCKS:
            times.append(dt)
            for key, v in stages.items():
                totals[key] = totals.get(key, 0.0) + v
    for obj, name in ((eng.encoder, "encode"), (rt._extractor, "extract"), (eng.vocoder, "synthesize")):
        if obj is not None and name in vars(obj):
            delattr(obj, name)
    if not times:
        raise SystemExit(f"--seconds {seconds} gives no timed block for block {block} s (warm-up: {WARMUP_BLOCKS} blocks)")
    mean = statistics.fmean(times)
    return {
        "block_seconds": block,
        "context_seconds": context,
        "blocks": len(times),
        "mean_s": mean,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "rtf": mean / block,
        "latency_s": rt.latency_seconds,
        "decoded_frames": rt.geometry.decoded,
        "buffer_frames": rt.geometry.frames,
        "share": {key: v / sum(times) for key, v in totals.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in DEFAULT_SETTINGS],
                    metavar="BLOCK:CONTEXT", help=f"block and context seconds (default: {' '.join(DEFAULT_SETTINGS)})")
    ap.add_argument("--seconds", type=float, default=6.0, help="audio per setting (default 6)")
    ap.add_argument("--rate", type=int, default=48000, help="the stream's sample rate (default 48000)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--small", action="store_true", help="tiny models (a smoke test: the figures mean nothing)")
    ap.add_argument("--dtype", default="float32", help="the models' precision: float32, bfloat16, float16 or auto (default float32)")
    ap.add_argument("--f0-dtype", default=None, help="the F0 network's precision (default: the models', float32 on a CPU)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    import torch

    import rvcfast
    from rvcfast.testing import build_bench_models

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = build_bench_models(MODELS, small=args.small, log=print)
    conv = rvcfast.Converter.from_pretrained(
        paths["model"], encoder=paths["encoder"], f0_weights=paths["f0_weights"], device="cpu", dtype=args.dtype,
        f0_options={"dtype": args.f0_dtype} if args.f0_dtype else None,
    )
    machine = machine_line()
    models = " | SMALL MODELS (smoke test)" if args.small else " | full-size v2 40 kHz voice, hubert_base, RMVPE"
    f0_dtype = f", F0 network {args.f0_dtype}" if args.f0_dtype else ""
    print(f"{machine}{models} | {str(conv.engine.dtype).removeprefix('torch.')}{f0_dtype}")
    results = []
    for block, context in args.settings:
        r = measure(conv, block, context, args.seconds, args.rate)
        results.append(r)
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(r["share"].items()))
        print(
            f"block {block:.2f} s, context {context:.2f} s ({r['buffer_frames']} frames, {r['decoded_frames']} decoded): "
            f"{r['mean_s']:.3f} s/block mean, {r['median_s']:.3f} median, {r['max_s']:.3f} worst over {r['blocks']} blocks; "
            f"RTF {r['rtf']:.2f}; latency {1000 * r['latency_s']:.0f} ms + compute; {share}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "small": args.small, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

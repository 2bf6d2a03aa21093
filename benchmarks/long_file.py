"""Convert one long file and report peak RSS, real-time factor and length accuracy.

    python benchmarks/long_file.py --minutes 60 [--full-size] [--keep-length]

By default the reduced golden models from ``../shared/golden/models`` are used (fast
enough for a 1-hour check on 2 cores); ``--full-size`` uses the full-size random
models of the other benchmarks (``$RVCFAST_BENCH_MODELS``, default
``~/.cache/rvcfast/bench-models``; built there on first use). The input is
``speech_60s_16000.wav`` tiled to the requested length. Prints one JSON line, with the
machine (CPU model, flags, threads) in its ``"machine"`` field. Without ``--workdir`` the
input and output (~0.4 GB for an hour) go to a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--full-size", action="store_true")
    ap.add_argument("--keep-length", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ["RVCFAST_PROFILE"] = "off"  # an `rvcfast tune` profile would change the batch size measured
    if args.workdir is not None:
        return run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="rvcfast-long-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> int:
    """Build the input in ``work``, convert it there and print the JSON report."""
    import torch
    from cpu_convert import machine_line  # this folder's helper

    import rvcfast

    work.mkdir(parents=True, exist_ok=True)
    src = work / f"long_{args.minutes:g}min.wav"
    if not src.exists():
        base, sr = sf.read(SHARED / "audio" / "speech_60s_16000.wav", dtype="int16")
        n = int(args.minutes * 60 * sr)
        with sf.SoundFile(src, "w", sr, 1, "PCM_16") as f:
            done = 0
            while done < n:
                take = min(base.shape[0], n - done)
                f.write(base[:take])
                done += take
    if args.full_size:
        from rvcfast.testing import build_bench_models

        paths = build_bench_models(MODELS)
        kw = dict(index=paths["index"], encoder=paths["encoder"], f0_weights=paths["f0_weights"])
        model = paths["model"]
    else:
        m = SHARED / "golden" / "models"
        kw = dict(index=m / "index" / "v2_768.index", encoder=m / "contentvec_hf", f0_weights=m / "rmvpe_reduced.pt")
        model = m / "voice_v2_40k_f0.pth"
    conv = rvcfast.Converter.from_pretrained(model, device="cpu", **kw)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = conv.convert_batch([src], work / "out", keep_length=args.keep_length, noise=False)[0]
    wall = time.perf_counter() - t0
    if not res.ok:
        print(json.dumps({"error": res.error}))
        return 1
    info = sf.info(res.output_path)
    seconds_in = sf.info(src).frames / 16000
    expected = seconds_in * info.samplerate
    out = {
        "machine": machine_line(),
        "minutes": args.minutes,
        "full_size": args.full_size,
        "keep_length": args.keep_length,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_model_load_mb": rss_loaded,
        "wall_s": wall,
        "rtf": wall / seconds_in,
        "output_samples": info.frames,
        "expected_samples": expected,
        "length_error_samples": info.frames - expected,
        "hop": conv.vocoder.hop_length,
        "timings": res.timings,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

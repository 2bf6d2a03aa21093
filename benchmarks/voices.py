"""One input, several voices: :func:`rvcfast.convert_voices` against a loop of batches.

    python benchmarks/voices.py                          # batch12 to 4 voices, 2 rounds
    python benchmarks/voices.py --voices 2 --rounds 3 --threads 2
    python benchmarks/voices.py --small --voices 2 --rounds 1      # smoke test (tiny models)
    python benchmarks/voices.py --again                  # a server's analysis cache: the same audio again

Both ways convert every file of ``--inputs`` (default ``../shared/audio/batch12``, 12 x 5 s)
to ``--voices`` voices and write them (wav) into a temporary folder:

* ``loop``: one ``Converter.convert_batch`` per voice, one voice after another (what
  ``examples/several_voices.py`` did): each voice computes every file's F0 and content features;
* ``shared``: ``rvcfast.convert_voices`` over the same converters: F0 and features are
  computed once per file and read from memory by the other voices.

``--again`` measures the server's analysis cache (``rvcfast serve --analysis-cache-mb``)
instead: each file is converted once through an evicting ``SharedAnalysis`` (as the server's
engines are), then again with another key (``pitch=2``) through it and through the plain
engine, in turn; printed are the medians of the second conversions and their ratio.

The two run in turn in one process, ``--rounds`` times each after a warm-up of one file
(the models are loaded once, before any timing). Printed: the machine line, each round's
seconds, the medians, shared/loop with the range over rounds, the stage seconds of each
way (summed over files and voices), and the largest difference between the two ways'
outputs (the same work and noise seed: it must be 0 or float32 rounding). The voices are the same
full-size random-weight v2 40 kHz model (``rvcfast.testing.build_bench_models``) under
different names: compute does not depend on weight values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_convert import machine_line  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=Path, default=SHARED / "audio" / "batch12", help="folder of audio files (default: %(default)s)")
    p.add_argument("--voices", type=int, default=4, help="number of voices (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds of each way (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--small", action="store_true", help="tiny models (a smoke test; the figures mean nothing)")
    p.add_argument("--again", action="store_true", help="time the same audio converted again through the analysis cache")
    return p


def _converters(models: dict[str, Path], n: int, folder: Path) -> list:
    import rvcfast

    convs = []
    for k in range(n):
        link = folder / f"voice{k + 1}.pth"  # the voice's name is its file's stem
        if not link.exists():
            link.symlink_to(models["model"])
        convs.append(rvcfast.Converter.from_pretrained(
            link, index=models["index"], encoder=models["encoder"], f0_weights=models["f0_weights"], device="cpu",
        ))
    return convs


def _stage_sums(results: list) -> dict[str, float]:
    sums: dict[str, float] = {}
    for r in results:
        for stage, seconds in r.timings.items():
            sums[stage] = sums.get(stage, 0.0) + seconds
    return sums


def _stages(sums: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(sums.items(), key=lambda kv: -kv[1]))


def _largest_difference(a: Path, b: Path) -> float:
    worst = 0.0
    for f in sorted(a.rglob("*.wav")):
        x, _ = sf.read(f, dtype="float32")
        y, _ = sf.read(b / f.relative_to(a), dtype="float32")
        worst = max(worst, float(np.abs(x - y).max()) if x.shape == y.shape else float("inf"))
    return worst


def _again(conv, files: list[Path]) -> int:
    """Each file converted again with another key: through the memo (after a first conversion) and without it."""
    import rvcfast

    memo = rvcfast.SharedAnalysis(64, evict=True, max_track_mb=4)
    cached = rvcfast.Converter.from_engine(memo.engine(conv.engine))
    conv.convert(files[0], seed=0)  # warm-up
    plain_s, cached_s = [], []
    for f in files:
        cached.convert(f, seed=0)  # the first request for this audio fills the memo
        t0 = time.perf_counter()
        a = conv.convert(f, seed=0, pitch=2).audio
        plain_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = cached.convert(f, seed=0, pitch=2).audio
        cached_s.append(time.perf_counter() - t0)
        if a.shape != b.shape or np.abs(a - b).max() > 1e-5 * max(np.abs(a).max(), 1e-3):
            raise SystemExit(f"{f.name}: the cached conversion differs from the plain one")
    plain, cached_m = statistics.median(plain_s), statistics.median(cached_s)
    print(f"again with pitch=2, per file (median of {len(files)}): plain {plain:.2f} s, through the cache {cached_m:.2f} s, "
          f"ratio {cached_m / plain:.3f}; reused {memo.f0_reused} F0 tracks and {memo.features_reused} segments' features")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.voices < 1 or args.rounds < 1:
        raise SystemExit("--voices and --rounds must be at least 1")
    files = sorted(f for f in args.inputs.glob("*") if f.suffix.lower() in (".wav", ".flac"))
    if not files:
        raise SystemExit(f"no .wav/.flac files in {args.inputs}")
    import torch

    import rvcfast
    from rvcfast.testing import build_bench_models

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    models = build_bench_models(MODELS / ("small" if args.small else "full"), small=args.small)
    seconds = sum(sf.info(f).duration for f in files)
    if args.again:
        with tempfile.TemporaryDirectory() as tmp:
            return _again(_converters(models, 1, Path(tmp))[0], files)
    print(f"{len(files)} files, {seconds:.1f} s of audio, to {args.voices} voices")
    times: dict[str, list[float]] = {"loop": [], "shared": []}
    stages: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        convs = _converters(models, args.voices, root)
        convs[0].convert_batch(files[:1], root / "warmup")  # oneDNN's kernels for these shapes, the lazy imports
        for rnd in range(args.rounds):
            for way in ("loop", "shared"):
                out = root / f"{way}{rnd}"
                t0 = time.perf_counter()
                if way == "loop":
                    results = [r for c in convs for r in c.convert_batch(files, out / c.engine.name, seed=0)]
                else:
                    results = rvcfast.convert_voices(convs, files, out, seed=0)
                times[way].append(time.perf_counter() - t0)
                failed = [r.error for r in results if not r.ok]
                if failed:
                    raise SystemExit(f"{way}: {len(failed)} conversions failed, e.g. {failed[0]}")
                stages[way] = _stage_sums(results)
                print(f"round {rnd + 1} {way}: {times[way][-1]:.1f} s", flush=True)
        diff = _largest_difference(root / "loop0", root / "shared0")
    loop, shared = statistics.median(times["loop"]), statistics.median(times["shared"])
    ratios = [s / lo for s, lo in zip(times["shared"], times["loop"])]
    print(f"loop {loop:.1f} s, shared {shared:.1f} s (medians of {args.rounds}); shared/loop {shared / loop:.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f})")
    for way in ("loop", "shared"):
        print(f"stages, {way}: {_stages(stages[way])}")
    print(f"largest difference between the two ways' outputs: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

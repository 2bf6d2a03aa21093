"""Convert every audio file in a folder, with a progress bar and a stage-timing summary.

    python examples/make_demo_models.py       # once: small random models + clips
    python examples/batch_folder.py           # demo-models/audio/ -> converted/
    python examples/batch_folder.py --input my_takes/ --output out/ --model voice.pth --index voice.index

This is what ``rvcfast convert`` does, written out with the Python API:

1. ``Converter.from_pretrained`` loads the voice model and its index once; the content
   encoder and RMVPE come from the process-wide cache.
2. ``iter_batch`` converts the files in batches (decoding and writing overlap the model
   work) and yields a ``Result`` per file as soon as it is written.
3. A file that fails is reported in its Result and the others carry on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import rvcfast
from rvcfast.batch import BatchSummary
from rvcfast.progress import BatchProgress

HERE = Path(__file__).resolve().parent


def main() -> int:
    demo = HERE / "demo-models"
    p = argparse.ArgumentParser(description="Convert a folder of audio files to one voice.")
    p.add_argument("--models", type=Path, default=demo, help="folder written by make_demo_models.py (default: %(default)s)")
    p.add_argument("--model", type=Path, help="voice model .pth (default: MODELS/voice.pth)")
    p.add_argument("--index", type=Path, help="faiss .index (default: MODELS/voice.index)")
    p.add_argument("--encoder", type=Path, help="hubert_base.pt (default: MODELS/hubert_base.pt)")
    p.add_argument("--f0-weights", type=Path, help="rmvpe.pt (default: MODELS/rmvpe.pt)")
    p.add_argument("--input", type=Path, help="folder of audio files (default: MODELS/audio)")
    p.add_argument("--output", type=Path, default=Path("converted"), help="output folder (default: %(default)s)")
    p.add_argument("--pitch", type=float, default=0.0, help="key shift in semitones (default: 0)")
    p.add_argument("--format", default="wav", choices=["wav", "flac", "ogg"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: auto)")
    args = p.parse_args()

    conv = rvcfast.Converter.from_pretrained(
        args.model or args.models / "voice.pth",
        index=args.index or args.models / "voice.index",
        encoder=args.encoder or args.models / "hubert_base.pt",
        f0="rmvpe",
        f0_weights=args.f0_weights or args.models / "rmvpe.pt",
        device=args.device,
    )
    folder = args.input or args.models / "audio"
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"})

    summary = BatchSummary()
    start = time.perf_counter()
    # BatchProgress draws a bar on a terminal and prints one line per file otherwise.
    with BatchProgress(total_files=len(files)) as bar:
        for result in conv.iter_batch(files, args.output, format=args.format, pitch=args.pitch, skip_existing=False):
            summary.add(result)  # totals and per-stage timings
            bar.update(result)
    summary.wall_seconds = time.perf_counter() - start

    print(summary.table())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())

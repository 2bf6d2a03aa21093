"""Convert the same inputs to several voices; the base models are loaded, and each input analysed, once.

    python examples/make_demo_models.py       # once
    python examples/several_voices.py
    python examples/several_voices.py --voices a.pth b.pth --inputs song.wav --output out/

Each ``Converter`` holds one voice model (and its index). The content encoder and the
RMVPE model come from rvcfast's process-wide cache, so a second, third... Converter costs
only its own voice model -- ``rvcfast.cache.load_count`` shows it. ``rvcfast.convert_voices``
then computes each input's F0 and content features once for all the voices
(``SharedAnalysis`` counts what was computed and what was reused).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import rvcfast
from rvcfast import cache

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description="Convert inputs to several voices, sharing the base models.")
    p.add_argument("--models", type=Path, default=HERE / "demo-models", help="folder written by make_demo_models.py (default: %(default)s)")
    p.add_argument("--voices", type=Path, nargs="+", help="voice models (default: MODELS/voice.pth MODELS/voice48k.pth)")
    p.add_argument("--inputs", type=Path, nargs="+", help="audio files (default: MODELS/input.wav)")
    p.add_argument("--output", type=Path, default=Path("voices-out"), help="output folder (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    voices = args.voices or [args.models / "voice.pth", args.models / "voice48k.pth"]
    inputs = args.inputs or [args.models / "input.wav"]

    convs = []
    for voice in voices:
        t0 = time.perf_counter()
        index = voice.with_suffix(".index")
        convs.append(rvcfast.Converter.from_pretrained(
            voice,
            index=index if index.is_file() else None,  # an index is optional
            encoder=args.models / "hubert_base.pt",
            f0_weights=args.models / "rmvpe.pt",
            device=args.device,
        ))
        print(f"{voice.name}: {convs[-1].sample_rate} Hz, loaded in {time.perf_counter() - t0:.2f} s")

    # One sub-folder per voice ("{voice}/{stem}"); outputs keep the input names.
    shared = rvcfast.SharedAnalysis()
    for r in rvcfast.convert_voices(convs, inputs, args.output, speaker=0, seed=0, shared=shared):
        status = r.output_path if r.ok else f"FAILED: {r.error}"
        print(f"{r.voice}: {r.source} -> {status}")

    print(f"F0 tracks computed {shared.f0_computed}, reused {shared.f0_reused}; "
          f"segment features computed {shared.features_computed}, reused {shared.features_reused}")
    print(f"content encoder loads: {cache.load_count('encoder')}, RMVPE loads: {cache.load_count('rmvpe')}")


if __name__ == "__main__":
    main()

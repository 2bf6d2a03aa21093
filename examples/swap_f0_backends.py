"""Same voice, same input, different pitch (F0) trackers.

    python examples/make_demo_models.py       # once
    python examples/swap_f0_backends.py
    python examples/swap_f0_backends.py --backends rmvpe crepe fcpe "hybrid:rmvpe+harvest"

Three ways to choose the F0 backend:

* by name in ``Converter.from_pretrained(..., f0="harvest")`` (``rvcfast backends`` lists them);
* by building an extractor with ``rvcfast.get_f0_extractor(name, **options)`` and handing the
  object to a Converter -- here, to swap trackers while keeping the loaded voice model;
* with any object that has ``name``, ``sample_rate`` (16000), ``hop_length`` (160),
  ``extract(audio16k)`` and ``extract_batch(list)`` -- see ``FixedPitch`` below and
  docs/plugins.md for making it installable.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import rvcfast
from rvcfast.audio import load_audio_16k

HERE = Path(__file__).resolve().parent


class FixedPitch:
    """A toy F0 'tracker': the same pitch on every frame. Satisfies rvcfast.F0Extractor by shape."""

    name = "fixed"
    sample_rate = 16000
    hop_length = 160

    def __init__(self, hz: float = 220.0) -> None:
        self.hz = hz

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        return np.full(len(audio16k) // self.hop_length + 1, self.hz)  # one value per 10 ms frame

    def extract_batch(self, audios):
        return [self.extract(a) for a in audios]


def main() -> None:
    p = argparse.ArgumentParser(description="Convert one input with several F0 backends.")
    p.add_argument("--models", type=Path, default=HERE / "demo-models", help="folder written by make_demo_models.py (default: %(default)s)")
    p.add_argument("--input", type=Path, help="audio file (default: MODELS/input.wav)")
    p.add_argument("--backends", nargs="+", default=["rmvpe", "harvest", "dio", "crepe-tiny", "hybrid:rmvpe+dio"])
    p.add_argument("--output", type=Path, help="folder to write one converted file per backend (optional)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    source = args.input or args.models / "input.wav"

    print("available:", ", ".join(rvcfast.available_f0_extractors()))
    base = rvcfast.Converter.from_pretrained(
        args.models / "voice.pth",
        index=args.models / "voice.index",
        encoder=args.models / "hubert_base.pt",
        f0_weights=args.models / "rmvpe.pt",
        device=args.device,
    )
    audio16k = load_audio_16k(source)  # what the trackers see: mono, 16 kHz

    extractors = []
    for name in args.backends:
        # Options go to the backend; rmvpe (alone or in a hybrid) needs its weights file.
        options = {"weights": args.models / "rmvpe.pt"} if name == "rmvpe" else {}
        if name.startswith("hybrid") and "rmvpe" in name:
            options = {"rmvpe": {"weights": args.models / "rmvpe.pt"}}
        try:
            extractors.append(rvcfast.get_f0_extractor(name, device=args.device, **options))
        except rvcfast.BackendUnavailableError as exc:  # e.g. an optional extra not installed
            print(f"{name:<18} skipped: {exc}")
    extractors.append(FixedPitch(220.0))

    for ext in extractors:
        # A Converter built from the already-loaded parts: only the F0 tracker changes.
        conv = rvcfast.Converter(base.vocoder, base.encoder, ext, base.index, device=base.device)
        t0 = time.perf_counter()
        result = conv.convert(source, noise=False)
        seconds = time.perf_counter() - t0
        f0 = np.asarray(ext.extract(audio16k))
        voiced = f0 > 0
        median = float(np.median(f0[voiced])) if voiced.any() else 0.0
        print(f"{ext.name:<18} {100 * voiced.mean():5.1f}% voiced, median {median:7.1f} Hz, "
              f"converted in {seconds:.2f} s (f0 stage {result.timings['f0']:.3f} s)")
        if args.output:
            import soundfile as sf

            args.output.mkdir(parents=True, exist_ok=True)
            safe = ext.name.replace(":", "_").replace("+", "_")
            sf.write(args.output / f"{source.stem}_{safe}.wav", result.audio, result.sample_rate)


if __name__ == "__main__":
    main()

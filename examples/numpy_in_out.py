"""Arrays in, arrays out: convert numpy audio without touching the file system.

    python examples/make_demo_models.py       # once
    python examples/numpy_in_out.py

``Converter.convert(array, sample_rate)`` takes float or integer audio, mono ``[samples]``
or ``[samples, channels]``, at any rate (it is resampled to 16 kHz internally), and
returns a ``Result`` whose ``audio`` is float32 mono at the model's rate (or at
``output_sample_rate``). ``convert_batch`` takes ``(array, rate)`` pairs and, without an
output folder, returns the audio in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import rvcfast

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description="Convert numpy arrays and get numpy arrays back.")
    p.add_argument("--models", type=Path, default=HERE / "demo-models", help="folder written by make_demo_models.py (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--save", type=Path, help="also write the first result to this .wav file")
    args = p.parse_args()

    conv = rvcfast.Converter.from_pretrained(
        args.models / "voice.pth",
        index=args.models / "voice.index",
        encoder=args.models / "hubert_base.pt",
        f0_weights=args.models / "rmvpe.pt",
        device=args.device,
    )

    # A 1 s, 220 Hz stereo tone at 22.05 kHz as int16 -- any rate, dtype and channel count work.
    rate = 22050
    t = np.arange(rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.005 * np.random.default_rng(0).standard_normal(rate)
    stereo_int16 = (np.stack([tone, tone], axis=1) * 32767).astype(np.int16)

    # One array. seed= makes the model's noise reproducible; noise=False removes it.
    result = conv.convert(stereo_int16, rate, pitch=12, seed=0)
    print(f"in : {stereo_int16.shape} {stereo_int16.dtype} at {rate} Hz")
    print(f"out: {result.audio.shape} {result.audio.dtype} at {result.sample_rate} Hz, {result.duration:.2f} s")
    print("stage timings:", {k: round(v, 3) for k, v in result.timings.items()})

    again = conv.convert(stereo_int16, rate, pitch=12, seed=0)
    assert np.array_equal(result.audio, again.audio), "same seed, same output"

    # Several arrays at once, batched through the models; results come back in input order.
    pieces = [(tone[: rate // 2], rate), (tone, rate), (np.zeros(8000, np.float32), 16000)]
    results = conv.convert_batch(pieces, output_sample_rate=16000, noise=False)
    for r in results:
        print(f"array[{r.index}]: {r.audio.shape[0]} samples at {r.sample_rate} Hz, ok={r.ok}")

    if args.save:
        import soundfile as sf

        sf.write(args.save, result.audio, result.sample_rate)
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()

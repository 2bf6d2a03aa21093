"""How far a reduced precision (bfloat16) lands from float32, stage by stage and end to end.

    python benchmarks/bf16_quality.py                 # full-size random models, batch12
    python benchmarks/bf16_quality.py --golden        # the reduced golden models, the golden 5 s and 49 s clips
    python benchmarks/bf16_quality.py --dtype float16 # a CPU with AVX512-FP16 / AMX-FP16 (--device cuda: a GPU)
    python benchmarks/bf16_quality.py --f0-low        # the F0 network in bfloat16 too (CPU default: float32)
    python benchmarks/bf16_quality.py --vocoder RefineGAN  # a random Applio voice with that decoder

Each stage gets the *same float32 inputs* in both precisions, so its figure is its own
error, not the sum of the stages before it:

* F0 (RMVPE): voiced/unvoiced disagreements, and the largest / median pitch difference
  in cents on frames both call voiced;
* features (content encoder): SNR of the encoder output;
* synthesis (voice model): SNR of the audio from the float32 features and pitch;
* end to end: SNR of the converted file (all stages in the lower precision), worst and
  median over the files.

Noise is off (``noise=False``) so both runs are deterministic. SNR = 10 log10(sum ref^2 /
sum (test - ref)^2). The CPU line is printed with the figures.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10 of signal over error energy (inf when equal)."""
    ref = np.asarray(ref, dtype=np.float64).ravel()
    err = np.asarray(test, dtype=np.float64).ravel() - ref
    e = float(np.sum(err * err))
    return float("inf") if e == 0 else 10.0 * np.log10(float(np.sum(ref * ref)) / e)


def f0_stats(ref: np.ndarray, test: np.ndarray) -> tuple[int, float, float]:
    """(voicing disagreements, max and median |cents| on frames both voice)."""
    ref, test = np.asarray(ref, dtype=np.float64), np.asarray(test, dtype=np.float64)
    flips = int(np.sum((ref > 0) != (test > 0)))
    both = (ref > 0) & (test > 0)
    if not both.any():
        return flips, 0.0, 0.0
    cents = np.abs(1200.0 * np.log2(test[both] / ref[both]))
    return flips, float(cents.max()), float(np.median(cents))


def _engines(args: argparse.Namespace):
    import torch

    from rvcfast.engine import Engine

    if args.golden:
        g = SHARED / "golden" / "models"  # what tests/test_e2e_golden.py converts
        kw = dict(index=g / "index" / "v2_768.index", encoder=g / "contentvec_hf", f0="rmvpe",
                  f0_weights=g / "rmvpe_reduced.pt")
        model = g / "voice_v2_40k_f0.pth"
        files = [SHARED / "golden" / "audio" / "e2e_short_16k.wav", SHARED / "golden" / "audio" / "e2e_long_16k.wav"]
    else:
        from rvcfast.testing import build_bench_models

        paths = build_bench_models(MODELS)
        kw = dict(index=paths["index"], encoder=paths["encoder"], f0="rmvpe", f0_weights=paths["f0_weights"])
        model = paths["model"]
        if args.vocoder != "HiFi-GAN":  # Applio's decoders: a random full-size Applio voice, 40 kHz
            from rvcfast.testing import save_random_applio_model

            model = MODELS / f"applio_{args.vocoder.replace(' ', '_')}_40k.pth"
            if not model.exists():
                save_random_applio_model(model, 40000, vocoder=args.vocoder)
        files = [Path(f) for f in sorted(glob.glob(str(args.inputs / "*.wav")))]
    if not files:
        raise SystemExit(f"--inputs {args.inputs}: no .wav files there (pass --inputs or set RVCFAST_SHARED)")
    device = args.device
    ref = Engine.load(model, device=device, dtype=torch.float32, **kw)
    f0_options = {"dtype": args.dtype} if args.f0_low else None
    low = Engine.load(model, device=device, dtype=args.dtype, f0_options=f0_options, **kw)
    return ref, low, files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", help="the reduced precision: bfloat16 or float16")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--golden", action="store_true", help="the reduced golden models instead of full-size random ones")
    ap.add_argument("--inputs", type=Path, default=SHARED / "audio" / "batch12")
    ap.add_argument("--f0-low", action="store_true",
                    help="run the F0 network in the reduced precision too (on a CPU it stays float32 by default)")
    ap.add_argument("--vocoder", default="HiFi-GAN", choices=["HiFi-GAN", "MRF HiFi-GAN", "RefineGAN"],
                    help="the voice model's decoder (not with --golden): RVC's HiFi-GAN or one of Applio's")
    args = ap.parse_args(argv)
    if args.golden and args.vocoder != "HiFi-GAN":
        ap.error("--vocoder is for the full-size random models (the golden models are HiFi-GAN)")
    os.environ["RVCFAST_PROFILE"] = "off"  # the measured engines must not take settings from `rvcfast tune`

    import torch
    from cpu_convert import machine_line  # noqa: E402 - this folder's helper

    from rvcfast.errors import ParameterError
    from rvcfast.runtime import resolve_device, resolve_dtype

    try:
        resolve_dtype(args.dtype, resolve_device(args.device))
    except ParameterError as exc:
        raise SystemExit(f"--dtype {args.dtype} --device {args.device}: {exc}") from None

    from rvcfast.f0.post import coarse_pitch
    from rvcfast.pipeline import segment_features

    torch.manual_seed(0)
    ref, low, files = _engines(args)
    params = ref.params(noise=False)
    rows = []
    for f in files:
        prep = ref.prepare(f, params=params)
        f0_ref, f0_low = ref.extract_f0([prep], params)[0], low.extract_f0([prep], params)[0]
        seg = prep.padded
        feats_ref = segment_features(ref.encoder, [seg], ref.vocoder.version, ref.device, torch.float32)[0]
        feats_low = segment_features(low.encoder, [seg], low.vocoder.version, low.device, low.dtype)[0]
        t = min(feats_ref.shape[0] * 2, len(f0_ref))
        x = feats_ref.repeat_interleave(2, dim=0)[:t][None]
        pitchf = torch.as_tensor(np.asarray(f0_ref[:t], dtype=np.float32))[None]
        pitch = torch.as_tensor(coarse_pitch(np.asarray(f0_ref[:t], dtype=np.float64))).long()[None]
        lengths = torch.tensor([t])
        audio_ref = ref.vocoder.synthesize(x, lengths, pitch, pitchf, noise=False)
        audio_low = low.vocoder.synthesize(x.to(low.dtype), lengths, pitch, pitchf, noise=False)
        e2e_ref = ref.run([prep], params)[0].audio
        e2e_low = low.run([prep], params)[0].audio
        flips, cmax, cmed = f0_stats(f0_ref, f0_low)
        rows.append(dict(file=f.name, flips=flips, frames=len(f0_ref), cents_max=cmax, cents_median=cmed,
                         features=snr_db(feats_ref.float().cpu(), feats_low.float().cpu()),
                         synth=snr_db(audio_ref.cpu(), audio_low.cpu()), e2e=snr_db(e2e_ref, e2e_low)))
        r = rows[-1]
        print(f"{r['file']:>28s}: F0 {r['flips']}/{r['frames']} voicing flips, max {r['cents_max']:.2f} cents "
              f"(median {r['cents_median']:.3f}); features {r['features']:.1f} dB; synthesis {r['synth']:.1f} dB; "
              f"end to end {r['e2e']:.1f} dB", flush=True)
    gpu = f" | {torch.cuda.get_device_name(ref.device)}" if ref.device.type == "cuda" else ""
    f0_note = f"F0 network in {args.dtype if args.f0_low else 'the engine default'}"
    print(f"\n# {args.dtype} vs float32, {'golden reduced' if args.golden else 'full-size random'} models "
          f"({args.vocoder}), {f0_note} "
          f"[{machine_line()}{gpu}]")
    for key in ("features", "synth", "e2e"):
        vals = [r[key] for r in rows]
        print(f"{key:>9s}: worst {min(vals):.1f} dB, median {statistics.median(vals):.1f} dB")
    print(f"       F0: {sum(r['flips'] for r in rows)} voicing flips in {sum(r['frames'] for r in rows)} frames, "
          f"max {max(r['cents_max'] for r in rows):.2f} cents")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

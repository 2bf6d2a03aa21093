"""Write small random-weight models in the real RVC file formats, plus a few test clips.

The other examples (and the code in docs/getting-started.md) run against these files,
so you can try rvcfast without downloading anything::

    python examples/make_demo_models.py            # -> examples/demo-models/
    python examples/batch_folder.py                # uses examples/demo-models/ by default

What is written (every file in the format RVC / Applio use, only much smaller):

    demo-models/
      voice.pth          v2, 40 kHz, with pitch (F0) -- an RVC WebUI-style voice model
      voice.index        faiss IVF-Flat index for it (768-d), readable by faiss too
      voice48k.pth       a second voice: v2, 48 kHz, with pitch, 2 speakers
      hubert_base.pt     content encoder in fairseq's hubert_base.pt layout
      rmvpe.pt           RMVPE pitch model (reduced architecture)
      input.wav          a 1.5 s sung-like test clip at 44.1 kHz
      audio/clip*.wav    three more clips (different rates and lengths)

Point ``RVCFAST_HOME`` at the folder and rvcfast finds ``hubert_base.pt`` and
``rmvpe.pt`` there like real base weights.

The weights are random, so the converted audio is noise-like, not a voice: these files
exercise the pipeline and show the API; they do not sound good. ``--full`` writes the
full-size architectures instead (about 500 MB) -- what `rvcfast bench` times.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from rvcfast.index import save_index
from rvcfast.testing import save_random_hubert, save_random_rmvpe, save_random_voice_model

HERE = Path(__file__).resolve().parent

# Narrow layers, real geometry: the decoder upsampling of each (version, rate) and
# HuBERT's convolution strides are the real ones, so every shape in the pipeline is too.
TINY_VOICE = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=32)
TINY_HUBERT = dict(
    layers=1,
    hidden=768,  # a v2 voice takes 768-d content features
    heads=4,
    ffn=64,
    conv_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,  # hop 320, receptive field 400
    conv_pos=15,
    conv_pos_groups=4,
)


def sung_clip(seconds: float, rate: int, base_hz: float, seed: int) -> np.ndarray:
    """A harmonic tone with vibrato and syllable-like loudness, plus a little breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = base_hz * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))  # 5.5 Hz vibrato, +-3 %
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    loudness = 0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t) ** 2
    return (0.25 * tone * loudness + 0.005 * rng.standard_normal(t.shape)).astype(np.float32)


def make_demo_models(out: Path, full: bool = False) -> dict[str, Path]:
    """Write the demo files into ``out`` and return their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    voice_kw = {} if full else TINY_VOICE
    hubert_kw = {} if full else TINY_HUBERT

    # Voice models: the .pth RVC's training writes (fp16 weights, weight-norm g/v pairs, config list).
    paths = {
        "voice": save_random_voice_model(out / "voice.pth", "v2", 40000, True, seed=1, **voice_kw),
        "voice48k": save_random_voice_model(
            out / "voice48k.pth", "v2", 48000, True, seed=2, num_speakers=2, sr_style="applio", **voice_kw
        ),
    }
    # Base weights, named as rvcfast looks for them in $RVCFAST_HOME or the cache.
    paths["hubert"] = save_random_hubert(out / "hubert_base.pt", "fairseq", **hubert_kw)
    paths["rmvpe"] = save_random_rmvpe(out / "rmvpe.pt", full_size=full)

    # A retrieval index: RVC trains it on the voice's content features; here clustered noise.
    rng = np.random.default_rng(0)
    n = 20000 if full else 600
    centres = rng.standard_normal((32, 768)).astype(np.float32)
    vectors = centres[rng.integers(0, 32, n)] + 0.3 * rng.standard_normal((n, 768)).astype(np.float32)
    save_index(out / "voice.index", vectors)
    paths["index"] = out / "voice.index"

    # Test audio.
    sf.write(out / "input.wav", sung_clip(1.5, 44100, 196.0, seed=0), 44100)
    paths["input"] = out / "input.wav"
    (out / "audio").mkdir(exist_ok=True)
    for i, (seconds, rate, hz) in enumerate([(1.0, 44100, 147.0), (0.6, 16000, 262.0), (1.2, 48000, 330.0)], 1):
        p = out / "audio" / f"clip{i}.wav"
        sf.write(p, sung_clip(seconds, rate, hz, seed=i), rate)
        paths[f"clip{i}"] = p
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "demo-models", help="folder to write (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="full-size architectures (~500 MB) instead of tiny ones")
    args = parser.parse_args()
    paths = make_demo_models(args.out, full=args.full)
    for name, path in paths.items():
        print(f"{name:<9} {path}")
    print(f"\nTip: export RVCFAST_HOME={args.out.resolve()} so rvcfast finds hubert_base.pt and rmvpe.pt there.")


if __name__ == "__main__":
    main()

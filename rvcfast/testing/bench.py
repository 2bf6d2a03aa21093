"""Benchmark material: random-weight models in the real formats and a sung-like test signal.

:func:`build_bench_models` writes (once, then reuses) a full-size or tiny voice model,
content encoder, RMVPE and index; :func:`synth_test_audio` makes deterministic test
clips. ``rvcfast bench``, the benchmarks and the examples use them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .hubert import save_random_hubert
from .rmvpe import save_random_rmvpe
from .voice import save_random_voice_model

__all__ = ["SMALL_VOICE", "SMALL_HUBERT", "build_bench_models", "synth_test_audio"]

# Architecture of the tiny models of `--small` (and of the examples and tests).
SMALL_VOICE: dict[str, Any] = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=32)
SMALL_HUBERT: dict[str, Any] = dict(
    layers=1, hidden=768, heads=4, ffn=64,
    conv_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    conv_pos=15, conv_pos_groups=4,
)


def _atomic_build(target: Path, build: Any) -> Path:
    """Run ``build(tmp_path)`` and rename the result into place (no half-written models).

    ``tmp_path`` has the target's own name, in a private temporary folder next to it: each
    concurrent build (other processes, other threads) writes its own file, and ``torch.save``,
    which names the records inside the zip after the file, writes the same bytes as a file
    saved directly under the final name.
    """
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        tmp = tmp_dir / target.name
        build(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def build_bench_models(folder: str | os.PathLike[str], small: bool = False, *, log: Any = None) -> dict[str, Path]:
    """Random-weight models in the real file formats, built once and reused.

    Full size (default): a v2 40 kHz voice with F0 (RVC's architecture, ~55 MB),
    ``hubert_base.pt`` in the fairseq layout (~190 MB), ``rmvpe.pt`` (~181 MB) and an
    IVF-Flat index of 20,000 x 768 vectors. ``small=True``: the same formats with tiny
    widths (a few MB) for quick checks. Files that already exist are reused.
    Returns ``{"model", "index", "encoder", "f0_weights"}`` paths.
    """
    from ..index import save_index

    root = Path(folder).expanduser() / ("small" if small else "full")
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "model": root / "voice_v2_40k.pth",
        "index": root / "voice_v2_40k.index",
        "encoder": root / "hubert_base.pt",
        "f0_weights": root / "rmvpe.pt",
    }
    n_vectors = 2000 if small else 20000

    def index(tmp: Path) -> None:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((64, 768)).astype(np.float32)
        vectors = centres[rng.integers(0, 64, n_vectors)] + 0.3 * rng.standard_normal((n_vectors, 768)).astype(np.float32)
        save_index(tmp, vectors)

    builders = {
        "model": lambda tmp: save_random_voice_model(tmp, "v2", 40000, True, **(SMALL_VOICE if small else {})),
        "encoder": lambda tmp: save_random_hubert(tmp, "fairseq", **(SMALL_HUBERT if small else {})),
        "f0_weights": lambda tmp: save_random_rmvpe(tmp, full_size=not small),
        "index": index,
    }
    for key, path in paths.items():
        if not path.is_file():
            if log:
                log(f"building {path.name} ...")
            _atomic_build(path, builders[key])
    return paths


def synth_test_audio(seconds: float, rate: int = 44100, seed: int = 0) -> np.ndarray:
    """A sung-like test signal: a harmonic tone with vibrato, glides and syllable gating, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    base = float(rng.choice([110.0, 147.0, 196.0, 262.0, 330.0]))
    glide = 2.0 ** (rng.uniform(-0.25, 0.25) * np.sin(2 * np.pi * t / max(seconds, 1.0)))
    vibrato = 1.0 + 0.03 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi))
    f0 = base * glide * vibrato
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 9) if k * base < rate / 2 * 0.9)
    gate = 0.55 + 0.45 * np.sin(2 * np.pi * 2.0 * t) ** 2  # syllable-like loudness
    x = 0.25 * voice * gate + 0.003 * rng.standard_normal(n)
    return x.astype(np.float32)

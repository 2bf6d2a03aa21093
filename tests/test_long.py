"""Long inputs: bounded memory for an hour of audio, no drift, seamless segment joins.

The 1-hour run is marked slow (``python -m pytest -m slow`` or ``nox -s slow``); it
runs ``benchmarks/long_file.py`` in a subprocess so the peak RSS is that of the
conversion alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import rvcfast
from rvcfast.segment import SegmentConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_one_hour_file_bounded_memory_and_length(golden, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "long_file.py"), "--minutes", "60", "--keep-length", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=5400, check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["peak_rss_mb"] < 3000, report
    assert abs(report["length_error_samples"]) <= report["hop"], report


@pytest.mark.slow
def test_segment_joins_are_seamless(golden):
    """A 90 s input converted with splits vs. in one pass: the joins add no click."""
    x, _ = sf.read(golden / "audio" / "e2e_long_16k.wav", dtype="float32")
    audio = np.concatenate([x, x])[: 16000 * 90].astype(np.float64)
    m = golden / "models"
    conv = rvcfast.Converter.from_pretrained(
        m / "voice_v2_40k_f0.pth", encoder=m / "contentvec_hf", f0_weights=m / "rmvpe_reduced.pt", device="cpu"
    )
    split = conv.convert(audio, 16000, noise=False, keep_length=True).audio
    conv.segment_config = SegmentConfig(x_max=10**6)  # never split: one pass
    whole = conv.convert(audio, 16000, noise=False, keep_length=True).audio
    assert abs(split.shape[0] - whole.shape[0]) <= 400
    n = min(split.shape[0], whole.shape[0])
    err = split[:n] - whole[:n]
    snr = 10 * np.log10(np.sum(whole[:n] ** 2) / np.sum(err**2))
    assert snr > 20, snr

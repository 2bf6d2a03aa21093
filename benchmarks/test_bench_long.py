"""One 5-minute file through the full-size v2 40 kHz model with RMVPE + index (fp32).

The file is the seed's 12 recordings joined five times over (5 min at 44.1 kHz), so the
speech is real; ``convert_batch`` streams it in segments. Reported: wall time; the
real-time factor (wall / 300 s) is in the benchmark's ``extra_info``.

The 1-hour file (RSS and RTF) is ``benchmarks/long_file.py`` (a script: its peak RSS must
be that of a process doing nothing else); ``tests/test_long.py`` runs it in the slow suite.

Run: ``python -m pytest benchmarks/test_bench_long.py --benchmark-only -m ""``.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
from conftest import QUICK, record

import rvcfast

MINUTES = 0.25 if QUICK else 5  # a 15 s file in a quick smoke run


def test_five_minute_file(benchmark, full_models, batch12, tmp_path):
    parts, rate = [], None
    for f in batch12:
        x, rate = sf.read(f, dtype="float32", always_2d=True)
        parts.append(x.mean(axis=1))
    one = np.concatenate(parts)
    n = int(MINUTES * 60 * rate)
    audio = np.tile(one, -(-n // one.shape[0]))[:n]
    src = tmp_path / "five_minutes.wav"
    sf.write(src, audio, rate, subtype="PCM_16")

    m = full_models
    conv = rvcfast.Converter.from_pretrained(
        m["model"], index=m["index"], encoder=m["encoder"], f0="rmvpe", f0_weights=m["f0_weights"], device="cpu",
        dtype=torch.float32,
    )
    conv.convert(batch12[0])  # warm-up
    out = tmp_path / "out"
    results = benchmark.pedantic(lambda: conv.convert_batch([src], out), rounds=1, iterations=1)
    assert results[0].ok, results[0].error
    y, sr = sf.read(results[0].output_path)
    assert abs(y.shape[0] / sr - MINUTES * 60) < 1.5
    mean = record("five_minute_file", benchmark)
    if mean is not None:
        benchmark.extra_info["real_time_factor"] = mean / (MINUTES * 60)

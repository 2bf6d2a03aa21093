"""The seed's workload: 12 × 5 s files (44.1 kHz) through a full-size v2 40 kHz model with RMVPE + index.

Variants, all in one run so the ratios compare like with like:

* ``batch12_convert_batch``       — ``Converter.convert_batch`` (models loaded once, files batched).
* ``batch12_loop_one_converter``  — one Converter, ``convert`` + write per file.
* ``batch12_reload_per_file``     — a fresh Converter per file with the model cache cleared each time
  (what Applio does: RMVPE and the index reloaded for every file).
* ``batch12_floor_forwards``      — the bare network forwards for the same audio (RMVPE mel + net,
  content encoder, synthesizer), batched the way ``convert_batch`` batches them; no decoding,
  filtering, index, post-processing or writing. The floor nothing can beat.
* ``batch12_convert_batch_bf16``  — ``convert_batch`` in bfloat16.

Run: ``python -m pytest benchmarks/test_bench_batch.py --benchmark-only -m ""`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
from conftest import record, rounds

import rvcfast
from rvcfast import cache
from rvcfast.audio import load_audio_16k
from rvcfast.pipeline import prepare


def _converter(m, dtype=torch.float32):
    return rvcfast.Converter.from_pretrained(
        m["model"], index=m["index"], encoder=m["encoder"], f0="rmvpe", f0_weights=m["f0_weights"], device="cpu", dtype=dtype
    )


def test_batch12_convert_batch(benchmark, full_models, batch12, tmp_path):
    conv = _converter(full_models)
    conv.convert(batch12[0])  # warm-up: first-call allocations, not part of the steady state
    results = benchmark.pedantic(lambda: conv.convert_batch(batch12, tmp_path / "out"), rounds=rounds(1), iterations=1)
    assert all(r.ok for r in results)
    record("batch12_convert_batch", benchmark)


def test_batch12_convert_batch_bf16(benchmark, full_models, batch12, tmp_path):
    conv = _converter(full_models, torch.bfloat16)
    conv.convert(batch12[0])
    results = benchmark.pedantic(lambda: conv.convert_batch(batch12, tmp_path / "out"), rounds=rounds(1), iterations=1)
    assert all(r.ok for r in results)
    record("batch12_convert_batch_bf16", benchmark)


def test_batch12_loop_one_converter(benchmark, full_models, batch12, tmp_path):
    conv = _converter(full_models)
    conv.convert(batch12[0])

    def run():
        for f in batch12:
            r = conv.convert(f)
            sf.write(tmp_path / f"{f.stem}.wav", r.audio, r.sample_rate)

    benchmark.pedantic(run, rounds=rounds(1), iterations=1)
    record("batch12_loop_one_converter", benchmark)


def test_batch12_reload_per_file(benchmark, full_models, batch12, tmp_path):
    def run():
        for f in batch12:
            cache.clear()
            conv = _converter(full_models)
            r = conv.convert(f)
            sf.write(tmp_path / f"{f.stem}.wav", r.audio, r.sample_rate)

    benchmark.pedantic(run, rounds=rounds(1), iterations=1)
    cache.clear()
    record("batch12_reload_per_file", benchmark)


def test_batch12_floor_forwards(benchmark, full_models, batch12):
    """The same network forwards convert_batch runs (per segment, decoder skipping the padding context)."""
    conv = _converter(full_models)
    preps = [prepare(load_audio_16k(f)) for f in batch12]
    voc, enc = conv.vocoder, conv.encoder
    rmvpe = conv.f0_extractor.model
    padded = [p.padded.astype(np.float32) for p in preps]
    inputs = []
    for a in padded:
        frames = 2 * ((len(a) - 400) // 320 + 1)
        inputs.append(
            (
                torch.from_numpy(a)[None],
                torch.randn(1, frames, voc.feature_dim),
                torch.tensor([frames]),
                torch.randint(1, 255, (1, frames)),
                torch.rand(1, frames) * 200 + 80,
            )
        )

    def run():
        with torch.inference_mode():
            for a, (audio, feats, n, pitch, pitchf) in zip(padded, inputs):
                rmvpe.infer(a)
                enc.encode(audio)
                voc.synthesize(feats, n, pitch, pitchf, noise=True, skip_frames=100)

    run()  # warm-up
    benchmark.pedantic(run, rounds=rounds(1), iterations=1)
    record("batch12_floor_forwards", benchmark)

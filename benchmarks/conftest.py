"""Benchmark fixtures: full-size models with random weights in the exact real file formats.

The models are built once per machine into ``$RVCFAST_BENCH_MODELS`` (default
``.benchmarks/models`` in the repository) and reused. Compute cost does not depend on
weight values, so these time exactly what real weights would.

Every benchmark records its mean time in ``TIMES``; at the end of the run a table of
ratios against the baseline measured in the same run is printed (and written to
``.benchmarks/ratios.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", REPO / ".benchmarks" / "models"))

TIMES: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.benchmark_suite)


def pytest_configure(config):
    config.addinivalue_line("markers", "benchmark_suite: benchmarks (not unit tests)")


@pytest.fixture(scope="session")
def full_models() -> dict[str, Path]:
    """Paths of full-size random models: v2 40k voice, fairseq hubert_base.pt, rmvpe.pt, a 768-d index."""
    from rvcfast.index import save_index
    from rvcfast.testing import save_random_hubert, save_random_rmvpe, save_random_voice_model

    MODELS.mkdir(parents=True, exist_ok=True)
    paths = {
        "voice": MODELS / "voice_v2_40k_f0.pth",
        "hubert": MODELS / "hubert_base.pt",
        "rmvpe": MODELS / "rmvpe.pt",
        "index": MODELS / "voice_v2.index",
    }
    if not paths["voice"].exists():
        save_random_voice_model(paths["voice"], "v2", 40000, True, seed=0)
    if not paths["hubert"].exists():
        save_random_hubert(paths["hubert"], "fairseq", seed=0)
    if not paths["rmvpe"].exists():
        save_random_rmvpe(paths["rmvpe"], full_size=True, seed=0)
    if not paths["index"].exists():
        rng = np.random.default_rng(0)
        # a realistic small index: 20k training frames of 768-d features
        vecs = (rng.standard_normal((20000, 768)) * 0.5).astype(np.float32)
        save_index(paths["index"], vecs)
    return paths


@pytest.fixture(scope="session")
def batch12() -> list[Path]:
    d = SHARED / "audio" / "batch12"
    files = sorted(d.glob("*.wav"))
    if len(files) != 12:
        pytest.skip(f"the seed's batch workload is not at {d}")
    return files


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(int(os.environ.get("RVCFAST_BENCH_THREADS", os.cpu_count() or 1)))
    yield


def record(name: str, benchmark) -> None:
    """Remember a benchmark's mean wall time for the ratio table."""
    TIMES[name] = float(benchmark.stats.stats.mean)


def pytest_terminal_summary(terminalreporter):
    if not TIMES:
        return
    tr = terminalreporter
    tr.write_sep("=", "rvcfast benchmark ratios (same run)")
    for name, t in sorted(TIMES.items()):
        tr.write_line(f"{name:<45} {t:9.3f} s")
    pairs = [
        ("batch12_reload_per_file", "batch12_convert_batch"),
        ("batch12_loop_one_converter", "batch12_convert_batch"),
        ("batch12_convert_batch", "batch12_floor_forwards"),
        ("batch12_convert_batch", "batch12_convert_batch_bf16"),
    ]
    ratios = {}
    for a, b in pairs:
        if a in TIMES and b in TIMES:
            ratios[f"{a} / {b}"] = TIMES[a] / TIMES[b]
            tr.write_line(f"{a} / {b} = {TIMES[a] / TIMES[b]:.2f}x")
    out = REPO / ".benchmarks" / "ratios.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"times": TIMES, "ratios": ratios}, indent=2))

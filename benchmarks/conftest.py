"""Benchmark fixtures: full-size models with random weights in the exact real file formats.

The models are the ones every script in this folder uses: built once per machine by
:func:`rvcfast.testing.build_bench_models` into ``$RVCFAST_BENCH_MODELS/full`` (default
``~/.cache/rvcfast/bench-models/full``) and reused. Compute cost does not depend on weight
values, so these time exactly what real weights would.

Every benchmark records its mean time in ``TIMES``; at the end of the run a table of
ratios against the baseline measured in the same run is printed with the machine it ran on
(CPU model, flags, threads), and written to ``.benchmarks/ratios.json``.

Torch runs as many intra-op threads as ``rvcfast convert`` would (``OMP_NUM_THREADS``, else
torch's count capped at the usable CPUs; ``RVCFAST_BENCH_THREADS`` overrides), and with
``RVCFAST_PROFILE=off``: a profile written by ``rvcfast tune`` does not change what is timed.

``--bench-quick`` (or ``RVCFAST_BENCH_QUICK=1``) is a smoke run that every benchmark works:
tiny models in the same formats, 2 files of batch12, a 15 s "long" file, one timed round;
its figures mean nothing. ``--benchmark-disable`` (run each once, untimed) works too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))

TIMES: dict[str, float] = {}
#: Set by ``pytest_configure``: ``--bench-quick`` / ``RVCFAST_BENCH_QUICK=1`` (tiny models, fewer files).
QUICK = False


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true",
                     help="rvcfast benchmarks: a smoke run (tiny models, 2 files, 1 round); figures meaningless")


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.benchmark_suite)


def pytest_configure(config):
    global QUICK
    config.addinivalue_line("markers", "benchmark_suite: benchmarks (not unit tests)")
    QUICK = bool(config.getoption("--bench-quick", False)) or os.environ.get("RVCFAST_BENCH_QUICK") == "1"
    os.environ["RVCFAST_PROFILE"] = "off"  # time rvcfast's defaults, not a tuned profile


def rounds(full: int) -> int:
    """Timed rounds of a benchmark: ``full``, or 1 in a quick run."""
    return 1 if QUICK else full


def bench_threads() -> int:
    """Intra-op threads for the benchmarks: ``RVCFAST_BENCH_THREADS``, else what ``rvcfast convert`` uses."""
    from cpu_convert import default_threads

    return int(os.environ.get("RVCFAST_BENCH_THREADS") or default_threads())


@pytest.fixture(scope="session")
def full_models() -> dict[str, Path]:
    """Paths of the random models (``model``, ``encoder``, ``f0_weights``, ``index``): v2 40k voice,
    fairseq hubert_base.pt, rmvpe.pt, a 768-d index; full size, tiny in a quick run."""
    from rvcfast.testing import build_bench_models

    return build_bench_models(MODELS, small=QUICK)


@pytest.fixture(scope="session")
def batch12() -> list[Path]:
    d = SHARED / "audio" / "batch12"
    files = sorted(d.glob("*.wav"))
    if len(files) != 12:
        pytest.skip(f"the seed's batch workload is not at {d}")
    return files[:2] if QUICK else files


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(bench_threads())
    yield


def record(name: str, benchmark) -> float | None:
    """Remember a benchmark's mean wall time for the ratio table; ``None`` when it was not timed
    (``--benchmark-disable``)."""
    if benchmark.stats is None:
        return None
    TIMES[name] = float(benchmark.stats.stats.mean)
    return TIMES[name]


def pytest_terminal_summary(terminalreporter):
    if not TIMES:
        return
    from cpu_convert import machine_line

    machine = machine_line()
    tr = terminalreporter
    tr.write_sep("=", "rvcfast benchmark ratios (same run)")
    tr.write_line(f"machine: {machine}; torch threads {torch.get_num_threads()}")
    if QUICK:
        tr.write_line("QUICK smoke run (tiny models, 2 files, 1 round): these figures mean nothing")
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
    out.write_text(json.dumps({"machine": machine, "quick": QUICK, "times": TIMES, "ratios": ratios}, indent=2))

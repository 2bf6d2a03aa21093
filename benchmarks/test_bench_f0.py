"""F0 backends: speed on a 5 s clip (pytest-benchmark) and "wrapper >= raw library" on the ground truth.

Run::

    python -m pytest benchmarks/test_bench_f0.py -m "" --benchmark-only   # speed + invariant
    python -m pytest benchmarks/test_bench_f0.py -k speed                 # speed only

* ``test_f0_speed[<backend>]``: ``extract`` on ``speech_5s_44100.wav`` (resampled to 16 kHz,
  5 s), 3 rounds after a warm-up call; ``extra_info["rtf"]`` is the mean time / 5 s. RMVPE
  runs the full-size network with random weights (``full_models`` fixture): its speed is
  the real one, its output is meaningless.
* ``test_wrapper_not_worse_than_raw[<backend>]`` (marked ``slow``, so it needs ``-m ""``):
  on the WORLD ground-truth set (:mod:`f0_truth`), the rvcfast backend's raw pitch
  accuracy must be at least the raw library's minus 0.5 percentage points, and its voicing
  F1 no more than 0.5 pp lower: rvcfast's post-processing must not lose accuracy. It uses
  the benchmark fixture (timing the wrapper over the set, one round) so that
  ``--benchmark-only`` runs it too. ``crepe`` (the full network: about 5x slower than real
  time on a 2-core CPU, torchcrepe about 10x, so ~12 minutes for the pair) runs only with
  ``RVCFAST_BENCH_F0_CREPE=1``; its post-processing is the same code as ``crepe-tiny``'s,
  which is always checked, and ``benchmarks/f0_accuracy.py`` measures the full pair
  (docs/f0.md). Every check uses the whole set: on a subset, a handful of frames would
  move the figures by more than the tolerance.
"""

from __future__ import annotations

import os

import f0_accuracy
import f0_truth
import numpy as np
import pytest
from conftest import SHARED, record, rounds

import rvcfast
from rvcfast.errors import BackendUnavailableError

SPEED_BACKENDS = list(f0_accuracy.WRAPPERS)
TOLERANCE_PP = 0.5


@pytest.fixture(scope="module")
def clip5s() -> np.ndarray:
    path = SHARED / "audio" / "speech_5s_44100.wav"
    if not path.is_file():
        pytest.skip(f"{path} not found (set RVCFAST_SHARED to the shared/ folder)")
    from rvcfast.audio import load_audio_16k

    return load_audio_16k(path).astype(np.float32)


def _extractor(spec: str, request):
    name, options = f0_accuracy.parse_backend(spec)  # "crepe(refine)" is crepe with refine=True
    if name == "rmvpe":
        options["weights"] = request.getfixturevalue("full_models")["f0_weights"]
    try:
        return rvcfast.get_f0_extractor(name, **options)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", SPEED_BACKENDS)
def test_f0_speed(benchmark, request, clip5s, name):
    ext = _extractor(name, request)
    ext.extract(clip5s[:16000])  # warm-up: model load, first-call allocations
    f0 = benchmark.pedantic(ext.extract, args=(clip5s,), rounds=rounds(3), iterations=1)
    assert len(f0) == len(clip5s) // 160 + 1
    seconds = len(clip5s) / 16000
    benchmark.extra_info["audio_seconds"] = seconds
    mean = record(f"f0_{name}_5s", benchmark)
    if mean is not None:
        benchmark.extra_info["rtf"] = mean / seconds


# -- accuracy invariant ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def truth_set() -> list:
    if f0_truth.audio_dir() is None:
        pytest.skip("shared audio not found (set RVCFAST_SHARED to the shared/ folder)")
    return f0_truth.build_truth_set()


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", list(f0_accuracy.RAW_FOR))
def test_wrapper_not_worse_than_raw(benchmark, truth_set, wrapper):
    if f0_accuracy.parse_backend(wrapper)[0] == "crepe" and os.environ.get("RVCFAST_BENCH_F0_CREPE") != "1":
        pytest.skip(
            "crepe full vs torchcrepe takes ~12 min on a 2-core CPU: set RVCFAST_BENCH_F0_CREPE=1 "
            "(crepe-tiny checks the same post-processing; docs/f0.md has the measured pair)"
        )
    clips = truth_set
    try:
        wfn = f0_accuracy.wrapper_fn(wrapper)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    try:
        rfn = f0_accuracy.raw_fn(wrapper)
    except Exception as exc:  # noqa: BLE001 - e.g. librosa missing for torchcrepe
        pytest.skip(f"raw library for {wrapper} cannot run: {type(exc).__name__}: {exc}")

    wfn(clips[0].audio[:16000])  # warm-up outside the timing
    wres = benchmark.pedantic(lambda: f0_accuracy.evaluate(wrapper, wfn, clips, warmup=False)[0], rounds=1, iterations=1)
    rres = f0_accuracy.evaluate(f0_accuracy.RAW_FOR[wrapper], rfn, clips, kind="raw", warmup=False)[0]
    w, r = wres.scores, rres.scores
    benchmark.extra_info.update(
        {
            "clips": len(clips),
            "rpa_wrapper": w["rpa"],
            "rpa_raw": r["rpa"],
            "f1_wrapper": w["voicing_f1"],
            "f1_raw": r["voicing_f1"],
        }
    )
    msg = (
        f"{wrapper}: RPA {100 * w['rpa']:.2f}% vs raw {100 * r['rpa']:.2f}%, "
        f"voicing F1 {100 * w['voicing_f1']:.2f}% vs raw {100 * r['voicing_f1']:.2f}%"
    )
    assert w["rpa"] >= r["rpa"] - TOLERANCE_PP / 100, msg
    assert w["voicing_f1"] >= r["voicing_f1"] - TOLERANCE_PP / 100, msg

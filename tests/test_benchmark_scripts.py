"""The benchmark scripts in ``benchmarks/``: argument handling, refusals and arithmetic.

Cheap checks only (no model is built, nothing is timed): a later session runs these scripts
unattended on another CPU, so a precision the CPU cannot run, a failing variant or an
untimed pytest-benchmark run must be reported, not crash, and the ratios must be right.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

import rvcfast.runtime

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bf16_quality  # noqa: E402
import cpu_convert  # noqa: E402
import decoder_compile  # noqa: E402
import op_profile  # noqa: E402


def _bench_conftest():
    """benchmarks/conftest.py under its own name (``conftest`` is this folder's)."""
    spec = importlib.util.spec_from_file_location("bench_conftest", BENCH / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cpu_without_fp16(monkeypatch):
    """A CPU with AVX512-BF16 but neither AVX512-FP16 nor AMX-FP16 (as a Zen 4)."""
    monkeypatch.setattr(rvcfast.runtime, "cpu_features", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))


@pytest.fixture
def no_models(monkeypatch):
    """Building the full-size models is never needed by these checks: make it an error."""
    import rvcfast.testing

    def refuse(*args, **kwargs):
        raise AssertionError("the benchmark models must not be built here")

    monkeypatch.setattr(rvcfast.testing, "build_bench_models", refuse)


def _one_clip(folder: Path) -> Path:
    folder.mkdir()
    sf.write(folder / "clip.wav", np.zeros(16000, dtype=np.float32), 16000)
    return folder


# -- cpu_convert.py ------------------------------------------------------------------------


def _run(tree: str, dtype: str, r: int, wall: float) -> dict:
    return {"tree": tree, "dtype": dtype, "round": r, "wall_s": wall, "peak_rss_mib": 1000.0}


def test_cpu_convert_ratios_pair_runs_of_the_same_round():
    runs = [
        _run("base", "float32", 0, 10.0), _run("new", "float32", 0, 9.0),
        _run("base", "bfloat16", 0, 5.0), _run("new", "bfloat16", 0, 4.0),
        _run("base", "float32", 1, 12.0),  # round 1: new float32 failed, base bfloat16 missing
        _run("new", "bfloat16", 1, 6.0),
        _run("base", "float32", 2, 11.0), _run("new", "float32", 2, 8.8),
        _run("base", "bfloat16", 2, 5.5), _run("new", "bfloat16", 2, 4.4),
    ]
    lines = cpu_convert.summary(runs, ["base", "new"], ["float32", "bfloat16"], "test machine")
    text = "\n".join(lines)
    assert "test machine" in lines[0]
    # new/base float32 from rounds 0 and 2 only: 0.9 and 0.8
    f32 = next(line for line in lines if line.startswith("new/base float32"))
    assert f"median {statistics.median([0.9, 0.8]):.3f}" in f32 and "min 0.800, max 0.900; 2 rounds" in f32
    # base float32/bfloat16 from rounds 0 and 2: 2.0 and 2.0
    base_ratio = next(line for line in lines if "base float32/bfloat16" in line)
    assert "median 2.00x" in base_ratio and "2 rounds" in base_ratio
    # new: rounds 0 and 2 (round 1 has no float32): 2.25 and 2.0
    new_ratio = next(line for line in lines if "new float32/bfloat16" in line)
    assert "median 2.12x" in new_ratio or "median 2.13x" in new_ratio
    assert "min 2.00, max 2.25" in new_ratio
    assert "base   float32: wall  11.00 s" in text  # median of 10, 12, 11


def test_cpu_convert_ratio_without_a_common_round_says_so():
    runs = [_run("base", "float32", 0, 10.0), _run("new", "float32", 1, 9.0)]
    lines = cpu_convert.summary(runs, ["base", "new", "other"], ["float32"], "m")
    assert any("new/base float32" in line and "no round has both" in line for line in lines)
    assert any("other" in line and "no successful run" in line for line in lines)


def test_cpu_convert_refuses_float16_where_rvcfast_does(cpu_without_fp16):
    refused = cpu_convert.refused_dtypes(["float32", "bfloat16", "float16"])
    assert list(refused) == ["float16"]
    assert "AVX512-FP16" in refused["float16"]


def test_cpu_convert_float16_runs_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(rvcfast.runtime, "cpu_features", lambda: frozenset({"avx512_fp16", "amx_bf16"}))
    assert cpu_convert.refused_dtypes(["float32", "bfloat16", "float16"]) == {}


def test_cpu_convert_skips_a_refused_precision_instead_of_crashing(cpu_without_fp16, monkeypatch, tmp_path, capsys):
    import rvcfast.testing

    fake = {k: tmp_path / k for k in ("model", "index", "encoder", "f0_weights")}
    monkeypatch.setattr(rvcfast.testing, "build_bench_models", lambda *a, **k: fake)

    def no_process(*args, **kwargs):
        raise AssertionError("nothing may be run for a refused precision")

    monkeypatch.setattr(cpu_convert, "_run_once", no_process)
    inputs = _one_clip(tmp_path / "in")
    code = cpu_convert.main(["--dtype", "float16", "--rounds", "1", "--warmup", "1", "--inputs", str(inputs)])
    out = capsys.readouterr().out
    assert code == 0
    assert "float16: skipped" in out and "AVX512-FP16" in out
    assert "1 file, 1.0 s of audio" in out


def test_cpu_convert_reports_a_failing_variant_and_goes_on(monkeypatch, tmp_path, capsys):
    import rvcfast.testing

    fake = {k: tmp_path / k for k in ("model", "index", "encoder", "f0_weights")}
    monkeypatch.setattr(rvcfast.testing, "build_bench_models", lambda *a, **k: fake)
    calls = []

    def run_once(tree, dtype, paths, inputs, extra, use_profile=False):
        calls.append(extra)
        if "--bad" in extra:
            raise RuntimeError("rvcfast convert failed (2): unknown option --bad")
        return {"wall_s": 2.0, "user_s": 1.0, "sys_s": 0.1, "peak_rss_mib": 100.0, "minor_faults": 1.0}

    monkeypatch.setattr(cpu_convert, "_run_once", run_once)
    monkeypatch.setattr(cpu_convert, "_wait_for_quiet", lambda max_load: 0.0)
    inputs = _one_clip(tmp_path / "in")
    code = cpu_convert.main(["--dtype", "float32", "--rounds", "2", "--warmup", "1", "--inputs", str(inputs),
                             "--variant", "ok=", "--variant", "bad=--bad"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED bad float32" in out and "unknown option --bad" in out
    assert calls.count(["--bad"]) == 1  # tried once (the warm-up), never again
    assert calls.count([]) == 3  # ok: warm-up + 2 rounds
    assert "ok   float32: wall   2.00 s" in out


def test_cpu_convert_measured_processes_ignore_a_tune_profile(tmp_path):
    env = cpu_convert.child_env(tmp_path)
    assert env["RVCFAST_PROFILE"] == "off"
    assert env["PYTHONPATH"] == str(tmp_path)
    assert cpu_convert.child_env(tmp_path, use_profile=True).get("RVCFAST_PROFILE") == \
        __import__("os").environ.get("RVCFAST_PROFILE")


def test_cpu_convert_bad_tree_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit, match="NAME=PATH"):
        cpu_convert._variants(cpu_convert._parser().parse_args(["--tree", str(tmp_path)]))
    with pytest.raises(SystemExit, match="no rvcfast package"):
        cpu_convert._variants(cpu_convert._parser().parse_args(["--tree", f"old={tmp_path}"]))
    args = cpu_convert._parser().parse_args(["--tree", f"new={BENCH.parent}", "--", "--compute-workers", "2"])
    assert cpu_convert._variants(args) == [("new", BENCH.parent, ["--compute-workers", "2"])]


def test_cpu_convert_missing_inputs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no audio files"):
        cpu_convert.describe_inputs(tmp_path / "absent")


def test_machine_line_names_cpu_flags_and_threads(cpu_without_fp16):
    line = cpu_convert.machine_line()
    assert "avx512_bf16" in line and "avx512_fp16" not in line
    assert "threads" in line and "torch" in line


# -- op_profile.py -------------------------------------------------------------------------


def test_op_profile_counts_each_convolution_once():
    # one conv1d call appears as conv1d > convolution > _convolution > mkldnn_convolution;
    # a fused oneDNN call is one mkldnn:: operator
    ops = {
        "aten::conv1d": [0.001, 56], "aten::conv2d": [0.001, 127], "aten::conv_transpose2d": [0.0, 9],
        "aten::convolution": [0.002, 192], "aten::_convolution": [0.5, 192],
        "aten::mkldnn_convolution": [8.0, 178], "aten::thnn_conv2d": [0.0, 5], "aten::_slow_conv2d_forward": [0.001, 5],
        "mkldnn::_convolution_pointwise_": [11.0, 76], "aten::copy_": [0.1, 944], "aten::add_": [0.1, 2122],
    }
    groups, calls = op_profile._sums({"ops": ops})
    assert calls["convolutions"] == 192 + 76
    assert calls["copy_"] == 944 and calls["add_"] == 2122 and calls["fill_"] == 0
    assert groups["convolutions"] == pytest.approx(0.001 + 0.001 + 0.002 + 0.5 + 8.0 + 0.001 + 11.0)


# -- bf16_quality.py -----------------------------------------------------------------------


def test_bf16_quality_float16_on_a_cpu_without_it_is_refused_first(cpu_without_fp16, no_models):
    with pytest.raises(SystemExit, match="AVX512-FP16"):
        bf16_quality.main(["--dtype", "float16"])


def test_bf16_quality_vocoder_is_for_the_random_models(capsys):
    with pytest.raises(SystemExit) as caught:
        bf16_quality.main(["--golden", "--vocoder", "RefineGAN"])  # the golden voice is HiFi-GAN
    assert caught.value.code == 2 and "--vocoder is for the full-size random models" in capsys.readouterr().err


def test_bf16_quality_snr_and_cents():
    ref = np.sin(np.linspace(0, 20, 1000))
    noise = 0.01 * np.cos(np.linspace(0, 7, 1000))
    expected = 10 * np.log10(np.sum(ref**2) / np.sum(noise**2))
    assert bf16_quality.snr_db(ref, ref + noise) == pytest.approx(expected, rel=1e-12)
    assert bf16_quality.snr_db(ref, ref) == float("inf")
    flips, cmax, cmed = bf16_quality.f0_stats(np.array([100.0, 200.0, 0.0, 150.0]), np.array([200.0, 200.0, 120.0, 150.0]))
    assert flips == 1 and cmax == pytest.approx(1200.0) and cmed == pytest.approx(0.0)


# -- decoder_compile.py --------------------------------------------------------------------


def test_decoder_compile_a_failing_variant_is_one_line(tmp_path):
    args = SimpleNamespace(frames=8, threads=1)
    r = decoder_compile._measure(tmp_path / "absent.pth", "float32", "fused", args, str(tmp_path / "o.pt"))
    assert isinstance(r, str) and r.startswith("failed (1): ")
    assert "Error" in r and "absent.pth" in r and "\n" not in r


# -- benchmarks/conftest.py ----------------------------------------------------------------


def test_bench_record_without_timing_returns_none():
    conf = _bench_conftest()
    assert conf.record("x", SimpleNamespace(stats=None)) is None  # --benchmark-disable
    assert "x" not in conf.TIMES
    timed = SimpleNamespace(stats=SimpleNamespace(stats=SimpleNamespace(mean=1.5)))
    assert conf.record("y", timed) == 1.5 and conf.TIMES["y"] == 1.5


# -- every script's --help -----------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    ["cpu_convert", "bf16_quality", "decoder_compile", "op_profile", "long_file", "ray_batch12", "serve_load", "big_index",
     "per_file_commands", "f0_pool_start"],
)
def test_help(script):
    done = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_big_index_runs_and_every_search_is_exact(tmp_path):
    """The smallest run: an IVF and a flat index of 2,000 16-d vectors, read in a fresh process."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "big_index.py"), "--vectors", "2000", "--dim", "16", "--flat", "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| IVF") or line.startswith("| flat")]
    assert len(rows) == 2 and all(row.endswith("| 100/100 |") for row in rows), done.stdout
    assert "CPU: " in done.stdout and sorted(p.suffix for p in tmp_path.iterdir()).count(".index") == 2


def test_f0_pool_start_smallest_run_and_refusals(tmp_path):
    """One round of a one-worker dio pool under fork: a figure line per tree, ratios against the first."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "f0_pool_start.py"), "--methods", "fork", "--backend", "dio", "--workers", "1",
         "--rounds", "1", "--tree", "a=.", "--tree", "b=."],
        capture_output=True, text=True, timeout=300, cwd=BENCH.parent,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("fork")]
    assert [row[1] for row in rows] == ["a", "b"] and rows[0][-2] == "1.00x", done.stdout
    assert done.stdout.startswith("# ") and "usable CPUs" in done.stdout
    bad = subprocess.run([sys.executable, str(BENCH / "f0_pool_start.py"), "--tree", f"x={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "rvcfast/__init__.py" in bad.stderr

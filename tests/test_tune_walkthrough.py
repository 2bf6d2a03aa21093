"""A performance-minded operator's walk through ``rvcfast tune``, ``rvcfast bench`` and
``rvcfast info --system``: bad options, profile files that are not profiles, and the tuned
settings a later ``rvcfast bench`` runs with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401

import rvcfast.testing
from rvcfast import tuning
from rvcfast.cli import main
from rvcfast.tuning import Profile, load_profile, machine_id, save_profile


@pytest.fixture()
def profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "profile.json"
    monkeypatch.setenv("RVCFAST_PROFILE", str(path))
    return path


@pytest.fixture()
def no_model_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building random models fails the test: every option is checked first."""

    def refuse(*args, **kwargs):
        raise AssertionError("models were built before the options were checked")

    monkeypatch.setattr(rvcfast.testing, "build_bench_models", refuse)


@pytest.fixture()
def fake_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rvcfast tune`` measures nothing: calibrate returns a float32 profile for this machine at once."""

    def calibrate(make, clips, *, device, **kwargs):
        return Profile(machine=machine_id(device), dtype="float32", threads=1, batch_seconds=8.0)

    monkeypatch.setattr(tuning, "calibrate", calibrate)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


@pytest.mark.parametrize(
    "option,shown",
    [
        (["--seconds", "inf"], "inf"),  # was an OverflowError traceback
        (["--seconds", "nan"], "nan"),
        (["--min-snr", "nan"], "nan"),  # was accepted: no lower precision could ever pass it
        (["--threads", "1025"], "1025"),  # was measured for minutes, then a ValueError when saving
        (["--compute-workers", "1,2000"], "2000"),
        (["--files", "0"], "0"),
    ],
)
def test_tune_refuses_values_it_cannot_use_before_anything_is_built(
    no_model_building, tmp_path: Path, capsys, option: list[str], shown: str
) -> None:
    out = tmp_path / "p.json"
    for models in ([], ["--model", str(tmp_path / "nonexistent.pth")]):
        _usage_error(["tune", "--quick", *models, *option, "--output", str(out)], capsys, option[0], shown)
    assert not out.exists()


def test_tune_accepts_the_largest_thread_count_a_profile_holds(tiny_models, fake_calibration, tmp_path: Path, capsys) -> None:
    out = tmp_path / "p.json"
    argv = ["tune", "--model", str(tiny_models.voice), "--threads", f"1,{tuning.MAX_THREADS}", "--output", str(out), "-q"]
    assert main(argv) == 0, capsys.readouterr().err
    assert out.is_file()


@pytest.mark.parametrize("command", [["tune", "--quick"], ["bench", "--small"]])
def test_a_models_folder_that_is_a_file_is_a_usage_error(
    no_model_building, tmp_path: Path, capsys, command: list[str]
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"x")
    for models in (blocker, blocker / "sub"):  # was a NotADirectoryError traceback
        argv = [*command, "--models", str(models), "--output", str(tmp_path / "p.json")] if command[0] == "tune" else [
            *command, "--models", str(models)]
        _usage_error(argv, capsys, "--models", str(blocker))
    assert blocker.read_bytes() == b"x"


@pytest.mark.parametrize(
    "option,shown",
    [(["--seconds", "inf"], "inf"), (["--batch-seconds", "inf"], "inf"), (["--batch-seconds", "nan"], "nan")],
)
def test_bench_refuses_infinite_lengths_before_anything_is_built(
    no_model_building, tmp_path: Path, capsys, option: list[str], shown: str
) -> None:
    _usage_error(["bench", "--small", "--models", str(tmp_path / "bm"), *option], capsys, option[0], shown)
    assert not (tmp_path / "bm").exists()


def test_tune_never_replaces_a_file_rvcfast_profile_names_that_is_not_a_profile(
    fake_calibration, tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    monkeypatch.setenv("RVCFAST_PROFILE", str(notes))  # a slip: was overwritten by the profile
    _usage_error(["tune", "--model", str(tiny_models.voice), "-q"], capsys, "RVCFAST_PROFILE", str(notes))
    assert notes.read_text() == "my notes\n"


def test_a_broken_profile_in_rvcfast_home_is_still_replaced(
    fake_calibration, tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("RVCFAST_PROFILE", raising=False)
    monkeypatch.setenv("RVCFAST_HOME", str(tmp_path))
    own = tmp_path / "profile.json"
    own.write_text('{"profiles": [')  # rvcfast's own file, broken
    assert main(["tune", "--model", str(tiny_models.voice), "-q"]) == 0, capsys.readouterr().err
    assert load_profile("cpu") is not None and json.loads(own.read_text())["profiles"][0]["machine"] == machine_id("cpu")


def test_rvcfast_profile_naming_a_folder_is_reported_not_silently_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setenv("RVCFAST_PROFILE", str(folder))
    with pytest.warns(RuntimeWarning, match=f"{folder}.*folder"):
        assert load_profile("cpu") is None
    with pytest.warns(RuntimeWarning):
        source = tuning.system_report("cpu")["settings"]["source"]
    assert str(folder) in source and "folder" in source and "run `rvcfast tune` to measure" not in source


def test_bench_runs_with_the_tuned_threads_and_says_what_it_ran(tiny_models, profile_file: Path, capsys) -> None:
    save_profile(Profile(machine=machine_id("cpu"), dtype="float32", threads=3, batch_seconds=4.0, compute_workers=1))
    before = torch.get_num_threads()
    try:
        argv = ["bench", "--model", str(tiny_models.voice), "--encoder", str(tiny_models.encoder),
                "--f0-weights", str(tiny_models.rmvpe), "--files", "1", "--seconds", "0.5", "--device", "cpu",
                "--dtype", "auto", "--no-warmup"]
        assert main(argv) == 0
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    first = capsys.readouterr().out.splitlines()[0]
    # what `rvcfast convert` would run: the profile's threads too, not only its batch size and workers
    assert threads == 3
    assert "float32 (auto)" in first and "3 threads" in first and "batch 4 s" in first and "1 compute worker" in first



def test_a_profile_saved_with_a_utf8_bom_is_read(profile_file: Path) -> None:
    # a profile edited by hand in an editor that writes a byte-order mark (Windows Notepad)
    entry = {"machine": machine_id("cpu"), "dtype": "float32", "threads": 1, "batch_seconds": 6.0}
    profile_file.write_bytes(b"\xef\xbb\xbf" + json.dumps({"profiles": [entry]}).encode())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was 'ignoring the rvcfast profile ...: Unexpected UTF-8 BOM'
        profile = load_profile("cpu")
        assert tuning.is_profile_file(profile_file)
    assert profile is not None and profile.batch_seconds == 6.0


def test_a_file_put_at_the_target_during_calibration_keeps_the_measured_settings_in_the_error(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "p.json"

    def calibrate(make, clips, *, device, **kwargs):
        out.write_text("someone else's file")  # minutes pass while calibrating
        return Profile(machine=machine_id(device), dtype="float32", threads=1, batch_seconds=8.0, compute_workers=2)

    monkeypatch.setattr(tuning, "calibrate", calibrate)
    status = main(["tune", "--model", str(tiny_models.voice), "--output", str(out), "-q"])
    err = capsys.readouterr().err
    # was a usage error (status 2) that dropped the minutes of measurements
    assert status == 1 and str(out) in err and "not an rvcfast profile file" in err
    assert "float32, 1 thread(s), batch 8 s, 2 compute worker(s)" in err and "nothing was saved" in err
    assert out.read_text() == "someone else's file"

# -- benchmarks/cpu_convert.py and op_profile.py on a CPU without bfloat16 hardware -------------------------

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def cpu_convert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """benchmarks/cpu_convert.py with fake models and runs: what it would run, and with which load limit."""
    import soundfile as sf

    import rvcfast.testing

    monkeypatch.syspath_prepend(str(BENCH))
    import cpu_convert as module

    fake = {k: tmp_path / k for k in ("model", "index", "encoder", "f0_weights")}
    monkeypatch.setattr(rvcfast.testing, "build_bench_models", lambda *a, **k: fake)
    module.ran, module.waited = [], []
    monkeypatch.setattr(module, "_wait_for_quiet", lambda max_load: module.waited.append(max_load) or 0.0)

    def run_once(tree, dtype, paths, inputs, extra, use_profile=False):
        module.ran.append(dtype)
        return {"wall_s": 2.0, "user_s": 1.0, "sys_s": 0.1, "peak_rss_mib": 100.0, "minor_faults": 1.0}

    monkeypatch.setattr(module, "_run_once", run_once)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "clip.wav", torch.zeros(1600).numpy(), 16000)
    module.inputs = str(tmp_path / "in")
    return module


def _cpu(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    from rvcfast import runtime

    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset(flags))


def test_cpu_convert_does_not_time_bfloat16_by_default_without_its_hardware(cpu_convert, monkeypatch, capsys) -> None:
    _cpu(monkeypatch, {"avx2", "fma"})  # an AVX2-only EPYC: bfloat16 is a 12x slower reference path here
    assert cpu_convert.main(["--rounds", "1", "--warmup", "0", "--inputs", cpu_convert.inputs]) == 0
    out = capsys.readouterr().out
    assert cpu_convert.ran == ["float32"]  # was float32 and bfloat16: hours of the slow path
    assert "bfloat16: not measured by default" in out and "float32/bfloat16" not in out
    cpu_convert.ran.clear()
    argv = ["--rounds", "1", "--warmup", "0", "--inputs", cpu_convert.inputs, "--dtype", "float32", "bfloat16"]
    assert cpu_convert.main(argv) == 0  # asked for: measured, and said to be the slow path
    assert cpu_convert.ran == ["float32", "bfloat16"]
    assert "bfloat16: measured on a slow path, no hardware for it here" in capsys.readouterr().out


def test_cpu_convert_times_bfloat16_by_default_where_the_cpu_has_it(cpu_convert, monkeypatch, capsys) -> None:
    _cpu(monkeypatch, {"avx2", "fma", "avx512f", "avx512_bf16"})
    assert cpu_convert.main(["--rounds", "1", "--warmup", "0", "--inputs", cpu_convert.inputs]) == 0
    out = capsys.readouterr().out
    assert cpu_convert.ran == ["float32", "bfloat16"] and "slow path" not in out and "not measured" not in out


def test_cpu_convert_smoke_test_does_not_wait_for_a_quiet_machine(cpu_convert, monkeypatch, capsys) -> None:
    _cpu(monkeypatch, {"avx2", "fma"})
    argv = ["--small", "--rounds", "1", "--warmup", "0", "--inputs", cpu_convert.inputs]
    assert cpu_convert.main(argv) == 0
    # was 0.75 x the usable cores: up to 10 minutes per run on a busy machine, for figures that mean nothing
    assert cpu_convert.waited and all(w == float("inf") for w in cpu_convert.waited)
    assert "not waiting for a quiet machine" in capsys.readouterr().out
    cpu_convert.waited.clear()
    assert cpu_convert.main([*argv[1:]]) == 0  # a real measurement still waits
    from rvcfast.runtime import available_cores

    assert cpu_convert.waited == [0.75 * available_cores()]


def test_op_profile_help_says_what_it_runs() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(BENCH / "op_profile.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    # was one line: nothing on the models it builds, the clips it profiles or the default precisions
    assert "full-size random models" in out and "batch12" in out and "--tree base=" in out
    assert "AVX512-BF16" in out

"""The tuned profile on unusual machines and with unusual files: cgroup quotas, ARM, thread
variables, damaged or foreign entries, concurrent and failing writes."""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import pytest
import torch
from helpers import profile_entry, profile_file_fixture, tiny_models_fixture, write_profiles  # noqa: F401

from rvcfast import runtime, tuning
from rvcfast.cli import main
from rvcfast.tuning import Profile, apply_threads, load_profile, machine_id, save_profile

# ------------------------------------------------------------------------------ cores and threads


def _fake_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_line: str, files: dict[str, str]) -> None:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_line + "\n")
    monkeypatch.setattr(runtime, "CGROUP_ROOT", str(root))
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: real_path(proc) if p == "/proc/self/cgroup" else real_path(p))


@pytest.mark.parametrize(
    "proc_line,files,limit,cores",
    [
        ("0::/", {"cpu.max": "100000 100000\n"}, 1.0, 1),  # cgroup v2 in a container (its own namespace)
        ("0::/app.slice/job", {"cpu.max": "max 100000\n", "app.slice/job/cpu.max": "150000 100000\n"}, 1.5, 2),
        ("0::/app.slice/job", {"app.slice/cpu.max": "50000 100000\n", "app.slice/job/cpu.max": "max 100000\n"}, 0.5, 1),
        ("1:cpu:/box", {"cpu/box/cpu.cfs_quota_us": "300000\n", "cpu/box/cpu.cfs_period_us": "100000\n"}, 3.0, 3),
        ("4:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None, 8),
        ("0::/", {"cpu.max": "max 100000\n"}, None, 8),
        ("0::/", {"cpu.max": "1600000 100000\n"}, 16.0, 8),  # a quota above the affinity: the affinity
    ],
)
def test_a_cgroup_cpu_quota_caps_the_usable_cores(tmp_path, monkeypatch, proc_line, files, limit, cores) -> None:
    _fake_cgroup(tmp_path, monkeypatch, proc_line, files)
    assert runtime.cgroup_cpu_limit() == limit
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    assert runtime.available_cores() == cores


def test_calibration_tries_the_quota_not_the_host_cores(tmp_path, monkeypatch) -> None:
    _fake_cgroup(tmp_path, monkeypatch, "0::/", {"cpu.max": "200000 100000\n"})
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    monkeypatch.setattr(tuning, "available_cores", runtime.available_cores)
    assert tuning.available_cores() == 2
    assert " x2 | " in machine_id("cpu")


def test_without_a_profile_the_threads_are_capped_by_the_quota(tmp_path, monkeypatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(tuning, "available_cores", lambda: 1)  # a 1-CPU quota on a 2-core machine
        assert apply_threads(None) == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's count stays
        assert apply_threads(None) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, None),
        ({"OMP_NUM_THREADS": "3"}, 3),
        ({"MKL_NUM_THREADS": "1"}, 1),  # torch honours MKL_NUM_THREADS too
        ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "1"}, 1),  # torch runs MKL_NUM_THREADS's count
        ({"OMP_NUM_THREADS": ""}, None),  # torch ignores an empty or malformed value
        ({"OMP_NUM_THREADS": "many"}, None),
        ({"OMP_NUM_THREADS": "0"}, None),
        ({"OMP_NUM_THREADS": "4,2"}, 4),  # a nested list: its first level
    ],
)
def test_the_thread_count_the_user_set_in_the_environment(monkeypatch, env, expected) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert runtime.env_thread_count() == expected


def test_mkl_num_threads_wins_over_the_profile(monkeypatch, profile_file: Path) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    write_profiles(profile_file, profile_entry(threads=2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert apply_threads(load_profile("cpu")) == 1
        assert tuning.system_report("cpu")["settings"]["threads"] == 1
        monkeypatch.setenv("MKL_NUM_THREADS", "")  # not a count: the profile applies
        assert apply_threads(load_profile("cpu")) == 2
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ ARM


ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve bf16 i8mm
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1

"""


def test_arm_cpuinfo_names_the_core_and_its_features(tmp_path, monkeypatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(ARM_CPUINFO)
    monkeypatch.setattr(runtime, "CPUINFO_PATH", str(info))
    runtime.cpu_features.cache_clear()
    try:
        flags = runtime.cpu_features()
        assert {"asimd", "sve", "bf16"} <= flags
        assert "0xd40" in tuning.cpu_model() and "0x41" in tuning.cpu_model()
        assert "+sve+bf16" in machine_id("cpu")  # another ARM core (part, features) is another machine
        assert not runtime.native_bf16(torch.device("cpu"))  # bfloat16 by default only with AMX / AVX512-BF16
        assert runtime.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    finally:
        runtime.cpu_features.cache_clear()


# ---------------------------------------------------------------------------- foreign or edited entries


def test_an_entry_in_another_profile_format_is_reported_not_silently_skipped(profile_file: Path) -> None:
    write_profiles(profile_file, profile_entry(version=2, knob="new"))  # a newer rvcfast, on this machine
    with pytest.warns(RuntimeWarning, match="another profile format.*version 2"):
        assert load_profile("cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = tuning.system_report("cpu")["settings"]["source"]
    assert "another profile format" in source and str(profile_file) in source


def test_info_says_why_this_machines_entry_is_ignored(profile_file: Path) -> None:
    write_profiles(profile_file, profile_entry(threads=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = tuning.system_report("cpu")["settings"]["source"]
    assert "threads -1" in source and "holds no profile" not in source


@pytest.mark.parametrize("threads", [2**40, 100_000])
def test_an_absurd_thread_count_is_ignored_not_applied(profile_file: Path, threads: int) -> None:
    write_profiles(profile_file, profile_entry(threads=threads))
    before = torch.get_num_threads()
    with pytest.warns(RuntimeWarning, match="bad threads"):
        profile = load_profile("cpu")
    assert profile is None and apply_threads(profile) == before


def test_a_profile_precision_the_cpu_cannot_run_falls_back_for_auto(tiny_models, profile_file: Path, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "fma"}))
    write_profiles(profile_file, profile_entry(dtype="float16"))  # a hand-edited file
    with pytest.warns(RuntimeWarning, match="float16"):
        assert tuning.tuned_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.warns(RuntimeWarning):
        conv = tiny_models.converter(dtype="auto")  # loads; "auto" never fails
    assert conv.dtype == torch.float32
    with pytest.warns(RuntimeWarning):
        assert tuning.system_report("cpu")["settings"]["auto_dtype"] == "float32"


def _profile_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "ignoring the rvcfast profile" in str(w.message)]


def test_a_damaged_profile_is_read_and_warned_about_once_per_voice(tiny_models, profile_file: Path, tmp_path: Path) -> None:
    """Loading with dtype="auto" read the file once for the precision and again for the batch size,
    and convert_batch read it again for its compute workers: one damaged file, a warning per read
    (twice on a terminal, where torch's own warning filters reset Python's once-per-place record)."""
    from helpers import write_tone

    profile_file.write_text('{"bad json')
    wav = write_tone(tmp_path, "in.wav", 0.5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")  # every read that warns is counted
        conv = tiny_models.converter(dtype="auto")
        conv.convert_batch([wav], out_dir=tmp_path / "out")
    said = _profile_warnings(record)
    assert len(said) == 1 and "bad json" not in said[0] and str(profile_file) in said[0], said
    assert conv.engine.profile is None and (tmp_path / "out" / "in.wav").is_file()


def test_the_command_line_warns_about_a_damaged_profile_once(tiny_models, profile_file: Path, tmp_path: Path) -> None:
    """As a user sees it: its own process, Python's default warning filters."""
    import subprocess
    import sys

    from helpers import cli_weights, write_tone

    profile_file.write_text("[1, 2")
    wav = write_tone(tmp_path, "in.wav", 0.5)
    cmd = [sys.executable, "-m", "rvcfast", "convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"),
           "--dtype", "auto", *cli_weights(tiny_models)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": ""})
    assert run.returncode == 0 and run.stderr.count("ignoring the rvcfast profile") == 1, run.stderr


def test_a_profile_is_read_once_and_applied_everywhere(tiny_models, profile_file: Path, tmp_path: Path) -> None:
    """The one read fills every setting: batch size, precision, compute workers."""
    from rvcfast.batch import BatchOptions, compute_workers

    write_profiles(profile_file, profile_entry(batch_seconds=3.5, compute_workers=2))
    conv = tiny_models.converter(dtype="auto")
    assert conv.engine.batch_seconds == 3.5 and conv.dtype == torch.float32
    assert compute_workers(conv.engine, BatchOptions()) == 2
    profile_file.unlink()  # the engine keeps what it read at load time
    assert compute_workers(conv.engine, BatchOptions()) == 2


# ------------------------------------------------------------------------------------- writing


def test_two_writers_keep_both_entries(profile_file: Path, monkeypatch) -> None:
    save_profile(Profile(machine="seed | cpu", dtype="float32", threads=1, batch_seconds=8))
    real_read = tuning._read_entries
    gpu_read, other_saved = threading.Event(), threading.Event()

    def slow_read(path: Path):
        entries = real_read(path)
        if threading.current_thread().name == "gpu-tune":
            gpu_read.set()
            other_saved.wait(timeout=1.0)  # the other writer saves meanwhile (or waits for the lock)
        return entries

    monkeypatch.setattr(tuning, "_read_entries", slow_read)

    def gpu() -> None:
        save_profile(Profile(machine="GPU | cuda", dtype="float16", threads=1, batch_seconds=120))

    writer = threading.Thread(target=gpu, name="gpu-tune")
    writer.start()
    assert gpu_read.wait(timeout=10)
    save_profile(Profile(machine="CPU | cpu", dtype="float32", threads=2, batch_seconds=8))
    other_saved.set()
    writer.join()
    machines = sorted(e["machine"] for e in json.loads(profile_file.read_text())["profiles"])
    assert machines == ["CPU | cpu", "GPU | cuda", "seed | cpu"]
    assert not list(profile_file.parent.glob(".*.part"))


def _tune_argv(tiny_models) -> list[str]:
    return [
        "tune", "--model", str(tiny_models.voice), "--encoder", str(tiny_models.encoder),
        "--f0-weights", str(tiny_models.rmvpe), "--files", "1", "--seconds", "0.5",
        "--threads", "1", "--batch-seconds", "4", "--compute-workers", "1", "--device", "cpu", "-q",
    ]


def test_tune_refuses_a_read_only_folder_before_calibrating(tiny_models, profile_file: Path, monkeypatch, capsys) -> None:
    save_profile(Profile(machine=machine_id("cpu"), dtype="float32", threads=1, batch_seconds=8))
    before = profile_file.read_text()
    folder = str(profile_file.parent)
    real_access = os.access
    monkeypatch.setattr(tuning.os, "access", lambda p, mode: False if str(p) == folder else real_access(p, mode))
    with pytest.raises(ValueError, match="not writable"):
        tuning.check_profile_target(profile_file)
    assert main(_tune_argv(tiny_models)) == 2
    assert "not writable" in capsys.readouterr().err
    assert profile_file.read_text() == before


def test_tune_reports_a_failed_save_without_a_traceback(tiny_models, profile_file: Path, monkeypatch, capsys) -> None:
    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tuning.os, "replace", full_disk)
    assert main(_tune_argv(tiny_models)) == 1
    err = capsys.readouterr().err
    assert "cannot write the profile" in err and str(profile_file) in err and "No space left" in err
    assert "Traceback" not in err and "thread(s), batch 4 s" in err  # the measured settings are not lost
    assert not profile_file.exists() and not list(profile_file.parent.glob(".*.part"))

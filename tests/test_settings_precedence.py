"""Where each setting comes from, and which source wins: arguments, the environment
(``RVCFAST_PROFILE``, ``RVCFAST_HOME``, ``MKL_NUM_THREADS``/``OMP_NUM_THREADS``), the ``rvcfast tune``
profile and the defaults; and that ``rvcfast info --system`` shows the values actually used."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import profile_entry, profile_file_fixture, write_profiles  # noqa: F401

from rvcfast import runtime, tuning
from rvcfast.cli import main
from rvcfast.tuning import Profile, apply_threads, load_profile, profile_path, save_profile, tuned_settings

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(name="threads")
def threads_fixture(monkeypatch: pytest.MonkeyPatch):
    """No thread variable set; torch's count put back afterwards."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _quiet_report(device: str = "cpu") -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuning.system_report(device)


# ------------------------------------------------------------------------------ threads


def test_the_thread_variable_torch_prefers_is_the_one_reported() -> None:
    """With both set, torch runs MKL_NUM_THREADS threads: rvcfast named OMP_NUM_THREADS's count."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "1"}
    code = "import torch; from rvcfast import runtime; print(torch.get_num_threads(), runtime.env_thread_count())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    torch_count, rvcfast_count = out.split()
    assert torch_count == rvcfast_count == "1"


@pytest.mark.parametrize("value", ["2abc", "2.5", "0", "abc"])
def test_a_malformed_thread_variable_is_named_and_ignored(threads, monkeypatch, profile_file: Path, value: str) -> None:
    """``OMP_NUM_THREADS=2abc`` is no count to torch (nor OpenMP); rvcfast took it as 2, so the
    profile's threads were skipped and torch's default ran, without a word."""
    write_profiles(profile_file, profile_entry(threads=1))
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert runtime.env_thread_count() is None
    torch.set_num_threads(2)
    with pytest.warns(RuntimeWarning, match=f"OMP_NUM_THREADS='{value}'.*not a thread count"):
        assert apply_threads(load_profile("cpu")) == 1  # the profile's


def test_an_empty_thread_variable_is_unset_without_a_warning(threads, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_threads(None)


def test_info_shows_the_threads_a_cpu_quota_leaves(threads, monkeypatch, profile_file: Path) -> None:
    """No profile, a 1-CPU quota on a 2-core affinity: runs cap torch's 2 threads at 1, and
    ``info --system`` said 2."""
    monkeypatch.setattr(tuning, "available_cores", lambda: 1)
    torch.set_num_threads(2)
    report = _quiet_report()
    assert report["settings"]["threads"] == 1 and "quota" in report["settings"]["sources"]["threads"]
    assert torch.get_num_threads() == 2  # the report changes nothing
    assert apply_threads(None) == report["settings"]["threads"]


@pytest.mark.parametrize("env", [{}, {"OMP_NUM_THREADS": "1"}, {"MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}])
@pytest.mark.parametrize("with_profile", [False, True])
def test_info_threads_are_the_ones_applied(threads, monkeypatch, profile_file: Path, env, with_profile) -> None:
    if with_profile:
        write_profiles(profile_file, profile_entry(threads=2))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    torch.set_num_threads(1)
    report = _quiet_report()
    assert apply_threads(load_profile("cpu")) == report["settings"]["threads"]
    source = report["settings"]["sources"]["threads"]
    assert source.startswith(next(iter(sorted(env))) if env else "profile" if with_profile else "torch's default")


def test_info_says_where_each_setting_comes_from(threads, monkeypatch, profile_file: Path, capsys) -> None:
    """A profile for everything but the threads, which MKL_NUM_THREADS sets: ``source`` said
    "profile" for all of them."""
    write_profiles(profile_file, profile_entry(threads=2, batch_seconds=30.0, compute_workers=2, dtype="float32"))
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert main(["info", "--system", "--device", "cpu", "--json"]) == 0
    system = json.loads(capsys.readouterr().out)["system"]
    assert system["settings"]["sources"] == {
        "auto_dtype": "profile", "threads": "MKL_NUM_THREADS=1", "batch_seconds": "profile", "compute_workers": "profile",
    }
    assert system["profile_file"] == str(profile_file) and system["profile_file_from"] == "RVCFAST_PROFILE"
    assert main(["info", "--system", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\n  threads +1  \(from MKL_NUM_THREADS=1\)\n", text)
    assert re.search(r"\n  batch_seconds +30\.0\n", text)  # from the profile, as the source line says
    assert re.search(r"\n  source +profile\n", text)


# ------------------------------------------------------------------------------ the profile file


def test_an_empty_rvcfast_profile_is_unset_not_off(monkeypatch, tmp_path: Path) -> None:
    """``RVCFAST_PROFILE=`` (a template left empty) switched profiles off without a word, unlike
    an empty RVCFAST_HOME (unset)."""
    monkeypatch.setenv("RVCFAST_HOME", str(tmp_path))
    monkeypatch.setenv("RVCFAST_PROFILE", "")
    assert profile_path() == tmp_path / "profile.json"
    assert tuning.profile_location()[1] == "RVCFAST_HOME"
    monkeypatch.setenv("RVCFAST_PROFILE", "Off")
    assert profile_path() is None and tuning.profile_location()[1] == "RVCFAST_PROFILE=Off"


@pytest.mark.parametrize("value", ["0", "none"])
def test_tune_names_the_value_that_switched_profiles_off(monkeypatch, capsys, value: str) -> None:
    monkeypatch.setenv("RVCFAST_PROFILE", value)
    assert main(["tune", "--model", "/nonexistent/voice.pth", "--device", "cpu"]) == 2
    assert f"RVCFAST_PROFILE={value}" in capsys.readouterr().err


def test_a_relative_profile_path_is_shown_absolute(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RVCFAST_PROFILE", "tuned.json")
    assert profile_path() == tmp_path / "tuned.json"
    monkeypatch.delenv("RVCFAST_PROFILE")
    monkeypatch.setenv("RVCFAST_HOME", "home")
    assert profile_path() == tmp_path / "home" / "profile.json"


def test_the_profile_variable_is_read_at_each_load_not_at_import(monkeypatch, tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    write_profiles(first, profile_entry(batch_seconds=11.0))
    write_profiles(second, profile_entry(batch_seconds=22.0))
    monkeypatch.setenv("RVCFAST_PROFILE", str(first))
    assert load_profile("cpu").batch_seconds == 11.0
    monkeypatch.setenv("RVCFAST_PROFILE", str(second))
    assert load_profile("cpu").batch_seconds == 22.0


@pytest.mark.parametrize("named_by", ["--output", "RVCFAST_PROFILE"])
def test_tune_leaves_a_read_only_profile_as_it_is(monkeypatch, tmp_path: Path, capsys, named_by: str) -> None:
    """A profile made read-only (pinned for a fleet) was replaced by `rvcfast tune`: the new file
    is written beside it and renamed over it, which needs only the folder to be writable."""
    pinned = tmp_path / "pinned.json"
    save_profile(Profile(machine=tuning.machine_id("cpu"), dtype="float32", threads=1, batch_seconds=8.0), pinned)
    pinned.chmod(0o444)
    before = pinned.read_bytes()
    args = ["tune", "--model", "/nonexistent/voice.pth", "--device", "cpu"]
    if named_by == "--output":
        args += ["--output", str(pinned)]
    else:
        monkeypatch.setenv("RVCFAST_PROFILE", str(pinned))
    try:
        assert main(args) == 2  # before any model is looked for
        err = capsys.readouterr().err
        assert str(pinned) in err and "read-only" in err and named_by in err
        assert pinned.read_bytes() == before
    finally:
        pinned.chmod(0o644)


# ------------------------------------------------------------------------------ arguments win


def test_explicit_arguments_beat_the_profile(profile_file: Path) -> None:
    write_profiles(profile_file, profile_entry(dtype="float32", batch_seconds=30.0))
    profile = load_profile("cpu")
    cpu = torch.device("cpu")
    assert tuned_settings("float32", 4.0, cpu, profile=profile) == (torch.float32, 4.0)
    assert tuned_settings("auto", None, cpu, profile=profile) == (torch.float32, 30.0)


def test_a_ray_worker_takes_its_threads_from_the_job_not_the_profile_or_environment(threads, monkeypatch, profile_file) -> None:
    """Ray model workers are other processes with their own environment: their torch threads are
    the job's ``threads_per_worker``, else the node's CPUs divided among its workers."""
    stages = pytest.importorskip("rvcfast.integrations.ray._stages")
    write_profiles(profile_file, profile_entry(threads=7))
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    spec = stages.JobSpec(files=[], params=None, out_dir="out", threads=3)
    assert stages.worker_threads({"CPU": 8.0}, spec) == 3
    spec = stages.JobSpec(files=[], params=None, out_dir="out", workers_per_node=4)
    assert stages.worker_threads({"CPU": 8.0}, spec) == 2


NO_USER = "~rvcfast-no-such-user-4c1e"


@pytest.mark.parametrize("variable", ["RVCFAST_PROFILE", "RVCFAST_HOME"])
def test_a_home_of_no_user_is_named_not_a_traceback(monkeypatch, capsys, variable: str) -> None:
    """``RVCFAST_HOME=~nosuchuser/x`` raised RuntimeError ("Could not determine home directory")
    from every model load's profile lookup, and from `rvcfast tune`."""
    monkeypatch.delenv("RVCFAST_PROFILE", raising=False)
    monkeypatch.setenv(variable, f"{NO_USER}/x")
    with pytest.warns(RuntimeWarning, match=f"{variable}=.*cannot expand '{NO_USER}'"):
        assert load_profile("cpu") is None
    with pytest.warns(RuntimeWarning):
        assert variable in tuning.system_report("cpu")["settings"]["source"]
    assert main(["tune", "--model", "/nonexistent/voice.pth", "--device", "cpu"]) == 2
    assert f"{variable}='{NO_USER}/x': cannot expand" in capsys.readouterr().err


def test_an_rvcfast_home_that_cannot_be_expanded_is_an_error_naming_it(monkeypatch) -> None:
    """Every base-weights lookup raised pathlib's RuntimeError ("Could not determine home directory")."""
    from rvcfast.errors import ParameterError
    from rvcfast.weights import search_dirs

    monkeypatch.setenv("RVCFAST_HOME", "~nosuchuser-rvcfast/models")
    with pytest.raises(ParameterError, match=r"RVCFAST_HOME='~nosuchuser-rvcfast/models': cannot expand '~nosuchuser-rvcfast'"):
        search_dirs()

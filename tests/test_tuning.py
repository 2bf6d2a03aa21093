"""``rvcfast tune``: calibration, the stored profile, and how later runs use it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401

from rvcfast import tuning
from rvcfast.cli import main
from rvcfast.errors import RvcfastError
from rvcfast.result import Result
from rvcfast.tuning import Profile, Trial, apply_threads, calibrate, load_profile, machine_id, save_profile


@pytest.fixture()
def profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "profile.json"
    monkeypatch.setenv("RVCFAST_PROFILE", str(path))
    return path


def test_tune_writes_a_profile_that_later_runs_read(tiny_models, profile_file: Path, capsys) -> None:
    argv = [
        "tune", "--model", str(tiny_models.voice), "--encoder", str(tiny_models.encoder),
        "--f0-weights", str(tiny_models.rmvpe), "--files", "1", "--seconds", "0.5",
        "--threads", "1", "--batch-seconds", "4", "--device", "cpu", "--json",
    ]
    assert main(argv) == 0
    written = json.loads(capsys.readouterr().out)
    assert profile_file.is_file() and json.loads(profile_file.read_text()) == {"profiles": [written]}
    profile = load_profile("cpu")
    assert profile is not None and profile.machine == machine_id("cpu")
    assert profile.threads == 1 and profile.batch_seconds == 4.0
    assert {t.dtype for t in profile.trials} >= {"float32"}
    assert all(t.seconds > 0 for t in profile.trials)
    # bf16 trials carry their SNR against float32
    assert all(t.snr_db is not None for t in profile.trials if t.dtype != "float32")


def _profile(dtype: str = "bfloat16", batch: float = 3.5, machine: str | None = None) -> Profile:
    return Profile(machine=machine or machine_id("cpu"), dtype=dtype, threads=1, batch_seconds=batch)


def test_engine_uses_the_profile_for_auto_and_batch_size(tiny_models, profile_file: Path) -> None:
    save_profile(_profile("bfloat16", 3.5))
    conv = tiny_models.converter(dtype="auto")
    assert conv.dtype == torch.bfloat16 and conv.engine.batch_seconds == 3.5
    explicit = tiny_models.converter(dtype="float32", batch_seconds=6.0)
    assert explicit.dtype == torch.float32 and explicit.engine.batch_seconds == 6.0
    save_profile(_profile("float32", 5.0))
    assert tiny_models.converter(dtype="auto").dtype == torch.float32


def test_a_profile_from_another_machine_or_damaged_is_ignored(profile_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_profile(_profile(machine="Some Other CPU [avx2] x64 | torch 0.0 | cpu"))
    assert load_profile("cpu") is None
    profile_file.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="ignoring the rvcfast profile"):
        assert load_profile("cpu") is None
    save_profile(_profile())
    assert load_profile("cpu") is not None
    monkeypatch.setenv("RVCFAST_PROFILE", "off")
    assert load_profile("cpu") is None


def test_apply_threads_respects_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert apply_threads(Profile(machine="x", dtype="float32", threads=1, batch_seconds=8)) == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_threads(Profile(machine="x", dtype="float32", threads=1, batch_seconds=8)) == 2
    finally:
        torch.set_num_threads(before)


class _VirtualClock:
    """``time`` for :mod:`rvcfast.tuning` in these tests: the fakes advance it instead of
    sleeping, so the measured costs are exact whatever else the machine is doing."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now

    strftime = staticmethod(time.strftime)


@pytest.fixture
def virtual_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "time", _VirtualClock)


class _FakeConverter:
    """Stands in for a Converter: a fixed cost per call (on the virtual clock) and an output with a chosen error."""

    def __init__(self, dtype: str, cost: float, error: float, worker_gain: float = 1.0) -> None:
        self.dtype, self.cost, self.error, self.worker_gain = dtype, cost, error, worker_gain
        self.calls: list[tuple[int, int, int]] = []

    def convert_batch(self, inputs, batch_seconds: float, noise: bool, compute_workers: int = 1):
        self.calls.append((torch.get_num_threads(), compute_workers, len(inputs)))
        gain = self.worker_gain if compute_workers > 1 else 1.0
        _VirtualClock.now += self.cost * len(inputs) * (1.0 if batch_seconds == 8.0 else 1.5) * gain
        rng = np.random.default_rng(0)
        out = []
        for x, _ in inputs:
            y = x.astype(np.float32) + self.error * rng.standard_normal(x.shape[0]).astype(np.float32)
            out.append(Result(y, 16000))
        return out


@pytest.mark.usefixtures("virtual_clock")
def test_calibrate_picks_the_fastest_precise_enough_setting() -> None:
    clips = [np.sin(np.arange(4000) / 10.0)]
    fast_but_noisy = {"float32": (0.06, 0.0), "bfloat16": (0.01, 0.5)}  # bf16: SNR about 3 dB
    profile = calibrate(
        lambda dt: _FakeConverter(dt, *fast_but_noisy[dt]), clips, device=torch.device("cpu"),
        dtypes=["float32", "bfloat16"], threads=[1], batch_seconds=(8.0, 30.0), min_snr_db=20.0,
    )
    assert (profile.dtype, profile.batch_seconds) == ("float32", 8.0)
    assert len(profile.trials) == 4 and all(isinstance(t, Trial) for t in profile.trials)
    fast_and_fine = {"float32": (0.06, 0.0), "bfloat16": (0.01, 1e-4)}
    profile = calibrate(
        lambda dt: _FakeConverter(dt, *fast_and_fine[dt]), clips, device=torch.device("cpu"),
        dtypes=["float32", "bfloat16"], threads=[1], batch_seconds=(8.0,), min_snr_db=20.0,
    )
    assert profile.dtype == "bfloat16"
    assert [t.snr_db for t in profile.trials if t.dtype == "bfloat16"][0] > 60


@pytest.mark.usefixtures("virtual_clock")
def test_calibrate_tries_compute_workers_and_wants_them_clearly_faster() -> None:
    clips = [np.sin(np.arange(4000) / 10.0)] * 2
    before = torch.get_num_threads()
    fakes: list[_FakeConverter] = []

    def make(gain: float):
        def build(dt: str) -> _FakeConverter:
            fakes.append(_FakeConverter(dt, 0.05, 0.0, worker_gain=gain))
            return fakes[-1]

        return build

    # two workers 40 % faster: chosen, and measured with all the threads at the smallest batch size
    profile = calibrate(
        make(0.6), clips, device=torch.device("cpu"), dtypes=["float32"], threads=[1, 2], batch_seconds=(8.0, 30.0)
    )
    assert profile.compute_workers == 2 and profile.threads == 2 and profile.batch_seconds == 8.0
    assert [(t.threads, t.batch_seconds, t.compute_workers) for t in profile.trials] == [
        (1, 8.0, 1), (1, 30.0, 1), (2, 8.0, 1), (2, 30.0, 1), (2, 8.0, 2),
    ]
    assert fakes[-1].calls[-1] == (2, 2, 8) and torch.get_num_threads() == before  # two clips 4 times: 2 groups of 4
    # within the margin (they hold more memory): one worker stays
    profile = calibrate(make(0.99), clips, device=torch.device("cpu"), dtypes=["float32"], threads=[2], batch_seconds=(8.0,))
    assert profile.compute_workers == 1
    # three clips for two workers are sent eight times (24 clips: four 2.25 s padded clips fill
    # an 8 s group, the same number of full groups for each worker), the time scaled back to one pass
    three = calibrate(make(0.6), clips + clips[:1], device=torch.device("cpu"), dtypes=["float32"], threads=[2], batch_seconds=(8.0,))
    assert fakes[-1].calls[-1] == (2, 2, 24)
    one_worker, two_workers = three.trials
    assert two_workers.seconds == pytest.approx(0.6 * one_worker.seconds, rel=0.3)
    # one thread: nothing to share, no multi-worker trial
    one = calibrate(make(0.6), clips, device=torch.device("cpu"), dtypes=["float32"], threads=[1], batch_seconds=(8.0,))
    assert {t.compute_workers for t in one.trials} == {1}
    with pytest.raises(ValueError, match="compute_workers"):
        calibrate(make(0.6), clips, device=torch.device("cpu"), dtypes=["float32"], threads=[2], compute_workers=[0])


def test_workers_rounds_give_every_worker_as_many_groups() -> None:
    from rvcfast.batch import group_is_full, split_groups

    five = 7 * 16000  # a 5 s calibration clip and its 2 s of padding
    budget = 8 * 16000
    for lengths, batch_samples, workers, expected in [
        ([five] * 4, budget, 2, 1),  # two clips a group: 2 groups in one pass
        ([five] * 3, budget, 2, 4),  # 3 clips: a pass ends in half a group
        ([five] * 3, budget, 3, 2),  # 3 groups of two
        ([five] * 3, 30 * 16000, 2, 10),  # 5 clips a group, 2 groups: more rounds than allowed
        ([36000] * 2, budget, 2, 4),  # 0.25 s clips: four a group
    ]:
        rounds = tuning._workers_rounds(lengths, batch_samples, workers)
        assert rounds == min(expected, 8) or (expected > 8 and rounds <= 8), (lengths, rounds)
        groups = split_groups(lengths * rounds, batch_samples)
        assert len(groups) % workers == 0
        if expected <= 8:  # every group full: the workers get equal work
            assert all(group_is_full(len(g), sum(g), batch_samples) for g in groups)
    assert tuning._workers_rounds([five] * 3, budget, 1) == 1


def test_info_system_reports_features_and_settings(profile_file: Path, capsys) -> None:
    assert main(["info", "--system", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["system"]
    assert {"avx2", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"} <= set(report["features"])
    assert isinstance(report["native_bf16"], bool) and isinstance(report["native_fp16"], bool)
    assert report["settings"]["source"].startswith("defaults")
    save_profile(_profile("float32", 4.0))
    assert main(["info", "--system", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert str(profile_file) in text and re.search(r"batch_seconds +4\.0\n", text)
    assert re.search(r"compute_workers +1\n", text)
    assert main(["info"]) == 2  # neither a model nor --system


@pytest.mark.parametrize(
    "flags,expected",
    [({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16), ({"amx_tile", "amx_bf16"}, torch.bfloat16), ({"avx2", "fma"}, torch.float32)],
)
def test_dtype_auto_without_a_profile_follows_the_hardware(profile_file: Path, monkeypatch, flags, expected) -> None:
    from rvcfast import runtime

    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset(flags))
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize(
    "content",
    [
        "null",
        '"fast"',
        "5",
        '{"profiles": 5}',
        '{"profiles": [7]}',
        '{"machine": "M", "dtype": "float64", "threads": 1, "batch_seconds": 8}',
        '{"machine": "M", "dtype": "float32", "threads": "4", "batch_seconds": 8}',
        '{"machine": "M", "dtype": "float32", "threads": 2, "batch_seconds": -1}',
        '{"machine": "M", "dtype": "float32", "threads": 2, "batch_seconds": 8, "compute_workers": 0}',
        '{"machine": "M", "dtype": "float32", "threads": 2, "batch_seconds": 8, "colour": "red"}',
        '{"machine": "M", "dtype": "float32", "threads": 2, "batch_seconds": 8, "trials": [{"dtype": 1}]}',
    ],
)
def test_a_bad_profile_file_is_ignored_with_a_warning_and_loading_goes_on(
    tiny_models, profile_file: Path, content: str
) -> None:
    # with the profile's machine set to this one, so that only the bad value can reject it
    profile_file.write_text(content.replace('"M"', json.dumps(machine_id("cpu"))))
    with pytest.warns(RuntimeWarning, match=re.escape(str(profile_file))):
        assert load_profile("cpu") is None
    with pytest.warns(RuntimeWarning):
        conv = tiny_models.converter(dtype="auto")  # every model load reads the profile: never fatal
    from rvcfast.runtime import resolve_dtype

    assert conv.dtype == resolve_dtype("auto", torch.device("cpu"))


def test_profiles_of_several_machines_and_devices_share_the_file(profile_file: Path) -> None:
    gpu = "NVIDIA Something + " + machine_id("cpu").replace(" | cpu", " | cuda")
    save_profile(_profile("float32", 4.0))
    save_profile(_profile("float16", 120.0, machine=gpu))  # e.g. `rvcfast tune --device cuda`
    other = "Other CPU [avx2] x64 | torch 9 | cpu"
    save_profile(_profile("bfloat16", 30.0, machine=other))  # a home folder shared with another machine
    entries = json.loads(profile_file.read_text())["profiles"]
    assert sorted(e["machine"] for e in entries) == sorted([machine_id("cpu"), gpu, other])
    here = load_profile("cpu")
    assert here is not None and (here.dtype, here.batch_seconds) == ("float32", 4.0)
    save_profile(_profile("bfloat16", 8.0))  # this machine's entry is replaced, the others kept
    entries = json.loads(profile_file.read_text())["profiles"]
    assert len(entries) == 3 and [e["dtype"] for e in entries if e["machine"] == machine_id("cpu")] == ["bfloat16"]
    # a file as first written (one profile, no list) is still read, and kept when another machine saves
    profile_file.write_text(_profile("float32", 6.0).to_json())
    assert load_profile("cpu").batch_seconds == 6.0
    save_profile(_profile("float32", 5.0, machine=other))
    assert load_profile("cpu").batch_seconds == 6.0
    # another machine's entry written by a newer rvcfast (a field this version does not know)
    # neither hides this machine's entry nor is lost when this machine saves
    entries = json.loads(profile_file.read_text())["profiles"]
    entries.append({"machine": "Future CPU | cpu", "dtype": "float32", "threads": 1, "batch_seconds": 8, "new_knob": 3})
    profile_file.write_text(json.dumps({"profiles": entries}))
    assert load_profile("cpu").batch_seconds == 6.0
    save_profile(_profile("float32", 7.0))
    saved = json.loads(profile_file.read_text())["profiles"]
    assert {"machine": "Future CPU | cpu", "dtype": "float32", "threads": 1, "batch_seconds": 8, "new_knob": 3} in saved
    # the file stays bounded: the oldest entries go
    for i in range(30):
        save_profile(Profile(machine=f"CPU {i} | cpu", dtype="float32", threads=1, batch_seconds=8, created=f"{i:04d}"))
    machines = [e["machine"] for e in json.loads(profile_file.read_text())["profiles"]]
    assert len(machines) == tuning.MAX_PROFILES and machines[-1] == "CPU 29 | cpu" and "CPU 0 | cpu" not in machines
    assert not list(profile_file.parent.glob(".*.part"))


@pytest.mark.usefixtures("virtual_clock")
def test_calibration_never_chooses_a_failing_or_non_finite_setting() -> None:
    clips = [np.sin(np.arange(4000) / 10.0), np.cos(np.arange(4000) / 7.0)]

    class Failing(_FakeConverter):
        def __init__(self, dtype: str, cost: float, how: str) -> None:
            super().__init__(dtype, cost, 0.0)
            self.how = how

        def convert_batch(self, inputs, batch_seconds: float, noise: bool, compute_workers: int = 1):
            out = super().convert_batch(inputs, batch_seconds, noise, compute_workers)
            if self.how == "error":
                out[1] = Result(np.zeros(0, np.float32), 16000, error="clip 1: kernel missing")
            elif self.how == "nan":
                out[1].audio[5] = np.nan  # the second clip: min() over SNRs would skip a NaN
            elif self.how == "empty":
                out[0] = Result(np.zeros(0, np.float32), 16000)
            return out

    for how in ("error", "nan", "empty"):
        profile = calibrate(
            lambda dt, how=how: Failing(dt, 0.05 if dt == "float32" else 0.005, how if dt == "bfloat16" else ""),
            clips, device=torch.device("cpu"), dtypes=["bfloat16"], threads=[1], batch_seconds=(8.0,),
        )
        # float32 is measured (first) even when not asked for: it is the reference
        assert [t.dtype for t in profile.trials] == ["float32", "bfloat16"]
        assert profile.dtype == "float32", how
        bf16 = profile.trials[1]
        assert bf16.error is not None and bf16.snr_db is None, how
    # and an SNR is never higher for a damaged output
    ref = np.sin(np.arange(1000) / 5.0)
    bad = ref.copy()
    bad[3] = np.nan
    assert tuning._snr_db(ref, bad) == float("-inf") and tuning._snr_db(ref, ref[:10]) == float("-inf")
    assert tuning._snr_db(ref, ref) == float("inf")
    with pytest.raises(RvcfastError, match="no float32 setting.*kernel missing"):
        calibrate(lambda dt: Failing(dt, 0.01, "error"), clips, device=torch.device("cpu"), threads=[1], batch_seconds=(8.0,))


def test_tune_refuses_to_start_when_it_could_not_save(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("RVCFAST_PROFILE", "off")
    # found before any model is loaded or built (these paths do not exist)
    assert main(["tune", "--model", "/nonexistent/voice.pth", "--device", "cpu"]) == 2
    assert "RVCFAST_PROFILE=off" in capsys.readouterr().err


def test_info_system_says_why_no_profile_applies(profile_file: Path, capsys) -> None:
    report = tuning.system_report("cpu")
    assert report["settings"]["batch_seconds"] == 8.0  # the CPU default, not None
    save_profile(_profile("float32", 4.0, machine="Other CPU [avx2] x64 | torch 9 | cpu"))
    report = tuning.system_report("cpu")
    assert report["profile"] is None and str(profile_file) in report["settings"]["source"]


def test_the_server_takes_precision_and_threads_from_the_profile(tiny_models, profile_file: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("fastapi")
    from rvcfast.serve.config import ServeConfig
    from rvcfast.serve.state import ServerState

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    save_profile(Profile(machine=machine_id("cpu"), dtype="bfloat16", threads=1, batch_seconds=8.0))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    state = ServerState(ServeConfig(voices=(str(tiny_models.voice),), device="cpu", dtype="auto", jobs_dir=str(tmp_path / "jobs")))
    try:
        assert state.dtype == torch.bfloat16
        state.start()
        assert torch.get_num_threads() == 1
    finally:
        state.close()
        torch.set_num_threads(before)

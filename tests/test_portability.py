"""Windows and macOS behaviour checked on Linux: the "spawn" start method for the F0 worker
processes (real child processes), and the Windows branches (file names, process probes,
soundfile paths, renames over open files, lock files) with ``sys.platform`` and the Windows
modules faked."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from helpers import TinyModels, one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
import rvcfast.atomic as atomic
import rvcfast.batch as batch
import rvcfast.weights as weights
import rvcfast.writing as writing

REPO = Path(__file__).resolve().parent.parent


def _run_script(tmp_path: Path, name: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", RVCFAST_PROFILE="off")
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture
def two_inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, seconds in enumerate((0.4, 0.6)):
        sf.write(folder / f"take{i}.wav", tone(seconds, freq=180 + 40 * i), 16000)
    return folder


# ------------------------------------------------------------------ spawn (Windows, macOS)

_GUARDED = """
import json, multiprocessing, sys
import numpy as np
import rvcfast
from rvcfast.cli import main as cli

def run(models, inputs, out):
    report = {}
    for f0 in ("pm", "harvest"):
        conv = rvcfast.Converter.from_pretrained(
            models + "/voice_v2_40k_f0.pth", encoder=models + "/contentvec_hf", f0=f0, device="cpu")
        results = conv.convert_batch([inputs], out + "/" + f0, f0_workers=1, noise=False, keep_audio=True)
        alone = conv.convert(results[0].source, noise=False)  # its F0 computed in this process
        # (batched beside another file, the networks' sums round differently: ~1e-10)
        same = results[0].audio.shape == alone.audio.shape and np.abs(results[0].audio - alone.audio).max() < 1e-5
        report[f0] = {"errors": [r.error for r in results], "same": bool(same)}
    report["cli"] = cli(["convert", models + "/voice_v2_40k_f0.pth", inputs, "-o", out + "/cli", "-q",
                         "--encoder", models + "/contentvec_hf", "--f0", "pm", "--f0-workers", "1"])
    print("REPORT " + json.dumps(report))

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    run(*sys.argv[1:])
"""


def test_f0_worker_processes_work_with_spawn(tiny_models: TinyModels, two_inputs: Path, tmp_path: Path) -> None:
    # Windows and macOS start worker processes with "spawn": the pm and harvest trackers are
    # pickled to fresh interpreters, which import the main script again (library and CLI alike).
    proc = _run_script(tmp_path, "guarded.py", _GUARDED, str(tiny_models.root), str(two_inputs), str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    for f0 in ("pm", "harvest"):
        assert report[f0] == {"errors": [None, None], "same": True}
        assert sorted(p.name for p in (tmp_path / "out" / f0).iterdir()) == ["take0.wav", "take1.wav"]
    assert report["cli"] == 0
    assert sorted(p.name for p in (tmp_path / "out" / "cli").iterdir()) == ["take0.wav", "take1.wav"]


_UNGUARDED = """
import multiprocessing, sys
import rvcfast
print("RUN", __name__, flush=True)
multiprocessing.set_start_method("spawn", force=True)
models, inputs, out = sys.argv[1:]  # a spawned worker gets the parent's sys.argv
conv = rvcfast.Converter.from_pretrained(models + "/voice_v2_40k_f0.pth", encoder=models + "/contentvec_hf", f0="pm")
try:
    results = conv.convert_batch([inputs], out, f0_workers=1)
    print("RESULTS", [r.error for r in results], flush=True)
except rvcfast.RvcfastError as exc:
    print("ERROR", exc, flush=True)
    sys.exit(7)
"""


def test_a_script_without_main_guard_gets_one_clear_error(tiny_models: TinyModels, two_inputs: Path, tmp_path: Path) -> None:
    # Without `if __name__ == "__main__":` each spawned worker runs the script again and dies at
    # its own convert_batch. Every file used to fail with "the F0 worker process died ... (a crash
    # or out of memory)", exit status 0, after a new process per file had run the script again.
    proc = _run_script(tmp_path, "unguarded.py", _UNGUARDED, str(tiny_models.root), str(two_inputs), str(tmp_path / "out"))
    assert proc.returncode == 7, proc.stdout + proc.stderr[-3000:]
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    assert "'pm'" in error and "'spawn'" in error and 'if __name__ == "__main__":' in error
    assert "RESULTS" not in proc.stdout
    assert proc.stdout.count("RUN __mp_main__") == 1  # the one worker process of the pool, no more
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


_TORCH_FREE = """
import json, multiprocessing, sys
import numpy as np

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    from rvcfast.f0.hybrid import HybridExtractor
    from rvcfast.f0.pm import PMExtractor
    from rvcfast.f0.swift import SwiftF0Extractor
    from rvcfast.f0.world import DioExtractor, HarvestExtractor
    from rvcfast.f0_pool import F0Pool

    t = np.arange(12000) / 16000
    x = sum(0.3 / k * np.sin(2 * np.pi * 180 * k * t) for k in range(1, 6)).astype(np.float32)  # harvest needs harmonics
    report = {}
    for ext in (HarvestExtractor(filter_radius=3), DioExtractor(), PMExtractor(), SwiftF0Extractor(),
                HybridExtractor([HarvestExtractor(), PMExtractor()])):
        pool = F0Pool(ext, 1)
        try:
            track = pool.submit(x).result()
            worker = pool._pool  # the probes run in the same (only) worker process
            report[ext.name] = {
                "same": bool(np.array_equal(track, ext.extract(x))),
                "voiced": int((track > 0).sum()),
                "torch": worker.submit(eval, "'torch' in __import__('sys').modules").result(),
            }
        finally:
            pool.shutdown()
    print("REPORT " + json.dumps(report))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_cpu_f0_workers_do_not_import_torch(tmp_path: Path, method: str) -> None:
    # A worker process started by "spawn" (Windows, macOS) or "forkserver" (Python 3.14's default
    # on Linux) unpickles the tracker it runs: harvest, dio, pm and swift once imported torch
    # there, 1-2 s and a few hundred MB per worker for every batch. Their tracks are the same.
    proc = _run_script(tmp_path, "torch_free.py", _TORCH_FREE, method)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert sorted(report) == ["dio", "harvest", "hybrid:harvest+pm", "pm", "swift"]
    for name, seen in report.items():
        assert seen["same"], name
        assert seen["voiced"] > 40, name  # 0.75 s of a 180 Hz voice-like tone: tracked, not silence
        assert seen["torch"] is False, name


def test_a_pickled_tracker_gets_its_torch_device_back_where_torch_is_imported() -> None:
    # In this process (torch imported) a copy or an unpickled tracker has torch's device and dtype
    import copy
    import pickle

    import torch

    from rvcfast.f0.world import HarvestExtractor

    ext = HarvestExtractor(dtype="bfloat16")
    for again in (pickle.loads(pickle.dumps(ext)), copy.copy(ext), copy.deepcopy(ext)):
        assert again.device == torch.device("cpu") and isinstance(again.device, torch.device)
        assert again.dtype is torch.bfloat16
        assert again._pyworld is ext._pyworld and again.filter_radius == 3
        assert "_torch_names" not in vars(again) and "_module_names" not in vars(again)


def test_an_unpickled_tracker_imports_torch_only_at_the_first_use_of_its_device(tmp_path: Path) -> None:
    # a plugin that declares cpu_bound and uses self.dtype in extract still gets torch's dtype
    import pickle

    from rvcfast.f0.world import HarvestExtractor

    blob = tmp_path / "ext.pkl"
    blob.write_bytes(pickle.dumps(HarvestExtractor(dtype="bfloat16")))
    code = f"""
    import pickle, sys
    ext = pickle.loads(open({str(blob)!r}, "rb").read())
    before = "torch" in sys.modules
    again = pickle.loads(pickle.dumps(ext))  # not used yet: pickled on by name
    print("SEEN", before, ext.filter_radius, repr(ext.dtype), repr(ext.device), "torch" in sys.modules,
          repr(again.dtype), repr(again.device), vars(ext).get("_torch_names"))
    """
    proc = _run_script(tmp_path, "lazy.py", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("SEEN ", 1)[1].split() == [
        "False", "3", "torch.bfloat16", "device(type='cpu')", "True", "torch.bfloat16", "device(type='cpu')", "None"
    ]


# ------------------------------------------------------------------ Windows branches, faked


class _FakeKernel32:
    """OpenProcess/GetExitCodeProcess over a table ``pid -> exit code`` (259: still running)."""

    def __init__(self, processes: dict[int, int], denied: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.processes, self.denied, self.error, self.closed = processes, denied, 0, 0

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:  # noqa: N802 - the Windows name
        if pid in self.denied:
            self.error = 5
            return 0
        if pid not in self.processes:
            self.error = 87
            return 0
        return 1000 + pid

    def GetExitCodeProcess(self, handle: int, code: object) -> bool:  # noqa: N802
        code._obj.value = self.processes[handle - 1000]  # type: ignore[attr-defined]
        return True

    def CloseHandle(self, handle: int) -> bool:  # noqa: N802
        self.closed += 1
        return True


def _no_kill(pid: int, sig: int) -> None:
    raise AssertionError(f"os.kill({pid}, {sig}) on Windows sends CTRL_C_EVENT, it is no probe")


def test_stale_part_files_on_windows_probe_processes_without_os_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = _FakeKernel32({401: 259, 402: 0}, denied={403})
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", _no_kill)
    monkeypatch.setattr(atomic, "_kernel32", lambda: kernel, raising=False)
    monkeypatch.setattr(atomic, "_last_error", lambda: kernel.error, raising=False)
    host = writing.this_host()
    parts = {pid: tmp_path / f".a.wav.{host}~{pid}~ab12.part" for pid in (401, 402, 403, 404)}
    for p in parts.values():
        p.write_bytes(b"x")
    removed = writing.remove_stale_parts(tmp_path)
    # running (401) and another user's (403, access denied) stay; exited (402) and gone (404) go
    assert sorted(removed) == sorted([parts[402], parts[404]])
    assert parts[401].exists() and parts[403].exists()
    assert kernel.closed == 2


def test_soundfile_gets_text_paths_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # soundfile opens bytes with sf_open, which Windows' libsndfile reads in the ANSI code page:
    # a name with accents or kana (or a user folder C:\Users\José) failed, or was written under a
    # garbled name while the output stayed empty. Text goes to sf_wchar_open.
    real = sf.SoundFile
    seen: list[type] = []

    def spy(file: object, *args: object, **kwargs: object) -> sf.SoundFile:
        if isinstance(file, (str, bytes)):  # (a format is tried on a BytesIO first)
            seen.append(type(file))
        return real(os.fsencode(file) if isinstance(file, str) else file, *args, **kwargs)  # type: ignore[arg-type]

    target = tmp_path / "José" / "歌.wav"
    monkeypatch.setattr(sf, "SoundFile", spy)
    monkeypatch.setattr(sys, "platform", "win32")
    writing.write_audio_atomic(target, np.zeros(400, np.float32), 16000, source=tmp_path / "in.wav")
    assert writing.finished_output(target) and writing.recorded_source(target) == writing.source_id(tmp_path / "in.wav")
    assert seen == [str, str, str]
    assert writing.sndfile_path(Path("C:/x.wav")) == "C:/x.wav"
    monkeypatch.setattr(sys, "platform", "linux")
    assert writing.sndfile_path(Path("caf\udce9.wav")) == b"caf\xe9.wav"  # elsewhere bytes, as before
    assert sf.info(os.fsencode(target)).frames == 400


@pytest.mark.parametrize(
    ("template", "kwargs", "problem"),
    [
        ("{stem}:{pitch}", {}, "':'"),
        ('{stem} "{voice}"', {}, "'\"'"),
        ("nul/{stem}", {}, "device name"),
        ("{stem}./{index}", {}, "ends in a dot"),
        ("{voice}/{stem}", {"voice": "bob?"}, "'?'"),
    ],
)
def test_windows_output_names_refused_before_any_work(
    tiny_converter: rvcfast.Converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str, kwargs: dict, problem: str
) -> None:
    src = tmp_path / "take.wav"
    sf.write(src, tone(0.3), 16000)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(batch, "windows_long_paths", lambda: True, raising=False)
    out = tmp_path / "out"
    with pytest.raises(rvcfast.ParameterError, match="cannot be written on Windows") as info:
        if kwargs:
            rvcfast.convert_voices({kwargs["voice"]: tiny_converter}, [src], out, name_template=template)
        else:
            tiny_converter.convert_batch([src], out, name_template=template)
    assert problem in str(info.value) and str(src) in str(info.value)
    assert not out.exists() or not any(out.rglob("*"))
    # the same names are written elsewhere (where they are legal)
    assert writing.windows_name_problem("take.wav") is None and writing.windows_name_problem("Con1.wav") is None


def test_one_input_whose_output_windows_cannot_name_fails_alone(
    tiny_converter: rvcfast.Converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input named ``take:2.wav`` (legal on Linux and macOS, e.g. on a share) stopped the
    whole batch on Windows before any work; now it fails alone, named, and the others are
    converted (a folder or template that no output can use still stops it at once, above)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.wav", "take:2.wav", "z.wav"):
        sf.write(src / name, tone(0.3), 16000)
    # the batch's checks as on Windows; the writes as on this machine (soundfile's Windows calls are not here)
    monkeypatch.setattr(batch, "sys", SimpleNamespace(platform="win32"))
    monkeypatch.setattr(batch, "windows_long_paths", lambda: True, raising=False)
    out = tmp_path / "out"
    results = tiny_converter.convert_batch([src], out)
    by_name = {Path(r.source).name: r for r in results}
    assert by_name["a.wav"].ok and by_name["z.wav"].ok
    bad = by_name["take:2.wav"]
    assert not bad.ok and "cannot be written on Windows" in bad.error and "':'" in bad.error and str(src / "take:2.wav") in bad.error
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "z.wav"]
    with pytest.raises(rvcfast.RvcfastError, match="cannot be written on Windows") as info:  # on_error="stop": at that file
        tiny_converter.convert_batch([src], tmp_path / "out2", on_error="stop")
    assert not isinstance(info.value, rvcfast.ParameterError)  # a file's failure, not a usage error


def test_windows_paths_too_long_refused_unless_long_paths_are_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / ("d" * 60) / ("e" * 60)
    short = out / "take.wav"
    near = out / ("n" * (writing.WINDOWS_MAX_PATH - len(str(out)) - 6) + ".wav")  # fits; its temporary file does not
    assert len(str(near)) <= writing.WINDOWS_MAX_PATH
    writing.check_windows_output(out, short, "take.wav", long_paths=False)
    with pytest.raises(rvcfast.ParameterError, match=r"longer than Windows allows .*LongPathsEnabled") as info:
        writing.check_windows_output(out, near, "in.wav", long_paths=False)
    assert "in.wav" in str(info.value) and "temporary file" in str(info.value)
    writing.check_windows_output(out, near, "in.wav", long_paths=True)


def test_replace_waits_for_a_file_another_program_holds_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.wav"
    target.write_bytes(b"old")
    real = os.replace
    calls: list[str] = []

    def busy(times: int, winerror: int = 32):
        def fake(src: object, dst: object) -> None:
            calls.append(os.fspath(dst))
            if len(calls) <= times:
                exc = PermissionError(errno.EACCES, "The process cannot access the file", os.fspath(src))
                exc.winerror = winerror  # type: ignore[attr-defined]
                raise exc
            real(src, dst)  # type: ignore[arg-type]

        return fake

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(atomic.time, "sleep", lambda s: None)
    monkeypatch.setattr(os, "replace", busy(2))
    with atomic.atomic_write(target) as tmp:  # a virus scanner lets go of the new file after a moment
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(calls) == 3

    calls.clear()
    monkeypatch.setattr(atomic, "WINDOWS_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(os, "replace", busy(99))
    with pytest.raises(PermissionError, match="open in another program") as info, atomic.atomic_write(target) as tmp:
        tmp.write_bytes(b"newer")
    assert str(target) in str(info.value) and target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # the temporary file removed

    calls.clear()
    monkeypatch.setattr(os, "replace", busy(99, winerror=1920))  # not "in use": no waiting
    with pytest.raises(PermissionError), atomic.atomic_write(target) as tmp:
        tmp.write_bytes(b"x")
    assert len(calls) == 1


class _FakeMsvcrt(types.ModuleType):
    LK_UNLCK, LK_NBLCK = 0, 2

    def __init__(self, fail: list[int]) -> None:
        super().__init__("msvcrt")
        self.fail, self.calls = fail, []  # errnos to raise, in turn

    def locking(self, fd: int, mode: int, n: int) -> None:
        self.calls.append((mode, os.lseek(fd, 0, os.SEEK_CUR), n))
        if len(self.calls) > 20:
            raise AssertionError("msvcrt.locking called in an endless loop")
        if mode == self.LK_NBLCK and self.fail:
            raise OSError(self.fail.pop(0), "locking failed")


def test_download_lock_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "rmvpe.pt.lock"
    fake = _FakeMsvcrt([errno.EACCES, errno.EACCES])  # another process holds it twice, then lets go
    monkeypatch.setattr(weights, "fcntl", None)
    monkeypatch.setattr(weights, "msvcrt", fake)
    monkeypatch.setattr(weights.time, "sleep", lambda s: None)
    with weights._exclusive(lock):
        assert lock.exists()
    assert [c[0] for c in fake.calls] == [fake.LK_NBLCK] * 3 + [fake.LK_UNLCK]
    assert all(c[1:] == (0, 1) for c in fake.calls)  # the first byte, locked and unlocked
    assert not lock.exists()
    # any other error is raised, not waited on for ever (EBADF, a file system without locks)
    fake = _FakeMsvcrt([errno.EBADF] * 30)
    monkeypatch.setattr(weights, "msvcrt", fake)
    with pytest.raises(OSError) as info, weights._exclusive(lock):
        pass
    assert info.value.errno == errno.EBADF and len(fake.calls) == 1


def test_other_platform_branches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import argparse

    from rvcfast.cli.convert import _voices
    from rvcfast.runtime import available_cores

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert available_cores() >= 1
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path))
    assert weights.cache_dir() == tmp_path / "rvcfast"
    args = argparse.Namespace(model="a.pth", index=None, voice=[r"C:\models\b.pth,C:\idx\b.index"], name_template=None)
    assert _voices(args)[1] == (r"C:\models\b.pth", r"C:\idx\b.index")  # drive letters: split on the comma only


def test_inputs_are_read_by_text_paths_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rvcfast.audio import audio_info, decode

    src = tmp_path / "José" / "歌.wav"
    src.parent.mkdir()
    sf.write(src, tone(0.2), 16000)
    real = sf.SoundFile  # (sf.info opens a SoundFile too)
    seen: list[type] = []

    def spy(file: object, *args: object, **kwargs: object) -> sf.SoundFile:
        if isinstance(file, (str, bytes)):
            seen.append(type(file))
        return real(os.fsencode(file) if isinstance(file, str) else file, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sf, "SoundFile", spy)
    monkeypatch.setattr(sys, "platform", "win32")
    assert audio_info(src)[1] == 16000 and len(decode(src).audio) > 0
    assert seen and set(seen) == {str}


def test_the_command_line_expands_a_tilde_in_its_paths(tiny_models: TinyModels, tmp_path: Path, monkeypatch) -> None:
    """A quoted ``"~/out"`` (bash leaves it), or any ``~`` in cmd or PowerShell, reached rvcfast as
    it was: the outputs went to a folder named ``~`` under the current folder. Now ``~`` is the
    home folder, for the model, inputs, weights, ``-o`` and ``--report``, as in the weights code."""
    from rvcfast.cli import main

    home = tmp_path / "home"
    (home / "in").mkdir(parents=True)
    sf.write(home / "in" / "a.wav", tone(0.4, 16000, 200), 16000)
    for name, src in (("v.pth", tiny_models.voice), ("enc.pt", tiny_models.encoder), ("rmvpe.pt", tiny_models.rmvpe)):
        os.symlink(src, home / name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.chdir(tmp_path)
    code = main(["convert", "~/v.pth", "~/in", "-o", "~/out", "--encoder", "~/enc.pt", "--f0-weights", "~/rmvpe.pt",
                 "--device", "cpu", "--report", "~/report.jsonl", "-q"])
    assert code == 0
    assert sf.info(str(home / "out" / "a.wav")).samplerate == 40000
    assert (home / "report.jsonl").is_file()
    assert not (tmp_path / "~").exists()

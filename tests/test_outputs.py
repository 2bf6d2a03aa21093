"""Outputs: atomic writes, never an overwritten input, unique names, resuming a killed batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (  # noqa: F401 (fixtures)
    MODEL_SR,
    TinyModels,
    is_root,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast
from rvcfast import writing as rvc_audio
from rvcfast.writing import remove_stale_parts, write_audio_atomic


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part"))


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


# ------------------------------------------------------------------ atomic writes


def test_write_goes_through_a_temporary_file_and_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst, *a, **kw):
        renames.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", spy)
    target = tmp_path / "out" / "voice.wav"
    write_audio_atomic(target, np.zeros(4000, np.float32), MODEL_SR)
    assert len(renames) == 1
    src, dst = renames[0]
    assert dst == str(target)
    assert Path(src).parent == target.parent and Path(src).name.startswith(".voice.wav.") and src.endswith(".part")
    assert sf.info(target).frames == 4000
    assert parts(tmp_path) == []


@pytest.mark.parametrize("fail_at", ["encode", "fsync", "rename"])
def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(
    fail_at: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "voice.wav"
    write_audio_atomic(target, np.full(1000, 0.5, np.float32), MODEL_SR)
    before = target.read_bytes()

    def boom(*a, **kw):
        raise OSError("disk full (simulated)")

    if fail_at == "encode":
        real_encode = rvc_audio._encode

        def half_write(file, data, *a, **kw):  # write part of the data, then fail
            real_encode(file, data[: len(data) // 2], *a, **kw)
            raise OSError("disk full (simulated)")

        monkeypatch.setattr(rvc_audio, "_encode", half_write)
    elif fail_at == "fsync":
        monkeypatch.setattr(rvc_audio.os, "fsync", boom)
    else:
        monkeypatch.setattr(rvc_audio.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        write_audio_atomic(target, np.zeros(8000, np.float32), MODEL_SR)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert parts(tmp_path) == []


def test_batch_write_failure_is_reported_per_file(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    # a folder where one output file should go: that file's write fails, the other is written
    # (an output folder that is itself a file is refused before any work: the test below)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    (out / "a.wav").mkdir(parents=True)
    (out / "a.wav" / "keep.txt").write_text("not to be lost")
    a, b = tiny_converter.convert_batch([tmp_path / "a.wav", tmp_path / "b.wav"], out)
    assert not a.ok and "a.wav" in a.error and a.output_path is None
    assert b.ok and (out / "b.wav").is_file()
    assert (out / "a.wav" / "keep.txt").read_text() == "not to be lost" and parts(out) == []


def test_read_only_output_folder(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    if is_root():
        pytest.skip("running as root: a read-only folder is still writable")
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        results = tiny_converter.convert_batch([tmp_path / "a.wav"], out)
        assert not results[0].ok and "a.wav" in results[0].error
    finally:
        out.chmod(0o755)
    assert outputs(out) == [] and parts(out) == []


def test_reader_never_sees_a_partial_output(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    """While a batch runs, every visible (non-temporary) output decodes to its full length."""
    import threading

    for i in range(6):
        sf.write(tmp_path / f"c{i}.wav", tone(1.0 + 0.2 * i), 16000)
    out = tmp_path / "out"
    out.mkdir()
    seen: dict[str, set[int]] = {}
    stop = threading.Event()
    problems: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            for p in list(out.iterdir()):
                if p.name.startswith("."):
                    continue
                try:
                    seen.setdefault(p.name, set()).add(sf.info(p).frames)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{p.name}: {exc}")
            time.sleep(0.002)

    t = threading.Thread(target=watch)
    t.start()
    try:
        results = tiny_converter.convert_batch(sorted(tmp_path.glob("c*.wav")), out, batch_seconds=0.5)
    finally:
        stop.set()
        t.join()
    assert all(r.ok for r in results)
    assert problems == []
    for r in results:  # every look at an output saw its final length
        assert seen.get(Path(r.output_path).name, set()) <= {sf.info(r.output_path).frames}


# ------------------------------------------------------------------ names


def test_never_overwrites_an_input_when_writing_into_the_input_folder(
    tiny_converter: rvcfast.Converter, tmp_path: Path
) -> None:
    for name, fmt in [("x.wav", "WAV"), ("y.flac", "FLAC"), ("z.wav", "WAV")]:
        sf.write(tmp_path / name, tone(0.4), 16000, format=fmt)
    (tmp_path / "z_rvc.wav").write_bytes((tmp_path / "z.wav").read_bytes())  # an input already named like an output
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for fmt in ("wav", "flac"):
        results = tiny_converter.convert_batch([tmp_path], tmp_path, format=fmt)
        assert all(r.ok for r in results), [r.error for r in results]
        written = [Path(r.output_path) for r in results]
        assert len(set(written)) == len(written)
        assert not {p.name for p in written} & set(before)
        for name, data in before.items():
            assert (tmp_path / name).read_bytes() == data, f"input {name} was modified"
        for p in written:
            p.unlink()
    assert parts(tmp_path) == []


def test_never_overwrites_an_input_reached_through_a_symlink(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    out = tmp_path / "out"
    src.mkdir()
    out.mkdir()
    sf.write(out / "x.wav", tone(0.3), 16000)  # the real input lives in the output folder
    os.symlink(out / "x.wav", src / "x.wav")
    before = (out / "x.wav").read_bytes()
    results = tiny_converter.convert_batch([src / "x.wav"], out)
    assert results[0].ok
    assert Path(results[0].output_path).name != "x.wav"
    assert (out / "x.wav").read_bytes() == before


def test_unique_names_for_inputs_sharing_a_stem(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    durations = {"a/x.wav": 0.3, "b/x.wav": 0.5, "c/x.flac": 0.7, "d/x_1.wav": 0.9}
    paths = []
    for rel, sec in durations.items():
        p = tmp_path / rel
        p.parent.mkdir(exist_ok=True)
        sf.write(p, tone(sec), 16000, format="FLAC" if p.suffix == ".flac" else "WAV")
        paths.append(p)
    out = tmp_path / "out"
    results = tiny_converter.convert_batch(paths, out)
    names = [Path(r.output_path).name for r in results]
    assert len(set(names)) == 4 and outputs(out) == sorted(names)
    for r, sec in zip(results, durations.values()):  # each output comes from its own input
        assert sf.info(r.output_path).frames == pytest.approx(sec * MODEL_SR, abs=3 * MODEL_SR // 100)


def test_name_template_and_formats(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "take one.wav", tone(0.3), 16000)
    for fmt, subtype in [("wav", "PCM_16"), ("flac", None), ("ogg", None)]:
        results = tiny_converter.convert_batch(
            [tmp_path / "take one.wav"], tmp_path / fmt, format=fmt, subtype=subtype, name_template="{index:03d}-{stem}"
        )
        p = Path(results[0].output_path)
        assert p.name == f"000-take one.{fmt}"
        info = sf.info(p)
        assert info.samplerate == MODEL_SR and info.frames > 0
        if subtype:
            assert info.subtype == subtype


# ------------------------------------------------------------------ resume a killed batch

_BATCH_CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    import rvcfast
    a = json.loads(sys.argv[1])
    conv = rvcfast.Converter.from_pretrained(a["voice"], encoder=a["encoder"], f0_weights=a["rmvpe"], device="cpu")
    print("READY", flush=True)
    for r in conv.iter_batch(a["inputs"], a["out"], skip_existing=True, batch_seconds=0.5):
        print("DONE", r.source, r.ok, flush=True)
    print("FINISHED", flush=True)
    """
)


def _start_batch(tiny_models: TinyModels, inputs: list[Path], out: Path) -> subprocess.Popen:
    args = {
        "voice": str(tiny_models.voice),
        "encoder": str(tiny_models.encoder),
        "rmvpe": str(tiny_models.rmvpe),
        "inputs": [str(p) for p in inputs],
        "out": str(out),
    }
    return subprocess.Popen(
        [sys.executable, "-c", _BATCH_CHILD, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_skip_existing_resumes_a_killed_batch(tiny_models: TinyModels, tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    inputs = []
    for i in range(8):
        p = src / f"clip{i}.wav"
        sf.write(p, tone(2.0 + 0.1 * i, freq=150 + 20 * i), 16000)
        inputs.append(p)
    out = tmp_path / "out"
    proc = _start_batch(tiny_models, inputs, out)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if out.is_dir() and len(outputs(out)) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"the batch ended before it could be killed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.01)
        else:
            pytest.fail("no outputs appeared")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    finished = {name: (out / name).stat().st_mtime_ns for name in outputs(out)}
    assert 3 <= len(finished) < 8, finished
    for name in finished:  # whatever the kill left under a final name is complete
        assert sf.info(out / name).frames == pytest.approx((2.0 + 0.1 * int(name[4])) * MODEL_SR, abs=3 * MODEL_SR // 100)
    # the killed process may have left a temporary file; plant one for an unfinished output for certain
    unfinished = [p for p in inputs if f"{p.stem}.wav" not in finished]
    host = rvc_audio._HOST
    (out / f".{unfinished[0].stem}.wav.{host}~{proc.pid}~deadbeef.part").write_bytes(b"RIFF partial")

    time.sleep(0.01)  # mtimes of the re-run differ from the first run's
    results = tiny_converter.convert_batch(inputs, out, skip_existing=True)
    assert all(r.ok for r in results), [r.error for r in results]
    skipped = {Path(r.source).stem for r in results if r.skipped}
    converted = {Path(r.source).stem for r in results if not r.skipped}
    assert skipped == {Path(n).stem for n in finished}
    assert converted == {p.stem for p in unfinished}
    assert outputs(out) == sorted(f"{p.stem}.wav" for p in inputs)  # each input converted exactly once
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was converted again"
    for p in inputs:
        assert sf.info(out / f"{p.stem}.wav").frames > 1.9 * MODEL_SR
    assert parts(out) == [], "stale temporary files left behind"


def test_resume_removes_stale_parts_next_to_skipped_outputs(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    tiny_converter.convert_batch([tmp_path / "a.wav"], out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".a.wav.{rvc_audio._HOST}~{dead.pid}~x.part").write_bytes(b"partial")
    results = tiny_converter.convert_batch([tmp_path / "a.wav"], out, skip_existing=True)
    assert results[0].skipped
    assert parts(out) == []


def test_resume_removes_stale_parts_in_the_folders_the_template_names(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    # outputs in sub-folders (a {voice}/{stem} or {parent}/{stem} template): their killed writers' files too
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    tiny_converter.convert_batch([tmp_path / "a.wav"], out, name_template="deep/{stem}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / "deep" / f".a.wav.{rvc_audio._HOST}~{dead.pid}~x.part"
    stale.write_bytes(b"partial")
    results = tiny_converter.convert_batch([tmp_path / "a.wav"], out, name_template="deep/{stem}", skip_existing=True)
    assert results[0].skipped
    assert not stale.exists()  # was left for ever: only OUT itself was looked at


def test_remove_stale_parts_keeps_live_and_foreign_files(tmp_path: Path) -> None:
    host = rvc_audio._HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.wav.{host}~{dead.pid}~abc.part"
    live = tmp_path / f".a.wav.{host}~{os.getpid()}~abc.part"
    other_host = tmp_path / f".a.wav.elsewhere~{dead.pid}~abc.part"
    not_ours = tmp_path / ".a.wav.part"
    other_name = tmp_path / f".b.wav.{host}~{dead.pid}~abc.part"
    for p in (stale, live, other_host, not_ours, other_name):
        p.write_bytes(b"x")
    assert remove_stale_parts(tmp_path, "a.wav") == [stale]
    assert remove_stale_parts(tmp_path) == [other_name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, other_host, not_ours))


def test_resume_in_place_batch(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    for i in range(2):
        sf.write(tmp_path / f"x{i}.wav", tone(0.3), 16000)
    first = tiny_converter.convert_batch([tmp_path], tmp_path)
    assert all(r.ok for r in first)
    again = tiny_converter.convert_batch([tmp_path], tmp_path, skip_existing=True)
    assert len(again) == 2 and all(r.skipped for r in again)
    assert outputs(tmp_path) == ["x0.wav", "x0_rvc.wav", "x1.wav", "x1_rvc.wav"]


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    (tmp_path / "afile").write_bytes(b"notes")
    for out, words in ((tmp_path / "afile", "exists and is not a folder"), (tmp_path / "afile" / "sub", "is a file, not a folder")):
        # was: every file converted, then one "writing ... failed: FileExistsError" result per file
        with pytest.raises(rvcfast.errors.ParameterError, match=words):
            tiny_converter.convert_batch([tmp_path / "a.wav"], out)
    assert (tmp_path / "afile").read_bytes() == b"notes"


def test_on_error_stop_leaves_only_complete_outputs(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    (tmp_path / "b.wav").write_bytes(b"not audio")
    sf.write(tmp_path / "c.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    with pytest.raises(rvcfast.errors.RvcfastError, match="b.wav"):
        tiny_converter.convert_batch([tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.wav"], out, on_error="stop")
    for name in outputs(out) if out.exists() else []:
        assert sf.info(out / name).frames > 0
    assert not out.exists() or parts(out) == []


def test_command_line_resumes_an_in_place_batch(tiny_models: TinyModels, tmp_path: Path) -> None:
    """`rvcfast convert IN -o IN --skip-existing` twice: the second run converts nothing, not its own outputs."""
    from rvcfast.cli import main

    for i in range(2):
        sf.write(tmp_path / f"x{i}.wav", tone(0.3), 16000)
    argv = [
        "convert", str(tiny_models.voice), str(tmp_path), "-o", str(tmp_path), "--index", str(tiny_models.index),
        "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "-q",
        "--skip-existing",
    ]
    assert main(argv) == 0
    assert outputs(tmp_path) == ["x0.wav", "x0_rvc.wav", "x1.wav", "x1_rvc.wav"]
    stamps = {name: (tmp_path / name).stat().st_mtime_ns for name in outputs(tmp_path)}
    assert main(argv) == 0
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in outputs(tmp_path)} == stamps  # nothing redone


def test_resume_with_the_output_folder_inside_a_recursive_input_folder(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    for i in range(2):
        sf.write(tmp_path / f"x{i}.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    first = tiny_converter.convert_batch([tmp_path], out, recursive=True)
    assert all(r.ok for r in first) and outputs(out) == ["x0.wav", "x1.wav"]
    again = tiny_converter.convert_batch([tmp_path], out, recursive=True, skip_existing=True)
    assert [(Path(r.source).name, r.skipped) for r in again] == [("x0.wav", True), ("x1.wav", True)]
    assert outputs(out) == ["x0.wav", "x1.wav"]


def test_an_input_named_twice_is_converted_once(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3), 16000)
    results = tiny_converter.convert_batch([src, src / "a.wav", f"{src}/./a.wav"], tmp_path / "out")
    assert [(Path(r.source).name, r.ok) for r in results] == [("a.wav", True)]
    assert outputs(tmp_path / "out") == ["a.wav"]


# ------------------------------------------------------------------ formats a rate cannot be written in


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "words"),
    [
        ("ogg", None, 250000, ("sample_rate 250000", "192000", "Vorbis")),  # libvorbis crashes the process above ~200 kHz
        ("ogg", "VORBIS", 384000, ("sample_rate 384000", "192000")),
        ("ogg", "OPUS", 40000, ("subtype OPUS", "sample_rate", "8000, 12000, 16000, 24000, 48000", "40000")),
        ("ogg", "opus", 44100, ("subtype OPUS", "44100")),
        ("mp3", "MPEG_LAYER_I", 44100, ("MPEG_LAYER_I cannot be written", "MPEG_LAYER_III")),
        ("mp3", "MPEG_LAYER_II", 48000, ("MPEG_LAYER_II cannot be written",)),
        ("mp3", None, 40000, ("sample_rate 40000",)),  # not an MP3 rate (write_audio_atomic resamples first)
        ("flac", "PCM_24", 700000, ("flac", "sample_rate 700000")),  # above FLAC's 655350 Hz
        ("flac", "FLOAT", 44100, ("subtype 'FLOAT' is not valid for flac",)),
    ],
)
def test_check_write_format_refuses_what_cannot_be_written(fmt: str, subtype: str | None, rate: int, words: tuple[str, ...]) -> None:
    from rvcfast.errors import ParameterError
    from rvcfast.writing import check_write_format

    with pytest.raises(ParameterError) as info:
        check_write_format(fmt, subtype, rate)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate"),
    [("ogg", None, 192000), ("ogg", "VORBIS", 8000), ("ogg", "OPUS", 48000), ("ogg", "OPUS", 8000),
     ("mp3", None, 44100), ("mp3", "MPEG_LAYER_III", 8000), ("flac", None, 384000), ("wav", "FLOAT", 384000)],
)
def test_check_write_format_accepts_what_can_be_written(fmt: str, subtype: str | None, rate: int) -> None:
    from rvcfast.writing import check_write_format

    check_write_format(fmt, subtype, rate)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_permissions_a_plain_write_gives(tmp_path: Path, umask: int) -> None:
    # the temporary file came from mkstemp (0o600), and every output kept that mode
    old = os.umask(umask)
    try:
        target = write_audio_atomic(tmp_path / "out.wav", np.zeros(4000, np.float32), MODEL_SR)
    finally:
        os.umask(old)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
    assert parts(tmp_path) == []


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate"), [("ogg", None, 250000), ("ogg", "OPUS", 40000), ("mp3", "MPEG_LAYER_I", 44100)]
)
def test_write_audio_atomic_refuses_before_writing(
    fmt: str, subtype: str | None, rate: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvcfast.errors import ParameterError

    def never(*a, **kw):  # an OGG/Vorbis encoder above ~200 kHz would crash this process
        raise AssertionError("write_audio_atomic started writing a format it cannot write")

    monkeypatch.setattr(rvc_audio, "_encode", never)
    with pytest.raises(ParameterError, match="sample_rate|subtype"):
        write_audio_atomic(tmp_path / f"out.{fmt}", np.zeros(4000, np.float32), rate, subtype=subtype)
    assert list(tmp_path.iterdir()) == []


def test_conversion_params_check_the_output_format_at_the_output_rate() -> None:
    from rvcfast.errors import ParameterError
    from rvcfast.params import ConversionParams

    with pytest.raises(ParameterError, match="sample_rate 250000"):
        ConversionParams(output_sample_rate=250000).check_output("ogg", None, 40000)
    with pytest.raises(ParameterError, match="subtype OPUS"):
        ConversionParams().check_output("ogg", "OPUS", 40000)  # the voice's rate
    ConversionParams(output_sample_rate=48000).check_output("ogg", "OPUS", 40000)
    ConversionParams().check_output("mp3", None, 40000)  # written at 44.1 kHz
    assert ConversionParams().output_rate(40000) == 40000
    assert ConversionParams(output_sample_rate=22050).output_rate(40000) == 22050


def test_batch_output_in_an_unwritable_format_is_refused_before_any_work(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    from rvcfast.errors import ParameterError

    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    with pytest.raises(ParameterError) as info:
        tiny_converter.convert_batch([tmp_path / "a.wav"], tmp_path / "out", format="ogg", subtype="OPUS")
    assert "subtype OPUS" in str(info.value) and "sample_rate" in str(info.value)
    assert not (tmp_path / "out").exists() or outputs(tmp_path / "out") == []
    # at a rate Opus takes, the same batch converts
    results = tiny_converter.convert_batch(
        [tmp_path / "a.wav"], tmp_path / "out", format="ogg", subtype="OPUS", output_sample_rate=48000
    )
    assert results[0].ok, results[0].error


# ------------------------------------------------------------------ on_error="stop": everything before the bad file


class _FailsOnLongInputs:
    """An F0 plugin that fails for inputs longer than ``limit`` samples (16 kHz, padded)."""

    name, sample_rate, hop_length = "fails-on-long", 16000, 160

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def extract(self, audio: np.ndarray) -> np.ndarray:
        if len(audio) > self.limit:
            raise ValueError("this input is too long for the tracker")
        return np.full(len(audio) // 160 + 1, 200.0)

    def extract_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        return [self.extract(a) for a in audios]


def _run_until_stopped(conv: rvcfast.Converter, inputs: list[Path], out: Path, **kw) -> tuple[list[str], list[str], str]:
    """Read ``iter_batch(..., on_error="stop")`` until it raises: the files yielded, those reported to progress, the error."""
    yielded: list[str] = []
    progressed: list[str] = []
    with pytest.raises(rvcfast.errors.RvcfastError) as info:
        for r in conv.iter_batch(inputs, out, on_error="stop", progress=lambda r, done, total: progressed.append(r.source), **kw):
            assert r.ok, r.error
            yielded.append(Path(r.source).name)
    return yielded, [Path(p).name for p in progressed], str(info.value)


def test_on_error_stop_after_a_decode_failure_finishes_the_files_before_it(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    # the files before the bad one used to be dropped: they were in its group, which was never converted
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    sf.write(tmp_path / "b.wav", tone(0.4), 16000)
    (tmp_path / "c_bad.wav").write_bytes(b"RIFFjunk")
    sf.write(tmp_path / "d.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    inputs = [tmp_path / n for n in ("a.wav", "b.wav", "c_bad.wav", "d.wav")]
    yielded, progressed, error = _run_until_stopped(tiny_converter, inputs, out)
    assert "c_bad.wav" in error
    assert yielded == progressed == ["a.wav", "b.wav"]
    assert outputs(out) == ["a.wav", "b.wav"] and parts(out) == []  # nothing after the bad file
    for name in outputs(out):
        assert sf.info(out / name).frames > 0


@pytest.mark.parametrize("batch_seconds", [None, 0.1], ids=["one group", "a group per file"])
def test_on_error_stop_after_an_f0_failure_reports_the_written_files_before_it(
    tiny_models: TinyModels, tmp_path: Path, batch_seconds: float | None
) -> None:
    # a file written before the failing one (same group) used to be on disk but never yielded nor reported
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    sf.write(tmp_path / "b_long.wav", tone(3.0), 16000)
    sf.write(tmp_path / "c.wav", tone(0.3), 16000)
    probe = tiny_models.converter(index=None)
    short, long_ = (probe.engine.prepare(tmp_path / n).padded.shape[0] for n in ("a.wav", "b_long.wav"))
    assert short < long_
    conv = tiny_models.converter(f0=_FailsOnLongInputs((short + long_) // 2), index=None)
    inputs = [tmp_path / n for n in ("a.wav", "b_long.wav", "c.wav")]
    out = tmp_path / "out"
    yielded, progressed, error = _run_until_stopped(conv, inputs, out, batch_seconds=batch_seconds)
    assert "b_long.wav" in error and "too long" in error
    assert yielded == progressed == ["a.wav"]
    assert outputs(out) == ["a.wav"] and parts(out) == []


def test_on_error_stop_after_a_write_failure_raises_an_rvcfast_error_naming_the_file(
    tiny_converter: rvcfast.Converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a failed write used to escape as the raw OSError, without the file's name
    from rvcfast import batch

    for n in ("a.wav", "b.wav", "c.wav"):
        sf.write(tmp_path / n, tone(0.3), 16000)
    real_write = batch.write_audio_atomic

    def write(path, *args, **kwargs):
        if Path(path).name == "b.wav":
            raise OSError(28, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(batch, "write_audio_atomic", write)
    out = tmp_path / "out"
    yielded, progressed, error = _run_until_stopped(
        tiny_converter, [tmp_path / n for n in ("a.wav", "b.wav", "c.wav")], out, batch_seconds=0.1
    )
    assert "b.wav" in error and "No space left on device" in error
    assert yielded == progressed == ["a.wav"]
    assert outputs(out) == ["a.wav"] and parts(out) == []


# ------------------------------------------------------------------ name templates stay inside the output folder


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{stem}_{foo}", ("'{stem}_{foo}'", "KeyError", "{stem}, {parent}, {index}, {ext}, {voice} and {pitch}")),
        ("{stem}{}", ("'{stem}{}'", "IndexError")),
        ("{index:s}", ("'{index:s}'", "ValueError")),
        ("{stem", ("'{stem'",)),
        ("{ext}", ("{stem} or {index}",)),
        ("../escaped_{stem}", ("'../escaped_{stem}'", "leaves the output folder")),
        ("sub/../../{stem}", ("leaves the output folder",)),
        ("/tmp/abs_{stem}", ("'/tmp/abs_{stem}'", "absolute path")),
        ("{stem}/", ("no file name",)),
    ],
)
def test_a_bad_name_template_is_refused_before_any_work(
    tiny_converter: rvcfast.Converter, tmp_path: Path, template: str, words: tuple[str, ...]
) -> None:
    from rvcfast.errors import ParameterError

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", tone(0.3), 16000)
    out = tmp_path / "work" / "out"
    with pytest.raises(ParameterError) as info:
        tiny_converter.convert_batch([tmp_path / "in" / "a.wav"], out, name_template=template)
    for word in words:
        assert word in str(info.value)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [Path("in/a.wav")]


def test_a_name_template_through_a_symlink_out_of_the_output_folder_is_refused(
    tiny_converter: rvcfast.Converter, tmp_path: Path
) -> None:
    from rvcfast.errors import ParameterError

    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    with pytest.raises(ParameterError, match="outside the output folder"):
        tiny_converter.convert_batch([tmp_path / "a.wav"], out, name_template="link/{stem}")
    assert list(elsewhere.iterdir()) == []


def test_a_name_template_with_a_subfolder_writes_inside_the_output_folder(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    results = tiny_converter.convert_batch([tmp_path / "a.wav"], tmp_path / "out", name_template="{index:02d}/{stem}")
    assert results[0].ok and Path(results[0].output_path) == tmp_path / "out" / "00" / "a.wav"
    assert sf.info(results[0].output_path).frames > 0


def test_on_error_stop_with_compute_workers_writes_nothing_after_the_bad_file(
    tiny_converter: rvcfast.Converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three groups on two workers: the first is held until the third has been computed, so the
    # groups after the failing second one finish first. Their files used to be written anyway.
    import threading

    import torch

    from rvcfast import batch
    from rvcfast.runtime import openmp_threads

    if not openmp_threads():
        pytest.skip("torch's threads are not OpenMP's here: one compute worker only")
    monkeypatch.setattr(batch._BatchRun, "_wait_for_last", lambda self: False)  # the last group on a worker too
    names = ["a.wav", "b.wav", "c.wav"]
    for n in names:
        sf.write(tmp_path / n, tone(0.3), 16000)
    third_done = threading.Event()
    engine_run = tiny_converter.engine.run

    def spy(preps, *args, **kwargs):
        label = Path(str(preps[0].label)).name
        if label == "a.wav":
            third_done.wait(30.0)  # an event to wait for, not a timing
        results = engine_run(preps, *args, **kwargs)
        if label == "b.wav":
            results[0].error = f"{preps[0].label}: synthesis failed: made to fail"
        if label == "c.wav":
            third_done.set()
        return results

    monkeypatch.setattr(tiny_converter.engine, "run", spy)
    out = tmp_path / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers of one thread each
    try:
        yielded, progressed, error = _run_until_stopped(
            tiny_converter, [tmp_path / n for n in names], out, batch_seconds=0.1, compute_workers=2
        )
    finally:
        torch.set_num_threads(before)
    assert third_done.is_set()  # the third group was computed before the first finished
    assert "b.wav" in error and "made to fail" in error
    assert yielded == progressed == ["a.wav"]
    assert outputs(out) == ["a.wav"] and parts(out) == []

"""From an operator's walkthrough of ``rvcfast convert`` / ``convert_batch`` over messy folders:
file-system edge cases (names that are not UTF-8, composed and decomposed Unicode, FIFOs, a
temporary file of a dead writer whose name holds a newline, a disk that fills up mid-batch).

Each test of a defect failed on the code before its fix.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import cli_weights, is_root, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast.batch import BatchOptions, expand_inputs
from rvcfast.writing import (
    finished_output,
    recorded_source,
    remove_stale_parts,
    source_id,
    this_host,
    write_audio_atomic,
)


def _wav_bytes(seconds: float = 0.3, freq: float = 180.0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, 16000, freq=freq), 16000, format="WAV")
    return buf.getvalue()


def _put(path: Path, seconds: float = 0.3, freq: float = 180.0) -> Path:
    """A 16 kHz WAV at ``path`` (any name the file system takes, bytes that are not UTF-8 too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_wav_bytes(seconds, freq))
    return path


def _planned(inputs: list, out: Path, **options) -> list[Path]:
    return [Path(j.out_path) for j in expand_inputs(inputs, BatchOptions(out_dir=out, **options))]


def _fold(name: str) -> str:
    """How macOS (APFS, HFS+) and Windows compare names: case and Unicode normalisation ignored."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


# ------------------------------------------------------------------ names that are not UTF-8


@pytest.mark.skipif(sys.platform != "linux", reason="names that are not UTF-8 are a POSIX file system's")
def test_a_name_that_is_not_utf8_is_planned_and_its_output_written_and_found(tmp_path: Path) -> None:
    """A Latin-1 name from an old archive (``caf\\xe9.wav``) in an input folder stopped the whole
    batch before anything was converted: ``UnicodeEncodeError: 'utf-8' codec can't encode
    character '\\udce9'`` from the output-name planning, a traceback on the command line. Its
    output is now planned, written, and recognised as finished by a resumed batch."""
    folder = tmp_path / "in"
    _put(folder / os.fsdecode(b"caf\xe9.wav"))
    _put(folder / os.fsdecode(b"\xe9" * 250 + b".wav"))  # 254 bytes: its output name must be cut
    _put(folder / "ok.wav")
    out = tmp_path / "out"
    jobs = expand_inputs([folder], BatchOptions(out_dir=out))
    names = {os.fsencode(j.path.name): os.fsencode(j.out_path.name) for j in jobs}
    assert names == {
        b"caf\xe9.wav": b"caf\xe9.wav",
        b"\xe9" * 250 + b".wav": b"\xe9" * (255 - 8 - 4) + b".wav",  # room for `_12` or `_rvc`
        b"ok.wav": b"ok.wav",
    }

    # the output of such a name is written, and a resumed batch finds it finished and its own
    for j in jobs:
        write_audio_atomic(j.out_path, tone(0.2, 16000), 16000, source=j.path)
        assert finished_output(j.out_path)
        assert recorded_source(j.out_path) == source_id(j.path)
    assert sorted(os.listdir(os.fsencode(out))) == sorted(names.values())  # no .part left
    assert _planned([folder], out, skip_existing=True) == [j.out_path for j in jobs]


# ------------------------------------------------------------------ composed and decomposed names


def test_composed_and_decomposed_names_get_outputs_that_stay_apart_on_macos(tmp_path: Path) -> None:
    """``café.wav`` typed on Linux or Windows (NFC) and ``café.wav`` copied from a Mac (NFD) are two
    names on ext4 but one file on macOS and Windows shares (as ``Take.wav``/``take.wav`` are, which
    the docs promise to keep apart): their outputs were ``café.wav`` twice, the second converted
    file replacing the first there."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    inputs = [_put(tmp_path / "linux" / f"{nfc}.wav"), _put(tmp_path / "mac" / f"{nfd}.WAV", freq=220.0)]
    planned = _planned(inputs, tmp_path / "out")
    assert len({_fold(p.name) for p in planned}) == 2, [p.name for p in planned]
    assert planned[0].name == f"{nfc}.wav"  # the first keeps its name

    # the same within one folder (both exist side by side on Linux)
    both = tmp_path / "both"
    _put(both / f"{nfc}.wav")
    _put(both / f"{nfd}.wav")
    assert len({_fold(p.name) for p in _planned([both], tmp_path / "out2")}) == 2


# ------------------------------------------------------------------ FIFOs


def _unblock(fifo: Path) -> None:
    """Open ``fifo`` for writing (without blocking) so that a reader stuck in ``open`` goes on."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_a_resumed_in_place_batch_does_not_hang_it(tmp_path: Path) -> None:
    """``convert_batch([folder/'pipe.wav', ...], folder, skip_existing=True)``: planning opened the
    FIFO with libsndfile to read the source an output records, and blocked for ever (no writer)."""
    folder = tmp_path / "in"
    good = _put(folder / "a.wav")
    fifo = folder / "pipe.wav"
    os.mkfifo(fifo)
    assert recorded_source(folder / "missing.wav") is None

    found: list = []
    worker = threading.Thread(
        target=lambda: found.append(_planned([fifo, good], folder, skip_existing=True)), daemon=True
    )
    worker.start()
    worker.join(30)
    hung = worker.is_alive()
    if hung:
        _unblock(fifo)
        worker.join(10)
    assert not hung, "planning the batch blocked on the FIFO"
    assert [p.name for p in found[0]] == ["pipe_rvc.wav", "a_rvc.wav"]  # the FIFO fails later, at its decode
    assert recorded_source(fifo) is None and not finished_output(fifo)


# ------------------------------------------------------------------ symlink loops


def test_a_symlink_loop_as_an_input_or_at_an_outputs_name_fails_alone(tiny_models, tmp_path: Path) -> None:
    """``loop.wav -> loop.wav`` named as an input (or left at an output's name) stopped the whole
    batch before anything was converted: ``RuntimeError: Symlink loop from '.../loop.wav'`` while
    naming the outputs (``Path.resolve`` raises it in Python 3.11), a traceback on the command line."""
    folder = tmp_path / "in"
    good = _put(folder / "a.wav")
    loop = folder / "loop.wav"
    os.symlink("loop.wav", loop)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink("a.wav", out / "a.wav")  # a loop where a.wav's output goes
    assert [p.name for p in _planned([loop, good], out)] == ["loop.wav", "a.wav"]
    results = tiny_models.converter().convert_batch([loop, good], out, seed=0)
    assert not results[0].ok and str(loop) in results[0].error, results[0].error
    assert results[1].ok, results[1].error
    assert (out / "a.wav").is_file() and not (out / "a.wav").is_symlink()  # the link is replaced, not followed


# ------------------------------------------------------------------ temporary files of dead writers


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_writers_temporary_file_is_removed_when_the_name_holds_a_newline(tmp_path: Path) -> None:
    """A killed batch leaves ``.<name>.<host>~<pid>~<random>.part``; the next write of that output
    removes it, except when the name held a newline (``new\\nline.wav``, legal on Linux): the
    pattern's ``.`` did not match it, and the dead writer's file stayed for ever."""
    name = "new\nline.wav"
    stale = tmp_path / f".{name}.{this_host()}~{_dead_pid()}~deadbeef.part"
    stale.write_bytes(b"half a file")
    write_audio_atomic(tmp_path / name, tone(0.2, 16000), 16000)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert remove_stale_parts(tmp_path) == []


# ------------------------------------------------------------------ a disk that fills mid-batch


@pytest.fixture(name="small_disk")
def small_disk_fixture(tmp_path: Path):
    """A 1 MiB tmpfs mounted at ``tmp_path/small`` (root only), unmounted afterwards."""
    if not is_root():
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_that_fills_mid_batch_then_a_resume_finishes_it(tiny_models, tmp_path: Path, small_disk: Path) -> None:
    """Outputs on a tmpfs with room for about one: each later file fails naming its output and the
    full disk, no partial output or temporary file is left, the batch goes on; with space freed,
    ``skip_existing`` keeps the finished output and converts the rest."""
    inputs = [_put(tmp_path / "in" / f"take{k}.wav", seconds=1.5, freq=150.0 + 30 * k) for k in range(3)]
    out_bytes = 44 + int(1.5 * 40000) * 2  # PCM_16 at 40 kHz, at most
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - int(1.5 * out_bytes)))
    out = small_disk / "out"
    conv = tiny_models.converter()
    results = conv.convert_batch(inputs, out, seed=0, batch_seconds=2)
    assert results[0].ok, results[0].error
    assert [r.ok for r in results[1:]] == [False, False]
    for r in results[1:]:
        assert "take" in r.error and "No space left on device" in r.error, r.error
        assert str(out / Path(r.source).name) in r.error
    assert sorted(p.name for p in out.iterdir()) == ["take0.wav"]  # no .part, nothing partial
    first = out / "take0.wav"
    assert sf.info(first).frames > 0 and finished_output(first)
    mtime = first.stat().st_mtime_ns

    filler.unlink()
    again = conv.convert_batch(inputs, out, seed=0, batch_seconds=2, skip_existing=True)
    assert [(r.ok, r.skipped) for r in again] == [(True, True), (True, False), (True, False)]
    assert first.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in out.iterdir()) == ["take0.wav", "take1.wav", "take2.wav"]
    for k in range(3):
        data, rate = sf.read(out / f"take{k}.wav")
        assert rate == 40000 and abs(len(data) - 1.5 * 40000) < 0.05 * 40000 and np.isfinite(data).all()


# ------------------------------------------------------------------ what worked, pinned


_MESSY = ["sp ace", "100%", "{}", "{stem}", "new\nline", "emoji😀", "עברית", "-x", "A"]


def test_messy_names_are_planned_to_themselves(tmp_path: Path) -> None:
    """Spaces, ``%``, braces (never read as a template), a newline, emoji, a right-to-left script
    and a leading dash keep their names; ``a.wav`` beside ``A.wav`` gets ``a_1.wav``."""
    folder = tmp_path / "in"
    for stem in [*_MESSY, "a"]:
        _put(folder / f"{stem}.wav")
    names = {Path(j.path).stem: Path(j.out_path).name for j in expand_inputs([folder], BatchOptions(out_dir=tmp_path / "o"))}
    assert names == {**{stem: f"{stem}.wav" for stem in _MESSY}, "a": "a_1.wav"}
    templated = _planned([folder / "{stem}.wav", folder / "100%.wav"], tmp_path / "o", name_template="{stem}-{index}")
    assert [p.name for p in templated] == ["{stem}-0.wav", "100%-1.wav"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_fail_by_name_and_are_left_out_of_folders(tiny_models, tmp_path: Path) -> None:
    """A FIFO or ``/dev/zero`` named as an input fails naming it (no wait for a writer); a folder
    leaves out its FIFO and a symlink to ``/dev/zero``."""
    folder = tmp_path / "in"
    good = _put(folder / "good.wav")
    fifo = folder / "pipe.wav"
    os.mkfifo(fifo)
    zero = folder / "zero.wav"
    os.symlink("/dev/zero", zero)
    assert [Path(j.path).name for j in expand_inputs([folder], BatchOptions(out_dir=tmp_path / "out"))] == ["good.wav"]
    results = tiny_models.converter().convert_batch([fifo, zero, good], tmp_path / "out", seed=0)
    assert [r.ok for r in results] == [False, False, True]
    for r, path in zip(results[:2], (fifo, zero)):
        assert str(path) in r.error and "not a regular file" in r.error, r.error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.wav"]


def test_a_read_only_file_at_an_outputs_name_is_replaced_and_an_input_never(tmp_path: Path) -> None:
    """An existing read-only file at an output's name is replaced, as ``mv`` would; in an in-place
    batch the input itself is never the output."""
    out = tmp_path / "out"
    stale = out / "x.wav"
    out.mkdir()
    stale.write_text("not audio")
    stale.chmod(0o444)
    src = _put(tmp_path / "in" / "x.wav")
    (planned,) = _planned([src], out)
    assert planned == stale
    write_audio_atomic(planned, tone(0.2, 16000), 16000, source=src)
    assert finished_output(stale) and recorded_source(stale) == source_id(src)
    assert _planned([src], src.parent) == [src.parent / "x_rvc.wav"]


# ------------------------------------------------------------------ the command line's own reads


@pytest.mark.skipif(sys.platform != "linux", reason="names that are not UTF-8 are a POSIX file system's")
def test_a_name_that_is_not_utf8_is_decoded_and_converted(tiny_models, tmp_path: Path) -> None:
    """The file itself failed at its decode: ``cannot decode audio (UnicodeEncodeError ...)``
    (libsndfile was given its name as text)."""
    src = _put(tmp_path / "in" / os.fsdecode(b"caf\xe9.wav"))
    (r,) = tiny_models.converter().convert_batch([src], tmp_path / "out", seed=0)
    assert r.ok, r.error
    assert sf.info(os.fsencode(r.output_path)).frames > 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_the_command_line_fails_a_fifo_input_at_once(tiny_models, tmp_path: Path, capsys) -> None:
    """``rvcfast convert voice.pth pipe.wav`` waited for ever: it opened the FIFO to read its
    length for the progress estimate."""
    from rvcfast.cli import main

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    status: list[int] = []
    worker = threading.Thread(
        target=lambda: status.append(main(["convert", str(tiny_models.voice), str(fifo), "-o", str(tmp_path / "out"), *cli_weights(tiny_models)])),
        daemon=True,
    )
    worker.start()
    worker.join(60)
    hung = worker.is_alive()
    while worker.is_alive():
        _unblock(fifo)
        worker.join(0.2)
    assert not hung, "rvcfast convert blocked on the FIFO"
    assert status == [1]
    assert "is not a regular file (a device, pipe or socket)" in capsys.readouterr().err


def test_a_report_on_a_full_disk_comes_after_the_summary_and_names_itself(tiny_models, tmp_path: Path, small_disk: Path, capsys) -> None:
    """A ``--report`` that could not be written ended the command with a traceback, before the
    summary and the list of failed files."""
    from rvcfast.cli import main

    src = _put(tmp_path / "in" / "a.wav")
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    report = small_disk / "r.jsonl"
    status = main(
        ["convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), "--report", str(report), *cli_weights(tiny_models)]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert f"rvcfast: error: --report {report} cannot be written: No space left on device" in captured.err
    assert "Traceback" not in captured.err
    assert (tmp_path / "out" / "a.wav").is_file()  # the conversion itself is kept
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no report, no temporary file

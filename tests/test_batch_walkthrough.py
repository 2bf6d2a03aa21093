"""From a data engineer's walkthrough of ``rvcfast convert`` / ``rvcfast f0`` over large, messy trees.

Pins documented behaviour the other tests did not cover: the ``{parent}`` and ``{index}`` fields
of ``--name-template``, ``{ext}`` beside the extension that is always added, a symlink loop in a
``--recursive`` tree, a dangling symlink in a folder, and the report and progress of a batch with
``--on-error stop``, and the defects found on the walk (each test failed on the code before its fix).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from helpers import cli_weights, no_loading_fixture, one_thread_fixture, tiny_models_fixture, tone, write_tone  # noqa: F401

from rvcfast.batch import BatchOptions, expand_inputs
from rvcfast.cli import main

_wav = write_tone


_weights = cli_weights


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _planned(inputs: list, out: Path, **options) -> list[str]:
    """The output names a batch plans (relative to ``out``), in input order: no model is needed."""
    jobs = expand_inputs(inputs, BatchOptions(out_dir=out, **options))
    return [Path(j.out_path).relative_to(out).as_posix() for j in jobs]


# ------------------------------------------------------------------ --name-template fields


def test_parent_is_root_for_a_bare_name_and_the_folder_inputs_own_name_for_its_files(tmp_path, monkeypatch):
    """docs/cli.md: ``{parent}`` is the name of the input's folder, ``root`` for a name without one
    (``a.wav``); a file directly inside a folder INPUT gets that folder's name."""
    work = tmp_path / "work"
    _wav(work, "a.wav")
    _wav(work / "takes", "b.wav")
    _wav(work / "takes" / "spk1", "c.wav")
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    planned = _planned(["a.wav", "takes"], out, recursive=True, name_template="{parent}/{stem}")
    assert planned == ["root/a.wav", "takes/b.wav", "spk1/c.wav"]


def test_index_counts_from_zero_in_input_order_and_ext_comes_before_the_added_extension(tmp_path):
    """``{index}`` is the position among the inputs from 0 (folders expanded, sorted); the
    format's extension is always added after the template, so ``{ext}`` repeats it."""
    src = tmp_path / "in"
    for name in ("b.wav", "a.wav"):
        _wav(src, name)
    single = _wav(tmp_path, "z.wav")
    out = tmp_path / "out"
    planned = _planned([single, src], out, name_template="{index:03d}-{stem}.{ext}", format="flac")
    assert planned == ["000-z.flac.flac", "001-a.flac.flac", "002-b.flac.flac"]


# ------------------------------------------------------------------ folders with links


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_a_symlink_loop_in_a_recursive_tree_ends_and_each_file_is_taken_once(tmp_path):
    """A sub-folder linking back up (``spk1/loop -> ..``), one linking out of the tree and a file
    link to a file of the tree: the walk ends, the symlinked sub-folder that leads out is read
    (before, symlinked sub-folders were skipped without a word), the loop is not followed again,
    and every file is one input, where it first appears (``link.wav`` sorts before ``spk1/``)."""
    tree = tmp_path / "tree"
    _wav(tree / "spk1", "001.wav")
    _wav(tree / "spk2", "001.wav")
    (tree / "spk1" / "loop").symlink_to("..", target_is_directory=True)
    (tree / "link.wav").symlink_to(tree / "spk1" / "001.wav")
    _wav(tmp_path / "elsewhere", "e.wav")
    (tree / "outside").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    planned = _planned([tree], tmp_path / "out", recursive=True, name_template="{parent}/{stem}")
    assert planned == ["tree/link.wav", "outside/e.wav", "spk2/001.wav"]
    # a symlinked folder named as an input is read
    assert _planned([tree / "outside"], tmp_path / "out2", recursive=True) == ["e.wav"]


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_a_dangling_symlink_in_a_folder_is_left_out_but_named_as_input_it_is_status_1(
    no_loading, tiny_models, tmp_path, capsys
):
    """Inside a folder input a broken symlink is not an audio file and is left out; named as an
    INPUT it does not exist: status 1, before anything is loaded."""
    src = tmp_path / "in"
    _wav(src, "a.wav")
    (src / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    assert _planned([src], tmp_path / "out") == ["a.wav"]
    argv = ["convert", str(tiny_models.voice), str(src / "gone.wav"), "-o", str(tmp_path / "out"), *_weights(tiny_models)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "gone.wav" in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ --on-error stop, not a terminal


def test_on_error_stop_report_and_plain_progress(tiny_models, tmp_path, capsys):
    """``--on-error stop`` without a terminal: the files before the bad one get their progress
    line and are written, the report has every input (the ones after the bad one with
    ``not converted: the batch stopped at FILE``), and standard output holds only the summary."""
    src = tmp_path / "in"
    _wav(src, "a.wav")
    (src / "b.wav").write_bytes(b"")
    _wav(src, "c.wav")
    out, report = tmp_path / "out", tmp_path / "rep" / "r.jsonl"
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(out), "--on-error", "stop", "--report", str(report)]
    assert main([*argv, *_weights(tiny_models)]) == 1
    captured = capsys.readouterr()
    assert _files(out) == {"a.wav"}
    assert f"[1/3] {src / 'a.wav'} -> {out / 'a.wav'}" in captured.err
    assert "rvcfast: 1 file(s) after it not converted (--on-error stop)" in captured.err
    assert "a.wav" not in captured.out and "real-time factor" in captured.out
    rows = [json.loads(line) for line in report.read_text(encoding="ascii").splitlines()]
    assert [(r["ok"], r["skipped"]) for r in rows] == [(True, False), (False, False), (False, False)]
    assert rows[1]["error"] == f"{src / 'b.wav'}: file is empty (0 bytes)"
    assert rows[2]["error"] == f"not converted: the batch stopped at {src / 'b.wav'} (--on-error stop)"


def test_on_error_stop_names_the_failed_file_in_the_plain_progress(tiny_models, tmp_path, capsys):
    src = tmp_path / "in"
    _wav(src, "a.wav")
    (src / "b.wav").write_bytes(b"")
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), "--on-error", "stop"]
    assert main([*argv, *_weights(tiny_models)]) == 1
    assert f"[2/2] {src / 'b.wav'}: FAILED: file is empty (0 bytes)" in capsys.readouterr().err


# ------------------------------------------------------------------ defects found on the walk


def test_f0_outputs_differing_only_in_case_get_distinct_names(tiny_models, tmp_path):
    """``rvcfast convert`` names ``Take.wav`` and ``take.wav`` ``Take.wav``/``take_1.wav`` (one file on
    macOS and Windows otherwise); ``rvcfast f0`` should do the same."""
    src = tmp_path / "in"
    _wav(src / "x", "Take.wav")
    _wav(src / "y", "take.wav")
    out = tmp_path / "f0"
    argv = ["f0", str(src), "-o", str(out), "--recursive", "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "-q"]
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len({n.casefold() for n in names}) == 2, names


def _to_dev_full(p: Path) -> str:
    """A temporary file for ``p`` whose writes fail as on a full disk (ENOSPC)."""
    part = p.parent / f".{p.name}.full.part"
    part.symlink_to("/dev/full")
    return str(part)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_write_on_a_full_disk_fails_and_leaves_nothing(tmp_path, monkeypatch):
    """docs/reliability.md: a write that fails leaves no output and no temporary file, and an
    older output of the same name is unchanged."""
    import numpy as np

    import rvcfast.writing as writing

    (tmp_path / "old.wav").write_bytes(b"older output")
    monkeypatch.setattr(writing, "_new_part", _to_dev_full)
    for name in ("x.wav", "old.wav"):
        with pytest.raises(OSError):
            writing.write_audio_atomic(tmp_path / name, np.zeros(4000, dtype=np.float32), 40000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.wav"]
    assert (tmp_path / "old.wav").read_bytes() == b"older output"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_names_the_reason(tmp_path, monkeypatch):
    """libsndfile keeps the errno text (``sf_strerror``) but soundfile raises its generic
    'System error.': a batch on a full disk should say 'No space left on device'."""
    import numpy as np

    import rvcfast.writing as writing

    monkeypatch.setattr(writing, "_new_part", _to_dev_full)
    with pytest.raises(OSError) as info:
        writing.write_audio_atomic(tmp_path / "x.wav", np.zeros(4000, dtype=np.float32), 40000)
    assert info.value.errno == errno.ENOSPC and os.strerror(errno.ENOSPC) in str(info.value)


def test_names_too_long_for_the_file_system_are_shortened_when_planned(tmp_path):
    """Two inputs with 250-byte stems in two folders: the second output's name with its ``_1`` went
    over 255 bytes and failed at its write, after its conversion ("File name too long")."""
    stem = "é" * 125  # 250 bytes
    for sub in ("a", "b"):
        _wav(tmp_path / "in" / sub, f"{stem}.wav")
    planned = _planned([tmp_path / "in" / "a", tmp_path / "in" / "b"], tmp_path / "out")
    assert len(planned) == 2 and len(set(planned)) == 2
    assert all(len(name.encode()) <= 255 for name in planned)
    assert planned[1].endswith("_1.wav") and planned[0].startswith("é" * 100)
    for name in planned:  # names a file system takes
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / name).write_bytes(b"")


def test_a_text_file_with_an_audio_extension_is_named_as_such(tmp_path, capsys):
    """A playlist or a note named .mp3 failed with the decoders' own words ("possibly a pipe?",
    FFmpeg's "Invalid data"), and libsndfile's MP3 reader printed its complaints to stderr."""
    from rvcfast.audio import decode
    from rvcfast.errors import AudioError

    note = tmp_path / "notes.mp3"
    note.write_text("track 1: intro\ntrack 2: the song\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.mp3: cannot decode audio: this is a text file, not audio"):
        decode(note)
    assert capsys.readouterr().err == ""
    assert _planned([note], tmp_path / "out") == ["notes.wav"]  # still an input, failed at its decode


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """A read-only OUT failed every file at its write, after its conversion. As root a folder's mode
    does not stop writes, so the check (``os.access``) is shown to the code as it is on a
    read-only mount."""
    import rvcfast.writing as writing
    from rvcfast.errors import ParameterError

    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(writing.os, "access", lambda p, mode: False if Path(p) == out else real(p, mode))
    with pytest.raises(ParameterError, match=r"out_dir folder .*ro cannot be written: .*ro is "):
        BatchOptions(out_dir=out).validate()
    with pytest.raises(ParameterError, match=r"cannot be created: .*ro is "):
        BatchOptions(out_dir=out / "sub").validate()
    BatchOptions(out_dir=tmp_path / "fine" / "sub").validate()  # a folder to create under a writable one

"""``rvcfast convert``'s batch options (``--name-template``, ``--on-error``, the worker counts)
and ``--report``: the names written, a batch that stops at a bad file, a report whose lines
are the files on disk, bad values refused before any model is loaded. Tiny random models
(``tests/helpers.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from helpers import cli_weights, no_loading_fixture, one_thread_fixture, tiny_models_fixture, tone, write_tone  # noqa: F401

import rvcfast.api
import rvcfast.f0.registry
from rvcfast.cli import main

_wav = write_tone


def _broken(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"this is no audio at all" * 20)
    return path


def _weights(tiny_models) -> list[str]:
    return cli_weights(tiny_models, "-q")


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _lines(report: Path) -> list[dict]:
    return [json.loads(line) for line in report.read_text(encoding="ascii").splitlines()]


# ------------------------------------------------------------------ --name-template


def test_name_template_keeps_repeated_stems_apart_by_folder(tiny_models, tmp_path, capsys):
    a, b = _wav(tmp_path / "alice", "take.wav"), _wav(tmp_path / "bob", "take.wav")
    out = tmp_path / "out"
    head = ["convert", str(tiny_models.voice), str(a), str(b), *_weights(tiny_models)]
    assert main([*head, "-o", str(out), "--name-template", "{parent}/{stem}"]) == 0
    assert _files(out) == {"alice/take.wav", "bob/take.wav"}
    assert sf.info(str(out / "bob" / "take.wav")).samplerate == 40000
    # the default names them by input order instead: which one is take_1 depends on the others
    plain = tmp_path / "plain"
    assert main([*head, "-o", str(plain)]) == 0
    assert _files(plain) == {"take.wav", "take_1.wav"}


def test_name_template_with_index_and_format(tiny_models, tmp_path):
    a, b = _wav(tmp_path / "in", "a.wav"), _wav(tmp_path / "in", "b.wav")
    out = tmp_path / "out"
    argv = ["convert", str(tiny_models.voice), str(b), str(a), "-o", str(out), "--name-template", "{index:03d}_{stem}.{ext}"]
    assert main([*argv, "--format", "flac", *_weights(tiny_models)]) == 0
    assert _files(out) == {"000_b.flac.flac", "001_a.flac.flac"}


# ------------------------------------------------------------------ --on-error


def test_on_error_stop_writes_the_files_before_the_bad_one_and_none_after(tiny_models, tmp_path, capsys):
    src = tmp_path / "in"
    _wav(src, "a.wav"), _broken(src, "b.wav"), _wav(src, "c.wav")
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(out), "--report", str(report), *_weights(tiny_models)]
    assert main([*argv, "--on-error", "stop"]) == 1
    err = capsys.readouterr().err
    assert _files(out) == {"a.wav"}
    lines = [line.strip() for line in err.splitlines()]
    assert lines[-3] == "rvcfast: 1 of 3 file(s) failed:"
    assert lines[-2].startswith(f"{src / 'b.wav'}: cannot decode audio")
    assert lines[-1] == "rvcfast: 1 file(s) after it not converted (--on-error stop)"
    rows = _lines(report)
    assert [r["source"] for r in rows] == [str(src / n) for n in ("a.wav", "b.wav", "c.wav")]
    assert [r["ok"] for r in rows] == [True, False, False]
    assert rows[0]["output_path"] == str(out / "a.wav") and rows[1]["output_path"] is None and rows[2]["output_path"] is None
    assert str(src / "b.wav") in rows[1]["error"]
    assert rows[2]["error"] == f"not converted: the batch stopped at {src / 'b.wav'} (--on-error stop)"
    # continue (the default) converts the file after it too
    assert main([*argv, "--on-error", "continue"]) == 1
    assert _files(out) == {"a.wav", "c.wav"}
    assert [r["ok"] for r in _lines(report)] == [True, False, True]


def test_on_error_stop_lets_an_error_of_no_file_end_the_command(tiny_models, tmp_path, monkeypatch, capsys):
    """An error that names no input (here: raised before any file) is not pinned on a file:
    the command ends with it, as without --on-error stop, and writes no report."""
    from rvcfast.errors import RvcfastError

    def broken(self, *args, **kwargs):
        raise RvcfastError("the F0 worker pool could not start")
        yield

    monkeypatch.setattr(rvcfast.api.Converter, "iter_batch", broken)
    wav, report = _wav(tmp_path / "in"), tmp_path / "report.jsonl"
    argv = ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--report", str(report)]
    assert main([*argv, "--on-error", "stop", *_weights(tiny_models)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "rvcfast: error: the F0 worker pool could not start"
    assert not report.exists()


# ------------------------------------------------------------------ --report


def test_report_lines_are_the_files_on_disk(tiny_models, tmp_path):
    src = tmp_path / "in"
    _wav(src, "a.wav", 0.4), _wav(src, "b.wav", 0.8), _broken(src, "bad.wav")
    out, report = tmp_path / "out", tmp_path / "logs" / "run.jsonl"
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(out), "--report", str(report), *_weights(tiny_models)]
    assert main(argv) == 1
    rows = {r["source"]: r for r in _lines(report)}
    assert set(rows) == {str(src / n) for n in ("a.wav", "b.wav", "bad.wav")}
    written = {r["output_path"] for r in rows.values() if r["ok"]}
    assert written == {str(p) for p in out.iterdir()} == {str(out / "a.wav"), str(out / "b.wav")}
    for name, seconds in (("a.wav", 0.4), ("b.wav", 0.8)):
        row = rows[str(src / name)]
        assert row["error"] is None and row["skipped"] is False and row["warnings"] == []
        assert row["input_seconds"] == pytest.approx(seconds)
        assert row["duration"] == pytest.approx(sf.info(row["output_path"]).duration)
        assert {"decode", "synth", "write"} <= set(row["timings"])
    bad = rows[str(src / "bad.wav")]
    assert bad["ok"] is False and bad["output_path"] is None and str(src / "bad.wav") in bad["error"]
    # a resumed run reports the existing outputs as skipped, and replaces the report
    assert main([*argv, "--skip-existing"]) == 1
    again = {r["source"]: r for r in _lines(report)}
    assert again[str(src / "a.wav")]["skipped"] is True and again[str(src / "a.wav")]["output_path"] == str(out / "a.wav")
    assert len(again) == 3 and not [p for p in report.parent.iterdir() if p != report]  # no temporary file left


def test_an_interrupted_run_reports_what_it_did(tiny_models, tmp_path, monkeypatch):
    """A run stopped half-way (Ctrl-C) replaces the older report with its own: the input done,
    and the other named as not done; it never names an output it did not write."""
    src = tmp_path / "in"
    _wav(src, "a.wav"), _wav(src, "b.wav")
    report = tmp_path / "report.jsonl"
    report.write_text("older\n")
    real = rvcfast.api.Converter.iter_batch

    def interrupted(self, *args, **kwargs):
        for n, res in enumerate(real(self, *args, **kwargs)):
            if n == 1:
                raise KeyboardInterrupt
            yield res

    monkeypatch.setattr(rvcfast.api.Converter, "iter_batch", interrupted)
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), "--report", str(report)]
    assert main([*argv, *_weights(tiny_models)]) == 130
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(Path(r["source"]).name, r["ok"]) for r in rows] == [("a.wav", True), ("b.wav", False)]
    assert Path(rows[0]["output_path"]).is_file() and rows[1]["output_path"] is None
    assert "interrupted (Ctrl-C)" in rows[1]["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "report.jsonl"]  # no temporary file left


def test_worker_counts_reach_the_batch(tiny_models, tmp_path, monkeypatch):
    seen: dict = {}
    real = rvcfast.api.Converter.iter_batch

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(rvcfast.api.Converter, "iter_batch", spy)
    wav = _wav(tmp_path / "in")
    argv = ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--f0", "pm", *_weights(tiny_models)[:2], "--device", "cpu", "-q"]
    assert main([*argv, "--decode-workers", "3", "--write-workers", "2", "--f0-workers", "1"]) == 0
    assert (seen["decode_workers"], seen["write_workers"], seen["f0_workers"]) == (3, 2, 1)
    assert seen["name_template"] == "{stem}" and seen["on_error"] == "continue"
    assert _files(tmp_path / "out") == {"in.wav"}
    seen.clear()
    assert main(argv) == 0  # not given: the library's defaults
    assert (seen["decode_workers"], seen["write_workers"], seen["f0_workers"]) == (2, 1, 2)


# ------------------------------------------------------------------ refused before loading


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--decode-workers", "0"], "--decode-workers must be at least 1, got 0"),
        (["--write-workers", "-1"], "--write-workers must be at least 1, got -1"),
        (["--f0-workers", "0"], "--f0-workers must be at least 1, got 0"),
        (["--name-template", "{speaker}"], "--name-template: name_template '{speaker}' cannot be filled in"),
        (["--name-template", "{parent}"], "must contain {stem} or {index}"),
        (["--name-template", "/tmp/{stem}"], "gives an absolute path"),
        (["--name-template", "../{stem}"], "leaves the output folder"),
        (["--on-error", "skip"], "invalid choice: 'skip'"),
        (["--decode-workers", "two"], "invalid int value: 'two'"),
        (["--report", "report.txt"], "--report names a .jsonl file"),
        (["--batch-seconds", "inf"], "--batch-seconds must be a positive number of seconds, got inf"),
        (["--batch-seconds", "nan"], "--batch-seconds must be a positive number of seconds, got nan"),
    ],
)
def test_bad_batch_options_are_refused_before_loading(no_loading, tiny_models, tmp_path, capsys, options, message):
    wav = _wav(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["convert", str(tiny_models.voice), str(wav), "-o", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_report_that_is_a_folder_or_under_a_file_is_refused(no_loading, tiny_models, tmp_path, capsys):
    wav = _wav(tmp_path / "in")
    (tmp_path / "r.jsonl").mkdir()
    (tmp_path / "notes").write_text("x")
    for report, message in ((tmp_path / "r.jsonl", "is a folder, not a file"), (tmp_path / "notes" / "r.jsonl", "is a file, not a folder")):
        assert main(["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--report", str(report)]) == 2
        assert message in capsys.readouterr().err


def test_a_template_leaving_the_output_through_a_symlink_is_refused_before_loading(no_loading, tiny_models, tmp_path, capsys):
    wav = _wav(tmp_path / "spk", "a.wav")
    out = tmp_path / "out"
    out.mkdir()
    (out / "spk").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert main(["convert", str(tiny_models.voice), str(wav), "-o", str(out), "--name-template", "{parent}/{stem}"]) == 2
    assert "outside the output folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options",
    [["--name-template", "{parent}/{stem}"], ["--on-error", "stop"], ["--decode-workers", "2"], ["--write-workers", "1"],
     ["--f0-workers", "2"], ["--report", "r.jsonl"]],
)
def test_local_batch_options_with_ray_are_a_usage_error(no_loading, tiny_models, tmp_path, capsys, monkeypatch, options):
    import rvcfast.cli.scale

    monkeypatch.setattr(rvcfast.cli.scale, "cmd_convert_ray", lambda args, *voices: pytest.fail("the Ray job was started"))
    wav = _wav(tmp_path / "in")
    assert main(["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--ray", "local", *options]) == 2
    err = capsys.readouterr().err
    assert f"{' '.join(options[:1]) if options[0] != '--on-error' else '--on-error stop'} is for local runs" in err


def test_options_a_ray_job_honours_anyway_are_accepted_with_ray(tiny_models, tmp_path, monkeypatch):
    import rvcfast.cli.scale

    started = []
    monkeypatch.setattr(rvcfast.cli.scale, "cmd_convert_ray", lambda args, *voices: started.append(args) or 0)
    wav = _wav(tmp_path / "in")
    argv = ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--ray", "local"]
    assert main([*argv, "--name-template", "{stem}", "--on-error", "continue"]) == 0
    assert len(started) == 1
    # with --voice the job names outputs {voice}/{stem}: saying so is no error (was refused as a local option)
    assert main([*argv, "--voice", str(tiny_models.voice_nof0), "--name-template", "{voice}/{stem}"]) == 0
    assert len(started) == 2
    assert main([*argv, "--name-template", "{voice}/{stem}"]) == 2  # one voice: its outputs are {stem}


def test_bitrate_reaches_the_ray_job_and_a_bad_one_is_refused_before_connecting(tiny_models, tmp_path, monkeypatch, capsys):
    import contextlib

    import rvcfast.integrations.ray as ray_api

    calls = []
    monkeypatch.setattr(ray_api, "connected", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(ray_api, "convert_files", lambda *a, **k: calls.append(k) or [])
    wav = _wav(tmp_path / "in")
    argv = ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "-q", "--ray", "local", "--format", "mp3"]
    assert main([*argv, "--bitrate", "96"]) == 0
    assert calls[-1]["bitrate"] == 96 and calls[-1]["format"] == "mp3"
    n = len(calls)
    assert main([*argv, "--bitrate", "100"]) == 2  # not an MPEG bitrate: refused before any job starts
    assert len(calls) == n and "--bitrate" in capsys.readouterr().err
    assert main([*argv[:-1], "wav", "--bitrate", "96"]) == 2
    assert len(calls) == n


# ------------------------------------------------------------------ --loudness


def test_loudness_reaches_the_conversion_and_its_warnings_the_report(tiny_models, tmp_path):
    """The tiny voice's output is below BS.1770's gate: left as it is, and the report says why."""
    src = tmp_path / "in"
    _wav(src, "a.wav", 0.6)
    out, report = tmp_path / "out", tmp_path / "run.jsonl"
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(out), "--report", str(report), *_weights(tiny_models)]
    assert main([*argv, "--loudness", "match"]) == 0
    (row,) = _lines(report)
    assert row["ok"] and row["warnings"] == [
        f"{src / 'a.wav'}: loudness not normalised: the output is silent, its loudness cannot be measured"
    ]


@pytest.mark.parametrize("value", ["loudest", "5", "-90"])
def test_a_bad_loudness_is_refused_before_loading(no_loading, tiny_models, tmp_path, capsys, value):
    src = _wav(tmp_path / "in")
    assert main(["convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), "--loudness", value]) == 2
    err = capsys.readouterr().err
    assert "loudness" in err and "Traceback" not in err


# ------------------------------------------------------------------ --channels


def test_channels_each_writes_the_input_channels(tiny_models, tmp_path):
    import numpy as np

    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "s.wav", np.stack([tone(0.6, 16000, freq=180.0), tone(0.6, 16000, freq=250.0)], axis=1), 16000)
    argv = ["convert", str(tiny_models.voice), str(src), *_weights(tiny_models)]
    assert main([*argv, "-o", str(tmp_path / "each"), "--channels", "each"]) == 0
    assert main([*argv, "-o", str(tmp_path / "mix")]) == 0
    assert sf.info(tmp_path / "each" / "s.wav").channels == 2
    assert sf.info(tmp_path / "mix" / "s.wav").channels == 1


def test_a_bad_channels_value_is_a_usage_error(no_loading, tiny_models, tmp_path, capsys):
    src = _wav(tmp_path / "in")
    assert main(["convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), "--channels", "stereo"]) == 2
    assert "invalid choice: 'stereo'" in capsys.readouterr().err


# ------------------------------------------------------------------ --f0-option names, before loading


@pytest.mark.parametrize(
    ("f0", "option", "words"),
    [
        ("rmvpe", "treshold=0.05", "'rmvpe' does not accept option(s) treshold"),
        ("harvest", "bogus=1", "'harvest' does not accept option(s) bogus"),
        ("hybrid:rmvpe+harvest", "bogus=1", "no member of 'hybrid:rmvpe+harvest' accepts option(s) bogus"),
        ("hybrid:rmvpe+harvest", "harvest={'nope': 1}", "hybrid member 'harvest' does not accept option(s) nope"),
    ],
)
def test_an_f0_option_no_backend_takes_is_a_usage_error_before_loading(no_loading, tiny_models, tmp_path, capsys, f0, option, words):
    wav = _wav(tmp_path / "in")
    for argv in (
        ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--f0", f0, "--f0-option", option],
        ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--f0", f0, "--f0-option", option,
         "--ray", "local"],
        ["f0", str(wav), "-o", str(tmp_path / "f0"), "--method", f0, "--f0-option", option],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--f0-option: F0 extractor {words}" in err or f"--f0-option: {words}" in err, err
    assert not (tmp_path / "out").exists()


def test_options_the_backend_takes_pass_the_early_check(tiny_models, tmp_path):
    from rvcfast.f0.registry import check_f0_options

    check_f0_options("rmvpe", {"threshold": 0.05, "chunk_frames": 64})
    check_f0_options("hybrid:rmvpe+harvest", {"threshold": 0.05, "min_voiced": 2, "harvest": {"f0_min": 60.0}})
    check_f0_options("harvest", {})
    # and the conversion runs with them
    wav = _wav(tmp_path / "in")
    argv = ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "-q", "--encoder", str(tiny_models.encoder),
            "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "--f0-option", "threshold=0.05"]
    assert main(argv) == 0 and (tmp_path / "out" / "in.wav").is_file()


def test_a_long_failure_list_is_cut_after_the_progress_lines_named_each(tiny_models, tmp_path, capsys):
    """400 broken files of a corpus printed 400 failure lines twice (each in its progress line,
    then all again under the summary); now the list under the summary stops after 20 and says
    where the rest is. With -q (no progress lines) every failure is listed."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(30):
        (src / f"broken{i:02d}.wav").write_bytes(b"not audio at all")
    sf.write(src / "good.wav", tone(0.4, 16000), 16000)
    report = tmp_path / "r.jsonl"
    argv = ["convert", str(tiny_models.voice), str(src), "-o", str(tmp_path / "out"), *cli_weights(tiny_models)]
    assert main([*argv, "--report", str(report)]) == 1
    err = capsys.readouterr().err
    summary = err[err.index("30 of 31 file(s) failed:"):]
    listed = [line for line in summary.splitlines() if line.startswith("  ") and "broken" in line]
    assert len(listed) == 20 and f"... and 10 more (in --report {report} and each in its progress line above)" in summary
    assert all(f"broken{i:02d}.wav" in err for i in range(30))  # every one named in its own line above
    assert len(report.read_text().splitlines()) == 31
    assert main([*argv, "-q", "--skip-existing"]) == 1
    quiet = capsys.readouterr().err
    assert sum("broken" in line for line in quiet.splitlines()) == 30 and "more" not in quiet

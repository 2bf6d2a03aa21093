"""The command line with no terminal attached: a log of both streams (``> log 2>&1``, cron,
CI), a reader that goes away (``| head -1``, a dead log pipe), ``-q`` under cron, and ``--json``
read by scripts. Tiny random models (``tests/helpers.py``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_weights, one_thread_fixture, tiny_models_fixture, write_tone  # noqa: F401

from rvcfast.cli import main
from rvcfast.progress import BatchProgress, DownloadProgress


def _inputs(folder: Path) -> Path:
    """Two short tones and a WAV cut after its header (it fails: too short to convert)."""
    write_tone(folder, "a.wav", seconds=0.3)
    good = write_tone(folder, "b.wav", seconds=0.3)
    (folder / "c.wav").write_bytes(good.read_bytes()[:100])
    return folder


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a plain shell runs it
    env.update(RVCFAST_PROFILE=str(tmp_path / "profile.json"), **extra)
    return env


def _convert(tiny_models, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rvcfast", "convert", str(tiny_models.voice), str(inputs), "-o", str(out),
            *cli_weights(tiny_models, *extra)]


def test_a_log_of_both_streams_keeps_the_order_and_ends_with_the_failure(tiny_models, tmp_path):
    """``> log 2>&1``: standard output was block-buffered, so the summary table came out at exit,
    after the failures printed on standard error (the log's last lines were the table)."""
    log = tmp_path / "log.txt"
    with open(log, "wb") as f:
        proc = subprocess.run(_convert(tiny_models, _inputs(tmp_path / "in"), tmp_path / "out"), stdout=f,
                              stderr=subprocess.STDOUT, env=_env(tmp_path), timeout=300)
    text = log.read_text()
    assert proc.returncode == 1, text
    assert "\r" not in text and "\x1b" not in text  # no redraws or escapes in a file
    lines = text.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("3 files (1 failed"))
    failed = next(i for i, line in enumerate(lines) if "1 of 3 file(s) failed" in line)
    assert max(i for i, line in enumerate(lines) if line.startswith("[")) < summary < failed, text
    assert "c.wav" in lines[-1] and "too short" in lines[-1], text


@pytest.mark.parametrize("unbuffered", ["0", "1"])
def test_a_reader_that_goes_away_stops_neither_the_batch_nor_its_report(tiny_models, tmp_path, unbuffered):
    """``rvcfast convert ... | head -1``: with PYTHONUNBUFFERED set (as in many containers) the
    summary's write failed, and the failures and the --report were never written; without it the
    status was 0 although the output was lost. Now: the same either way."""
    env = _env(tmp_path, **({"PYTHONUNBUFFERED": "1"} if unbuffered == "1" else {}))
    inputs, report = _inputs(tmp_path / "in"), tmp_path / "run.jsonl"
    proc = subprocess.Popen(_convert(tiny_models, inputs, tmp_path / "out", "--report", str(report)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert "1 of 3 file(s) failed" in err and "c.wav" in err
    assert sorted(json.loads(line)["source"].rsplit("/", 1)[-1] for line in report.read_text().splitlines()) == [
        "a.wav", "b.wav", "c.wav"]


class _DeadStream(io.StringIO):
    """A standard error whose reader went away (``2> >(logger)`` with the logger gone)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_dead_standard_error_does_not_stop_the_batch(tiny_models, tmp_path, monkeypatch):
    """The first progress line written to a broken standard error raised BrokenPipeError: the
    batch stopped after that file, with no --report."""
    inputs, report = _inputs(tmp_path / "in"), tmp_path / "run.jsonl"
    monkeypatch.setattr(sys, "stderr", _DeadStream())
    argv = ["convert", str(tiny_models.voice), str(inputs), "-o", str(tmp_path / "out"), "--report", str(report),
            *cli_weights(tiny_models)]
    assert main(argv) == 1  # c.wav failed; a.wav and b.wav were converted all the same
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav", "b.wav"]
    assert len(report.read_text().splitlines()) == 3


def test_progress_on_a_broken_stream_turns_itself_off():
    for bar in (BatchProgress(2, stream=_DeadStream(), tty=True), BatchProgress(2, stream=_DeadStream(), tty=False)):
        bar.update(name="a.wav", seconds=1.0)
        bar.advance(1, 0.5)
        bar.close()
    with DownloadProgress("rmvpe.pt", stream=_DeadStream(), tty=False) as dl:
        dl(0, 10)
        dl(10, 10)


def test_quiet_prints_the_failures_alone(tiny_models, tmp_path, capsys):
    """``-q`` under cron (which mails any output): the input warnings of the cut file were printed
    too; they stay in the --report."""
    inputs, report = _inputs(tmp_path / "in"), tmp_path / "run.jsonl"
    argv = ["convert", str(tiny_models.voice), str(inputs), "-o", str(tmp_path / "out"), "-q", "--report", str(report),
            *cli_weights(tiny_models)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "warning" not in captured.err and captured.err.startswith("rvcfast: 1 of 3 file(s) failed:"), captured.err
    assert len(captured.err.splitlines()) == 2
    assert any(json.loads(line)["warnings"] for line in report.read_text().splitlines())


def test_json_is_alone_on_standard_output_with_stable_keys(tiny_models, capsys):
    runs = []
    for argv in (["info", str(tiny_models.voice), "--index", str(tiny_models.index), "--json"], ["backends", "--json"]):
        for _ in range(2):
            assert main(argv) == 0
            captured = capsys.readouterr()
            runs.append(json.loads(captured.out))
            assert captured.err == ""
    info, info2, backends, backends2 = runs
    assert info.keys() == info2.keys() and info["model"].keys() == info2["model"].keys() and backends == backends2
    assert isinstance(info["model"]["sample_rate"], int) and isinstance(info["index"]["vectors"], int)
    assert isinstance(info["model"]["path"], str) and isinstance(info["model"]["f0"], bool)


def test_an_output_named_like_a_file_is_refused_before_loading(tmp_path: Path, capsys) -> None:
    """``rvcfast convert voice.pth in.wav -o out.wav``, a newcomer's first command, made a folder
    named out.wav holding in.wav, and exited 0."""
    src = write_tone(tmp_path, "in.wav", 0.1)
    assert main(["convert", str(tmp_path / "voice.pth"), str(src), "-o", str(tmp_path / "out.wav")]) == 2
    err = capsys.readouterr().err
    assert "OUT is a folder for the outputs" in err and f"-o {tmp_path / 'out'}" in err
    assert not (tmp_path / "out.wav").exists()
    (tmp_path / "take.wav").mkdir()  # a folder that exists keeps its name, whatever it is called
    assert main(["convert", str(tmp_path / "voice.pth"), str(src), "-o", str(tmp_path / "take.wav")]) == 1  # no voice.pth

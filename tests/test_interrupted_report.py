"""``rvcfast convert --report`` for a batch stopped by Ctrl-C or SIGTERM: the inputs done so far
and the others, each named, instead of no report at all (an hour of a batch left nothing to
read when a scheduler stopped it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from helpers import tiny_models_fixture, tone  # noqa: F401

from rvcfast.cli.batch_options import BatchReport

_SLOW_WRITES = """
import sys, time
import rvcfast.batch, rvcfast.cli
real = rvcfast.batch.write_audio_atomic
def slow(*args, **kwargs):  # a slow disk: the batch is still running when the signal comes
    time.sleep(0.4)
    return real(*args, **kwargs)
rvcfast.batch.write_audio_atomic = slow
sys.argv = ["rvcfast", *sys.argv[1:]]
rvcfast.cli.run()
"""


@pytest.mark.parametrize(("sig", "status", "how"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_stopped_batch_writes_what_it_did_to_its_report(tiny_models, tmp_path: Path, sig, status, how) -> None:
    src = tmp_path / "in"
    src.mkdir()
    names = [f"f{i:02d}.wav" for i in range(10)]
    for i, name in enumerate(names):
        sf.write(src / name, tone(0.4 + 0.05 * i, 16000, freq=150.0 + 10 * i), 16000)
    out, report = tmp_path / "out", tmp_path / "logs" / "run.jsonl"
    script = tmp_path / "slow_convert.py"
    script.write_text(_SLOW_WRITES)
    weights = ["--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu"]
    argv = [sys.executable, str(script), "convert", str(tiny_models.voice), str(src), "-o", str(out), *weights,
            "--quiet", "--report", str(report), "--batch-seconds", "0.5"]  # a group per file: results one by one
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("*.wav"))) < 2:
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before the signal could be sent"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err[-2000:]
    assert "Traceback" not in err
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [Path(r["source"]).name for r in rows] == names  # every input once, in input order
    done = [r for r in rows if r["ok"]]
    left = [r for r in rows if not r["ok"]]
    assert done and left, rows
    for r in done:  # a line that says converted names a complete output of this run
        assert sf.info(r["output_path"]).frames > 0 and r["error"] is None
    for r in left:
        assert r["output_path"] is None and f"interrupted ({how})" in r["error"], r
    assert f"{len(done)} input(s) done, {len(left)} not done" in err
    assert not list(report.parent.glob("*.part*")) and not list(out.glob("*.part*"))


def test_the_interrupted_lines_name_each_voice(tmp_path: Path) -> None:
    """With several voices, an (input, voice) pair without a result gets its own line."""

    class Done:
        source, voice, output_path, ok, skipped, error = "a.wav", "alice", "out/alice/a.wav", True, False, None
        warnings: list[str] = []
        input_seconds = duration = 1.0
        timings: dict[str, float] = {}

    report = BatchReport(tmp_path / "r.jsonl", ["a.wav", "b.wav"], ["alice", "bob"])
    report.add(Done())
    assert report.interrupted("Ctrl-C") == 3
    report.write()
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    pairs = [(r["source"], r["voice"], r["ok"]) for r in rows]
    assert pairs == [("a.wav", "alice", True), ("a.wav", "bob", False), ("b.wav", "alice", False), ("b.wav", "bob", False)]

"""``rvcfast convert --voice``: every input to several voices in one run, each input analysed
once. The outputs are checked against one-voice runs of the same files; the report, the
names and the usage errors against what docs/cli.md says. Tiny random models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import cli_weights, no_loading_fixture, one_thread_fixture, tiny_models_fixture, tone, write_tone  # noqa: F401

import rvcfast.voices
from rvcfast.cli import main

_wav = write_tone


def _weights(tiny_models) -> list[str]:
    return cli_weights(tiny_models, "-q")


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _voices(tiny_models, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three voice files with their own stems: alice (F0, with index), bob (no F0), carol (F0)."""
    folder = tmp_path / "voices"
    folder.mkdir()
    alice, bob, carol = folder / "alice.pth", folder / "bob.pth", folder / "carol.pth"
    shutil.copy(tiny_models.voice, alice)
    shutil.copy(tiny_models.voice_nof0, bob)
    shutil.copy(tiny_models.voice, carol)
    return alice, bob, carol


def test_every_input_to_every_voice_equals_one_voice_runs(tiny_models, tmp_path, monkeypatch):
    alice, bob, carol = _voices(tiny_models, tmp_path)
    a, b = _wav(tmp_path / "in", "a.wav", 1.2, 190.0), _wav(tmp_path / "in", "b.wav", 0.7, 260.0)
    made: list[rvcfast.voices.SharedAnalysis] = []
    real = rvcfast.voices.SharedAnalysis

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(rvcfast.voices, "SharedAnalysis", spy)
    out = tmp_path / "out"
    argv = [
        "convert", str(alice), str(a), str(b), "-o", str(out), "--index", str(tiny_models.index), "--seed", "3",
        "--voice", str(bob), "--voice", f"{carol},{tiny_models.index}", "--pitch", "2", *_weights(tiny_models),
    ]
    assert main(argv) == 0
    assert _files(out) == {f"{v}/{s}.wav" for v in ("alice", "bob", "carol") for s in ("a", "b")}
    # the F0 of each input was tracked once for alice and carol (bob has no pitch)
    assert made and made[0].f0_computed == 2 and made[0].f0_reused == 2
    assert made[0].features_computed == 2 and made[0].features_reused == 4
    for voice, index in ((alice, tiny_models.index), (bob, None), (carol, tiny_models.index)):
        alone = tmp_path / f"alone_{voice.stem}"
        extra = ["--index", str(index)] if index is not None else []
        assert main(["convert", str(voice), str(a), str(b), "-o", str(alone), "--seed", "3", "--pitch", "2",
                     *extra, *_weights(tiny_models)]) == 0
        for stem in ("a", "b"):
            x, _ = sf.read(alone / f"{stem}.wav", dtype="float32")
            y, rate = sf.read(out / voice.stem / f"{stem}.wav", dtype="float32")
            assert rate == 40000 and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def test_report_has_a_line_per_input_and_voice(tiny_models, tmp_path):
    alice, bob, _ = _voices(tiny_models, tmp_path)
    a = _wav(tmp_path / "in", "a.wav", 0.5, 200.0)
    bad = tmp_path / "in" / "bad.wav"
    bad.write_bytes(b"no audio here" * 30)
    out, report = tmp_path / "out", tmp_path / "run.jsonl"
    argv = ["convert", str(alice), str(a), str(bad), "-o", str(out), "--voice", str(bob), "--report", str(report)]
    assert main([*argv, *_weights(tiny_models)]) == 1  # bad.wav failed, for both voices
    rows = [json.loads(line) for line in report.read_text(encoding="ascii").splitlines()]
    assert [(Path(r["source"]).name, r["voice"], r["ok"]) for r in rows] == [
        ("a.wav", "alice", True), ("a.wav", "bob", True), ("bad.wav", "alice", False), ("bad.wav", "bob", False),
    ]
    assert all("bad.wav" in r["error"] for r in rows if not r["ok"])
    assert [Path(r["output_path"]).relative_to(out).as_posix() for r in rows if r["ok"]] == ["alice/a.wav", "bob/a.wav"]


def test_on_error_stop_names_what_was_not_done_per_voice(tiny_models, tmp_path, capsys):
    alice, bob, _ = _voices(tiny_models, tmp_path)
    src = tmp_path / "in"
    _wav(src, "a.wav", 0.5, 200.0)
    (src / "b.wav").write_bytes(b"no audio here" * 30)
    _wav(src, "c.wav", 0.5, 220.0)
    out, report = tmp_path / "out", tmp_path / "run.jsonl"
    argv = ["convert", str(alice), str(src), "-o", str(out), "--voice", str(bob), "--report", str(report), "--on-error", "stop"]
    assert main([*argv, *_weights(tiny_models)]) == 1
    assert _files(out) == {"alice/a.wav"}  # nothing after the first voice's failed file
    rows = [json.loads(line) for line in report.read_text(encoding="ascii").splitlines()]
    assert [(Path(r["source"]).name, r["voice"]) for r in rows] == [
        (n, v) for n in ("a.wav", "b.wav", "c.wav") for v in ("alice", "bob")
    ]
    failed = [r for r in rows if not r["ok"]]
    assert [(Path(r["source"]).name, r["voice"]) for r in failed if "not converted" not in r["error"]] == [("b.wav", "alice")]
    assert len(failed) == 5
    assert "4 conversion(s) (input, voice) after it not done" in capsys.readouterr().err


def test_a_template_without_voice_is_a_usage_error_before_loading(tiny_models, tmp_path, no_loading, capsys):
    alice, bob, _ = _voices(tiny_models, tmp_path)
    a = _wav(tmp_path / "in", "a.wav", 0.3, 200.0)
    argv = ["convert", str(alice), str(a), "-o", str(tmp_path / "out"), "--voice", str(bob), *_weights(tiny_models)]
    assert main([*argv, "--name-template", "{stem}-{pitch}"]) == 2
    assert "{voice}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("twin", ["alice.pth", "ALICE.pth"])
def test_two_voices_with_one_name_are_a_usage_error(tiny_models, tmp_path, no_loading, capsys, twin):
    # ALICE.pth and alice.pth: one output folder on Windows and macOS. Before, both models were
    # loaded and the library refused the pair only then
    alice, _, _ = _voices(tiny_models, tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(alice, other / twin)
    a = _wav(tmp_path / "in", "a.wav", 0.3, 200.0)
    argv = ["convert", str(alice), str(a), "-o", str(tmp_path / "out"), "--voice", str(other / twin)]
    assert main([*argv, *_weights(tiny_models)]) == 2
    err = capsys.readouterr().err
    assert "two voices are named" in err and ("'alice'" in err or "'ALICE'" in err), err


def test_bad_voice_values_are_refused_before_loading(tiny_models, tmp_path, no_loading, capsys):
    alice, _, _ = _voices(tiny_models, tmp_path)
    a = _wav(tmp_path / "in", "a.wav", 0.3, 200.0)
    head = ["convert", str(alice), str(a), "-o", str(tmp_path / "out"), *_weights(tiny_models)]
    assert main([*head, "--voice", ",x.index"]) == 2
    assert "MODEL,INDEX" in capsys.readouterr().err
    assert main([*head, "--voice", str(tmp_path / "missing.pth")]) == 1  # a missing file: named, nothing loaded
    assert "missing.pth" in capsys.readouterr().err
    assert main([*head, "--voice", str(tmp_path / "bob.pth"), "--ray"]) == 1  # checked as locally: the missing file named
    assert "bob.pth" in capsys.readouterr().err
    assert main([*head, "--voice-pitch", "nobody=2", "--ray"]) == 2
    assert "no voice is named 'nobody'" in capsys.readouterr().err
    for bad, message in (("nobody=2", "no voice is named 'nobody'"), ("alice", "VOICE=SEMITONES"),
                         ("alice=high", "VOICE=SEMITONES"), ("alice=99", "pitch")):
        assert main([*head, "--voice-pitch", bad]) == 2, bad
        assert message in capsys.readouterr().err, bad
    assert main([*head, "--voice-pitch", "alice=1", "--voice-pitch", "alice=2"]) == 2
    assert "two keys" in capsys.readouterr().err


def test_each_voice_can_have_its_own_key(tiny_models, tmp_path):
    alice, _, carol = _voices(tiny_models, tmp_path)
    a = _wav(tmp_path / "in", "a.wav", 0.8, 200.0)
    out = tmp_path / "out"
    argv = ["convert", str(alice), str(a), "-o", str(out), "--seed", "1", "--pitch", "2", "--voice", str(carol)]
    assert main([*argv, "--voice-pitch", "carol=-7", "--name-template", "{voice}/{stem}{pitch}", *_weights(tiny_models)]) == 0
    assert _files(out) == {"alice/a+2.wav", "carol/a-7.wav"}  # alice keeps --pitch, carol has its own
    outputs = {}
    for voice, pitch, name in ((alice, "2", "alice/a+2.wav"), (carol, "-7", "carol/a-7.wav")):
        alone = tmp_path / f"alone_{voice.stem}"
        assert main(["convert", str(voice), str(a), "-o", str(alone), "--seed", "1", "--pitch", pitch, *_weights(tiny_models)]) == 0
        outputs[voice.stem] = sf.read(out / name)[0]
        np.testing.assert_array_equal(sf.read(alone / "a.wav")[0], outputs[voice.stem])
    # carol is alice's model: only the key tells their outputs apart
    assert np.abs(outputs["alice"] - outputs["carol"]).max() > 0


def test_a_speaker_one_voice_does_not_have_names_that_voice(tiny_models, tmp_path, capsys):
    """``--speaker 2`` with a one-speaker ``--voice`` said "this model has 1 speaker(s)" without
    saying which of the voices; nothing is converted."""
    from helpers import TINY_VOICE

    from rvcfast.testing import save_random_voice_model

    alice, _, _ = _voices(tiny_models, tmp_path)
    solo = save_random_voice_model(tmp_path / "voices" / "solo.pth", "v2", 40000, True, seed=9, **{**TINY_VOICE, "num_speakers": 1})
    wav = write_tone(tmp_path / "in")
    out = tmp_path / "out"
    status = main(["convert", str(alice), str(wav), "-o", str(out), "--voice", str(solo), "--speaker", "2", *_weights(tiny_models)])
    err = capsys.readouterr().err
    assert status == 2 and "--speaker: speaker 2 is out of range: this model has 1 speaker(s)" in err, err
    assert f"(voice 'solo', {solo})" in err, err
    assert not out.exists() or not _files(out)

"""The command line as a user meets it, second review: mistakes refused before any model is
loaded (a missing input, model or index; an output folder under a file; ``--ray`` options on a
local run), and the summary's wording (``1 file``; no stage table when nothing was converted).
Tiny random models (``tests/helpers.py``)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
from helpers import cli_weights, no_loading_fixture, one_thread_fixture, tiny_models_fixture, tone, write_tone  # noqa: F401

from rvcfast.batch import BatchSummary
from rvcfast.cli import build_parser, main

_wav = write_tone


_weights = cli_weights


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------ missing files, before loading


def test_convert_refuses_a_missing_input_before_loading(no_loading, tiny_models, tmp_path, capsys):
    missing = tmp_path / "in" / "tkae1.wav"
    good = _wav(tmp_path / "in")
    status = main(["convert", str(tiny_models.voice), str(good), str(missing), "-o", str(tmp_path / "out"), *_weights(tiny_models)])
    lines = _error_lines(capsys.readouterr().err)
    assert status == 1
    assert lines == [f"rvcfast: error: {missing}: input file does not exist"]
    assert not (tmp_path / "out").exists()


def test_convert_names_every_missing_input(no_loading, tiny_models, tmp_path, capsys):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    assert main(["convert", str(tiny_models.voice), str(a), str(b), "-o", str(tmp_path / "out")]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(a) in lines[0] and str(b) in lines[0]


def test_standard_input_is_refused_with_a_note(no_loading, tiny_models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file named '-' here
    assert main(["convert", str(tiny_models.voice), "-", "-o", "out"]) == 1
    err = capsys.readouterr().err
    assert "-: input file does not exist" in err and "standard input" in err


def test_convert_refuses_a_missing_model_or_index_before_loading(no_loading, tiny_models, tmp_path, capsys):
    wav = _wav(tmp_path / "in")
    assert main(["convert", str(tmp_path / "voice.pth"), str(wav), "-o", str(tmp_path / "out")]) == 1
    assert _error_lines(capsys.readouterr().err) == [f"rvcfast: error: {tmp_path / 'voice.pth'}: voice model file does not exist"]
    status = main(["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--index", str(tmp_path / "v.index")])
    assert status == 1
    assert _error_lines(capsys.readouterr().err) == [f"rvcfast: error: {tmp_path / 'v.index'}: index file does not exist"]


def test_f0_refuses_a_missing_input_before_loading(no_loading, tmp_path, capsys):
    missing = tmp_path / "nope.wav"
    assert main(["f0", str(missing), "-o", str(tmp_path / "f0")]) == 1
    assert _error_lines(capsys.readouterr().err) == [f"rvcfast: error: {missing}: input file does not exist"]
    assert not (tmp_path / "f0").exists()


# ------------------------------------------------------------------ output folder under a file


@pytest.mark.parametrize("command", ["convert", "f0"])
def test_an_output_folder_under_a_file_is_a_usage_error(no_loading, tiny_models, tmp_path, capsys, command):
    wav = _wav(tmp_path / "in")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder")
    head = ["convert", str(tiny_models.voice)] if command == "convert" else ["f0"]
    assert main([*head, str(wav), "-o", str(notes / "out")]) == 2
    err = capsys.readouterr().err
    assert f"output folder {notes / 'out'} cannot be created: {notes} is a file" in err
    assert "Traceback" not in err and notes.read_text() == "not a folder"


# ------------------------------------------------------------------ --ray options on a local run


@pytest.mark.parametrize(
    ("options", "named"),
    [(["--workers", "4"], ["--workers"]), (["--manifest", "m.jsonl"], ["--manifest"]),
     (["--gpus-per-worker", "0.5", "--workers", "2"], ["--workers", "--gpus-per-worker"])],
)
def test_ray_options_without_ray_are_a_usage_error(no_loading, tiny_models, tmp_path, capsys, options, named):
    wav = _wav(tmp_path / "in")
    assert main(["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), *options]) == 2
    err = capsys.readouterr().err
    assert "for --ray runs" in err and all(flag in err for flag in named)


# ------------------------------------------------------------------ the summary


def test_the_summary_counts_one_file_and_leaves_out_an_empty_table():
    skipped = BatchSummary(files=1, skipped=1, wall_seconds=0.1)
    assert skipped.table() == "1 file (0 failed, 1 skipped), 0.0 s of audio in 0.1 s (no audio converted)"
    failed = BatchSummary(files=2, failed=2, wall_seconds=0.5, timings={"decode": 0.2})
    assert failed.table().splitlines() == ["2 files (2 failed, 0 skipped), 0.0 s of audio in 0.5 s (no audio converted)"]
    done = BatchSummary(files=1, audio_seconds=2.0, wall_seconds=1.0, timings={"synth": 0.75, "f0": 0.25})
    assert done.table().splitlines() == [
        f"{'stage':<10} {'seconds':>9} {'share':>7}",
        f"{'synth':<10} {0.75:9.3f} {75.0:6.1f}%",
        f"{'f0':<10} {0.25:9.3f} {25.0:6.1f}%",
        "1 file (0 failed, 0 skipped), 2.0 s of audio in 1.0 s (real-time factor 0.500)",
    ]


def test_convert_summary_of_one_file(tiny_models, tmp_path, capsys):
    wav = _wav(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["convert", str(tiny_models.voice), str(wav), "-o", str(out), *_weights(tiny_models)]) == 0
    stdout = capsys.readouterr().out
    assert "1 file (0 failed, 0 skipped)" in stdout and "synth" in stdout
    assert main(["convert", str(tiny_models.voice), str(wav), "-o", str(out), "--skip-existing", *_weights(tiny_models)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("1 file (0 failed, 1 skipped)")  # no table of nothing


# ------------------------------------------------------------------ rvcfast info on untrusted metadata


def test_info_prints_control_characters_of_the_metadata_escaped(tiny_models, tmp_path, capsys):
    """A checkpoint's metadata is the file author's text: printed raw, ESC sequences cleared the
    terminal, set its title or hid text (and a bidi override reordered it)."""
    import torch

    ckpt = torch.load(tiny_models.voice, map_location="cpu", weights_only=True)
    ckpt["info"] = "5 epochs\x1b[2J\x1b]0;title\x07 \u202eevil"
    ckpt["author\x1b[8m"] = "me"
    path = tmp_path / "voice.pth"
    torch.save(ckpt, path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\u202e")
    assert "5 epochs\\x1b[2J\\x1b]0;title\\x07 \\u202eevil" in out
    assert "author\\x1b[8m" in out and "version" in out
    assert main(["info", str(path), "--json"]) == 0  # JSON escapes them itself
    assert json.loads(capsys.readouterr().out)["model"]["metadata"]["info"] == ckpt["info"]


# ------------------------------------------------------------------ options that did nothing


def test_info_device_without_system_is_a_usage_error(tiny_models, capsys):
    assert main(["info", str(tiny_models.voice), "--device", "cuda"]) == 2
    assert "--device is for --system" in capsys.readouterr().err
    assert main(["info", str(tiny_models.voice), "--device", "auto"]) == 0  # the default is no mistake


@pytest.mark.parametrize("extra", [["--small"], ["--models", "somewhere"]])
def test_bench_random_model_options_with_a_model_are_a_usage_error(no_loading, tiny_models, tmp_path, capsys, monkeypatch, extra):
    import rvcfast.testing

    monkeypatch.setattr(rvcfast.testing, "build_bench_models", lambda *a, **k: pytest.fail("models were built"))
    assert main(["bench", "--model", str(tiny_models.voice), *extra]) == 2
    err = capsys.readouterr().err
    assert extra[0] in err and "only without --model" in err


# ------------------------------------------------------------------ effects on the command line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # before: the second --effect reverb replaced the first, room_size went back to its fallback
        (["--effect", "reverb:room_size=0.3", "--effect", "reverb:damping=0.2"], {"reverb": {"room_size": 0.3, "damping": 0.2}}),
        # before: --effects replaced every --effect given before it
        (["--effect", "reverb:room_size=0.3", "--effects", '{"gain": {"db": 3}}'], {"reverb": {"room_size": 0.3}, "gain": {"db": 3}}),
        (["--effects", '{"reverb": {"room_size": 0.3}}', "--effect", "reverb:wet_level=0.1"], {"reverb": {"room_size": 0.3, "wet_level": 0.1}}),
        # before: a later {"reverb": null} (the effect at its defaults) dropped the room_size given before it
        (["--effect", "reverb:room_size=0.3", "--effects", '{"reverb": null}'], {"reverb": {"room_size": 0.3}}),
        (["--effects", '{"reverb": null}'], {"reverb": None}),
    ],
)
def test_effects_given_several_times_add_up(flags, expected):
    args = build_parser().parse_args(["convert", "m.pth", "in.wav", "-o", "out", *flags])
    assert args.effects == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--effect", "reverb:room_size=5"], "rvcfast convert: error: --effect/--effects: effects: reverb room_size must be within 0..1, got 5"),
        (["--effect", "echo"], "rvcfast convert: error: --effect/--effects: unknown effect 'echo'; valid effects: "),
        # before: "not JSON (or a .json file): Expecting value: line 1 column 1 (char 0)"
        (["--effects", "nosuch.json"], "rvcfast convert: error: argument --effects: no such file: nosuch.json"),
        # before: the first of a key given twice was dropped without a word
        (["--effect", "reverb:room_size=0.1,room_size=0.9"], "rvcfast convert: error: argument --effect: 'room_size' is given twice"),
        (["--effects", '{"reverb": {"room_size": 0.1}, "reverb": {"damping": 0.9}}'],
         "rvcfast convert: error: argument --effects: 'reverb' is given more than once in the same JSON object"),
        (["--effects", '{"reverb": {"room_size": 0.1, "room_size": 0.9}}'],
         "rvcfast convert: error: argument --effects: 'room_size' is given more than once in the same JSON object"),
    ],
)
def test_effect_errors_name_the_flag(tiny_models, tmp_path, capsys, no_loading, flags, message):
    wav = tmp_path / "in.wav"
    sf.write(wav, tone(0.5), 16000)
    status = main(["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), *flags])
    assert status == 2
    assert _error_lines(capsys.readouterr().err)[-1].startswith(message)
    assert not (tmp_path / "out").exists()

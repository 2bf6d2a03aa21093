"""Command-line mistakes and corner cases found in review: CPU F0 backends in the batch's worker
processes, non-numeric F0 options, ``rvcfast tune``'s options and profile target checked before
any model is built, one JSON document from ``info --system --json MODEL``, ``bench``'s error lines
and unknown F0 names. Tiny random models throughout (``tests/helpers.py``)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import MODEL_SR, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast import tuning
from rvcfast.cli import main
from rvcfast.errors import ParameterError
from rvcfast.f0.world import DioExtractor, HarvestExtractor


def _wav(folder: Path, name: str = "in.wav", seconds: float = 0.6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    sf.write(path, tone(seconds, 16000, freq=180.0), 16000)
    return path


def _pm():
    pytest.importorskip("parselmouth", reason="pm needs the rvcfast[pm] extra")
    from rvcfast.f0.pm import PMExtractor

    return PMExtractor


# ------------------------------------------------------------------------------- CPU F0 backends


@pytest.mark.parametrize("name", ["harvest", "dio", "pm"])
def test_cpu_f0_extractors_survive_pickling(name):
    cls = {"harvest": HarvestExtractor, "dio": DioExtractor}.get(name) or _pm()
    extractor = cls(f0_min=60.0, f0_max=900.0)
    copy = pickle.loads(pickle.dumps(extractor))  # how the batch sends it to its F0 processes
    assert type(copy) is cls and (copy.f0_min, copy.f0_max) == (60.0, 900.0)
    audio = tone(0.3, 16000, freq=200.0)
    np.testing.assert_array_equal(copy.extract(audio), extractor.extract(audio))


def test_convert_batch_with_harvest_equals_convert(tiny_models):
    conv = tiny_models.converter(f0="harvest", f0_weights=None, index=None)
    clips = [tone(0.5, 16000, freq=f) for f in (150.0, 240.0)]
    solo = [conv.convert(c, 16000, noise=False).audio for c in clips]
    batch = conv.convert_batch([(c, 16000) for c in clips], noise=False)
    for s, b in zip(solo, batch):
        assert b.ok, b.error
        assert b.audio.shape == s.shape
        assert np.abs(b.audio - s).max() / max(np.abs(s).max(), 1e-3) <= 1e-5


@pytest.mark.parametrize("f0", ["harvest", "pm"])
def test_cli_convert_with_a_cpu_f0_backend(tiny_models, tmp_path, capsys, f0):
    if f0 == "pm":
        _pm()
    wav = _wav(tmp_path / "in")
    status = main([
        "convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"),
        "--encoder", str(tiny_models.encoder), "--f0", f0, "-q",
    ])
    assert status == 0, capsys.readouterr().err
    audio, rate = sf.read(tmp_path / "out" / "in.wav")
    assert rate == MODEL_SR and audio.size > 0


# ------------------------------------------------------------------------------- F0 options


@pytest.mark.parametrize(
    ("method", "option"),
    [("harvest", "f0_min=abc"), ("harvest", "f0_max=high"), ("dio", "f0_min=True"), ("pm", "voicing_threshold=x"),
     ("pm", "f0_min=abc")],
)
def test_a_non_numeric_f0_option_is_a_usage_error(tmp_path, capsys, method, option):
    if method == "pm":
        _pm()
    wav = _wav(tmp_path / "in")
    assert main(["f0", str(wav), "-o", str(tmp_path / "f0"), "--method", method, "--f0-option", option]) == 2
    err = capsys.readouterr().err
    assert option.split("=")[0] in err and "must be a number" in err and "Traceback" not in err


def test_f0_option_numbers_are_checked_in_the_constructors():
    with pytest.raises(ParameterError, match="f0_min"):
        HarvestExtractor(f0_min="abc")
    with pytest.raises(ParameterError, match="f0_max"):
        DioExtractor(f0_max=None)
    assert HarvestExtractor(f0_min="70").f0_min == 70.0  # a number written as text is still a number
    pm = _pm()
    with pytest.raises(ParameterError, match="voicing_threshold"):
        pm(voicing_threshold="high")


def test_f0_refuses_audio_shorter_than_a_frame_and_says_a_file_is_truncated(tmp_path, capsys):
    """A WAV cut off 50 samples into its data gave a one-row CSV (a "pitch" for 3 ms) and no word
    that the file was damaged; a file cut in half gave its track with no warning either, where
    `rvcfast convert` says both."""
    whole = _wav(tmp_path / "src", seconds=1.0).read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "stub.wav").write_bytes(whole[: 44 + 100])  # 50 samples of a 1 s file
    (folder / "half.wav").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "f0"
    assert main(["f0", str(folder / "stub.wav"), str(folder / "half.wav"), "--method", "dio", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert not (out / "stub.csv").exists()
    assert re.search(r"stub\.wav: audio is too short for an F0 track: 3\.1 ms", err), err
    rows = (out / "half.csv").read_text().splitlines()
    held = (len(whole) // 2 - 44) // 2  # 16-bit samples after the 44-byte header
    assert rows[0] == "time,f0" and len(rows) - 1 == held // 160 + 1  # what it holds, one row per 10 ms
    assert re.search(r"warning: .*half\.wav: file is truncated: its header promises 1\.00 s of audio, it holds 0\.50 s", err)
    assert main(["f0", str(folder / "half.wav"), "--method", "dio", "-o", str(tmp_path / "q"), "-q"]) == 0
    assert "truncated" not in capsys.readouterr().err  # -q: quiet, as for convert


# ------------------------------------------------------------------------------- rvcfast tune


@pytest.fixture()
def no_model_building(monkeypatch):
    """Building the random full-size models (~500 MB) fails the test: every check comes first."""
    import rvcfast.testing

    def refuse(*args, **kwargs):
        raise AssertionError("models were built before the options were checked")

    monkeypatch.setattr(rvcfast.testing, "build_bench_models", refuse)


@pytest.mark.parametrize(
    "option",
    [["--threads", "x"], ["--threads", "0"], ["--threads", "-1"], ["--threads", "1,,2"], ["--batch-seconds", "x"],
     ["--batch-seconds", "0"], ["--batch-seconds", "inf"], ["--compute-workers", "x"], ["--compute-workers", "0"]],
)
def test_tune_list_options_are_checked_before_anything_is_built(no_model_building, tmp_path, capsys, option):
    for models in ([], ["--model", str(tmp_path / "nonexistent.pth")]):
        status = main(["tune", *models, "--models", str(tmp_path / "bm"), *option, "--output", str(tmp_path / "p.json")])
        err = capsys.readouterr().err
        assert status == 2 and option[0] in err and "Traceback" not in err
    assert not (tmp_path / "bm").exists() and not (tmp_path / "p.json").exists()


def test_tune_refuses_to_replace_a_file_that_is_not_a_profile(no_model_building, tiny_models, tmp_path, capsys):
    precious = tmp_path / "precious.pth"
    for content in (Path(tiny_models.voice).read_bytes(), b"", b"[1, 2]", b'{"something": "else"}'):
        precious.write_bytes(content)
        assert main(["tune", "--output", str(precious), "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert str(precious) in err and "not an rvcfast profile file" in err
        assert precious.read_bytes() == content


def test_tune_output_folder_or_under_a_file_is_refused_first(no_model_building, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"x")
    for target, words in ((tmp_path, "is a folder"), (blocker / "p.json", "is not a folder")):
        assert main(["tune", "--output", str(target), "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert words in err and "--output" in err


def test_profile_targets(tmp_path):
    fresh = tmp_path / "new" / "sub" / "p.json"
    tuning.check_profile_target(fresh)  # a new file in folders made on saving
    profile = tuning.Profile(machine="CPU X | cpu", dtype="float32", threads=1, batch_seconds=8.0)
    saved = tuning.save_profile(profile, tmp_path / "p.json")
    tuning.check_profile_target(saved)  # an existing profile file: its other entries are kept
    legacy = tmp_path / "legacy.json"
    legacy.write_text(profile.to_json())  # one profile object, as first written
    tuning.check_profile_target(legacy)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not an rvcfast profile file"):
        tuning.check_profile_target(broken)
    tuning.check_profile_target(broken, replace_invalid=True)  # rvcfast's own, broken: may be replaced
    with pytest.raises(ValueError, match="folder"):
        tuning.check_profile_target(tmp_path, replace_invalid=True)


def test_tune_updates_an_existing_profile_file(tiny_models, tmp_path, capsys):
    target = tmp_path / "p.json"
    other = tuning.Profile(machine="Other CPU [avx2] x64 | torch 0 | cpu", dtype="float32", threads=4, batch_seconds=30.0)
    tuning.save_profile(other, target)
    status = main([
        "tune", "--model", str(tiny_models.voice), "--encoder", str(tiny_models.encoder),
        "--f0-weights", str(tiny_models.rmvpe), "--files", "1", "--seconds", "0.5", "--quick", "-q",
        "--threads", "1", "--compute-workers", "1", "--device", "cpu", "--output", str(target),
    ])
    assert status == 0, capsys.readouterr().err
    machines = [e["machine"] for e in json.loads(target.read_text())["profiles"]]
    assert machines == [other.machine, tuning.machine_id("cpu")]


# ------------------------------------------------------------------------------- rvcfast info


def test_info_system_json_with_a_model_is_one_object(tiny_models, capsys):
    assert main(["info", "--system", "--device", "cpu", "--json", str(tiny_models.voice), "--index", str(tiny_models.index)]) == 0
    report = json.loads(capsys.readouterr().out)  # one document
    assert sorted(report) == ["index", "model", "system"]
    assert report["system"]["device"] == "cpu" and report["model"]["sample_rate"] == MODEL_SR
    assert report["index"]["matches_model"] is True
    assert main(["info", "--system", "--device", "cpu", "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)) == ["system"]
    assert main(["info", "--json", str(tiny_models.voice)]) == 0
    assert sorted(json.loads(capsys.readouterr().out)) == ["model"]


def test_info_system_text_with_a_model_has_both(tiny_models, capsys):
    assert main(["info", "--system", "--device", "cpu", str(tiny_models.voice)]) == 0
    text = capsys.readouterr().out
    assert text.index("cpu ") < text.index("model ") and "sample rate" in text


# ------------------------------------------------------------------------------- rvcfast bench


def test_bench_names_a_failed_file_once(tiny_models, monkeypatch, capsys):
    import rvcfast.api

    real = rvcfast.api.Converter.convert_batch

    def failing(self, inputs, *args, **kwargs):
        results = real(self, inputs, *args, **kwargs)
        return [dataclasses.replace(r, error=f"{r.source}: cannot decode audio (damaged)") for r in results]

    monkeypatch.setattr(rvcfast.api.Converter, "convert_batch", failing)
    status = main([
        "bench", "--model", str(tiny_models.voice), "--encoder", str(tiny_models.encoder),
        "--f0-weights", str(tiny_models.rmvpe), "--files", "1", "--seconds", "0.5", "--no-warmup", "--device", "cpu",
    ])
    assert status == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(lines) == 1 and lines[0].startswith("rvcfast: error: ")
    source = lines[0][len("rvcfast: error: ") :].split(": ")[0]
    assert source.endswith("clip000.wav") and lines[0].count(source) == 1


@pytest.mark.parametrize("name", ["nope", "hybrid:rmvpe+nope", "hybrid:rmvpe"])
def test_bench_unknown_f0_is_a_usage_error(no_model_building, tmp_path, capsys, name):
    assert main(["bench", "--small", "--models", str(tmp_path / "bm"), "--f0", name]) == 2
    err = capsys.readouterr().err
    assert "--f0" in err and "Traceback" not in err
    assert not (tmp_path / "bm").exists()


def test_info_system_says_where_the_base_weights_are(tmp_path, monkeypatch, capsys):
    """A first question when a run says 'hubert_base.pt not found': where does rvcfast look, and
    what does it find? Before, `info --system` did not say."""
    home = tmp_path / "home"
    (home / "assets/rmvpe").mkdir(parents=True)
    (home / "assets/rmvpe/rmvpe.pt").write_bytes(b"x")  # an RVC WebUI layout
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["info", "--system", "--device", "cpu", "--json"]) == 0
    weights = json.loads(capsys.readouterr().out)["system"]["weights"]
    assert weights["search_folders"] == [str(home), str(tmp_path / "cache" / "rvcfast")]
    assert weights["files"] == {"hubert_base.pt": None, "rmvpe.pt": str(home / "assets/rmvpe/rmvpe.pt")}
    assert main(["info", "--system", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\n  hubert_base\.pt +missing: `rvcfast download hubert`\n", text)
    assert re.search(rf"\n  rmvpe\.pt +{re.escape(str(home / 'assets/rmvpe/rmvpe.pt'))}\n", text)

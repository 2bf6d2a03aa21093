"""The ``rvcfast`` command line, run in-process through ``rvcfast.cli.main`` with tiny random models."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvcfast import weights
from rvcfast.cli import COMMANDS, main
from rvcfast.progress import BatchProgress, DownloadProgress

SUBCOMMANDS = list(COMMANDS)


def test_every_command_is_listed() -> None:
    assert SUBCOMMANDS == ["convert", "f0", "info", "export", "backends", "download", "bench", "tune", "serve"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Single-threaded torch: on a busy 2-core box this is faster for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny v2 40 kHz voice (3 speakers), a tiny ContentVec (HF layout), reduced RMVPE (narrow BiGRU), a small index."""
    from rvcfast.index import save_index
    from rvcfast.testing import save_random_hubert, save_random_rmvpe, save_random_voice_model

    d = tmp_path_factory.mktemp("models")
    voice = save_random_voice_model(
        d / "voice.pth", "v2", 40000, True, num_speakers=3,
        inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=16,
    )
    encoder = save_random_hubert(
        d / "contentvec", "hf", layers=1, hidden=768, heads=4, ffn=64,
        conv_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2, conv_pos=15, conv_pos_groups=4,
    )
    rmvpe = save_random_rmvpe(d / "rmvpe.pt", full_size=False, gru_hidden=32)  # the real 256 units: a third of the time
    rng = np.random.default_rng(0)
    save_index(d / "voice.index", rng.standard_normal((400, 768)).astype(np.float32), nlist=8)
    return {"model": voice, "encoder": encoder, "f0_weights": rmvpe, "index": d / "voice.index"}


def _tone(seconds: float, rate: int, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = 0.01 * np.random.default_rng(0).standard_normal(t.shape)  # WORLD harvest finds no F0 in a pure tone
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(4 * np.pi * f0 * t) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    sf.write(d / "a.wav", _tone(0.6, 44100), 44100)
    sf.write(d / "b.wav", _tone(0.4, 16000, 330.0), 16000)
    (d / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return {"a": d / "a.wav", "b": d / "b.wav", "bad": d / "bad.wav"}


def _weights_args(models: dict[str, Path]) -> list[str]:
    return ["--encoder", str(models["encoder"]), "--f0-weights", str(models["f0_weights"]), "--device", "cpu"]


# ---------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_help_exits_zero(command, capsys):
    argv = [command, "--help"] if command else ["--help"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rvcfast {command}".rstrip())
    assert "example" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    from rvcfast import __version__

    assert capsys.readouterr().out.strip() == f"rvcfast {__version__}"


def test_python_m_rvcfast_help():
    proc = subprocess.run([sys.executable, "-m", "rvcfast", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in SUBCOMMANDS:
        assert command in proc.stdout


def test_the_console_script_prints_warnings_as_one_line_of_its_own():
    """A warning during a command (e.g. bfloat16 on a CPU without it) printed Python's
    ``/path/rvcfast/tuning.py:357: RuntimeWarning: ...`` and the source line, which reads like a
    traceback; the console script prints ``rvcfast: warning: ...``."""
    code = (
        "import sys, warnings, rvcfast.cli as c\n"
        "sys.argv = ['rvcfast', 'backends']\n"
        "real = c.main\n"
        "def main(argv=None):\n"
        "    warnings.warn('bfloat16 is slow here', RuntimeWarning)\n"
        "    return real(argv)\n"
        "c.main = main\n"
        "c.run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rvcfast: warning: bfloat16 is slow here" in proc.stderr
    assert "RuntimeWarning" not in proc.stderr and ".py:" not in proc.stderr


def test_the_console_script_keeps_status_output_and_exit_handlers(tmp_path):
    """``run`` leaves without interpreter teardown; status, piped output and atexit handlers survive."""
    missing = tmp_path / "nothere.pth"
    proc = subprocess.run(
        [sys.executable, "-m", "rvcfast", "convert", str(missing), str(tmp_path / "a.wav"), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and "nothere.pth" in proc.stderr, (proc.returncode, proc.stderr)
    assert subprocess.run([sys.executable, "-m", "rvcfast", "convert", "--no-such-option"], capture_output=True, timeout=120).returncode == 2
    code = (
        "import atexit, sys, rvcfast.cli as cli\n"
        "def command(argv=None):\n"
        "    atexit.register(print, 'handler ran')  # as a library used by a command would\n"
        "    sys.stdout.write('x' * 100000)  # buffered, never flushed by the command\n"
        "    return 3\n"
        "cli.main = command\n"
        "cli.run()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "x" * 100000 + "handler ran\n"


def test_no_command_and_bad_option_are_usage_errors(capsys):
    assert main([]) == 2
    assert main(["convert", "--no-such-option"]) == 2
    assert "usage: rvcfast convert" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- convert


def test_convert_two_inputs(models, clips, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", str(models["model"]), str(clips["a"]), str(clips["b"]), "-o", str(out),
                 "--index", str(models["index"]), "--seed", "1", *_weights_args(models)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name, seconds in (("a", 0.6), ("b", 0.4)):
        info = sf.info(str(out / f"{name}.wav"))
        assert info.samplerate == 40000
        assert abs(info.duration - seconds) < 0.05  # RVC's output is within a couple of 10 ms frames
    assert "2 files (0 failed, 0 skipped)" in captured.out
    assert "real-time factor" in captured.out and "synth" in captured.out
    assert "[2/2]" in captured.err  # plain per-file progress lines (not a terminal)


def test_bad_file_fails_the_run_but_not_the_others(models, clips, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", str(models["model"]), str(clips["bad"]), str(clips["a"]), "-o", str(out), *_weights_args(models)])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 of 2 file(s) failed" in err
    failed_lines = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(failed_lines) == 1 and str(clips["bad"]) in failed_lines[0] and "decode" in failed_lines[0]
    assert (out / "a.wav").is_file() and not (out / "bad.wav").exists()
    assert "Traceback" not in err


def test_flac_output_resampled_and_skip_existing(models, clips, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["convert", str(models["model"]), str(clips["b"]), "-o", str(out), "--format", "flac",
            "--sample-rate", "32000", "--no-noise", "--speaker", "2", *_weights_args(models)]
    assert main(argv) == 0
    info = sf.info(str(out / "b.flac"))
    assert info.format == "FLAC" and info.samplerate == 32000
    before = (out / "b.flac").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--skip-existing"]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "1 skipped" in captured.out
    assert (out / "b.flac").stat().st_mtime_ns == before


def test_folder_input_quiet(models, clips, tmp_path, capsys):
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    sf.write(src / "c.wav", _tone(0.3, 16000), 16000)
    out = tmp_path / "out"
    assert main(["convert", str(models["model"]), str(tmp_path / "in"), "-o", str(out), "--quiet", *_weights_args(models)]) == 2
    assert "--recursive" in capsys.readouterr().err  # nothing at the top level
    assert main(["convert", str(models["model"]), str(tmp_path / "in"), "-o", str(out), "--quiet", "--recursive",
                 *_weights_args(models)]) == 0
    captured = capsys.readouterr()
    assert (out / "c.wav").is_file()
    assert captured.out == "" and captured.err == ""


def test_parameter_out_of_range_is_a_usage_error(models, clips, tmp_path, capsys):
    code = main(["convert", str(models["model"]), str(clips["a"]), "-o", str(tmp_path), "--pitch", "99", *_weights_args(models)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--pitch: pitch must be within -48..48" in err and "usage: rvcfast convert" in err  # the flag named (was: only "pitch")
    assert main(["convert", str(models["model"]), str(clips["a"]), "-o", str(tmp_path), "--index-rate", "2", *_weights_args(models)]) == 2
    assert "--index-rate: index_rate must be within 0..1" in capsys.readouterr().err


def test_missing_weights_one_line_error(models, clips, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RVCFAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = main(["convert", str(models["model"]), str(clips["a"]), "-o", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rvcfast: error:")
    # both base files are missing: one command gets them (was: "rvcfast download hubert", then a failed run for rmvpe.pt)
    assert "hubert_base.pt" in lines[0] and "`rvcfast download` (this and rmvpe.pt, also missing)" in lines[0]


def test_bad_model_file_one_line_error(clips, tmp_path, capsys):
    bogus = tmp_path / "voice.pth"
    bogus.write_bytes(b"definitely not a checkpoint")
    code = main(["convert", str(bogus), str(clips["a"]), "-o", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and str(bogus) in err and "Traceback" not in err


def test_traceback_flag_reraises(clips, tmp_path):
    from rvcfast.errors import ModelLoadError

    bogus = tmp_path / "voice.pth"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        main(["--traceback", "convert", str(bogus), str(clips["a"]), "-o", str(tmp_path / "out"), "--device", "cpu"])


# ---------------------------------------------------------------------------------------------- f0


def test_f0_csv_and_npy(models, clips, tmp_path, capsys):
    n = sf.info(str(clips["b"])).frames  # already 16 kHz
    out = tmp_path / "f0"
    assert main(["f0", str(clips["b"]), "--method", "rmvpe", "--f0-weights", str(models["f0_weights"]),
                 "--device", "cpu", "-o", str(out)]) == 0
    lines = (out / "b.csv").read_text().splitlines()
    assert lines[0] == "time,f0"
    assert len(lines) - 1 == n // 160 + 1
    t, f = lines[2].split(",")
    assert float(t) == pytest.approx(0.01) and float(f) >= 0
    assert main(["f0", str(clips["b"]), "--method", "harvest", "--format", "npy", "-o", str(out)]) == 0
    f0 = np.load(out / "b.npy")
    assert f0.shape == (n // 160 + 1,)
    assert np.median(f0[f0 > 0]) == pytest.approx(330, rel=0.05)  # harvest tracks the 330 Hz tone


def test_f0_resamples_and_reports_bad_files(clips, tmp_path, capsys):
    out = tmp_path / "f0"
    code = main(["f0", str(clips["a"]), str(clips["bad"]), "--method", "dio", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and str(clips["bad"]) in err
    rows = (out / "a.csv").read_text().splitlines()[1:]
    assert len(rows) == int(0.6 * 16000) // 160 + 1


def test_f0_weights_go_to_the_rmvpe_member_of_a_hybrid(models, clips, tmp_path, capsys):
    out = tmp_path / "f0"
    assert main(["f0", str(clips["b"]), "--method", "hybrid:rmvpe+dio", "--f0-weights", str(models["f0_weights"]),
                 "--device", "cpu", "--format", "npy", "-o", str(out)]) == 0
    assert (out / "b.npy").is_file()
    assert main(["f0", str(clips["b"]), "--method", "hybrid:dio+harvest", "--f0-weights", "x.pt", "-o", str(out)]) == 2
    assert "has no rmvpe member" in capsys.readouterr().err


def test_f0_unknown_method(clips, tmp_path, capsys):
    assert main(["f0", str(clips["a"]), "--method", "nope", "-o", str(tmp_path)]) == 2  # a usage error
    err = capsys.readouterr().err
    assert "unknown F0 backend 'nope'" in err and "rmvpe" in err


# ---------------------------------------------------------------------------------------------- info / backends


def test_info_text_and_json(models, capsys):
    assert main(["info", str(models["model"]), "--index", str(models["index"])]) == 0
    out = capsys.readouterr().out
    assert "version" in out and "v2" in out
    assert "40000 Hz" in out
    assert re.search(r"^speakers\s+3$", out, re.M)
    assert "400 vectors" in out and "nlist" in out and "nprobe" in out
    assert "info" in out  # metadata key of RVC's format
    assert main(["info", str(models["model"]), "--index", str(models["index"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["sample_rate"] == 40000 and report["model"]["speakers"] == 3
    assert report["model"]["f0"] is True and report["model"]["feature_dim"] == 768
    assert len(report["model"]["config"]) == 18 and "version" in report["model"]["metadata"]
    assert report["index"]["vectors"] == 400 and report["index"]["dim"] == 768 and report["index"]["nlist"] == 8
    assert report["index"]["matches_model"] is True


def test_info_describes_an_index_given_with_the_index_option_alone(models, capsys):
    # `rvcfast info --index voice.index` used to be a usage error asking for a MODEL
    assert main(["info", "--index", str(models["index"])]) == 0
    out = capsys.readouterr().out
    assert "400 vectors" in out and "nlist" in out and "version" not in out
    assert main(["info", "--index", str(models["index"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"index"} and report["index"]["vectors"] == 400


def test_backends_lists_rmvpe(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("rmvpe "))
    assert "rvcfast (built-in)" in line
    assert main(["backends", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["harvest"]["source"] == "rvcfast (built-in)"


@pytest.mark.parametrize(("backend", "module"), [("pm", "parselmouth"), ("fcpe", "torchfcpe"), ("swift", "swift_f0")])
def test_backends_says_which_extra_a_missing_package_needs(capsys, monkeypatch, backend, module):
    # swift had no note: without swift-f0 it was listed as if it worked
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    assert main(["backends", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[backend]["note"] == f'needs `pip install "rvcfast[{backend}]"`'


# ---------------------------------------------------------------------------------------------- download

PAYLOAD = bytes(range(256)) * 512  # 128 kB


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)


@pytest.fixture()
def server(monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/rmvpe.pt"
    monkeypatch.setenv("RVCFAST_URL_RMVPE", url)
    monkeypatch.setitem(
        weights.KNOWN_WEIGHTS,
        "rmvpe",
        weights.BaseWeights("rmvpe", "rmvpe.pt", url, hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD), "RMVPE pitch model"),
    )
    yield url
    httpd.shutdown()
    httpd.server_close()


def test_download_into_home_and_dest(server, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    assert main(["download", "rmvpe"]) == 0
    captured = capsys.readouterr()
    assert (home / "rmvpe.pt").read_bytes() == PAYLOAD
    assert str(home / "rmvpe.pt") in captured.out
    assert "downloading rmvpe.pt" in captured.err  # plain progress: a start and an end line
    assert main(["download", "rmvpe"]) == 0
    assert "already there" in capsys.readouterr().out
    dest = tmp_path / "dest"
    assert main(["download", "rmvpe", "--dest", str(dest), "--quiet"]) == 0
    assert (dest / "rmvpe.pt").read_bytes() == PAYLOAD


def test_download_checksum_mismatch_is_one_line(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(weights.KNOWN_WEIGHTS, "rmvpe", weights.KNOWN_WEIGHTS["rmvpe"].__class__(
        "rmvpe", "rmvpe.pt", server, "0" * 64, len(PAYLOAD), "RMVPE pitch model"))
    code = main(["download", "rmvpe", "--dest", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "checksum mismatch" in err and "Traceback" not in err
    assert "the download was deleted" in err and "unchanged" not in err
    assert not (tmp_path / "rmvpe.pt").exists()
    # --force over an existing file: a failed download leaves it, and says so (it read "the file
    # was deleted", as if the old file had gone)
    (tmp_path / "rmvpe.pt").write_bytes(b"the old file")
    assert main(["download", "rmvpe", "--dest", str(tmp_path), "--quiet", "--force"]) == 1
    err = capsys.readouterr().err
    assert f"the download was deleted ({tmp_path / 'rmvpe.pt'} is unchanged)" in err
    assert (tmp_path / "rmvpe.pt").read_bytes() == b"the old file"


# ---------------------------------------------------------------------------------------------- bench


def test_bench_small(tmp_path, capsys):
    code = main(["bench", "--small", "--files", "1", "--seconds", "0.5", "--models", str(tmp_path), "--device", "cpu",
                 "--no-warmup"])
    out = capsys.readouterr().out
    assert code == 0
    assert "real-time factor" in out and "1 file (0 failed" in out
    assert (tmp_path / "small" / "hubert_base.pt").is_file() and (tmp_path / "small" / "voice_v2_40k.index").is_file()


# ---------------------------------------------------------------------------------------------- progress


class _Result:
    def __init__(self, source, seconds, error=None, skipped=False, output_path=None):
        self.source, self.input_seconds, self.error, self.skipped, self.output_path = source, seconds, error, skipped, output_path


def test_progress_terminal_and_plain():
    tty = io.StringIO()
    bar = BatchProgress(2, 3.0, stream=tty, tty=True, min_interval=0.0)
    bar.update(_Result("a.wav", 1.0), expected_seconds=1.0)
    bar.update(_Result("b.wav", 0.0, error="b.wav: cannot decode"), expected_seconds=2.0)
    bar.close()
    text = tty.getvalue()
    assert "\r" in text and "2/2 files" in text and "ETA" in text and "FAILED: b.wav: cannot decode" in text
    assert bar.total_seconds == pytest.approx(1.0)  # corrected for the file that produced nothing
    plain = io.StringIO()
    bar = BatchProgress(2, None, stream=plain, tty=False)
    bar.update(_Result("a.wav", 1.0, output_path="out/a.wav"))
    bar.update(_Result("b.wav", 0.0, error="b.wav: cannot decode"))
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and len(lines) == 2
    assert lines[0].startswith("[1/2] a.wav -> out/a.wav") and lines[1] == "[2/2] b.wav: FAILED: cannot decode"


def test_progress_rate_counts_only_converted_audio(monkeypatch: pytest.MonkeyPatch):
    # a failed or skipped file's audio used to count as converted: the rate and ETA overstated the speed
    from rvcfast import progress

    clock = iter([0.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock, 10.0))
    bar = BatchProgress(4, 40.0, stream=io.StringIO(), tty=False)
    bar.update(_Result("a.wav", 10.0, output_path="out/a.wav"), expected_seconds=10.0)
    bar.update(_Result("b.wav", 10.0, error="b.wav: synthesis failed"), expected_seconds=10.0)
    bar.update(_Result("c.wav", 10.0, skipped=True), expected_seconds=10.0)
    assert bar.done_seconds == pytest.approx(30.0)  # the bar: every finished file
    assert bar.rate() == pytest.approx(1.0)  # 10 s of audio converted in 10 s, not 3x real-time
    assert bar.eta() == pytest.approx(10.0)  # 10 s of audio left at 1x
    assert "1.00x real-time" in bar.status()


def test_download_progress():
    tty = io.StringIO()
    with DownloadProgress("rmvpe.pt", stream=tty, tty=True, min_interval=0.0) as bar:
        for done in (0, 500_000, 1_000_000):
            bar(done, 1_000_000)
    assert "\r" in tty.getvalue() and "1.0 MB/1.0 MB" in tty.getvalue()
    plain = io.StringIO()
    with DownloadProgress("rmvpe.pt", stream=plain, tty=False) as bar:
        bar(0, 2000)
        bar(2000, 2000)
    assert plain.getvalue().splitlines()[0] == "downloading rmvpe.pt (2.0 kB)"
    assert plain.getvalue().splitlines()[1].startswith("downloaded rmvpe.pt: 2.0 kB")



def test_a_download_without_a_terminal_says_how_far_it_got_every_interval(monkeypatch):
    # before: a line at the start and one at the end only, a slow 181 MB download silent for minutes in a CI log
    import rvcfast.progress as progress

    clock = iter(float(t) for t in range(0, 1000, 10))  # each call: 10 s later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    plain = io.StringIO()
    with DownloadProgress("rmvpe.pt", stream=plain, tty=False, plain_interval=30.0) as bar:
        for done in range(0, 1_000_001, 100_000):  # 11 calls, 10 s apart
            bar(done, 1_000_000)
    lines = plain.getvalue().splitlines()
    assert lines[0] == "downloading rmvpe.pt (1.0 MB)" and lines[-1].startswith("downloaded rmvpe.pt: 1.0 MB")
    middle = lines[1:-1]
    assert 2 <= len(middle) <= 4 and all(ln.startswith("rmvpe.pt") and "/1.0 MB" in ln and "\r" not in ln for ln in middle), lines


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    import subprocess
    import sys

    # `rvcfast info --system | head -c1`: the pipe closes before the command writes
    proc = subprocess.Popen(
        [sys.executable, "-m", "rvcfast", "info", "--system"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_an_unknown_f0_backend_is_a_usage_error(tmp_path) -> None:
    import subprocess
    import sys

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")  # never read: the name is refused first
    for argv in (
        ["convert", str(tmp_path / "voice.pth"), str(wav), "-o", str(tmp_path / "out"), "--f0", "rmvpee"],
        ["f0", str(wav), "-o", str(tmp_path / "f0"), "--method", "hybrid:harvest+nope"],
    ):
        proc = subprocess.run([sys.executable, "-m", "rvcfast", *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "unknown F0 backend" in proc.stderr and "Traceback" not in proc.stderr

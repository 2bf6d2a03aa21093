"""``rvcfast convert ... --server URL``: the same command, converted by a running ``rvcfast serve``.

The outputs equal a local run's (the same engine, the same options sent as fields), files are
planned, skipped, reported and failed as locally, options that are the server's are refused,
and a busy server is asked again after its ``Retry-After``.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import cli_weights, one_thread_fixture, tiny_models_fixture, write_tone  # noqa: F401

from rvcfast.cli import build_parser, main
from rvcfast.writing import recorded_source, source_id

pytest.importorskip("fastapi")

from serve_helpers import API_KEY, ScriptedHandler, running_server, voice_folder  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-remote")
    # inputs over 0.6 s go to POST /v1/jobs (the command does that on the 413 naming it)
    with running_server([voice_folder(tiny_models, root / "voices")], tiny_models, root / "server.log", "--api-key", API_KEY,
                        "--max-input-seconds", "0.6") as srv:
        yield srv


def _inputs(folder: Path) -> list[Path]:
    clips = [write_tone(folder, "a.wav", 0.4, 180.0), write_tone(folder, "b.wav", 0.9, 240.0)]
    (folder / "c.wav").write_bytes(b"RIFF0000 this is no audio")
    return clips


def test_the_same_command_through_a_server_writes_what_a_local_run_writes(server, tiny_models, tmp_path, monkeypatch, capsys) -> None:
    """b.wav (0.9 s) is longer than the server converts in one request (0.6 s): it goes through a job."""
    a, b = _inputs(tmp_path / "in")
    options = ["--no-noise", "--pitch", "3", "--protect", "0.2", "--format", "flac", "--sample-rate", "22050", "-q"]
    local = tmp_path / "local"
    assert main(["convert", str(tiny_models.voice), str(a), str(b), "-o", str(local), "--index", str(tiny_models.index),
                 *cli_weights(tiny_models), *options]) == 0
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    out = tmp_path / "out"
    argv = ["convert", "voices/alice.pth", str(tmp_path / "in"), "-o", str(out), "--server", server.url,
            "--report", str(tmp_path / "r.jsonl"), *options]  # alice: the tiny voice and its index
    assert main(argv) == 1  # c.wav failed, the others converted
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in' / 'c.wav'}: cannot decode audio" in err and "(the server answered 422)" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.flac", "b.flac"]
    for name, clip in (("a", a), ("b", b)):
        got, rate = sf.read(out / f"{name}.flac", dtype="float32")
        want, local_rate = sf.read(local / f"{name}.flac", dtype="float32")
        assert rate == local_rate == 22050 and got.shape == want.shape and np.array_equal(got, want)
        # the input recorded as a local run records it (a through /v1/convert, b through a job): the same bytes
        assert recorded_source(out / f"{name}.flac") == source_id(clip) == recorded_source(local / f"{name}.flac")
        assert (out / f"{name}.flac").read_bytes() == (local / f"{name}.flac").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(Path(r["source"]).name, r["ok"]) for r in rows] == [("a.wav", True), ("b.wav", True), ("c.wav", False)]
    assert abs(rows[1]["duration"] - 0.9) < 0.05 and rows[1]["input_seconds"] == pytest.approx(0.9)
    assert {"synth", "request"} <= set(rows[0]["timings"])
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*argv, "--skip-existing"]) == 1  # resumed: a and b skipped, c fails again
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [True, True, False]


def _tree(folder: Path) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_several_voices_through_a_server_write_what_a_local_several_voice_run_writes(
    server, tiny_models, tmp_path, monkeypatch
) -> None:
    """--voice and --voice-pitch with --server: planned, named, reported as locally; each voice by its id."""
    a, b = _inputs(tmp_path / "in")  # b.wav (0.9 s) through a job; c.wav no audio
    voices = voice_folder(tiny_models, tmp_path / "voices")  # the server's voices: alice with its index, carol without
    options = ["--seed", "5", "--pitch", "2", "--voice-pitch", "carol=-3", "-q"]
    local = tmp_path / "local"  # converted with one torch thread (one_thread), as the server converts (--threads 1)
    assert main(["convert", str(voices / "alice.pth"), str(a), str(b), "-o", str(local), "--index", str(voices / "alice.index"),
                 "--voice", str(voices / "carol.pth"), *cli_weights(tiny_models), *options]) == 0
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    out, report = tmp_path / "out", tmp_path / "r.jsonl"
    # one request at a time: the server batches concurrent requests' model calls (alice's a.wav with carol's,
    # which share the encoder), and other batch shapes round floats otherwise
    argv = ["convert", "alice", str(tmp_path / "in"), "-o", str(out), "--server", server.url, "--voice", "voices/carol.pth",
            "--report", str(report), "--workers", "1", *options]
    assert main(argv) == 1  # c.wav failed for both voices
    assert sorted(_tree(out)) == ["alice/a.wav", "alice/b.wav", "carol/a.wav", "carol/b.wav"]
    assert _tree(out) == _tree(local)  # bit for bit, each voice's key and record included
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(Path(r["source"]).name, r["voice"], r["ok"]) for r in rows] == [
        (n, v, n != "c.wav") for n in ("a.wav", "b.wav", "c.wav") for v in ("alice", "carol")
    ]
    assert [Path(r["output_path"]).relative_to(out).as_posix() for r in rows if r["ok"]] == [
        "alice/a.wav", "carol/a.wav", "alice/b.wav", "carol/b.wav"
    ]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    assert main([*argv, "--skip-existing"]) == 1  # resumed: every (input, voice) done is skipped, c.wav fails again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == stamps
    assert [json.loads(line)["skipped"] for line in report.read_text().splitlines()] == [True] * 4 + [False] * 2
    # one voice named by the server's id and its key, as a local run names it (was "voice" and "0")
    one = tmp_path / "one"
    assert main(["convert", "alice", str(a), "-o", str(one), "--server", server.url, "--pitch", "2", "-q",
                 "--name-template", "{voice}{pitch}/{stem}"]) == 0
    assert sorted(_tree(one)) == ["alice+2/a.wav"]


def test_several_voices_are_checked_before_any_file_is_sent(server, tmp_path, monkeypatch, capsys) -> None:
    clip = write_tone(tmp_path / "in", "a.wav")
    base = ["convert", "alice", str(clip), "-o", str(tmp_path / "out"), "-q", "--server", server.url]
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    assert main([*base, "--voice", "carol", "--voice", "nobody"]) == 1
    assert f"the server at {server.url} has no voice 'nobody' (its voices: " in capsys.readouterr().err
    assert main([*base, "--voice", "carol,carol.index"]) == 2
    assert "--voice 'carol,carol.index': with --server the server decides each voice's index" in capsys.readouterr().err
    assert main([*base, "--voice", "carol", "--voice-pitch", "bob=2"]) == 2
    assert "no voice is named 'bob'" in capsys.readouterr().err
    assert main([*base, "--voice", "carol", "--name-template", "{stem}"]) == 2
    assert "{voice}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_wrong_voice_key_or_address_is_one_error(server, tmp_path, monkeypatch, capsys) -> None:
    clip = write_tone(tmp_path / "in", "a.wav")
    base = ["convert", "nobody", str(clip), "-o", str(tmp_path / "out"), "-q", "--server"]
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    assert main([*base, server.url]) == 1
    assert f"the server at {server.url} has no voice 'nobody' (its voices: " in capsys.readouterr().err
    monkeypatch.delenv("RVCFAST_API_KEY")
    assert main([*base, server.url]) == 1
    assert "answered 401" in capsys.readouterr().err
    with socket_closed() as url:
        assert main([*base, url]) == 1
    assert f"cannot reach the server at {url}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_stopped_command_cancels_its_job_on_the_server_and_writes_nothing(server, tmp_path, monkeypatch) -> None:
    """Ctrl-C while b.wav (0.9 s) goes through POST /v1/jobs: the job is deleted on the server before the
    command ends (the thread following it is a daemon, ended with the process), and b.wav is not written."""
    import urllib.error
    import urllib.request

    from rvcfast.cli import remote
    from rvcfast.cli.batch_options import BatchReport

    a, b = write_tone(tmp_path / "in", "a.wav", 0.4), write_tone(tmp_path / "in", "b.wav", 0.9)
    job_seen, deleted = threading.Event(), threading.Event()
    jobs: list[str] = []
    real_request, real_add = remote.Server._request, BatchReport.add

    def request(self, path, *args, **kwargs):
        if kwargs.get("method") == "DELETE":
            try:
                return real_request(self, path, *args, **kwargs)
            finally:
                deleted.set()
        if path.startswith("/v1/jobs/") and not path.endswith("/audio") and not job_seen.is_set():
            jobs.append(path.rsplit("/", 1)[1])  # the job exists: its state is asked for the first time
            job_seen.set()
            deleted.wait(30)  # held until the command cancels it: the job cannot finish and be written first
        return real_request(self, path, *args, **kwargs)

    def add(self, res):  # a.wav's result: the user presses Ctrl-C once b.wav's job is under way
        real_add(self, res)
        assert job_seen.wait(60), "b.wav never became a job"
        raise KeyboardInterrupt

    monkeypatch.setattr(remote.Server, "_request", request)
    monkeypatch.setattr(BatchReport, "add", add)
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    out = tmp_path / "out"
    assert main(["convert", "alice", str(a), str(b), "-o", str(out), "--server", server.url, "-q"]) == 130
    assert deleted.is_set() and len(jobs) == 1  # DELETE /v1/jobs/{id} answered before the command ended
    req = urllib.request.Request(f"{server.url}/v1/jobs/{jobs[0]}", headers={"X-API-Key": API_KEY})
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(req, timeout=60)
    assert gone.value.code == 404  # cancelled and forgotten by the server
    assert sorted(p.name for p in out.iterdir()) == ["a.wav"]  # no b.wav, no temporary file


class socket_closed:
    """The address of a port nothing listens on."""

    def __enter__(self) -> str:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("option", [["--index", "x.index"], ["--device", "cuda"], ["--dtype", "bfloat16"], ["--ray"],
                                    ["--f0-option", "threshold=0.1"], ["--compute-workers", "2"]])
def test_options_the_server_decides_are_usage_errors(option, tmp_path, capsys) -> None:
    clip = write_tone(tmp_path, "a.wav")
    assert main(["convert", "alice", str(clip), "-o", str(tmp_path / "out"), "--server", "http://127.0.0.1:9", *option]) == 2
    err = capsys.readouterr().err
    assert option[0] in err and "with --server the server's own settings apply" in err


def test_an_output_the_voice_cannot_be_written_as_is_a_usage_error_before_any_file_is_sent(server, tmp_path, monkeypatch, capsys) -> None:
    """Opus at the voice's 40 kHz failed every file with the same 422; a local run refuses it at once (status 2)."""
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    a, _ = _inputs(tmp_path / "in")
    argv = ["convert", "alice", str(a), "-o", str(tmp_path / "out"), "--server", server.url, "--format", "ogg"]
    assert main([*argv, "--subtype", "OPUS"]) == 2
    err = capsys.readouterr().err
    assert "subtype OPUS needs a sample_rate of 8000, 12000, 16000, 24000, 48000 Hz, got 40000 Hz" in err
    assert "(voice 'alice' is 40000 Hz on the server)" in err and not (tmp_path / "out").exists()
    assert main([*argv, "--subtype", "OPUS", "--sample-rate", "48000", "-q"]) == 0  # a rate Opus takes: converted
    assert sf.info(str(tmp_path / "out" / "a.ogg")).samplerate == 48000


@pytest.mark.parametrize("scale", [[], ["--ray", "local"]])
def test_an_api_key_without_server_is_a_usage_error(scale, tmp_path, capsys) -> None:
    """A local (or Ray) run took --api-key and ignored it."""
    clip = write_tone(tmp_path, "a.wav")
    assert main(["convert", "alice.pth", str(clip), "-o", str(tmp_path / "out"), "--api-key", "k", *scale]) == 2
    assert "--api-key is for --server runs" in capsys.readouterr().err


def test_every_option_sent_reads_back_as_given() -> None:
    """The fields sent for the conversion options are read by the server's own parser as the same values."""
    from rvcfast.cli.remote import request_fields
    from rvcfast.serve.forms import parse_fields

    argv = ["convert", "alice", "a.wav", "-o", "out", "--server", "http://h:1", "--pitch", "-2.5", "--index-rate", "0.1",
            "--protect", "0.25", "--rms-mix-rate", "0.3", "--filter-radius", "5", "--speaker", "1", "--no-noise",
            "--seed", "7", "--sample-rate", "44100", "--keep-length", "--autotune", "0.4", "--proposed-pitch", "180",
            "--formant", "1.1", "0.9", "--effects", '{"reverb": {"room_size": 0.3}}', "--loudness", "match",
            "--channels", "each", "--strict", "--fill-unvoiced", "--v1-output-layer", "12", "--f0", "fcpe",
            "--format", "mp3", "--bitrate", "128"]
    args = build_parser().parse_args(argv)
    from rvcfast.cli._common import params_from_args
    from rvcfast.params import ConversionParams

    parsed = parse_fields([("voice", "alice"), *request_fields(args)])
    expected = ConversionParams.build(None, **params_from_args(args))
    assert ConversionParams.build(None, **parsed.overrides) == expected
    assert (parsed.f0, parsed.format, parsed.bitrate) == ("fcpe", "mp3", 128)
    assert len(parsed.overrides) == 19  # the 19 options given differ from their defaults: each was sent
    from rvcfast.cli.remote import file_fields

    sent = parse_fields(file_fields([("voice", "alice"), *request_fields(args)], Path("a.wav")))
    assert sent.source_id == source_id("a.wav") and sent.overrides == parsed.overrides  # the record: a hash, no path


def test_a_bad_source_id_is_refused_naming_the_field(server, tmp_path) -> None:
    """The server reads source_id as the other fields: 32 lowercase hex digits, else a 422 naming it."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from rvcfast.serve.forms import FieldError, parse_fields

    for value in ("A" * 32, "abc", "0" * 33, "g" * 32, "../a.wav"):
        with pytest.raises(FieldError, match="source_id must be 32 lowercase hex digits") as caught:
            parse_fields([("voice", "alice"), ("source_id", value)])
        assert caught.value.field == "source_id"
    clip = write_tone(tmp_path, "a.wav", 0.3)
    for route in ("/v1/convert", "/v1/jobs"):
        query = urllib.parse.urlencode({"voice": "alice", "source_id": "A" * 32})
        req = urllib.request.Request(f"{server.url}{route}?{query}", data=clip.read_bytes(),
                                     headers={"Content-Type": "audio/wav", "X-API-Key": API_KEY})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(req, timeout=60)
        body = json.loads(answer.value.read())
        assert answer.value.code == 422 and body["parameter"] == "source_id" and "source_id" in body["error"], route


def test_a_streamed_answer_cannot_carry_a_source_id() -> None:
    from rvcfast.serve.forms import FieldError, parse_fields

    with pytest.raises(FieldError, match="streamed answer carries no record") as caught:
        parse_fields([("voice", "alice"), ("stream", "true"), ("source_id", "0" * 32)])
    assert caught.value.field == "source_id"
    assert parse_fields([("voice", "alice"), ("source_id", "")]).source_id is None  # empty: not given, as f0 and bitrate


class _Busy(ScriptedHandler):
    """A server busy for its first answer (503, Retry-After 0), then answering a WAV."""

    answers: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._send(200, json.dumps({"voices": [{"id": "alice"}]}).encode(), "application/json")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        if not self.answers:
            self.answers.append(503)
            self._send(503, b'{"error": "the server is busy"}', "application/json", {"Retry-After": "0"})
            return
        self.answers.append(200)
        buf = io.BytesIO()
        sf.write(buf, np.zeros(4000, np.float32), 40000, format="WAV")
        self._send(200, buf.getvalue(), "audio/wav", {"X-Rvcfast-Timings": '{"synth": 0.5, "total": 0.6}',
                                                      "X-Rvcfast-Warnings": '["a.wav: clipped"]'})



def test_a_busy_server_is_asked_again_after_its_retry_after(tmp_path) -> None:
    _Busy.answers = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        clip = write_tone(tmp_path / "in", "a.wav")
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        report = tmp_path / "r.jsonl"
        assert main(["convert", "alice", str(clip), "-o", str(tmp_path / "out"), "--server", url, "--report", str(report)]) == 0
    finally:
        httpd.shutdown()
    assert _Busy.answers == [503, 200]
    assert sf.info(str(tmp_path / "out" / "a.wav")).frames == 4000
    [row] = [json.loads(line) for line in report.read_text().splitlines()]
    assert row["ok"] and row["warnings"] == [f"{clip}: clipped"] and row["timings"]["synth"] == 0.5 and "total" not in row["timings"]


class _Cut(_Busy):
    """A server whose answer to a.wav stops half way (it died), and answers b.wav whole."""

    def do_POST(self) -> None:  # noqa: N802
        if "filename=a.wav" not in self.path:
            super().do_POST()  # (answers holds a 503 already: the WAV)
            return
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"RIFF" + bytes(996))
        self.close_connection = True


def test_an_answer_cut_short_fails_its_file_and_writes_nothing(tmp_path) -> None:
    """An answer that ended before its length was an http.client error out of the worker thread:
    the whole command ended with a traceback. Now that file fails, nothing of it is written, the others go on."""
    _Cut.answers = [503]  # no busy answer first
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Cut)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        a = write_tone(tmp_path / "in", "a.wav")
        write_tone(tmp_path / "in", "b.wav")
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        report = tmp_path / "r.jsonl"
        assert main(["convert", "alice", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--server", url, "--report", str(report), "-q"]) == 1
    finally:
        httpd.shutdown()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.wav"]  # no a.wav, no temporary file
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["ok"] for r in rows] == [False, True]
    assert rows[0]["error"].startswith(f"{a}: ") and "cut short" in rows[0]["error"]


class _Older(_Busy):
    """A server from before the source_id field: it refuses the field as an unknown parameter."""

    def do_POST(self) -> None:  # noqa: N802
        if "source_id=" in self.path:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.answers.append(422)
            self._send(422, json.dumps({"error": "unknown conversion parameter 'source_id'; valid parameters: pitch"}).encode(),
                       "application/json")
            return
        super().do_POST()


def test_an_older_server_without_source_id_converts_every_file_and_says_once_they_record_no_input(tmp_path, capsys) -> None:
    """A server older than the source_id field failed every file with a 422: each file is now sent
    again without it, the later files without it at once, and the command warns once."""
    _Older.answers = [503]  # no busy answer first
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Older)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for name in ("a.wav", "b.wav", "c.wav"):
            write_tone(tmp_path / "in", name)
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert main(["convert", "alice", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--server", url,
                     "--workers", "1", "-q"]) == 0
    finally:
        httpd.shutdown()
    assert _Older.answers == [503, 422, 200, 200, 200]  # refused once, then never sent again
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav", "b.wav", "c.wav"]
    assert all(recorded_source(p) is None for p in (tmp_path / "out").iterdir())
    assert capsys.readouterr().err.count("older rvcfast server") == 1


def test_request_fields_leave_defaults_out() -> None:
    from rvcfast.cli.remote import request_fields

    args = build_parser().parse_args(["convert", "alice", "a.wav", "-o", "out", "--server", "http://h:1"])
    assert isinstance(args, argparse.Namespace) and request_fields(args) == [("format", "wav")]


def test_a_failed_file_with_an_unusual_name_is_named_once_as_given(server, tmp_path, monkeypatch, capsys) -> None:
    """The server knows an upload by a harmless form of its name (`é #1?.wav` is `_ _1_.wav` there):
    its message was shown as `in/é #1?.wav: _ _1_.wav: cannot decode audio...`."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["é #1?.wav", "日本 語&x=1.wav", "-" + "y" * 150 + ".wav"]  # unicode, query characters, a long name
    for name in names:
        (folder / name).write_bytes(b"RIFF0000 this is no audio")
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    assert main(["convert", "alice", str(folder), "-o", str(tmp_path / "out"), "--server", server.url, "-q"]) == 1
    err = capsys.readouterr().err
    for name in names:
        assert f"  {folder / name}: cannot decode audio: this is a text file, not audio (the server answered 422)" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_m4a_output_is_measured_for_the_summary_and_report(server, tmp_path, monkeypatch) -> None:
    """An m4a answer (which libsndfile cannot open) was reported as 0 s, its input as 0 s too."""
    pytest.importorskip("av")
    clip = write_tone(tmp_path / "in", "a.wav", 0.4)
    monkeypatch.setenv("RVCFAST_API_KEY", API_KEY)
    report = tmp_path / "r.jsonl"
    assert main(["convert", "alice", str(clip), "-o", str(tmp_path / "out"), "--server", server.url, "-q",
                 "--format", "m4a", "--report", str(report)]) == 0
    [row] = [json.loads(line) for line in report.read_text().splitlines()]
    assert row["input_seconds"] == pytest.approx(0.4) and abs(row["duration"] - 0.4) < 0.1


@pytest.mark.parametrize(("url", "said"), [
    ("http://[::1:8000", "not a valid address"), ("http://127.0.0.1:abc", "not a valid address"),
    ("127.0.0.1:8000", "did you mean http://127.0.0.1:8000?"), ("http://127.0.0.1:8000/?key=1", "query or fragment"),
    ("http://127.0.0.1:8000/#x", "query or fragment"),
])
def test_a_malformed_server_address_is_a_usage_error(url, said, tmp_path, capsys) -> None:
    """`http://[::1:8000` ended with a traceback; a query was sent with the API's path after it (a 404)."""
    clip = write_tone(tmp_path, "a.wav")
    assert main(["convert", "alice", str(clip), "-o", str(tmp_path / "out"), "--server", url]) == 2
    err = capsys.readouterr().err
    assert f"--server {url}: " in err and said in err and "Traceback" not in err


class _Scripted(_Busy):
    """A server whose answers follow ``script``: one entry per POST (``ok``, ``401``, ``json``, ``rate``,
    ``job``: a job whose state is asked for, ``lost``: a job forgotten at once, ``busy``: a job whose state is
    503 the first time, ``die``: the server stops);
    the paths it was asked, in ``paths``."""

    script: list[str] = []
    paths: list[str] = []
    httpd: http.server.ThreadingHTTPServer

    def do_GET(self) -> None:  # noqa: N802
        self.paths.append(self.path)
        if "/v1/jobs/" in self.path:
            job = self.path.split("/v1/jobs/")[1].split("/")[0]
            if job == "busy" and self.paths.count(self.path) == 1:  # a proxy's 503 while the server restarts
                self._send(503, b'{"error": "unavailable"}', "application/json", {"Retry-After": "0"})
            elif job == "lost":
                self._send(404, b'{"error": "no job \'lost\': unknown, deleted, or expired and removed"}', "application/json")
            elif job == "restart":  # the server restarts: two polls find no answer, then it has forgotten the job
                if self.paths.count(self.path) <= 2:
                    self.close_connection = True
                    return
                self._send(404, b'{"error": "no job \'restart\': unknown, deleted, or expired and removed"}', "application/json")
            elif self.path.endswith("/audio"):
                self._wav(40000)
            else:
                self._send(200, json.dumps({"id": job, "state": "done"}).encode(), "application/json")
            return
        super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        self.paths.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        what = self.script.pop(0) if self.script else "ok"
        if what == "die":
            self.close_connection = True
            threading.Thread(target=self.httpd.shutdown).start()
            self.httpd.socket.close()  # the later requests are refused
            return
        if what == "401":
            self._send(401, b'{"error": "missing or wrong API key"}', "application/json")
        elif what == "json":
            self._send(200, b'{"ok": true}', "application/json")
        elif what == "short":  # audio/wav, whole as sent, but its header promises more than it holds
            buf = io.BytesIO()
            sf.write(buf, np.zeros(4000, np.float32), 40000, format="WAV")
            self._send(200, buf.getvalue()[:-2000], "audio/wav")
        elif what.startswith("m4a"):  # good; cut (its moov box left out); junk (not an MP4 file)
            data = _M4A[0] if what == "m4a" else _M4A[0].replace(b"moov", b"free") if what == "m4a-cut" else b"\0\0\0\x08junk" * 9
            self._send(200, data, "audio/mp4")
        elif what in ("job", "lost", "busy", "restart"):
            if self.path.startswith("/v1/convert"):
                self.script.insert(0, what)
                self._send(413, b'{"error": "a.wav: longer than 0.6 s: send it to POST /v1/jobs"}', "application/json")
            else:
                self._send(202, json.dumps({"id": what, "state": "queued"}).encode(), "application/json")
        else:
            self._wav(16000 if what == "rate" else 40000)

    def _wav(self, rate: int) -> None:
        buf = io.BytesIO()
        sf.write(buf, np.zeros(4000, np.float32), rate, format="WAV")
        self._send(200, buf.getvalue(), "audio/wav")


_M4A: list[bytes] = []  # an m4a answer, made by the test that needs it


def _scripted(tmp_path: Path, script: list[str], *options: str, files: int = 1) -> tuple[int, str]:
    """The command run on ``files`` inputs against a :class:`_Scripted` server; its status and report rows."""
    _Scripted.script, _Scripted.paths = list(script), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    _Scripted.httpd = httpd
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        clips = [write_tone(tmp_path / "in", f"f{k}.wav") for k in range(files)]
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        status = main(["convert", "alice", *map(str, clips), "-o", str(tmp_path / "out"), "--server", url, "--workers", "1",
                       "-q", *options])
    finally:
        httpd.shutdown()
        httpd.server_close()
    return status, url


def test_a_key_refused_mid_run_ends_the_command_at_once(tmp_path, capsys) -> None:
    """Every later file was uploaded and refused with the same 401, one failure line each."""
    report = tmp_path / "r.jsonl"
    status, _ = _scripted(tmp_path, ["ok", "401", "401", "401", "401"], "--report", str(report), files=5)
    assert status == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in' / 'f1.wav'}: missing or wrong API key (the server answered 401); nothing more was sent" in err
    assert "3 file(s) after it not converted (the server refused the API key)" in err
    assert len([p for p in _Scripted.paths if p.startswith("/v1/convert")]) == 2  # f2.wav... never sent
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0.wav"]
    rows = [json.loads(line) for line in report.read_text().splitlines()]  # the report is written, every file in it
    assert [r["ok"] for r in rows] == [True, False, False, False, False]
    assert rows[4]["error"] == f"not converted: the batch stopped at {tmp_path / 'in' / 'f1.wav'} (the server refused the API key)"


def test_a_server_that_stops_mid_run_ends_the_command_with_one_line(tmp_path, capsys) -> None:
    """With --on-error continue (the default) the batch ended without its summary and report."""
    report = tmp_path / "r.jsonl"
    status, url = _scripted(tmp_path, ["ok", "die"], "--report", str(report), files=4)
    assert status == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in' / 'f1.wav'}: cannot reach the server at {url}" in err and "nothing more was sent" in err
    assert err.count("cannot reach") == 1 and "2 file(s) after it not converted (the server could not be reached)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0.wav"]
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["ok"] for r in rows] == [True, False, False, False] and "cannot reach the server" in rows[1]["error"]
    assert rows[3]["error"] == f"not converted: the batch stopped at {tmp_path / 'in' / 'f1.wav'} (the server could not be reached)"


def test_an_answer_that_is_not_the_audio_asked_for_is_not_written(tmp_path, capsys) -> None:
    """A 200 answer that was not audio (a proxy's page) was written as the output; one at another rate than
    --sample-rate asked for too."""
    assert _scripted(tmp_path, ["json", "rate", "short", "ok"], "--sample-rate", "40000", files=4)[0] == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in' / 'f0.wav'}: the server's answer is application/json, not audio, where wav audio was asked for" in err
    assert f"{tmp_path / 'in' / 'f1.wav'}: the server's answer is at 16000 Hz, where --sample-rate asked for 40000 Hz" in err
    assert f"{tmp_path / 'in' / 'f2.wav'}: the server's answer does not read as wav audio to its end" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f3.wav"]  # no f0, f1, f2.wav, no temporary file


@pytest.mark.parametrize("with_av", [True, False])
def test_an_m4a_answer_that_is_not_a_whole_mp4_file_is_not_written(tmp_path, capsys, monkeypatch, with_av) -> None:
    """An m4a answer was written as it came: libsndfile cannot read it, and PyAV may be missing on the client."""
    pytest.importorskip("av")
    from rvcfast.cli import remote
    from rvcfast.writing import m4a_rate, write_audio_atomic

    sample = tmp_path / "sample.m4a"
    write_audio_atomic(sample, np.zeros(8000, np.float32), m4a_rate(40000), format="m4a")
    _M4A[:] = [sample.read_bytes()]
    if not with_av:  # a client without PyAV checks the file's boxes only
        monkeypatch.setattr(remote, "_have_av", lambda: False)
        monkeypatch.setattr(remote, "_length", lambda path: (0.0, 0))
    assert _scripted(tmp_path, ["m4a-cut", "m4a-junk", "m4a"], "--format", "m4a", files=3)[0] == 1
    err = capsys.readouterr().err
    for k in (0, 1):
        assert f"{tmp_path / 'in' / f'f{k}.wav'}: the server's answer does not read as m4a audio to its end" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f2.m4a"]
    assert (tmp_path / "out" / "f2.m4a").read_bytes() == _M4A[0]


def test_a_job_the_server_forgot_is_sent_again_once(tmp_path, capsys) -> None:
    """A server restarted while a job ran answers 404 for it: the file is sent again (a new job)."""
    assert _scripted(tmp_path, ["lost", "job"])[0] == 0
    jobs = [p.split("?")[0] for p in _Scripted.paths if p.startswith("/v1/jobs")]
    assert jobs == ["/v1/jobs", "/v1/jobs/lost", "/v1/jobs", "/v1/jobs/job", "/v1/jobs/job/audio"]
    assert sf.info(str(tmp_path / "out" / "f0.wav")).frames == 4000
    assert _scripted(tmp_path / "2", ["lost", "lost"])[0] == 1  # forgotten twice: that file fails
    assert "the server lost the job converting it twice" in capsys.readouterr().err
    # a 503 while it was followed (a proxy's, a server restarting) sent the whole file again as another job
    assert _scripted(tmp_path / "3", ["busy"])[0] == 0
    assert [p.split("?")[0] for p in _Scripted.paths if p.startswith("/v1/jobs")] == [
        "/v1/jobs", "/v1/jobs/busy", "/v1/jobs/busy", "/v1/jobs/busy/audio", "/v1/jobs/busy/audio"
    ]


def test_a_server_restarting_while_a_job_is_followed_is_waited_for_and_the_file_sent_again(tmp_path, monkeypatch) -> None:
    """A job's status poll that reached no server (restarting) ended the whole command at once."""
    from rvcfast.cli import remote

    monkeypatch.setattr(remote, "RESTART_WAIT", 30.0)
    assert _scripted(tmp_path, ["restart", "job"])[0] == 0
    jobs = [p.split("?")[0] for p in _Scripted.paths if p.startswith("/v1/jobs")]
    assert jobs == ["/v1/jobs", *["/v1/jobs/restart"] * 3, "/v1/jobs", "/v1/jobs/job", "/v1/jobs/job/audio"]
    assert sf.info(str(tmp_path / "out" / "f0.wav")).frames == 4000
    monkeypatch.setattr(remote, "RESTART_WAIT", 0.0)  # a server that does not come back in time: the batch stops
    assert _scripted(tmp_path / "2", ["restart"])[0] == 1


def test_https_to_a_plain_server_says_so(tmp_path, capsys) -> None:
    _Scripted.script = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        clip = write_tone(tmp_path, "a.wav")
        url = f"https://127.0.0.1:{httpd.server_address[1]}"
        assert main(["convert", "alice", str(clip), "-o", str(tmp_path / "out"), "--server", url, "-q"]) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "is it a plain http:// server?" in capsys.readouterr().err


def test_an_address_that_never_answers_is_not_waited_on_for_an_hour(tmp_path, monkeypatch, capsys) -> None:
    """GET /v1/voices waited as long as a conversion may take (an hour) on a port that takes the
    connection and never answers; the first question now has a timeout of its own."""
    import socket

    from rvcfast.cli import remote

    monkeypatch.setattr(remote, "HELLO_TIMEOUT", 0.5, raising=False)
    clip = write_tone(tmp_path, "a.wav")
    status: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connections queue in its backlog, unanswered
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        run = threading.Thread(target=lambda: status.append(main(["convert", "alice", str(clip), "-o", str(tmp_path / "out"),
                                                                  "--server", url, "-q"])), daemon=True)
        run.start()
        run.join(30)
    assert status == [1] and f"cannot reach the server at {url}: timed out" in capsys.readouterr().err

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

from serve_helpers import API_KEY, running_server, voice_folder  # noqa: E402


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


class _Busy(http.server.BaseHTTPRequestHandler):
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

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


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

"""Operating ``rvcfast serve`` behind a load balancer, with Prometheus and a log collector.

What the on-call engineer saw before, each pinned here by a test that failed on that code:

* the server's own log records (``rvcfast.serve``) had no handler under ``rvcfast serve``:
  "voice ... loaded" and "models loaded; ready" were never shown, errors came without a level
  (Python's last-resort handler) and ``--log-level`` did not apply to them;
* requests had no id: no ``X-Request-ID`` on answers (sync, job, live handshake), none in error
  bodies, so a client's report of a failure could not be found in the log;
* the request log (uvicorn's) said neither how long a request took nor why it failed, and
  logged a stream when its headers left, not when it ended; a 500 from a failed model call left
  nothing in the log (the docs promise its traceback); a failed job, and jobs cancelled by
  ``SIGTERM``, were not logged at all; there was no JSON log format;
* ``/metrics``: the series of ``rvcfast_conversion_failures_total`` (and the unlabelled counters)
  appeared only at their first event, so ``increase(...)`` never saw the first failure after a
  restart; a voice whose file cannot be loaded (a 500) was counted in no failure stage, and no
  gauge said that a voice had failed to load or how many live streams were open.

Servers bind 127.0.0.1; every load is bounded in requests; every server started here is stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401
from serve_helpers import served, voice_folder, wav_bytes

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from rvcfast.serve import create_app  # noqa: E402

DEADLINE = 120.0  # the most any wait may take on a loaded machine before the test gives up
RATE = 16000
CLIP = wav_bytes(tone(0.5, RATE), RATE)
NOT_AUDIO = b"this is a text file, not audio\n" * 20
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"gave up waiting: {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def voices(tiny_models, tmp_path_factory) -> Path:
    """alice, bob, carol and zoe (a file that is not a model)."""
    return voice_folder(tiny_models, tmp_path_factory.mktemp("ops") / "voices")


@pytest.fixture(scope="module")
def live(tiny_models, voices, tmp_path_factory) -> Iterator[tuple[str, Any]]:
    app = create_app(
        voices=[voices], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads=1,
        jobs_dir=tmp_path_factory.mktemp("ops_spool"), max_loaded_voices=4,
    )
    with served(app) as url:
        yield url, app.state.rvcfast


def convert(url: str, body: bytes = CLIP, name: str = "take.wav", headers: dict[str, str] | None = None, **fields: str) -> Any:
    data = {"voice": "bob", "noise": "false", **fields}
    return httpx.post(f"{url}/v1/convert", files={"file": (name, body, "audio/wav")}, data=data, headers=headers, timeout=DEADLINE)


# ---------------------------------------------------------------------- the Prometheus text format


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def _labels(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    inner, out, pos = text[1:-1], [], 0
    while pos < len(inner):
        m = _LABEL.match(inner, pos)
        assert m, f"bad labels {text!r}"
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(out)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a Prometheus text exposition, checked strictly: HELP and TYPE before each
    family's samples, counters named ``*_total``, no series twice, histograms with ascending
    cumulative buckets, a ``+Inf`` bucket equal to ``_count``, and a ``_sum``."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helped, f"HELP of {name} twice"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name not in types and name in helped, f"TYPE of {name} twice or without HELP"
            assert kind in ("counter", "gauge", "histogram"), line
            assert kind != "counter" or name.endswith("_total"), f"counter {name} does not end in _total"
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), _labels(m.group(2))
        family = next((f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name)) if f in types), None)
        assert family is not None, f"{name} has no TYPE before it"
        assert (name, labels) not in samples, f"{name}{labels} twice"
        samples[(name, labels)] = float(m.group(3))
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series = {tuple(lb for lb in labels if lb[0] != "le") for (n, labels) in samples if n == family + "_bucket"}
        for base in series:
            buckets = sorted(
                (float(dict(labels)["le"]), v) for (n, labels), v in samples.items()
                if n == family + "_bucket" and tuple(lb for lb in labels if lb[0] != "le") == base
            )
            assert buckets[-1][0] == float("inf"), f"{family}{base} has no +Inf bucket"
            assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{family}{base} buckets are not cumulative"
            assert buckets[-1][1] == samples[(family + "_count", base)] and (family + "_sum", base) in samples
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(url: str) -> dict[Any, float]:
    r = httpx.get(f"{url}/metrics", timeout=DEADLINE)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(r.text)


def test_metrics_match_a_bounded_sequence_of_requests(live) -> None:
    """20 conversions, 3 of them failing (a bad input, a voice whose file is broken, a bad field):
    /metrics counts exactly those, in a valid exposition, with every failure stage there from the start."""
    url, _state = live
    before = scrape(url)
    for stage in ("decode", "load", "convert", "encode", "stream", "job", "live"):  # at 0 before any failure
        assert ("rvcfast_conversion_failures_total", (("stage", stage),)) in before, stage
    assert ("rvcfast_audio_seconds_total", ()) in before
    assert value(before, "rvcfast_voices_failed") == 1  # zoe.pth is not a model
    assert value(before, "rvcfast_voices") == 4 and value(before, "rvcfast_loaded_voices") == 3
    assert ("rvcfast_live_streams", ()) in before

    plan = ["ok"] * 17 + ["bad input", "broken voice", "bad field"]
    with cf.ThreadPoolExecutor(4) as pool:  # bounded: 20 requests, 4 at a time
        def one(kind: str) -> int:
            if kind == "bad input":
                return convert(url, NOT_AUDIO, name="notes.wav").status_code
            if kind == "broken voice":
                return convert(url, voice="zoe").status_code
            if kind == "bad field":
                return convert(url, pitch="high").status_code
            return convert(url).status_code

        statuses = list(pool.map(one, plan))
    assert statuses == [200] * 17 + [422, 500, 422]
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("rvcfast_requests_total", route="/v1/convert", status="200") == 17
    assert delta("rvcfast_requests_total", route="/v1/convert", status="422") == 2
    assert delta("rvcfast_requests_total", route="/v1/convert", status="500") == 1
    assert delta("rvcfast_request_seconds_count", route="/v1/convert") == 20
    assert delta("rvcfast_conversion_failures_total", stage="decode") == 1
    assert delta("rvcfast_conversion_failures_total", stage="load") == 1  # the broken voice: counted nowhere before
    for stage in ("convert", "encode", "stream", "job", "live"):
        assert delta("rvcfast_conversion_failures_total", stage=stage) == 0
    assert delta("rvcfast_audio_seconds_total") == pytest.approx(17 * 0.5)
    assert delta("rvcfast_batch_requests_count") == 17  # one model call per conversion on a CPU
    assert delta("rvcfast_stage_seconds_total", stage="synth") > 0
    assert value(after, "rvcfast_requests_in_flight") == 0 and value(after, "rvcfast_queue_depth") == 0


# ---------------------------------------------------------------------- request ids and the request log


def _access(caplog: Any, rid: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rvcfast.serve.access" and getattr(r, "request_id", None) == rid]


def test_every_answer_carries_a_request_id_that_the_log_and_the_error_body_repeat(live, caplog) -> None:
    url, _ = live
    caplog.set_level(logging.INFO, logger="rvcfast.serve")
    ok = convert(url)
    rid = ok.headers.get("x-request-id", "")
    assert ok.status_code == 200 and HEX_ID.match(rid), ok.headers
    # a load balancer's id is kept; one that could forge a log line or a header is replaced
    kept = convert(url, NOT_AUDIO, name="notes.wav", headers={"X-Request-ID": "lb-7f3a:01"})
    assert kept.status_code == 422 and kept.headers["x-request-id"] == "lb-7f3a:01"
    assert kept.json()["request_id"] == "lb-7f3a:01" and "notes.wav" in kept.json()["error"]
    for bad in ("a" * 200, "id;rm -rf", "x y"):
        r = httpx.get(f"{url}/v1/voices", headers={"X-Request-ID": bad}, timeout=DEADLINE)
        assert HEX_ID.match(r.headers["x-request-id"]), bad
    missing = httpx.get(f"{url}/v1/jobs/{'0' * 32}", timeout=DEADLINE)
    assert missing.status_code == 404 and missing.json()["request_id"] == missing.headers["x-request-id"]

    wait_for(lambda: _access(caplog, "lb-7f3a:01"), "the request log line")
    (line,) = _access(caplog, rid)  # logged once, when it ended
    assert line.levelno == logging.INFO and line.status == 200 and line.method == "POST" and line.path == "/v1/convert"
    assert line.duration_s > 0 and line.input == "take.wav" and line.voice == "bob" and line.exc_info is None
    assert f"request_id={rid}" in line.getMessage() and '"POST /v1/convert" 200' in line.getMessage()
    (bad_input,) = _access(caplog, "lb-7f3a:01")  # a client's error: its reason, the file's name, no traceback
    assert bad_input.levelno == logging.INFO and bad_input.status == 422 and bad_input.exc_info is None
    assert "notes.wav" in bad_input.error and "notes.wav" in bad_input.getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if "RIFF" in r.getMessage()]  # no audio bytes


def test_a_failed_model_call_logs_its_traceback_with_the_request_id_and_the_file(live, caplog, monkeypatch) -> None:
    url, state = live
    caplog.set_level(logging.INFO, logger="rvcfast.serve")

    def exploding(engine: Any, prep: Any, params: Any, f0: Any = None) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        try:
            raise RuntimeError("the synthesizer exploded")
        except RuntimeError as exc:
            future.set_exception(exc)
        return future

    monkeypatch.setattr(state.scheduler, "submit", exploding)
    r = convert(url, name="verse.wav")
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and r.json()["request_id"] == rid and "exploded" in r.json()["error"]
    wait_for(lambda: _access(caplog, rid), "the request log line")
    traced = [x for x in caplog.records if x.name == "rvcfast.serve" and x.exc_info and rid in x.getMessage()]
    assert len(traced) == 1 and "verse.wav" in traced[0].getMessage() and traced[0].levelno == logging.ERROR
    (line,) = _access(caplog, rid)
    assert line.levelno == logging.ERROR and line.status == 500 and "exploded" in line.error


def test_a_model_failure_inside_the_engine_logs_the_original_traceback(live, caplog, monkeypatch) -> None:
    """A failure the engine isolates (one input of a model call it may share with other requests)
    comes back as the Result's error text: the log still gets the exception and its traceback."""
    from rvcfast.engine import Engine

    url, _ = live
    caplog.set_level(logging.INFO, logger="rvcfast.serve")

    def broken_synthesizer(self: Any, segs: Any, params: Any, timer: Any) -> Any:
        raise RuntimeError("the decoder ran out of luck")

    monkeypatch.setattr(Engine, "synthesize_segments", broken_synthesizer)
    r = convert(url, name="chorus.wav")
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and "out of luck" in r.json()["error"], r.text
    wait_for(lambda: _access(caplog, rid), "the request log line")
    traced = [x for x in caplog.records if x.name == "rvcfast.serve" and x.exc_info and rid in x.getMessage()]
    assert len(traced) == 1 and "chorus.wav" in traced[0].getMessage(), [x.getMessage() for x in caplog.records]
    exc = traced[0].exc_info[1]
    assert isinstance(exc, RuntimeError) and "out of luck" in str(exc)
    frames = [f.name for f in __import__("traceback").extract_tb(exc.__traceback__)]
    assert "broken_synthesizer" in frames and "_synthesize_bucket" in frames, frames


def test_jobs_and_live_streams_carry_request_ids_and_a_failed_job_is_logged(live, caplog) -> None:
    url, _ = live
    caplog.set_level(logging.INFO, logger="rvcfast.serve")
    r = httpx.post(f"{url}/v1/jobs", files={"file": ("memo.wav", NOT_AUDIO, "audio/wav")}, data={"voice": "bob"}, timeout=DEADLINE)
    assert r.status_code == 202, r.text
    rid, job = r.headers["x-request-id"], r.json()["id"]
    assert HEX_ID.match(rid)
    wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job}", timeout=DEADLINE).json()["state"] == "failed", "the job to fail")
    wait_for(lambda: [x for x in caplog.records if job in x.getMessage() and "failed" in x.getMessage()], "the job's log line")
    (failed,) = [x for x in caplog.records if job in x.getMessage() and "failed" in x.getMessage()]
    # the job's failure names the request that created it and the file; a bad input has no traceback
    assert failed.levelno == logging.ERROR and rid in failed.getMessage() and "memo.wav" in failed.getMessage()
    assert failed.exc_info is None
    status = httpx.get(f"{url}/v1/jobs/{job}", timeout=DEADLINE)
    assert HEX_ID.match(status.headers["x-request-id"]) and status.headers["x-request-id"] != rid

    from websockets.sync.client import connect

    with connect(f"{url.replace('http', 'ws')}/v1/live?voice=bob&sample_rate=16000", open_timeout=DEADLINE) as ws:
        ws_id = ws.response.headers.get("x-request-id", "")
        ready = json.loads(ws.recv(timeout=DEADLINE))
        ws.send(np.zeros(ready["block_size"], "<f4").tobytes())
        assert len(ws.recv(timeout=DEADLINE)) == 4 * ready["block_size"]
    assert HEX_ID.match(ws_id)
    wait_for(lambda: _access(caplog, ws_id), "the stream's log line")
    (line,) = _access(caplog, ws_id)
    assert line.method == "WS" and line.path == "/v1/live" and line.status == 101 and line.close_code is not None


# ---------------------------------------------------------------------- the command line: handlers, levels, SIGTERM


class Server:
    """``rvcfast serve`` in a process of its own on 127.0.0.1, its stderr in a file."""

    def __init__(self, tiny_models: Any, voices: list[Path], log: Path, *extra: str) -> None:
        self.log = log
        cmd = [
            sys.executable, "-m", "rvcfast", "serve", *map(str, voices), "--host", "127.0.0.1", "--port", "0",
            "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu",
            "--threads", "1", *extra,
        ]
        env = {k: v for k, v in os.environ.items() if k != "RVCFAST_API_KEY"}
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env)
        port: list[int] = []

        def found() -> bool:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            assert self.proc.poll() is None, log.read_text()[-3000:]
            return bool(m and not port.append(int(m.group(1))))

        wait_for(found, "the server to listen")
        self.url = f"http://127.0.0.1:{port[0]}"

    def stop(self) -> int:
        """SIGTERM; its exit status (killed if it has not ended in time)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._out.close()


def test_the_log_shows_readiness_failures_and_a_sigterm_that_cancels_a_job(tiny_models, voices, tmp_path) -> None:
    key = "s3cret-key-for-the-log-test"
    srv = Server(tiny_models, [voices], tmp_path / "text.log", "--api-key", key, "--no-access-log", "--log-level", "info")
    try:
        auth = {"X-API-Key": key}
        wait_for(lambda: httpx.get(f"{srv.url}/health", timeout=10).status_code == 200, "the models to load")
        assert convert(srv.url, headers=auth).status_code == 200
        broken = convert(srv.url, headers=auth, voice="zoe")
        assert broken.status_code == 500
        assert httpx.get(f"{srv.url}/metrics", headers={"X-API-Key": "wrong"}, timeout=10).status_code == 401
        long_input = wav_bytes(tone(240.0, RATE), RATE)  # long enough to be still running at SIGTERM
        job = httpx.post(f"{srv.url}/v1/jobs", files={"file": ("podcast.wav", long_input, "audio/wav")},
                         data={"voice": "alice"}, headers=auth, timeout=DEADLINE)
        assert job.status_code == 202, job.text
        wait_for(lambda: httpx.get(f"{srv.url}/v1/jobs/{job.json()['id']}", headers=auth, timeout=10).json()["state"] == "running",
                 "the job to start")
    finally:
        status = srv.stop()
    assert status == -signal.SIGTERM
    log = srv.log.read_text()
    # rvcfast's own records go through uvicorn's handler, with its level prefix, at --log-level
    assert re.search(r"^INFO: +models loaded in [\d.]+ s; ready$", log, re.M), log
    assert re.search(r"^ERROR: +loading voice zoe failed: ", log, re.M), log
    # --no-access-log: the 200 and the 401 are not logged, the 500 is, once, with its id and reason
    lines = [x for x in log.splitlines() if '"POST /v1/convert"' in x]
    assert len(lines) == 1 and f"request_id={broken.headers['x-request-id']}" in lines[0], lines
    assert lines[0].startswith("ERROR:") and "zoe.pth" in lines[0] and "input=\"take.wav\"" in lines[0]
    assert "/metrics" not in log
    # SIGTERM: what was cancelled, and which request had started it
    assert "shutting down: 1 unfinished job(s) cancelled" in log, log
    cancelled = [x for x in log.splitlines() if "cancelled: podcast.wav" in x]
    assert len(cancelled) == 1 and job.json()["id"] in cancelled[0] and job.headers["x-request-id"] in cancelled[0]
    assert key not in log and "RIFF" not in log and "Traceback" not in log


def test_json_logs_are_one_object_per_line_with_the_request_fields(tiny_models, voices, tmp_path) -> None:
    srv = Server(tiny_models, [voices / "bob.pth"], tmp_path / "json.log", "--log-format", "json")
    try:
        wait_for(lambda: httpx.get(f"{srv.url}/health", timeout=10).status_code == 200, "the models to load")
        ok = convert(srv.url)
        bad = convert(srv.url, NOT_AUDIO, name="notes.wav", headers={"X-Request-ID": "trace-42"})
        assert (ok.status_code, bad.status_code) == (200, 422)
        assert httpx.get(f"{srv.url}/metrics", timeout=10).status_code == 200
    finally:
        status = srv.stop()
    assert status == -signal.SIGTERM
    records = [json.loads(x) for x in srv.log.read_text().splitlines()]  # every line, the first one too
    # a load balancer's health checks and Prometheus's scrapes that worked: DEBUG, not a line every few seconds
    assert not [r for r in records if r.get("path") in ("/health", "/metrics") and r.get("status") == 200]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "rvcfast.serve" and "ready" in r["message"] for r in records)
    by_id = {r["request_id"]: r for r in records if r["logger"] == "rvcfast.serve.access"}
    assert len([r for r in records if r.get("request_id") in (ok.headers["x-request-id"], "trace-42")]) == 2  # once each
    assert by_id[ok.headers["x-request-id"]]["status"] == 200 and by_id[ok.headers["x-request-id"]]["duration_s"] > 0
    assert by_id["trace-42"]["status"] == 422 and by_id["trace-42"]["input"] == "notes.wav" and "notes.wav" in by_id["trace-42"]["error"]
    assert not any(r["logger"] == "uvicorn.access" for r in records)


def test_the_json_formatter_writes_a_traceback_as_one_field() -> None:
    from rvcfast.serve.middleware import JsonFormatter

    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("rvcfast.serve", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info())
    record.request_id = "r1"
    out = JsonFormatter().format(record)
    assert "\n" not in out
    parsed = json.loads(out)
    assert parsed["message"] == "failed x" and parsed["request_id"] == "r1" and "ValueError: bad" in parsed["exception"]

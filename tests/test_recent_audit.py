"""Regression tests from a review of two recent changes: torch-free F0 worker processes (a
pickled extractor carries its ``device`` and ``dtype`` by name) and ``convert --server``."""

from __future__ import annotations

import copy
import http.server
import io
import json
import os
import pickle
import struct
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import one_thread_fixture  # noqa: F401
from serve_helpers import ScriptedHandler

from rvcfast.cli import main
from rvcfast.f0 import base
from rvcfast.f0.base import BaseF0Extractor, with_filter_radius
from rvcfast.f0.world import HarvestExtractor


def _unpickled_without_torch(monkeypatch: pytest.MonkeyPatch, blob: bytes) -> Any:
    """``blob`` unpickled as in a worker process that has not imported torch (rvcfast.f0.base
    sees no torch; nothing is imported again)."""
    with monkeypatch.context() as m:
        m.setattr(base, "sys", types.SimpleNamespace(modules={k: v for k, v in sys.modules.items() if k != "torch"}))
        ext = pickle.loads(blob)
        assert "_torch_names" in vars(ext)  # restored at first use only
        return ext


def test_a_copy_of_a_tracker_unpickled_without_torch_leaves_the_original_its_device(monkeypatch) -> None:
    # The copy shared the original's dict of names: restoring the copy's device and dtype emptied the
    # original's, whose device then raised AttributeError (with_filter_radius copies the tracker).
    blob = pickle.dumps(HarvestExtractor(dtype="bfloat16"))
    ext = _unpickled_without_torch(monkeypatch, blob)
    again = with_filter_radius(ext, 5)
    assert again.filter_radius == 5 and again.device == torch.device("cpu") and again.dtype is torch.bfloat16
    assert ext.device == torch.device("cpu") and ext.dtype is torch.bfloat16 and ext.filter_radius == 3
    # the same where the copy is made and used before torch is imported
    ext = _unpickled_without_torch(monkeypatch, blob)
    with monkeypatch.context() as m:
        m.setattr(base, "sys", types.SimpleNamespace(modules={k: v for k, v in sys.modules.items() if k != "torch"}))
        shallow = copy.copy(ext)
    assert shallow.dtype is torch.bfloat16
    assert ext.dtype is torch.bfloat16 and ext.device == torch.device("cpu")
    assert shallow.device == torch.device("cpu")


class _ClassDefaults(BaseF0Extractor):
    """A plugin that declares its defaults on the class."""

    name = "class-defaults"
    cpu_bound = True
    device = torch.device("cpu")
    dtype = torch.float32

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        return np.zeros(len(audio16k) // 160 + 1)


def test_a_plugin_with_a_class_level_dtype_keeps_its_own_through_a_copy() -> None:
    # The instance's bfloat16 went by name, and the class's float32 answered before the name was
    # restored: a copy or an unpickled tracker silently computed in float32.
    ext = _ClassDefaults(dtype="bfloat16")
    for again in (pickle.loads(pickle.dumps(ext)), copy.copy(ext), copy.deepcopy(ext)):
        assert again.dtype is torch.bfloat16
        assert "_torch_names" not in vars(again)


class _Typo(BaseF0Extractor):
    name = "typo"

    @property
    def model(self) -> Any:
        return self._sesion  # the attribute really missing

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        return self.model(audio16k)


def test_an_attribute_error_inside_a_property_names_the_attribute_missing() -> None:
    # The base class's __getattr__ answered for the property whose getter failed:
    # "'_Typo' object has no attribute 'model'", where the class plainly has one.
    with pytest.raises(AttributeError, match="'_Typo' object has no attribute '_sesion'"):
        _Typo().extract(np.zeros(160, np.float32))
    ext = HarvestExtractor()
    assert not hasattr(ext, "filtr_radius") and hasattr(ext, "device") and hasattr(ext, "dtype")
    del ext.dtype
    with pytest.raises(AttributeError, match="'HarvestExtractor' object has no attribute 'dtype'"):
        ext.dtype  # noqa: B018


# ------------------------------------------------------------------ convert --server


class _Answers(ScriptedHandler):
    """A server with one voice whose answers depend on the uploaded file's name: ``hold`` sends half
    of its WAV and waits for ``release``; ``page`` is converted as a job whose state is a proxy's
    HTML page; ``odd`` comes with summary headers that are not JSON; any other is a WAV."""

    release = threading.Event()
    deleted: list[str] = []
    busy: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/v1/voices"):
            self._send(200, json.dumps({"voices": [{"id": "alice", "sample_rate": 40000}]}).encode(), "application/json")
        elif self.path.endswith("/audio"):
            self._send(200, _wav(), "audio/wav")
        else:  # the state of job "page"
            self._send(200, b"<html>sign in</html>", "text/html")

    def do_DELETE(self) -> None:  # noqa: N802
        self.deleted.append(self.path)
        self._send(200, b"{}", "application/json")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        name = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["filename"][0]
        if name.startswith("hold"):
            body = _wav()
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.release.wait(30)
            self.wfile.write(body[len(body) // 2:])
        elif name.startswith("page") and self.path.startswith("/v1/convert"):
            self._send(413, b'{"error": "page.wav: longer than 0.6 s: send it to POST /v1/jobs"}', "application/json")
        elif name.startswith("page"):
            self._send(202, b'{"id": "page", "state": "queued"}', "application/json")
        elif name.startswith("busy") and not self.busy:  # once, with a Retry-After that is no wait
            self.busy.append(name)
            self._send(503, b'{"error": "the server is busy"}', "application/json", {"Retry-After": "-1"})
        elif name.startswith("odd"):
            self._send(200, _wav(), "audio/wav", {"X-Rvcfast-Timings": "{not json", "X-Rvcfast-Warnings": "7"})
        else:
            self._send(200, _wav(), "audio/wav")



def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(4000, np.float32), 40000, format="WAV")
    return buf.getvalue()


@pytest.fixture(name="answers")
def answers_fixture() -> Iterator[str]:
    _Answers.release, _Answers.deleted, _Answers.busy = threading.Event(), [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        _Answers.release.set()
        httpd.shutdown()
        httpd.server_close()


def _clips(folder: Path, *names: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        sf.write(folder / name, np.full(4000, 0.1, np.float32), 16000)
    return [str(folder / name) for name in names]


def test_ctrl_c_while_an_answer_arrives_leaves_no_temporary_file(answers, tmp_path, monkeypatch) -> None:
    # The thread writing hold.wav's answer is a daemon: the command ended (130) with its
    # ".hold.wav.<pid>~<random>.part" in OUT, half an answer that no later run removed.
    from rvcfast.cli.batch_options import BatchReport

    out = tmp_path / "out"
    real_add = BatchReport.add

    def add(self, res):  # a.wav's result: the user presses Ctrl-C while hold.wav's answer is on its way
        real_add(self, res)
        for _ in range(600):
            if out.is_dir() and any(p.name.endswith(".part") for p in out.iterdir()):
                break
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchReport, "add", add)
    clips = _clips(tmp_path / "in", "a.wav", "hold.wav")
    assert main(["convert", "alice", *clips, "-o", str(out), "--server", answers, "--workers", "2", "-q"]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["a.wav"]


def test_a_temporary_file_left_by_a_killed_command_is_removed_by_the_next(answers, tmp_path, monkeypatch) -> None:
    # Its temporary files were named without the host, so no later run (local or --server) knew them.
    import rvcfast.atomic
    import rvcfast.writing

    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".a.wav.{rvcfast.writing._HOST}~12345~00000000.part"  # a command killed while writing a.wav
    stale.write_bytes(b"RIFF")
    monkeypatch.setattr(rvcfast.writing, "process_alive", lambda pid: pid == os.getpid())
    made: list[Path] = []
    real_new = rvcfast.atomic.new_temporary
    monkeypatch.setattr(rvcfast.atomic, "new_temporary", lambda *a, **k: made.append(real_new(*a, **k)) or made[-1])
    assert main(["convert", "alice", *_clips(tmp_path / "in", "a.wav"), "-o", str(out), "--server", answers, "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.wav"]
    assert len(made) == 1 and rvcfast.writing._PART_RE.match(made[0].name)  # a later run can tell it stale


def test_a_job_state_that_is_not_json_fails_its_file_by_name(answers, tmp_path, capsys) -> None:
    # A proxy's page answered 200 to GET /v1/jobs/{id}: the command ended with a JSONDecodeError traceback.
    clips = _clips(tmp_path / "in", "page.wav", "b.wav")
    assert main(["convert", "alice", *clips, "-o", str(tmp_path / "out"), "--server", answers, "--workers", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{clips[0]}: the server's answer to {answers}/v1/jobs/page is no job state (text/html); nothing was written" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.wav"]
    assert _Answers.deleted == ["/v1/jobs/page"]  # not left running on the server


def test_summary_headers_that_are_not_json_do_not_fail_a_written_file(answers, tmp_path, capsys) -> None:
    # X-Rvcfast-Timings that was not JSON (a proxy, another server version) ended the command with a traceback
    report = tmp_path / "r.jsonl"
    clips = _clips(tmp_path / "in", "odd.wav")
    assert main(["convert", "alice", *clips, "-o", str(tmp_path / "out"), "--server", answers, "-q", "--report", str(report)]) == 0
    row = json.loads(report.read_text())
    assert row["ok"] and row["warnings"] == [] and sf.info(str(tmp_path / "out" / "odd.wav")).frames == 4000


def test_a_retry_after_that_is_no_wait_is_the_default_wait(answers, tmp_path) -> None:
    # "Retry-After: -1" reached time.sleep, whose ValueError ended the command with a traceback
    clips = _clips(tmp_path / "in", "busy.wav")
    assert main(["convert", "alice", *clips, "-o", str(tmp_path / "out"), "--server", answers, "-q"]) == 0
    assert _Answers.busy == ["busy.wav"] and sf.info(str(tmp_path / "out" / "busy.wav")).frames == 4000


def _box(kind: bytes, body: bytes = b"", wide: bool = False) -> bytes:
    if wide:
        return struct.pack(">I4sQ", 1, kind, 16 + len(body)) + body
    return struct.pack(">I4s", 8 + len(body), kind) + body


@pytest.mark.parametrize(("layout", "whole"), [
    ([_box(b"ftyp", b"M4A \0\0\0\0"), _box(b"moov", b"x" * 20), _box(b"mdat", b"a" * 50)], True),
    ([_box(b"ftyp", b"M4A \0\0\0\0"), _box(b"free"), _box(b"mdat", b"a" * 50, wide=True), _box(b"moov"),
      _box(b"uuid", bytes(16))], True),  # moov after mdat, a 64-bit size, free and uuid boxes
    ([_box(b"ftyp", b"M4A \0\0\0\0"), _box(b"moov"), struct.pack(">I4s", 0, b"mdat") + b"a" * 9], True),  # to the end
    ([_box(b"ftyp", b"M4A \0\0\0\0"), _box(b"moov"), _box(b"mdat"), struct.pack(">I4sQ", 1, b"free", 8)], False),
    ([_box(b"ftyp", b"M4A \0\0\0\0"), _box(b"moov"), _box(b"mdat", b"a" * 50)[:-1]], False),
    ([_box(b"ftyp", b"M4A \0\0\0\0"), _box(b"mdat", b"a" * 50)], False),
])
def test_an_m4a_answer_is_whole_by_its_boxes(tmp_path, layout, whole) -> None:
    # a 64-bit size smaller than its own 16-byte header was taken for a whole box
    from rvcfast.cli.remote import _mp4_boxes_whole

    path = tmp_path / "a.m4a"
    path.write_bytes(b"".join(layout))
    assert _mp4_boxes_whole(path) is whole

"""The downloader under stress: two processes on one file, bad URLs and mirrors, a server that
misbehaves (cut chunked body, bad Content-Length), a destination that cannot be a folder, and the
progress output of a download that failed. Every server here listens on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import io
import multiprocessing as mp
import sys
import threading

import pytest

from rvcfast import weights
from rvcfast.cli import main
from rvcfast.progress import DownloadProgress

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 100_000  # the first (complete) chunk of /chunkcut


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD; honours Range. Per path, the first request misbehaves:

    * ``/gated``: sends half the body, sets ``half_sent`` and waits for ``gate`` before the rest;
    * ``/broken``: drops the connection after a third of the body;
    * ``/chunkcut``: a chunked body that stops inside its second chunk;
    * ``/badlen``: ``Content-Length: abc`` (always), the body up to the connection's close.
    """

    protocol_version = "HTTP/1.1"
    state: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        path, rng = self.path, self.headers.get("Range")
        first = path not in self.state["seen"]
        self.state["seen"].add(path)
        self.state["requests"].append((path, rng))
        if path == "/chunkcut" and first:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % CHUNK + PAYLOAD[:CHUNK] + b"\r\n")
            self.wfile.write(b"%x\r\n" % 50_000 + PAYLOAD[CHUNK : CHUNK + 1000])
            self.wfile.flush()
            return
        if path == "/badlen":
            self.send_response(200)
            self.send_header("Content-Length", "abc")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(PAYLOAD)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if path == "/broken" and first:
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        if path == "/gated":
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            self.state["half_sent"].set()
            self.state["gate"].wait(120)
            body = body[half:]
        self.wfile.write(body)


@pytest.fixture()
def server():
    _Handler.state = {"seen": set(), "requests": [], "half_sent": threading.Event(), "gate": threading.Event()}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.state["gate"].set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def fake_rmvpe(server, monkeypatch):
    """``rmvpe`` is PAYLOAD (its checksum), published at the test server's /file."""
    monkeypatch.setitem(
        weights.KNOWN_WEIGHTS, "rmvpe",
        weights.BaseWeights("rmvpe", "rmvpe.pt", f"{server}/file", SHA, len(PAYLOAD), "RMVPE pitch model"),
    )
    monkeypatch.delenv("RVCFAST_URL_RMVPE", raising=False)
    return server


# ------------------------------------------------------------------------------- two processes


def _download_in_child(url: str, dest: str, at_lock, results, tag: str) -> None:
    """Download in a child process and report ("ok", path) or (error type, message).

    With ``at_lock``, the event is set when the downloader asks for its file lock (so the test
    knows this process is waiting for the other one without sleeping)."""
    from rvcfast import weights as w

    real = getattr(w, "fcntl", None)
    if at_lock is not None and real is not None:

        class _Signalling:
            LOCK_EX = real.LOCK_EX

            @staticmethod
            def flock(fd: int, op: int) -> None:
                at_lock.set()
                real.flock(fd, op)

        w.fcntl = _Signalling
    try:
        path = w.download(url, dest, sha256=SHA, timeout=60, chunk=1 << 16)
        results.put((tag, "ok", str(path)))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put((tag, type(exc).__name__, str(exc)))


@pytest.mark.skipif(sys.platform == "win32", reason="the lock is observed through fcntl (POSIX)")
def test_two_processes_downloading_one_file_take_turns(server, tmp_path):
    ctx = mp.get_context("spawn")
    results, at_lock = ctx.Queue(), ctx.Event()
    dest = tmp_path / "w.bin"
    url = f"{server}/gated"
    state = _Handler.state
    a = ctx.Process(target=_download_in_child, args=(url, str(dest), None, results, "A"))
    a.start()
    try:
        assert state["half_sent"].wait(120), "the first download never started"
        b = ctx.Process(target=_download_in_child, args=(url, str(dest), at_lock, results, "B"))
        b.start()
        # B now either waits for A's lock, or (without one) fetches the file itself: either way, let A go on
        for _ in range(2400):
            if at_lock.wait(0.05) or len(state["requests"]) >= 2:
                break
        state["gate"].set()
        outcome = {}
        for _ in range(2):
            tag, status, text = results.get(timeout=120)
            outcome[tag] = (status, text)
        b.join(60)
    finally:
        state["gate"].set()
        a.join(60)
    assert outcome == {"A": ("ok", str(dest)), "B": ("ok", str(dest))}
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]  # no .part, no .lock left
    assert len(state["requests"]) == 1  # B used A's file instead of downloading it again


def test_a_lock_file_left_by_a_dead_process_does_not_block(server, tmp_path):
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.lock").write_bytes(b"")  # a crashed downloader's; its lock died with it
    assert weights.download(f"{server}/file", dest, sha256=SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


def test_download_over_an_existing_file_replaces_it(server, tmp_path):
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"old")
    weights.download(f"{server}/file", dest, sha256=SHA)  # nobody else replaced it: this call downloads
    assert dest.read_bytes() == PAYLOAD


# ------------------------------------------------------------------------------- URLs and mirrors


def test_an_empty_mirror_variable_counts_as_unset(fake_rmvpe, tmp_path, monkeypatch):
    monkeypatch.setenv("RVCFAST_URL_RMVPE", "")
    assert weights.source_url("rmvpe") == f"{fake_rmvpe}/file"
    monkeypatch.setenv("RVCFAST_URL_RMVPE", "  ")
    assert weights.download("rmvpe", tmp_path / "rmvpe.pt").read_bytes() == PAYLOAD
    monkeypatch.setenv("RVCFAST_URL_RMVPE", f"{fake_rmvpe}/broken")
    assert weights.source_url("rmvpe") == f"{fake_rmvpe}/broken"


@pytest.mark.parametrize("url", ["mirror.example/rmvpe.pt", "ftp://mirror.example/rmvpe.pt", "http:///rmvpe.pt"])
def test_a_mirror_that_is_not_an_http_url_is_one_clear_error(fake_rmvpe, tmp_path, monkeypatch, url):
    monkeypatch.setenv("RVCFAST_URL_RMVPE", url)
    with pytest.raises(weights.DownloadError) as exc:
        weights.download("rmvpe", tmp_path / "rmvpe.pt")
    assert "RVCFAST_URL_RMVPE" in str(exc.value) and url in str(exc.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(weights.DownloadError, match="http"):
        weights.download(url, tmp_path / "x.bin")


def test_file_urls_still_work(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    out = weights.download(src.as_uri(), tmp_path / "out" / "w.bin", sha256=SHA)
    assert out.read_bytes() == PAYLOAD


def test_a_destination_under_a_file_is_one_clear_error(server, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"x")
    with pytest.raises(weights.DownloadError, match="afile"):
        weights.download(f"{server}/file", blocker / "w.bin", sha256=SHA)
    with pytest.raises(weights.DownloadError, match="folder"):
        weights.download(f"{server}/file", tmp_path, sha256=SHA)
    assert blocker.read_bytes() == b"x"


# ------------------------------------------------------------------------------- misbehaving servers


def test_a_bad_content_length_is_an_unknown_length(server, tmp_path):
    seen = []
    out = weights.download(f"{server}/badlen", tmp_path / "w.bin", sha256=SHA, progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), 0)  # total unknown


def test_a_chunked_body_cut_short_keeps_what_arrived_and_resumes(server, tmp_path):
    dest = tmp_path / "w.bin"
    with pytest.raises(weights.DownloadError, match="resumes") as exc:
        weights.download(f"{server}/chunkcut", dest, sha256=SHA, timeout=30)
    assert f"{server}/chunkcut" in str(exc.value)
    part = tmp_path / "w.bin.part"
    assert part.read_bytes() == PAYLOAD[:CHUNK]  # the complete chunk that arrived is kept
    assert weights.download(f"{server}/chunkcut", dest, sha256=SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.state["requests"][-1] == ("/chunkcut", f"bytes={CHUNK}-")


# ------------------------------------------------------------------------------- the command


def test_cli_failed_download_says_where_it_stopped(fake_rmvpe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RVCFAST_URL_RMVPE", f"{fake_rmvpe}/broken")
    assert main(["download", "rmvpe", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "downloaded rmvpe.pt" not in err
    assert "rmvpe.pt: download stopped at" in err and "of 1.0 MB" in err
    assert "rvcfast: error: download of" in err and "resumes" in err
    assert main(["download", "rmvpe", "--dest", str(tmp_path)]) == 0  # resumes
    captured = capsys.readouterr()
    assert "downloaded rmvpe.pt: 1.0 MB" in captured.err and str(tmp_path / "rmvpe.pt") in captured.out


@pytest.mark.parametrize(
    ("mirror", "words"),
    [("mirror.example/rmvpe.pt", "http"), ("{server}/chunkcut", "resumes"), ("{server}/badlen", "rmvpe")],
)
def test_cli_download_errors_are_one_line(fake_rmvpe, tmp_path, monkeypatch, capsys, mirror, words):
    monkeypatch.setenv("RVCFAST_URL_RMVPE", mirror.format(server=fake_rmvpe))
    status = main(["download", "rmvpe", "--dest", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    if mirror.endswith("badlen"):  # a bad Content-Length is no error: the file arrives and checks out
        assert status == 0 and (tmp_path / "rmvpe.pt").read_bytes() == PAYLOAD
        return
    assert status == 1 and "Traceback" not in err and words in err
    assert err.strip().splitlines()[-1].startswith("rvcfast: error: ")


def test_cli_dest_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"x")
    assert main(["download", "rmvpe", "--dest", str(blocker), "-q"]) == 2
    assert "--dest" in capsys.readouterr().err and blocker.read_bytes() == b"x"


def test_cli_an_empty_mirror_variable_uses_the_public_url(fake_rmvpe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RVCFAST_URL_RMVPE", "")
    assert main(["download", "rmvpe", "--dest", str(tmp_path)]) == 0
    assert f"from {fake_rmvpe}/file" in capsys.readouterr().err


# ------------------------------------------------------------------------------- the progress line


def test_progress_after_a_failure_says_where_it_stopped():
    plain = io.StringIO()
    with pytest.raises(weights.DownloadError), DownloadProgress("rmvpe.pt", stream=plain, tty=False) as bar:
        bar(0, 3000)
        bar(1000, 3000)
        raise weights.DownloadError("cut")
    lines = plain.getvalue().splitlines()
    assert lines == ["downloading rmvpe.pt (3.0 kB)", "rmvpe.pt: download stopped at 1.0 kB of 3.0 kB"]
    tty = io.StringIO()
    with pytest.raises(KeyboardInterrupt), DownloadProgress("rmvpe.pt", stream=tty, tty=True, min_interval=0.0) as bar:
        bar(0, 3000)
        bar(2000, 3000)
        raise KeyboardInterrupt
    assert tty.getvalue().endswith("rmvpe.pt: download stopped at 2.0 kB of 3.0 kB\n")
    assert "downloaded" not in tty.getvalue()


def test_progress_of_a_download_that_failed_before_any_data_prints_nothing():
    plain = io.StringIO()
    with pytest.raises(weights.DownloadError), DownloadProgress("rmvpe.pt", stream=plain, tty=False):
        raise weights.DownloadError("HTTP 404")
    assert plain.getvalue() == ""



def test_progress_of_a_download_refused_after_every_byte_arrived_does_not_say_it_stopped():
    # a checksum mismatch after the whole body: "download stopped at 2 B of 2 B" was misleading
    plain = io.StringIO()
    with pytest.raises(weights.DownloadError), DownloadProgress("rmvpe.pt", stream=plain, tty=False) as bar:
        bar(0, 3000)
        bar(3000, 3000)
        raise weights.DownloadError("checksum mismatch")
    assert "stopped" not in plain.getvalue()


def test_a_download_that_received_nothing_says_so_and_leaves_no_part_file(tmp_path):
    # no network: the message named a .part file "keeping 0 bytes" that did not exist
    target = tmp_path / "rmvpe.pt"
    with pytest.raises(weights.DownloadError) as info:
        weights.download("http://127.0.0.1:9/rmvpe.pt", dest=target, timeout=5)
    text = str(info.value)
    assert "nothing was received" in text and ".part" not in text and "keeps" not in text
    assert list(tmp_path.iterdir()) == []

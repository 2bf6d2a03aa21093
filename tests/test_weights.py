"""Base-weights lookup and the resumable, checksummed downloader (against a server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from rvcfast import weights
from rvcfast.errors import WeightsNotFoundError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file; honours Range; /broken stops half-way once; /nocheck returns other bytes."""

    state: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        data = b"something else entirely" if self.path == "/other" else PAYLOAD
        start = 0
        rng = self.headers.get("Range")
        if rng and self.path != "/norange":
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/broken" and not self.state.get("broken_once"):
            self.state["broken_once"] = True
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-transfer
            return
        self.state.setdefault("ranges", []).append(rng)
        self.wfile.write(body)


@pytest.fixture()
def server():
    _Handler.state = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_checksum_and_reports_progress(server, tmp_path):
    seen = []
    out = weights.download(f"{server}/file", tmp_path / "w.bin", sha256=SHA, progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not (tmp_path / "w.bin.part").exists()


def test_download_resumes_after_interruption(server, tmp_path):
    dest = tmp_path / "w.bin"
    with pytest.raises(weights.DownloadError, match="resumes"):
        weights.download(f"{server}/broken", dest, sha256=SHA, timeout=5)
    part = tmp_path / "w.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size
    weights.download(f"{server}/broken", dest, sha256=SHA, timeout=5)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.state["ranges"][-1] == f"bytes={have}-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    part = tmp_path / "w.bin.part"
    part.write_bytes(b"garbage")
    weights.download(f"{server}/norange", tmp_path / "w.bin", sha256=SHA)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


def test_bad_checksum_is_refused_and_nothing_is_left(server, tmp_path):
    with pytest.raises(weights.DownloadError, match="checksum"):
        weights.download(f"{server}/other", tmp_path / "w.bin", sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_known_weights_download_into_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RVCFAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RVCFAST_URL_RMVPE", f"{server}/file")
    monkeypatch.setitem(
        weights.KNOWN_WEIGHTS, "rmvpe", weights.BaseWeights("rmvpe", "rmvpe.pt", "unused", SHA, len(PAYLOAD), "RMVPE")
    )
    path = weights.resolve_weights("rmvpe", allow_download=True)
    assert path == tmp_path / "home" / "rmvpe.pt" and path.read_bytes() == PAYLOAD
    assert weights.resolve_weights("rmvpe") == path  # found without downloading now


def test_lookup_order_explicit_then_home_then_cache(tmp_path, monkeypatch):
    home, cache = tmp_path / "home", tmp_path / "xdg"
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    (cache / "rvcfast").mkdir(parents=True)
    (cache / "rvcfast" / "hubert_base.pt").write_bytes(b"x")
    assert weights.resolve_weights("hubert") == cache / "rvcfast" / "hubert_base.pt"
    home.mkdir()
    (home / "hubert_base.pt").write_bytes(b"y")
    assert weights.resolve_weights("hubert") == home / "hubert_base.pt"
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"z")
    assert weights.resolve_weights("hubert", explicit) == explicit


def test_missing_weights_error_names_file_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("RVCFAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(WeightsNotFoundError) as exc:
        weights.resolve_weights("rmvpe")
    msg = str(exc.value)
    assert "rmvpe.pt" in msg and "`rvcfast download` (this and hubert_base.pt, also missing)" in msg and str(tmp_path / "home") in msg
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "hubert_base.pt").write_bytes(b"x")  # the other one is there: only this one to get
    with pytest.raises(WeightsNotFoundError, match="`rvcfast download rmvpe`"):
        weights.resolve_weights("rmvpe")
    with pytest.raises(WeightsNotFoundError, match="nowhere.pt"):
        weights.resolve_weights("rmvpe", tmp_path / "nowhere.pt")

"""A real ``rvcfast serve`` process for the server tests, and audio helpers.

:class:`ServerProcess` starts ``python -m rvcfast serve ... --port 0`` (the server binds
a free port on 127.0.0.1 and prints it), waits for ``/health``, and stops the process
with SIGTERM (killing it only if it does not exit in time). Its output goes to a log
file, so a chatty server can never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from helpers import TinyModels

API_KEY = "test-key-123"


class ServerProcess:
    """One ``rvcfast serve`` process on 127.0.0.1."""

    def __init__(self, voices: list[Path], models: TinyModels, log: Path, *extra: str) -> None:
        self.log = log
        cmd = [
            sys.executable, "-m", "rvcfast", "serve", *map(str, voices), "--host", "127.0.0.1", "--port", "0",
            "--encoder", str(models.encoder), "--f0-weights", str(models.rmvpe), "--device", "cpu",
            "--threads", "1", "--no-access-log", "--log-level", "warning", *extra,
        ]
        env = {k: v for k, v in os.environ.items() if k != "RVCFAST_API_KEY"}
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        self.port = self._read_port(timeout=60)
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the server did not start in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def wait_healthy(self, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"the server was not healthy in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def rss_mb(self) -> float:
        """Resident set size of the server process in MB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("VmRSS not found")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log_file.close()

    def stop(self) -> None:
        """SIGTERM, then a kill if it has not exited after 30 s."""
        self.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log_file.close()


@contextmanager
def running_server(voices: list[Path], models: TinyModels, log: Path, *extra: str) -> Iterator[ServerProcess]:
    """A :class:`ServerProcess`, healthy before it is handed out and stopped afterwards (a module fixture's body)."""
    srv = ServerProcess(voices, models, log, *extra)
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def voice_folder(models: TinyModels, folder: Path) -> Path:
    """``alice`` (F0, with index), ``bob`` (no F0), ``carol`` (alice's model, no index), ``zoe`` (a broken file)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(models.voice, folder / "alice.pth")
    shutil.copy(models.index, folder / "alice.index")
    shutil.copy(models.voice_nof0, folder / "bob.pth")
    shutil.copy(models.voice, folder / "carol.pth")
    (folder / "zoe.pth").write_bytes(b"PK\x03\x04 this is not a model")
    return folder


def wav_bytes(audio: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def close_to(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Equal to float32 noise: the golden README's end-to-end tolerance, 1e-4 of the peak."""
    if actual.shape != expected.shape:
        return False
    peak = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual - expected).max()) <= 1e-4 * peak


def run_in_process(app: Any, body: Callable[[Any], Any], deadline: float = 120.0) -> Any:
    """``await body(client)`` with an ``httpx.AsyncClient`` on ``app`` (no socket), once ``/health``
    says 200; its result. The app is left open (the caller closes it)."""
    import httpx

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=deadline) as client:
            end = time.monotonic() + deadline
            while (await client.get("/health")).status_code != 200:
                assert time.monotonic() < end, "the app never became healthy"
                await asyncio.sleep(0.05)
            return await body(client)

    return asyncio.run(main())


#: The most a wait in the server tests may take on a loaded machine before the test gives up.
WAIT_DEADLINE = 120.0


def wait_for(condition: Callable[[], bool], what: str, deadline: float = WAIT_DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"gave up waiting: {what}"
        time.sleep(0.02)


@contextmanager
def served(app: Any, **config: Any) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1 (a free port) in a thread, once ``/health`` says its
    models are loaded; yields its base URL. ``config``: more ``uvicorn.Config`` options."""
    import socket
    import threading

    import httpx
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start")
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        wait_for(lambda: httpx.get(f"{url}/health", timeout=10).status_code == 200, "the models to load")
        yield url
    finally:
        server.should_exit = True
        thread.join(WAIT_DEADLINE)
        sock.close()


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in HTTP server's handler (a test scripts its answers in ``do_GET``/``do_POST``): ``_send``
    answers with a status, a body of a content type and headers; nothing is logged."""

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None

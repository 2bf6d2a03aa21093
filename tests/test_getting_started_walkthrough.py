"""docs/getting-started.md followed by a newcomer on a fresh machine: ``rvcfast download`` from a
local server (standing in for Hugging Face: random-weight files in the real formats), an
interrupted download resumed, the first conversion with the weights found in the cache, and
the rough edges found on the way (an Applio install in ``RVCFAST_HOME``, a first-use download,
a mirror answering with a web page, a second process waiting for the first). Every server here
listens on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
import soundfile as sf
from helpers import MODEL_SR, TINY_CONV, one_thread_fixture, tiny_models_fixture  # noqa: F401

from rvcfast import weights
from rvcfast.cli import main
from rvcfast.errors import WeightsNotFoundError
from rvcfast.testing import save_random_hubert, save_random_rmvpe


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (name -> bytes) with Range; ``/html/...`` answers 200 with a sign-in page;
    the first request of a name in ``cut`` is dropped after half its body."""

    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}
    cut: set[str] = set()
    stall: dict[str, threading.Event] = {}
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        self.requests.append((self.path, rng))
        if self.path.startswith("/html/"):
            page = b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        data = self.files[self.path.lstrip("/")]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        name = self.path.lstrip("/")
        if name in self.stall:  # a slow link: a little data, then nothing until the test says
            self.wfile.write(body[:200_000])
            self.wfile.flush()
            self.stall[name].wait(60)
            body = body[200_000:]
        if name in self.cut:
            self.cut.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def base_files(tmp_path_factory) -> dict[str, bytes]:
    """Random-weight ``hubert_base.pt`` (fairseq layout, 768-d for a v2 voice) and reduced ``rmvpe.pt``."""
    root = tmp_path_factory.mktemp("hf")
    hubert = save_random_hubert(root / "hubert_base.pt", "fairseq", layers=1, hidden=768, heads=12, ffn=64,
                                conv_layers=TINY_CONV, conv_pos=16, conv_pos_groups=16, final_dim=256, seed=3)
    rmvpe = save_random_rmvpe(root / "rmvpe.pt", full_size=False, seed=4)
    return {"hubert_base.pt": hubert.read_bytes(), "rmvpe.pt": rmvpe.read_bytes()}


@pytest.fixture()
def hub(base_files, monkeypatch, tmp_path):
    """A local 'Hugging Face' serving the base files; KNOWN_WEIGHTS name them (their checksums and
    sizes) at its URLs; a fresh, empty user cache and no RVCFAST_HOME or mirror variables."""
    _Handler.files, _Handler.cut, _Handler.requests, _Handler.stall = dict(base_files), set(), [], {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    for name, info in list(weights.KNOWN_WEIGHTS.items()):
        data = base_files[info.filename]
        monkeypatch.setitem(weights.KNOWN_WEIGHTS, name, weights.BaseWeights(
            name, info.filename, f"{url}/{info.filename}", hashlib.sha256(data).hexdigest(), len(data), info.description))
        monkeypatch.delenv(f"RVCFAST_URL_{name.upper()}", raising=False)
    monkeypatch.delenv("RVCFAST_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield url
    for gate in _Handler.stall.values():
        gate.set()
    httpd.shutdown()
    httpd.server_close()


def test_download_interrupted_resumed_then_first_conversion(hub, base_files, tiny_models, shared_audio, tmp_path,
                                                            monkeypatch, capsys):
    cache = tmp_path / "cache" / "rvcfast"
    _Handler.cut = {"rmvpe.pt"}
    # `rvcfast download`: hubert_base.pt arrives, rmvpe.pt's connection drops half-way
    assert main(["download"]) == 1
    err = capsys.readouterr().err
    assert (cache / "hubert_base.pt").read_bytes() == base_files["hubert_base.pt"]
    assert not (cache / "rmvpe.pt").exists() and (cache / "rmvpe.pt.part").is_file()
    assert "rmvpe.pt: download stopped at" in err and "resumes from there" in err
    # run again: hubert is kept, rmvpe resumes where it stopped
    assert main(["download"]) == 0
    captured = capsys.readouterr()
    assert f"hubert: {cache / 'hubert_base.pt'} is already there" in captured.out
    assert "resuming at" in captured.err
    assert (cache / "rmvpe.pt").read_bytes() == base_files["rmvpe.pt"]
    assert sorted(p.name for p in cache.iterdir()) == ["hubert_base.pt", "rmvpe.pt"]  # no .part, no .lock
    resumed = [r for p, r in _Handler.requests if p == "/rmvpe.pt"]
    assert resumed[-1] == f"bytes={len(base_files['rmvpe.pt']) // 2}-"

    # the first conversion, as the docs print it: the base weights come from the cache
    clip, rate = sf.read(shared_audio / "arctic_a0007.wav", dtype="float32")
    sf.write(tmp_path / "input.wav", clip[: rate], rate)
    monkeypatch.chdir(tmp_path)
    code = main(["convert", str(tiny_models.voice), "input.wav", "-o", "converted/", "--index", str(tiny_models.index),
                 "--pitch", "2", "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    audio, out_rate = sf.read(tmp_path / "converted" / "input.wav")
    # 1 s in, 1 s out at the model's rate, less the frame or two RVC's HuBERT framing drops (as the reference)
    assert out_rate == MODEL_SR and MODEL_SR - 3 * 400 <= len(audio) <= MODEL_SR


def test_download_into_an_applio_install_uses_the_copy_there(hub, base_files, tmp_path, monkeypatch, capsys):
    """RVCFAST_HOME at an Applio install (as the docs suggest), then `rvcfast download rmvpe` (as the
    README says): Applio's rvc/models/predictors/rmvpe.pt is what rvcfast uses; it was downloaded
    again into the install's top folder."""
    applio = tmp_path / "Applio"
    kept = applio / "rvc" / "models" / "predictors" / "rmvpe.pt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"Applio's rmvpe.pt")
    monkeypatch.setenv("RVCFAST_HOME", str(applio))
    assert main(["download", "rmvpe"]) == 0
    out = capsys.readouterr().out
    assert f"rmvpe: {kept} is already there" in out and "--force" in out
    assert not (applio / "rmvpe.pt").exists() and not _Handler.requests
    # --force downloads it anyway, into the folder named
    assert main(["download", "rmvpe", "--force", "-q"]) == 0
    assert (applio / "rmvpe.pt").read_bytes() == base_files["rmvpe.pt"]
    assert kept.read_bytes() == b"Applio's rmvpe.pt"


def test_rvcfast_home_that_is_a_file_is_named_as_such(tmp_path, monkeypatch, capsys):
    """The error named --dest, an option the user had not given."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    assert main(["download", "rmvpe"]) == 2
    err = capsys.readouterr().err
    assert f"RVCFAST_HOME {home} exists and is not a folder" in err and "--dest" not in err.splitlines()[-1]


def test_first_use_download_says_what_it_downloads_and_shows_progress(hub, base_files, tmp_path, capsys):
    """allow_download=True / --download: a ~190 MB download without a word looked like a hang."""
    path = weights.resolve_weights("rmvpe", allow_download=True)
    assert path == tmp_path / "cache" / "rvcfast" / "rmvpe.pt" and path.read_bytes() == base_files["rmvpe.pt"]
    err = capsys.readouterr().err
    assert "rmvpe.pt (RMVPE pitch model, " in err
    assert f"downloading it from {hub}/rmvpe.pt into {tmp_path / 'cache' / 'rvcfast'}" in err
    assert "downloading rmvpe.pt (" in err and "downloaded rmvpe.pt:" in err  # the progress display
    assert weights.resolve_weights("rmvpe", allow_download=True) == path  # found now: nothing more said
    assert capsys.readouterr().err == ""


def test_missing_weights_error_names_the_mirror_in_use(tmp_path, monkeypatch):
    """With RVCFAST_URL_HUBERT set, `rvcfast download` fetches from the mirror; the error said Hugging Face."""
    monkeypatch.delenv("RVCFAST_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RVCFAST_URL_HUBERT", "http://mirror.example/weights/hubert_base.pt")
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights("hubert")
    assert "(from http://mirror.example/weights/hubert_base.pt)" in str(info.value)
    assert "huggingface.co" not in str(info.value)


def test_a_mirror_answering_with_a_web_page_says_so(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RVCFAST_URL_RMVPE", f"{hub}/html/rmvpe.pt")
    assert main(["download", "rmvpe", "-q"]) == 1
    err = capsys.readouterr().err
    size = weights.KNOWN_WEIGHTS["rmvpe"].size
    assert "checksum mismatch" in err and f"{hub}/html/rmvpe.pt" in err
    assert "the server sent a web page, not the file" in err and f"bytes where the file has {size}" in err
    assert not list((tmp_path / "cache" / "rvcfast").iterdir())  # nothing kept


def test_a_download_waiting_for_another_process_says_so(hub, base_files, tmp_path):
    """A second process waited silently for the first one's whole download (minutes for hubert_base.pt)."""
    target = tmp_path / "w" / "rmvpe.pt"
    target.parent.mkdir()
    waited = threading.Event()
    result: list[object] = []
    with weights._exclusive(target.with_name("rmvpe.pt.lock")):  # "another process" is downloading
        t = threading.Thread(target=lambda: result.append(weights.download("rmvpe", target, waiting=waited.set)))
        t.start()
        assert waited.wait(60)
        target.write_bytes(base_files["rmvpe.pt"])  # ...and puts the file in place
    t.join(60)
    assert result == [target] and not _Handler.requests  # the waiter used it, fetched nothing
    assert sorted(p.name for p in target.parent.iterdir()) == ["rmvpe.pt"]


def test_the_progress_display_moves_on_a_slow_link(hub, base_files, monkeypatch):
    """Each read waited for a whole MiB: at 100 kB/s the progress display stood still for ten seconds
    at a time. Here the server sends 200 kB and stalls; the display must have counted them."""
    import rvcfast.progress

    counted = threading.Event()

    class Recorder(rvcfast.progress.DownloadProgress):
        def __call__(self, done: int, total: int) -> None:
            if done > 0:
                counted.set()
            super().__call__(done, total)

    monkeypatch.setattr(rvcfast.progress, "DownloadProgress", Recorder)
    gate = _Handler.stall["rmvpe.pt"] = threading.Event()
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(main(["download", "rmvpe", "-q"])))
    t.start()
    try:
        assert counted.wait(20), "no progress reported while the server was stalled"
    finally:
        gate.set()
        t.join(60)
    assert codes == [0]

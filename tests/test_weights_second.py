"""Second look at finding, downloading, caching and safely loading weights.

Downloads run against a server bound to 127.0.0.1 that misbehaves on purpose: a 206 answer
that does not start where the resume asked, a 416 for a partial file longer than the remote
one, a redirect, a server that never answers. Then the search folders (an empty or relative
``XDG_CACHE_HOME``, a folder this user may not look into), the model cache (a file replaced by
one of the same size and time, a model folder rewritten in place, concurrent loads, memory
given back by ``clear``) and zip-format model files that would unpack to gigabytes.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import http.server
import os
import pathlib
import sys
import threading
import weakref
import zipfile
from pathlib import Path

import pytest
import torch

from rvcfast import cache, weights
from rvcfast.errors import ModelLoadError, WeightsNotFoundError
from rvcfast.safe_load import load_torch_file
from rvcfast.weights import DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD and honours Range, except:

    * ``/fromzero``: answers any Range with 206 and the whole file (``Content-Range: bytes 0-...``);
    * ``/frommiddle``: answers any Range with 206 and the bytes from 4096 on;
    * ``/redirect``: 302 to ``/file``;
    * ``/hang``: never answers (until the test ends).

    A Range that starts at or past the end gets 416 with ``Content-Range: bytes */<size>``.
    """

    protocol_version = "HTTP/1.1"
    state: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for k, v in {**headers, "Content-Length": str(len(body)), "Connection": "close"}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        path, rng = self.path, self.headers.get("Range")
        self.state["requests"].append((path, rng))
        size = len(PAYLOAD)
        if path == "/hang":
            self.state["stop"].wait(60)
            return
        if path == "/redirect":
            self._send(302, b"", {"Location": "/file"})
            return
        if not rng:
            self._send(200, PAYLOAD, {})
            return
        start = int(rng.split("=")[1].split("-")[0])
        if path == "/fromzero":
            start = 0
        elif path == "/frommiddle":
            start = 4096
        elif start >= size:
            self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            return
        self._send(206, PAYLOAD[start:], {"Content-Range": f"bytes {start}-{size - 1}/{size}"})


@pytest.fixture()
def server():
    _Handler.state = {"requests": [], "stop": threading.Event()}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.state["stop"].set()
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ resuming against odd servers


@pytest.mark.parametrize("sha256", [None, SHA], ids=["no-checksum", "checksum"])
def test_a_206_answer_from_the_first_byte_starts_over_instead_of_appending(server, tmp_path, sha256):
    """Asked to resume, the server sends the whole file as a 206: it is written from the start,
    not appended to the partial file (which gave a file 4 KiB too long, or a checksum failure)."""
    dest = tmp_path / "w.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:4096])
    out = weights.download(f"{server}/fromzero", dest, sha256=sha256)
    assert out.read_bytes() == PAYLOAD
    assert _Handler.state["requests"] == [("/fromzero", "bytes=4096-")]
    assert _leftovers(tmp_path) == ["w.bin"]


def test_a_206_answer_from_another_offset_is_refused_and_the_partial_file_dropped(server, tmp_path):
    dest = tmp_path / "w.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:1000])
    with pytest.raises(DownloadError) as info:
        weights.download(f"{server}/frommiddle", dest)
    msg = str(info.value)
    assert f"{server}/frommiddle" in msg and "from 1000" in msg and "from 4096" in msg, msg
    assert _leftovers(tmp_path) == []  # no finished file, no partial one with a hole in it
    # the next attempt starts over and gets the file
    assert weights.download(f"{server}/frommiddle", dest).read_bytes() == PAYLOAD


def test_a_partial_file_longer_than_the_remote_one_is_not_taken_for_complete(server, tmp_path):
    """A 416 (range not satisfiable) means 'complete' only when the remote size is the partial
    file's; a longer leftover (another file's bytes) is dropped and the file fetched again."""
    dest = tmp_path / "w.bin"
    Path(f"{dest}.part").write_bytes(b"x" * (len(PAYLOAD) + 500))
    out = weights.download(f"{server}/file", dest)
    assert out.read_bytes() == PAYLOAD
    assert [r[1] for r in _Handler.state["requests"]] == [f"bytes={len(PAYLOAD) + 500}-", None]
    assert _leftovers(tmp_path) == ["w.bin"]


def test_a_complete_partial_file_is_finished_without_fetching_it_again(server, tmp_path):
    dest = tmp_path / "w.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD)
    assert weights.download(f"{server}/file", dest, sha256=SHA).read_bytes() == PAYLOAD
    assert _Handler.state["requests"] == [("/file", f"bytes={len(PAYLOAD)}-")]


def test_a_resumed_download_follows_a_redirect_with_its_range(server, tmp_path):
    dest = tmp_path / "w.bin"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:1234])
    assert weights.download(f"{server}/redirect", dest, sha256=SHA).read_bytes() == PAYLOAD
    assert _Handler.state["requests"] == [("/redirect", "bytes=1234-"), ("/file", "bytes=1234-")]


def test_a_server_that_never_answers_times_out_with_one_clear_error(server, tmp_path):
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError) as info:
        weights.download(f"{server}/hang", dest, sha256=SHA, timeout=0.5)
    assert f"{server}/hang" in str(info.value) and "timed out" in str(info.value)
    assert _leftovers(tmp_path) == []  # no file, no partial file, no lock file


# ------------------------------------------------------------------ the local disk failing


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_reported_as_such_not_as_a_network_problem(tmp_path):
    """Writing the partial file fails with ENOSPC (the .part is a link to /dev/full): the error
    says the write failed and why; it used to say 'nothing was received: check the network'."""
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "w.bin"
    dest.parent.mkdir()
    os.symlink("/dev/full", f"{dest}.part")
    with pytest.raises(DownloadError) as info:
        weights.download(src.as_uri(), dest, sha256=SHA)
    msg = str(info.value)
    assert "cannot write" in msg and f"{dest}.part" in msg and os.strerror(errno.ENOSPC) in msg, msg
    assert "network" not in msg
    assert _leftovers(dest.parent) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fd's file through /proc")
def test_the_finished_download_is_on_disk_before_it_gets_its_name(tmp_path, monkeypatch):
    """Renamed without a flush, a crash soon after could leave an empty file under the final
    name, which the search then finds (rvcfast.atomic flushes every other file it writes)."""
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "w.bin"
    flushed: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append((os.readlink(f"/proc/self/fd/{fd}"), dest.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    weights.download(src.as_uri(), dest, sha256=SHA)
    assert (os.path.realpath(f"{dest}.part"), False) in flushed


# ------------------------------------------------------------------ search folders


@pytest.mark.skipif(sys.platform == "win32", reason="XDG_CACHE_HOME is a POSIX convention")
@pytest.mark.parametrize("value", ["", "relative/cache"])
def test_an_empty_or_relative_xdg_cache_home_counts_as_unset(value, tmp_path, monkeypatch):
    """The XDG specification: an empty or relative XDG_CACHE_HOME is ignored. An empty one put
    the cache (and downloads) in ./rvcfast of whatever the current folder was."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    monkeypatch.chdir(tmp_path)
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "rvcfast"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "rvcfast"


@pytest.fixture()
def no_entry(monkeypatch):
    """Make one folder behave as a folder this (non-root) user may not look into: every stat
    of a path inside it fails with EACCES (tests run as root, who may look anywhere)."""
    folders: list[Path] = []
    real_stat = pathlib.Path.stat

    def stat(self, *args, **kwargs):
        if any(self.is_relative_to(f) and self != f for f in folders):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    return folders


def test_a_search_folder_that_cannot_be_looked_into_is_passed_over(no_entry, tmp_path, monkeypatch):
    """RVCFAST_HOME pointing at another user's folder raised a bare PermissionError: now the cache
    is still searched, and the not-found error says which place could not be looked at."""
    home, cache_root = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    no_entry.append(home)
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_root))
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights("rmvpe")
    msg = str(info.value)
    assert f"{home / 'rmvpe.pt'} ({os.strerror(errno.EACCES)})" in msg, msg
    assert str(cache_root / "rvcfast" / "rmvpe.pt") in msg
    (cache_root / "rvcfast").mkdir(parents=True)
    (cache_root / "rvcfast" / "rmvpe.pt").write_bytes(b"x")
    assert weights.resolve_weights("rmvpe") == cache_root / "rvcfast" / "rmvpe.pt"
    assert weights.find_embedder("spin") is None


def test_downloading_into_a_folder_that_cannot_be_looked_into_is_a_download_error(no_entry, tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    no_entry.append(folder)
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    with pytest.raises(DownloadError) as info:
        weights.download(src.as_uri(), folder / "w.bin")
    assert str(folder) in str(info.value) and os.strerror(errno.EACCES) in str(info.value)


# ------------------------------------------------------------------ the model cache


@pytest.fixture()
def clean_cache():
    cache.clear()
    yield
    cache.clear()


def _reader(path: Path):
    def load() -> bytes:
        return path.read_bytes()

    return load


def test_a_file_renamed_over_with_the_same_size_and_time_is_loaded_again(clean_cache, tmp_path):
    """rsync -t, tar and cp -p keep the modification time; a same-size replacement kept the old
    model (the key was path, size and mtime only)."""
    f = tmp_path / "rmvpe.pt"
    f.write_bytes(b"AAAA")
    assert cache.get_or_load("t-replace", f, "cpu", torch.float32, _reader(f)) == b"AAAA"
    st = f.stat()
    new = tmp_path / "incoming"
    new.write_bytes(b"BBBB")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, f)
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert cache.get_or_load("t-replace", f, "cpu", torch.float32, _reader(f)) == b"BBBB"
    assert len([k for k in cache.cached_keys() if k[0] == "t-replace"]) == 1  # the old version dropped


def test_a_model_folder_rewritten_in_place_is_loaded_again(clean_cache, tmp_path):
    """A Hugging Face encoder folder is keyed by its files too: rewriting model.safetensors
    does not change the folder's own size or modification time."""
    folder = tmp_path / "contentvec"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights_file = folder / "model.safetensors"
    weights_file.write_bytes(b"version 1")
    before = folder.stat()
    assert cache.get_or_load("t-folder", folder, "cpu", torch.float32, _reader(weights_file)) == b"version 1"
    with open(weights_file, "r+b") as f:  # in place: same inode, the folder untouched
        f.write(b"VERSION 2")
    os.utime(weights_file, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert (folder.stat().st_mtime_ns, folder.stat().st_size) == (before.st_mtime_ns, before.st_size)
    assert cache.get_or_load("t-folder", folder, "cpu", torch.float32, _reader(weights_file)) == b"VERSION 2"


def test_the_same_file_by_two_spellings_is_one_model(clean_cache, tmp_path, monkeypatch):
    f = tmp_path / "enc.pt"
    f.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    first = cache.get_or_load("t-same", f, "cpu", torch.float32, lambda: object())
    monkeypatch.chdir(tmp_path)
    assert cache.get_or_load("t-same", "./sub/../enc.pt", "cpu", torch.float32, lambda: object()) is first
    assert cache.load_count("t-same") == 1


def test_concurrent_requests_for_one_model_load_it_once(clean_cache, tmp_path):
    f = tmp_path / "enc.pt"
    f.write_bytes(b"x")
    n = 6
    arrived = threading.Barrier(n)
    release = threading.Event()
    calls: list[int] = []
    got: list[object] = []

    def loader() -> object:
        calls.append(1)
        release.wait(30)  # the other threads arrive while this load is under way
        return object()

    def ask() -> None:
        arrived.wait(30)
        got.append(cache.get_or_load("t-threads", f, "cpu", torch.float32, loader))

    threads = [threading.Thread(target=ask) for _ in range(n)]
    for t in threads:
        t.start()
    while not calls:
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(got) == n and len({id(g) for g in got}) == 1


def test_clear_gives_the_models_back(clean_cache, tmp_path):
    class Model:
        pass

    f = tmp_path / "enc.pt"
    f.write_bytes(b"x")
    model = cache.get_or_load("t-clear", f, "cpu", torch.float32, Model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is not None  # the cache holds it
    cache.clear()
    gc.collect()
    assert ref() is None
    assert cache.load_count() == 0 and cache.cached_keys() == []


# ------------------------------------------------------------------ zip-format files that unpack to gigabytes


def _deflated_torch_file(path: Path, megabytes: int) -> Path:
    """A torch zip file whose one tensor (``w``, float32 zeros) is stored deflated: ``megabytes``
    MiB of data in a file a thousandth of that size. torch.load accepts it."""
    n = (megabytes << 20) // 4
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr(f"{path.stem}/data.pkl", _tensor_pickle(n))
        out.writestr(f"{path.stem}/byteorder", b"little")
        out.writestr(f"{path.stem}/version", b"3\n")
        with out.open(f"{path.stem}/data/0", "w", force_zip64=True) as w:
            block = bytes(1 << 20)
            for _ in range(megabytes):
                w.write(block)
    return path


def _tensor_pickle(n: int) -> bytes:
    """The data.pkl torch.save writes for ``{"w": <float32 tensor of n elements>}``."""
    import io
    import pickle

    class Persistent(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", n) if obj is marker else None

    marker = object()
    stream = io.BytesIO()

    class Rebuild:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (marker, 0, (n,), (1,), False, {}))

    Persistent(stream, protocol=2).dump({"w": Rebuild()})
    return stream.getvalue()


def test_a_small_deflated_torch_file_still_loads(tmp_path):
    loaded = load_torch_file(_deflated_torch_file(tmp_path / "small.pt", 1))
    assert loaded["w"].shape == ((1 << 20) // 4,) and not loaded["w"].any()


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path):
    """96 KiB of file unpacking to 96 MiB (the ratio a 100 MB file gives 100 GB with): it was
    loaded, the whole of it, and a larger one took the process's memory."""
    path = _deflated_torch_file(tmp_path / "bomb.pth", 96)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ModelLoadError) as info:
        load_torch_file(path, "voice model")
    msg = str(info.value)
    assert str(path) in msg and "unpack" in msg and "voice model" in msg, msg


# ------------------------------------------------------------------ an RVC WebUI or Applio install


def _hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"weights")
    return folder


@pytest.mark.parametrize("root", ["", "assets"], ids=["install", "its-assets-folder"])
def test_rvcfast_home_may_point_at_an_rvc_webui_install(root, tmp_path, monkeypatch):
    # before: only RVCFAST_HOME/hubert_base.pt and RVCFAST_HOME/rmvpe.pt were looked at
    webui = tmp_path / "RVC-WebUI"
    for rel in ("assets/hubert/hubert_base.pt", "assets/rmvpe/rmvpe.pt"):
        (webui / rel).parent.mkdir(parents=True, exist_ok=True)
        (webui / rel).write_bytes(b"x")
    home = webui / root if root else webui
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights.resolve_weights("hubert") == webui / "assets/hubert/hubert_base.pt"
    assert weights.resolve_weights("rmvpe") == webui / "assets/rmvpe/rmvpe.pt"


@pytest.mark.parametrize("root", ["", "rvc/models"], ids=["install", "its-models-folder"])
def test_rvcfast_home_may_point_at_an_applio_install(root, tmp_path, monkeypatch):
    # Applio has no hubert_base.pt: its ContentVec is a Hugging Face folder (the same network)
    applio = tmp_path / "Applio"
    (applio / "rvc/models/predictors").mkdir(parents=True)
    (applio / "rvc/models/predictors/rmvpe.pt").write_bytes(b"x")
    contentvec = _hf_folder(applio / "rvc/models/embedders/contentvec")
    spin = _hf_folder(applio / "rvc/models/embedders/spin")
    monkeypatch.setenv("RVCFAST_HOME", str(applio / root if root else applio))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights.resolve_weights("rmvpe") == applio / "rvc/models/predictors/rmvpe.pt"
    assert weights.resolve_weights("hubert") == contentvec
    assert weights.find_embedder("spin") == spin  # a voice trained with another Applio embedder


def test_a_hubert_base_file_comes_before_applios_contentvec_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _hf_folder(home / "embedders/contentvec")
    (home / "hubert_base.pt").write_bytes(b"x")
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights.resolve_weights("hubert") == home / "hubert_base.pt"
    (home / "hubert_base.pt").unlink()
    assert weights.resolve_weights("hubert") == home / "embedders/contentvec"
    (home / "embedders/contentvec/pytorch_model.bin").unlink()  # a folder without weights does not count
    with pytest.raises(WeightsNotFoundError, match=r"hubert_base\.pt\) not found.*RVC WebUI or Applio install's sub-folders"):
        weights.resolve_weights("hubert")

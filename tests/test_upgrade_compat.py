"""What earlier (or later) rvcfast versions left on disk, read by this one.

A user upgrades rvcfast, and torch with it, and keeps what the earlier version wrote: the
``rvcfast tune`` profile, the base weights in the cache (an empty file an earlier version's
crash could leave, a partial download of an earlier attempt) and a kept server spool folder.
Each is either used, or refused with a message naming the file and what to do: never a
traceback, never a tuned setting dropped without a word.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import warnings
from pathlib import Path

import pytest
import torch
from helpers import profile_entry, profile_file_fixture, write_profiles  # noqa: F401

from rvcfast import tuning, weights
from rvcfast.errors import ParameterError, WeightsNotFoundError
from rvcfast.tuning import Profile, load_profile, machine_id, save_profile


def _source() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuning.system_report("cpu")["settings"]["source"]


# ------------------------------------------------------------------------------------ the profile


def test_a_profile_measured_with_an_earlier_torch_is_ignored_with_a_note(profile_file: Path) -> None:
    """Upgrading rvcfast brings a new torch: the entry this CPU was tuned with no longer applies,
    and the run says so (it was dropped without a word: slower, or another precision, silently)."""
    here = machine_id("cpu")
    earlier = here.replace(f"| torch {torch.__version__} |", "| torch 1.13.1 |")
    assert earlier != here
    write_profiles(profile_file, profile_entry(machine=earlier, dtype="bfloat16", batch_seconds=30.0))
    with pytest.warns(RuntimeWarning, match=r"torch 1\.13\.1 .*run `rvcfast tune` again") as record:
        assert load_profile("cpu") is None
    assert str(profile_file) in str(record[0].message)
    source = _source()
    assert "torch 1.13.1" in source and "holds no profile" not in source


def test_a_profile_measured_with_other_usable_cores_says_so(profile_file: Path) -> None:
    """The same CPU with another core count (a container's ``--cpus``, a new affinity)."""
    here = machine_id("cpu")
    cores = int(here.split("] x")[1].split(" ")[0])
    write_profiles(profile_file, profile_entry(machine=here.replace(f"] x{cores} |", f"] x{cores + 62} |")))
    with pytest.warns(RuntimeWarning, match=f"{cores + 62} usable cores \\(here {cores}\\)"):
        assert load_profile("cpu") is None


def test_another_machines_entry_in_a_shared_file_stays_quiet(profile_file: Path) -> None:
    write_profiles(profile_file, profile_entry(machine="Some Other CPU [avx2] x64 | torch 1.0 | cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_profile("cpu") is None
    assert "holds no profile for this machine" in _source()


def test_a_later_rvcfast_s_trial_records_are_read(profile_file: Path) -> None:
    """A later version may record more about each measurement (a trial): the settings still apply
    (the whole entry was ignored with "Trial.__init__() got an unexpected keyword argument")."""
    trial = {"dtype": "float32", "threads": 1, "batch_seconds": 6.0, "seconds": 1.5, "peak_mb": 812}
    write_profiles(profile_file, profile_entry(compute_workers=1, trials=[trial]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile = load_profile("cpu")
    assert profile is not None and profile.batch_seconds == 8.0 and profile.trials[0].seconds == 1.5


def test_a_setting_this_version_does_not_know_is_named(profile_file: Path) -> None:
    """An unknown setting is not silently dropped (the others may depend on it); the warning names
    it in words, not as a Python TypeError."""
    write_profiles(profile_file, profile_entry(f0_threads=2))
    with pytest.warns(RuntimeWarning, match=r"fields this rvcfast does not know \('f0_threads'.*run `rvcfast tune` again") as record:
        assert load_profile("cpu") is None
    assert "__init__" not in str(record[0].message)


def test_an_entry_missing_a_setting_names_it(profile_file: Path) -> None:
    entry = profile_entry()
    del entry["dtype"]
    write_profiles(profile_file, entry)
    with pytest.warns(RuntimeWarning, match=r"lacks 'dtype': run `rvcfast tune` again"):
        assert load_profile("cpu") is None


@pytest.mark.parametrize(
    "content,says",
    [
        ('{"profiles": [{"machine": "x", "dty', "not valid JSON"),
        ("[" * 200_000, "nested too deeply"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=["truncated", "deeply-nested", "not-utf8"],
)
def test_a_damaged_profile_file_says_what_to_do(profile_file: Path, content, says: str) -> None:
    """Never a traceback (a deeply nested file raised RecursionError at every model load, and in
    `rvcfast tune` before and after its calibration); the warning says how to get a good file."""
    if isinstance(content, bytes):
        profile_file.write_bytes(content)
    else:
        profile_file.write_text(content)
    with pytest.warns(RuntimeWarning, match=f"{says}.*delete it .*run `rvcfast tune` again"):
        assert load_profile("cpu") is None
    assert says in _source()
    assert not tuning.is_profile_file(profile_file)
    with pytest.raises(ValueError, match="not an rvcfast profile file"):
        tuning.check_profile_target(profile_file)  # a file the user named is left as it is
    tuning.check_profile_target(profile_file, replace_invalid=True)  # rvcfast's own may be replaced...
    save_profile(Profile(**profile_entry()), profile_file)  # ...and is
    assert load_profile("cpu") is not None


# ------------------------------------------------------------------------------- the base weights

PAYLOAD = bytes(range(256)) * 256
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD, honouring Range; records each request's Range header."""

    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        start, rng = 0, self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.requests.append(rng)
        self.wfile.write(body)


@pytest.fixture()
def server():
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str) -> Path:
    """An empty ``rmvpe.pt`` in the user cache, as a crash just after a download could leave it with
    an earlier rvcfast; rmvpe is PAYLOAD, published at the test server."""
    monkeypatch.delenv("RVCFAST_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RVCFAST_URL_RMVPE", f"{server}/rmvpe.pt")
    monkeypatch.setitem(weights.KNOWN_WEIGHTS, "rmvpe", weights.BaseWeights("rmvpe", "rmvpe.pt", "unused", SHA, len(PAYLOAD), "RMVPE"))
    folder = tmp_path / "xdg" / "rvcfast"
    folder.mkdir(parents=True)
    (folder / "rmvpe.pt").write_bytes(b"")
    return folder


def test_an_empty_base_file_is_not_taken_for_the_weights(cache: Path) -> None:
    """It was found and failed every run ('file is empty'), and a first-use download kept it."""
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights("rmvpe")
    msg = str(info.value)
    assert f"{cache / 'rmvpe.pt'} is empty" in msg and "Get it with `rvcfast download" in msg, msg
    assert weights.find_weights("rmvpe") is None and weights.weights_status()["files"]["rmvpe.pt"] is None
    path = weights.resolve_weights("rmvpe", allow_download=True)
    assert path == cache / "rmvpe.pt" and path.read_bytes() == PAYLOAD  # downloaded over the empty file
    assert weights.resolve_weights("rmvpe") == path


def test_rvcfast_download_replaces_an_empty_file_without_force(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rvcfast download rmvpe` said the empty file was "already there" (use --force)."""
    from rvcfast.cli import main

    assert main(["download", "rmvpe", "--quiet"]) == 0
    assert (cache / "rmvpe.pt").read_bytes() == PAYLOAD
    assert "already there" not in capsys.readouterr().out
    assert main(["download", "rmvpe", "--quiet"]) == 0  # now complete: kept
    assert "already there" in capsys.readouterr().out


def test_an_empty_file_does_not_hide_a_good_copy_further_on(cache: Path, tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    (home / "assets" / "rmvpe").mkdir(parents=True)
    (home / "rmvpe.pt").write_bytes(b"")  # RVCFAST_HOME's own copy, empty
    (home / "assets" / "rmvpe" / "rmvpe.pt").write_bytes(PAYLOAD)  # an RVC WebUI install's, there too
    monkeypatch.setenv("RVCFAST_HOME", str(home))
    assert weights.resolve_weights("rmvpe") == home / "assets" / "rmvpe" / "rmvpe.pt"


def test_a_partial_download_of_other_bytes_starts_over_once(server: str, tmp_path: Path) -> None:
    """The bytes an earlier attempt left (from an earlier mirror, say) made the resumed download
    fail its checksum, and the user had to run it again; it now starts over from the first byte."""
    dest = tmp_path / "w.bin"
    Path(f"{dest}.part").write_bytes(b"not these bytes" * 100)
    assert weights.download(f"{server}/w.bin", dest, sha256=SHA).read_bytes() == PAYLOAD
    assert _Handler.requests == [f"bytes={len(b'not these bytes') * 100}-", None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


def test_a_fresh_download_that_fails_its_checksum_is_not_fetched_twice(server: str, tmp_path: Path) -> None:
    with pytest.raises(weights.DownloadError, match="checksum mismatch"):
        weights.download(f"{server}/w.bin", tmp_path / "w.bin", sha256="0" * 64)
    assert _Handler.requests == [None] and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- a kept spool folder


@pytest.mark.parametrize("name", ["jobs", "uploads"])
def test_a_file_in_the_way_of_the_spool_folders_is_a_clear_error(tmp_path: Path, name: str) -> None:
    """A kept --jobs-dir holding a file where the server keeps a folder: FileExistsError's traceback."""
    from rvcfast.serve.jobs import make_spool

    (tmp_path / name).write_text("someone's notes")
    with pytest.raises(ParameterError, match=f"--jobs-dir: {tmp_path / name} is in the way"):
        make_spool(str(tmp_path))
    assert (tmp_path / name).read_text() == "someone's notes"


def test_a_lock_file_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    from rvcfast.serve.jobs import SpoolLock

    (tmp_path / ".rvcfast-serve.lock").mkdir()
    with pytest.raises(ParameterError, match="--jobs-dir .*cannot open its lock file"):
        SpoolLock(tmp_path)


def test_the_server_refuses_such_a_spool_folder_at_start(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from helpers import build_tiny_models

    from rvcfast.serve.config import ServeConfig
    from rvcfast.serve.state import ServerState

    models = build_tiny_models(tmp_path / "models")
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "jobs").write_text("x")
    config = ServeConfig(voices=(str(models.voice),), device="cpu", dtype="float32", jobs_dir=str(spool))
    with pytest.raises(ParameterError, match="is in the way"):
        ServerState(config)
    assert (spool / "jobs").read_text() == "x"

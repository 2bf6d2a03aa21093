"""Ray runner: each file converted once, and no output written over another row's input.

No cluster: the decoding stage runs in this process, ``ray.get`` as the identity and the
output claims held by a plain :class:`OutputClaims` (a retried task is the same call again).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
from helpers import names_file, tone

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray_helpers import no_cluster_fixture  # noqa: E402, F401


def _spec(out_dir: Path, **kw):
    from rvcfast.integrations.ray._stages import JobSpec, OutputClaims
    from rvcfast.params import ConversionParams

    claims = OutputClaims()
    return JobSpec(
        files=None, params=ConversionParams(), out_dir=str(out_dir), skip_existing=False,
        claims=SimpleNamespace(claim=SimpleNamespace(remote=claims.claim)), **kw,
    )


def _decode(spec, paths: list[str], outputs: list[str | None] | None = None) -> list[dict]:
    import pyarrow as pa

    from rvcfast.integrations.ray._stages import decode_audio

    columns = {"path": paths}
    if outputs is not None:
        columns["output_path"] = pa.array(outputs, pa.string())
    return decode_audio(pa.table(columns), spec).to_pylist()


def _inputs(folder: Path, *names: str) -> list[str]:
    folder.mkdir(exist_ok=True)
    for name in names:
        sf.write(folder / name, tone(0.3), 16000)
    return [str(folder / n) for n in names]


def test_an_output_that_is_another_rows_input_is_an_error_row(no_cluster, tmp_path):
    # A dataset's rows are named one by one (out_dir/<stem>.<format>): with out_dir the inputs'
    # folder, in/x.flac's output was in/x.wav, the input of another row, and it was written over it.
    wav, flac = _inputs(tmp_path / "in", "x.wav", "x.flac")
    spec = _spec(tmp_path / "in")
    rows = _decode(spec, [flac, wav])  # one batch
    by_path = {r["path"]: r for r in rows}
    assert by_path[flac]["status"] == "error" and names_file(by_path[flac]["error"], flac)
    assert f"is the input {wav} of this job" in by_path[flac]["error"]
    assert by_path[wav]["status"] == "pending"  # the input itself converts (to x_rvc.wav)
    assert not names_file(by_path[wav]["output_path"], wav)

    # an output_path column naming another row's input: refused the same way
    spec = _spec(tmp_path / "out")
    rows = _decode(spec, [flac, wav], [wav, str(tmp_path / "out" / "y.wav")])
    assert [r["status"] for r in rows] == ["error", "pending"] and "refusing to write over an input" in rows[0]["error"]
    again = _decode(spec, [flac, wav], [wav, str(tmp_path / "out" / "y.wav")])  # a retried task: the same rows
    assert [(r["status"], r["error"]) for r in again] == [(r["status"], r["error"]) for r in rows]


def test_an_input_another_batch_already_claimed_as_its_output_is_not_converted(no_cluster, tmp_path):
    # the writer's batch came first: the later row's input is being replaced by that output, so
    # converting it would convert the other file's output (or a file half gone); an error row naming both
    wav, flac = _inputs(tmp_path / "in", "x.wav", "x.flac")
    spec = _spec(tmp_path / "in")
    [first] = _decode(spec, [flac])
    assert first["status"] == "pending" and first["output_path"] == wav
    [later] = _decode(spec, [wav])
    assert later["status"] == "error" and names_file(later["error"], wav) and f"is the output of {flac}" in later["error"]
    assert _decode(spec, [flac])[0]["status"] == "pending"  # the writer's retried task: the same row


def test_rows_whose_outputs_are_no_input_convert_as_before(no_cluster, tmp_path):
    a, b = _inputs(tmp_path / "in", "a.wav", "b.flac")
    spec = _spec(tmp_path / "out")
    rows = _decode(spec, [a, b])
    assert [(r["status"], Path(r["output_path"]).name) for r in rows] == [("pending", "a.wav"), ("pending", "b.wav")]
    assert [r["status"] for r in _decode(spec, [a])] == ["pending"]  # a retried task: the same row


def test_a_node_lost_while_cleaning_up_after_the_job_keeps_its_rows(no_cluster, monkeypatch, tmp_path):
    # After every file was converted, convert_files removes the temporary files that killed writers
    # left, with a task on every node when another host left one: a node gone by then raised out of
    # convert_files, and the job's rows and manifest were lost.
    from rvcfast.integrations.ray import _job

    out = tmp_path / "out"
    out.mkdir()
    part = out / ".a.wav.otherhost~123~abc.part"  # left by a writer killed on another host
    part.write_bytes(b"RIFF")

    class Gone(ray.exceptions.RaySystemError):
        pass

    def lost(refs):
        raise Gone(f"the node of {refs} died")

    task = SimpleNamespace(options=lambda **_: SimpleNamespace(remote=lambda *a: "ref"))
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "ab" * 28, "Alive": True}])
    monkeypatch.setattr(ray, "remote", lambda **_: lambda fn: task)
    monkeypatch.setattr(ray, "get", lost)
    with pytest.warns(RuntimeWarning, match="could not be removed on every node"):
        _job._clean_parts_everywhere(out, [str(out)])
    assert part.exists()  # another host's: left for that host (the next run)


def test_an_upload_that_fails_half_way_leaves_no_partial_object(tmp_path):
    # put() wrote the whole output in one stream; when the connection broke half-way the stream
    # was dropped unclosed, and pyarrow closes it then: the parts sent so far became the object,
    # a cut-short output (or manifest) at its final key, skipped by the next resume.
    from pyarrow import fs as pafs

    from rvcfast.integrations.ray import _storage

    (tmp_path / "bucket" / "out").mkdir(parents=True)
    local = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())

    class Broken:
        """An output stream whose connection breaks after half the data."""

        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            self.stream.write(data[: len(data) // 2])
            raise OSError("connection reset by peer")

        def close(self):
            self.stream.close()

        def __del__(self):  # as pyarrow's own streams: closed (the upload completed) when dropped
            self.stream.close()

    class Flaky:
        def open_output_stream(self, path):
            return Broken(local.open_output_stream(path))

        def delete_file(self, path):
            local.delete_file(path)

        def get_file_info(self, path):
            return local.get_file_info(path)

    with pytest.raises(OSError, match="connection reset"):
        _storage.put("s3://bucket/out/a.wav", b"RIFF" * 1000, Flaky())
    assert not (tmp_path / "bucket" / "out" / "a.wav").exists()
    _storage.put("s3://bucket/out/a.wav", b"RIFF" * 1000, local)  # a good upload: the whole object
    assert (tmp_path / "bucket" / "out" / "a.wav").read_bytes() == b"RIFF" * 1000


@pytest.mark.parametrize("close_fails", [False, True])
def test_a_failed_upload_never_leaves_a_partial_object_and_keeps_a_complete_one(tmp_path, close_fails):
    """Like an object store: a key changes only when its upload completes (on close), and a close
    after a failed write may complete the part sent. An output already there must stay as it was
    either way: writing to its key and deleting it after a failed write lost a complete earlier
    output."""
    from pyarrow import fs as pafs

    from rvcfast.integrations.ray import _storage

    local = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    target = tmp_path / "bucket" / "out" / "a.wav"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"OLD!" * 10)

    class Upload:
        def __init__(self, path):
            self.path, self.sent = path, b""

        def write(self, data):
            self.sent += data[: len(data) // 2]
            raise OSError("connection reset by peer")

        def close(self):
            if close_fails:
                raise OSError("the upload could not be completed")
            (tmp_path / self.path).write_bytes(self.sent)  # completed: the parts sent so far become the object

    class Store:
        def open_output_stream(self, path):
            return Upload(path)

        def __getattr__(self, name):  # get_file_info, move, delete_file: the local filesystem's
            return getattr(local, name)

    with pytest.raises(OSError, match="connection reset"):
        _storage.put("s3://bucket/out/a.wav", b"RIFF" * 1000, Store())
    assert target.read_bytes() == b"OLD!" * 10  # the earlier output stays, whole
    assert [p.name for p in target.parent.iterdir()] == ["a.wav"]  # and no temporary object is left


def test_a_dataset_row_never_writes_over_a_file_rvcfast_did_not_write(no_cluster, tmp_path):
    """The writer's batch came first: its output in/x.wav was claimed before the row of the input
    in/x.wav was seen, and the write replaced that input. A dataset's tasks cannot know every
    input, so a file there that rvcfast did not write is never written over."""
    import numpy as np

    from rvcfast.integrations.ray import _stages

    wav, flac = _inputs(tmp_path / "in", "x.wav", "x.flac")
    before = Path(wav).read_bytes()
    spec = _spec(tmp_path / "in")
    [first] = _decode(spec, [flac])
    assert first["status"] == "pending" and first["output_path"] == wav
    audio = np.zeros(4000, np.float32)
    _stages._write_row(first, audio, 40000, spec, _stages._CrashHook(None))
    assert first["status"] == "error" and "not written by rvcfast" in first["error"] and names_file(first["error"], flac)
    assert Path(wav).read_bytes() == before  # the input is untouched

    # an output rvcfast wrote (a rerun without skip_existing) is replaced as before
    spec = _spec(tmp_path / "out")
    [row] = _decode(spec, [wav])
    for _ in range(2):
        row["status"] = "pending"
        _stages._write_row(row, audio, 40000, spec, _stages._CrashHook(None))
        assert row["status"] != "error", row["error"]
    assert sf.info(row["output_path"]).frames == 4000

"""Ray runner rows: each file exactly once, one row per planned input, a bad row is its own error.

Most tests need no cluster: the decoding stage runs in this process with ``ray.get`` as the
identity and the output claims held by a plain :class:`OutputClaims`; the Ray task a batch
runs in is set by the test (a retried task keeps its id, another block is another task).
A local cluster (127.0.0.1, usage statistics off, no dashboard) checks the same through real
tasks and jobs.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
from helpers import names_file, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray_helpers import actors_wait, local_cluster, no_cluster_fixture  # noqa: E402, F401


def _claims():
    from rvcfast.integrations.ray._stages import OutputClaims

    claims = OutputClaims()
    return SimpleNamespace(claim=SimpleNamespace(remote=claims.claim))


def _spec(out_dir: Path, **kw):
    from rvcfast.integrations.ray._stages import JobSpec
    from rvcfast.params import ConversionParams

    kw.setdefault("claims", _claims())
    return JobSpec(files=None, params=ConversionParams(), out_dir=str(out_dir), skip_existing=False, **kw)


def _inputs(folder: Path, *names: str) -> list[str]:
    folder.mkdir(exist_ok=True)
    for name in names:
        sf.write(folder / name, tone(0.3), 16000)
    return [str(folder / n) for n in names]


def _batch(paths: list, outputs: list | None = None):
    import pyarrow as pa

    columns = {"path": pa.array(paths)}
    if outputs is not None:
        columns["output_path"] = pa.array(outputs)
    return pa.table(columns)


def _in_task(monkeypatch, task: str | None) -> None:
    """The decoding stages of this process run as Ray task ``task`` (a retry is the same task)."""
    from rvcfast.integrations.ray import _stages

    monkeypatch.setattr(_stages, "_task_id", lambda: task, raising=False)


# ------------------------------------------------------------------------------ a row repeated as it is


def test_a_row_repeated_in_another_block_is_skipped_and_a_retry_converts_again(no_cluster, monkeypatch, tmp_path):
    # Two blocks of a user's dataset holding the same row (path and output_path) both owned the
    # output: the claims could not tell the second from a retry, and the file was converted and
    # written twice, with two ok rows in the manifest.
    from rvcfast.integrations.ray._stages import decode_audio

    a, b = _inputs(tmp_path / "in", "a.wav", "b.wav")
    out_a, out_b = str(tmp_path / "out" / "a.wav"), str(tmp_path / "out" / "b.wav")
    spec = _spec(tmp_path / "out")

    def decoded(task, paths, outputs):
        _in_task(monkeypatch, task)
        return decode_audio(_batch(paths, outputs), spec).to_pylist()

    first = decoded("task-1", [a, b], [out_a, out_b])
    assert [r["status"] for r in first] == ["pending", "pending"]
    retried = decoded("task-1", [a, b], [out_a, out_b])  # Ray retries the task (or rebuilds its lost block)
    assert [r["status"] for r in retried] == ["pending", "pending"]
    [repeat] = decoded("task-2", [a], [out_a])  # the same row in another block
    assert repeat["status"] == "skipped" and repeat["prep"] is None and repeat["error"] is None  # not decoded
    assert "a repeat of an earlier row of this job" in repeat["warnings"] and names_file(repeat["warnings"], a)
    assert "converted" not in repeat["warnings"].split(";")[-1]  # it cannot know what became of the file
    assert decoded("task-2", [a], [out_a])[0]["status"] == "skipped"  # the repeat's own retry: still a repeat
    assert decoded("task-1", [a, b], [out_a, out_b])[0]["status"] == "pending"  # the first, retried again

    # named by stem (no output_path), and twice in one batch: converted once as well
    spec = _spec(tmp_path / "out2")
    rows = decoded("task-3", [a, a, b], None)
    assert [r["status"] for r in rows] == ["pending", "skipped", "pending"]
    assert [r["status"] for r in decoded("task-3", [a, a, b], None)] == ["pending", "skipped", "pending"]  # a retry
    assert [r["status"] for r in decoded("task-4", [b], None)] == ["skipped"]


def test_a_repeated_input_of_a_job_with_voices_is_skipped_for_every_voice(no_cluster, monkeypatch, tmp_path):
    from rvcfast.integrations.ray._voices import VoiceJob, decode_voices
    from rvcfast.params import ConversionParams

    a, b = _inputs(tmp_path / "in", "a.wav", "b.wav")
    jobs = tuple(VoiceJob(n, None, ConversionParams()) for n in ("alice", "bob"))
    spec = _spec(tmp_path / "out", voices=jobs, name_template="{voice}/{stem}")

    def entries(task, paths):
        _in_task(monkeypatch, task)
        return [(Path(e["path"]).name, e["voice"], e["status"]) for r in decode_voices(_batch(paths), spec).to_pylist()
                for e in json.loads(r["entries"])]

    assert entries("task-1", [a, b]) == [("a.wav", v, "pending") for v in ("alice", "bob")] + [
        ("b.wav", v, "pending") for v in ("alice", "bob")]
    assert entries("task-1", [a, b])[0][2] == "pending"  # a retry
    assert entries("task-2", [a]) == [("a.wav", "alice", "skipped"), ("a.wav", "bob", "skipped")]


@pytest.mark.ray
def test_a_retried_decoding_task_converts_again_and_another_task_repeating_the_row_does_not(tmp_path):
    """Through real Ray tasks: the task dies after claiming its outputs and Ray runs it again
    (same task id); another task holding the same row is a repeat."""
    from rvcfast.integrations.ray._stages import OutputClaims

    [a] = _inputs(tmp_path / "in", "a.wav")
    marker = str(tmp_path / "died")

    def decode_then_die(batch, spec, marker):
        from rvcfast.integrations.ray._stages import decode_audio

        rows = decode_audio(batch, spec).to_pylist()
        if marker is not None:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:  # the retry: the first attempt died after its claims
                pass
            else:
                os._exit(3)
        return [r["status"] for r in rows]

    with local_cluster():
        task = ray.remote(num_cpus=0, max_retries=2)(decode_then_die)
        spec = _spec(tmp_path / "out", claims=ray.remote(num_cpus=0)(OutputClaims).remote())
        batch = _batch([a], [str(tmp_path / "out" / "a.wav")])
        assert ray.get(task.remote(batch, spec, marker)) == ["pending"]  # retried: converts
        assert os.path.exists(marker)  # the first attempt did die
        assert ray.get(task.remote(batch, spec, None)) == ["skipped"]  # the same row in another block


# ------------------------------------------------------------------------------ values that are no path


def test_values_that_are_no_text_are_error_rows_and_the_other_rows_convert(no_cluster, tmp_path):
    # A dataset whose output_path (or path) column held ints, bytes or lists failed the whole batch
    # (an ArrowTypeError building its rows), or named "5: file does not exist" and claimed out/5.wav.
    import pyarrow as pa

    from rvcfast.integrations.ray._stages import decode_audio

    a, b = _inputs(tmp_path / "in", "a.wav", "b.wav")
    out = tmp_path / "out"
    cases = [
        (pa.array([a, b]), pa.array([5, None])),
        (pa.array([a, b]), pa.array([b"/x/a.wav", None])),
        (pa.array([a, b]), pa.array([["/x/a.wav"], None])),
        (pa.array([a, b]), pa.array([{"k": "/x/a.wav"}, None])),
        (pa.array([a, b]), pa.array(["", None])),
    ]
    for paths, outputs in cases:
        rows = decode_audio(pa.table({"path": paths, "output_path": outputs}), _spec(out)).to_pylist()
        bad, good = rows
        assert bad["status"] == "error" and names_file(bad["error"], a) and "output_path" in bad["error"], bad
        assert bad["output_path"] is None and bad["prep"] is None
        assert good["status"] == "pending" and good["output_path"] == str(out / "b.wav")  # null: named by stem
    [row] = decode_audio(pa.table({"path": [a], "output_path": pa.array([7])}), _spec(out)).to_pylist()
    assert "its output_path 7 is of type int, not text" in row["error"]

    spec = _spec(out)
    rows = decode_audio(pa.table({"path": pa.array([5, None])}), spec).to_pylist()
    assert [r["status"] for r in rows] == ["error", "error"]
    assert rows[0]["path"] == "5" and rows[0]["error"].startswith("5: this path is of type int, not text")
    assert rows[1]["path"] is None and "it has no path" in rows[1]["error"]
    [empty] = decode_audio(pa.table({"path": [" "]}), spec).to_pylist()
    assert empty["status"] == "error" and empty["error"] == "a row of the dataset: this path is empty"
    assert rows[0]["output_path"] is None  # no out/5.wav named, nor claimed: a row of a file 5.wav may have it
    [five] = _inputs(tmp_path / "in", "5.wav")
    assert decode_audio(_batch([five]), spec).to_pylist()[0]["status"] == "pending"

    with pytest.raises(Exception, match="needs a 'path' column"):
        decode_audio(pa.table({"file": [a]}), _spec(out))


def test_a_relative_output_path_is_an_error_row_and_nothing_is_planned_under_the_workers_folder(no_cluster, tmp_path, monkeypatch):
    # A relative output_path was written under the working directory of whichever worker ran the
    # row; Ray Data 2.40 and older hand a number in a column of text over as text, so an
    # output_path of 5 became a file ./5 beside the worker (a converted row, status ok).
    import pyarrow as pa

    from rvcfast.integrations.ray._stages import decode_audio

    a, b = _inputs(tmp_path / "in", "a.wav", "b.wav")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    for relative in ("5", "x.wav", "sub/x.wav", "./x.wav"):
        bad, good = decode_audio(pa.table({"path": [a, b], "output_path": [relative, str(out / "b.wav")]}), _spec(out)).to_pylist()
        assert bad["status"] == "error" and bad["output_path"] is None and bad["prep"] is None, bad
        assert names_file(bad["error"], a) and f"its output_path {relative} is a relative path" in bad["error"], bad["error"]
        assert good["status"] == "pending" and good["output_path"] == str(out / "b.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_path_that_is_no_text_is_an_error_row_for_every_voice(no_cluster, tmp_path):
    import pyarrow as pa

    from rvcfast.integrations.ray._voices import VoiceJob, decode_voices
    from rvcfast.params import ConversionParams

    [a] = _inputs(tmp_path / "in", "a.wav")
    jobs = tuple(VoiceJob(n, None, ConversionParams()) for n in ("alice", "bob"))
    spec = _spec(tmp_path / "out", voices=jobs, name_template="{voice}/{stem}")
    rows = decode_voices(pa.table({"path": pa.array([a.encode(), None], pa.binary())}), spec).to_pylist()
    assert [r["prep"] for r in rows] == [None, None] and rows[0]["path"] == repr(a.encode())
    bad, null = ([e for e in json.loads(r["entries"])] for r in rows)
    assert [(e["voice"], e["status"]) for e in bad + null] == [("alice", "error"), ("bob", "error")] * 2
    assert all("this path is of type bytes, not text" in e["error"] for e in bad)
    assert all("it has no path" in e["error"] for e in null)
    [good] = decode_voices(_batch([a]), spec).to_pylist()  # the file itself: no output was claimed for it
    assert [e["status"] for e in json.loads(good["entries"])] == ["pending", "pending"]


# ------------------------------------------------------------------------------ one row per planned input


def _planned(tmp_path: Path, names=("a", "b", "c")) -> list[dict[str, str]]:
    return [{"path": str(tmp_path / f"{n}.wav"), "output_path": str(tmp_path / "out" / f"{n}.wav")} for n in names]


def test_a_lost_row_becomes_an_error_row_and_a_duplicate_is_dropped(tmp_path):
    from rvcfast.integrations.ray._rows import one_per_input
    from rvcfast.integrations.ray._stages import ROW_SCHEMA

    items = _planned(tmp_path)
    a, b, c = ({**item, "status": "ok", "error": None} for item in items)
    stray = {"path": str(tmp_path / "other.wav"), "status": "ok"}
    with pytest.warns(RuntimeWarning, match="gave back 3 row"):
        rows = one_per_input(items, [c, {**a, "status": "error", "error": "lost worker"}, a, stray, {**a, "status": "skipped"}])
    assert [r["path"] for r in rows] == [i["path"] for i in items]  # one each, in the plan's order
    assert rows[0] is a and rows[2] is c  # of a's three rows, the ok one
    assert rows[1]["status"] == "error" and rows[1]["output_path"] == b["output_path"]
    assert "no result came back from the cluster for this file" in rows[1]["error"] and names_file(rows[1]["error"], b["path"])
    assert set(rows[1]) == set(ROW_SCHEMA.names)


def test_a_repeat_of_a_row_that_failed_does_not_hide_the_failure(tmp_path):
    # Of an error row and the skipped row of its repeat, the skipped one was kept ("got further"):
    # a file that failed read as done; the repeat's warning said it was "converted once".
    from rvcfast.integrations.ray._rows import one_per_input
    from rvcfast.integrations.ray._schema import REPEAT_NOTE

    items = _planned(tmp_path, ("a", "b"))
    a, b = items
    failed = {**a, "status": "error", "error": f"{a['path']}: cannot decode"}
    repeat = {**a, "status": "skipped", "error": None, "warnings": f"{a['path']}: {REPEAT_NOTE} (...)"}
    exists = {**b, "status": "skipped", "error": None, "warnings": ""}  # skip_existing: its output is there
    with pytest.warns(RuntimeWarning, match="gave back 2 row"):
        rows = one_per_input(items, [repeat, failed, exists, {**b, "status": "error", "error": "a stale copy"}])
    assert rows[0] is failed and rows[1] is exists
    with pytest.warns(RuntimeWarning, match="gave back 1 row"):
        assert one_per_input(items[:1], [{**a, "status": "ok"}, repeat])[0]["status"] == "ok"


def test_a_lost_row_of_one_voice_is_that_voices_error_row(tmp_path):
    from rvcfast.integrations.ray._rows import one_per_input
    from rvcfast.integrations.ray._stages import VOICE_ROW_SCHEMA

    items = [{"path": str(tmp_path / f"{n}.wav"),
              "voice_outputs": json.dumps([str(tmp_path / v / f"{n}.wav") for v in ("alice", "bob")])} for n in ("a", "b")]
    back = [{"path": str(tmp_path / f"{n}.wav"), "voice": v, "status": "ok"} for n in ("b", "a") for v in ("bob", "alice")]
    rows = one_per_input(items, back[1:], ["alice", "bob"])  # b's bob row lost
    assert [(Path(r["path"]).stem, r["voice"], r["status"]) for r in rows] == [
        ("a", "alice", "ok"), ("a", "bob", "ok"), ("b", "alice", "ok"), ("b", "bob", "error")]
    assert rows[3]["output_path"] == str(tmp_path / "bob" / "b.wav") and "(voice 'bob')" in rows[3]["error"]
    assert set(rows[3]) == set(VOICE_ROW_SCHEMA.names)


# ------------------------------------------------------------------------------ through a cluster


def _keeps_mixed_values() -> bool:
    """Whether this Ray Data keeps a column of text and numbers as they are (Python objects; an
    older one turns the numbers into text, so no job can tell a number given as a path)."""
    return ray.data.from_items([{"v": "a"}, {"v": 5}], override_num_blocks=1).take_all()[1]["v"] == 5


@pytest.mark.ray
class TestJobs:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def cluster(cls):
        with local_cluster(), actors_wait(60):  # nothing can hang
            yield

    @staticmethod
    def _options(tiny_models, **extra):
        return dict(
            index=tiny_models.index, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
            threads_per_worker=1, num_workers=1, noise=False, **extra,
        )

    def test_convert_files_has_one_row_per_input_whatever_the_pipeline_gives_back(self, tiny_models, tmp_path, monkeypatch):
        # The driver trusted the pipeline: a row lost on the way was missing from the rows and the
        # manifest, and a row given back twice was listed twice.
        from rvcfast.integrations.ray import convert_files

        a, b, c = _inputs(tmp_path / "in", "a.wav", "b.wav", "c.wav")
        real = ray.data.Dataset.iter_rows

        def lossy(self, *args, **kwargs):
            rows = [dict(r) for r in real(self, *args, **kwargs)]
            first_a = next(r for r in rows if r["path"] == a)
            return iter([{**first_a, "status": "error", "error": "a stale copy"}] + [r for r in rows if r["path"] != b])

        monkeypatch.setattr(ray.data.Dataset, "iter_rows", lossy)
        out = tmp_path / "out"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = convert_files(tmp_path / "in", out, tiny_models.voice, progress=False, **self._options(tiny_models))
        assert [(Path(r["path"]).name, r["status"]) for r in rows] == [("a.wav", "ok"), ("b.wav", "error"), ("c.wav", "ok")]
        assert rows[1]["error"].startswith(f"{b}: no result came back from the cluster")
        manifest = [json.loads(line) for line in (out / "rvcfast-manifest.jsonl").read_text().splitlines()]
        assert manifest == rows
        assert any("gave back 1 row(s) twice or for no planned file" in str(w.message) for w in caught)

    def test_a_dataset_converts_a_repeated_row_once_and_bad_values_are_error_rows(self, tiny_models, tmp_path):
        # A repeated row in another block converted twice; a block whose output_path was an int
        # (or path not text) failed the whole job.
        from rvcfast.integrations.ray import convert_dataset

        a, c = _inputs(tmp_path / "in", "a.wav", "c.wav")
        out = tmp_path / "out"
        items = [
            {"path": a, "output_path": str(out / "a.wav")},
            {"path": c, "output_path": 5},
            {"path": a, "output_path": str(out / "a.wav")},
            {"path": 7, "output_path": str(out / "x.wav")},
            {"path": c, "output_path": str(out / "c.wav")},
        ]
        # blocks of mixed values (Python objects) and of one type each (text in one, ints in another)
        ds = ray.data.from_items(items, override_num_blocks=3)
        if not _keeps_mixed_values():  # an older Ray Data turns the numbers to text: blocks of one type each
            import pyarrow as pa

            ds = ray.data.from_arrow([
                pa.table({"path": [a], "output_path": [str(out / "a.wav")]}),
                pa.table({"path": [c], "output_path": pa.array([5], pa.int64())}),
                pa.table({"path": pa.array([7], pa.int64()), "output_path": [str(out / "x.wav")]}),
                pa.table({"path": [a, c], "output_path": [str(out / "a.wav"), str(out / "c.wav")]}),
            ])
        rows = convert_dataset(ds, tiny_models.voice, out, skip_existing=False, **self._options(tiny_models)).take_all()
        got = sorted((str(r["path"]), str(r["output_path"]), r["status"]) for r in rows)
        assert got == sorted([
            (a, str(out / "a.wav"), "ok"), (a, str(out / "a.wav"), "skipped"), (c, "None", "error"), ("7", "None", "error"),
            (c, str(out / "c.wav"), "ok"),
        ]), got
        errors = {r["path"]: r["error"] for r in rows if r["status"] == "error"}
        assert "its output_path 5 is of type int, not text" in errors[c] and names_file(errors[c], c)
        assert errors["7"].startswith("7: this path is of type int, not text")
        assert sorted(p.name for p in out.iterdir()) == ["a.wav", "c.wav"]

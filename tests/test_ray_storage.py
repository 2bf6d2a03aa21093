"""The Ray runner with its files on object storage (docs/scale-out.md, "Files on object storage").

An S3 server of moto on 127.0.0.1 (its bucket versioned, so every object ever written is seen)
and one local Ray cluster whose workers inherit the server's address and dummy credentials:

* ``s3://`` in, ``s3://`` out: the outputs equal a local conversion (seeded, one thread) sample
  for sample, a bad file is an error row naming its URI, the manifest is an object; a resumed
  job converts only the missing output; no object ever had another name than an input's, an
  output's or the manifest's (but the manifest's temporary key, replacing it, gone after), and
  no input was ever written; a failed upload leaves the key as it was;
* a ``ray.data.Dataset`` of URIs with ``filesystem=`` given; ``rvcfast convert --ray`` with
  URIs, and without ``--ray`` a usage error;
* an unknown scheme, a missing bucket, a model given as a URI, local paths mixed with URIs:
  refused on the driver before any model is read.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from helpers import cli_weights, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")
pytest.importorskip("moto.server", reason='the S3 tests need moto\'s server (pip install "moto[server]>=5.2.6")')
pytest.importorskip("boto3", reason="the S3 tests read the bucket's object versions with boto3 (a dependency of moto)")
from pyarrow import fs as pafs  # noqa: E402
from ray_helpers import local_cluster, no_cluster_fixture  # noqa: E402, F401

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BUCKET = "rvc-test"


class Store:
    """The S3 server, its bucket and a client of each kind."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        self.fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing", region="us-east-1")
        self.boto = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.boto.create_bucket(Bucket=BUCKET)
        self.boto.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

    def put(self, key: str, data: bytes) -> str:
        with self.fs.open_output_stream(f"{BUCKET}/{key}") as f:
            f.write(data)
        return f"s3://{BUCKET}/{key}"

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{BUCKET}/{key}") as f:
            return f.read()

    def keys(self, prefix: str) -> set[str]:
        found = self.fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
        return {f.path[len(BUCKET) + 1:] for f in found if f.type == pafs.FileType.File}

    def versions(self, prefix: str) -> dict[str, int]:
        """Every key ever written under ``prefix`` (deleted ones too), with its number of versions."""
        listed = self.boto.list_object_versions(Bucket=BUCKET, Prefix=prefix)
        counts: dict[str, int] = {}
        for v in listed.get("Versions", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
        return counts


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:  # before ray.init: the local workers inherit them
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(name, value)
        try:
            yield Store(endpoint)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def cluster(store: Store) -> Iterator[None]:
    with local_cluster():
        yield


def _engine(tiny_models: Any) -> dict[str, Any]:
    return {"encoder": tiny_models.encoder, "f0_weights": tiny_models.rmvpe, "device": "cpu"}


def _wav(seconds: float, rate: int, freq: float, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, rate, freq), rate, format=fmt)
    return buf.getvalue()


def _samples(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def test_s3_in_s3_out_equals_local_then_resumes_only_the_missing(
    store: Store, cluster: None, tiny_models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvcfast.integrations.ray import convert_files
    from rvcfast.integrations.ray._stages import CRASH_ENV

    local = {"a.wav": _wav(1.0, 44100, 190), "sub/b.flac": _wav(0.8, 16000, 230, "FLAC")}
    inputs = {name: store.put(f"in/{name}", data) for name, data in local.items()}
    bad = store.put("in/bad.wav", b"RIFF this is not audio at all")
    for name, data in local.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    kw = dict(index=tiny_models.index, **_engine(tiny_models), threads_per_worker=1, num_workers=1, seed=5, subtype="FLOAT",
              progress=False, recursive=True)

    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(marker))  # the worker dies in the middle of encoding its second output
    rows = convert_files(f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out/", tiny_models.voice, skip_existing=False, **kw)
    monkeypatch.delenv(CRASH_ENV)
    assert marker.exists()  # it did die; its actor restarted and wrote that output whole
    by_path = {r["path"]: r for r in rows}
    assert [by_path[inputs[n]]["status"] for n in local] == ["ok", "ok"], rows
    assert by_path[bad]["status"] == "error" and bad in by_path[bad]["error"], by_path[bad]
    assert "/tmp" not in by_path[bad]["error"]  # the URI, not the worker's temporary copy
    assert {by_path[inputs[n]]["output_path"] for n in local} == {f"s3://{BUCKET}/out/a.wav", f"s3://{BUCKET}/out/b.wav"}
    conv = tiny_models.converter()
    for name in local:  # seeded, one thread as the worker: sample for sample
        expected = conv.convert(tmp_path / name, seed=5).audio
        assert np.array_equal(_samples(store.get(f"out/{Path(name).stem}.wav")), expected), name
    manifest = [json.loads(line) for line in store.get("out/rvcfast-manifest.jsonl").decode().splitlines()]
    assert sorted(r["path"] for r in manifest) == sorted([*inputs.values(), bad])

    # resume: one output removed, the job run again converts that one alone
    store.boto.delete_object(Bucket=BUCKET, Key="out/a.wav")  # (pyarrow's delete_file leaves an "out/" marker)
    again = convert_files(f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out/", tiny_models.voice, skip_existing=True, **kw)
    status = {r["path"]: r["status"] for r in again}
    assert status == {inputs["a.wav"]: "ok", inputs["sub/b.flac"]: "skipped", bad: "error"}, again
    assert np.array_equal(_samples(store.get("out/a.wav")), conv.convert(tmp_path / "a.wav", seed=5).audio)

    # every object ever written: inputs once each, outputs under their final names, the manifest
    # (replaced through a hidden temporary key beside it, which is gone)
    assert store.versions("in/") == {"in/a.wav": 1, "in/sub/b.flac": 1, "in/bad.wav": 1}
    written = store.versions("out/")
    written.pop("out/", None)  # the empty folder marker pyarrow writes when it deletes a key (the temporary one)
    [temporary] = set(written) - {"out/a.wav", "out/b.wav", "out/rvcfast-manifest.jsonl"}
    assert temporary.startswith("out/.rvcfast-manifest.jsonl.") and temporary.endswith(".part"), written
    assert written == {"out/a.wav": 2, "out/b.wav": 1, "out/rvcfast-manifest.jsonl": 2, temporary: 1}
    assert store.keys("out/") == {"out/a.wav", "out/b.wav", "out/rvcfast-manifest.jsonl"}


def test_a_dataset_of_uris_with_a_given_filesystem(store: Store, cluster: None, tiny_models: Any) -> None:
    """convert_dataset takes a Ray Dataset whose paths are URIs and a pyarrow filesystem (as Ray
    Data's readers do): outputs named out/<stem>.wav in the tasks, never the input's key."""
    from rvcfast.integrations.ray import convert_dataset

    clip = store.put("ds/c.wav", _wav(0.6, 16000, 200))
    same = store.put("ds-out/d.wav", _wav(0.6, 16000, 210))  # an input inside the output prefix, named as its output
    given = pafs.S3FileSystem(endpoint_override=store.endpoint, access_key="testing", secret_key="testing", region="us-east-1")
    ds = ray.data.from_items([{"path": clip}, {"path": same}])
    rows = convert_dataset(ds, tiny_models.voice, f"s3://{BUCKET}/ds-out", **_engine(tiny_models), num_workers=1,
                           filesystem=given, seed=1).take_all()
    by_path = {r["path"]: r for r in rows}
    assert by_path[clip]["status"] == "ok" and by_path[clip]["output_path"] == f"s3://{BUCKET}/ds-out/c.wav"
    assert by_path[same]["status"] == "error" and "refusing to overwrite an input" in by_path[same]["error"]
    assert sf.info(io.BytesIO(store.get("ds-out/c.wav"))).samplerate == 40000
    assert store.versions("ds-out/d.wav") == {"ds-out/d.wav": 1}


def test_two_voices_on_object_storage(store: Store, cluster: None, tiny_models: Any) -> None:
    from rvcfast.integrations.ray import convert_files

    clip = store.put("v-in/g.wav", _wav(0.6, 16000, 190))
    rows = convert_files([clip], f"s3://{BUCKET}/v-out", voices={"low": tiny_models.voice, "high": tiny_models.voice},
                         voice_params={"high": {"pitch": 3}}, num_workers=1, progress=False, seed=1, **_engine(tiny_models))
    assert [(r["voice"], r["status"], r["output_path"]) for r in rows] == [
        ("low", "ok", f"s3://{BUCKET}/v-out/low/g.wav"), ("high", "ok", f"s3://{BUCKET}/v-out/high/g.wav"),
    ], rows
    assert store.keys("v-out/") == {"v-out/low/g.wav", "v-out/high/g.wav", "v-out/rvcfast-manifest.jsonl"}
    assert not np.array_equal(_samples(store.get("v-out/low/g.wav")), _samples(store.get("v-out/high/g.wav")))


def test_cli_ray_with_uris_and_without_ray_a_usage_error(
    store: Store, cluster: None, tiny_models: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from rvcfast.cli import main

    clip = store.put("cli-in/e.wav", _wav(0.6, 16000, 180))
    args = ["convert", str(tiny_models.voice), clip, "-o", f"s3://{BUCKET}/cli-out/", *cli_weights(tiny_models)]
    assert main([*args, "--ray", "-q"]) == 0, capsys.readouterr().err
    assert store.keys("cli-out/") == {"cli-out/e.wav", "cli-out/rvcfast-manifest.jsonl"}
    assert main(args) == 2  # without --ray: a usage error, not "file does not exist" for "s3:/..."
    err = capsys.readouterr().err
    assert "need --ray" in err and clip in err, err


def test_bad_storage_is_refused_before_any_model_is_read(
    store: Store, tiny_models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvcfast.errors import ParameterError, RvcfastError
    from rvcfast.integrations.ray import _job, convert_dataset, convert_files

    def no_models(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was read before the storage was checked")

    monkeypatch.setattr(_job, "_checked", no_models)
    clip = store.put("x/f.wav", _wav(0.3, 16000, 200))
    kw = dict(progress=False, **_engine(tiny_models))
    with pytest.raises(ParameterError, match=r"nosuch://bucket/in.*filesystem cannot be opened"):
        convert_files("nosuch://bucket/in/a.wav", f"s3://{BUCKET}/o/", tiny_models.voice, **kw)
    with pytest.raises(RvcfastError, match=r"out_dir s3://no-such-bucket/out.*'no-such-bucket' does not exist"):
        convert_files(clip, "s3://no-such-bucket/out/", tiny_models.voice, **kw)
    with pytest.raises(RvcfastError, match=r"input s3://no-such-bucket/in/a.wav.*does not exist"):
        convert_dataset(["s3://no-such-bucket/in/a.wav"], tiny_models.voice, f"s3://{BUCKET}/o/", **_engine(tiny_models))
    with pytest.raises(ParameterError, match=r"index='s3://.*local paths"):
        convert_files(clip, f"s3://{BUCKET}/o/", tiny_models.voice, index=f"s3://{BUCKET}/v.index", **kw)
    with pytest.raises(ParameterError, match="all on object storage"):
        convert_files([clip, str(tmp_path / "a.wav")], f"s3://{BUCKET}/o/", tiny_models.voice, **kw)
    with pytest.raises(ParameterError, match=r"out_dir s3://rvc-test/x/f.wav is an object"):
        convert_files(clip, clip, tiny_models.voice, **kw)
    assert store.keys("o/") == set()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "m4a"])
def test_resuming_reads_an_rvcfast_output_at_its_two_ends_not_whole(store: Store, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """A resumed job downloaded every existing output whole (on the driver, to name, and on the
    workers, to skip): gigabytes for a big job. An output rvcfast wrote records its input near
    its start (near its end for m4a): two ranged reads tell; only another program's object is
    still fetched and checked whole."""
    from rvcfast.integrations.ray import _storage

    source = f"s3://{BUCKET}/ends/in/take.wav"
    data = _storage.encode(tone(8.0, rate=40000), 40000, fmt, None, None, source, f"take.{fmt}")
    assert len(data) > 2 * _storage._END_BYTES or fmt != "wav"  # the wav's middle is never read
    ours = store.put(f"ends/out/take.{fmt}", data)

    def whole(*args: Any) -> Any:
        raise AssertionError("an output rvcfast wrote was fetched whole")

    with monkeypatch.context() as mp:
        mp.setattr(_storage, "_spooled", whole)
        assert _storage._look_at(ours, None) == (True, _storage.source_id(source))
    # another program's file records nothing: fetched and checked as a local file is
    buf = io.BytesIO()
    sf.write(buf, tone(1.0), 16000, format="WAV")
    theirs = store.put(f"ends/out/theirs_{fmt}.wav", buf.getvalue())
    cut = store.put(f"ends/out/cut_{fmt}.wav", buf.getvalue()[: len(buf.getvalue()) // 2])
    assert _storage._look_at(theirs, None) == (True, None)
    assert _storage._look_at(cut, None) == (False, None)
    assert _storage._look_at(f"s3://{BUCKET}/ends/out/none.{fmt}", None) == (False, None)


def test_a_key_with_a_hash_or_a_question_mark_is_an_input_like_any_other(store: Store) -> None:
    """"take #2.wav" in a listed prefix was refused as "options in a URI are not taken"."""
    from rvcfast.integrations.ray import _storage, _storage_plan

    buf = io.BytesIO()
    sf.write(buf, tone(0.5), 16000, format="WAV")
    for name in ("take #2.wav", "why?.wav", "plain.wav"):
        store.put(f"odd/in/{name}", buf.getvalue())
    listed = _storage_plan.list_inputs(f"s3://{BUCKET}/odd/in/", f"s3://{BUCKET}/odd/out/", "wav", False, False, None)
    assert sorted(u.rsplit("/", 1)[1] for u in listed) == ["plain.wav", "take #2.wav", "why?.wav"]
    for uri in listed:
        prep = _storage.prepare(uri, None, None)
        assert prep.label == uri and prep.seconds == pytest.approx(0.5, abs=0.01)
    # options written into a URI are still refused, saying what to do instead
    with pytest.raises(Exception, match="filesystem="):
        _storage.canonical(f"s3://{BUCKET}/odd/in/?region=eu-west-1")
    with pytest.raises(Exception, match="filesystem="):
        _storage.canonical(f"s3://{BUCKET}?endpoint_override=http://x")


def test_refused_credentials_are_an_error_naming_the_uri_and_where_credentials_come_from(
    store: Store, tiny_models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto accepts any key unless told to authenticate: then these keys are unknown to it, as a
    user's wrong or missing keys are to S3. The job stops on the driver, before any model is read,
    with the URI, the store's answer and where credentials come from (or the filesystem= given)."""
    import moto.settings

    from rvcfast.errors import RvcfastError
    from rvcfast.integrations.ray import _job, convert_files

    def no_models(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was read before the storage was checked")

    clip = store.put("cred/f.wav", _wav(0.3, 16000, 200))
    monkeypatch.setattr(_job, "_checked", no_models)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    kw = dict(progress=False, **_engine(tiny_models))
    with pytest.raises(RvcfastError, match=r"out_dir s3://rvc-test/cred-out/: its bucket 'rvc-test' cannot be reached: .*ACCESS_DENIED") as info:
        convert_files(clip, f"s3://{BUCKET}/cred-out/", tiny_models.voice, filesystem=store.fs, **kw)
    assert "filesystem= given" in str(info.value)
    with pytest.raises(RvcfastError, match=r"ACCESS_DENIED.*AWS_ACCESS_KEY_ID") as info:
        convert_files(clip, f"s3://{BUCKET}/cred-out/", tiny_models.voice, **kw)
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert store.keys("cred-out/") == set()


def test_a_key_with_query_like_text_is_listed_and_read(store: Store) -> None:
    """One object named "take?v=2.wav" in a prefix failed the listing of the whole prefix with
    "options in a URI are not taken"; only pyarrow's own options after a key are refused."""
    from rvcfast.errors import ParameterError
    from rvcfast.integrations.ray import _storage, _storage_plan

    for name in ("take?v=2.wav", "clip?id=7&x=1.wav", "plain.wav"):
        store.put(f"query/in/{name}", _wav(0.4, 16000, 200))
    listed = _storage_plan.list_inputs(f"s3://{BUCKET}/query/in/", f"s3://{BUCKET}/query/out/", "wav", False, False, None)
    assert sorted(u.rsplit("/", 1)[1] for u in listed) == ["clip?id=7&x=1.wav", "plain.wav", "take?v=2.wav"]
    for uri in listed:
        assert _storage.prepare(uri, None, None).label == uri
    for given in (f"s3://{BUCKET}/query/in/?endpoint_override=http://x", f"s3://{BUCKET}/query/in?Region=eu-west-1"):
        with pytest.raises(ParameterError, match="filesystem="):
            _storage.canonical(given)


def test_a_resumed_in_place_job_reads_its_inputs_at_their_ends_not_whole(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Naming a resumed in-place job (out_dir the input prefix) downloaded every input whole on
    the driver, twice, to find that it records no input: gigabytes before the first task."""
    from rvcfast.integrations.ray import _storage, _storage_plan

    inputs = [store.put(f"inplace/{n}.wav", _wav(2.0, 44100, 200)) for n in "abc"]
    earlier = _storage.encode(tone(0.5, rate=40000), 40000, "wav", None, None, inputs[1], "b_rvc.wav")
    store.put("inplace/b_rvc.wav", earlier)

    def whole(*args: Any) -> Any:
        raise AssertionError("an object was fetched whole to name the outputs")

    monkeypatch.setattr(_storage, "_spooled", whole)
    prefix = f"s3://{BUCKET}/inplace/"
    listed, (outputs,) = _storage_plan.plan_uri_outputs(prefix, prefix, [None], "{stem}", "wav", True, False, None)
    assert listed == inputs
    assert outputs == [f"{prefix}{n}_rvc.wav" for n in "abc"]


def test_keys_pyarrow_cannot_read_as_written_are_error_rows_naming_them(store: Store) -> None:
    """A key "in//a.wav" (an uploader joining "in/" + "/a.wav") was listed as "in/a.wav": it
    vanished beside that object, or became "object does not exist" naming a key that is not
    there; "in/../x.wav" read another object. Each is listed as written and refused by name."""
    from rvcfast.errors import RvcfastError
    from rvcfast.integrations.ray import _storage, _storage_plan

    keys = ["slash/in//a.wav", "slash/in/./b.wav", "slash/in/../x.wav", "slash/in/a.wav", "slash/x.wav"]
    for key in keys:  # (pyarrow cannot write these keys either)
        store.boto.put_object(Bucket=BUCKET, Key=key, Body=_wav(0.4, 16000, 200))
    listed = _storage_plan.list_inputs(f"s3://{BUCKET}/slash/in/", f"s3://{BUCKET}/slash/out/", "wav", False, True, None)
    assert sorted(listed) == sorted(f"s3://{BUCKET}/{k}" for k in keys[:4])
    for uri in listed:
        if uri.endswith("/in/a.wav"):
            assert _storage.prepare(uri, None, None).label == uri
            continue
        with pytest.raises(RvcfastError, match="cannot read as written: rename the object") as info:
            _storage.prepare(uri, None, None)
        assert uri in str(info.value)
    # resumed in place: "g//x.wav" is not taken for "g/x.wav", an earlier output of g/a.wav, and left out
    a = store.put("slash/g/a.wav", _wav(0.4, 16000, 200))
    store.put("slash/g/x.wav", _storage.encode(tone(0.3, rate=40000), 40000, "wav", None, None, a, "x.wav"))
    store.boto.put_object(Bucket=BUCKET, Key="slash/g//x.wav", Body=_wav(0.4, 16000, 200))
    prefix = f"s3://{BUCKET}/slash/g/"
    assert _storage_plan.list_inputs(prefix, prefix, "wav", True, True, None) == [f"{prefix}/x.wav", a]


def test_file_uris_are_refused_naming_their_local_path(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o file:///data/out` was taken as a relative path: the outputs went to ./file:/data/out."""
    from rvcfast.errors import ParameterError
    from rvcfast.integrations.ray import _job, convert_files

    def no_plan(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a job with a file:// URI was planned")

    monkeypatch.setattr(_job, "plan_files", no_plan)
    monkeypatch.chdir(tmp_path)
    local = str(tmp_path / "in")
    for inputs, out_dir, manifest, named in [
        (f"file://{local}/", str(tmp_path / "out"), None, f"input file://{local}/.*local path '{local}/'"),
        (local, f"FILE://{tmp_path}/out", None, "out_dir FILE://.*local path"),
        (local, str(tmp_path / "out"), f"file://{tmp_path}/m.jsonl", "manifest file://"),
    ]:
        with pytest.raises(ParameterError, match=named):
            convert_files(inputs, out_dir, "voice.pth", manifest=manifest, progress=False)
    assert not (tmp_path / "file:").exists()


class _BrokenUpload:
    """An upload whose connection breaks after half its bytes were sent."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data[: len(data) // 2])
        raise OSError("connection reset by peer")

    def close(self) -> None:  # pyarrow completes an upload on close: the half sent becomes an object
        self.stream.close()


class _Flaky:
    """The store's filesystem, with uploads that break (``break_uploads``) or a ``move`` that fails
    (``move_fails``: an exception to raise); ``keep_temporary``: deleting does nothing, as when
    the writer is killed between the upload and the move."""

    def __init__(self, fs: Any, break_uploads: bool = False, move_fails: BaseException | None = None,
                 keep_temporary: bool = False) -> None:
        self.fs, self.break_uploads, self.move_fails, self.keep_temporary = fs, break_uploads, move_fails, keep_temporary

    def open_output_stream(self, path: str) -> Any:
        stream = self.fs.open_output_stream(path)
        return _BrokenUpload(stream) if self.break_uploads else stream

    def move(self, src: str, dest: str) -> None:
        if self.move_fails is not None:
            raise self.move_fails
        self.fs.move(src, dest)

    def delete_file(self, path: str) -> None:
        if not self.keep_temporary:
            self.fs.delete_file(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


def test_a_failed_overwrite_keeps_the_earlier_object_and_leaves_no_temporary_key(store: Store) -> None:
    """put() uploaded to the final key and, when the upload broke part way, deleted that key: a
    rerun's failed write left nothing where the earlier run's good output was."""
    from rvcfast.integrations.ray import _storage

    old, new = _wav(0.3, 16000, 200), _wav(0.5, 16000, 300)
    uri = store.put("over/out/a.wav", old)
    with pytest.raises(OSError, match="connection reset"):
        _storage.put(uri, new, _Flaky(store.fs, break_uploads=True))
    assert store.get("over/out/a.wav") == old
    assert store.keys("over/") == {"over/out/a.wav"}  # no temporary key left
    assert store.versions("over/out/a.wav") == {"over/out/a.wav": 1}  # never a partial object under the final key
    with pytest.raises(OSError, match="no route"):  # the upload done, its move fails: the earlier object stays
        _storage.put(uri, new, _Flaky(store.fs, move_fails=OSError("no route to host")))
    assert store.get("over/out/a.wav") == old and store.keys("over/") == {"over/out/a.wav"}
    # a new key whose upload breaks: nothing at all
    with pytest.raises(OSError, match="connection reset"):
        _storage.put(f"s3://{BUCKET}/over/out/b.wav", new, _Flaky(store.fs, break_uploads=True))
    assert store.keys("over/") == {"over/out/a.wav"}
    # uploads that succeed: a new key in one upload (no other key), an existing one replaced whole
    _storage.put(f"s3://{BUCKET}/over/out/c.wav", new, None)
    assert store.get("over/out/c.wav") == new and store.versions("over/out/c") == {"over/out/c.wav": 1}
    _storage.put(uri, new, None)
    assert store.get("over/out/a.wav") == new and store.keys("over/") == {"over/out/a.wav", "over/out/c.wav"}
    # a filesystem that cannot move a file: copied, then the temporary key deleted
    _storage.put(uri, old, _Flaky(store.fs, move_fails=NotImplementedError("move")))
    assert store.get("over/out/a.wav") == old and store.keys("over/") == {"over/out/a.wav", "over/out/c.wav"}
    # a credential that may write but not look (S3 answers 403 to its HEAD): one upload, as before the check
    _storage.put(uri, new, _Blind(store.fs))
    assert store.get("over/out/a.wav") == new and store.keys("over/") == {"over/out/a.wav", "over/out/c.wav"}


class _DeleteRefused:
    """The store's filesystem through a credential that may not delete (S3 answers 403 to
    DeleteObject): a ``move`` copies, then fails at its delete, as S3's and GCS's do; with
    ``no_move``, the filesystem cannot move and put() copies and deletes itself."""

    def __init__(self, fs: Any, no_move: bool = False) -> None:
        self.fs, self.no_move = fs, no_move

    def move(self, src: str, dest: str) -> None:
        if self.no_move:
            raise NotImplementedError("move")
        self.fs.copy_file(src, dest)
        self.delete_file(src)

    def delete_file(self, path: str) -> None:
        raise OSError("When deleting key: AWS Error ACCESS_DENIED during DeleteObject operation")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


@pytest.mark.parametrize("no_move", [False, True], ids=["move", "copy-and-delete"])
def test_a_move_whose_delete_fails_after_the_copy_has_written_the_output(store: Store, no_move: bool) -> None:
    """put() reported a written output as a failure: the delete of the temporary key failed after
    its copy onto the output key, so the row was an error row though its output was in place."""
    from rvcfast.integrations.ray import _storage

    old, new = _wav(0.3, 16000, 200), _wav(0.5, 16000, 300)
    uri = store.put(f"refused-{no_move}/out/a.wav", old)
    _storage.put(uri, new, _DeleteRefused(store.fs, no_move=no_move))  # no error: the output is written
    assert store.get(f"refused-{no_move}/out/a.wav") == new
    left = store.keys(f"refused-{no_move}/") - {f"refused-{no_move}/out/a.wav"}
    assert len(left) == 1 and next(iter(left)).endswith(".part"), left  # the hidden temporary key it could not delete
    # a move that fails before its copy is still an error, the earlier object as it was
    broken = _Flaky(store.fs, move_fails=OSError("no route to host"), keep_temporary=True)
    with pytest.raises(OSError, match="no route"):
        _storage.put(uri, _wav(0.4, 16000, 250), broken)
    assert store.get(f"refused-{no_move}/out/a.wav") == new


class _Blind:
    """The store's filesystem through a credential allowed PutObject only: looking at a key is refused."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def get_file_info(self, path: Any) -> Any:
        raise OSError("When getting information for key: AWS Error ACCESS_DENIED during HeadObject operation")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


def test_an_in_place_prefix_run_again_leaves_out_its_earlier_outputs(store: Store) -> None:
    """Run again without skip_existing, an in-place job converted its earlier ``x_rvc.wav`` into
    ``x_rvc_rvc.wav`` and named ``x``'s output ``x_2.wav`` (as the local planner did)."""
    from rvcfast.integrations.ray import _storage, _storage_plan

    x = store.put("again/x.wav", _wav(0.4, 16000, 200))
    store.put("again/x_rvc.wav", _storage.encode(tone(0.3, rate=40000), 40000, "wav", None, None, x, "x_rvc.wav"))
    prefix = f"s3://{BUCKET}/again/"
    listed, (outputs,) = _storage_plan.plan_uri_outputs(prefix, prefix, [None], "{stem}", "wav", False, False, None)
    assert listed == [x] and outputs == [f"{prefix}x_rvc.wav"], (listed, outputs)
    # named one by one, the earlier output is an input all the same (never dropped unasked)
    listed, _ = _storage_plan.plan_uri_outputs([x, f"{prefix}x_rvc.wav"], prefix, [None], "{stem}", "wav", False, False, None)
    assert listed == [x, f"{prefix}x_rvc.wav"]


def test_a_temporary_key_left_by_a_killed_writer_is_never_an_input_nor_an_output(store: Store) -> None:
    """A writer killed between its upload and the move leaves a hidden .part object beside the
    earlier output: a later job (in place, resumed) neither lists it nor names an output after it."""
    from rvcfast.integrations.ray import _storage, _storage_plan

    a = store.put("killed/a.wav", _wav(0.4, 16000, 200))
    earlier = _storage.encode(tone(0.3, rate=40000), 40000, "wav", None, None, a, "a_rvc.wav")
    output = store.put("killed/a_rvc.wav", earlier)
    with pytest.raises(KeyboardInterrupt):
        _storage.put(output, _wav(0.2, 16000, 300), _Flaky(store.fs, move_fails=KeyboardInterrupt(), keep_temporary=True))
    [left] = store.keys("killed/") - {"killed/a.wav", "killed/a_rvc.wav"}
    assert left.startswith("killed/.a_rvc.wav.") and left.endswith(".part"), left
    assert store.get("killed/a_rvc.wav") == earlier
    prefix = f"s3://{BUCKET}/killed/"
    listed, (outputs,) = _storage_plan.plan_uri_outputs(prefix, prefix, [None], "{stem}", "wav", True, True, None)
    assert listed == [a] and outputs == [f"{prefix}a_rvc.wav"], (listed, outputs)
    listed, (outputs,) = _storage_plan.plan_uri_outputs(prefix, prefix, [None], "{stem}", "wav", False, True, None)
    assert not [u for u in listed + outputs if ".part" in u], (listed, outputs)  # (a_rvc.wav is an input then, as locally)
    _storage.put(output, earlier, None)  # a rerun writes the output again, beside it
    assert store.get("killed/a_rvc.wav") == earlier


def test_a_missing_prefix_typed_as_a_folder_is_a_row_saying_it_holds_no_objects(store: Store, no_cluster: None) -> None:
    """`s3://bucket/nosuch/` was one row "object does not exist": the user typed a folder."""
    from rvcfast.errors import AudioError
    from rvcfast.integrations.ray import _storage, _storage_plan
    from rvcfast.integrations.ray._stages import JobSpec, decode_audio
    from rvcfast.params import ConversionParams

    store.put("folders/in/a.wav", _wav(0.3, 16000, 200))
    missing, out = f"s3://{BUCKET}/folders/nosuch/", f"s3://{BUCKET}/folders/out/"
    listed, (outputs,) = _storage_plan.plan_uri_outputs(
        [missing, f"s3://{BUCKET}/folders/in/"], out, [None], "{stem}", "wav", False, False, None
    )
    assert listed == [missing, f"s3://{BUCKET}/folders/in/a.wav"] and outputs == [f"{out}nosuch.wav", f"{out}a.wav"]
    spec = JobSpec(files=None, params=ConversionParams(), out_dir=out, skip_existing=False)
    import pyarrow as pa

    rows = decode_audio(pa.table({"path": listed, "output_path": outputs}), spec).to_pylist()
    assert rows[0]["status"] == "error" and rows[1]["status"] == "pending", rows
    assert rows[0]["error"].startswith(f"{missing}: no objects under this prefix (folder)"), rows[0]["error"]
    # without the slash: a missing object, as a missing local file is
    with pytest.raises(AudioError, match="object does not exist"):
        _storage.prepare(_storage_plan.list_inputs(missing.rstrip("/"), out, "wav", False, False, None)[0], None, None)
    # a dataset's row naming a prefix that holds objects, typed as a folder
    with pytest.raises(AudioError, match="a prefix \\(folder\\) holding objects, not an object"):
        _storage.prepare(f"s3://{BUCKET}/folders/in/", None, None)

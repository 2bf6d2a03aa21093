"""Scale-out on Ray: every file converted once, with the driver's weights, no input overwritten.

Most tests need no cluster: the weight shipping runs with ``ray.put``/``ray.get`` replaced
by the identity (an object is its bytes), and the decoding stage runs in this process with
the output claims held by a plain :class:`OutputClaims` (a retried task is the same call
made again). One local cluster (127.0.0.1, usage statistics off, no dashboard) checks the
same through a real dataset job.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
from helpers import names_file, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast.errors import ModelLoadError

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray_helpers import actors_wait, no_cluster_fixture  # noqa: E402, F401

# ------------------------------------------------------------------------------ the weights the workers load


def _driver_files(tmp_path: Path):
    from rvcfast.integrations.ray._weights import ModelFiles

    model = tmp_path / "driver" / "voice.pth"
    model.parent.mkdir()
    model.write_bytes(b"the driver's voice model " * 64)
    encoder = tmp_path / "driver" / "contentvec"
    (encoder / "sub").mkdir(parents=True)
    (encoder / "config.json").write_text('{"hidden_size": 768}')
    (encoder / "sub" / "model.bin").write_bytes(b"encoder weights " * 64)
    return ModelFiles(model=str(model), encoder=str(encoder))


def _tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_a_cached_copy_that_differs_from_the_driver_is_replaced(no_cluster, tmp_path, monkeypatch):
    # A cache entry was used as soon as its name existed: a truncated copy, or a file someone
    # else put under the (computable) digest in the shared temporary folder, was loaded.
    from rvcfast.integrations.ray._weights import local_files, ship_files

    monkeypatch.setenv("RVCFAST_RAY_CACHE", str(tmp_path / "cache"))
    files = _driver_files(tmp_path)
    shipped = ship_files(files, "object-store")
    good = local_files(shipped)
    assert _tree(Path(good.model)) == _tree(Path(files.model)) and _tree(Path(good.encoder)) == _tree(Path(files.encoder))

    Path(good.model).write_bytes(b"planted")  # a file that is not the driver's
    (Path(good.encoder) / "sub" / "model.bin").write_bytes(b"truncat")  # a damaged folder
    again = local_files(shipped)
    assert (again.model, again.encoder) == (good.model, good.encoder)  # the same cache entries, repaired
    assert _tree(Path(again.model)) == _tree(Path(files.model))
    assert _tree(Path(again.encoder)) == _tree(Path(files.encoder))
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".bad." in p.name]  # the bad copies are gone

    stamp = os.stat(again.model).st_mtime_ns
    assert local_files(shipped).model == again.model and os.stat(again.model).st_mtime_ns == stamp  # a good copy is reused


def test_a_worker_whose_file_differs_from_the_driver_refuses_it(tmp_path):
    # weights="path": a node holding another version at the driver's path (or the model
    # replaced while the job ran) converted with those weights, silently.
    from rvcfast.integrations.ray._weights import local_files, ship_files

    files = _driver_files(tmp_path)
    pinned = ship_files(files, "path")
    assert local_files(pinned) == files

    Path(files.model).write_bytes(b"the retrained voice model " * 64)
    with pytest.raises(ModelLoadError, match="differs on node .* from the file the driver checked") as info:
        local_files(pinned)
    assert info.value.path is not None and names_file(str(info.value), files.model)

    pinned = ship_files(files, "path")  # the new version, pinned by a new job
    (Path(files.encoder) / "sub" / "model.bin").write_bytes(b"other encoder")
    with pytest.raises(ModelLoadError, match="differs on node") as info:
        local_files(pinned)
    assert names_file(str(info.value), files.encoder)

    Path(files.model).unlink()
    with pytest.raises(ModelLoadError, match="not found on node"):
        local_files(pinned)


# ------------------------------------------------------------------------------ naming a dataset's outputs


def _spec(tmp_path: Path, **kw):
    from rvcfast.integrations.ray._stages import JobSpec, OutputClaims
    from rvcfast.params import ConversionParams

    claims = OutputClaims()
    kw.setdefault("claims", SimpleNamespace(claim=SimpleNamespace(remote=claims.claim)))
    return JobSpec(files=None, params=ConversionParams(), out_dir=str(tmp_path / "out"), skip_existing=False, **kw)


def _decode(spec, rows: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    import pyarrow as pa

    from rvcfast.integrations.ray._stages import decode_audio

    batch = pa.table({"path": [p for p, _ in rows], "output_path": pa.array([o for _, o in rows], pa.string())})
    return [(r["status"], r["error"]) for r in decode_audio(batch, spec).to_pylist()]


def test_an_output_that_is_the_input_under_another_name_is_an_error_row(no_cluster, tmp_path):
    # Only the real paths were compared: an output_path reaching the input through a hard link,
    # a bind mount or a case-insensitive file system (A.WAV for a.wav) was written over it.
    src = tmp_path / "in" / "a.wav"
    src.parent.mkdir()
    sf.write(src, tone(0.3), 16000)
    link = tmp_path / "elsewhere.wav"
    os.link(src, link)
    spec = _spec(tmp_path)
    [(status, error)] = _decode(spec, [(str(src), str(link))])
    assert status == "error" and "the output is the input itself" in error and names_file(error, src)
    [(status, error)] = _decode(_spec(tmp_path, claims=None), [(str(tmp_path / "no.wav"), str(tmp_path / "o.wav"))])
    assert "the output is the input itself" not in (error or "")  # a missing input is its own error, later


def test_an_output_path_naming_another_format_is_an_error_row(no_cluster, tmp_path):
    # format="wav" (the default) with an output_path ending in .flac wrote WAV data under the .flac name
    src = tmp_path / "a.wav"
    sf.write(src, tone(0.3), 16000)
    spec = _spec(tmp_path)
    rows = _decode(spec, [(str(src), str(tmp_path / "o" / "a.flac")), (str(src), str(tmp_path / "o" / "a.WAV"))])
    assert rows[0][0] == "error" and "ends in .flac, but the job writes wav" in rows[0][1] and names_file(rows[0][1], src)
    assert rows[1] == ("pending", None)  # the job's own format, whatever its case
    assert _decode(_spec(tmp_path, format="flac"), [(str(src), str(tmp_path / "o" / "b.flac"))]) == [("pending", None)]


def test_skip_existing_skips_only_outputs_that_read_as_audio(no_cluster, tmp_path):
    # a 0-byte or junk file at a row's output_path was taken as done: its input never converted
    src = tmp_path / "a.wav"
    sf.write(src, tone(0.3), 16000)
    out = tmp_path / "o"
    out.mkdir()
    (out / "empty.wav").write_bytes(b"")
    (out / "junk.wav").write_bytes(b"not audio at all")
    sf.write(out / "done.wav", tone(0.1), 16000)
    spec = dataclasses.replace(_spec(tmp_path, claims=None), skip_existing=True)
    rows = _decode(spec, [(str(src), str(out / n)) for n in ("empty.wav", "junk.wav", "done.wav")])
    assert [status for status, _ in rows] == ["pending", "pending", "skipped"]


def test_a_row_named_by_stem_is_not_skipped_on_another_files_output(no_cluster, tmp_path):
    # a dataset row without output_path is named out_dir/<stem>.<format>: a later job's b/x.wav was
    # skipped on an earlier job's output of a/x.wav (the claims only see one job)
    from rvcfast.writing import write_audio_atomic

    a, b = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"
    for p in (a, b):
        p.parent.mkdir()
        sf.write(p, tone(0.3), 16000)
    out = tmp_path / "out"
    write_audio_atomic(out / "x.wav", tone(0.2), 40000, source=a)  # the earlier job's output of a
    spec = dataclasses.replace(_spec(tmp_path, claims=None), skip_existing=True)
    [(status, error)] = _decode(spec, [(str(b), None)])
    assert status == "error" and "records another input as its source" in error and names_file(error, b)
    assert _decode(spec, [(str(a), None)]) == [("skipped", None)]  # its own output: skipped
    # an output_path the caller gave is the caller's mapping: skipped, as before
    assert _decode(spec, [(str(b), str(out / "x.wav"))]) == [("skipped", None)]


def test_one_file_under_two_spellings_converts_once_and_a_retry_converts_again(no_cluster, tmp_path):
    # The claims compared real paths: in/a.wav and in/./a.wav (or a symlink) both "owned" out/a.wav,
    # so the file was converted twice and written twice, with two ok rows.
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        sf.write(folder / f"{name}.wav", tone(0.3), 16000)
    (tmp_path / "links").mkdir()
    os.symlink(folder / "b.wav", tmp_path / "links" / "b.wav")
    spec = _spec(tmp_path)
    a, a2, b, b_link, b_again = (
        f"{folder}/a.wav", f"{folder}/./a.wav", f"{folder}/b.wav", str(tmp_path / "links" / "b.wav"), f"{folder}/b.wav"
    )
    first = _decode(spec, [(a, None), (a2, None), (b, None), (b_again, None)])
    assert [s for s, _ in first] == ["pending", "error", "pending", "skipped"]
    assert names_file(first[1][1], a2) and f"the same file as {a}" in first[1][1]
    assert first[3] == ("skipped", None)  # the same row twice in a batch: converted once, the repeat skipped
    later = _decode(spec, [(b_link, None)])  # a later batch: a symlink to b.wav, named b.wav too
    assert later[0][0] == "error" and f"the same file as {b}" in later[0][1]
    assert _decode(spec, [(a, None), (a2, None), (b, None), (b_again, None)]) == first  # a retried task: the same rows


# ------------------------------------------------------------------------------ through a cluster


@pytest.mark.ray
def test_a_dataset_job_converts_each_file_once_and_never_over_its_input(tiny_models, tmp_path):
    from rvcfast.integrations.ray import convert_dataset

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        sf.write(folder / f"{name}.wav", tone(0.3, freq=200 if name == "a" else 300), 16000)
    os.link(folder / "b.wav", tmp_path / "b_alias.wav")
    before = (folder / "b.wav").read_bytes()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        ds = ray.data.from_items([
            {"path": f"{folder}/a.wav", "output_path": None},
            {"path": f"{folder}/./a.wav", "output_path": None},
            {"path": str(folder / "b.wav"), "output_path": str(tmp_path / "b_alias.wav")},
        ])
        with actors_wait(60):  # nothing can hang
            rows = convert_dataset(
                ds, tiny_models.voice, tmp_path / "out", index=tiny_models.index, encoder=tiny_models.encoder,
                f0_weights=tiny_models.rmvpe, device="cpu", threads_per_worker=1, num_workers=1, skip_existing=False,
            ).take_all()
    finally:
        ray.shutdown()
    status = {r["path"]: (r["status"], r["error"]) for r in rows}
    # the two spellings of a.wav: whichever row claims the output first converts it (the rows may
    # sit in one block or in several, whose tasks run in any order), the other is an error row
    spellings = sorted((status[f"{folder}/a.wav"], status[f"{folder}/./a.wav"]), key=lambda s: s[0] != "ok")
    assert len(rows) == 3 and spellings[0] == ("ok", None)
    assert spellings[1][0] == "error" and "the same file as" in spellings[1][1]
    assert status[str(folder / "b.wav")][0] == "error" and "the output is the input itself" in status[str(folder / "b.wav")][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav"]
    assert (folder / "b.wav").read_bytes() == before and os.path.samefile(folder / "b.wav", tmp_path / "b_alias.wav")


def test_a_write_task_writes_every_channel_of_a_multi_channel_output(no_cluster, tmp_path):
    # write_in="task" carries the audio between stages as bytes: a channels="each" output
    # (interleaved [samples, channels]) must come back with its channels, not as one long channel
    import numpy as np
    import pyarrow as pa

    from rvcfast.integrations.ray._stages import _CONVERTED_SCHEMA, write_outputs
    from rvcfast.writing import recorded_source, source_id

    audio = np.stack([np.linspace(-0.5, 0.5, 4000), np.linspace(0.2, -0.2, 4000)], axis=1).astype(np.float32)
    src, out = tmp_path / "a.wav", tmp_path / "o" / "a.wav"
    row = {name: None for name in _CONVERTED_SCHEMA.names}
    row.update(path=str(src), output_path=str(out), status="pending", audio=audio.tobytes(), sample_rate=40000, channels=2)
    [done] = write_outputs(pa.Table.from_pylist([row], schema=_CONVERTED_SCHEMA), _spec(tmp_path, format="wav", write_in="task")).to_pylist()
    assert done["status"] == "ok", done
    written, rate = sf.read(out, dtype="float32")
    assert rate == 40000 and written.shape == (4000, 2)
    np.testing.assert_allclose(written, audio, atol=1 / 32768)  # PCM_16
    assert recorded_source(out) == source_id(src)

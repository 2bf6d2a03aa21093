"""Scale-out on Ray, from a user's walkthrough of docs/scale-out.md: what the page promises that
no other test pinned.

* with a seed, a job's output equals a local conversion at the worker's thread count bit for bit;
* a re-run with ``skip_existing`` leaves every output untouched and writes its own manifest
  (every row ``skipped``) over the earlier one; a ``.json`` manifest is JSON Lines too;
* ``rvcfast convert --ray`` without the ``ray`` extra is a one-line error naming the extra.

One local cluster (2 CPUs, 127.0.0.1, usage statistics off), one small job run twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")
from ray_helpers import local_cluster  # noqa: E402

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def test_seeded_output_equals_local_and_a_rerun_rewrites_the_manifest(tiny_models, tmp_path: Path) -> None:
    from rvcfast.integrations.ray import convert_files

    clip = tmp_path / "in" / "a.wav"
    clip.parent.mkdir()
    sf.write(clip, tone(1.2, 44100, 190), 44100)
    out, manifest = tmp_path / "out", tmp_path / "rows.json"
    kw = dict(
        index=tiny_models.index, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
        threads_per_worker=1, seed=5, subtype="FLOAT", progress=False, manifest=manifest,
    )
    with local_cluster():
        first = convert_files([clip], out, tiny_models.voice, num_workers=1, **kw)
        stamp = (out / "a.wav").stat().st_mtime_ns
        second = convert_files([clip], out, tiny_models.voice, num_workers=1, skip_existing=True, **kw)
    assert [r["status"] for r in first] == ["ok"], first
    # the noise is seeded and the worker runs one thread, as this process does (one_thread fixture)
    local = tiny_models.converter().convert(clip, seed=5).audio
    audio, rate = sf.read(out / "a.wav", dtype="float32")
    assert rate == 40000 and np.array_equal(audio, local)
    # the re-run skips the file, leaves it as it was and writes its own rows over the manifest
    assert [r["status"] for r in second] == ["skipped"] and (out / "a.wav").stat().st_mtime_ns == stamp
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(r["path"], r["status"], r["audio_seconds"]) for r in rows] == [(str(clip), "skipped", 0.0)]


def test_cli_without_the_ray_extra_is_one_line_naming_it(tiny_models, tmp_path: Path) -> None:
    clip = tmp_path / "a.wav"
    sf.write(clip, tone(0.5, 16000, 200), 16000)
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"
        "from rvcfast.cli import main\n"
        f"sys.exit(main(['convert', {str(tiny_models.voice)!r}, {str(clip)!r}, '-o', {str(tmp_path / 'out')!r}, '--ray']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "rvcfast[ray]"' in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


_LAZY_JOB = r"""
import json, os, sys
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import pyarrow as pa, pyarrow.parquet as pq, ray, ray.data
from rvcfast.integrations.ray import convert_dataset
args = json.loads(sys.argv[1])
pq.write_table(pa.table({"path": [args["clip"]]}), args["table"])
ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
ds = ray.data.read_parquet(args["table"]).map(lambda row: row)  # the user's own read and map stages
rows = convert_dataset(ds, args["voice"], args["out"], encoder=args["encoder"], f0_weights=args["rmvpe"],
                       device="cpu", seed=1).take_all()
print("STATUS", [r["status"] for r in rows], flush=True)
ray.shutdown()
"""


def test_a_lazy_dataset_with_its_own_stages_runs_beside_the_default_pool(tiny_models, tmp_path: Path) -> None:
    """The docs' lazy example (read_parquet of paths, then convert_dataset with the default CPU pool):
    the pool left each node 0.25 CPU, the dataset's read and map tasks reserve 1 CPU each, so
    they never started and the job waited for ever. Run in a child process with a time limit."""
    clip = tmp_path / "a.wav"
    sf.write(clip, tone(0.8, 16000, 190), 16000)
    args = {
        "clip": str(clip), "table": str(tmp_path / "paths.parquet"), "out": str(tmp_path / "out"),
        "voice": str(tiny_models.voice), "encoder": str(tiny_models.encoder), "rmvpe": str(tiny_models.rmvpe),
    }
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        done = subprocess.run([sys.executable, "-c", _LAZY_JOB, json.dumps(args)], capture_output=True, text=True,
                              timeout=300, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the job was still waiting after 300 s: the dataset's own stages found no CPU")
    assert "STATUS ['ok']" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    assert sf.info(str(tmp_path / "out" / "a.wav")).samplerate == 40000


def test_an_output_path_column_naming_one_output_twice_says_so(tiny_models, tmp_path: Path) -> None:
    # before: "without an output_path column every row is named out_dir/<stem>..." although the
    # rows had that column
    from rvcfast.integrations.ray import convert_dataset

    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, tone(0.5, 16000, 190), 16000)
    twice = str(tmp_path / "out" / "same.wav")
    with local_cluster():
        ds = ray.data.from_items([
            {"path": str(tmp_path / "a.wav"), "output_path": twice},
            {"path": str(tmp_path / "b.wav"), "output_path": twice},
        ])
        rows = convert_dataset(ds, tiny_models.voice, tmp_path / "out", encoder=tiny_models.encoder,
                               f0_weights=tiny_models.rmvpe, device="cpu", num_workers=1).take_all()
    errors = [r["error"] for r in rows if r["status"] == "error"]
    assert sorted(r["status"] for r in rows) == ["error", "ok"] and len(errors) == 1
    assert "the dataset's output_path column names this output twice" in errors[0]
    assert "without an output_path column" not in errors[0]


def test_a_read_only_output_folder_is_refused_before_the_job(tiny_models, tmp_path: Path, monkeypatch) -> None:
    """Before, the whole job ran, every write failed, then the manifest's write raised a traceback
    and the failure list was lost. As root a folder's mode does not stop writes: the check
    (``os.access``) is shown the folder as it is on a read-only mount."""
    import rvcfast.writing as writing
    from rvcfast.errors import ParameterError
    from rvcfast.integrations.ray import convert_files

    sf.write(tmp_path / "a.wav", tone(0.5, 16000, 190), 16000)
    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(writing.os, "access", lambda p, mode: False if Path(p) == out else real(p, mode))
    with pytest.raises(ParameterError, match=r"out_dir folder .*ro cannot be written"):
        convert_files([tmp_path / "a.wav"], out, tiny_models.voice, address="local")
    assert not ray.is_initialized()  # refused before any cluster was started


def test_a_ray_client_address_without_the_client_extra_is_one_clear_error(tiny_models, tmp_path: Path) -> None:
    # before: Ray's ValueError with a traceback
    from rvcfast.errors import BackendUnavailableError
    from rvcfast.integrations.ray import convert_files

    try:
        import grpc  # noqa: F401
        import ray.util.client  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the Ray Client is installed here")
    sf.write(tmp_path / "a.wav", tone(0.5, 16000, 190), 16000)
    with pytest.raises(BackendUnavailableError, match=r'needs the Ray Client: pip install "ray\[client\]"'):
        convert_files([tmp_path / "a.wav"], tmp_path / "out", tiny_models.voice, address="ray://127.0.0.1:1")

"""Scale-out on Ray (rvcfast.integrations.ray): equal outputs, error rows, resume, both nodes, a killed worker.

Two local clusters, each started once: one node (``ray.init(num_cpus=2)``) and a simulated
two-node cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes).
Everything runs on 127.0.0.1 with usage statistics off. Outputs are compared with
``Converter.convert`` in this process (noise off) to the tolerance of the batch tests
(1e-5 of the peak: results do not depend on what a file is batched with).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import names_file, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast.errors import ModelLoadError, ParameterError

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")
from ray_helpers import actors_wait, local_cluster  # noqa: E402

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: (name, seconds, rate, channels)
CLIPS = [("a", 1.0, 44100, 0), ("b", 1.6, 16000, 0), ("c", 0.7, 48000, 2), ("d", 2.2, 22050, 0), ("e", 1.3, 44100, 0)]
BAD = "broken.wav"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of good clips (several rates, one stereo) and one file that is not audio."""
    folder = tmp_path_factory.mktemp("ray_inputs")
    for k, (name, seconds, rate, channels) in enumerate(CLIPS):
        sf.write(folder / f"{name}.wav", tone(seconds, rate, 180 + 40 * k, channels=channels), rate)
    (folder / BAD).write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really")
    return folder


@pytest.fixture(scope="module")
def expected(tiny_models, inputs: Path) -> dict[str, np.ndarray]:
    """In-process outputs of ``Converter.convert`` for every good clip."""
    conv = tiny_models.converter()
    return {name: conv.convert(inputs / f"{name}.wav", noise=False).audio for name, *_ in CLIPS}


def _options(tiny_models, **extra):
    kw = dict(
        index=tiny_models.index, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
        threads_per_worker=1, noise=False, subtype="FLOAT", progress=False,
    )
    kw.update(extra)
    return kw


def _assert_outputs(out: Path, rows: list[dict], expected: dict[str, np.ndarray]) -> None:
    """Every good clip converted exactly once, complete and equal to the in-process output; nothing else left."""
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{n}.wav" for n in expected] + ["rvcfast-manifest.jsonl"]), names  # no .part, no duplicate
    for name, ref in expected.items():
        audio, rate = sf.read(out / f"{name}.wav", dtype="float32")
        assert rate == 40000 and audio.shape == ref.shape
        assert np.abs(audio - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-3), name
    manifest = [json.loads(line) for line in (out / "rvcfast-manifest.jsonl").read_text().splitlines()]
    assert [r["path"] for r in manifest] == [r["path"] for r in rows]
    from rvcfast.writing import recorded_source, source_id

    for r in rows:  # each output records its own input: a resumed batch matches them by it
        if r["status"] == "ok":
            assert recorded_source(r["output_path"]) == source_id(r["path"])


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in rows}


# ------------------------------------------------------------------------------ one node


class TestOneNode:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def cluster(cls):
        with local_cluster():
            yield

    @pytest.fixture(scope="class")
    @classmethod
    def first_run(cls, tiny_models, inputs, tmp_path_factory):
        from rvcfast.integrations.ray import convert_files

        out = tmp_path_factory.mktemp("ray_one") / "out"
        missing = inputs / "missing.wav"
        rows = convert_files([inputs, missing], out, tiny_models.voice, num_workers=1, **_options(tiny_models))
        return out, rows

    def test_outputs_equal_converter_and_bad_files_are_error_rows(self, first_run, inputs, expected):
        out, rows = first_run
        # input order: the folder's files sorted, then the missing path
        assert [Path(r["path"]).name for r in rows] == sorted([BAD] + [f"{n}.wav" for n, *_ in CLIPS]) + ["missing.wav"]
        by_name = _by_name(rows)
        for name in (BAD, "missing.wav"):
            row = by_name[name]
            assert row["status"] == "error" and names_file(row["error"], inputs / name), row
        for name, *_ in CLIPS:
            row = by_name[f"{name}.wav"]
            assert row["status"] == "ok" and row["error"] is None
            assert row["output_path"] == str(out / f"{name}.wav")
            assert row["synth_s"] > 0 and row["decode_s"] > 0 and row["write_s"] > 0
            assert row["seconds"] >= row["synth_s"] and row["audio_seconds"] > 0.5 and row["node"]
        assert "2 channels mixed down" in by_name["c.wav"]["warnings"] and by_name["a.wav"]["warnings"] == ""
        _assert_outputs(out, rows, expected)

    def test_rerun_skips_existing_and_resumes(self, first_run, tiny_models, inputs, expected, tmp_path):
        from rvcfast.integrations.ray import convert_files

        out = tmp_path / "out"
        shutil.copytree(first_run[0], out)  # the first run's outputs, left as they are for the other tests
        (out / "b.wav").unlink()
        rows = convert_files(inputs, out, tiny_models.voice, num_workers=1, **_options(tiny_models))
        status = {Path(r["path"]).name: r["status"] for r in rows}
        assert status == {BAD: "error", "a.wav": "skipped", "b.wav": "ok", "c.wav": "skipped", "d.wav": "skipped", "e.wav": "skipped"}
        _assert_outputs(out, rows, expected)

    def test_convert_dataset_is_lazy_and_the_manifest_can_be_parquet(self, tiny_models, inputs, expected, tmp_path):
        import pyarrow.parquet as pq

        from rvcfast.integrations.ray import ROW_SCHEMA, convert_dataset, write_manifest

        out = tmp_path / "out"
        ds = ray.data.from_items([{"path": str(inputs / f"{n}.wav")} for n in ("a", "d")])
        opts = _options(tiny_models)
        opts.pop("progress")
        converted = convert_dataset(ds, tiny_models.voice, out, num_workers=1, **opts)
        assert isinstance(converted, ray.data.Dataset) and not out.exists()  # nothing ran yet
        rows = converted.take_all()
        assert sorted((Path(r["path"]).name, r["status"]) for r in rows) == [("a.wav", "ok"), ("d.wav", "ok")]
        assert set(rows[0]) == set(ROW_SCHEMA.names)
        write_manifest(rows, tmp_path / "rows.parquet")
        table = pq.read_table(tmp_path / "rows.parquet")
        assert sorted(Path(p).name for p in table.column("path").to_pylist()) == ["a.wav", "d.wav"]
        for name in ("a", "d"):
            audio, _ = sf.read(out / f"{name}.wav", dtype="float32")
            assert np.abs(audio - expected[name]).max() <= 1e-5 * max(np.abs(expected[name]).max(), 1e-3)

    def test_parameters_and_models_are_checked_before_any_task(self, tiny_models, inputs, tmp_path):
        from rvcfast.integrations.ray import convert_files

        out = tmp_path / "never"
        run = lambda **kw: convert_files(inputs, out, kw.pop("model", tiny_models.voice), **_options(tiny_models, **kw))  # noqa: E731
        with pytest.raises(ParameterError, match="pitch must be within"):
            run(pitch=99)
        with pytest.raises(ParameterError, match="did you mean 'pitch'"):
            run(pich=2)
        with pytest.raises(ParameterError, match="speaker 7 is out of range"):
            run(speaker=7)
        with pytest.raises(ParameterError, match="need .* CPUs; the cluster has 2"):
            run(num_workers=2, cpus_per_worker=1)  # two whole CPUs leave none for decoding
        with pytest.raises(ParameterError, match="format must be one of"):
            run(format="xyz")
        with pytest.raises(ModelLoadError, match="nothere.pth"):
            run(model=tmp_path / "nothere.pth")
        assert not out.exists()

    def test_command_line(self, tiny_models, inputs, tmp_path):
        from rvcfast.cli import main

        out = tmp_path / "cli"
        argv = [
            "convert", str(tiny_models.voice), str(inputs / "a.wav"), str(inputs / "e.wav"), "-o", str(out),
            "--index", str(tiny_models.index), "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe),
            "--device", "cpu", "--no-noise", "-q", "--ray", "--workers", "1", "--manifest", str(tmp_path / "m.jsonl"),
        ]
        assert main(argv) == 0
        assert sorted(p.name for p in out.iterdir()) == ["a.wav", "e.wav"]
        rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
        assert [(Path(r["path"]).name, r["status"]) for r in rows] == [("a.wav", "ok"), ("e.wav", "ok")]
        assert main(argv[:4] + [str(inputs / BAD)] + argv[4:]) == 1  # a failing file: exit status 1


# ------------------------------------------------------------------------------ two nodes


class TestTwoNodes:
    """A head without CPUs and two one-CPU worker nodes: one model worker fits per node (0.75 CPU + decoding)."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def cluster(cls):
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:  # shut down whatever happens: a cluster left running fails every later ray.init
            for _ in range(2):
                cluster.add_node(num_cpus=1)
            ray.init(address=cluster.address)
            cluster.wait_for_nodes()
            with actors_wait(120):  # both workers up before any batch
                # the worker nodes' ids, from ray.nodes() (a cluster_utils node has no node_id before Ray 2.2x)
                yield {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
        finally:
            ray.shutdown()
            cluster.shutdown()

    def test_both_nodes_work_and_outputs_equal_in_process(self, cluster, tiny_models, inputs, expected, tmp_path):
        from rvcfast.integrations.ray import convert_files

        out = tmp_path / "out"
        files = [inputs / f"{n}.wav" for n, *_ in CLIPS]
        # a fixed pool of two, one per node (0.75 CPU each, decoding gets the rest): Ray waits for
        # both before the first batch; the default pool's minimum is one worker, so under load the
        # first one up could convert every clip before the second has loaded its models
        rows = convert_files(
            files, out, tiny_models.voice, num_workers=2, batch_size=1, weights="object-store", **_options(tiny_models),
        )
        assert [r["status"] for r in rows] == ["ok"] * len(CLIPS)
        nodes = {r["node"] for r in rows}
        assert nodes and nodes <= cluster  # the worker nodes converted the files, the head none
        if tuple(int(v) for v in ray.__version__.split(".")[:2]) >= (2, 60):
            assert nodes == cluster  # both did
        # (Ray Data 2.10 to 2.40 give each block to the first idle actor of the pool, so when the blocks
        # come one at a time, decoding slower than converting, one model worker may convert them all)
        _assert_outputs(out, rows, expected)

    def test_a_killed_worker_loses_nothing(self, tiny_models, inputs, expected, tmp_path, monkeypatch):
        from rvcfast.integrations.ray import convert_files

        marker = tmp_path / "crashed"
        monkeypatch.setenv("RVCFAST_RAY_TEST_CRASH", str(marker))
        out = tmp_path / "out"
        rows = convert_files(
            [inputs / f"{n}.wav" for n, *_ in CLIPS], out, tiny_models.voice, num_workers=2, cpus_per_worker=0.75,
            batch_size=2, **_options(tiny_models),
        )
        assert marker.exists()  # a worker did die in the middle of a write
        assert [r["status"] for r in rows] == ["ok"] * len(CLIPS)
        _assert_outputs(out, rows, expected)


# ------------------------------------------------------------------------------ the default pool


class TestDefaultPool:
    """The default CPU layout: one single-threaded worker per core, as many as memory holds, room left for decoding."""

    GiB = 1024**3

    @staticmethod
    def _nodes(*spec: tuple[float, float]) -> list[dict]:
        return [{"NodeID": f"n{k}", "Alive": True, "Resources": {"CPU": c, "memory": m}} for k, (c, m) in enumerate(spec)]

    def _pool(self, monkeypatch, nodes, num_workers=None, cpus_per_worker=None, threads=None):
        from rvcfast.integrations.ray import _job

        monkeypatch.setattr(_job, "_cpu_nodes", lambda: nodes)
        return _job._pool_size(num_workers, 0, cpus_per_worker, threads)

    def test_one_single_threaded_worker_per_core(self, monkeypatch):
        low, high, cpus, per_node = self._pool(monkeypatch, self._nodes((2, 16 * self.GiB)))
        assert (low, high, per_node) == (1, 2, None)
        assert cpus == 0.87  # (2 CPUs - 0.25 for decoding) / 2, rounded down: both fit with a decoding task
        assert high * cpus + 0.25 <= 2

    def test_memory_caps_the_workers_and_they_get_more_threads(self, monkeypatch):
        from rvcfast.integrations.ray import CPU_WORKER_MEMORY
        from rvcfast.integrations.ray._stages import cpu_workers_on_node

        nodes = self._nodes((16, 4.5 * CPU_WORKER_MEMORY), (1, 8 * self.GiB))
        _, high, cpus, _ = self._pool(monkeypatch, nodes)
        assert high == 4 + 1  # four fit in the first node's memory, one on the 1-CPU node
        assert cpus == 0.75  # the tightest node: (1 - 0.25) / 1
        assert cpu_workers_on_node(16, 4.5 * CPU_WORKER_MEMORY) == 4  # each of those four runs 16 // 4 threads
        assert cpu_workers_on_node(8, 0, threads=2) == 4  # no memory figure: by cores alone

    def test_given_counts_and_reservations_are_kept_or_refused(self, monkeypatch):
        nodes = self._nodes((2, 16 * self.GiB))
        assert self._pool(monkeypatch, nodes, cpus_per_worker=1) == (1, 1, 1, None)  # 2 x 1 CPU leaves none to decode
        assert self._pool(monkeypatch, nodes, num_workers=3) == (3, 3, 0.58, 3)  # shared like the default
        assert self._pool(monkeypatch, nodes, num_workers=(1, 2), threads=1)[:2] == (1, 2)
        with pytest.raises(ParameterError, match="need 2.25 CPUs; the cluster has 2"):
            self._pool(monkeypatch, nodes, num_workers=2, cpus_per_worker=1)


    def test_the_default_pool_starts_every_worker_at_once_on_any_ray(self, monkeypatch):
        from rvcfast.integrations.ray import _job

        pool = _job._actor_pool(1, 3, start_all=True)
        if hasattr(pool, "initial_size"):  # a recent Ray Data: a pool of 1..3 that starts 3
            assert (pool.min_size, pool.max_size, pool.initial_size) == (1, 3, 3)
        else:  # an older one (no initial_size): a fixed pool of 3
            assert (pool.min_size, pool.max_size) == (3, 3)
        assert (_job._actor_pool(1, 3, start_all=False).min_size, pool.max_size) == (1, 3)

        class OldStrategy:  # a Ray Data without initial_size
            def __init__(self, min_size: int = 1, max_size: int | None = None) -> None:
                self.min_size, self.max_size = min_size, max_size

        monkeypatch.setattr(ray.data, "ActorPoolStrategy", OldStrategy)
        old = _job._actor_pool(1, 3, start_all=True)
        assert (old.min_size, old.max_size) == (3, 3)


# ------------------------------------------------------------------------------ the extra


def test_importing_rvcfast_does_not_import_ray_and_a_missing_extra_says_what_to_install():
    code = (
        "import sys, rvcfast, rvcfast.cli, rvcfast.cli.convert\n"
        "rvcfast.cli.build_parser()\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "sys.modules['ray'] = None\n"
        "from rvcfast.errors import BackendUnavailableError\n"
        "try:\n"
        "    import rvcfast.integrations.ray\n"
        "except BackendUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "rvcfast[ray]"' in proc.stdout

"""Scale-out on Ray: what the driver checks and plans before any task runs.

Most tests need no cluster: the pool is sized from made-up node lists, files are planned
on the driver, errors are pickled. One small local cluster (``ray.init(num_cpus=2)`` on
127.0.0.1, usage statistics off) covers what only a cluster shows: options refused before
any worker starts, a resumed in-place job through ``rvcfast convert --ray``, and the names
of a lazy dataset's outputs. Ray Data waits at most 60 s for a pool's workers there, so a
pool that could never start fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import soundfile as sf
from helpers import names_file, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast.errors import (
    AudioError,
    BackendUnavailableError,
    ModelLoadError,
    ParameterError,
    UnsafeFileError,
)

try:
    import ray
    import ray.data
    from ray_helpers import actors_wait, record_map_batches
except ImportError:  # pragma: no cover - depends on the environment
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason='Ray Data is not installed (pip install "rvcfast[ray]")')

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

GiB = 1024**3


# ------------------------------------------------------------------------------ errors cross processes


@pytest.mark.parametrize("cls", [ModelLoadError, UnsafeFileError, AudioError])
def test_file_errors_survive_pickling(cls):
    err = cls("/data/voice.pth", "not a voice model")
    err.note = "kept"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.path, back.problem, str(back), back.note) == ("/data/voice.pth", "not a voice model", str(err), "kept")
    assert pickle.loads(pickle.dumps(cls(None, "no file"))).path is None


# ------------------------------------------------------------------------------ the pool, on made-up nodes


def _nodes(*spec: dict[str, float]) -> list[dict]:
    return [{"NodeID": f"n{k}", "Alive": True, "Resources": dict(r)} for k, r in enumerate(spec)]


@pytest.fixture
def cluster_of(monkeypatch):
    """``cluster_of(*resources)``: the nodes the pool is sized for (no Ray started)."""
    from rvcfast.integrations.ray import _job

    def use(*spec: dict[str, float]) -> list[dict]:
        nodes = _nodes(*spec)
        monkeypatch.setattr(_job, "_alive_nodes", lambda: nodes)
        return nodes

    return use


def _spec(per_node, cpus, gpus=0.0, threads=None):
    from rvcfast.integrations.ray._stages import JobSpec
    from rvcfast.params import ConversionParams

    return JobSpec(
        files=None, params=ConversionParams(), out_dir="out", threads=threads, workers_per_node=per_node,
        cpus_per_worker=cpus, gpus_per_worker=gpus,
    )


@needs_ray
class TestPool:
    def _pool(self, num_workers=None, gpus=0.0, cpus=None, threads=None):
        from rvcfast.integrations.ray import _job

        return _job._pool_size(num_workers, gpus, cpus, threads)

    @pytest.mark.parametrize("num_workers", [1, (1, 1), (1, 4), None])
    def test_gpu_workers_on_a_cluster_without_gpus_are_refused(self, cluster_of, num_workers):
        cluster_of({"CPU": 4.0, "memory": 16 * GiB})  # `--workers N --gpus-per-worker 1` passes (1, N)
        with pytest.raises(ParameterError, match="gpus_per_worker=1, but the cluster has no GPU"):
            self._pool(num_workers, gpus=1.0)

    def test_gpu_workers_that_need_more_gpus_than_a_node_or_the_cluster_has_are_refused(self, cluster_of):
        cluster_of({"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0})
        with pytest.raises(ParameterError, match="no node has 2 GPUs"):
            self._pool(1, gpus=2.0)
        with pytest.raises(ParameterError, match="3 model worker.* need 3 GPUs; the cluster has 2"):
            self._pool(3, gpus=1.0)
        with pytest.raises(ParameterError, match="do not fit: the nodes hold 2"):
            self._pool(3, gpus=0.6)  # 1.8 of 2 GPUs, but 0.6 + 0.6 fits no 1-GPU node
        assert self._pool(2, gpus=1.0)[:2] == (2, 2)

    def test_a_reservation_no_single_node_holds_is_refused(self, cluster_of):
        cluster_of({"CPU": 1.0}, {"CPU": 1.0})  # 2 CPUs in all, but 1 per node
        for num_workers in (1, None):
            with pytest.raises(ParameterError, match="a model worker of 1.5 CPU fits on no node.* largest node has 1 CPUs"):
                self._pool(num_workers, cpus=1.5)
        assert self._pool(2) == (2, 2, 0.75, 1)  # the default share fits: one worker per node

    def test_a_reservation_is_placed_node_by_node(self, cluster_of):
        cluster_of({"CPU": 3.0}, {"CPU": 3.0})  # 6 CPUs; a node keeps 0.25 for decoding
        assert self._pool(2, cpus=1.25)[:3] == (2, 2, 1.25)  # one per node
        with pytest.raises(ParameterError, match="3 model workers of 1.5 CPU do not fit: the nodes hold 2"):
            self._pool(3, cpus=1.5)  # 4.75 of 6 CPUs, but two 1.5-CPU workers leave no node 0.25

    def test_cpus_per_worker_in_the_default_layout_gives_the_worker_the_node(self, cluster_of):
        from rvcfast.integrations.ray._stages import worker_threads

        (node,) = cluster_of({"CPU": 2.0, "memory": 16 * GiB})
        low, high, cpus, per_node = self._pool(cpus=1.0)
        assert (low, high, cpus, per_node) == (1, 1, 1.0, None)  # 2 x 1 CPU would leave none to decode
        assert worker_threads(node["Resources"], _spec(per_node, cpus)) == 2  # the only worker: both cores

    @pytest.mark.parametrize(
        ("resources", "threads", "expected"),
        [
            ({"CPU": 2.0, "memory": 16 * GiB}, None, 1),  # two single-threaded workers
            ({"CPU": 16.0, "memory": 9 * GiB}, None, 4),  # memory holds four: 16 // 4 threads each
            ({"CPU": 8.0, "memory": 64 * GiB}, 2, 2),  # as asked
        ],
    )
    def test_default_layout_threads_fill_the_node(self, cluster_of, resources, threads, expected):
        from rvcfast.integrations.ray._stages import default_workers_on_node, worker_threads

        (node,) = cluster_of(resources)
        _, high, cpus, per_node = self._pool(threads=threads)
        assert worker_threads(resources, _spec(per_node, cpus, threads=threads)) == expected
        assert high * expected <= resources["CPU"]
        assert default_workers_on_node(resources, cpus, 0.0, threads) == high

    def test_gpu_workers_split_their_own_node_not_every_node(self, cluster_of):
        from rvcfast.integrations.ray._stages import worker_threads

        cpu_head, gpu_node = cluster_of({"CPU": 8.0, "memory": 32 * GiB}, {"CPU": 16.0, "GPU": 4.0, "memory": 64 * GiB})
        low, high, cpus, per_node = self._pool(gpus=1.0)
        assert (low, high, cpus) == (1, 4, 1.0)  # one per GPU, all four on the GPU node
        threads = worker_threads(gpu_node["Resources"], _spec(per_node, cpus, gpus=1.0))
        assert threads == 4 and high * threads <= 16

    def test_the_default_cpu_pool_reserves_what_the_layout_gave_each_worker(self, cluster_of):
        from rvcfast.integrations.ray import CPU_WORKER_MEMORY, _job

        nodes = cluster_of(
            {"CPU": 4.0, "memory": 1.1 * CPU_WORKER_MEMORY},  # memory for one model worker
            {"CPU": 4.0, "memory": 8.5 * CPU_WORKER_MEMORY},  # for four
        )
        _, high, cpus, _ = self._pool()
        memory = _job._worker_memory(_job._cpu_nodes(), cpus, None)
        assert high == 5 and memory == CPU_WORKER_MEMORY
        # Ray places by every reservation: no node takes more workers than its layout
        placed = [min(int(n["Resources"]["CPU"] // cpus), int(n["Resources"]["memory"] // memory)) for n in nodes]
        assert placed == [1, 4]
        small = cluster_of({"CPU": 2.0, "memory": 0.5 * CPU_WORKER_MEMORY})  # the layout still puts one there
        _, high, cpus, _ = self._pool()
        assert high == 1 and _job._worker_memory(small, cpus, None) == int(0.5 * CPU_WORKER_MEMORY)
        assert _job._worker_memory(_nodes({"CPU": 2.0}), 0.87, None) is None  # no memory figure: none reserved


# ------------------------------------------------------------------------------ planning on the driver


@needs_ray
def test_a_file_named_twice_is_planned_once(tmp_path):
    from rvcfast.integrations.ray._job import plan_files

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        sf.write(src / f"{name}.wav", tone(0.2), 16000)
    rows = plan_files([src, src / "a.wav"], tmp_path / "out", "wav", True, False)
    assert [(Path(r["path"]).name, Path(r["output_path"]).name) for r in rows] == [("a.wav", "a.wav"), ("b.wav", "b.wav")]
    rows = plan_files([src / "a.wav", f"{src}/./a.wav"], tmp_path / "out", "wav", True, False)
    assert [Path(r["path"]).name for r in rows] == ["a.wav"]


@needs_ray
def test_a_bad_manifest_name_is_refused_before_anything_runs(tiny_models, tmp_path, monkeypatch, capsys):
    from rvcfast.cli import main
    from rvcfast.integrations import ray as scale
    from rvcfast.integrations.ray import _job

    def no_cluster(*args, **kwargs):
        raise AssertionError("connected to a cluster before checking the manifest name")

    monkeypatch.setattr(_job, "connected", no_cluster)
    monkeypatch.setattr(scale, "connected", no_cluster)
    sf.write(tmp_path / "a.wav", tone(0.2), 16000)
    with pytest.raises(ParameterError, match=r"m\.csv: name it \.jsonl"):
        scale.convert_files([tmp_path / "a.wav"], tmp_path / "out", tiny_models.voice, manifest=tmp_path / "m.csv")
    argv = ["convert", str(tiny_models.voice), str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), "-q", "--ray", "local",
            "--manifest", str(tmp_path / "m.csv")]
    assert main(argv) == 2
    assert "name it .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ on a small local cluster


@needs_ray
@pytest.mark.ray
class TestChecksOnACluster:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def cluster(cls):
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            with actors_wait(60):  # a pool that cannot start fails, never hangs
                yield
        finally:
            ray.shutdown()

    @pytest.fixture(scope="class")
    @classmethod
    def clip(cls, tmp_path_factory):
        path = tmp_path_factory.mktemp("ray_checks") / "a.wav"
        sf.write(path, tone(0.4), 16000)
        return path

    @staticmethod
    def _options(tiny_models, **extra):
        from test_ray import _options

        return _options(tiny_models, **extra)

    def test_pools_that_could_never_start_are_refused(self, tiny_models, clip, tmp_path, capsys):
        from rvcfast.cli import main
        from rvcfast.integrations.ray import convert_files

        out = tmp_path / "never"
        with pytest.raises(ParameterError, match="the cluster has no GPU"):
            convert_files([clip], out, tiny_models.voice, num_workers=1, gpus_per_worker=1, **self._options(tiny_models))
        argv = [
            "convert", str(tiny_models.voice), str(clip), "-o", str(out), "--index", str(tiny_models.index),
            "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "-q",
            "--ray", "--workers", "1", "--gpus-per-worker", "1",
        ]
        assert main(argv) == 2
        assert "the cluster has no GPU" in capsys.readouterr().err
        assert not out.exists()

    def test_engine_options_are_refused_as_a_local_run_refuses_them(self, tiny_models, clip, tmp_path):
        from rvcfast.api import Converter
        from rvcfast.integrations.ray import convert_files

        out = tmp_path / "never"
        cases = [
            (dict(f0="bogus"), BackendUnavailableError, "unknown F0 extractor 'bogus'"),
            (dict(f0_options={"bogus": 1}), ParameterError, "does not accept option.* bogus"),
            (dict(dtype="int8"), ParameterError, "dtype must be"),
            (dict(index=tiny_models.index_256), ModelLoadError, "index dimension 256 does not match"),
        ]
        for options, error, message in cases:
            local = {k: v for k, v in self._options(tiny_models, **options).items() if k in ("index", "encoder", "f0_weights", "device", "f0", "f0_options", "dtype")}
            with pytest.raises(error, match=message):
                Converter.from_pretrained(tiny_models.voice, **local)
            with pytest.raises(error, match=message):
                convert_files([clip], out, tiny_models.voice, num_workers=1, **self._options(tiny_models, **options))
        with pytest.raises(ParameterError, match="device 'cuda' requested but CUDA is not available to the model workers"):
            convert_files([clip], out, tiny_models.voice, num_workers=1, **self._options(tiny_models, device="cuda"))
        assert not out.exists()

    def test_errors_raised_in_a_task_arrive_as_themselves(self):
        @ray.remote(num_cpus=0)
        def fail():
            raise ModelLoadError("/nodes/own/voice.pth", "not a voice model")

        with pytest.raises(ModelLoadError) as info:
            ray.get(fail.remote(), timeout=60)
        assert (info.value.path, info.value.problem) == ("/nodes/own/voice.pth", "not a voice model")

    def test_the_default_pool_reserves_memory_per_worker(self, tiny_models, clip, tmp_path, monkeypatch):
        from rvcfast.integrations.ray import CPU_WORKER_MEMORY, convert_dataset

        calls = record_map_batches(monkeypatch)
        opts = self._options(tiny_models)
        opts.pop("progress")
        convert_dataset([clip], tiny_models.voice, tmp_path / "out", **opts)  # lazy: nothing runs
        convert_dataset([clip], tiny_models.voice, tmp_path / "out", num_workers=1, **opts)
        workers = [kw for name, kw in calls if name == "ConvertWorker"]
        node_memory = ray.nodes()[0]["Resources"]["memory"]
        assert workers[0]["memory"] == min(CPU_WORKER_MEMORY, int(node_memory // workers[0]["compute"].max_size))
        assert "memory" not in workers[1]  # a pool of a given size reserves what it is told
        assert not (tmp_path / "out").exists()

    def test_command_line_resumes_an_in_place_job(self, tiny_models, tmp_path):
        from rvcfast.cli import main

        for name in ("a", "b"):
            sf.write(tmp_path / f"{name}.wav", tone(0.3), 16000)
        argv = [
            "convert", str(tiny_models.voice), str(tmp_path), "-o", str(tmp_path), "--index", str(tiny_models.index),
            "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "-q",
            "--ray", "--skip-existing",  # the default pool: two workers, each reserving its memory
        ]
        audio = lambda: sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".wav")  # noqa: E731
        assert main(argv) == 0
        assert audio() == ["a.wav", "a_rvc.wav", "b.wav", "b_rvc.wav"]
        stamps = {name: (tmp_path / name).stat().st_mtime_ns for name in audio()}
        assert main(argv) == 0
        assert {name: (tmp_path / name).stat().st_mtime_ns for name in audio()} == stamps  # nothing converted again
        rows = [json.loads(line) for line in (tmp_path / "rvcfast-manifest.jsonl").read_text().splitlines()]
        assert [(Path(r["path"]).name, r["status"], Path(r["output_path"]).name) for r in rows] == [
            ("a.wav", "skipped", "a_rvc.wav"), ("b.wav", "skipped", "b_rvc.wav"),
        ]

    def test_dataset_rows_never_share_an_output_or_overwrite_their_input(self, tiny_models, tmp_path):
        from rvcfast.integrations.ray import convert_dataset

        for rel in ("x/take.wav", "y/take.wav", "z/self.wav"):
            (tmp_path / rel).parent.mkdir(exist_ok=True)
            sf.write(tmp_path / rel, tone(0.3), 16000)
        before = (tmp_path / "z/self.wav").read_bytes()
        out = tmp_path / "out"
        ds = ray.data.from_items([
            {"path": str(tmp_path / "x/take.wav"), "output_path": None},
            {"path": str(tmp_path / "y/take.wav"), "output_path": None},  # the same stem: out/take.wav too
            {"path": str(tmp_path / "z/self.wav"), "output_path": str(tmp_path / "z/./self.wav")},
        ])
        opts = self._options(tiny_models)
        opts.pop("progress")
        rows = {str(Path(r["path"]).relative_to(tmp_path)): r for r in convert_dataset(ds, tiny_models.voice, out, num_workers=1, **opts).take_all()}
        takes = [rows["x/take.wav"], rows["y/take.wav"]]
        assert sorted(r["status"] for r in takes) == ["error", "ok"]
        winner, loser = sorted(takes, key=lambda r: r["status"] == "error")
        assert loser["output_path"] == str(out / "take.wav") and names_file(loser["error"], loser["path"])
        assert "already the output of" in loser["error"] and winner["path"] in loser["error"]
        assert rows["z/self.wav"]["status"] == "error" and "the output is the input itself" in rows["z/self.wav"]["error"]
        assert (tmp_path / "z/self.wav").read_bytes() == before
        assert sorted(p.name for p in out.iterdir()) == ["take.wav"]


# ------------------------------------------------------------------------------ no cluster to join


@pytest.mark.parametrize("address", ["auto", "10.0.0.1:6379"])
def test_no_running_cluster_is_an_rvcfast_error_saying_what_to_do(monkeypatch, address):
    # Ray's own ConnectionError escaped, which names a `--address` flag rvcfast does not have
    from rvcfast.errors import RvcfastError
    from rvcfast.integrations.ray import _job

    class NoCluster:
        def is_initialized(self):
            return False

        def init(self, address=None, **kw):
            raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by setting `--address`")

    monkeypatch.setattr(_job, "_ray", lambda: NoCluster())
    with pytest.raises(RvcfastError) as info:
        with _job.connected(address):
            raise AssertionError("connected without a cluster")
    assert f"address={address!r}" in str(info.value) and "ray start --head" in str(info.value)
    assert "--address" not in str(info.value)


def test_a_manifest_gets_the_permissions_a_plain_write_gives(tmp_path):
    # its temporary file came from mkstemp (0o600), which the manifest kept
    from rvcfast.integrations.ray._job import write_manifest

    old = os.umask(0o022)
    try:
        p = write_manifest([{"input": "a.wav", "output": "out/a.wav", "error": None}], tmp_path / "rows.jsonl")
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == 0o644
    assert json.loads(p.read_text().splitlines()[0])["input"] == "a.wav"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["rows.jsonl"]


def test_a_ray_data_that_fails_to_import_beside_its_pyarrow_is_a_backend_error(tmp_path):
    # Ray 2.10-2.21's ray.data calls pyarrow.PyExtensionType, which pyarrow 21 removed: importing
    # the runner raised that AttributeError from deep inside Ray instead of saying what to install
    import subprocess
    import sys

    fake = tmp_path / "ray"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text(
        "raise AttributeError(\"module 'pyarrow' has no attribute 'PyExtensionType'\")\n"
    )
    code = (
        "from rvcfast.errors import BackendUnavailableError\n"
        "try:\n"
        "    import rvcfast.integrations.ray\n"
        "except BackendUnavailableError as exc:\n"
        "    print('BackendUnavailableError:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout
    assert said.startswith("BackendUnavailableError: Ray Data does not import next to the installed pyarrow"), said
    assert "PyExtensionType" in said and "Ray 2.22 or newer" in said and "pyarrow < 21" in said

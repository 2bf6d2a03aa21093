"""Conversion jobs on a Ray cluster: :func:`convert_dataset` (lazy) and :func:`convert_files` (eager)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...atomic import atomic_write
from ...errors import ParameterError, RvcfastError
from ...params import ConversionParams
from ...writing import SUPPORTED_WRITE_FORMATS, check_bitrate, remove_stale_parts
from . import _rows, _storage, _storage_plan
from ._stages import (
    CPU_WORKER_MEMORY,
    CRASH_ENV,
    DECODE_CPUS,
    ConvertWorker,
    JobSpec,
    OutputClaims,
    decode_audio,
    default_workers_on_node,
    workers_fitting_node,
    write_outputs,
)
from ._voices import (
    DEFAULT_VOICE_TEMPLATE,
    NO_OUTPUT_PATH,
    VoiceJob,
    VoicesWorker,
    decode_voices,
    for_voice,
    plan_voice_outputs,
    voice_list,
    voice_settings,
)
from ._weights import WEIGHT_MODES, ModelFiles, resolve_files, ship_files

__all__ = [
    "convert_dataset", "convert_files", "connected", "plan_files", "write_manifest", "check_manifest",
    "CPU_WORKER_MEMORY", "DECODE_CPUS", "MANIFEST_NAME", "DEFAULT_BATCH_SIZE",
]

#: The manifest :func:`convert_files` writes into the output folder unless told otherwise.
MANIFEST_NAME = "rvcfast-manifest.jsonl"

#: Files per model call of a worker (the engine packs their segments by length).
DEFAULT_BATCH_SIZE = 2

WorkerCount = int | tuple[int, int] | None


# ------------------------------------------------------------------------------ the cluster


def _ray() -> Any:
    import ray

    return ray


def _start_local() -> None:
    """A new local single-node cluster for this process: no dashboard, no usage statistics."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _ray().init(address="local", include_dashboard=False)


@contextmanager
def connected(address: str | None, *, fallback_local: bool = False, note: Any = None) -> Iterator[None]:
    """Use the current Ray connection; else connect to ``address`` or start a local cluster, and close it after.

    ``address``: ``None`` joins the cluster named by ``RAY_ADDRESS`` (as inside a Ray job)
    or starts a local one; ``"local"`` always starts a local one; ``"auto"`` joins the
    running one (``RAY_ADDRESS`` or ``ray start`` on this machine), or with
    ``fallback_local`` starts a local one when there is none (``note(message)`` is told);
    anything else is a cluster address (``ray://host:10001``, ``host:6379``).
    """
    ray = _ray()
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == "local" or (address is None and not os.environ.get("RAY_ADDRESS")):
        _start_local()
    else:
        try:
            ray.init(address=address)  # None: RAY_ADDRESS
        except ConnectionError:
            if not (fallback_local and address == "auto"):
                from ...errors import RvcfastError

                where = f"address={address!r}" if address is not None else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')!r}"
                raise RvcfastError(
                    f"no running Ray cluster found for {where}: start one (`ray start --head`), "
                    "or pass address=None (without RAY_ADDRESS) or 'local' for a local one"
                ) from None
            if note is not None:
                note("no running Ray cluster found; starting a local one for this job")
            _start_local()
        except ValueError as exc:
            if "ray[client]" not in str(exc) and "Ray Client" not in str(exc):
                raise
            from ...errors import BackendUnavailableError

            raise BackendUnavailableError(
                f'connecting to {address or os.environ.get("RAY_ADDRESS")!r} needs the Ray Client: pip install "ray[client]"'
            ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _alive_nodes() -> list[dict[str, Any]]:
    return [n for n in _ray().nodes() if n.get("Alive")]


def _cpu_nodes() -> list[dict[str, Any]]:
    return [n for n in _alive_nodes() if n.get("Resources", {}).get("CPU", 0) > 0]


def _gpu_nodes() -> list[dict[str, Any]]:
    return [n for n in _alive_nodes() if n.get("Resources", {}).get("GPU", 0) > 0]


#: CPUs each node keeps free beside the model workers when the job's dataset is the user's: Ray
#: Data's read and ``map`` tasks reserve one CPU each by default.
USER_STAGE_CPUS = 1.0


def _cpu_layout(
    nodes: list[dict[str, Any]], cpus_per_worker: float | None, threads: int | None, per_worker: float | None = None,
    reserve: float = DECODE_CPUS,
) -> tuple[int, float]:
    """The default CPU pool: (workers, CPUs reserved by each).

    Each node gets :func:`~._stages.default_workers_on_node` workers, fewer where
    ``cpus_per_worker`` leaves no room for them; without ``cpus_per_worker`` they share the
    node's CPUs less ``reserve`` (one decoding task's, or a user dataset's stage's), so those
    tasks always find a CPU (the
    tightest node sets the figure: Ray reserves the same for every worker of a pool). Each
    worker works its node's count out again the same way, for its thread count.
    """
    total, share = 0, math.inf
    for node in nodes:
        res = node["Resources"]
        count = default_workers_on_node(res, cpus_per_worker, 0.0, threads, per_worker)
        if count >= 1:
            total += count
            share = min(share, max(0.0, res["CPU"] - reserve) / count)
    if total == 0:
        return 1, cpus_per_worker or 1.0  # refused below with the figures
    return total, cpus_per_worker if cpus_per_worker is not None else math.floor(share * 100) / 100


def _worker_memory(nodes: list[dict[str, Any]], cpus: float, threads: int | None, per_worker: float | None = None) -> int | None:
    """Memory each worker of the default CPU pool reserves, so Ray keeps to the layout on every node.

    :data:`CPU_WORKER_MEMORY` (``per_worker``: more for several voices), or less where a node
    got a worker its memory does not hold (every node gets at least one); ``None`` where no
    node reports its memory.
    """
    shares = []
    for node in nodes:
        res = node["Resources"]
        count = default_workers_on_node(res, cpus, 0.0, threads, per_worker)
        if count >= 1 and res.get("memory", 0) > 0:
            shares.append(res["memory"] / count)
    return int(min(per_worker or CPU_WORKER_MEMORY, *shares)) if shares else None


def _given_range(num_workers: WorkerCount) -> tuple[int, int]:
    if isinstance(num_workers, int) and not isinstance(num_workers, bool):
        low = high = num_workers
    elif isinstance(num_workers, (tuple, list)) and len(num_workers) == 2:
        low, high = (int(v) for v in num_workers)
    else:
        raise ParameterError(f"num_workers must be a number or a (min, max) pair, got {num_workers!r}")
    if not 1 <= low <= high:
        raise ParameterError(f"num_workers must be at least 1 (and min <= max), got {num_workers!r}")
    return low, high


def _check_fit(
    high: int, cpus: float, gpus: float, nodes: list[dict[str, Any]], hosts: list[dict[str, Any]], reserve: float = DECODE_CPUS
) -> None:
    """Refuse a pool whose workers Ray could never all place, or that leaves the other stages no
    CPU (it would wait for them for ever)."""
    beside = "for decoding" if reserve <= DECODE_CPUS else "for the dataset's own read and map stages"
    if gpus > 0:
        total_gpus = sum(n["Resources"]["GPU"] for n in hosts)
        most = max((n["Resources"]["GPU"] for n in hosts), default=0.0)
        if most < gpus - 1e-9:
            where = "the cluster has no GPU" if not hosts else f"no node has {gpus:g} GPUs (the most on one node: {most:g})"
            raise ParameterError(f"gpus_per_worker={gpus:g}, but {where}")
        if high * gpus > total_gpus + 1e-9:
            raise ParameterError(
                f"{high} model worker(s) x {gpus:g} GPU need {high * gpus:g} GPUs; the cluster has {total_gpus:g}: "
                "lower num_workers or gpus_per_worker"
            )
    total_cpus = sum(n["Resources"]["CPU"] for n in nodes)
    if high * cpus + reserve > total_cpus + 1e-9:
        raise ParameterError(
            f"{high} model worker(s) x {cpus:g} CPU plus {reserve:g} CPU {beside} need "
            f"{high * cpus + reserve:g} CPUs; the cluster has {total_cpus:g}: "
            "lower num_workers or cpus_per_worker"
        )
    fit = sum(workers_fitting_node(n["Resources"], cpus, gpus) for n in hosts)
    if fit < high:
        worker = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus > 0 else "")
        largest = max((n["Resources"].get("CPU", 0.0) for n in hosts), default=0.0)
        raise ParameterError(
            (f"a model worker of {worker} fits on no node" if fit == 0 else f"{high} model workers of {worker} do not fit: the nodes hold {fit}")
            + f" (a worker's reservation must fit on one node beside {DECODE_CPUS:g} CPU for decoding; the largest node "
            f"has {largest:g} CPUs): lower cpus_per_worker or num_workers"
        )


def _pool_size(
    num_workers: WorkerCount, gpus_per_worker: float, cpus_per_worker: float | None, threads: int | None,
    per_worker: float | None = None, reserve: float = DECODE_CPUS,
) -> tuple[int, int, float, int | None]:
    """``(min, max)`` model workers, the CPUs each reserves, and workers per node (``None``: the default layout).

    Given ``num_workers`` is taken as it is (an int: a fixed pool; ``(min, max)``: Ray
    Data's autoscaling pool); by default one worker per ``gpus_per_worker`` GPUs, or on CPUs
    the layout of :func:`_cpu_layout`, every worker started at once (the pool may shrink).
    Refused when the workers cannot all be placed: on too few CPUs or GPUs, or a reservation
    no single node holds beside a decoding task. ``reserve``: the CPUs each node keeps free for
    the other stages (:data:`USER_STAGE_CPUS` for a user's dataset, whose read and map tasks
    reserve a whole CPU each: with less, they never start and the job waits for ever).
    """
    nodes = _cpu_nodes()
    hosts = _gpu_nodes() if gpus_per_worker > 0 else nodes  # where model workers can run
    total_cpus = sum(n["Resources"]["CPU"] for n in nodes)
    per_node: int | None = None
    if num_workers is None:
        low = 1
        if gpus_per_worker > 0:
            cpus = 1.0 if cpus_per_worker is None else cpus_per_worker
            high = sum(workers_fitting_node(n["Resources"], cpus, gpus_per_worker) for n in hosts)
            if cpus > 0:  # never so many that decoding finds no CPU left
                high = min(high, int((total_cpus - reserve) // cpus))
            high = max(1, high)  # none fit: refused below with the figures
        else:
            high, cpus = _cpu_layout(nodes, cpus_per_worker, threads, per_worker, reserve)
    else:
        low, high = _given_range(num_workers)
        per_node = max(1, math.ceil(high / max(1, len(hosts))))
        if cpus_per_worker is not None:
            cpus = cpus_per_worker
        elif gpus_per_worker > 0:
            cpus = 1.0
        else:  # the given number of CPU workers share the CPUs a node has left beside decoding
            tightest = min((n["Resources"]["CPU"] for n in nodes), default=1.0)
            cpus = max(0.01, math.floor((tightest - reserve) / per_node * 100) / 100)
    _check_fit(high, cpus, gpus_per_worker, nodes, hosts, reserve)
    return low, high, cpus, per_node


def _actor_pool(low: int, high: int, *, start_all: bool) -> Any:
    """Ray Data's actor pool of ``low``..``high`` workers; ``start_all`` starts ``high`` at once.

    Older Ray releases have no ``initial_size``: there a pool that starts all its workers is a fixed one.
    """
    strategy = _ray().data.ActorPoolStrategy
    if not start_all:
        return strategy(min_size=low, max_size=high)
    if "initial_size" in inspect.signature(strategy.__init__).parameters:
        return strategy(min_size=low, max_size=high, initial_size=high)
    return strategy(min_size=high, max_size=high)


# ------------------------------------------------------------------------------ checks on the driver


def _check_options(
    fmt: str, batch_size: int, gpus_per_worker: float, cpus_per_worker: float | None, threads: int | None, write_in: str, weights: str
) -> None:
    if not isinstance(fmt, str) or fmt.lower() not in SUPPORTED_WRITE_FORMATS:
        raise ParameterError(f"format must be one of {sorted(SUPPORTED_WRITE_FORMATS)}, got {fmt!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be a whole number of files >= 1, got {batch_size!r}")
    if not gpus_per_worker >= 0 or (cpus_per_worker is not None and not cpus_per_worker >= 0) or (gpus_per_worker == 0 and cpus_per_worker == 0):
        raise ParameterError(
            f"gpus_per_worker ({gpus_per_worker!r}) and cpus_per_worker ({cpus_per_worker!r}) must be >= 0, one of them > 0"
        )
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ParameterError(f"threads_per_worker must be a whole number >= 1, got {threads!r}")
    if write_in not in ("actor", "task"):
        raise ParameterError(f"write_in must be 'actor' or 'task', got {write_in!r}")
    if weights not in WEIGHT_MODES:
        raise ParameterError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")


def _check_model(model: str | os.PathLike[str], f0: Any, params: dict[str, Any]) -> tuple[ConversionParams, Any]:
    """Conversion parameters checked against the voice model (loaded once on the driver's CPU); and the model."""
    from ...models.synthesizer import load_vocoder

    if not isinstance(f0, str):
        raise ParameterError(f"on a cluster f0 must be a backend name (workers build their own), got {type(f0).__name__}")
    conv_params = ConversionParams.build(None, **params).validate()
    voc = load_vocoder(model, device="cpu")
    return conv_params.validate(voc), voc


def _check_device(device: Any, dtype: Any, gpus_per_worker: float) -> None:
    """The device and precision the workers will use, checked as a local run checks them.

    Only what does not depend on the workers' hardware: a CUDA device needs workers that
    reserve a GPU (Ray hides the GPUs from any other); ``float16`` on a worker's CPU is
    left to the worker, whose CPU may differ from the driver's.
    """
    import torch

    from ...runtime import resolve_device, resolve_dtype

    if device is not None and device != "auto":
        try:
            is_cuda = torch.device(device).type == "cuda"
        except (RuntimeError, TypeError):
            is_cuda = False  # resolve_device names the problem
        if not is_cuda:
            resolve_device(device)
        elif gpus_per_worker <= 0:
            raise ParameterError(
                f"device {device!r} requested but CUDA is not available to the model workers: they reserve no GPU "
                "(set gpus_per_worker, --gpus-per-worker on the command line)"
            )
    if not (isinstance(dtype, str) and dtype.lower() == "auto"):
        resolve_dtype(dtype, torch.device("cuda"))  # the name and the kind; no hardware check


def _check_engine(voc: Any, files: Any, f0: str, f0_options: dict[str, Any] | None, model: Any) -> None:
    """What an :class:`~rvcfast.engine.Engine` checks when it loads, done once on the driver's CPU.

    The index must fit the voice model, and the F0 backend must exist and take
    ``f0_options`` (it is built here once, as a local run builds it; its weights stay in
    this process's model cache). A worker that failed here would die before converting
    anything, and Ray would retry it.
    """
    import torch

    if files.index is not None:
        from ...index import load_index

        # refused from its header (before its vectors) when it is not this model's
        load_index(files.index, feature_dim=voc.feature_dim, model=f"{voc.version} model {os.fspath(model)}")
    if voc.has_f0:
        from ...f0.registry import build_f0_extractor

        # the backend's own device/dtype options are for the workers' hardware
        options = {k: v for k, v in (f0_options or {}).items() if k not in ("device", "dtype")}
        build_f0_extractor(f0, weights=files.f0_weights, options=options, device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------------------ the lazy form


def _absolute(inputs: Any, out_dir: str | os.PathLike[str]) -> tuple[list[str], str]:
    """The inputs (paths and folders) and the output folder as absolute paths: the workers do not
    share the driver's working directory."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = list(inputs)
    if any(not isinstance(i, (str, os.PathLike)) for i in items):
        raise ParameterError("a cluster job takes paths and folders (arrays live in one process: use Converter.convert_batch)")
    return [os.path.abspath(os.path.expanduser(os.fspath(i))) for i in items], os.path.abspath(os.path.expanduser(os.fspath(out_dir)))


def plan_files(
    inputs: Any, out_dir: str | os.PathLike[str], fmt: str, skip_existing: bool, recursive: bool, filesystem: Any = None
) -> list[dict[str, str]]:
    """Paths and folders (or URIs and prefixes) → ``path``/``output_path`` rows, named exactly as ``convert_batch`` names them."""
    from ...batch import BatchOptions, expand_inputs

    if _storage.uses_storage(inputs, out_dir):
        listed, (outputs,) = _storage_plan.plan_uri_outputs(inputs, os.fspath(out_dir), [None], "{stem}", fmt, skip_existing, recursive, filesystem)
        return [{"path": p, "output_path": o} for p, o in zip(listed, outputs)]
    items, out_dir = _absolute(inputs, out_dir)
    options = BatchOptions(out_dir=out_dir, format=fmt.lower(), skip_existing=skip_existing, recursive=recursive)
    jobs = expand_inputs(items, options)
    if not jobs:
        raise ParameterError(f"no audio files found in {', '.join(map(str, items))}" + ("" if recursive else " (recursive=True for sub-folders)"))
    return [{"path": str(j.path), "output_path": str(j.out_path)} for j in jobs]


def plan_voice_files(
    inputs: Any, out_dir: str | os.PathLike[str], voices: Any, options: dict[str, Any], recursive: bool
) -> tuple[list[dict[str, str]], list[str]]:
    """Paths and folders → one row per input with every voice's output (``voice_outputs``, a JSON list),
    named as :func:`rvcfast.convert_voices` names them; and the voices' names.

    ``options`` are the job's keywords: ``format``, ``skip_existing``, ``name_template``,
    ``voice_params`` and the conversion parameters (for ``{pitch}``).
    """
    from ...voices import _conversion_kwargs

    named = voice_list(voices, options.get("model"), options.get("index"))
    names = [name for name, _, _ in named]
    shared = _conversion_kwargs(options)
    pitches = []
    for name, settings in zip(names, voice_settings(names, shared, options.get("voice_params"))):
        try:
            pitches.append(ConversionParams.build(None, **settings).pitch)
        except RvcfastError as exc:
            raise for_voice(name, exc) from None
    template = options.get("name_template") or DEFAULT_VOICE_TEMPLATE
    fmt = str(options.get("format", "wav")).lower()
    if _storage.uses_storage(inputs, out_dir):
        args = (list(zip(names, pitches)), template, fmt, options.get("skip_existing", True), recursive, options.get("filesystem"))
        return _storage_plan.plan_voice_rows(inputs, os.fspath(out_dir), *args), names
    items, out = _absolute(inputs, out_dir)
    return plan_voice_outputs(items, out, list(zip(names, pitches)), template, fmt, options.get("skip_existing", True), recursive), names


class _Planned:
    """Rows planned on the driver (:func:`plan_files`, :func:`plan_voice_files`): every output name is unique already."""

    def __init__(self, items: list[dict[str, str]]) -> None:
        self.items = items


def _items_dataset(items: list[dict[str, str]], batch_size: int) -> Any:
    """One block per model batch: a decoding task prepares the files of one batch."""
    per_block = batch_size if isinstance(batch_size, int) and batch_size > 0 else 1  # checked later, with the rest
    return _ray().data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / per_block)))


def _check_one(
    model: Any, index: Any, params: dict[str, Any], engine: dict[str, Any], output: tuple[str, str | None, int | None]
) -> tuple[ConversionParams, ModelFiles, Any]:
    """The voice model with its conversion parameters and engine options, checked on the driver as
    a local run checks them; its settings, its files resolved to absolute paths, and the model."""
    if model is None:
        raise ParameterError("no voice model: pass model (a .pth file), or voices= for several voices")
    conv_params, voc = _check_model(model, engine["f0"], params)
    # format, subtype and bitrate at the output rate (Opus at 40 kHz, an MP3 bitrate the rate has not): not per row
    conv_params.check_output(output[0], output[1], voc.sample_rate, output[2])
    files = resolve_files(
        model, index=index, encoder=engine["encoder"], f0=engine["f0"], f0_weights=engine["f0_weights"],
        has_f0=bool(voc.has_f0), allow_download=engine["allow_download"],
    )
    _check_engine(voc, files, engine["f0"], engine["f0_options"], model)
    return conv_params, files, voc


def _check_voices(
    named: list[tuple[str, str, str | None]], voice_params: Any, params: dict[str, Any], engine: dict[str, Any],
    output: tuple[str, str | None, int | None], weights: str,
) -> tuple[tuple[VoiceJob, ...], int]:
    """Every voice checked as :func:`_check_one` checks one (an error names the voice), with its files
    shipped (the files the voices share once); and the memory a worker needs beyond one voice's."""
    names = [name for name, _, _ in named]
    shipped: dict[tuple[str, str], Any] = {}
    jobs, extra = [], 0
    for (name, model, index), settings in zip(named, voice_settings(names, params, voice_params)):
        try:
            conv_params, files, voc = _check_one(model, index, settings, engine, output)
        except RvcfastError as exc:
            raise for_voice(name, exc) from None
        del voc
        jobs.append(VoiceJob(name, ship_files(files, weights, shipped), conv_params))
        if jobs[1:]:  # each further voice: its model (float32 in memory: up to twice a half-precision file) and index
            extra += 2 * os.path.getsize(files.model) + (os.path.getsize(files.index) if files.index else 0)
    return tuple(jobs), extra


def _checked(
    model: Any, index: Any, voices: Any, voice_params: Any, name_template: str | None, params: dict[str, Any],
    engine: dict[str, Any], output: tuple[str, str | None, int | None], weights: str,
) -> dict[str, Any]:
    """The models and settings of a job (``voices``: several), checked: the JobSpec's fields."""
    from ...batch_inputs import check_name_template
    from ...voices import _check_template

    if voices is None:
        if voice_params is not None or name_template is not None:
            raise ParameterError("voice_params and name_template are for jobs with voices= (a one-voice job names outputs {stem})")
        conv_params, files, _ = _check_one(model, index, params, engine, output)
        return {"files": ship_files(files, weights), "params": conv_params}
    named = voice_list(voices, model, index)
    template = DEFAULT_VOICE_TEMPLATE if name_template is None else name_template
    check_name_template(template)
    _check_template(template, len(named), out_dir=True)  # the job always writes: the voices need their own names
    jobs, extra = _check_voices(named, voice_params, params, engine, output, weights)
    return {"files": jobs[0].files, "params": jobs[0].params, "voices": jobs, "name_template": template, "extra_memory": extra}


def convert_dataset(
    ds: Any,
    model: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    voices: Any = None,
    voice_params: Any = None,
    name_template: str | None = None,
    index: str | os.PathLike[str] | None = None,
    encoder: str | os.PathLike[str] | None = None,
    f0: str = "rmvpe",
    f0_weights: str | os.PathLike[str] | None = None,
    f0_options: dict[str, Any] | None = None,
    device: str = "auto",
    dtype: Any = "float32",
    num_workers: WorkerCount = None,
    gpus_per_worker: float = 0,
    cpus_per_worker: float | None = None,
    threads_per_worker: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batch_seconds: float | None = None,
    skip_existing: bool = True,
    format: str = "wav",
    subtype: str | None = None,
    bitrate: int | None = None,
    recursive: bool = False,
    weights: str = "path",
    write_in: str = "actor",
    allow_download: bool = False,
    filesystem: Any = None,
    **params: Any,
) -> Any:
    """A lazy Ray Dataset converting every file of ``ds`` to the voice of ``model``; one row per input.

    ``ds`` is a :class:`ray.data.Dataset` with a ``path`` column (one audio file per row,
    optionally an ``output_path`` column), or paths and folders (expanded on the driver and
    named exactly as :meth:`rvcfast.Converter.convert_batch` names them: unique names, a
    file named twice converted once). Without ``output_path`` a dataset row's output is
    ``out_dir/<stem>.<format>`` (``format``: wav, flac, ogg, mp3 or m4a, as for
    :meth:`rvcfast.Converter.convert_batch`, with ``subtype`` and, for the lossy formats,
    ``bitrate`` in kbit/s; paths, ``out_dir`` and ``output_path`` may be URIs: ``s3://``..., read and written through
    ``filesystem``, a pyarrow FileSystem, or each URI's own); a row whose output is its own input (by path or by
    identity: a hard link, a bind mount), or an output another row of the job already
    claimed (two rows with one stem, or one file under two spellings), is an ``error`` row
    naming both, while the first row to claim it converts as usual; a row repeated as it is
    (the same ``path`` and ``output_path``, in any block) is a ``skipped`` row saying so, the
    file converted once. A ``path`` or ``output_path`` value that is not text (a number, bytes,
    a list; a null ``path``) makes its row an ``error`` row naming it. Nothing runs until the
    dataset is consumed (``take_all``, ``iter_rows``, ``write_parquet``...).

    **Several voices**: instead of ``model`` (and ``index``), ``voices`` is a mapping
    ``{name: model or (model, index)}`` (or a list of those, named by their model file's
    stem; names are checked as :func:`rvcfast.convert_voices` checks them), and
    ``voice_params`` adds conversion parameters per voice (a mapping by name, or a list in
    the voices' order, e.g. ``{"bob": {"pitch": -12}}``). Every input is decoded once, and
    each model worker loads every voice once and converts a batch to each of them, the
    F0 tracks and content features of an input computed once for all the voices
    (:class:`rvcfast.voices.SharedAnalysis`). Outputs are named with ``name_template``
    (default ``"{voice}/{stem}"``: a folder per voice; it must use ``{voice}`` with several
    voices), each voice's as its own batch of :func:`rvcfast.convert_voices` names them; a
    dataset given to such a job has a ``path`` column only. One row per (input, voice),
    with a ``voice`` column (:data:`VOICE_ROW_SCHEMA`); ``skip_existing`` skips each (input,
    voice) whose output exists, and an input without a missing output is not decoded. Every
    voice is checked here (files, index, parameters, the format at its rate): a bad one raises
    naming the voice. The voices share ``encoder``, ``f0`` and its options.

    Stages: decoding and resampling in CPU tasks, the models in an autoscaling pool of
    ``num_workers`` actors (an int, or ``(min, max)``) that load the models once, batches
    of ``batch_size`` files, writes in the actors (``write_in="task"``: in CPU tasks). By
    default a GPU cluster gets one actor per ``gpus_per_worker`` GPUs, and a CPU cluster one
    single-threaded actor per core of each node, as many as the node's memory holds
    (:data:`CPU_WORKER_MEMORY` each, more with several voices), all started at once. ``cpus_per_worker`` is the Ray
    reservation of a model worker (default on CPUs: a node's CPUs less one decoding task's
    share, divided among its workers; on GPUs: 1); PyTorch runs ``threads_per_worker``
    threads in it (default: the node's CPUs divided among its workers). ``weights``:
    ``"path"`` (every node opens the driver's paths: a shared filesystem) or
    ``"object-store"`` (shipped through Ray's object store); either way a worker checks
    each file's SHA-256 against the driver's before loading it. ``**params`` are conversion
    parameters (:class:`~rvcfast.ConversionParams` fields), checked here against the model
    before anything runs, as are the engine options (``f0``, ``f0_options``, ``device``,
    ``dtype``, the index's dimension) and whether the pool fits the cluster: a bad one
    raises here, with the error a local run gives, instead of killing the workers.

    Rows: ``path``, ``output_path``, ``status`` (``ok``/``skipped``/``error``), ``error``,
    ``seconds`` (processing time of the file), ``audio_seconds``, ``node`` (Ray node id),
    ``host``, ``warnings`` and per-stage seconds ``decode_s``, ``f0_s``, ``features_s``,
    ``index_s``, ``synth_s``, ``post_s``, ``write_s``.
    """
    ray = _ray()
    if out_dir is None:
        raise ParameterError("out_dir is required: the folder the outputs go to")
    if not isinstance(ds, (str, os.PathLike, _Planned)) and not hasattr(ds, "map_batches") and hasattr(ds, "__iter__"):
        ds = list(ds)  # read once: looked at for URIs, then planned
    # object storage: every URI's filesystem and bucket checked here, before any model is read
    remote = _storage.check_dataset(ds, out_dir, filesystem, isinstance(ds, _Planned), (model, index, encoder, f0_weights, voices))
    if not ray.is_initialized():
        _start_local()
    _check_options(format, batch_size, gpus_per_worker, cpus_per_worker, threads_per_worker, write_in, weights)
    check_bitrate(format.lower(), subtype, bitrate)  # a bad value at any rate: before the model is read
    _check_device(device, dtype, gpus_per_worker)
    engine = {"encoder": encoder, "f0": f0, "f0_weights": f0_weights, "f0_options": f0_options, "allow_download": allow_download}
    job = _checked(model, index, voices, voice_params, name_template, params, engine, (format.lower(), subtype, bitrate), weights)
    # several voices: each worker holds every voice's model and index, so fewer fit in a node's memory
    per_worker = CPU_WORKER_MEMORY + job.pop("extra_memory", 0)
    # a user's dataset may still have its own read/map stages to run, each reserving a whole CPU
    reserve = USER_STAGE_CPUS if isinstance(ds, ray.data.Dataset) else DECODE_CPUS
    low, high, cpus, per_node = _pool_size(num_workers, gpus_per_worker, cpus_per_worker, threads_per_worker, per_worker, reserve)
    claims = None
    if isinstance(ds, ray.data.Dataset):
        schema = _rows.known_schema(ds)  # known without running anything, or None
        if schema is not None and "path" not in schema.names:
            raise ParameterError(f"the dataset needs a 'path' column (one audio file per row); it has {', '.join(schema.names)}")
        if voices is not None and schema is not None and "output_path" in schema.names:
            raise ParameterError(NO_OUTPUT_PATH)
        claims = ray.remote(num_cpus=0)(OutputClaims).remote()  # rows are named in the tasks: they claim their outputs
    elif isinstance(ds, _Planned):
        ds = _items_dataset(ds.items, batch_size)
    elif voices is None:
        ds = _items_dataset(plan_files(ds, out_dir, format, skip_existing, recursive, filesystem), batch_size)
    else:
        options = {**params, "format": format, "skip_existing": skip_existing, "name_template": name_template, "voice_params": voice_params,
                   "filesystem": filesystem}
        ds = _items_dataset(plan_voice_files(ds, out_dir, voices, options, recursive)[0], batch_size)
    spec = JobSpec(
        out_dir=_storage.canonical(os.fspath(out_dir)) if remote else os.path.abspath(os.path.expanduser(os.fspath(out_dir))), format=format.lower(), subtype=subtype, bitrate=bitrate,
        skip_existing=skip_existing, f0=f0, f0_options=f0_options, device=device, dtype=dtype, batch_seconds=batch_seconds,
        threads=threads_per_worker, workers_per_node=per_node, cpus_per_worker=cpus, gpus_per_worker=gpus_per_worker,
        write_in=write_in, crash_marker=os.environ.get(CRASH_ENV) or None, claims=claims, worker_memory=per_worker, filesystem=filesystem,
        **job,
    )
    # the default CPU pool reserves each worker's memory too, so no node gets more than it holds
    memory = _worker_memory(_cpu_nodes(), cpus, threads_per_worker, per_worker) if num_workers is None and gpus_per_worker == 0 else None
    ds = ds.map_batches(decode_voices if voices is not None else decode_audio, batch_format="pyarrow", fn_kwargs={"spec": spec}, num_cpus=DECODE_CPUS)
    # Ray Data spreads the actors over the nodes (its default strategy): one per node before two on one
    ds = ds.map_batches(
        VoicesWorker if voices is not None else ConvertWorker, batch_size=batch_size, batch_format="pyarrow",
        fn_constructor_kwargs={"spec": spec}, compute=_actor_pool(low, high, start_all=num_workers is None), num_cpus=cpus,
        num_gpus=gpus_per_worker if gpus_per_worker > 0 else None, **({"memory": memory} if memory else {}),
    )
    if write_in == "task":
        ds = ds.map_batches(write_outputs, batch_format="pyarrow", fn_kwargs={"spec": spec}, num_cpus=DECODE_CPUS)
    return ds


# ------------------------------------------------------------------------------ the eager form


def _output_folders(out_dir: Path, items: list[dict[str, str]]) -> list[str]:
    """The folders the planned rows write into: ``out_dir`` and, with several voices, each
    voice's folder (``{voice}/{stem}``: ``out_dir/<voice>``; any folder a template names)."""
    folders = {str(out_dir)}
    for item in items:
        outputs = json.loads(item["voice_outputs"]) if "voice_outputs" in item else [item["output_path"]]
        folders.update(str(Path(o).parent) for o in outputs)
    return sorted(folders)


def _remove_stale_parts_in(folders: list[str]) -> None:
    """:func:`~rvcfast.writing.remove_stale_parts` in each of ``folders`` (those that exist)."""
    for folder in folders:
        if os.path.isdir(folder):
            remove_stale_parts(folder)


def _clean_parts_everywhere(out_dir: Path, folders: list[str] | None = None) -> None:
    """Remove temporary files of killed writers (:func:`~rvcfast.writing.remove_stale_parts`) on every host,
    in ``out_dir`` and the other output ``folders`` of the job (a folder per voice).

    Only a process's own host can tell whether it is dead, so the driver cleans the files of
    its host itself and, only when another host left one, runs a small task on every node.
    """
    from ...writing import part_file_hosts, this_host

    where = folders if folders is not None else [str(out_dir)]
    _remove_stale_parts_in(where)
    hosts = set().union(*(part_file_hosts(folder) for folder in where)) - {this_host()}
    if not hosts:
        return
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    clean = ray.remote(num_cpus=0)(_remove_stale_parts_in)
    refs = [
        clean.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(where)
        for n in ray.nodes()
        if n.get("Alive")  # rare (a retry on another host): every node looks at its own files
    ]
    try:
        ray.get(refs)
    except Exception as exc:  # noqa: BLE001 - a node gone since: the job's rows still count, the next run cleans up
        warnings.warn(f"temporary files in {out_dir} could not be removed on every node: {exc}", RuntimeWarning, stacklevel=2)


def check_manifest(path: str | os.PathLike[str]) -> Any:
    """``path`` as a manifest name: ``.jsonl``/``.json`` (JSON Lines) or ``.parquet``, else :class:`ParameterError`
    (a :class:`~pathlib.Path`, or a URI as its canonical string)."""
    p = _storage.canonical(path) if _storage.is_uri(path) else Path(path)  # type: ignore[arg-type]
    if Path(str(p)).suffix.lower() not in (".jsonl", ".json", ".parquet"):
        raise ParameterError(f"manifest {p}: name it .jsonl (JSON Lines) or .parquet")
    return p


def write_manifest(rows: list[dict[str, Any]], path: str | os.PathLike[str], filesystem: Any = None) -> Any:
    """Write the rows as JSON Lines (``.jsonl``/``.json``) or Parquet (``.parquet``), atomically
    (a URI: uploaded in one piece, through ``filesystem`` if given).

    Parquet: :data:`ROW_SCHEMA`, or :data:`VOICE_ROW_SCHEMA` for the rows of a job with ``voices=``."""
    p = check_manifest(path)
    if isinstance(p, str):
        return _storage.write_manifest(rows, p, filesystem)
    kind = p.suffix.lower()
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(p) as tmp:
        if kind == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            from ._schema import ROW_SCHEMA, VOICE_ROW_SCHEMA

            schema = VOICE_ROW_SCHEMA if any("voice" in row for row in rows) else ROW_SCHEMA  # a job with voices=
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(tmp))
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p


def convert_files(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    *,
    address: str | None = None,
    manifest: str | os.PathLike[str] | bool | None = None,
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """Convert files and folders on a Ray cluster; return one row per input, in input order.

    The eager form of :func:`convert_dataset` (same keyword options and conversion
    parameters; ``skip_existing`` resumes an interrupted job). With ``voices=`` (several
    voices, instead of ``model``), one row per (input, voice), by input, then voice::

        rows = convert_files("corpus/", "out/", voices={"alice": ("alice.pth", "alice.index"), "bob": "bob.pth"},
                             voice_params={"bob": {"pitch": -12}})
        # out/alice/<stem>.wav and out/bob/<stem>.wav, each input decoded and analysed once

    Uses the current Ray
    connection, else connects to ``address`` (``"auto"``: the running cluster; ``None``:
    ``RAY_ADDRESS`` if set, as inside a Ray job) or starts a local one for this call. Inputs, ``out_dir`` and ``manifest``
    may be URIs on object storage (``s3://bucket/prefix/``; ``filesystem=``: a pyarrow FileSystem for them; docs/scale-out.md,
    "Files on object storage"). Writes the rows to ``manifest`` (``.jsonl`` or
    ``.parquet``; default ``out_dir/rvcfast-manifest.jsonl``; ``False``: none). Progress
    is shown with Ray Data's own progress bars (``progress=False``: none).
    """
    filesystem = options.get("filesystem")
    if not isinstance(inputs, (str, os.PathLike)) and hasattr(inputs, "__iter__"):
        inputs = list(inputs)  # read once: looked at for URIs, then planned
    remote = _storage.check_job(inputs, out_dir, manifest, filesystem)  # URIs: filesystems and buckets, checked first
    out: Any = _storage.canonical(out_dir) if remote else Path(out_dir)  # type: ignore[arg-type]
    if not remote and out.exists() and not out.is_dir():
        raise ParameterError(f"output {out} exists and is not a folder")
    if not remote:
        from ...writing import check_output_folder

        check_output_folder(out, "out_dir")  # under a file, or read-only: refused before the job, not per file after it
    default = _storage.join(out, MANIFEST_NAME) if remote else out / MANIFEST_NAME
    manifest_path = None if manifest is False else check_manifest(default if manifest in (None, True) else manifest)  # type: ignore[arg-type]
    recursive = bool(options.pop("recursive", False))
    param_names = {f.name for f in dataclasses.fields(ConversionParams)}
    ConversionParams.build(None, **{k: v for k, v in options.items() if k in param_names}).validate()  # before Ray starts
    names = None
    if options.get("voices") is None:
        items = plan_files(inputs, out, options.get("format", "wav"), options.get("skip_existing", True), recursive, filesystem)
    else:  # one row per input, every voice's output planned: the rows come back per (input, voice)
        items, names = plan_voice_files(inputs, out, options["voices"], {**options, "model": model}, recursive)
    with connected(address):
        ray = _ray()
        ctx = ray.data.DataContext.get_current()
        bars, ctx.enable_progress_bars = ctx.enable_progress_bars, bool(progress)
        try:
            ds = convert_dataset(_Planned(items), model, out, **options)
            if not remote:  # object storage: a key appears complete or not at all (a killed writer's hidden .part objects are left, see _storage.put)
                out.mkdir(parents=True, exist_ok=True)
                folders = _output_folders(out.resolve(), items)  # with several voices, a folder per voice too
                _clean_parts_everywhere(out, folders)  # temporary files of an earlier, killed run
            rows = _rows.collect_rows(ds)
            if not remote:
                _clean_parts_everywhere(out, folders)  # and of workers killed during this one
        finally:
            ctx.enable_progress_bars = bars
    rows = _rows.one_per_input(items, rows, names)  # exactly one per planned input (and voice), in the plan's order
    if manifest_path is not None:
        try:
            write_manifest(rows, manifest_path, filesystem)
        except OSError as exc:  # the rows are the job's result: returned, with the failure said once
            warnings.warn(f"the manifest {manifest_path} could not be written: {exc.strerror or exc}", RuntimeWarning, stacklevel=2)
    return rows

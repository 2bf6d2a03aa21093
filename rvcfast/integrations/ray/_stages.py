"""The stages of a conversion job on Ray Data: decoding tasks, model actors, writing.

::

    decode_audio (CPU tasks)  ─►  ConvertWorker (actor pool)  ─►  [write_outputs (CPU tasks)]
    path → PreparedAudio           Engine.run, write (default)      write, when write_in="task"

Every stage takes and returns Arrow tables with a fixed schema, so blocks from different
tasks always concatenate. A file's outcome is one row (:data:`ROW_SCHEMA`): a failure is
an ``error`` row naming the file, never an exception that stops the job.

Writes go through :func:`rvcfast.writing.write_audio_atomic` to deterministic names
chosen before any task runs, so when Ray retries a task or restarts an actor that died,
the retry writes the same file again (an atomic rename over a complete file) and the dead
process's temporary file is removed: every output exists once and complete.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import ParameterError, RvcfastError
from ...params import ConversionParams
from ...pipeline import prepare_input
from ...writing import (
    SUPPORTED_WRITE_FORMATS,
    finished_output,
    recorded_source,
    source_id,
    write_audio_atomic,
)
from . import _storage, _storage_plan
from ._schema import REPEAT_NOTE, ROW_SCHEMA, STAGES, VOICE_ROW_SCHEMA
from ._weights import ModelFiles, local_files

__all__ = [
    "JobSpec", "STAGES", "ROW_SCHEMA", "VOICE_ROW_SCHEMA", "decode_audio", "ConvertWorker", "write_outputs", "CRASH_ENV", "DECODE_CPUS",
    "OutputClaims", "cpu_workers_on_node", "workers_fitting_node", "default_workers_on_node", "worker_threads",
]

#: CPUs reserved by one decoding (or writing) task: decoding a file is a small share of its
#: conversion, so several run next to a model worker without holding a whole core each.
DECODE_CPUS = 0.25

#: Environment variable of the test hook (read on the driver): a marker file path. The first
#: worker to write its second file claims the marker and dies in the middle of that write.
CRASH_ENV = "RVCFAST_RAY_TEST_CRASH"

def _converted(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the converted audio, when writing in a task."""
    return (
        schema.append(pa.field("audio", pa.large_binary()))
        .append(pa.field("sample_rate", pa.int64()))
        .append(pa.field("channels", pa.int64()))  # the audio's channels (channels="each"), interleaved in its bytes
    )


#: Between the stages: the prepared audio (pickled) and, when writing in a task, the output.
_DECODED_SCHEMA = ROW_SCHEMA.append(pa.field("prep", pa.large_binary()))
_CONVERTED_SCHEMA = _converted(ROW_SCHEMA)


@dataclass(frozen=True)
class JobSpec:
    """Everything a stage needs, checked on the driver and sent once to every task and actor."""

    files: Any  # ModelFiles (paths every node sees) or object-store handles
    params: ConversionParams
    out_dir: str
    format: str = "wav"
    subtype: str | None = None
    bitrate: int | None = None  # kbit/s of a lossy output; None: the encoder's default
    skip_existing: bool = True
    f0: str = "rmvpe"
    f0_options: dict[str, Any] | None = None
    device: str = "auto"
    dtype: Any = "float32"
    batch_seconds: float | None = None
    threads: int | None = None
    workers_per_node: int | None = None  # None: the default layout, worked out on each node
    cpus_per_worker: float = 1.0  # Ray's reservation of a model worker
    gpus_per_worker: float = 0.0
    write_in: str = "actor"
    crash_marker: str | None = None
    claims: Any = None  # an OutputClaims actor, for datasets whose output names were not planned on the driver
    voices: tuple[Any, ...] = ()  # several voices: a VoiceJob each (rvcfast.integrations.ray._voices)
    name_template: str = "{stem}"  # the outputs of a dataset's rows, named in the tasks
    worker_memory: int | None = None  # the default CPU layout's memory per model worker; None: CPU_WORKER_MEMORY
    filesystem: Any = None  # the job's pyarrow filesystem for URIs (None: each URI's own, from the environment)

    @property
    def row_schema(self) -> pa.Schema:
        """The schema of the job's rows: :data:`VOICE_ROW_SCHEMA` with several voices, else :data:`ROW_SCHEMA`."""
        return VOICE_ROW_SCHEMA if self.voices else ROW_SCHEMA


def _where() -> tuple[str, str]:
    import ray

    return ray.get_runtime_context().get_node_id(), socket.gethostname()


def _new_row(path: str | None, output_path: str | None) -> dict[str, Any]:
    node, host = _where()
    row: dict[str, Any] = {
        "path": path, "output_path": output_path, "status": "pending", "error": None, "seconds": 0.0,
        "audio_seconds": 0.0, "node": node, "host": host, "warnings": "",
    }
    row.update({f"{s}_s": 0.0 for s in STAGES})
    return row


def _error_text(label: str, exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, RvcfastError):
        return text if label in text else f"{label}: {text}"
    return f"{label}: {type(exc).__name__}: {text}"


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


# ------------------------------------------------------------------------------ stage 1: decode


def planned_output(path: str, spec: JobSpec, naming: dict[str, str] | None = None) -> str:
    """The output file of one input, named as :func:`rvcfast.batch.expand_inputs` names it
    (``naming``: the template's ``{voice}`` and ``{pitch}``)."""
    from ...batch import BatchOptions, expand_inputs

    if _storage.is_uri(path) or _storage.is_uri(spec.out_dir):  # on object storage: the same template
        return _storage_plan.planned_output(path, spec, naming)
    options = BatchOptions(out_dir=spec.out_dir, format=spec.format, name_template=spec.name_template)
    jobs = expand_inputs([path], options, naming)
    if len(jobs) != 1 or jobs[0].path != Path(path) or jobs[0].out_path is None:
        raise RvcfastError(f"{path}: is a folder; a dataset row is one audio file (convert_files expands folders)")
    return str(jobs[0].out_path)


class OutputClaims:
    """Actor: the input each output file of one job belongs to, the first input to claim it.

    A dataset given to :func:`~rvcfast.integrations.ray.convert_dataset` is named row by
    row in many tasks (``out_dir/<stem>.<format>`` without an ``output_path``), so two
    inputs can meet at one output without any task seeing both. Each decoding task claims
    its batch's outputs here; a retried task claims the same pairs again and gets them.
    It records the job's inputs too: an output that is another row's input is refused (it
    would be written over that input), and so is an input already claimed as an output.

    A row repeated as it is (the same path, the same output) in another block claims the
    same pair as a retry would: the row's *occurrence* tells them apart (the Ray task, which
    keeps its id when Ray retries it or rebuilds its lost output, the batch and the place in
    it). The occurrence that claimed an output first converts it, again on each retry; any
    other is a repeat.
    """

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.inputs: dict[str, str] = {}
        self.first: dict[str, str] = {}  # output -> the occurrence of the row that claimed it

    def claim(
        self, pairs: list[tuple[str, str]], inputs: list[tuple[str, str]] | None = None, occurrences: list[str | None] | None = None
    ) -> Any:
        """``(output, input)`` pairs → the owner (an input path, as the row spelled it) of each output.

        With ``inputs`` (``(key, input)`` of every row of the batch): ``(owners, inputs_of,
        overwritten, repeats)``, where ``inputs_of`` is, per pair, the job's input its output is
        (its owner ``None`` then), ``overwritten``, per input, the row whose output it already
        is, and ``repeats``, per pair, whether the owner's row claimed it before from another
        occurrence (``occurrences``, per pair; ``None``: unknown, never a repeat)."""
        if inputs is None:
            return [self.owners.setdefault(output, source) for output, source in pairs]
        for key, source in inputs:
            self.inputs.setdefault(key, source)
        # an output claimed before its file was seen as an input keeps its owner: a retried task gets the same answer
        inputs_of = [None if output in self.owners else self.inputs.get(output) for output, _ in pairs]
        owners = [None if other is not None else self.owners.setdefault(output, source) for (output, source), other in zip(pairs, inputs_of)]
        repeats = [
            owner == source and seen is not None and self.first.setdefault(output, seen) != seen
            for (output, source), owner, seen in zip(pairs, owners, occurrences or [None] * len(pairs))
        ]
        return owners, inputs_of, [self.owners.get(key) for key, _ in inputs], repeats


def _task_id() -> str | None:
    """The Ray task (or actor task) running this code, which keeps its id when Ray retries it
    or runs it again to rebuild its lost output; ``None`` outside a task."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if getattr(getattr(context, "worker", None), "mode", None) != getattr(ray, "WORKER_MODE", 1):
        return None  # the driver (a stage called in this process)
    try:
        return context.get_task_id()
    except Exception:  # noqa: BLE001 - unknown: every claim of a row is its own again, as before
        return None


def _occurrences(rows: list[dict[str, Any]], mine: list[dict[str, Any]]) -> list[str | None]:
    """Per row of ``mine`` (the pending ``rows``): the task, the batch (its rows, in order) and the
    place of the row among the batch's rows that name the same pair; the same on a retry.
    ``None`` each outside a task."""
    task = _task_id()
    if task is None:
        return [None] * len(mine)
    batch = hashlib.sha256(repr([(r["path"], r["output_path"], r.get("voice")) for r in rows]).encode()).hexdigest()[:16]
    counts: dict[tuple[str, str], int] = {}
    tokens: list[str | None] = []
    for row in mine:
        pair = (row["path"], row["output_path"])
        counts[pair] = counts.get(pair, -1) + 1
        tokens.append(f"{task}/{batch}/{counts[pair]}")
    return tokens


def _same_file(a: str, b: str) -> bool:
    """One file under two paths: by name, or by identity (a case-insensitive file system's
    ``A.WAV`` for ``a.wav``, a bind mount, a hard link), as :mod:`rvcfast.batch_inputs` tells inputs;
    two URIs by their canonical form."""
    if _storage.is_uri(a) or _storage.is_uri(b):
        return _storage.same_object(a, b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _shown(value: Any) -> str:
    """A dataset value as an error names it: text as it is, anything else as Python writes it (shortened)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _value_problem(value: Any, column: str) -> str | None:
    """Why a dataset row's ``path`` or ``output_path`` value names no file (``None``: it names one;
    a null ``output_path`` names the output ``out_dir/<stem>.<format>``)."""
    if value is None:
        return "it has no path (null in the 'path' column)" if column == "path" else None
    what = "this path" if column == "path" else f"its output_path {_shown(value)}"
    if not isinstance(value, str):
        return (
            f"{what} is of type {type(value).__name__}, not text: the dataset's {column!r} column must hold file paths as strings"
            + (" (or null: out_dir/<stem>.<format>)" if column == "output_path" else "")
        )
    if not value.strip():
        return f"{what} is empty" if column == "path" else "its output_path is empty"
    if column == "output_path" and not os.path.isabs(value) and not _storage.is_uri(value):
        # a worker would write it under its own working directory, on whichever node ran the row
        # (Ray Data 2.40 and older hand a number in a column of text over as text: 5 -> "5")
        return f"{what} is a relative path: give an absolute path or a URI (or null: out_dir/<stem>.<format>)"
    return None


def dataset_row(path: Any, output_path: Any, spec: JobSpec, naming: dict[str, str] | None = None) -> dict[str, Any]:
    """A dataset row's values checked (text, or a null ``output_path``) and planned (:func:`_plan_row`);
    a value that names no file makes it an error row naming the row's path and the problem."""
    problem = _value_problem(path, "path")
    if problem is not None:  # the row keeps its value as text, for the manifest; it has no input to claim
        row = _new_row(path if path is None or isinstance(path, str) else repr(path), None)
        named = path is not None and (not isinstance(path, str) or path.strip())
        where = _shown(path) if named else "a row of the dataset" + (
            "" if output_path is None else f" (output_path {_shown(output_path)})"
        )
        row.update(status="error", error=f"{where}: {problem}", no_input=True)
        return row
    problem = _value_problem(output_path, "output_path")
    if problem is not None:
        row = _new_row(path, None)
        row.update(status="error", error=f"{path}: {problem}")
        return row
    return _plan_row(path, output_path, spec, naming)


def path_column(batch: pa.Table) -> list[Any]:
    """The ``path`` values of a batch of the job's dataset; a dataset without the column is refused
    (known on the driver only when the dataset's schema is)."""
    if "path" not in batch.column_names:
        raise ParameterError(f"the dataset needs a 'path' column (one audio file per row); it has {', '.join(batch.column_names)}")
    return batch.column("path").to_pylist()


def _plan_row(path: str, output_path: str | None, spec: JobSpec, naming: dict[str, str] | None = None) -> dict[str, Any]:
    """A new row with its output named (``None``: planned here, with ``naming``) and checked, or an error row."""
    row = _new_row(path, output_path)
    try:
        if row["output_path"] is None:
            row["output_path"] = planned_output(path, spec, naming)
        if _same_file(row["output_path"], path):
            raise RvcfastError(f"{path}: the output is the input itself ({row['output_path']}); refusing to overwrite an input")
        suffix = Path(row["output_path"]).suffix.lower().lstrip(".")
        if suffix in SUPPORTED_WRITE_FORMATS and suffix != spec.format:  # it would hold another format than its name says
            raise RvcfastError(
                f"{path}: its output_path {row['output_path']} ends in .{suffix}, but the job writes {spec.format} "
                f"(format={spec.format!r}): pass format={suffix!r}, or output paths ending in .{spec.format}"
            )
    except Exception as exc:  # noqa: BLE001 - an error row, the job goes on
        row.update(status="error", error=_error_text(path, exc))
    return row


def _claim_outputs(rows: list[dict[str, Any]], spec: JobSpec) -> None:
    """Rows whose output another input of the job already claimed, or is another row's input,
    become error rows; so do rows whose input another row's output already claimed."""
    mine = [r for r in rows if r["status"] == "pending"]
    if spec.claims is None or not mine:
        return
    import ray

    # The input as the row spells it: a retried task claims the very same pairs and gets them
    # back, while the same file under another spelling (in/./a.wav, a symlink) is a second row
    # and must not convert it again. A row repeated as it is (in this batch or another block)
    # converts once too: its occurrence tells it from a retry of the task that claimed the output first.
    pairs = [(_output_key(r["output_path"]), r["path"]) for r in mine]
    # every row's input, an error row's too (not a row without a path of text)
    inputs = list(dict.fromkeys((_output_key(r["path"]), r["path"]) for r in rows if not r.get("no_input")))
    owners, inputs_of, overwritten, repeats = ray.get(spec.claims.claim.remote(pairs, inputs, _occurrences(rows, mine)))
    _refuse_input_outputs(mine, inputs_of, dict(zip(inputs, overwritten)))
    seen: set[tuple[str, str]] = set()
    for row, pair, owner, repeat in zip(mine, pairs, owners, repeats):
        if row["status"] != "pending":
            continue
        if owner == pair[1] and not repeat and pair not in seen:
            seen.add(pair)
            continue
        if owner == pair[1]:  # the very row again: done by its first occurrence, not a second time
            row.update(status="skipped", warnings=(
                f"{row['path']}: {REPEAT_NOTE} (the same path and output {row['output_path']}); "
                "left to that row, which converts it once and whose status is the file's"
            ))
            continue
        if _same_file(owner, pair[1]):
            why = f"the same file as {owner}, whose row converts it once in this job"
        else:
            hint = _naming_hint(spec) if row.get("named_by_stem", True) else (
                "the dataset's output_path column names this output twice: give distinct output_path values"
            )
            why = f"its output {row['output_path']} is already the output of {owner} in this job ({hint})"
        row.update(status="error", error=f"{row['path']}: {why}")


def _refuse_input_outputs(rows: list[dict[str, Any]], inputs_of: list[str | None], overwritten: dict[tuple[str, str], str | None]) -> None:
    """Error rows for an output that is another row's input (it would be written over that input),
    and for an input that an earlier row of the job already claimed as its output."""
    for row, other in zip(rows, inputs_of):
        if other is not None:
            row.update(status="error", error=(
                f"{row['path']}: its output {row['output_path']} is the input {other} of this job; refusing to write over an input "
                "(give distinct output_path values, or an out_dir that holds no input)"
            ))
    for row in rows:
        writer = overwritten.get((_output_key(row["path"]), row["path"]))
        if row["status"] == "pending" and writer is not None:
            row.update(status="error", error=(
                f"{row['path']}: this input is the output of {writer} in this job, which replaces it; not converted "
                "(give distinct output_path values, or an out_dir that holds no input)"
            ))


def _output_key(output: str) -> str:
    """The name two rows' outputs collide on: the real path, or a URI's canonical form (case folded)."""
    return _storage.output_key(output) if _storage.is_uri(output) else os.path.realpath(output)


def _naming_hint(spec: JobSpec) -> str:
    """How to give a dataset's rows distinct output names: an ``output_path`` column, or with
    several voices (whose datasets have no such column) a ``name_template`` that tells them apart."""
    if spec.voices:
        return (
            f"with voices= every row is named by name_template {spec.name_template!r}: give the files distinct "
            "stems, or a name_template with {parent} (e.g. '{voice}/{parent}/{stem}')"
        )
    return "without an output_path column every row is named out_dir/<stem>.<format>: give distinct output_path values"


def existing_output(row: dict[str, Any], spec: JobSpec) -> bool:
    """With ``skip_existing``, whether the row's output is there already: then the row is
    ``skipped``, or an ``error`` row when the output (named by stem alone, ``named_by_stem``)
    records another input as its source."""
    if not spec.skip_existing:
        return False
    path = row["path"]
    if _storage.is_uri(row["output_path"]):  # an object: fetched once to look at it
        there, another = _storage.existing_output(row, spec.filesystem)
        another = bool(another and row.get("named_by_stem"))
    else:
        there = finished_output(row["output_path"])
        other = recorded_source(row["output_path"]) if there and row.get("named_by_stem") else None
        another = other is not None and other != source_id(path)
    if not there:
        return False
    if another:
        # a name by stem alone: an earlier job's output of another file with this stem
        hint = _naming_hint(spec) if spec.voices else "give distinct output_path values"
        row.update(status="error", error=(
            f"{path}: its output {row['output_path']} is there, but it records another input as its source "
            f"(an earlier job's file with the same stem): {hint}, or skip_existing=False to replace it"
        ))
    else:
        row["status"] = "skipped"
    return True


def _decode_one(row: dict[str, Any], spec: JobSpec) -> dict[str, Any]:
    t0 = time.perf_counter()
    if row["status"] != "pending":
        return row
    path = row["path"]
    try:
        if existing_output(row, spec):
            return row
        prep = read_input(path, spec.params, spec)
    except Exception as exc:  # noqa: BLE001 - an error row, the job goes on
        row.update(status="error", error=_error_text(path, exc))
    else:
        row.update(prep=pickle.dumps(prep, protocol=5), audio_seconds=prep.seconds, warnings="\n".join(prep.warnings))
    row["decode_s"] = time.perf_counter() - t0
    return row


def read_input(path: str, params: ConversionParams, spec: JobSpec) -> Any:
    """:func:`rvcfast.pipeline.prepare_input` of a path, or of an object on object storage (a URI)."""
    if _storage.is_uri(path):
        return _storage.prepare(path, params, spec.filesystem)
    return prepare_input(path, params=params)


def decode_audio(batch: pa.Table, spec: JobSpec) -> pa.Table:
    """CPU task: name and check each file's output, then decode, resample to 16 kHz and run the
    signal stages (or mark it skipped, or make it an error row)."""
    outputs = batch.column("output_path").to_pylist() if "output_path" in batch.column_names else [None] * batch.num_rows
    rows = [dataset_row(p, o, spec) for p, o in zip(path_column(batch), outputs)]  # a value that is no path: an error row
    for row, given in zip(rows, outputs):
        row["named_by_stem"] = given is None  # only out_dir/<stem>.<format>: see _decode_one
    _claim_outputs(rows, spec)
    return _table([_decode_one(row, spec) for row in rows], _DECODED_SCHEMA)


# ------------------------------------------------------------------------------ stage 2: the models


class _CrashHook:
    """Test-only: dies (``os._exit``) in the middle of a worker's second write, once per job."""

    def __init__(self, marker: str | None) -> None:
        self.marker = marker
        self.writes = 0

    def before_write(self) -> None:
        self.writes += 1
        if self.marker is None or self.writes < 2:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another worker (or this one, before a restart) already died
            self.marker = None
            return
        os.close(fd)
        from ... import writing

        def die_mid_write(file: str, *args: Any, **kwargs: Any) -> None:
            """The output encoder, except that it dies half-way through the file."""
            if hasattr(file, "write"):  # an output for object storage, encoded in memory
                file.write(b"RIFF\0\0")
                os._exit(3)
            with open(file, "wb") as f:
                f.write(b"RIFF\0\0")  # a partial file, as a kill during the write leaves it
            os._exit(3)

        writing._encode = die_mid_write  # type: ignore[assignment]


def _foreign_file(output: str, spec: JobSpec) -> bool:
    """Whether ``output`` is a file (an object) there already that rvcfast did not write: it records
    no input (:func:`rvcfast.writing.recorded_source`)."""
    if _storage.is_uri(output):
        return _storage.foreign_object(output, spec.filesystem)
    return os.path.isfile(output) and recorded_source(output) is None


def _write_row(row: dict[str, Any], audio: np.ndarray, rate: int, spec: JobSpec, hook: _CrashHook) -> None:
    t0 = time.perf_counter()
    hook.before_write()
    if spec.claims is not None and _foreign_file(row["output_path"], spec):
        # a dataset's outputs are named in its tasks, which cannot know every input of the job:
        # a file rvcfast did not write may be one (out_dir holding x.wav beside x.flac)
        row.update(status="error", error=(
            f"{row['path']}: its output {row['output_path']} exists and was not written by rvcfast (it may be an input "
            "of this job); refusing to write over it: remove it, or give distinct output_path values"
        ))
        return
    try:
        if _storage.is_uri(row["output_path"]):  # encoded in memory, uploaded to its key once
            _storage.write_audio(row, audio, rate, spec)
        else:
            write_audio_atomic(  # stale temporary files: removed from every output folder before the job (_clean_parts_everywhere)
                row["output_path"], audio, rate, format=spec.format, subtype=spec.subtype, source=row["path"], bitrate=spec.bitrate,
                remove_stale=False,
            )
    except Exception as exc:  # noqa: BLE001
        row.update(status="error", error=f"{row['path']}: writing {row['output_path']} failed: {type(exc).__name__}: {exc}")
    else:
        row["status"] = "ok"
    row["write_s"] = time.perf_counter() - t0


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    row["seconds"] = sum(float(row.get(f"{s}_s") or 0.0) for s in STAGES)
    return row


#: Memory one CPU model worker needs: a v2 voice, HuBERT, RMVPE and an index in float32 with
#: the working memory of a conversion (whole-process peak measured at 1.56 GB on batch12),
#: plus Ray's own share of the process. Caps how many workers the default layout puts on a node.
CPU_WORKER_MEMORY = 2 * 1024**3


def cpu_workers_on_node(cpus: float, memory: float, threads: int | None = None, per_worker: float | None = None) -> int:
    """How many CPU model workers the default layout puts on a node (before any ``cpus_per_worker``).

    One per ``threads`` cores (default 1: single-threaded workers side by side convert
    faster than one worker whose threads share every operation; docs/scale-out.md has the
    figures), no more than the node's memory (Ray's ``memory`` resource) holds, at
    ``per_worker`` bytes each (default :data:`CPU_WORKER_MEMORY`; more for several voices).
    """
    by_cpu = int(cpus // (threads or 1))
    by_memory = int(memory // (per_worker or CPU_WORKER_MEMORY)) if memory > 0 else by_cpu
    return max(1, min(by_cpu, by_memory))


def workers_fitting_node(resources: dict[str, float], cpus: float, gpus: float = 0.0) -> int:
    """Model workers reserving ``cpus`` CPUs and ``gpus`` GPUs each that a node holds beside
    one decoding task (:data:`DECODE_CPUS`); a huge number where neither is reserved."""
    fit = 1 << 30
    if cpus > 0:
        fit = min(fit, math.floor((resources.get("CPU", 0.0) - DECODE_CPUS) / cpus + 1e-9))
    if gpus > 0:
        fit = min(fit, math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
    return max(0, fit)


def default_workers_on_node(
    resources: dict[str, float], cpus: float | None, gpus: float = 0.0, threads: int | None = None,
    per_worker: float | None = None,
) -> int:
    """Model workers the default pool puts on a node with these Ray resources (0: none).

    With GPUs: as many as the node's GPUs and CPUs hold. On CPUs: :func:`cpu_workers_on_node`,
    fewer where a ``cpus`` reservation leaves no room for them (``None``: no reservation yet).
    """
    if gpus > 0:
        return workers_fitting_node(resources, cpus or 0.0, gpus)
    count = cpu_workers_on_node(resources.get("CPU", 0.0), resources.get("memory", 0.0), threads, per_worker)
    return min(count, workers_fitting_node(resources, cpus)) if cpus else count


def worker_threads(resources: dict[str, float], spec: JobSpec) -> int:
    """PyTorch threads of a model worker on a node with these resources: ``spec.threads``, else
    the node's CPUs divided among the model workers the job puts on it."""
    if spec.threads:
        return spec.threads
    per_node = spec.workers_per_node or default_workers_on_node(
        resources, spec.cpus_per_worker, spec.gpus_per_worker, spec.threads, spec.worker_memory
    )
    return max(1, int(resources.get("CPU", 1.0)) // max(1, per_node))


def _node_resources(node_id: str) -> dict[str, float]:
    import ray

    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("Alive"):
            return dict(node.get("Resources", {}))
    return {"CPU": float(os.cpu_count() or 1)}


class ConvertWorker:
    """Actor: loads the models once (base models from the process-wide cache) and converts batches of files."""

    def __init__(self, spec: JobSpec) -> None:
        import torch

        self.spec = spec
        self.node, self.host = _where()
        torch.set_num_threads(worker_threads(_node_resources(self.node), spec))
        from ...engine import Engine  # here, not at the top: decoding and writing tasks never import torch

        files: ModelFiles = local_files(spec.files)
        self.engine = Engine.load(
            files.model, index=files.index, encoder=files.encoder, f0=spec.f0, f0_weights=files.f0_weights,
            f0_options=spec.f0_options, device=spec.device, dtype=spec.dtype, batch_seconds=spec.batch_seconds,
        )
        self.params = self.engine.params(spec.params)
        self.hook = _CrashHook(spec.crash_marker)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        pending: list[tuple[dict[str, Any], Any]] = []
        for row in rows:
            if row["status"] == "pending":
                try:
                    pending.append((row, pickle.loads(row["prep"])))
                except Exception as exc:  # noqa: BLE001
                    row.update(status="error", error=_error_text(row["path"], exc))
            row["prep"] = None
        results = self.engine.run([p for _, p in pending], self.params) if pending else []
        for (row, _), res in zip(pending, results):
            take_result(row, res, self.spec, self.hook, (self.node, self.host))
        return finished_table(rows, self.spec)


def take_result(row: dict[str, Any], res: Any, spec: JobSpec, hook: _CrashHook, where: tuple[str, str]) -> None:
    """A model worker's result for one row: its timings, then the written output or the error
    (with ``write_in="task"``, the audio for the writing task)."""
    row.update(node=where[0], host=where[1])
    for stage, seconds in res.timings.items():
        if f"{stage}_s" in row:
            row[f"{stage}_s"] = float(row[f"{stage}_s"] or 0.0) + float(seconds)
    if res.error is not None:
        row.update(status="error", error=" ".join(res.error.split()))
    elif spec.write_in == "actor":
        _write_row(row, res.audio, res.sample_rate, spec, hook)
    else:
        row.update(
            audio=np.ascontiguousarray(res.audio, dtype=np.float32).tobytes(), sample_rate=res.sample_rate,
            channels=1 if res.audio.ndim == 1 else int(res.audio.shape[1]),
        )


def finished_table(rows: list[dict[str, Any]], spec: JobSpec) -> pa.Table:
    """A model worker's rows: finished ones, or with their audio when a writing task follows."""
    if spec.write_in == "actor":
        return _table([_finish(r) for r in rows], spec.row_schema)
    return _table(rows, _converted(spec.row_schema))


# ------------------------------------------------------------------------------ stage 3 (optional): writing


def write_outputs(batch: pa.Table, spec: JobSpec) -> pa.Table:
    """CPU task (``write_in="task"``): write the converted audio of each row."""
    hook = _WRITE_HOOK.setdefault(spec.crash_marker, _CrashHook(spec.crash_marker))
    rows = batch.to_pylist()
    for row in rows:
        if row["status"] == "pending" and row.get("audio") is not None:
            audio = np.frombuffer(row["audio"], dtype=np.float32)
            channels = int(row.get("channels") or 1)
            if channels > 1:
                audio = audio.reshape(-1, channels)
            _write_row(row, audio, int(row["sample_rate"]), spec, hook)
    return _table([_finish(r) for r in rows], spec.row_schema)


#: Per-process crash hooks of the write tasks (a task worker runs many tasks).
_WRITE_HOOK: dict[str | None, _CrashHook] = {}

"""Several voices in one Ray job: every input decoded once, converted to every voice.

::

    decode_voices (CPU tasks)            ─►  VoicesWorker (actor pool)
    one row per input: each voice's          every voice loaded once; per batch, each voice's
    output named, claimed, looked at;        engine runs on the inputs it still needs, all of
    decoded once if a voice needs it         them reading F0 and content features through one
                                             SharedAnalysis; one row per (input, voice)

A worker holds every voice's engine; the engines read the F0 tracks and the content
features through one :class:`rvcfast.voices.SharedAnalysis`, so within a batch an input's
F0 (per F0 setting) and content features (per encoder setting) are computed for the first
voice that needs them and taken from memory by the others, as :func:`rvcfast.convert_voices`
does in one process. The memo is cleared after each batch: a worker's memory stays that of
one batch however long the job. Only the index blend, the synthesizer and the
post-processing run per voice.

Rows are :data:`~._stages.VOICE_ROW_SCHEMA`: one per (input, voice), in input order, then
voice order. An input failing to decode is an error row for each voice that needed it; a
failure of one voice's conversion is that pair's row only.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ...errors import ParameterError, RvcfastError
from ...params import ConversionParams
from ._stages import (
    JobSpec,
    _claim_outputs,
    _CrashHook,
    _error_text,
    _node_resources,
    _where,
    dataset_row,
    existing_output,
    finished_table,
    path_column,
    read_input,
    take_result,
    worker_threads,
)
from ._weights import local_files

__all__ = [
    "DEFAULT_VOICE_TEMPLATE", "VoiceJob", "voice_list", "voice_settings", "plan_voice_outputs", "for_voice",
    "decode_voices", "VoicesWorker",
]

#: Output names of a job with several voices, as :func:`rvcfast.convert_voices` names them: a folder per voice.
DEFAULT_VOICE_TEMPLATE = "{voice}/{stem}"

#: A voice as given: its model file, or ``(model, index)``.
VoiceFiles = str | os.PathLike | tuple

#: Why a dataset with an ``output_path`` column is refused in a job with several voices.
NO_OUTPUT_PATH = (
    "with voices= each voice's outputs are named by name_template: the dataset has a 'path' column only, no 'output_path'"
)

#: Between the stages: each input's per-voice rows (JSON) and its prepared audio per decoding setting (pickled).
_DECODED = pa.schema([("path", pa.string()), ("entries", pa.string()), ("prep", pa.large_binary())])


@dataclass(frozen=True)
class VoiceJob:
    """One voice of a job, checked on the driver: its name, its files as the workers get them
    (:func:`~._weights.ship_files`), and its conversion settings."""

    name: str
    files: Any
    params: ConversionParams


# ------------------------------------------------------------------------------ on the driver


def _voice_files(value: Any, where: str) -> tuple[str, str | None]:
    """``model`` or ``(model, index)`` → the two paths (the index may be ``None``)."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value), None
    if isinstance(value, (tuple, list)) and 1 <= len(value) <= 2 and isinstance(value[0], (str, os.PathLike)):
        index = value[1] if len(value) == 2 else None
        if index is None or isinstance(index, (str, os.PathLike)):
            return os.fspath(value[0]), None if index is None else os.fspath(index)
    raise ParameterError(f"{where}: expected a model file or a (model, index) pair, got {value!r}")


def voice_list(voices: Any, model: Any = None, index: Any = None) -> list[tuple[str, str, str | None]]:
    """``(name, model, index)`` per voice of ``voices``: a mapping ``{name: model or (model, index)}``,
    or a list of models or ``(model, index)`` pairs named by their model file's stem.

    A job takes ``model`` (and ``index``) or ``voices``, not both; names are checked as
    :func:`rvcfast.convert_voices` checks them.
    """
    if model is not None or index is not None:
        given = "model" if model is not None else "index"
        raise ParameterError(
            f"{given} is for a one-voice job; with voices= give each voice's model and index there "
            "({name: (model, index)})"
        )
    if isinstance(voices, Mapping):
        named = [(str(name), *_voice_files(value, f"voice {name!r}")) for name, value in voices.items()]
    elif isinstance(voices, Sequence) and not isinstance(voices, (str, bytes)):
        files = [_voice_files(value, f"voice {k}") for k, value in enumerate(voices)]
        named = [(Path(m).stem, m, i) for m, i in files]
    else:
        raise ParameterError(
            f"voices must be a mapping {{name: model or (model, index)}} or a list of models, got {type(voices).__name__}"
        )
    if not named:
        raise ParameterError("voices= needs at least one voice")
    from ...voices import check_voice_names

    check_voice_names([name for name, _, _ in named], "pass a mapping {name: model or (model, index)} to name the voices")
    return named


def voice_settings(names: list[str], params: Mapping[str, Any], voice_params: Any) -> list[dict[str, Any]]:
    """Each voice's conversion keywords: the job's ``params`` and its own from ``voice_params`` (a
    mapping by name or a list in the voices' order, as :func:`rvcfast.convert_voices` takes it)."""
    from ...voices import _per_voice

    return [{**params, **extra} for extra in _per_voice(voice_params, names)]


def for_voice(name: str, exc: RvcfastError) -> RvcfastError:
    """``exc`` (of the same type) with the voice named in front of its message."""
    try:
        if hasattr(exc, "problem"):  # a file's error: its path stays in front
            return type(exc)(exc.path, f"voice {name!r}: {exc.problem}")  # type: ignore[attr-defined,call-arg]
        return type(exc)(f"voice {name!r}: {exc}")
    except TypeError:  # another constructor: the error as it is (it names its file)
        return exc


def plan_voice_outputs(
    inputs: list[str], out_dir: str, naming: list[tuple[str, float]], template: str, fmt: str, skip_existing: bool,
    recursive: bool,
) -> list[dict[str, str]]:
    """Paths and folders → one row per input with every voice's output (``voice_outputs``: a JSON list
    in the voices' order), named as each voice's batch of :func:`rvcfast.convert_voices` names them.

    ``naming``: ``(name, pitch)`` per voice (the template's ``{voice}`` and ``{pitch}``). The
    inputs are listed once for all the voices; two voices whose outputs would be one file (a
    template that does not tell them apart) are refused.
    """
    from ...batch import BatchOptions, expand_inputs
    from ...batch_inputs import check_name_template, pitch_text
    from ...voices import _check_template, _expanded

    check_name_template(template)
    _check_template(template, len(naming), out_dir)
    listed = _expanded(inputs, out_dir, recursive, template, {"format": fmt, "skip_existing": skip_existing})
    if not listed:
        raise ParameterError(f"no audio files found in {', '.join(inputs)}" + ("" if recursive else " (recursive=True for sub-folders)"))
    options = BatchOptions(out_dir=out_dir, format=fmt, skip_existing=skip_existing, name_template=template)
    outputs: list[list[str]] = [[] for _ in listed]
    owners: dict[str, tuple[str, str]] = {}  # an output, as the file system tells names apart -> (voice, input)
    for name, pitch in naming:
        jobs = expand_inputs(listed, options, {"voice": name, "pitch": pitch_text(pitch)})
        if [j.path for j in jobs] != listed:  # pragma: no cover - the listing is the batch's own
            raise ParameterError(f"voice {name!r}: its batch lists other inputs than the job's")
        for k, job in enumerate(jobs):
            key = str(Path(job.out_path).resolve()).casefold()  # type: ignore[arg-type]
            if key in owners:
                voice, source = owners[key]
                raise ParameterError(
                    f"name_template {template!r} names the output of {job.path} for voice {name!r} {job.out_path}, "
                    f"the output of {source} for voice {voice!r}: use {{voice}} so that the voices' names differ "
                    f"(e.g. {DEFAULT_VOICE_TEMPLATE!r})"
                )
            owners[key] = (name, str(job.path))
            outputs[k].append(str(job.out_path))
    return [{"path": str(path), "voice_outputs": json.dumps(outs)} for path, outs in zip(listed, outputs)]


# ------------------------------------------------------------------------------ stage 1: decode


def prep_key(params: ConversionParams) -> tuple[Any, ...]:
    """The settings decoding depends on (:func:`rvcfast.pipeline.prepare_input`): voices alike share one decoding."""
    formant = tuple(params.formant) if params.formant is not None else None
    return (params.channels, bool(params.strict), formant)


def _plan_entries(path: Any, planned: str | None, spec: JobSpec) -> list[dict[str, Any]]:
    """A row per voice of one input, its output named (by the driver, else here) and checked
    (a ``path`` that is no text: an error row per voice)."""
    from ...batch_inputs import pitch_text

    given = json.loads(planned) if planned else [None] * len(spec.voices)
    entries = []
    for job, output in zip(spec.voices, given):
        entry = dataset_row(path, output, spec, {"voice": job.name, "pitch": pitch_text(job.params.pitch)})
        entry.update(voice=job.name, named_by_stem=planned is None)
        entries.append(entry)
    return entries


def _decode_input(path: str, entries: list[dict[str, Any]], spec: JobSpec) -> dict[str, Any]:
    """The voices whose output is missing, and the input decoded once for them (once per decoding
    setting); an input that cannot be decoded is an error row for each of them."""
    t0 = time.perf_counter()
    pending = []
    for job, entry in zip(spec.voices, entries):
        if entry["status"] != "pending":
            continue
        try:
            if not existing_output(entry, spec):
                pending.append((job, entry))
        except Exception as exc:  # noqa: BLE001 - an error row, the job goes on
            entry.update(status="error", error=_error_text(path, exc))
    preps: dict[tuple[Any, ...], Any] = {}
    failed: dict[tuple[Any, ...], str] = {}
    for job, entry in pending:
        key = prep_key(job.params)
        if key not in preps and key not in failed:
            try:
                preps[key] = read_input(path, job.params, spec)
            except Exception as exc:  # noqa: BLE001 - error rows, the job goes on
                failed[key] = _error_text(path, exc)
        if key in failed:
            entry.update(status="error", error=failed[key])
        else:
            entry.update(audio_seconds=preps[key].seconds, warnings="\n".join(preps[key].warnings))
    if pending:  # decoded once: the time is on the first row it served
        pending[0][1]["decode_s"] = time.perf_counter() - t0
    for entry in entries:
        entry.pop("named_by_stem", None)
        entry.pop("no_input", None)
    return {"path": path, "entries": json.dumps(entries), "prep": pickle.dumps(preps, protocol=5) if preps else None}


def decode_voices(batch: pa.Table, spec: JobSpec) -> pa.Table:
    """CPU task: name, claim and look at every voice's output of each input (``skip_existing``),
    then decode the input once for the voices that still need it."""
    values = path_column(batch)
    # the outputs the driver planned (convert_files); a dataset's rows are named here, and claim their outputs
    given = spec.claims is None and "voice_outputs" in batch.column_names
    planned = batch.column("voice_outputs").to_pylist() if given else [None] * len(values)
    entries = [_plan_entries(value, outs, spec) for value, outs in zip(values, planned)]
    paths = [per_input[0]["path"] for per_input in entries]  # a value that is no path: as its error rows show it
    if spec.claims is not None and "output_path" in batch.column_names:
        # refused on the driver when the dataset's schema is known; a lazy one's (after a map) is not:
        # its output_path values would be passed over, the outputs going elsewhere than they say
        for entry in (e for per_input in entries for e in per_input if e["status"] == "pending"):
            entry.update(status="error", error=f"{entry['path']}: {NO_OUTPUT_PATH}")
    _claim_outputs([e for per_input in entries for e in per_input], spec)
    rows = [_decode_input(path, per_input, spec) for path, per_input in zip(paths, entries)]
    return pa.Table.from_pylist(rows, schema=_DECODED)


# ------------------------------------------------------------------------------ stage 2: the models


class VoicesWorker:
    """Actor: loads every voice once (base models from the process-wide cache, shared by the
    voices) and converts each batch of inputs to every voice, the engines reading F0 tracks and
    content features through one :class:`~rvcfast.voices.SharedAnalysis`."""

    def __init__(self, spec: JobSpec) -> None:
        import torch

        self.spec = spec
        self.node, self.host = _where()
        torch.set_num_threads(worker_threads(_node_resources(self.node), spec))
        from ...engine import Engine  # here, not at the top: decoding tasks never import torch
        from ...voices import SharedAnalysis

        self.memo = SharedAnalysis()
        checked: dict[Any, Any] = {}  # the voices' shared files are checked (or unpacked) once
        self.voices = []
        for job in spec.voices:
            files = local_files(job.files, checked)
            engine = Engine.load(
                files.model, index=files.index, encoder=files.encoder, f0=spec.f0, f0_weights=files.f0_weights,
                f0_options=spec.f0_options, device=spec.device, dtype=spec.dtype, batch_seconds=spec.batch_seconds,
            )
            shared = self.memo.engine(engine)
            shared.name = job.name
            self.voices.append((job, shared, shared.params(job.params)))
        self.hook = _CrashHook(spec.crash_marker)

    def _pending(self, row: dict[str, Any], entries: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any], Any]]:
        """``(voice number, row, prepared audio)`` of each voice the input still needs."""
        wanted = [(k, e) for k, e in enumerate(entries) if e["status"] == "pending"]
        if not wanted:
            return []
        try:
            preps = pickle.loads(row["prep"])
            return [(k, e, preps[prep_key(self.voices[k][0].params)]) for k, e in wanted]
        except Exception as exc:  # noqa: BLE001 - error rows, the job goes on
            for _, e in wanted:
                e.update(status="error", error=_error_text(row["path"], exc))
            return []

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        todo: list[list[tuple[dict[str, Any], Any]]] = [[] for _ in self.voices]
        for row in batch.to_pylist():
            entries = json.loads(row["entries"])
            for k, entry, prep in self._pending(row, entries):
                todo[k].append((entry, prep))
            rows.extend(entries)
        try:
            for (_, engine, params), items in zip(self.voices, todo):
                results = engine.run([p for _, p in items], params) if items else []
                for (entry, _), res in zip(items, results):
                    take_result(entry, res, self.spec, self.hook, (self.node, self.host))
        finally:
            self.memo.clear()  # the next batch has other inputs: the memo holds one batch at most
        return finished_table(rows, self.spec)

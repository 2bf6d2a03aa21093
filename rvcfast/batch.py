"""The batch engine behind :meth:`Converter.convert_batch` and :meth:`Converter.iter_batch`.

How many files become fast:

1. **Load once.** The Converter holds the voice model and index; the content
   encoder and F0 model come from the process-wide cache.
2. **Overlap.** Decoding, resampling, high-pass and split-point search of
   upcoming files run in a thread pool while the models compute; finished files
   are encoded and written by another pool. CPU-bound F0 backends (harvest, dio,
   pm) run in a process pool next to the decoders.
3. **Batch across files.** Files are grouped up to ``batch_seconds`` of audio; their
   F0 runs as one batched call, and their segments go through the content encoder
   and the synthesizer as padded, masked batches bucketed by length.
4. **Independent results.** Every stage that mixes time steps is masked, and noise
   is seeded per segment, so a file's output does not depend on what it was batched with.

Writes are atomic (temporary file in the output folder, then rename), never
overwrite an input, and a failing file is reported in its :class:`~rvcfast.api.Result`
while the others carry on (unless ``on_error="stop"``).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import SUPPORTED_WRITE_FORMATS, load_16k, remove_stale_parts, write_audio_atomic
from .errors import ParameterError, RvcfastError
from .pipeline import (
    ConversionParams,
    PreparedAudio,
    Timer,
    finish,
    pitch_track,
    prepare,
    segment_inputs,
    segment_output_length,
)

if TYPE_CHECKING:
    from .api import Converter, Result

__all__ = ["BatchOptions", "Job", "expand_inputs", "run_batch", "AUDIO_EXTENSIONS", "BatchSummary"]

#: File extensions picked up when a folder is given (what libsndfile decodes).
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".caf", ".au", ".snd"}

BatchInput = str | os.PathLike | tuple
ProgressCallback = Callable[["Result", int, int], None]

#: CPU-bound F0 backends that run in worker processes.
CPU_BOUND_F0 = {"harvest", "dio", "pm"}


@dataclass(frozen=True)
class BatchOptions:
    """Options of a batch run (see :meth:`Converter.convert_batch`)."""

    out_dir: str | os.PathLike[str] | None = None
    format: str = "wav"
    subtype: str | None = None
    name_template: str = "{stem}"
    skip_existing: bool = False
    on_error: str = "continue"
    batch_seconds: float | None = None
    decode_workers: int = 2
    write_workers: int = 1
    f0_workers: int = 2
    recursive: bool = False
    keep_audio: bool = True

    def validate(self) -> None:
        if self.format.lower() not in SUPPORTED_WRITE_FORMATS:
            raise ParameterError(f"format must be one of {sorted(SUPPORTED_WRITE_FORMATS)}, got {self.format!r}")
        if self.on_error not in ("continue", "stop"):
            raise ParameterError(f"on_error must be 'continue' or 'stop', got {self.on_error!r}")
        if self.batch_seconds is not None and not (self.batch_seconds > 0):
            raise ParameterError(f"batch_seconds must be positive, got {self.batch_seconds}")
        for name in ("decode_workers", "write_workers", "f0_workers"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"{name} must be at least 1")
        if "{stem}" not in self.name_template and "{index}" not in self.name_template:
            raise ParameterError("name_template must contain {stem} or {index} so outputs get distinct names")


@dataclass
class Job:
    """One input of a batch."""

    number: int
    label: str
    path: Path | None = None
    array: np.ndarray | None = None
    rate: int | None = None
    out_path: Path | None = None


@dataclass
class BatchSummary:
    """Totals of a batch run: files, seconds of audio in, stage timings summed over files."""

    files: int = 0
    failed: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        self.files += 1
        if result.error is not None:
            self.failed += 1
        if result.skipped:
            self.skipped += 1
        self.audio_seconds += result.input_seconds
        for k, v in result.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v

    def table(self) -> str:
        """A plain-text stage table (seconds and share of the summed stage time)."""
        total = sum(self.timings.values()) or 1.0
        lines = [f"{'stage':<10} {'seconds':>9} {'share':>7}"]
        for k, v in sorted(self.timings.items(), key=lambda kv: -kv[1]):
            lines.append(f"{k:<10} {v:9.3f} {100 * v / total:6.1f}%")
        rtf = self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")
        lines.append(
            f"{self.files} files ({self.failed} failed, {self.skipped} skipped), {self.audio_seconds:.1f} s of audio "
            f"in {self.wall_seconds:.1f} s (real-time factor {rtf:.3f})"
        )
        return "\n".join(lines)


def _safe_stem(stem: str) -> str:
    return re.sub(r"[\x00/\\]", "_", stem) or "audio"


def expand_inputs(inputs: Iterable[BatchInput] | BatchInput, options: BatchOptions) -> list[Job]:
    """Turn paths, folders and ``(array, rate)`` pairs into jobs with unique, safe output paths."""
    if isinstance(inputs, (str, os.PathLike)) or (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], np.ndarray)):
        inputs = [inputs]
    jobs: list[Job] = []
    for item in inputs:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ParameterError(f"array inputs must be (array, sample_rate) pairs, got a tuple of {len(item)}")
            arr, rate = item
            jobs.append(Job(len(jobs), f"array[{len(jobs)}]", array=np.asarray(arr), rate=int(rate)))
            continue
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if options.recursive else "*"
            files = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            files = _drop_previous_outputs(files, options)
            base = len(jobs)
            jobs.extend([Job(base + i, str(f), path=f) for i, f in enumerate(files)])
        else:
            # a missing/unreadable path is kept: it fails with a clear per-file error
            jobs.append(Job(len(jobs), str(p), path=p))
    _assign_outputs(jobs, options)
    return jobs


def _drop_previous_outputs(files: list[Path], options: BatchOptions) -> list[Path]:
    """In an in-place batch (output folder = input folder), leave out earlier runs' outputs.

    When an output would have had an input's name it gets the suffix ``_rvc``; when such a
    batch is resumed (``skip_existing``) those files must not become inputs themselves and
    shift the names. Only with ``skip_existing``: nothing is ever overwritten then, so an
    input that merely looks like an earlier output cannot be lost.
    """
    if options.out_dir is None or not options.skip_existing:
        return files
    out_dir = Path(options.out_dir).resolve()
    ext = "." + options.format.lower()
    names = {f.name for f in files}
    kept = []
    for f in files:
        if f.parent.resolve() == out_dir and f.suffix.lower() == ext and f.stem.endswith("_rvc"):
            base = f.stem[: -len("_rvc")]
            if any(n != f.name and Path(n).stem == base for n in names):
                continue
        kept.append(f)
    return kept


def _assign_outputs(jobs: list[Job], options: BatchOptions) -> None:
    if options.out_dir is None:
        return
    out_dir = Path(options.out_dir)
    ext = options.format.lower()
    inputs = set()
    for j in jobs:
        if j.path is not None:
            try:
                inputs.add(j.path.resolve())
            except OSError:
                pass
    taken: set[Path] = set()
    for j in jobs:
        stem = _safe_stem(j.path.stem if j.path is not None else f"array_{j.number:04d}")
        base = options.name_template.format(stem=stem, index=j.number, ext=ext)
        candidate = out_dir / f"{base}.{ext}"
        n = 1
        # unique names for inputs from different folders sharing a stem; never an input file
        while candidate.resolve() in taken or candidate.resolve() in inputs:
            suffix = "_rvc" if candidate.resolve() in inputs and n == 1 else f"_{n}"
            candidate = out_dir / f"{base}{suffix}.{ext}"
            n += 1
        taken.add(candidate.resolve())
        j.out_path = candidate


# ---------------------------------------------------------------------------------------------- stages


def _decode(job: Job, converter_cfg: Any) -> PreparedAudio:
    if job.path is not None:
        audio = load_16k(job.path)
    else:
        audio = load_16k(job.array, job.rate, name=job.label)
    return prepare(audio, converter_cfg)


def _cpu_f0(extractor: Any, padded: np.ndarray) -> np.ndarray:
    return extractor.extract(padded)


@dataclass
class _Decoded:
    job: Job
    prep: PreparedAudio | None
    decode_seconds: float
    error: str | None = None
    f0: Any = None  # a Future (process pool) or an array


def run_batch(
    converter: Converter,
    inputs: Iterable[BatchInput] | BatchInput,
    params: ConversionParams,
    options: BatchOptions,
    progress: ProgressCallback | None = None,
) -> Iterator[Result]:
    """Yield one :class:`Result` per input, as files finish (see the module docstring)."""
    from .api import Result

    options.validate()
    params.validate(converter.vocoder)
    jobs = expand_inputs(inputs, options)
    if options.out_dir is not None and Path(options.out_dir).is_dir():
        remove_stale_parts(options.out_dir)  # temporary files of an earlier, killed run
    total = len(jobs)
    done = 0
    vocoder = converter.vocoder
    extractor = converter._extractor_for(params) if vocoder.has_f0 else None
    cpu_f0 = extractor is not None and getattr(extractor, "name", "") in CPU_BOUND_F0
    seg_cfg = converter.segment_config
    batch_seconds = options.batch_seconds or default_batch_seconds(converter.device)
    options = replace(options, batch_seconds=batch_seconds)
    batch_samples = int(batch_seconds * 16000)

    def make_result(job: Job, audio: np.ndarray | None, rate: int, timings: dict[str, float], error: str | None, input_seconds: float, skipped: bool = False) -> Result:
        return Result(
            audio=audio if (audio is not None and options.keep_audio) else np.zeros(0, np.float32),
            sample_rate=rate,
            timings=timings,
            source=job.label,
            output_path=str(job.out_path) if (job.out_path is not None and error is None and not skipped) else None,
            error=error,
            skipped=skipped,
            input_seconds=input_seconds,
            index=job.number,
        )

    decode_pool = cf.ThreadPoolExecutor(max_workers=options.decode_workers, thread_name_prefix="rvcfast-decode")
    write_pool = cf.ThreadPoolExecutor(max_workers=options.write_workers, thread_name_prefix="rvcfast-write")
    f0_pool = cf.ProcessPoolExecutor(max_workers=options.f0_workers) if cpu_f0 else None

    def decode_task(job: Job) -> _Decoded:
        t0 = time.perf_counter()
        try:
            prep = _decode(job, seg_cfg)
        except RvcfastError as exc:
            return _Decoded(job, None, time.perf_counter() - t0, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported per file, the batch carries on
            return _Decoded(job, None, time.perf_counter() - t0, error=f"{job.label}: {type(exc).__name__}: {exc}")
        dec = _Decoded(job, prep, time.perf_counter() - t0)
        if f0_pool is not None:
            dec.f0 = f0_pool.submit(_cpu_f0, extractor, prep.padded)
        return dec

    pending: deque[tuple[Job, cf.Future[_Decoded]]] = deque()
    writes: deque[tuple[Result, cf.Future[Any]]] = deque()
    job_iter = iter(jobs)
    prefetch_files = max(4, 2 * options.decode_workers)

    def submit_more() -> None:
        while len(pending) < prefetch_files:
            job = next(job_iter, None)
            if job is None:
                return
            if options.skip_existing and job.out_path is not None and job.out_path.exists():
                fut: cf.Future[_Decoded] = cf.Future()
                fut.set_result(_Decoded(job, None, 0.0, error="__skip__"))
                pending.append((job, fut))
                continue
            pending.append((job, decode_pool.submit(decode_task, job)))

    def drain_writes(block: bool) -> Iterator[Result]:
        nonlocal done
        while writes and (block or writes[0][1].done()):
            res, fut = writes.popleft()
            try:
                seconds = fut.result()
                if seconds is not None:
                    res.timings["write"] = seconds
            except Exception as exc:  # noqa: BLE001
                res.error = f"{res.source}: writing {res.output_path} failed: {type(exc).__name__}: {exc}"
                res.output_path = None
                if options.on_error == "stop":
                    raise
            done += 1
            if progress:
                progress(res, done, total)
            yield res

    def emit(res: Result) -> Iterator[Result]:
        nonlocal done
        yield from drain_writes(block=True)
        done += 1
        if progress:
            progress(res, done, total)
        yield res

    try:
        submit_more()
        while pending:
            # ---- gather a group of decoded files, up to batch_seconds of audio
            group: list[_Decoded] = []
            samples = 0
            while pending and (not group or samples < batch_samples):
                job, fut = pending.popleft()
                dec = fut.result()
                submit_more()
                if dec.error == "__skip__":
                    yield from emit(make_result(job, None, vocoder.sample_rate, {}, None, 0.0, skipped=True))
                    continue
                if dec.error is not None:
                    if options.on_error == "stop":
                        raise RvcfastError(dec.error)
                    yield from emit(make_result(job, None, vocoder.sample_rate, {"decode": dec.decode_seconds}, dec.error, 0.0))
                    continue
                group.append(dec)
                samples += dec.prep.padded.shape[0]
            if not group:
                continue
            yield from drain_writes(block=False)
            for res, prep_audio, rate, timings, job in _convert_group(converter, group, params, options, extractor):
                if res is not None:  # a failure inside the group
                    if options.on_error == "stop":
                        raise RvcfastError(res.error or "conversion failed")
                    yield from emit(res)
                    continue
                result = make_result(job, prep_audio, rate, timings, None, group_seconds(job, group))
                if job.out_path is not None:
                    writes.append((result, write_pool.submit(_write_timed, job.out_path, prep_audio, rate, options)))
                else:
                    yield from emit(result)
            yield from drain_writes(block=False)
        yield from drain_writes(block=True)
    finally:
        for _, fut in pending:
            fut.cancel()
        decode_pool.shutdown(wait=True, cancel_futures=True)
        write_pool.shutdown(wait=True)
        if f0_pool is not None:
            f0_pool.shutdown(wait=True, cancel_futures=True)


def default_batch_seconds(device: Any) -> float:
    """Audio batched per model call when ``batch_seconds`` is not given.

    On a CPU, batching segments makes the HiFi-GAN decoder's large activations spill
    out of the caches: measured on 2 cores, four 7 s segments took 28.8 s of synthesis
    batched against 19.1 s one at a time. So the CPU default (8 s) sends about one
    segment per call (files still overlap with decoding and writing); GPUs get 120 s.
    """
    return 8.0 if getattr(device, "type", str(device)) == "cpu" else 120.0


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Tensors of many sizes come and go during a long batch; glibc keeps freed blocks
    below its (adaptive) mmap threshold in the heap, so without this the resident size
    creeps up by hundreds of MB over an hour-long file.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def group_seconds(job: Job, group: Sequence[_Decoded]) -> float:
    for d in group:
        if d.job is job and d.prep is not None:
            return d.prep.seconds
    return 0.0


def _write_timed(path: Path, audio: np.ndarray, rate: int, options: BatchOptions) -> float:
    t0 = time.perf_counter()
    write_audio_atomic(path, audio, rate, format=options.format, subtype=options.subtype)
    return time.perf_counter() - t0


def _convert_group(
    converter: Converter,
    group: list[_Decoded],
    params: ConversionParams,
    options: BatchOptions,
    extractor: Any,
) -> Iterator[tuple[Result | None, np.ndarray | None, int, dict[str, float], Job]]:
    """F0 for the whole group, then every segment of every file through the models in length buckets."""
    from .api import Result

    vocoder = converter.vocoder
    seconds = np.array([d.prep.padded.shape[0] for d in group], dtype=np.float64)
    share = seconds / seconds.sum()
    timings: list[dict[str, float]] = [{"decode": d.decode_seconds} for d in group]

    def spread(stage: str, elapsed: float, members: Sequence[int] | None = None) -> None:
        idx = list(range(len(group))) if members is None else list(members)
        w = share[idx] / share[idx].sum()
        for i, wi in zip(idx, w):
            timings[i][stage] = timings[i].get(stage, 0.0) + elapsed * float(wi)

    failed: dict[int, str] = {}

    # ---- F0 (batched for neural backends, process pool for CPU-bound ones)
    tracks: list[tuple[np.ndarray | None, np.ndarray | None]] = [(None, None)] * len(group)
    if vocoder.has_f0:
        t0 = time.perf_counter()
        raw: list[np.ndarray | None] = [None] * len(group)
        if group[0].f0 is not None:
            for i, d in enumerate(group):
                try:
                    raw[i] = d.f0.result()
                except Exception as exc:  # noqa: BLE001
                    failed[i] = f"{d.job.label}: F0 extraction failed: {type(exc).__name__}: {exc}"
            spread("f0", time.perf_counter() - t0)
        else:
            try:
                out = extractor.extract_batch([d.prep.padded for d in group])
                raw = list(out)
            except Exception:  # noqa: BLE001 - isolate the bad file
                for i, d in enumerate(group):
                    try:
                        raw[i] = extractor.extract(d.prep.padded)
                    except Exception as exc:  # noqa: BLE001
                        failed[i] = f"{d.job.label}: F0 extraction failed: {type(exc).__name__}: {exc}"
            spread("f0", time.perf_counter() - t0)
        for i, d in enumerate(group):
            if i not in failed:
                tracks[i] = pitch_track(np.asarray(raw[i]), d.prep.p_len, params)

    # ---- segments of all files, bucketed by length
    entries = []  # (group index, segment number, SegmentInput)
    for i, d in enumerate(group):
        if i in failed:
            continue
        coarse, pitchf = tracks[i]
        for k, seg in enumerate(segment_inputs(d.prep, coarse, pitchf, params.seed)):
            entries.append((i, k, seg))
    # each file's output is written in place into one buffer as its segments finish
    trim = vocoder.sample_rate * converter.segment_config.x_pad
    buffers: dict[int, np.ndarray] = {}
    offsets: dict[tuple[int, int], int] = {}
    for i, d in enumerate(group):
        if i in failed:
            continue
        pos = 0
        for k, seg in enumerate(d.prep.segments):
            offsets[(i, k)] = pos
            pos += segment_output_length(
                seg.end - seg.start, seg.f0_end - seg.f0_start, vocoder.hop_length, trim, params.keep_length
            )
        buffers[i] = np.empty(pos, dtype=np.float32)
    entries.sort(key=lambda e: e[2].audio.shape[0])
    budget = max(int(options.batch_seconds * 16000), max((e[2].audio.shape[0] for e in entries), default=1))
    start = 0
    while start < len(entries):
        end = start + 1
        longest = entries[start][2].audio.shape[0]
        while end < len(entries):
            longest = max(longest, entries[end][2].audio.shape[0])
            if longest * (end + 1 - start) > budget:
                break
            end += 1
        bucket = entries[start:end]
        members = sorted({e[0] for e in bucket})
        timer = Timer(converter.device)
        try:
            pieces = converter.synthesize_segments([e[2] for e in bucket], params, timer)
        except Exception:  # noqa: BLE001 - retry one by one to isolate a bad input
            pieces = []
            for e in bucket:
                try:
                    pieces.extend(converter.synthesize_segments([e[2]], params, timer))
                except Exception as exc:  # noqa: BLE001
                    failed.setdefault(e[0], f"{group[e[0]].job.label}: synthesis failed: {type(exc).__name__}: {exc}")
                    pieces.append(None)
        for stage, elapsed in timer.times.items():
            spread(stage, elapsed, members)
        for e, piece in zip(bucket, pieces):
            if piece is None or e[0] not in buffers:
                continue
            off = offsets[(e[0], e[1])]
            buffers[e[0]][off : off + piece.shape[0]] = piece
        del pieces
        release_memory()
        start = end

    # ---- assemble per file
    for i, d in enumerate(group):
        if i in failed:
            res = Result(np.zeros(0, np.float32), vocoder.sample_rate, timings[i], d.job.label, None, failed[i], index=d.job.number)
            yield res, None, 0, timings[i], d.job
            continue
        t0 = time.perf_counter()
        audio, rate = finish(buffers.pop(i), d.prep, vocoder.sample_rate, params)
        timings[i]["post"] = timings[i].get("post", 0.0) + time.perf_counter() - t0
        yield None, audio, rate, timings[i], d.job

"""Inputs of a batch: paths, folders and ``(array, sample_rate)`` pairs become :class:`Job` s
with unique output paths inside the output folder (see :func:`expand_inputs`).

Used by :mod:`rvcfast.batch` (and the cluster runner, which names outputs the same way).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import string
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ParameterError
from .local_paths import uri_refusal

__all__ = ["AUDIO_EXTENSIONS", "BatchInput", "BatchOptions", "Job", "check_name_template", "expand_inputs", "is_number", "pitch_text"]

#: File extensions picked up when a folder is given.
AUDIO_EXTENSIONS = {
    # libsndfile
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".caf", ".au", ".snd",
    # containers decoded through PyAV (the "av" extra)
    ".m4a", ".aac", ".mp4", ".m4b", ".mov", ".webm", ".mkv", ".mka", ".wma", ".asf", ".ac3", ".amr", ".3gp",
}

BatchInput = str | os.PathLike | tuple


@dataclass
class Job:
    """One input of a batch."""

    number: int
    label: str
    path: Path | None = None
    array: np.ndarray | None = None
    rate: int | None = None
    out_path: Path | None = None
    #: why this input's output cannot be written (found before any work; the input fails with it)
    problem: str | None = None


@dataclass(frozen=True)
class BatchOptions:
    """Options of a batch run (see :meth:`Converter.convert_batch`); run by :mod:`rvcfast.batch`."""

    out_dir: str | os.PathLike[str] | None = None
    format: str = "wav"
    subtype: str | None = None
    bitrate: int | None = None  # kbit/s of a lossy output (mp3, ogg/Opus, m4a); None: the encoder's default
    name_template: str = "{stem}"
    skip_existing: bool = False
    on_error: str = "continue"
    batch_seconds: float | None = None
    decode_workers: int = 2
    write_workers: int = 1
    f0_workers: int = 2
    compute_workers: int | None = None
    recursive: bool = False
    keep_audio: bool = True

    def validate(self) -> None:
        """Raise :class:`ParameterError` naming the first bad option (checked before any work)."""
        from .writing import SUPPORTED_WRITE_FORMATS, check_bitrate, check_output_folder

        if not isinstance(self.format, str) or self.format.lower() not in SUPPORTED_WRITE_FORMATS:
            raise ParameterError(f"format must be one of {sorted(SUPPORTED_WRITE_FORMATS)}, got {self.format!r}")
        check_bitrate(self.format.lower(), self.subtype, self.bitrate)  # at any rate; the output rate's limits: run_batch
        if self.on_error not in ("continue", "stop"):
            raise ParameterError(f"on_error must be 'continue' or 'stop', got {self.on_error!r}")
        from .runtime import check_batch_seconds  # here: importing rvcfast.batch does not import torch

        check_batch_seconds(self.batch_seconds)
        for name in ("decode_workers", "write_workers", "f0_workers"):
            if not _is_whole(getattr(self, name)):
                raise ParameterError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if self.compute_workers is not None and not _is_whole(self.compute_workers):
            raise ParameterError(f"compute_workers must be a whole number >= 1 or None, got {self.compute_workers!r}")
        check_name_template(self.name_template)
        if self.out_dir is not None:
            check_output_folder(self.out_dir, "out_dir")  # a file: refused now, not after converting everything


def _is_whole(value: Any) -> bool:
    """A worker count: an int (not a bool) of at least 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and bool(value >= 1)


#: ``name_template``'s ``{voice}`` and ``{pitch}`` where no batch gives them (checking a template).
_NAMING_DEFAULTS = {"voice": "voice", "pitch": "0"}


def pitch_text(pitch: float) -> str:
    """A key shift as ``name_template``'s ``{pitch}`` writes it: ``0``, ``+2``, ``-1.5``."""
    return "0" if pitch == 0 else f"{float(pitch):+g}"


def check_name_template(template: Any) -> None:
    """Raise :class:`ParameterError` unless ``template`` names outputs inside the output folder.

    The template is formatted with ``stem`` (the input's name without its extension),
    ``parent`` (the name of the folder it is in; ``arrays`` for array inputs), ``index``
    (its position), ``ext`` (the format), ``voice`` (the voice model file's name without
    its extension) and ``pitch`` (the key shift: ``0``, ``+2``, ``-1.5``): an unknown field, a positional
    ``{}`` or a bad format spec is refused here, as is an absolute path or a ``..`` that
    would leave the output folder. Subfolders (``"{index:03d}/{stem}"``) are allowed.
    """
    if not isinstance(template, str):
        raise ParameterError(f"name_template must be a string, got {type(template).__name__}")
    try:
        fields = {re.split(r"[.\[]", f, maxsplit=1)[0] for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        trial = template.format(stem="audio", parent="folder", index=0, ext="wav", **_NAMING_DEFAULTS)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise ParameterError(
            f"name_template {template!r} cannot be filled in ({type(exc).__name__}: {exc}); "
            "its fields are {stem}, {parent}, {index}, {ext}, {voice} and {pitch}"
        ) from None
    if not fields & {"stem", "index"}:
        raise ParameterError("name_template must contain {stem} or {index} so outputs get distinct names")
    _check_output_name(template, trial)


def _check_output_name(template: str, name: str) -> None:
    """Refuse a formatted ``name`` that is empty, absolute or climbs out of the output folder."""
    path = Path(name)
    if path.is_absolute() or path.drive:
        raise ParameterError(f"name_template {template!r} gives an absolute path (e.g. {name!r}): outputs go in out_dir")
    if not path.name or path.name in (".", "..") or name.endswith(("/", os.sep)):
        raise ParameterError(f"name_template {template!r} gives no file name ({name!r})")
    if ".." in path.parts:
        raise ParameterError(f"name_template {template!r} leaves the output folder (e.g. {name!r}): '..' is not allowed")


def _safe_stem(stem: str) -> str:
    return re.sub(r"[\x00/\\]", "_", stem) or "audio"


def expand_inputs(
    inputs: Iterable[BatchInput] | BatchInput, options: BatchOptions, naming: Mapping[str, str] | None = None
) -> list[Job]:
    """Turn paths, folders and ``(array, rate)`` pairs into jobs with unique, safe output paths.

    ``naming`` gives ``name_template``'s ``{voice}`` and ``{pitch}`` (default ``voice`` and ``0``).

    A file named more than once (directly and through its folder, or spelled two ways:
    ``in/./a.wav``, a symlink) is one job, where it first appears. A folder's audio files
    are taken sorted, leaving out the outputs of earlier runs: files under the output
    folder when it lies inside the folder (``recursive``), and in an in-place batch the
    ``*_rvc`` outputs (:func:`_drop_previous_outputs`).
    """
    jobs: list[Job] = []
    seen: set[Path] = set()
    listed: set[int] = set()  # the jobs found in a folder (not named one by one)

    def add_file(path: Path, in_folder: bool) -> None:
        key = _resolved(path)
        if key not in seen:
            seen.add(key)
            if in_folder:
                listed.add(len(jobs))
            jobs.append(Job(len(jobs), str(path), path=path))

    for position, item in enumerate(_input_items(inputs)):
        if isinstance(item, tuple):
            arr, rate = _array_pair(item, position)
            jobs.append(Job(len(jobs), f"array[{len(jobs)}]", array=arr, rate=rate))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ParameterError(f"input {position}: {_not_an_input(item)}")
        refusal = uri_refusal(item)
        if refusal is not None:  # as an item that is no input at all: pathlib would read s3:/bucket/a.wav
            raise ParameterError(f"input {position}: {item} is {refusal}")
        p = Path(item)
        # a missing/unreadable path is kept: it fails with a clear per-file error
        folder = _is_dir(p)
        for f in _folder_files(p, options) if folder else [p]:
            add_file(f, folder)
    jobs = _drop_recorded_outputs(jobs, options, listed)
    _assign_outputs(jobs, options, {**_NAMING_DEFAULTS, **dict(naming or {})})
    return jobs


_EXPECTED_INPUT = "a path, a folder or an (array, sample_rate) tuple"


def is_number(value: Any) -> bool:
    """A real number that is not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_samples(value: Any) -> bool:
    """Whether ``value`` can be an array input's samples: an array, a tensor, a (nested) list of numbers."""
    if isinstance(value, (str, bytes, os.PathLike)):
        return False
    if isinstance(value, np.ndarray) or hasattr(value, "__array__") or hasattr(value, "detach"):
        return True
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        return False
    first = value[0]  # a number, or a row of numbers ([samples, channels] as nested lists)
    return is_number(first) or (isinstance(first, (list, tuple)) and len(first) > 0 and is_number(first[0]))


def _input_items(inputs: Any) -> Iterable[Any]:
    """The batch's items: ``inputs`` itself when it is one input (a path, or a 2-tuple of
    samples and a number, whatever the samples' type), else its items."""
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    if isinstance(inputs, tuple) and len(inputs) == 2 and not isinstance(inputs[0], (str, os.PathLike)) and (
        _is_samples(inputs[0]) or is_number(inputs[1])
    ):
        return [inputs]
    if _is_samples(inputs) and not isinstance(inputs, (list, tuple)):
        raise ParameterError(f"an array input needs its sample rate: pass (array, sample_rate), got {type(inputs).__name__}")
    if isinstance(inputs, (bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise ParameterError(f"inputs must be {_EXPECTED_INPUT}, or a list of them; got {type(inputs).__name__}")
    return inputs


def _not_an_input(item: Any) -> str:
    if isinstance(item, list):
        return f"expected {_EXPECTED_INPUT}, got a list (an array input is a tuple: (samples, sample_rate))"
    if _is_samples(item):
        return f"an array needs its sample rate: pass (array, sample_rate), got a bare {type(item).__name__}"
    return f"expected {_EXPECTED_INPUT}, got {type(item).__name__}"


def _array_pair(item: tuple, position: int) -> tuple[np.ndarray, int]:
    """The samples (an array, a tensor or a list) and the rate of an ``(array, sample_rate)`` item."""
    if len(item) != 2:
        raise ParameterError(f"input {position}: an array input is an (array, sample_rate) pair, got a tuple of {len(item)}")
    samples, rate = item
    if not _is_samples(samples):
        raise ParameterError(
            f"input {position}: the first item of an (array, sample_rate) pair must be the samples "
            f"(an array, a tensor or a list of numbers), got {type(samples).__name__}"
        )
    if not is_number(rate) or not math.isfinite(float(rate)) or float(rate) != int(rate) or int(rate) <= 0:
        raise ParameterError(
            f"input {position}: the sample rate of an (array, sample_rate) pair must be a whole number of Hz above 0, "
            f"got {rate!r}"
        )
    from .audio import samples_array

    try:
        arr = samples_array(samples)  # a torch tensor on any device, in any precision
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"input {position}: the samples of an (array, sample_rate) pair are not an array: {exc}") from None
    return arr, int(rate)


def _resolved(path: Path) -> Path:
    """``path`` with symlinks and ``..`` resolved (made absolute where that fails: a symlink loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder; ``False`` where it cannot even be looked at (a folder on
    its path that cannot be searched, a name too long): decoding then names the problem."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _walk(folder: Path, unlisted: list[Path]) -> Iterator[Path]:
    """Every entry under ``folder``, into symlinked sub-folders too (``Path.glob("**")`` skips
    them silently); a folder reached again (a symlink loop, two links to one folder) is read once.
    Sub-folders that cannot be listed are added to ``unlisted`` (``os.walk`` skips them silently)."""
    seen: set[tuple[int, int]] = set()

    def cannot_list(exc: OSError) -> None:
        if exc.filename is not None and Path(exc.filename) != folder:
            unlisted.append(Path(exc.filename))

    for root, dirs, names in os.walk(folder, followlinks=True, onerror=cannot_list):
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in names:
            yield Path(root) / name


def _folder_files(folder: Path, options: BatchOptions) -> list[Path]:
    """The audio files of a folder input, sorted, without the outputs of earlier runs.

    A folder that cannot be listed (no read or search permission), or with ``recursive`` such
    a sub-folder, is returned as its own input, which then fails naming it, instead of giving
    no files without a word."""
    try:
        with os.scandir(folder):
            pass
    except OSError:
        return [folder]
    unlisted: list[Path] = []  # sub-folders that cannot be listed: each an input that fails naming it
    found = _walk(folder, unlisted) if options.recursive else folder.glob("*")
    files = sorted([f for f in found if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file()] + unlisted)
    if options.out_dir is not None:
        # an output folder inside the input folder holds outputs, never inputs (a resumed
        # recursive batch would otherwise convert them again and rename every output)
        out_dir, top = _resolved(Path(options.out_dir)), _resolved(folder)
        if out_dir != top and out_dir.is_relative_to(top):
            files = [f for f in files if not (_resolved(f.parent) / f.name).is_relative_to(out_dir)]
    return _drop_previous_outputs(files, options)


def _drop_previous_outputs(files: list[Path], options: BatchOptions) -> list[Path]:
    """In an in-place batch (output folder = input folder), leave out earlier runs' outputs.

    When an output would have had an input's name it gets the suffix ``_rvc``; when such a
    batch is resumed (``skip_existing``) those files must not become inputs themselves and
    shift the names. Only with ``skip_existing``: nothing is ever overwritten then, so an
    input that merely looks like an earlier output cannot be lost.
    """
    if options.out_dir is None or not options.skip_existing:
        return files
    out_dir = _resolved(Path(options.out_dir))
    ext = "." + options.format.lower()
    # the stems of the files' names, looked up once per `*_rvc` file (a scan of every name for
    # each one took 70 s to plan the resume of an in-place batch of 4,000 inputs)
    stems = {Path(name).stem for name in {f.name for f in files}}
    kept = []
    for f in files:
        if _resolved(f.parent) == out_dir and f.suffix.lower() == ext and f.stem.endswith("_rvc"):
            if f.stem[: -len("_rvc")] in stems:  # never f's own stem, which ends in _rvc
                continue
        kept.append(f)
    return kept


def _drop_recorded_outputs(jobs: list[Job], options: BatchOptions, listed: set[int] | None = None) -> list[Job]:
    """Leave out the files under the output folder that record another of the batch's inputs as
    their source: earlier runs' outputs, whatever their names (an in-place ``recursive`` batch
    writes ``x.wav`` and ``x_1.wav`` for ``a/x.wav`` and ``b/x.wav``; ``x_2.wav`` for ``x.wav``
    beside ``x.flac``), which would otherwise be converted themselves and take names from the
    inputs' own outputs: resumed (``skip_existing``), or found in a folder (``listed``, the
    numbers of those jobs; an in-place batch run again converted its earlier ``x_rvc.wav`` into
    ``x_rvc_rvc.wav`` and wrote ``x``'s output as ``x_2.wav``). A file named as an input by
    itself stays one unless the batch is resumed (it may be overwritten otherwise). The jobs
    left are renumbered."""
    if options.out_dir is None:
        return jobs
    from .writing import recorded_source, source_id

    top = _resolved(Path(options.out_dir))
    files = [j for j in jobs if j.path is not None]
    inside = [
        j for j in files
        if (options.skip_existing or j.number in (listed or ())) and _resolved(j.path).is_relative_to(top)  # type: ignore[arg-type]
    ]
    if not inside:
        return jobs
    sources = {j.number: source_id(j.path) for j in files}  # type: ignore[arg-type]
    batch = set(sources.values())
    dropped = set()
    for j in inside:
        recorded = recorded_source(j.path)  # type: ignore[arg-type]
        if recorded is not None and recorded != sources[j.number] and recorded in batch:
            dropped.add(j.number)
    if not dropped:
        return jobs
    kept = [j for j in jobs if j.number not in dropped]
    for number, j in enumerate(kept):
        j.number = number
        if j.path is None:
            j.label = f"array[{number}]"
    return kept


def _assign_outputs(
    jobs: list[Job], options: BatchOptions, naming: Mapping[str, str] = _NAMING_DEFAULTS, namer: _Namer | None = None
) -> None:
    """Give each job a unique output path in ``options.out_dir``, never an input's.

    Names follow the template and, for repeated names, input order (``x``, ``x_1``...). When
    a batch is resumed (``skip_existing``), an existing output that records one of this
    batch's inputs as its source (:func:`rvcfast.writing.recorded_source`) keeps that input:
    its own input is planned onto it (and skipped), every other input passes it by. Inputs
    added between runs therefore cannot shift names onto another input's output; and once
    one input has found its output, outputs recording files outside the batch (inputs since
    removed) are passed by too (without such a match, as for a moved input folder, names
    decide, as before records existed). Every
    existing name of the sequence is looked at, also past a missing one (an input that
    failed or was removed leaves a gap). The folders are listed once and each name is
    checked about once, so thousands of inputs sharing a stem are planned in linear time.
    ``namer``: another place's names (object storage), else the output folder's.
    """
    if options.out_dir is None:
        return
    namer = namer if namer is not None else _Namer(jobs, options, naming)
    bases = {j.number: namer.base(j) for j in jobs}
    if options.skip_existing:
        namer.prefetch(list(bases.values()))
        for j in jobs:  # outputs of earlier runs go back to their own inputs first
            own = namer.recorded_output(j, bases[j.number])
            if own is not None:
                namer.take(own)
                j.out_path = own
        # an input found its own output: the folder is this batch's, so outputs recording
        # files outside the batch (inputs since removed) are theirs too, not another's to skip on
        namer.anchored = any(j.out_path is not None for j in jobs)
    for j in jobs:
        if j.out_path is None:
            j.out_path = namer.free_name(bases[j.number])
            namer.take(j.out_path)


_NUMBERED = re.compile(r"(.*)_([1-9][0-9]*)")


#: Bytes most file systems allow in one name (ext4, XFS, btrfs, APFS, NTFS: 255).
NAME_MAX = 255
#: Room kept at the end of an output's name for the number that makes it unique (``_rvc``, ``_12``).
_SUFFIX_ROOM = 8


def _fit_names(base: str, tail: int) -> str:
    """``base`` with every part (``a/b``) cut to :data:`NAME_MAX` bytes, the last one to leave
    ``tail`` bytes for its suffix and extension, on UTF-8 character boundaries: a long input
    name otherwise failed at its write, after its conversion ("File name too long")."""

    def cut(part: str, limit: int) -> str:
        # surrogateescape: a name that is not UTF-8 (a Latin-1 `caf\xe9.wav` from an old archive)
        # holds each undecodable byte as one lone surrogate, one byte on disk
        if len(part.encode("utf-8", "surrogateescape")) <= limit:
            return part
        kept, size = [], 0
        for ch in part:
            size += len(ch.encode("utf-8", "surrogateescape"))
            if size > limit:
                break
            kept.append(ch)
        return "".join(kept).rstrip(" .") or "audio"

    parts = base.split("/")
    return "/".join([cut(p, NAME_MAX) for p in parts[:-1]] + [cut(parts[-1], NAME_MAX - tail)])


def _fold(name: str) -> str:
    """``name`` as a file system that ignores case and Unicode normalisation compares it (macOS,
    Windows): two outputs with the same fold would be one file there. ``café`` composed (NFC, as
    typed on Linux and Windows) and decomposed (NFD, as macOS' HFS+ stores it) fold alike."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


class _Namer:
    """Output names of one batch: the template, the names taken, the inputs never to be written.

    The names of a ``base`` are numbered: ``k = 0`` is ``base`` itself, then ``base_k``; where
    ``base`` is an input, ``k = 1`` is ``base_rvc`` instead (as rvcfast has always named them).
    """

    def __init__(self, jobs: list[Job], options: BatchOptions, naming: Mapping[str, str] = _NAMING_DEFAULTS) -> None:
        self.options = options
        self.naming = {k: _safe_stem(str(v)) for k, v in naming.items()}
        self.out_dir = Path(options.out_dir)  # type: ignore[arg-type]
        self.top = _resolved(self.out_dir)
        self.ext = options.format.lower()
        self.inputs: set[Path] = set()
        self.input_ids: set[tuple[int, int]] = set()
        self.sources: dict[int, str] = {}  # job number -> the source id its outputs record
        self.taken: set[str] = set()  # outputs differing only in case would be one file there too
        self._recorded: dict[Path, str | None] = {}
        self._listings: dict[Path, dict[str, set[int]]] = {}  # folder -> casefolded base name -> existing k
        self._base_is_input: dict[str, bool] = {}
        self._by_source: dict[str, dict[str, list[Path]]] = {}  # base -> source id -> its outputs, in order
        self._next: dict[str, int] = {}  # base -> every name before this k is unavailable to the jobs left
        self._existing: dict[str, list[int]] = {}  # base -> the k of its names that exist (see existing)
        self._existing_sets: dict[str, frozenset[int]] = {}
        from .writing import source_id

        for j in jobs:
            if j.path is None:
                continue
            self.sources[j.number] = source_id(j.path)
            try:
                self.inputs.add(_resolved(j.path))
                st = j.path.stat()
                self.input_ids.add((st.st_dev, st.st_ino))
            except OSError:
                pass
        self.batch_sources = set(self.sources.values())
        self.anchored = False  # outputs recorded by files outside the batch are taken (see _assign_outputs)

    def prefetch(self, bases: list[str]) -> None:
        """Read at once what naming ``bases`` will look at (a remote store's records); nothing here."""

    def base(self, j: Job) -> str:
        """The job's name from the template, checked to stay inside the output folder."""
        stem = _safe_stem(j.path.stem if j.path is not None else f"array_{j.number:04d}")
        parent = (_safe_stem(j.path.parent.name) if j.path.parent.name else "root") if j.path is not None else "arrays"
        template = self.options.name_template
        base = template.format(stem=stem, parent=parent, index=j.number, ext=self.ext, **self.naming)
        _check_output_name(template, base)
        base = _fit_names(base, len(f".{self.ext}".encode()) + _SUFFIX_ROOM)
        candidate = self.out_dir / f"{base}.{self.ext}"
        if not _resolved(candidate.parent).is_relative_to(self.top):
            raise ParameterError(
                f"name_template {template!r} puts the output of {j.label} at {candidate}, "
                f"outside the output folder {self.out_dir}"
            )
        return base

    def is_input(self, candidate: Path) -> bool:
        # By name, and by identity: on a case-insensitive file system (macOS, Windows) `A.wav`
        # is the input `A.WAV`, and a hard link is the same file under another name.
        if _resolved(candidate) in self.inputs:
            return True
        try:
            st = candidate.stat()
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.input_ids

    def key(self, candidate: Path) -> str:
        return _fold(str(_resolved(candidate)))

    def take(self, candidate: Path) -> None:
        self.taken.add(self.key(candidate))

    def candidate(self, base: str, k: int) -> Path:
        """``base``'s ``k``-th name: ``base``, then ``base_1``, ``base_2``...; ``base_rvc`` in place
        of ``base_1`` where ``base`` is an input (resumes find earlier outputs by these names)."""
        if k == 0:
            return self.out_dir / f"{base}.{self.ext}"
        if base not in self._base_is_input:
            self._base_is_input[base] = self.is_input(self.candidate(base, 0))
        if k == 1 and self._base_is_input[base]:
            return self.out_dir / f"{base}_rvc.{self.ext}"
        return self.out_dir / f"{base}_{k}.{self.ext}"

    def existing(self, base: str) -> list[int]:
        """The ``k`` of ``base``'s names that exist, in order (read from one listing of the folder),
        worked out once per base: every job of a base asks (``free_name``), and thousands of inputs
        named alike (``<speaker>/audio.wav``) each sorted all of them again."""
        if base not in self._existing:
            self._existing[base] = self._existing_names(base)
        return self._existing[base]

    def _existing_names(self, base: str) -> list[int]:
        folder = (self.out_dir / base).parent
        if folder not in self._listings:
            self._listings[folder] = self._list(folder)
        found = self._listings[folder].get(_fold(Path(base).name), set())
        if self.candidate(base, 1).name.endswith(f"_rvc.{self.ext}"):  # base is an input: `base_rvc`, no `base_1`
            return sorted({k for k in found if k == 0 or k >= 2} | ({1} if -1 in found else set()))
        return sorted(k for k in found if k >= 0)

    def _list(self, folder: Path) -> dict[str, set[int]]:
        """The output-like files of ``folder`` by the (casefolded) base they may belong to:
        ``x_2.wav`` is ``x_2``'s name 0 and ``x``'s name 2, ``x_rvc.wav`` ``x``'s ``_rvc`` (-1 here)."""
        names: dict[str, set[int]] = {}
        suffix = f".{self.ext}"
        try:
            entries = os.listdir(folder)
        except OSError:
            return names
        for entry in entries:
            name = _fold(entry)
            if not name.endswith(suffix):
                continue
            root = name[: -len(suffix)]
            names.setdefault(root, set()).add(0)
            if root.endswith("_rvc"):
                names.setdefault(root[: -len("_rvc")], set()).add(-1)
            numbered = _NUMBERED.fullmatch(root)
            if numbered is not None:
                names.setdefault(numbered.group(1), set()).add(int(numbered.group(2)))
        return names

    def recorded(self, candidate: Path) -> str | None:
        """The source id the existing file ``candidate`` records (read once)."""
        if candidate not in self._recorded:
            from .writing import recorded_source

            self._recorded[candidate] = recorded_source(candidate) if candidate.is_file() else None
        return self._recorded[candidate]

    def recorded_output(self, j: Job, base: str) -> Path | None:
        """An existing output among ``base``'s names that records ``j`` as its source."""
        own = self.sources.get(j.number)
        if own is None:
            return None
        if base not in self._by_source:  # each existing name of base is read once, for all its jobs
            by_source: dict[str, list[Path]] = {}
            for k in self.existing(base):
                candidate = self.candidate(base, k)
                source = self.recorded(candidate)
                if source is not None and source in self.batch_sources:
                    by_source.setdefault(source, []).append(candidate)
            self._by_source[base] = by_source
        for candidate in self._by_source[base].get(own, []):
            if self.key(candidate) not in self.taken and not self.is_input(candidate):
                return candidate
        return None

    def free_name(self, base: str) -> Path:
        """The first of ``base``'s names no input of the batch has (or had, by its record).

        Whether a name is free does not depend on the job asking (a job that reaches this has
        no output of its own left), and a name once unavailable stays so: the next job of the
        same base starts where this one stopped.
        """
        k = self._next.get(base, 0)
        while True:
            candidate = self.candidate(base, k)
            if not (self.key(candidate) in self.taken or self.is_input(candidate) or self._claimed(candidate, self._exists(base, k))):
                self._next[base] = k
                return candidate
            k += 1

    def _exists(self, base: str, k: int) -> bool:
        """Whether ``base``'s ``k``-th name exists (looked at only when resuming: ``skip_existing``)."""
        if not self.options.skip_existing:
            return False
        if base not in self._existing_sets:
            self._existing_sets[base] = frozenset(self.existing(base))
        return k in self._existing_sets[base]

    def _claimed(self, candidate: Path, exists: bool) -> bool:
        """An existing output that records another input of this batch (that input claims it),
        or, once the batch is anchored, any other input at all."""
        if not exists:
            return False
        source = self.recorded(candidate)
        return source in self.batch_sources or (self.anchored and source is not None)

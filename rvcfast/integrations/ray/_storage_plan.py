"""Planning a job on object storage for the Ray runner: its inputs listed under their prefixes
and each one's output named, by the rules of local paths (:mod:`rvcfast.batch_inputs`).

* :func:`list_inputs` lists a prefix's audio objects as :func:`rvcfast.batch.expand_inputs`
  lists a folder, leaving out a job's earlier outputs;
* :class:`_UriNamer` is :class:`rvcfast.batch_inputs._Namer` over the keys of the output
  prefix: the same template, the same numbering of repeated names, never an input's key, and
  on a resumed job (``skip_existing``) an existing output recording one of the job's inputs
  keeps that input;
* :func:`plan_uri_outputs` and :func:`plan_voice_rows` plan a whole job (one model, several
  voices), :func:`planned_output` one dataset row in its task.

Reading, writing and the checks of a job are :mod:`._storage`'s.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from ...batch_inputs import (
    _NAMING_DEFAULTS,
    AUDIO_EXTENSIONS,
    _check_output_name,
    _fit_names,
    _fold,
    _Namer,
    _safe_stem,
)
from ...errors import ParameterError, RvcfastError
from ._storage import (
    _describe,
    _recorded,
    _split,
    _uri_of,
    canonical,
    is_uri,
    join,
    output_key,
    resolve,
    source_id,
)

__all__ = ["list_inputs", "plan_uri_outputs", "planned_output", "plan_voice_rows"]

#: Outputs fetched at once on the driver to read the input they record (resuming a job).
_FETCH_THREADS = 8


def _listing(uri: str, recursive: bool, filesystem: Any) -> tuple[Any, list[str]]:
    """What ``uri`` is (a pyarrow ``FileType``: ``Directory`` for a prefix holding objects) and,
    for a prefix, its audio objects, sorted."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = resolve(uri, filesystem)
    try:
        info = fs.get_file_info(path)
        if info.type != FileType.Directory:
            return info.type, []
        found = fs.get_file_info(FileSelector(path, recursive=recursive, allow_not_found=True))
    except Exception as exc:  # noqa: BLE001
        raise RvcfastError(f"input {uri}: cannot be listed: {_describe(exc)}") from None
    files = [f.path for f in found if f.type == FileType.File and PurePosixPath(f.path).suffix.lower() in AUDIO_EXTENSIONS]
    return info.type, sorted(_uri_of(f, uri, filesystem) for f in files)


def _under(uri: str, folder: str) -> bool:
    return canonical(uri).startswith(canonical(folder) + "/")


def list_inputs(inputs: Any, out_dir: str, fmt: str, skip_existing: bool, recursive: bool, filesystem: Any) -> list[str]:
    """The input URIs of a job, as :func:`rvcfast.batch.expand_inputs` lists local paths: a prefix's
    audio objects sorted, a URI named twice once, a missing one kept (its row names the problem;
    typed as a folder, ``s3://bucket/in/``, with its trailing slash: the prefix holds no objects),
    leaving out earlier outputs (under an output prefix inside an input prefix; ``*_rvc`` of an
    in-place job, when resuming; objects in the output prefix recording another input, when
    resuming or found under a prefix: an in-place job run again converted its own outputs)."""
    from pyarrow.fs import FileType

    items = [inputs] if isinstance(inputs, str) else list(inputs)
    out = canonical(out_dir)
    listed: list[str] = []
    found: set[str] = set()  # the objects found under a prefix (not named one by one)
    for item in items:
        kind, files = _listing(item, recursive, filesystem)
        if kind != FileType.Directory:  # an object, or a missing one (its row says so): a folder when typed as one
            listed.append(canonical(item) + ("/" if kind == FileType.NotFound and item.endswith("/") else ""))
            continue
        top = canonical(item)
        if out != top and _under(out, top):  # an output prefix inside the input prefix holds outputs
            files = [f for f in files if not _under(f, out)]
        if skip_existing and out == top:  # an in-place job resumed: its earlier `x_rvc` outputs are not inputs
            stems = {PurePosixPath(f).stem for f in files}
            files = [f for f in files if not _earlier_rvc(f, out, fmt, stems)]
        listed.extend(files)
        found.update(files)
    listed = list(dict.fromkeys(listed))
    inside = [f for f in listed if (skip_existing or f in found) and _under(f, out)]
    if inside:
        ids = {source_id(f) for f in listed}
        recorded = _recorded_all(inside, filesystem)
        listed = [f for f in listed if not (recorded.get(f) is not None and recorded[f] != source_id(f) and recorded[f] in ids)]
    return listed


def _earlier_rvc(uri: str, out: str, fmt: str, stems: set[str]) -> bool:
    """An in-place job's earlier output ``x_rvc.<format>`` of an input ``x`` in the output prefix itself."""
    p = PurePosixPath(uri)
    return uri.rsplit("/", 1)[0] == out and p.suffix.lower() == "." + fmt and p.stem.endswith("_rvc") and p.stem[: -len("_rvc")] in stems


def _recorded_all(uris: list[str], filesystem: Any) -> dict[str, str | None]:
    """The input each object of ``uris`` records (``None``: none, or not audio), fetched in parallel."""
    if not uris:
        return {}
    with ThreadPoolExecutor(min(_FETCH_THREADS, len(uris))) as pool:
        return dict(zip(uris, pool.map(lambda u: _recorded(u, filesystem), uris)))


def _pure(uri: str) -> Any:
    """A URI as the path the namer works on: ``scheme/netloc/key``."""
    scheme, netloc, rest = _split(uri)
    return PurePosixPath(scheme, netloc + rest.rstrip("/"))


def _from_pure(path: Any) -> str:
    scheme, rest = str(path).split("/", 1)
    return f"{scheme}://{rest}"


class _UriNamer(_Namer):
    """:class:`rvcfast.batch_inputs._Namer` over objects: the same names, numbering and resume
    rules, with an object store's listing and records in place of the local folder's."""

    def __init__(self, inputs: list[str], options: Any, naming: Any, filesystem: Any) -> None:
        super().__init__([], options, naming)  # no local input to look at
        self.filesystem = filesystem
        self.out_dir = self.top = _pure(options.out_dir)
        self.inputs = {_pure(u) for u in inputs}
        self.sources = {k: source_id(u) for k, u in enumerate(inputs)}
        self.batch_sources = set(self.sources.values())

    def base(self, j: Any) -> str:
        stem = _safe_stem(j.path.stem)
        parent = _safe_stem(j.path.parent.name)  # an object at the top of a bucket: the bucket's name
        template = self.options.name_template
        base = template.format(stem=stem, parent=parent, index=j.number, ext=self.ext, **self.naming)
        _check_output_name(template, base)
        return _fit_names(base, len(f".{self.ext}".encode()) + 8)

    def is_input(self, candidate: Any) -> bool:
        return candidate in self.inputs

    def key(self, candidate: Any) -> str:
        return _fold(str(candidate))

    def _list(self, folder: Any) -> dict[str, set[int]]:
        from pyarrow.fs import FileSelector

        fs, path = resolve(_from_pure(folder), self.filesystem)
        try:
            found = fs.get_file_info(FileSelector(path, recursive=False, allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise RvcfastError(f"out_dir {_from_pure(folder)}: cannot be listed: {_describe(exc)}") from None
        names: dict[str, set[int]] = {}
        suffix = f".{self.ext}"
        for entry in (PurePosixPath(f.path).name for f in found):
            name = _fold(entry)
            if name.endswith(suffix):
                root = name[: -len(suffix)]
                names.setdefault(root, set()).add(0)
                if root.endswith("_rvc"):
                    names.setdefault(root[: -len("_rvc")], set()).add(-1)
                numbered = re.fullmatch(r"(.*)_([1-9][0-9]*)", root)
                if numbered is not None:
                    names.setdefault(numbered.group(1), set()).add(int(numbered.group(2)))
        return names

    def recorded(self, candidate: Any) -> str | None:
        if candidate not in self._recorded:
            self._recorded[candidate] = _recorded(_from_pure(candidate), self.filesystem)
        return self._recorded[candidate]

    def prefetch(self, bases: list[str]) -> None:
        """Read the records of every existing name of ``bases`` at once (in parallel)."""
        wanted = sorted({self.candidate(b, k) for b in set(bases) for k in self.existing(b)} - set(self._recorded), key=str)
        found = _recorded_all([_from_pure(c) for c in wanted], self.filesystem)
        self._recorded.update({c: found[_from_pure(c)] for c in wanted})


def _names(inputs: list[str], namer: _UriNamer, options: Any) -> list[str]:
    """Each input's output URI: :func:`rvcfast.batch_inputs._assign_outputs` with ``namer``."""
    from ...batch_inputs import Job, _assign_outputs

    jobs = [Job(k, u, path=_pure(u)) for k, u in enumerate(inputs)]
    _assign_outputs(jobs, options, namer=namer)
    return [_from_pure(j.out_path) for j in jobs]  # type: ignore[arg-type]


def plan_uri_outputs(
    inputs: Any, out_dir: str, naming: list[dict[str, str] | None], template: str, fmt: str, skip_existing: bool,
    recursive: bool, filesystem: Any,
) -> tuple[list[str], list[list[str]]]:
    """The inputs of a job on object storage and, per naming (a voice's ``{voice}``/``{pitch}``;
    ``None``: a one-model job), each input's output URI; two outputs of one key are refused."""
    from ...batch import BatchOptions

    fmt = fmt.lower()
    listed = list_inputs(inputs, out_dir, fmt, skip_existing, recursive, filesystem)
    if not listed:
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        raise ParameterError(f"no audio files found in {', '.join(map(str, items))}" + ("" if recursive else " (recursive=True for sub-folders)"))
    options = BatchOptions(out_dir=canonical(out_dir), format=fmt, skip_existing=skip_existing, name_template=template)
    per_naming = []
    owners: dict[str, tuple[str, str]] = {}
    for names in naming:
        outputs = _names(listed, _UriNamer(listed, options, {**_NAMING_DEFAULTS, **(names or {})}, filesystem), options)
        voice = (names or {}).get("voice", "")
        for source, output in zip(listed, outputs):
            key = output_key(output)
            if key in owners:
                raise ParameterError(
                    f"name_template {template!r} names the output of {source} for voice {voice!r} {output}, "
                    f"the output of {owners[key][1]} for voice {owners[key][0]!r}: use {{voice}} so that the voices' names differ"
                )
            owners[key] = (voice, source)
        per_naming.append(outputs)
    return listed, per_naming


def planned_output(path: str, spec: Any, naming: dict[str, str] | None = None) -> str:
    """The output of one dataset row on object storage, named in its task: the template alone
    (two rows meeting at one output are told apart by the job's claims, as for local rows)."""
    from ...batch import BatchOptions
    from ...batch_inputs import Job

    if not is_uri(path) or not is_uri(spec.out_dir):
        raise RvcfastError(f"{path}: a job's inputs and output folder are all URIs or all local paths (out_dir {spec.out_dir})")
    options = BatchOptions(out_dir=canonical(spec.out_dir), format=spec.format, name_template=spec.name_template)
    namer = _UriNamer([], options, {**_NAMING_DEFAULTS, **(naming or {})}, spec.filesystem)
    base = namer.base(Job(0, path, path=_pure(path)))
    return join(spec.out_dir, f"{base}.{spec.format}")


def plan_voice_rows(
    inputs: Any, out_dir: str, naming: list[tuple[str, float]], template: str, fmt: str, skip_existing: bool, recursive: bool,
    filesystem: Any,
) -> list[dict[str, str]]:
    """:func:`~._voices.plan_voice_outputs` on object storage: one row per input with every
    voice's output URI (``voice_outputs``, a JSON list in the voices' order)."""
    from ...batch_inputs import check_name_template, pitch_text
    from ...voices import _check_template

    check_name_template(template)
    _check_template(template, len(naming), out_dir)
    names = [{"voice": name, "pitch": pitch_text(pitch)} for name, pitch in naming]
    listed, outputs = plan_uri_outputs(inputs, out_dir, names, template, fmt, skip_existing, recursive, filesystem)  # type: ignore[arg-type]
    return [{"path": path, "voice_outputs": json.dumps(list(outs))} for path, outs in zip(listed, zip(*outputs))]

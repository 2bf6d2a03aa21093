"""Inputs and outputs on object storage (``s3://``, ``gs://``, ``abfs://``...) for the Ray runner.

Files are read and written through :mod:`pyarrow.fs`, the filesystem layer Ray Data itself
uses: :meth:`pyarrow.fs.FileSystem.from_uri` opens a URI's filesystem with the credentials,
region and endpoint of the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...), or
a job is given one (``filesystem=``, as Ray Data's readers take it). The rules are those of
local paths:

* **Names** (:mod:`._storage_plan`, which lists a job's inputs and names its outputs):
  :class:`rvcfast.batch_inputs._Namer` over the keys of the output prefix: the same
  template, the same numbering of repeated names, never an input's key, and on a resumed job
  (``skip_existing``) an existing output recording one of the job's inputs keeps that input.
  An output records its input's URI (its :func:`source_id`).
* **Atomic writes** (:func:`put`): an output is encoded in memory, then uploaded. A new key is
  uploaded at once: an object store's PUT (a multipart upload included) makes it visible only
  when complete. An existing key (a rerun's output, the manifest) is uploaded to a hidden
  temporary key beside it (``.<name>.<host>~<pid>~<random>.part``), then moved onto it, so
  that a failed upload leaves the earlier object as it was; the temporary key is removed on
  any failure. A move that fails after its copy (S3, GCS: the delete refused) has written
  the output, which is read back to tell. A writer killed between the upload and the move
  leaves that ``.part`` object (and the earlier output intact): no listing takes it for an
  input or an output.
* **Reading**: an input is copied to a private temporary file with its extension and decoded
  from there, as the server decodes an upload, so every decoder behaves as on a local file;
  its errors name the URI. An existing output looked at to resume is read at its two ends
  (64 kB each: the input it records); only a worker checking whether an object rvcfast did
  not write is a finished output fetches it whole and checks it as a local file is.
* **Keys as written**: a listed key that pyarrow.fs would read as another (``in//a.wav``,
  ``in/../a.wav``) keeps its URI and is refused by name when read (:func:`_key_problem`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ...atomic import short_name
from ...batch_inputs import (
    _fold,
)
from ...errors import ParameterError, RvcfastError

__all__ = [
    "is_uri", "uses_storage", "check_job", "prepare", "existing_output", "write_audio",
    "same_object", "write_manifest", "check_local_arg", "source_id", "output_key",
]

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
#: What pyarrow would read as options of a URI (``?region=...``) after its bucket: never part of a bucket's name.
_OPTIONS = re.compile(r"\?[A-Za-z_]+=")
#: The options of pyarrow's ``FileSystem.from_uri`` (S3, GCS, Azure, HDFS) written after a key
#: (``s3://bkt/in/?region=...``): refused as options. Any other ``?name=`` is part of a key: an
#: object may be named ``take?v=2.wav``, and one such key failed the listing of its whole prefix.
_KEY_OPTIONS = re.compile(
    r"\?(?:region|scheme|endpoint_override|allow_bucket_creation|allow_bucket_deletion|tls_ca_file_path|"
    r"tls_verify_certificates|access_key|secret_key|session_token|role_arn|anonymous|project_id|retry_limit_seconds|"
    r"default_bucket_location|account_name|account_key|blob_storage_authority|dfs_storage_authority|enable_tls|"
    r"credential_kind|tenant_id|client_id|client_secret|sas_token|replication|buffer_size|default_block_size|"
    r"kerb_ticket|user)=",
    re.IGNORECASE,
)

#: Bytes read from each end of an existing output to find the input it records.
_END_BYTES = 1 << 16


def is_uri(value: Any) -> bool:
    """Whether ``value`` is a URI other than ``file://`` (a ``str``: a ``Path`` cannot hold ``//``)."""
    if not isinstance(value, str):
        return False
    match = _URI.match(value)
    return match is not None and match.group(1).lower() != "file"


def _split(uri: str) -> tuple[str, str, str]:
    """``scheme://netloc/rest`` → ``(scheme, netloc, "/rest")`` (``rest`` normalised, keys taken as written)."""
    scheme, remainder = uri.split("://", 1)
    netloc, _, rest = remainder.partition("/")
    if _OPTIONS.search(netloc) or _KEY_OPTIONS.search(rest):  # '#' and '?' are allowed in keys ("take #2.wav", "take?v=2.wav")
        raise ParameterError(f"{uri}: options in a URI ('?name=value') are not taken: pass filesystem= (a pyarrow FileSystem)")
    if not netloc:
        raise ParameterError(f"{uri}: no bucket (or host) in the URI: expected {scheme}://BUCKET/KEY")
    rest = posixpath.normpath("/" + rest) if rest else "/"
    if rest.startswith("//"):
        rest = "/" + rest.lstrip("/")
    return scheme.lower(), netloc, rest


def canonical(uri: str) -> str:
    """``uri`` with its scheme in lower case, its path normalised and no trailing slash."""
    scheme, netloc, rest = _split(uri)
    return f"{scheme}://{netloc}{rest.rstrip('/')}"


def source_id(uri: str) -> str:
    """The id an output records of the input ``uri``: a hash of its canonical form (as
    :func:`rvcfast.writing.source_id` hashes a local file's resolved path)."""
    return hashlib.sha256(canonical(uri).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def output_key(uri: str) -> str:
    """The key two outputs collide on: the canonical URI, case and Unicode normalisation folded
    (as the local runner tells outputs apart)."""
    return _fold(canonical(uri))


# ------------------------------------------------------------------------------ filesystems


#: This process's filesystems: ``(scheme, netloc, endpoint)`` → ``(filesystem, path of the netloc's root)``.
_OPENED: dict[tuple[str, str, str], tuple[Any, str]] = {}


def _root(uri: str, filesystem: Any) -> tuple[Any, str]:
    """The filesystem of ``uri`` and the path its bucket (netloc) has there."""
    scheme, netloc, _ = _split(uri)
    if filesystem is not None:
        return filesystem, netloc  # as Ray Data's readers read a URI with a filesystem given: BUCKET/KEY
    key = (scheme, netloc, os.environ.get("AWS_ENDPOINT_URL", ""))  # a test's own server: not another's filesystem
    if key not in _OPENED:
        from pyarrow.fs import FileSystem

        try:
            fs, root = FileSystem.from_uri(f"{scheme}://{netloc}")
        except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid, OSError...
            raise ParameterError(f"{uri}: its filesystem cannot be opened: {' '.join(str(exc).split())}") from None
        _OPENED[key] = (fs, root.rstrip("/"))
    return _OPENED[key]


def resolve(uri: str, filesystem: Any = None) -> tuple[Any, str]:
    """``uri`` → ``(filesystem, path)`` in pyarrow's terms (``bucket/key`` on S3)."""
    fs, root = _root(uri, filesystem)
    rest = _split(uri)[2].rstrip("/")
    return fs, (root + rest) if root else (rest or "/")


def _uri_of(path: str, like: str, filesystem: Any) -> str:
    """A path of ``like``'s filesystem (a listing's) as a URI of the same scheme and bucket; a
    key that normalising would change (``in//a.wav``, ``/a.wav``, ``in/../a.wav``) as it is
    written, so that its row names it (:func:`_key_problem`), not another key."""
    scheme, netloc, _ = _split(like)
    _, root = _root(like, filesystem)
    rest = path[len(root):] if root and path.startswith(root) else path
    if root and _key_problem(rest[1:]) is not None:
        return f"{scheme}://{netloc}{rest}"
    return canonical(f"{scheme}://{netloc}/{rest.lstrip('/')}")


def _key_problem(key: str) -> str | None:
    """Why pyarrow.fs cannot read the object ``key`` as written (it reads another key, or none):
    an empty segment (``//``, a leading ``/``) or a ``.`` or ``..`` segment; ``None`` for any other key."""
    segments = key.split("/")
    if "" in segments:
        return "its key has an empty segment ('//', or a leading '/')"
    if "." in segments or ".." in segments:
        return "its key has a '.' or '..' segment"
    return None


def _uri_key_problem(uri: str) -> str | None:
    """:func:`_key_problem` of the key of ``uri`` as written (``None`` for a bucket alone)."""
    key = uri.split("://", 1)[1].partition("/")[2]
    return _key_problem(key) if key else None


def _check_key(uri: str) -> None:
    """Refuse to read ``uri`` where pyarrow.fs would read another key than the one written."""
    from ...errors import AudioError

    problem = _uri_key_problem(uri)
    if problem is not None:
        raise AudioError(uri, f"{problem}, which pyarrow.fs cannot read as written: rename the object")


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, ~/.aws or an instance role",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or the machine's default service account",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS or the machine's default service account",
}


def _credentials_hint(uri: str, filesystem: Any) -> str:
    """Where this URI's credentials come from, for an error that may be theirs."""
    if filesystem is not None:
        return "check the credentials, region and endpoint of the filesystem= given"
    scheme = uri.split("://", 1)[0].lower()
    where = _CREDENTIALS.get(scheme, "the environment")
    return f"credentials, region and endpoint come from {where} on every node, or pass filesystem="


def _check_bucket(uri: str, what: str, filesystem: Any) -> None:
    """Raise on the driver when ``uri``'s filesystem cannot be opened, or its bucket does not exist
    or cannot be seen with these credentials: before any model is read, not per file after."""
    from pyarrow.fs import FileType

    fs, root = _root(uri, filesystem)
    if not root:
        return
    try:
        info = fs.get_file_info(root)
    except Exception as exc:  # noqa: BLE001 - credentials, network, permissions
        raise RvcfastError(
            f"{what} {uri}: its bucket {root!r} cannot be reached: {_describe(exc)}; {_credentials_hint(uri, filesystem)}"
        ) from None
    if info.type != FileType.Directory:
        raise RvcfastError(
            f"{what} {uri}: the bucket {root!r} does not exist (or these credentials cannot see it); "
            f"{_credentials_hint(uri, filesystem)}"
        )


def uses_storage(inputs: Any, out_dir: Any) -> bool:
    """Whether a job's inputs or output folder are URIs; refused when they mix URIs and local paths."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs) if _iterable(inputs) else []
    flags = {is_uri(i) for i in items if isinstance(i, (str, os.PathLike))}
    out = is_uri(out_dir)
    if not flags or flags == {out}:
        return out
    raise ParameterError(
        "a job's inputs and output folder are all on object storage (URIs) or all local paths: "
        f"got out_dir={out_dir!r} with inputs {', '.join(map(str, items[:3]))}{'...' if len(items) > 3 else ''}"
    )


def _iterable(value: Any) -> bool:
    return hasattr(value, "__iter__") and not isinstance(value, (str, bytes))


def check_local_arg(name: str, value: Any) -> None:
    """Model, index and weights files are local paths: a URI there is refused naming the argument."""
    if is_uri(value):
        raise ParameterError(
            f"{name}={value!r}: model and index files are read from local paths (every node's, or the "
            "driver's with weights='object-store'); copy the file from object storage first"
        )


def _refuse_file_uris(inputs: Any, out_dir: Any, manifest: Any) -> None:
    """A ``file://`` URI is no object storage, and no local path either: ``-o file:///data/out``
    wrote into ``./file:/data/out`` under the working directory. Refused, naming its local path."""
    from ...local_paths import uri_refusal

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs) if _iterable(inputs) else []
    for what, value in [*(("input", i) for i in items), ("out_dir", out_dir), ("manifest", manifest)]:
        if isinstance(value, str) and value[:7].lower() == "file://":
            raise ParameterError(f"{what} {value} is {uri_refusal(value)}")


def check_job(inputs: Any, out_dir: Any, manifest: Any, filesystem: Any) -> bool:
    """The storage of a job checked on the driver; whether it is on object storage.

    Every URI's filesystem is opened and each bucket looked at (an unknown scheme, missing
    credentials or bucket raise here, naming the URI); the output prefix must not be an object.
    """
    _refuse_file_uris(inputs, out_dir, manifest)
    storage = uses_storage(inputs, out_dir)
    if filesystem is not None and not storage:
        raise ParameterError("filesystem= is for inputs and out_dir given as URIs (s3://bucket/key)")
    if not storage:
        if is_uri(manifest):
            raise ParameterError(f"manifest {manifest}: a job with local outputs writes a local manifest")
        return False
    from pyarrow.fs import FileType

    items = [inputs] if isinstance(inputs, str) else list(inputs)
    seen: set[tuple[str, str]] = set()
    for what, uri in [("out_dir", out_dir), *(("input", i) for i in items), *([("manifest", manifest)] if is_uri(manifest) else [])]:
        scheme, netloc, _ = _split(uri)
        if (scheme, netloc) not in seen:
            seen.add((scheme, netloc))
            _check_bucket(uri, what, filesystem)
    fs, path = resolve(out_dir, filesystem)
    if fs.get_file_info(path).type == FileType.File:
        raise ParameterError(f"out_dir {out_dir} is an object, not a folder (prefix) for the outputs")
    return True


def join(folder: str, name: str) -> str:
    """``folder/name`` for a URI folder."""
    return canonical(folder.rstrip("/") + "/" + name)


# ------------------------------------------------------------------------------ reading objects


@contextmanager
def _spooled(uri: str, filesystem: Any) -> Iterator[Path]:
    """``uri``'s object copied to a private temporary file with its extension (removed after)."""
    fs, path = resolve(uri, filesystem)
    suffix = PurePosixPath(path).suffix.lower()
    folder = Path(tempfile.mkdtemp(prefix="rvcfast-object-"))
    local = folder / ("object" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""))
    try:
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _renamed(exc: BaseException, local: Path, uri: str) -> RvcfastError:
    """``exc`` raised on the spooled copy ``local``, naming ``uri`` instead."""
    from ...errors import _PathError

    if isinstance(exc, _PathError):
        problem = exc.problem.replace(str(local), uri)
        try:
            return type(exc)(uri if exc.path == str(local) else exc.path, problem)
        except TypeError:
            pass
    return RvcfastError(f"{uri}: {_describe(exc).replace(str(local), uri)}")


def _missing(uri: str, exc: BaseException) -> RvcfastError:
    from ...errors import AudioError

    if isinstance(exc, FileNotFoundError):
        return AudioError(uri, "object does not exist")
    return AudioError(uri, f"cannot be read: {_describe(exc)}")


def _check_folder(uri: str, filesystem: Any) -> None:
    """Refuse an input typed as a folder (``s3://bucket/in/``) that is no object: a prefix
    holding no objects (an object store has no empty folders: it is mistyped, or emptied), or
    one holding objects (a dataset's rows name objects, not prefixes)."""
    from pyarrow.fs import FileType

    from ...errors import AudioError

    fs, path = resolve(uri, filesystem)
    try:
        kind = fs.get_file_info(path).type
    except Exception as exc:  # noqa: BLE001 - credentials, network
        raise AudioError(uri, f"cannot be looked at: {_describe(exc)}") from None
    if kind == FileType.NotFound:
        raise AudioError(uri, "no objects under this prefix (folder): it does not exist or is empty; check its name")
    if kind == FileType.Directory:
        raise AudioError(uri, "a prefix (folder) holding objects, not an object: name its objects, or give the prefix to convert_files")


def prepare(uri: str, params: Any, filesystem: Any) -> Any:
    """:func:`rvcfast.pipeline.prepare_input` of the object ``uri``; errors and warnings name it."""
    from ...pipeline import prepare_input

    if uri.endswith("/"):
        _check_folder(uri, filesystem)
    _check_key(uri)
    try:
        spool = _spooled(uri, filesystem)
        local = spool.__enter__()
    except Exception as exc:  # noqa: BLE001
        raise _missing(uri, exc) from None
    try:
        try:
            prep = prepare_input(local, params=params)
        except Exception as exc:  # noqa: BLE001
            raise _renamed(exc, local, uri) from None
        for item in (prep, *prep.more_channels):
            item.label = uri
            item.warnings = [w.replace(str(local), uri) for w in item.warnings]
        return prep
    finally:
        spool.__exit__(None, None, None)


def _look_at(uri: str, filesystem: Any) -> tuple[bool, str | None]:
    """Whether the object ``uri`` is a finished output (:func:`rvcfast.writing.finished_output`)
    and the input it records; ``(False, None)`` where there is none."""
    from pyarrow.fs import FileType

    from ...writing import finished_output, recorded_source

    fs, path = resolve(uri, filesystem)
    info = fs.get_file_info(path)
    if info.type != FileType.File:
        return False, None
    if info.size:
        recorded = _recorded_at_the_ends(fs, path, int(info.size))
        if recorded is not None:  # rvcfast uploaded it, and an upload is all or nothing: finished
            return True, recorded
    with _spooled(uri, filesystem) as local:  # another program's object: looked at whole, as a local file
        return finished_output(local), recorded_source(local)


def _recorded(uri: str, filesystem: Any) -> str | None:
    """The input the object ``uri`` records, from its two ends alone (``None``: no object, or it
    records none): all that naming and listing need. An object rvcfast did not write (an input
    of an in-place job, another program's file) is not fetched whole to find that it records nothing."""
    from pyarrow.fs import FileType

    if _uri_key_problem(uri) is not None:
        return None  # a key pyarrow.fs would read as another (an input's row names it)
    fs, path = resolve(uri, filesystem)
    info = fs.get_file_info(path)
    if info.type != FileType.File or not info.size:
        return None
    return _recorded_at_the_ends(fs, path, int(info.size))


def _recorded_at_the_ends(fs: Any, path: str, size: int) -> str | None:
    """The input an object records, from two ranged reads of :data:`_END_BYTES` (its first and
    last ones: :func:`rvcfast.writing.recorded_in_bytes`), not a download of the whole object."""
    from ...writing import recorded_in_bytes

    with fs.open_input_file(path) as f:
        head = f.read_at(min(size, _END_BYTES), 0)
        found = recorded_in_bytes(head)
        if found is None and size > _END_BYTES:
            found = recorded_in_bytes(f.read_at(_END_BYTES, size - _END_BYTES))
    return found


def foreign_object(uri: str, filesystem: Any) -> bool:
    """Whether the object ``uri`` exists and records no input (rvcfast did not upload it)."""
    from pyarrow.fs import FileType

    fs, path = resolve(uri, filesystem)
    info = fs.get_file_info(path)
    if info.type != FileType.File:
        return False
    return not info.size or _recorded_at_the_ends(fs, path, int(info.size)) is None


def existing_output(row: dict[str, Any], filesystem: Any) -> tuple[bool, bool]:
    """``(there, another's)``: whether the row's output is a finished object, and whether it
    records another input than the row's."""
    finished, recorded = _look_at(row["output_path"], filesystem)
    return finished, finished and recorded is not None and recorded != source_id(row["path"])


def same_object(a: str, b: str) -> bool:
    """Whether two URIs (or a URI and a path) name one object."""
    return is_uri(a) and is_uri(b) and canonical(a) == canonical(b)


# ------------------------------------------------------------------------------ writing objects


def encode(audio: np.ndarray, rate: int, fmt: str, subtype: str | None, bitrate: int | None, source: str, label: str) -> bytes:
    """The output file in memory, as :func:`rvcfast.writing.write_audio_atomic` writes it to disk,
    recording ``source``'s URI."""
    from ...writing import encode_output

    buf = io.BytesIO()  # seekable: WAV and m4a go back to fill in their sizes and index
    encode_output(buf, audio, rate, format=fmt, subtype=subtype, bitrate=bitrate, recorded=source_id(source), label=label)
    return buf.getvalue()


def _temporary_key(path: str) -> str:
    """A new temporary key beside ``path`` (``bucket/key``), named as the local runner names its
    temporary files: ``.<name>.<host>~<pid>~<random>.part``. Hidden and not audio, it is never
    listed as an input nor taken for an output (their listings take audio suffixes alone)."""
    from ...writing import this_host

    folder, _, name = path.rpartition("/")
    return f"{folder}/.{short_name(name)}.{this_host()}~{os.getpid()}~{secrets.token_hex(4)}.part"


def _upload(fs: Any, path: str, data: bytes) -> None:
    """``data`` as the object ``path``, in one stream; a failed write leaves no object there."""
    stream = fs.open_output_stream(path)
    try:
        stream.write(data)
    except BaseException:
        # pyarrow completes an upload whose stream is dropped unclosed (S3: the parts sent so far
        # become the object): close it here and remove that partial object; a close that fails
        # completed nothing
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - the write's own error is the one to raise
            pass
        else:
            with contextlib.suppress(Exception):
                fs.delete_file(path)
        raise
    stream.close()


def _move(fs: Any, source: str, target: str) -> None:
    """The object ``source`` moved onto ``target`` (S3, GCS: a server-side copy, then a delete)."""
    try:
        fs.move(source, target)
    except NotImplementedError:  # a filesystem that cannot move a file: the same in two steps
        fs.copy_file(source, target)
        fs.delete_file(source)


def put(uri: str, data: bytes, filesystem: Any) -> None:
    """``data`` as the object ``uri``: the key holds what it held or all of ``data``, never part.

    The whole file is in memory before the upload starts. A new key is uploaded at once (a PUT,
    or a multipart upload completed on ``close``, makes it visible complete or not at all; a
    failed write's partial object is removed). An existing key (an earlier run's output, the
    manifest) is not touched until the new object is complete: it is uploaded to a temporary
    key beside it (:func:`_temporary_key`), then moved onto it; on any failure the temporary
    key is removed and the earlier object stays as it was. A move that fails after its copy
    (its delete refused) has written the output: the key is read back and, holding ``data``,
    the write counts as done. A key that cannot be looked at (a credential allowed to write
    only) is uploaded at once, as a new one.
    """
    from pyarrow.fs import FileType

    fs, path = resolve(uri, filesystem)
    try:
        exists = fs.get_file_info(path).type == FileType.File
    except Exception:  # noqa: BLE001 - e.g. a credential that may write but not look (S3: 403): one upload, as before
        exists = False
    if not exists:
        _upload(fs, path, data)
        return
    temporary = _temporary_key(path)
    _upload(fs, temporary, data)
    try:
        _move(fs, temporary, path)
    except BaseException as exc:
        with contextlib.suppress(Exception):  # best effort: a hidden .part object is all it can leave
            fs.delete_file(temporary)
        if isinstance(exc, Exception) and _holds(fs, path, data):
            return  # the move's copy was done, its delete failed: the output is in place
        raise


def _holds(fs: Any, path: str, data: bytes) -> bool:
    """Whether the object ``path`` is ``data``, byte for byte (``False`` where it cannot be read).

    Asked only after a failed move: S3 and GCS move an object by a copy and a delete, and a
    delete that fails after the copy leaves the new output in place (with its temporary key),
    which is a written output, not an error row.
    """
    from pyarrow.fs import FileType

    try:
        info = fs.get_file_info(path)
        if info.type != FileType.File or info.size != len(data):
            return False
        with fs.open_input_stream(path) as stream:
            return bool(stream.read() == data)
    except Exception:  # noqa: BLE001 - unknown: the move's own error is the one to report
        return False


def write_audio(row: dict[str, Any], audio: np.ndarray, rate: int, spec: Any) -> None:
    """The row's output, encoded in memory and uploaded to its key once."""
    data = encode(audio, rate, spec.format, spec.subtype, spec.bitrate, row["path"], row["output_path"])
    put(row["output_path"], data, spec.filesystem)


def write_manifest(rows: list[dict[str, Any]], uri: str, filesystem: Any) -> str:
    """The rows as JSON Lines or Parquet, uploaded as the object ``uri`` in one piece."""
    kind = PurePosixPath(_split(uri)[2]).suffix.lower()
    if kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ._schema import ROW_SCHEMA, VOICE_ROW_SCHEMA

        sink = io.BytesIO()
        schema = VOICE_ROW_SCHEMA if any("voice" in row for row in rows) else ROW_SCHEMA
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        data = sink.getvalue()
    else:
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    put(uri, data, filesystem)
    return uri


def check_dataset(ds: Any, out_dir: Any, filesystem: Any, planned: bool, files: tuple[Any, ...]) -> bool:
    """:func:`check_job` for :func:`~._job.convert_dataset` (``planned``: rows planned and
    checked by ``convert_files``; a Ray Dataset: its output folder), model files that are URIs
    refused naming their argument; whether the job writes to object storage."""
    model, index, encoder, f0_weights, voices = files
    for name, value in (("model", model), ("index", index), ("encoder", encoder), ("f0_weights", f0_weights)):
        check_local_arg(name, value)
    given: Any = voices.items() if hasattr(voices, "items") else enumerate(voices) if _iterable(voices) else []
    for name, value in given:
        for one in value if isinstance(value, (tuple, list)) else [value]:
            check_local_arg(f"voices[{name!r}]", one)
    if planned:
        return is_uri(out_dir)
    return check_job([] if hasattr(ds, "map_batches") else ds, out_dir, None, filesystem)

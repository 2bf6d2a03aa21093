"""The one place in rvcfast that reads pickled or serialized weights.

Model files come from strangers. Nothing here ever runs code stored in a file:

* PyTorch files (``.pth``, ``.pt``, ``.bin``) are read with
  ``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler, which
  admits tensors and plain containers only. The configuration classes that real
  fairseq checkpoints (``hubert_base.pt``) pickle -- fairseq's ``Dictionary``,
  ``argparse.Namespace``, omegaconf containers, numpy scalars -- are mapped to
  inert stand-ins that only store the data they are given; no module of those
  packages is imported and no constructor of theirs runs. Any other global
  (``os.system``, ``builtins.eval``, ``subprocess.*``...) is refused with
  :class:`~rvcfast.errors.UnsafeFileError`.
  When PyTorch refuses a file, its opcodes are listed with :mod:`pickletools`
  (never executed) so the error names the callables the file references.
  Files whose first bytes show another format (audio, an index, JSON, HTML...)
  are refused before any unpickling with a message saying what they look like, and
  a zip whose records would unpack to far more than the file's size (a zip bomb)
  before anything is unpacked.
* ``.safetensors`` files are parsed directly (a JSON header and raw buffers);
  every entry's shape is checked against its byte range before allocation.
* JSON configuration is read with :mod:`json` only (at most 16 MB).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import pickletools
import re
import struct
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError, ParameterError, UnsafeFileError

__all__ = [
    "load_torch_file",
    "load_safetensors",
    "load_json",
    "check_file",
    "as_path",
    "checkpoint_kind",
    "kind_advice",
    "tensor_problems",
    "InertObject",
]


class InertObject:
    """Stand-in for a class pickled inside a checkpoint; it only keeps the data.

    ``args`` holds constructor arguments, ``state`` whatever ``__setstate__``
    received. It has no behaviour, so loading it cannot run code.
    """

    _pickled_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<inert {self._pickled_name}>"


# Globals found in real checkpoints that are plain configuration, never code.
_STUBBED_GLOBALS = (
    "fairseq.data.dictionary.Dictionary",
    "argparse.Namespace",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.EnumNode",
    "typing.Any",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
)


def _make_stub(full_name: str) -> type:
    short = full_name.rsplit(".", 1)[-1]
    return type(f"Inert_{short}", (InertObject,), {"_pickled_name": full_name})


_STUBS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    (_make_stub(name), name) for name in _STUBBED_GLOBALS
]
#: The filter that quiets PyTorch's warning before it refuses a protocol-4 pickle (the refusal
#: is reported as an error instead), as ``warnings.filterwarnings`` stores it.
_PROTOCOL_FILTER = ("ignore", re.compile("Detected pickle protocol", re.I), UserWarning, None, 0)


def _quiet_protocol_warning() -> None:
    """Add :data:`_PROTOCOL_FILTER` unless it is there. Not ``warnings.catch_warnings()`` around
    each load: entering and leaving it resets every module's "already shown" registry, so each
    model load showed the user's warnings again (and it restores a filter list other threads
    may have changed meanwhile). The filter stays: it matches that one message of torch's only."""
    if _PROTOCOL_FILTER not in warnings.filters:
        warnings.filterwarnings("ignore", message=_PROTOCOL_FILTER[1].pattern, category=UserWarning)


#: Serialises :func:`load_torch_file`'s ``torch.load`` (a lock, not data; see there).
_TORCH_LOAD_LOCK = threading.Lock()


def as_path(path: Any, what: str) -> Path:
    """``path`` (text, bytes or an ``os.PathLike``) as a :class:`Path`; a :class:`ParameterError` for anything else."""
    if isinstance(path, (str, bytes, os.PathLike)):
        try:
            return Path(os.fsdecode(path))
        except TypeError:  # an os.PathLike whose __fspath__ returns neither text nor bytes
            pass
    raise ParameterError(f"{what} path must be a file path (str or os.PathLike), got {type(path).__name__}: {path!r}"[:300])


def check_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a :class:`Path` after checking it is a readable, non-empty regular file."""
    p = as_path(path, what)
    if not p.exists():
        raise ModelLoadError(p, f"{what} file does not exist")
    if p.is_dir():
        raise ModelLoadError(p, f"{what} path is a directory, expected a file")
    if not p.is_file():
        raise ModelLoadError(p, f"{what} path is not a regular file (a device, pipe or socket)")
    if not os.access(p, os.R_OK):
        raise ModelLoadError(p, f"{what} file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise ModelLoadError(p, f"{what} file is empty")
    return p


# ------------------------------------------------------------------ explaining a refusal

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_BAD_OPCODE = re.compile(r"Unsupported operand (\d+)")
# Globals that PyTorch's own files use; anything else in a model file is suspicious.
_EXPECTED_PREFIXES = ("torch.",)
_EXPECTED_GLOBALS = frozenset(
    {"collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.bytes",
     "builtins.complex", "builtins.slice", "builtins.range", "_codecs.encode", *_STUBBED_GLOBALS}
)
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_NO_PUSH_OPS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO", "MARK"})
_MAX_SCAN_OPS = 2_000_000


def _pickle_globals(stream: Any) -> list[str]:
    """``module.name`` of every GLOBAL / INST / STACK_GLOBAL in one pickle, read with :mod:`pickletools`.

    Nothing is unpickled: the opcodes are only listed. STACK_GLOBAL operands are
    followed through the memo, which covers what :mod:`pickle` writes.
    """
    names: list[str] = []
    memo: dict[Any, Any] = {}
    pushed: list[Any] = []  # what the last opcodes pushed (None for anything but a string)
    for count, (op, arg, _pos) in enumerate(pickletools.genops(stream)):
        if count > _MAX_SCAN_OPS:
            break
        name = op.name
        if name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                names.append(f"{pushed[-2]}.{pushed[-1]}")
            else:
                names.append("<computed STACK_GLOBAL>")
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else str(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name == "STOP":
            break
        elif name not in _NO_PUSH_OPS:
            pushed.append(None)
        del pushed[:-4]
    return names


def _file_globals(p: Path) -> list[str]:
    """Best effort: the globals a PyTorch file's pickles reference (zip ``data.pkl`` or the legacy stream)."""
    found: list[str] = []
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                for info in zf.infolist():
                    if info.filename.endswith(".pkl") and info.file_size < 256 << 20:
                        with zf.open(info) as f:
                            found += _pickle_globals(f)
        else:
            with open(p, "rb") as f:
                for _ in range(5):  # legacy files: magic number, protocol, sys info, data, storage keys
                    found += _pickle_globals(f)
    except Exception:  # noqa: BLE001 - only used to word an error message
        pass
    return found


_MAGIC = (
    (b"RIFF", "a RIFF file (WAV audio?)"),
    (b"fLaC", "FLAC audio"),
    (b"OggS", "Ogg audio"),
    (b"ID3", "MP3 audio"),
    (b"FORM", "AIFF audio"),
    (b"IwFl", "a faiss IVF index (pass it as the index)"),
    (b"IxF2", "a faiss flat index (pass it as the index)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"<", "an HTML or XML page (a failed download?)"),
    (b"version https://", "a Git LFS pointer, not the model itself: only the pointer was downloaded "
     "(fetch the file with `git lfs pull`, or download it directly)"),
)


def _sniff(p: Path) -> str | None:
    """What a file is when its first bytes show it is certainly not a PyTorch file (zip or pickle), else None."""
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith((b"PK\x03\x04", b"\x80")):  # torch zip or (legacy) pickle
        return None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if p.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and head[2:3] == b"\x12"):
        # ONNX protobuf: field 1 (ir_version, a small varint) then field 2 (producer_name)
        return (
            "an ONNX model (a voice model in ONNX loads under a name ending in .onnx; "
            "the base networks need their PyTorch weights (.pt / .pth), e.g. rmvpe.pt for rmvpe.onnx)"
        )
    if len(head) >= 10 and head[8:10] in (b'{"', b"{'"):
        return "a safetensors file (load it as .safetensors)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON text file"
    return None


_MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".onnx")


def _other_zip(p: Path) -> str | None:
    """For a complete zip archive that is not a PyTorch file (a model shared as ``voice.zip``), what it holds."""
    try:
        if not zipfile.is_zipfile(p):
            return None
        with zipfile.ZipFile(p) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None
    # torch.save writes <archive>/data.pkl (plus version, data/...) under one top-level folder
    if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        return None
    models = [n for n in names if n.lower().endswith(_MODEL_SUFFIXES)]
    indexes = [n for n in names if n.lower().endswith(".index")]
    shown = (models + indexes + [n for n in names if n not in models and n not in indexes])[:8]
    listing = ", ".join(shown) + (f" ... ({len(names)} files)" if len(names) > len(shown) else "")
    if not models:
        return f"a zip archive, not a PyTorch file; it holds {listing or 'nothing'}, none of them a model file"
    advice = "extract it and pass the model file inside" + (" (and its .index as the index)" if indexes else "")
    return f"a zip archive, not a PyTorch file; it holds {listing}: {advice}"


#: A zip-format PyTorch file is refused when its records unpack to more than this many times
#: its own size (plus :data:`_UNPACK_SLACK`): ``torch.save`` stores them uncompressed, so a
#: real file unpacks to about its size, while a small deflated file could unpack to gigabytes
#: of memory (a few megabytes of zeros become a few gigabytes) before any check could run.
_UNPACK_RATIO = 4
_UNPACK_SLACK = 64 << 20


def _unpacks_too_large(p: Path) -> str | None:
    """Why the zip archive ``p`` is refused before loading (its records declare far more data than
    the file holds: a zip bomb), or None."""
    try:
        if not zipfile.is_zipfile(p):
            return None
        size = p.stat().st_size
        with zipfile.ZipFile(p) as zf:
            declared = sum(max(info.file_size, 0) for info in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None  # torch.load reports what is wrong with it
    if declared <= _UNPACK_RATIO * size + _UNPACK_SLACK:
        return None
    return (
        f"its zip records unpack to {declared} bytes from a {size}-byte file; PyTorch stores weights "
        "uncompressed, so this is not a file torch.save wrote (a zip bomb?)"
    )


def _suspicious(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n.startswith(_EXPECTED_PREFIXES) or n in _EXPECTED_GLOBALS or n in out:
            continue
        out.append(n)
    return out


def _torch_detail(msg: str) -> str:
    """The informative part of a PyTorch unpickling error (without its advice to disable the safe loader)."""
    msg = _ANSI.sub("", msg)
    m = _BAD_OPCODE.search(msg)
    if m:
        return f"pickle opcode {m.group(1)} is not supported by the restricted unpickler"
    keep = []
    for line in msg.splitlines():
        line = line.strip().removeprefix("(2)").strip()
        low = line.lower()
        if not line or "weights_only" in low or "documentation" in low or "trust" in low or "weights only load failed" in low:
            continue
        if "safe_globals" in low or "add_safe_globals" in low:
            line = line.split(". Please use")[0]
        keep.append(line.removeprefix("WeightsUnpickler error: "))
    return " ".join(keep)[:300] or "the restricted unpickler refused the file"


def _refusal(p: Path, what: str, exc: BaseException) -> ModelLoadError:
    msg = _ANSI.sub("", str(exc))
    scanned = _suspicious(_file_globals(p))
    # a global PyTorch itself refused is suspicious even under torch.*; "eval" is "builtins.eval" in the scan
    named = [m.group(1) for m in _REFUSED_GLOBAL.finditer(msg)]
    named = [n for n in named if n not in scanned and not any(s.endswith("." + n) for s in scanned)]
    suspicious = list(dict.fromkeys(named + scanned))
    if suspicious:
        shown = ", ".join(suspicious[:8]) + (" ..." if len(suspicious) > 8 else "")
        return UnsafeFileError(
            p,
            f"refused to load {what}: the file references {shown}, which is not plain data; unpickling it "
            "could run code. rvcfast reads only tensors and plain containers from model files; use a "
            "model from a source you trust, or a .safetensors file",
        )
    return ModelLoadError(p, f"{what} file is corrupt or not a PyTorch file rvcfast can read ({_torch_detail(msg)})")


def _short(text: str, limit: int = 200) -> str:
    """``text`` up to ``limit`` characters: its first sentence when that is short enough, else cut
    at a word with "..." (never in the middle of a word)."""
    if len(text) <= limit:
        return text
    first = text.split(". ")[0]
    if len(first) < limit:
        return first + "."
    return text[:limit].rsplit(" ", 1)[0] + "..."


def load_torch_file(path: str | os.PathLike[str], what: str = "model") -> Any:
    """Load a PyTorch-serialized file as plain data, without running any code from it.

    Raises :class:`UnsafeFileError` when the file references a global that is
    not plain data, and :class:`ModelLoadError` when it is truncated, corrupt or
    not a PyTorch file at all. Tensors are returned on the CPU in their stored dtype.
    """
    p = check_file(path, what)
    other = _sniff(p)
    if other is not None:
        raise ModelLoadError(p, f"{what} file is not a PyTorch file: it looks like {other}")
    archive = _other_zip(p)
    if archive is not None:
        raise ModelLoadError(p, f"{what} file is {archive}")
    bomb = _unpacks_too_large(p)
    if bomb is not None:
        raise ModelLoadError(p, f"refused to load {what}: {bomb}")
    try:
        # torch's safe-globals list is process-wide and this context manager restores it on
        # exit: two threads loading at once (models loading side by side, a server) would strip
        # each other's stubs mid-load, hence one load at a time
        _quiet_protocol_warning()
        with _TORCH_LOAD_LOCK, torch.serialization.safe_globals(_STUBS):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(p, what, exc) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, struct.error, MemoryError, OverflowError, RecursionError, UnicodeDecodeError) as exc:
        detail = _short(_ANSI.sub("", str(exc)).splitlines()[0]) if str(exc).strip() else ""
        if "central directory" in detail:
            detail = "the zip archive is incomplete (its central directory is missing): truncated or partly downloaded?"
        # the restricted unpickler can also fail this way on a hostile file: say so when it references code
        suspicious = _suspicious(_file_globals(p))
        if suspicious:
            raise _refusal(p, what, exc) from None
        raise ModelLoadError(
            p, f"{what} file is truncated, corrupt or not a PyTorch file ({type(exc).__name__}: {detail})"
        ) from None


# ------------------------------------------------------------------ what a loaded file holds

_KINDS: dict[str, tuple[str, str]] = {
    # kind: (what it is, where it belongs)
    "voice": ("an RVC voice model", "pass it as the voice model"),
    "generator-checkpoint": (
        "an RVC generator training checkpoint (G_*.pth), i.e. a voice",
        "pass it as the voice model (or, better, the small voice model extracted from it)",
    ),
    "generator-state": (
        "a bare RVC generator state dict without the voice model's config",
        "pass the voice model .pth (with 'weight' and 'config') instead",
    ),
    "discriminator-checkpoint": (
        "an RVC discriminator training checkpoint (D_*.pth)",
        "it serves only in training and cannot convert a voice: pass the voice model extracted after training "
        "(the small .pth in the weights folder) or the matching G_*.pth instead",
    ),
    "encoder": (
        "a HuBERT / ContentVec content encoder",
        "pass it as the content encoder (encoder= / --encoder)",
    ),
    "rmvpe": ("RMVPE pitch-extractor weights", "pass them as the F0 weights (f0_weights= / --f0-weights)"),
}


def _state_kind(state: Any) -> str | None:
    """``"generator"``, ``"discriminator"``, ``"rmvpe"`` or ``"encoder"`` from a state dict's key names."""
    if not isinstance(state, dict) or not state:
        return None
    keys = [k for k in state if isinstance(k, str)]

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("enc_p.") and (has("dec.") or has("flow.") or has("emb_g.")):
        return "generator"
    if has("discriminators."):
        return "discriminator"
    if has("unet.encoder.") and has("cnn."):
        return "rmvpe"
    if has("encoder.layers.") or has("feature_extractor.conv_layers.") or has("hubert.encoder."):
        return "encoder"
    return None


def checkpoint_kind(obj: Any) -> str | None:
    """What an unpickled model file holds, recognised from its keys; ``None`` when unknown.

    One of ``"voice"`` (``weight`` + ``config``), ``"generator-checkpoint"`` /
    ``"discriminator-checkpoint"`` (RVC / Applio ``G_*.pth`` / ``D_*.pth``),
    ``"generator-state"`` (a bare generator state dict), ``"encoder"`` (fairseq or
    transformers HuBERT / ContentVec) or ``"rmvpe"``.
    """
    if not isinstance(obj, dict):
        return None
    if "weight" in obj and "config" in obj and isinstance(obj["weight"], dict):
        return "voice"
    model = obj.get("model")
    nested = isinstance(model, dict)
    kind = _state_kind(model if nested else obj)
    if kind == "generator":
        return "generator-checkpoint" if nested else "generator-state"
    if kind == "discriminator":
        return "discriminator-checkpoint"
    return kind


def kind_advice(kind: str, expected: str) -> str:
    """``"this is <what kind is>, not <expected>; <where it belongs>"`` for :func:`checkpoint_kind`'s answers."""
    what, use = _KINDS[kind]
    return f"this is {what}, not {expected}; {use}"


def tensor_problems(state: Mapping[str, torch.Tensor]) -> str | None:
    """Why these weights cannot be used as they are (sparse or other non-dense tensors, NaN or Inf), or None.

    The finiteness test is one min/max reduction per tensor (NaN propagates through
    both), without a mask the size of the tensor.
    """
    not_dense = [k for k, v in state.items() if v.layout != torch.strided]
    if not_dense:
        return f"weights must be dense tensors, but these are sparse: {_key_list(not_dense)}"
    bad = []
    for k, v in state.items():
        if v.is_floating_point() and v.numel():
            lo, hi = torch.aminmax(v.detach())
            if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
                bad.append(k)
    if bad:
        return f"weights contain NaN or Inf values (a broken training run?) in {_key_list(bad)}"
    return None


def _key_list(keys: list[str], limit: int = 10) -> str:
    return ", ".join(keys[:limit]) + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def load_safetensors(path: str | os.PathLike[str], what: str = "model") -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file (header JSON + raw little-endian buffers) into CPU tensors.

    Every entry is checked against the file before anything is allocated: a shape
    that does not match its byte range (an absurd shape included) raises
    :class:`ModelLoadError` naming the file and the entry.
    """
    p = check_file(path, what)
    # one buffer for the whole file; the tensors are views into it, so the weights are held once
    data = bytearray(p.stat().st_size)
    with open(p, "rb") as f:
        got = f.readinto(data)
    del data[got:]  # in place: the file shrank while being read
    if len(data) < 8:
        raise ModelLoadError(p, f"{what} safetensors file is truncated")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ModelLoadError(p, f"{what} safetensors header length {header_len} exceeds the file size")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(p, f"{what} safetensors header is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(p, f"{what} safetensors header is not a JSON object")
    base = 8 + header_len
    body_len = len(data) - base
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            raw_shape = info["shape"]
            if not isinstance(raw_shape, list) or len(raw_shape) > 16:
                raise TypeError
            shape = [int(s) for s in raw_shape]
            if any(isinstance(s, bool) or not isinstance(s, int) for s in raw_shape) or any(s < 0 for s in shape):
                raise ValueError
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(p, f"{what} safetensors entry {name!r} is malformed or has an unsupported dtype") from None
        count = math.prod(shape)  # Python integers: no overflow for absurd shapes
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not (0 <= start <= end <= body_len) or end - start != count * itemsize:
            raise ModelLoadError(
                p, f"{what} safetensors entry {name!r} (shape {shape}) does not match its byte range (truncated?)"
            )
        if not count:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        t = torch.frombuffer(data, dtype=dtype, count=count, offset=base + start)  # a bytearray: writable, no warning
        if (base + start) % itemsize:
            t = t.clone()  # an unaligned entry (hand-made file): its own aligned copy
        out[name] = t.reshape(shape)
    return out


#: Larger JSON files are refused: a model configuration is a few kilobytes.
MAX_JSON_BYTES = 16 << 20


def load_json(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """Read a JSON object from ``path`` (at most 16 MB; a UTF-8 BOM is accepted); errors name the file."""
    p = check_file(path, what)
    size = p.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ModelLoadError(p, f"{what} is {size} bytes; a configuration file is expected to be under {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(p.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(p, f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelLoadError(p, f"{what} is not a usable JSON configuration (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ModelLoadError(p, f"{what} must be a JSON object, got a JSON {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")

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
* ``.safetensors`` files are parsed directly (a JSON header and raw buffers).
* JSON configuration is read with :mod:`json` only.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModelLoadError, UnsafeFileError

__all__ = ["load_torch_file", "load_safetensors", "load_json", "check_file", "InertObject"]


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


_STUBS = [(_make_stub(name), name) for name in _STUBBED_GLOBALS]


def check_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a :class:`Path` after checking it is a readable regular file."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(p, f"{what} file does not exist")
    if p.is_dir():
        raise ModelLoadError(p, f"{what} path is a directory, expected a file")
    if not os.access(p, os.R_OK):
        raise ModelLoadError(p, f"{what} file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise ModelLoadError(p, f"{what} file is empty")
    return p


def load_torch_file(path: str | os.PathLike[str], what: str = "model") -> Any:
    """Load a PyTorch-serialized file as plain data, without running any code from it.

    Raises :class:`UnsafeFileError` when the file references a global that is
    not plain data, and :class:`ModelLoadError` when it is truncated, corrupt or
    not a PyTorch file at all. Tensors are returned on the CPU in their stored dtype.
    """
    p = check_file(path, what)
    try:
        with torch.serialization.safe_globals(_STUBS):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "global" in msg.lower() or "reduce" in msg.lower() or "new object" in msg.lower():
            first = msg.split("\n")[0]
            raise UnsafeFileError(
                p,
                f"refused to load {what}: the file asks to build a Python object that is not "
                f"plain data, so loading it could run code ({first[:300]})",
            ) from None
        raise ModelLoadError(p, f"{what} file is corrupt: {msg[:300]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, struct.error, MemoryError, OverflowError) as exc:
        raise ModelLoadError(
            p, f"{what} file is truncated, corrupt or not a PyTorch file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


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
    """Read a ``.safetensors`` file (header JSON + raw little-endian buffers) into CPU tensors."""
    p = check_file(path, what)
    data = p.read_bytes()
    if len(data) < 8:
        raise ModelLoadError(p, f"{what} safetensors file is truncated")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ModelLoadError(p, f"{what} safetensors header length {header_len} exceeds the file size")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(p, f"{what} safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(p, f"{what} safetensors header is not a JSON object")
    body = memoryview(data)[8 + header_len :]
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(p, f"{what} safetensors entry {name!r} is malformed or has an unsupported dtype") from None
        count = int(np.prod(shape)) if shape else 1
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not (0 <= start <= end <= len(body)) or end - start != count * itemsize:
            raise ModelLoadError(p, f"{what} safetensors entry {name!r} points outside the file (truncated?)")
        buf = bytearray(body[start:end])
        t = torch.frombuffer(buf, dtype=dtype) if count else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(shape)
    return out


def load_json(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """Read a JSON object from ``path``; errors name the file."""
    p = check_file(path, what)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(p, f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelLoadError(p, f"{what} must be a JSON object")
    return value

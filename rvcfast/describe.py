"""Describe model files: the one place that turns a voice model or an index into plain facts.

``rvcfast info``, the server's ``/v1/voices`` and anything else that lists models call
these, so every front end reports the same names and values. The results are
JSON-ready dicts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["describe_model", "describe_index", "model_metadata"]

#: Checkpoint keys that hold weights or training state, not metadata.
_NOT_METADATA = ("weight", "model", "config", "optimizer", "optimizer_state")


#: Nesting depth below which metadata containers are summarised instead of walked.
_MAX_DEPTH = 32


def _jsonable(value: Any, parents: tuple[int, ...] = ()) -> Any:
    """``value`` as strict JSON data: NaN/inf become strings, anything else unknown its ``repr``.

    A checkpoint is untrusted data: a container that contains itself, or is nested
    too deeply, is summarised rather than walked.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf': json.dumps would write NaN/Infinity, which is not JSON
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, dict)):
        if id(value) in parents:
            return f"{type(value).__name__} (contains itself)"
        if len(parents) >= _MAX_DEPTH:
            return f"{type(value).__name__} of {len(value)} (nested too deeply)"
        inner = (*parents, id(value))
        if isinstance(value, dict):
            return {str(k): _jsonable(v, inner) for k, v in value.items()}
        return [_jsonable(v, inner) for v in value]
    try:
        return repr(value)
    except RecursionError:  # an object whose repr walks a deeply nested state
        return f"{type(value).__name__} (nested too deeply)"


def model_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The non-weight entries of a voice checkpoint (``info``, ``epoch``, ``author``, ``vocoder``...), JSON-ready."""
    import torch

    from .safe_load import load_torch_file

    raw = load_torch_file(path, what="voice model")
    metadata: dict[str, Any] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key in _NOT_METADATA:
                continue
            if isinstance(value, torch.Tensor):
                value = f"tensor{list(value.shape)}"
            elif isinstance(value, (dict, list, tuple)):
                # measured on the depth-limited form: repr() of a deeply nested container
                # (untrusted data) raises RecursionError
                walked = _jsonable(value)
                value = f"{type(value).__name__} of {len(value)}" if len(json.dumps(walked)) > 200 else walked
            metadata[str(key)] = _jsonable(value)
    return metadata


def describe_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts about a voice model: version, rate, F0, speakers, feature size, vocoder, embedder, config, metadata.

    The model is loaded (on the CPU) to make sure it is one rvcfast runs; a file that is
    not raises :class:`~rvcfast.errors.ModelLoadError` saying why. An ``.onnx`` file is
    described from its graph and metadata (:func:`rvcfast.models.onnx_vocoder.describe_onnx`).
    """
    from .models.onnx_vocoder import describe_onnx, is_onnx_path
    from .models.synthesizer import Synthesizer, load_vocoder

    if is_onnx_path(path):
        return describe_onnx(path)

    voc = load_vocoder(path, device="cpu")
    assert isinstance(voc, Synthesizer)  # not an .onnx name (is_onnx_path above): load_vocoder gives a Synthesizer
    metadata = model_metadata(path)
    return {
        "path": os.fspath(path),
        "file_bytes": Path(path).stat().st_size,
        "version": voc.version,
        "sample_rate": voc.sample_rate,
        "f0": voc.has_f0,
        "speakers": voc.num_speakers,
        "feature_dim": voc.feature_dim,
        "hop_length": voc.hop_length,
        "vocoder": getattr(voc, "vocoder", None) or metadata.get("vocoder") or "HiFi-GAN",
        "embedder": getattr(voc, "embedder_model", None) or metadata.get("embedder_model"),
        "parameters": sum(int(p.numel()) for p in voc.parameters()),
        "config": _jsonable(list(voc.config)),
        "metadata": metadata,
    }


def describe_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts about a faiss index: kind, vectors, dimension, nlist, nprobe."""
    from .index import load_index

    idx = load_index(path)
    return {
        "path": os.fspath(path),
        "file_bytes": Path(path).stat().st_size,
        "kind": idx.kind,
        "vectors": idx.ntotal,
        "dim": idx.dim,
        "nlist": idx.nlist,
        "nprobe": idx.nprobe,
    }

"""Export an RVC voice model to ONNX: :func:`export_onnx` (and ``rvcfast export-onnx``).

The graph (:mod:`rvcfast.models.synthesizer.onnx_graph`) has RVC's own interface by
default, so RVC's ``onnx_inference.py`` and other RVC ONNX runners can use the file:

============= ================== ======== ============================================
input         shape              dtype    meaning
============= ================== ======== ============================================
phone         [1, T, 256 | 768]  float32  content features (v1: 256, v2: 768)
phone_lengths [1]                int64    valid frames (``T`` for a whole input)
pitch         [1, T]             int64    coarse pitch 1..255 (pitch-guided models only)
pitchf        [1, T]             float32  f0 in Hz, 0 = unvoiced (pitch-guided models only)
ds            [1]                int64    speaker id
rnd           [1, inter, T]      float32  prior noise: ``z_p = m_p + exp(logs_p) * rnd``
============= ================== ======== ============================================

and one output ``audio`` ``[1, 1, T * hop]`` float32 at the model's rate. ``T`` is a dynamic
axis: one file runs at any length. ``interface="w-okada"`` names the inputs as w-okada's
voice-changer feeds them (``feats``, ``p_len``, ``pitch``, ``pitchf``, ``sid``) and draws
the prior noise in the graph (RVC's ``* 0.66666``) instead of taking ``rnd``.

``noise=True`` (default) draws the NSF source noise in the graph, as RVC's export does
(``RandomNormalLike``); ``noise=False`` leaves every random draw out of the graph, whose
output then equals ``Synthesizer.synthesize(..., noise=False)`` for ``rnd = 0``.

The file carries its facts as ONNX metadata (sample rate, version, f0, feature
dimension, hop, vocoder, embedder, speakers, interface, noise) and w-okada's ``metadata``
JSON entry. ``verify=True`` runs the exported graph in onnxruntime at a length other
than the traced one and compares it with torch (:func:`verify_graph`).
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .atomic import atomic_write
from .errors import BackendUnavailableError, ModelLoadError, ParameterError, RvcfastError
from .models.onnx_vocoder import zero_random_draws
from .models.synthesizer import Synthesizer, load_vocoder
from .models.synthesizer.hifigan import HiFiGAN
from .models.synthesizer.onnx_graph import INTERFACES, OnnxGraph, graph_input_names
from .models.synthesizer.refinegan import RefineGAN

__all__ = [
    "export_onnx",
    "verify_graph",
    "example_inputs",
    "model_metadata",
    "ExportReport",
    "Verification",
    "OnnxExportError",
    "DEFAULT_OPSET",
]

#: Default ONNX opset: 17 (LayerNormalization as one op), what w-okada's exporter writes and
#: onnxruntime 1.12+ / DirectML run. The TorchScript exporter writes opsets 13-20.
DEFAULT_OPSET = 17
_OPSETS = range(13, 21)
#: Frames of the traced example and of the verification input (deliberately different).
TRACE_FRAMES = 32
VERIFY_FRAMES = 157
#: Verification bounds, see :func:`verify_graph`.
MAX_ABS_ERROR = 1e-3
MIN_SNR_DB = 80.0

_INSTALL_HINT = 'ONNX export needs `pip install "rvcfast[onnx]"` (onnx and onnxruntime)'
#: torch.onnx.export keeps its state in process globals (``GLOBALS.in_onnx_export``, the opset):
#: two exports at once in one process fail ("GLOBALS.in_onnx_export must be False") or mix their
#: settings, so the traces run one at a time (verification and writing still run in parallel).
_EXPORT_LOCK = threading.Lock()
#: Output names refused: an ONNX file there would replace a PyTorch model or a voice's index
#: (a loaded model does not know its own files, so only the name can tell).
_REFUSED_SUFFIXES = {".pth": "a PyTorch model", ".pt": "a PyTorch model", ".ckpt": "a PyTorch model", ".index": "a faiss index"}
_RANDOM_OPS = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike")


class OnnxExportError(RvcfastError):
    """The export failed, or the exported graph does not compute what torch computes."""


@dataclass(frozen=True)
class Verification:
    """onnxruntime against torch on one input of ``frames`` frames (random draws off)."""

    frames: int
    max_abs_error: float
    snr_db: float  # error against the reference's variation (its mean removed)
    ort_seconds: float
    torch_seconds: float


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote. ``noise``: the graph draws random numbers itself (as the
    ``noise`` metadata says; ``False`` for ``noise=False``, and also for a model without pitch
    guidance exported with RVC's interface, where nothing is drawn in the graph)."""

    path: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    opset: int
    interface: str
    noise: bool
    metadata: dict[str, str] = field(repr=False)
    bytes: int
    export_seconds: float
    verification: Verification | None


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"{_INSTALL_HINT}; importing {module} failed: {exc}") from None


def _private_copy(model: Synthesizer) -> Synthesizer:
    """A float32 CPU copy of ``model`` with weights of its own (the caller's model is not touched)."""
    with torch.device("meta"):
        copy = Synthesizer(model.config, version=model.version, has_f0=model.has_f0, vocoder=model.vocoder)
    if isinstance(copy.dec, HiFiGAN):
        copy.dec.fused_cpu = False  # no oneDNN prepacking: the export traces the plain path
    state = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()}
    copy.load_state_dict(state, strict=True, assign=True)
    copy.requires_grad_(False).eval()
    copy.embedder_model = model.embedder_model
    return copy


def check_not_onnx(source: Path) -> None:
    """A ModelLoadError when the model to export is an ``.onnx`` file already."""
    if source.suffix.lower() == ".onnx":
        raise ModelLoadError(source, "is an ONNX file already; export-onnx takes the voice model .pth (an .onnx voice runs as it is)")


def _resolve_model(model: Any, path: Path) -> Synthesizer:
    if isinstance(model, Synthesizer):
        dtype = next(model.parameters()).dtype
        if dtype != torch.float32:  # its float32 copy would hold weights rounded to that dtype, and check "exact"
            raise ParameterError(
                f"this voice model was loaded in {str(dtype).replace('torch.', '')}: its weights are rounded to it; "
                "export the .pth (export_onnx(path, ...)) or a model loaded in float32"
            )
        return _private_copy(model)
    if isinstance(model, (str, os.PathLike)):
        source = Path(model)
        check_not_onnx(source)
        if source.exists() and path.exists() and os.path.samefile(source, path):
            raise ParameterError(f"{path}: the ONNX output would overwrite the voice model it is exported from")
        loaded = load_vocoder(source, "cpu", torch.float32)
        if not isinstance(loaded, Synthesizer):  # a hidden file named ".onnx" (no suffix for Path) loads as ONNX
            raise ModelLoadError(source, "is an ONNX file already; export-onnx takes the voice model .pth (an .onnx voice runs as it is)")
        return loaded
    raise ParameterError(f"model must be a voice model path or a loaded Synthesizer, got {type(model).__name__}")


def example_inputs(model: Synthesizer, interface: str, frames: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible graph inputs of ``frames`` frames (random features, a pitch contour with an
    unvoiced run, the last speaker, ``rnd = 0``), keyed by input name."""
    gen = torch.Generator().manual_seed(seed)
    phone = torch.randn(1, frames, model.feature_dim, generator=gen)
    pitchf = 90 + 150 * torch.rand(1, frames, generator=gen)
    pitchf[:, frames // 4 : frames // 4 + max(1, frames // 8)] = 0
    values = [phone, torch.tensor([frames]), torch.randint(1, 256, (1, frames), generator=gen), pitchf]
    values += [torch.tensor([model.num_speakers - 1]), torch.zeros(1, model.arch.inter_channels, frames)]
    wanted = graph_input_names(interface, model.has_f0)
    return {n: v.numpy() for n, v in zip(graph_input_names(interface, True), values) if n in wanted}


def _dynamic_axes(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    axes = {n: {1: "frames"} for n in names if n in ("phone", "feats", "pitch", "pitchf")}
    if "rnd" in names:
        axes["rnd"] = {2: "frames"}
    axes["audio"] = {2: "samples"}
    return axes


def _trace(graph: OnnxGraph, inputs: dict[str, np.ndarray], opset: int) -> bytes:
    """``torch.onnx.export`` (TorchScript exporter) of ``graph`` to bytes."""
    names = tuple(inputs)
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    # torch >= 2.5 has two exporters; the TorchScript one (the only one before) needs no onnxscript
    legacy: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buf = io.BytesIO()
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
        # the exporter warns that it is the legacy one, and the tracer about constants it
        # records; verification at another length is what shows the graph is length-free
        warnings.simplefilter("ignore")
        dec = graph.model.dec
        if isinstance(dec, RefineGAN):  # its resampling kernels are cached on first use: build them
            for old, new in dec.resample_sizes:  # now, so that they enter the graph as constants
                dec._resample(torch.zeros(1, 1, old), old, new)
        torch.onnx.export(
            graph,
            args,
            buf,  # type: ignore[arg-type]  # torch's hint omits file objects, which the TorchScript exporter writes to
            input_names=list(names),
            output_names=["audio"],
            dynamic_axes=_dynamic_axes(names),
            opset_version=opset,
            **legacy,
        )
    return buf.getvalue()


def _wokada_embedder(name: str | None) -> str:
    """w-okada's embedder name: RVC's hubert_base.pt is ContentVec, which it calls ``hubert_base``."""
    if name is None or name.lower() in ("contentvec", "hubert_base", "hubert-base", "hubert"):
        return "hubert_base"
    return name


def model_metadata(model: Synthesizer, *, interface: str, noise: bool) -> dict[str, str]:
    """The ONNX ``metadata_props`` :func:`export_onnx` writes for ``model`` (all strings)."""
    v1 = model.version == "v1"
    wokada = {
        "application": "VC_CLIENT",
        "version": "2.1",
        "modelType": "onnxRVC" if model.has_f0 else "onnxRVCNono",
        "samplingRate": model.sample_rate,
        "f0": model.has_f0,
        "embChannels": model.feature_dim,
        "embedder": _wokada_embedder(model.embedder_model),
        "embOutputLayer": 9 if v1 else 12,
        "useFinalProj": v1,
    }
    return {
        "sample_rate": str(model.sample_rate),
        "version": model.version,
        "f0": "1" if model.has_f0 else "0",
        "feature_dim": str(model.feature_dim),
        "hop_length": str(model.hop_length),
        "inter_channels": str(model.arch.inter_channels),
        "speakers": str(model.num_speakers),
        "vocoder": model.vocoder,
        "embedder": model.embedder_model or "",
        "interface": interface,
        "noise": "in-graph" if noise else "none",
        "exporter": f"rvcfast {__version__}",
        "metadata": json.dumps(wokada),
    }


def _torch_reference(model: Synthesizer, inputs: dict[str, np.ndarray]) -> np.ndarray:
    values = [torch.from_numpy(v) for v in inputs.values()]
    phone, lengths = values[0], values[1]
    pitch, pitchf = (values[2], values[3]) if model.has_f0 else (None, None)
    sid = int(values[4 if model.has_f0 else 2][0])
    return model.synthesize(phone, lengths, pitch, pitchf, sid, noise=False)[0].numpy()


def verify_graph(proto_or_bytes: Any, model: Synthesizer, interface: str, *, frames: int = VERIFY_FRAMES) -> Verification:
    """Run the exported graph in onnxruntime on :func:`example_inputs` of ``frames`` frames,
    with its random draws set to 0 (and ``rnd = 0``), and compare it with
    ``model.synthesize(..., noise=False)``. onnxruntime uses as many threads as torch
    (``torch.get_num_threads()``).

    Raises :class:`OnnxExportError` unless the largest absolute difference is at most
    :data:`MAX_ABS_ERROR` (1e-3, -60 dB of full scale) and the error is at least
    :data:`MIN_SNR_DB` (80 dB) below the reference's variation (its mean removed). Float32
    rounding is all that separates the two (other kernels, other summation orders through
    ~100 layers): measured 92-122 dB on full-size models of every vocoder and rate, at most
    2e-5 of full scale, and 125 dB on tiny test models. Faults sit far lower: leaving out
    the relative-position keys of the attention gives 63 dB even on a tiny random model
    (whose output hardly depends on its text encoder), a frozen length or a wrong phase
    changes the waveform by percents.
    """
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    proto = onnx.load_from_string(proto_or_bytes) if isinstance(proto_or_bytes, bytes) else proto_or_bytes
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        zero_random_draws(proto).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    inputs = example_inputs(model, interface, frames, seed=frames)
    start = time.perf_counter()
    got = session.run(["audio"], inputs)[0]
    ort_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ref = _torch_reference(model, inputs)
    torch_seconds = time.perf_counter() - start
    if got.shape != (1, 1, ref.shape[-1]):
        raise OnnxExportError(f"the ONNX graph returned audio of shape {list(got.shape)} for {frames} frames, expected [1, 1, {ref.shape[-1]}]")
    err = got[0, 0].astype(np.float64) - ref
    max_err = float(np.abs(err).max())
    signal = float(np.mean((ref - ref.mean()) ** 2))
    noise = float(np.mean(err**2))
    snr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    result = Verification(frames, max_err, snr, ort_seconds, torch_seconds)
    if not (max_err <= MAX_ABS_ERROR and snr >= MIN_SNR_DB):
        raise OnnxExportError(
            f"the ONNX graph does not match torch at {frames} frames: max abs error {max_err:.3g} "
            f"(allowed {MAX_ABS_ERROR:g}), SNR {snr:.1f} dB (needed {MIN_SNR_DB:g} dB)"
        )
    return result


def _check_target(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; a ParameterError when it names a folder (an existing one, or a name
    ending in a separator, which ``Path`` would silently drop) or a PyTorch weights file."""
    text = os.fspath(path)
    target = Path(text)
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if target.is_dir() or (isinstance(text, str) and text.endswith(seps)):
        raise ParameterError(f"{text}: is a folder; name the .onnx file to write")
    if target.suffix.lower() in _REFUSED_SUFFIXES:
        raise ParameterError(
            f"{target}: the ONNX output would overwrite {_REFUSED_SUFFIXES[target.suffix.lower()]} file ({target.suffix}); "
            "name the .onnx file to write"
        )
    return target


def export_onnx(
    model: str | os.PathLike[str] | Synthesizer,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    noise: bool = True,
    verify: bool = True,
    interface: str = "rvc",
) -> ExportReport:
    """Export a voice model to an ONNX file at ``path`` (written atomically).

    Args:
        model: a voice model ``.pth`` (loaded with :func:`rvcfast.load_vocoder`) or a loaded
            :class:`~rvcfast.models.synthesizer.Synthesizer`; the latter is copied (float32,
            CPU) and is not changed.
        path: the ``.onnx`` file to write (replaced if it exists); it may not be the model
            file itself, a folder, or a name ending in ``.pth`` / ``.pt`` / ``.ckpt`` / ``.index``.
        opset: ONNX opset, 13-20 (default :data:`DEFAULT_OPSET`).
        noise: draw the NSF source noise (and RefineGAN's AdaIN noise, Applio's overtone
            phases; with ``interface="w-okada"`` also the prior noise) in the graph, as RVC's
            export does; ``False`` gives a deterministic graph.
        verify: run the graph in onnxruntime and compare it with torch (:func:`verify_graph`).
        interface: ``"rvc"`` (RVC's input names, prior noise as the input ``rnd``) or
            ``"w-okada"`` (``feats``, ``p_len``, ``pitch``, ``pitchf``, ``sid``).

    Returns an :class:`ExportReport`.

    Raises:
        BackendUnavailableError: ``onnx`` (or, to verify, ``onnxruntime``) is not installed.
        ModelLoadError: the voice model cannot be loaded (the message names the file).
        ParameterError: a bad argument, or ``path`` is the model file, a folder or a
            PyTorch weights name.
        OnnxExportError: the export failed or the graph disagrees with torch.
    """
    if interface not in INTERFACES:
        raise ParameterError(f"interface must be one of {', '.join(INTERFACES)}, got {interface!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in _OPSETS:
        raise ParameterError(f"opset must be an int from {_OPSETS.start} to {_OPSETS.stop - 1}, got {opset!r}")
    target = _check_target(path)
    from .writing import check_output_folder

    check_output_folder(target.parent, f"{target}: the output")  # a file in the way: before the export, not after
    onnx = _require("onnx")
    if verify:
        _require("onnxruntime")
    synth = _resolve_model(model, target)
    start = time.perf_counter()
    graph = OnnxGraph(synth, interface=interface, noise=noise).eval()
    try:
        raw = _trace(graph, example_inputs(synth, interface, TRACE_FRAMES), opset)
    except Exception as exc:  # the exporter's own errors: unsupported op, opset
        raise OnnxExportError(f"{target}: torch.onnx.export failed for this {synth.vocoder} model: {exc}") from exc
    proto = onnx.load_from_string(raw)
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim  # shape inference leaves the batch symbolic
    out_dims[0].dim_value, out_dims[1].dim_value, out_dims[2].dim_param = 1, 1, "samples"
    # what the graph does: a model without pitch guidance has no NSF noise to draw, and with
    # RVC's interface its prior noise is the input rnd, so noise=True may leave no draw in it
    drawn = any(n.op_type in _RANDOM_OPS for n in proto.graph.node)
    meta = model_metadata(synth, interface=interface, noise=drawn)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"RVC voice model ({synth.version}, {synth.sample_rate} Hz, {synth.vocoder}, "
        f"{'f0' if synth.has_f0 else 'no f0'}) exported by rvcfast {__version__}; "
        f"inputs {', '.join(graph_input_names(interface, synth.has_f0))}; output audio [1, 1, frames * {synth.hop_length}]"
    )
    export_seconds = time.perf_counter() - start
    check = verify_graph(proto, synth, interface) if verify else None
    data = proto.SerializeToString()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise OnnxExportError(f"{target}: cannot write the ONNX file: {exc.strerror or exc}") from None
    return ExportReport(
        path=target,
        inputs=graph_input_names(interface, synth.has_f0),
        outputs=("audio",),
        opset=opset,
        interface=interface,
        noise=drawn,
        metadata=meta,
        bytes=len(data),
        export_seconds=export_seconds,
        verification=check,
    )

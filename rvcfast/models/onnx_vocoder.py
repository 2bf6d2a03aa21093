"""Exported voice models (``.onnx``) run by onnxruntime as rvcfast's vocoder: :class:`OnnxVocoder`.

``load_vocoder("voice.onnx")``, ``Converter.from_pretrained("voice.onnx")`` and ``rvcfast
convert voice.onnx`` load one (the content encoder and F0 stay in torch). Graphs with RVC's
interface (``phone``, ``phone_lengths``, [``pitch``, ``pitchf``,] ``ds``, ``rnd``) and w-okada's
(``feats``, ``p_len``, [``pitch``, ``pitchf``,] ``sid``) run; the facts come from the file's
metadata and its graph, and must agree. The graph takes one item at a time; ``rnd`` is drawn
from the item's torch generator; draws inside the graph cannot be seeded, and ``noise=False``
runs a copy of the graph whose draws are 0. Float32 only. See ``docs/onnx.md``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailableError, ModelLoadError, ParameterError, RvcfastError, user_stacklevel

__all__ = ["OnnxVocoder", "OnnxModelInfo", "inspect_onnx", "describe_onnx", "add_onnx_metadata", "is_onnx_path"]

_INSTALL_HINT = 'ONNX voice models need `pip install "rvcfast[onnx]"` (onnx and onnxruntime)'
#: Input names (features, lengths, speaker, prior noise) of each interface; pitch / pitchf are shared.
_INTERFACES = {"rvc": ("phone", "phone_lengths", "ds", "rnd"), "w-okada": ("feats", "p_len", "sid", None)}
_TYPES = {"float": 1, "int64": 7}
_NOT_A_VOICE = ("; RVC's other ONNX files (rmvpe.onnx, a content encoder) are not voice models: rvcfast reads those "
                "as PyTorch weights (rmvpe.pt, hubert_base.pt)")
_RANDOM_OPS = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial")
_PASS_OPS = ("Slice", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Clip", "Expand")


def is_onnx_path(path: Any) -> bool:
    """Whether ``path`` names an ONNX file (its name ends in ``.onnx``)."""
    return isinstance(path, (str, os.PathLike)) and str(os.fspath(path)).lower().endswith(".onnx")


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"{_INSTALL_HINT}; importing {module} failed: {exc}") from None


def zero_random_draws(proto: Any) -> Any:
    """A copy of ``proto`` whose random ops give zeros (``x * 0`` for the ``*Like`` ops, a zero
    constant otherwise): the graph that :func:`rvcfast.onnx_export.verify_graph` compares with torch's noise-free run."""
    onnx = _require("onnx")
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    zero = "rvcfast_verify_zero"
    zero_used = False
    for node in out.graph.node:
        if node.op_type in ("RandomNormalLike", "RandomUniformLike"):
            nodes.append(helper.make_node("Mul", [node.input[0], zero], list(node.output)))
            zero_used = True
        elif node.op_type in ("RandomNormal", "RandomUniform"):
            shape = next(a.ints for a in node.attribute if a.name == "shape")
            value = numpy_helper.from_array(np.zeros(tuple(shape), np.float32))
            nodes.append(helper.make_node("Constant", [], list(node.output), value=value))
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if zero_used:
        out.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
    return out


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an ONNX voice file is, read from its graph and metadata (:func:`inspect_onnx`).
    ``sample_rate`` is ``None`` when the file does not say it."""

    path: str
    interface: str  # "rvc" or "w-okada"
    inputs: tuple[str, ...]
    output: str
    has_f0: bool
    feature_dim: int
    version: str
    inter_channels: int | None  # rnd's channels (RVC interface)
    num_speakers: int
    sample_rate: int | None
    hop_length: int | None
    noise_in_graph: bool  # the graph draws random numbers itself
    vocoder: str
    embedder: str | None
    opset: int
    parameters: int
    metadata: dict[str, str] = field(repr=False)


def _check_inputs(path: str, graph: Any) -> tuple[str, bool, dict[str, Any]]:
    """``(interface, has_f0, inputs by name)``; a ModelLoadError unless the inputs are one interface's."""
    inputs = {i.name: i for i in graph.input}
    inits = {i.name for i in graph.initializer}
    names = {n for n in inputs if n not in inits}
    interface = next((k for k, v in _INTERFACES.items() if names - {"pitch", "pitchf"} == {n for n in v if n}
                      and len(names & {"pitch", "pitchf"}) != 1), None)
    if interface is None:
        want = "; or ".join(
            f"{', '.join(n for n in (f, ln, '[pitch, pitchf]', s, r) if n)} ({k})"
            for k, (f, ln, s, r) in _INTERFACES.items()
        )
        raise ModelLoadError(path, f"not an RVC voice graph: its inputs are {sorted(names)}; expected {want}{_NOT_A_VOICE}")
    feat, length, sid, rnd = _INTERFACES[interface]
    wanted = {feat: ("float", 3), length: ("int64", 1), sid: ("int64", 1), "pitch": ("int64", 2),
              "pitchf": ("float", 2), rnd: ("float", 3)}
    for name in names:
        kind, rank = wanted[name]
        tt = inputs[name].type.tensor_type
        if tt.elem_type != _TYPES[kind] or len(tt.shape.dim) != rank:
            raise ModelLoadError(
                path, f"input {name!r} is {rank}-D {kind} in an RVC graph, but this file's is {len(tt.shape.dim)}-D "
                f"of ONNX type {tt.elem_type} (rvcfast runs float32 graphs only)"
            )
    return interface, "pitch" in names, inputs


def _graph_facts(graph: Any, sid: str) -> tuple[int | None, int | None, bool, int]:
    """``(speaker rows, decoder upsampling, random ops present, parameters)`` read off the graph."""
    tensors = {i.name: list(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = list(node.attribute[0].t.dims)
    producers = {o: n for n in graph.node for o in n.output}

    def from_sid(name: str, depth: int = 0) -> bool:  # through Slice, Cast, Unsqueeze...
        node = producers.get(name)
        if name == sid:
            return True
        passes = node is not None and node.op_type in _PASS_OPS and bool(node.input)
        return depth < 8 and passes and from_sid(node.input[0], depth + 1)  # type: ignore[union-attr]

    speakers = next(
        (tensors[n.input[0]][0] for n in graph.node if n.op_type == "Gather" and len(n.input) == 2
         and len(tensors.get(n.input[0], ())) == 2 and from_sid(n.input[1])),
        None,
    )
    ups = [n for n in graph.node if n.op_type == "ConvTranspose"]  # HiFi-GAN's upsampling layers
    strides = [next((a.ints[-1] for a in n.attribute if a.name == "strides"), 1) for n in ups]
    params = sum(math.prod(i.dims) for i in graph.initializer)
    return speakers, (math.prod(strides) if strides else None), _has_random_ops(graph), params


def _has_random_ops(graph: Any) -> bool:
    for node in graph.node:
        if node.op_type in _RANDOM_OPS:
            return True
        if any(a.g.node and _has_random_ops(a.g) for a in node.attribute if a.HasField("g")):
            return True
    return False


def _meta_int(path: str, meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    if value is None or value == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ModelLoadError(path, f"metadata {key}={value!r} is not a whole number") from None
    if number <= 0:
        raise ModelLoadError(path, f"metadata {key}={value!r} must be positive")
    return number


def _agree(path: str, what: str, *values: tuple[str, int | str | None]) -> Any:
    """The one value the sources that know ``what`` give; a ModelLoadError when they differ."""
    known = [(src, v) for src, v in values if v is not None]
    if len({v for _, v in known}) > 1:
        said = ", ".join(f"{s} says {v}" for s, v in known)
        raise ModelLoadError(path, f"its {what} is not clear: {said}")
    return known[0][1] if known else None


def _read_metadata(proto: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """rvcfast's ``metadata_props`` and w-okada's ``metadata`` JSON (empty when absent or unreadable)."""
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        wokada = json.loads(meta.get("metadata", "{}"))
    except ValueError:
        wokada = {}
    return meta, wokada if isinstance(wokada, dict) else {}


def _static(value_info: Any, axis: int) -> int | None:
    """The input's size along ``axis`` when the graph fixes it."""
    dim = value_info.type.tensor_type.shape.dim[axis]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _load_proto(path: str) -> Any:
    from ..safe_load import check_file

    onnx = _require("onnx")
    check_file(path, "ONNX voice model")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a protobuf decode error, a truncated file...
        problem = f"not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]})"
        raise ModelLoadError(path, problem + _NOT_A_VOICE) from None
    if not proto.graph.node or not proto.graph.output:
        raise ModelLoadError(path, "not an ONNX voice model: the file holds no graph" + _NOT_A_VOICE)
    return proto


def _check_rate(sample_rate: Any) -> None:
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 8000 or sample_rate % 100
    ):
        raise ParameterError(f"sample_rate must be a whole number of Hz, a multiple of 100 (40000...), got {sample_rate!r}")


def inspect_onnx(path: str | os.PathLike[str], *, sample_rate: int | None = None) -> OnnxModelInfo:
    """Read an ONNX voice file's graph and metadata (nothing runs; needs the ``onnx`` package).

    ``sample_rate`` is the caller's (for files that do not say theirs); it must agree with the
    file's. Raises :class:`~rvcfast.errors.ModelLoadError` naming the file when it is not an
    ONNX model, its inputs are not an RVC interface's, or its facts disagree with each other.
    """
    p = os.fspath(path)
    _check_rate(sample_rate)
    proto = _load_proto(p)
    graph = proto.graph
    interface, has_f0, inputs = _check_inputs(p, graph)
    feat, _, sid, rnd = _INTERFACES[interface]
    meta, wokada = _read_metadata(proto)
    speakers, graph_hop, noisy, params = _graph_facts(graph, sid)
    dim = _agree(p, "feature dimension", (f"input {feat}", _static(inputs[feat], 2)),
                 ("metadata feature_dim", _meta_int(p, meta, "feature_dim")),
                 ("w-okada embChannels", _meta_int(p, wokada, "embChannels")))
    from .synthesizer.config import FEATURE_DIMS  # here: the synthesizer package imports this module

    version = {v: k for k, v in FEATURE_DIMS.items()}.get(dim)
    if version is None:
        raise ModelLoadError(p, f"the graph takes {dim}-dim features; RVC models take 256 (v1) or 768 (v2)")
    _agree(p, "version", ("its feature dimension", version), ("metadata version", meta.get("version") or None))
    _agree(p, "pitch guidance", ("its inputs", has_f0),
           ("metadata f0", {"1": True, "0": False}.get(meta.get("f0", ""))),
           ("w-okada f0", bool(wokada["f0"]) if "f0" in wokada else None))
    inter = None
    if rnd:
        inter = _agree(p, "inter channels", (f"input {rnd}", _static(inputs[rnd], 1)),
                       ("metadata inter_channels", _meta_int(p, meta, "inter_channels")))
        if inter is None:
            raise ModelLoadError(p, f"cannot tell the channels of {rnd!r} (not fixed in the graph, not in the metadata)")
    spk = _agree(p, "speaker count", ("the speaker table", speakers),
                 ("metadata speakers", _meta_int(p, meta, "speakers")))
    if spk is None:
        raise ModelLoadError(p, f"cannot tell how many speakers it has (no speaker table fed by {sid!r}, no metadata)")
    sr = _agree(p, "sample rate", ("the caller (sample_rate=)", sample_rate),
                ("metadata sample_rate", _meta_int(p, meta, "sample_rate")),
                ("w-okada samplingRate", _meta_int(p, wokada, "samplingRate")))
    hop = _agree(p, "hop length (output samples per 10 ms frame)", ("the decoder's upsampling", graph_hop),
                 ("metadata hop_length", _meta_int(p, meta, "hop_length")),
                 ("the sample rate", None if sr is None else sr // 100))
    return OnnxModelInfo(
        path=p, interface=interface, inputs=tuple(i.name for i in graph.input if i.name in inputs),
        output=graph.output[0].name, has_f0=has_f0, feature_dim=dim, version=version, inter_channels=inter,
        num_speakers=int(spk), sample_rate=sr, hop_length=hop, noise_in_graph=noisy,
        vocoder=meta.get("vocoder") or "unknown (not in the file)",
        embedder=(meta["embedder"] if "embedder" in meta else wokada.get("embedder")) or None,
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0),
        parameters=int(params), metadata=meta,
    )


def _no_rate(info: OnnxModelInfo) -> ModelLoadError:
    hop = info.hop_length
    hint = f"; its decoder puts out {hop} samples per 10 ms frame, i.e. {hop * 100} Hz" if hop else ""
    rate = hop * 100 if hop else 40000
    return ModelLoadError(
        info.path,
        "this ONNX file does not say its sample rate (RVC WebUI's exporter writes no metadata)" + hint
        + f": pass it, e.g. rvcfast.load_vocoder(path, sample_rate={rate}), or write it into the file once with "
        f"rvcfast.models.onnx_vocoder.add_onnx_metadata(path, sample_rate={rate})",
    )


def _providers(device: Any, providers: Any, available: list[str]) -> list[Any]:
    """The onnxruntime execution providers for ``device`` (or the explicit ``providers``)."""
    if providers is not None:
        chosen = [providers] if isinstance(providers, str) else list(providers)
        names = [p if isinstance(p, str) else p[0] if isinstance(p, tuple) and p else None for p in chosen]
        missing = [n for n in names if n not in available]
        if not chosen or missing:
            raise ParameterError(f"onnxruntime providers {missing or chosen} are not available; this onnxruntime has {available}")
        return chosen
    try:
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"device {device!r} is not a device name ('cpu', 'cuda', 'cuda:1'...): {exc}") from None
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise ParameterError(f"ONNX voice models run on 'cpu' or 'cuda'; for {dev.type!r} pass providers= (one of {available})")
    if "CUDAExecutionProvider" not in available:
        raise ParameterError(
            f"device {device!r}: this onnxruntime has no CUDAExecutionProvider (it has {available}); install onnxruntime-gpu, "
            "or run the voice model on the CPU (device='cpu')"
        )
    return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]


class OnnxVocoder:
    """An exported voice model run by onnxruntime; the :class:`~rvcfast.protocols.Vocoder` protocol.

    Build it with ``rvcfast.load_vocoder("voice.onnx", ...)``. Attributes as a torch
    :class:`~rvcfast.models.synthesizer.Synthesizer` (``sample_rate``, ``version``,
    ``has_f0``, ``num_speakers``, ``feature_dim``, ``hop_length``, ``vocoder``,
    ``embedder_model``; ``config`` is ``None``), plus ``path``, ``info``
    (:class:`OnnxModelInfo`) and ``providers`` (onnxruntime's, in order of preference).

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"`` (CPUExecutionProvider), ``"cuda"`` / ``"cuda:N"``
            (CUDAExecutionProvider, which this onnxruntime must have) or ``"auto"``.
        dtype: ``torch.float32``; the graph is float32 and other dtypes are refused.
        sample_rate: the model's rate, for files that do not say it (it must agree with the file's).
        providers: onnxruntime providers to use instead of ``device``'s (e.g.
            ``["DmlExecutionProvider"]``), names or ``(name, options)`` pairs.
    """

    #: ``skip_frames`` is accepted (the whole item is decoded: the graph has no windows).
    supports_skip_frames = True
    supports_head_skip = True
    config = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        sample_rate: int | None = None,
        providers: Any = None,
    ) -> None:
        self.path = os.fspath(path)
        if dtype != torch.float32:
            raise ParameterError(
                f"{self.path}: ONNX voice models run in float32 only, got dtype {dtype}: pass dtype='float32' or "
                "'auto' (which runs an ONNX voice in float32), or --dtype float32 / auto on the command line"
            )
        self._ort = _require("onnxruntime")
        info = inspect_onnx(self.path, sample_rate=sample_rate)
        if info.sample_rate is None:
            raise _no_rate(info)
        self.info = info
        self.sample_rate, self.version, self.has_f0 = info.sample_rate, info.version, info.has_f0
        self.num_speakers, self.feature_dim = info.num_speakers, info.feature_dim
        self.hop_length = info.hop_length or info.sample_rate // 100
        self.vocoder, self.embedder_model = info.vocoder, info.embedder
        try:
            self.providers = _providers(device if not isinstance(device, torch.device) else str(device), providers,
                                        self._ort.get_available_providers())
        except ParameterError as exc:  # name the voice: a server or a batch loads several
            raise ParameterError(f"{self.path}: {exc}") from None
        self._lock = threading.Lock()
        self._sessions: dict[tuple[int, bool], Any] = {}
        self._warned = False
        self._session(deterministic=not info.noise_in_graph)  # load now: a bad graph fails here

    def __repr__(self) -> str:
        return (f"OnnxVocoder({self.path!r}, {self.version}, {self.sample_rate} Hz, f0={self.has_f0}, "
                f"interface={self.info.interface}, providers={self.providers})")

    def _session(self, deterministic: bool) -> Any:
        """The session for torch's current thread count (``deterministic``: random draws zeroed)."""
        key = (torch.get_num_threads(), deterministic and self.info.noise_in_graph)
        with self._lock:
            if key not in self._sessions:
                if len(self._sessions) >= 4:  # thread counts come and go (compute workers): keep a few
                    self._sessions.pop(next(iter(self._sessions)))
                self._sessions[key] = self._open(*key)
            return self._sessions[key]

    def _open(self, threads: int, zeroed: bool) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: RVC's own exports make onnxruntime warn about unused initializers
        source: Any = self.path
        if zeroed:  # a copy whose random ops give 0: the graph's noise=False
            source = zero_random_draws(_require("onnx").load(self.path)).SerializeToString()
        try:
            session = ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            raise ModelLoadError(self.path, f"onnxruntime cannot run this graph: {str(exc)[:300]}") from None
        first = self.providers[0] if isinstance(self.providers[0], str) else self.providers[0][0]
        if session.get_providers()[:1] != [first]:
            raise ParameterError(f"{self.path}: onnxruntime could not start {first} (it runs {session.get_providers()})")
        return session

    def _warn_unseeded(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.path}: this ONNX graph draws noise inside itself, which onnxruntime gives no seed: seeded runs "
                "with noise=True still differ from run to run (noise=False, or a noise=False export, is reproducible)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    @torch.inference_mode()
    def synthesize(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None = None,
        pitchf: torch.Tensor | None = None,
        speaker: int | torch.Tensor = 0,
        noise: bool = True,
        generator: Any = None,
        skip_frames: int | tuple[int, int] = 0,
    ) -> torch.Tensor:
        """Features ``[B, T, C]`` to float32 audio ``[B, T * hop_length]`` on the features' device, as
        :meth:`Synthesizer.synthesize <rvcfast.models.synthesizer.Synthesizer.synthesize>`:
        each item runs alone on its ``lengths[b]`` frames, samples past them are 0.

        ``noise=True`` feeds ``rnd = randn(inter, n) * 0.66666`` from the item's generator
        (``generator`` as in the torch model: none, one, or one per item) and lets the graph
        draw its own noise (not seeded: a warning says so once when a generator is given);
        ``noise=False`` feeds ``rnd = 0`` and runs the graph with its draws zeroed.
        ``skip_frames`` is checked and otherwise ignored: every sample is computed.
        """
        from .synthesizer import model as _m  # here: the synthesizer package imports this module

        _m._check_features(features, self.feature_dim, self.version)
        b, t, _ = features.shape
        lengths_t = _m._check_lengths(lengths, b, t, features.device)
        _m._check_finite_features(features, lengths_t)
        if self.has_f0:
            pitch, pitchf = _m._check_pitch(pitch, pitchf, b, t, features.device)
        sid = _m._check_speaker(speaker, b, self.num_speakers, features.device).cpu().numpy().astype(np.int64)
        _m._check_skip(skip_frames)
        gens = _m._item_generators(generator, b) if noise else None
        if noise and generator is not None and self.info.noise_in_graph:
            self._warn_unseeded()
        session = self._session(deterministic=not noise)
        feats = features.detach().to("cpu", torch.float32).numpy()
        coarse = pitch.cpu().numpy().astype(np.int64) if pitch is not None else None
        hz = pitchf.cpu().numpy().astype(np.float32) if pitchf is not None else None
        feat, length, sid_name, rnd = _INTERFACES[self.info.interface]
        hop = self.hop_length
        out = np.zeros((b, t * hop), np.float32)
        for i in range(b):
            n = int(lengths_t[i])
            feed = {feat: feats[i : i + 1, :n], length: np.array([n], np.int64), sid_name: sid[i : i + 1]}
            if coarse is not None and hz is not None:
                feed["pitch"], feed["pitchf"] = coarse[i : i + 1, :n], hz[i : i + 1, :n]
            if rnd is not None:
                shape = (self.info.inter_channels or 0, n)
                eps = torch.zeros(shape) if gens is None else _m._randn(shape, gens[i], torch.device("cpu"))
                feed[rnd] = (eps * _m._PRIOR_NOISE_SCALE).numpy()[None]
            audio = np.asarray(self._run(session, feed, n), np.float32).reshape(-1)
            if audio.shape[0] != n * hop:
                raise ModelLoadError(self.path, f"the graph returned {audio.shape[0]} samples for {n} frames, not {n * hop}")
            out[i, : n * hop] = audio
        return torch.from_numpy(out).to(features.device)

    def _run(self, session: Any, feed: dict[str, np.ndarray], frames: int) -> Any:
        """The graph's output for one item. onnxruntime's errors name neither the file nor the
        length: they are raised again naming both (a :class:`ModelLoadError` when the graph
        refuses the length, as a graph that runs only at its traced length does)."""
        try:
            return session.run([self.info.output], feed)[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            said = " ".join(str(exc).split())[:300]
            problem = f"onnxruntime failed to run the graph on {frames} frames of features ({said})"
            if any(w in said.lower() for w in ("dimension", "shape", "broadcast")):
                raise ModelLoadError(
                    self.path, problem + "; a graph that runs only at the length it was traced at (as RVC WebUI's "
                    "exports are reported to) cannot convert audio of other lengths: export the .pth again with "
                    "rvcfast export-onnx",
                ) from None
            raise RvcfastError(f"{self.path}: {problem}") from None


def describe_onnx(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`rvcfast.describe.describe_model`'s facts for an ONNX voice file (``sample_rate`` is
    ``None`` when the file does not say it; ``config`` holds the graph's interface)."""
    info = inspect_onnx(path)
    if info.sample_rate is not None:
        OnnxVocoder(path)  # onnxruntime must be able to run it
    return {
        "path": os.fspath(path),
        "file_bytes": Path(path).stat().st_size,
        "version": info.version,
        "sample_rate": info.sample_rate,
        "f0": info.has_f0,
        "speakers": info.num_speakers,
        "feature_dim": info.feature_dim,
        "hop_length": info.hop_length,
        "vocoder": info.vocoder,
        "embedder": info.embedder,
        "parameters": info.parameters,
        "config": {"format": "onnx", "interface": info.interface, "inputs": list(info.inputs), "output": info.output,
                   "opset": info.opset, "inter_channels": info.inter_channels, "noise_in_graph": info.noise_in_graph},
        "metadata": dict(info.metadata),
    }


def add_onnx_metadata(
    path: str | os.PathLike[str], *, sample_rate: int, output: str | os.PathLike[str] | None = None
) -> Path:
    """Write rvcfast's metadata (:func:`rvcfast.onnx_export.model_metadata`'s keys that the graph
    shows, and ``sample_rate``) into an ONNX voice file that lacks it, e.g. one from RVC WebUI's
    exporter, so that ``Converter.from_pretrained`` and ``rvcfast convert`` can load it.
    Writes ``output`` (default: ``path`` itself, replaced atomically); returns its path."""
    from ..atomic import atomic_write

    info = inspect_onnx(path, sample_rate=sample_rate)
    proto = _require("onnx").load(os.fspath(path))
    facts = {"sample_rate": info.sample_rate, "version": info.version, "f0": "1" if info.has_f0 else "0",
             "feature_dim": info.feature_dim, "hop_length": info.hop_length or sample_rate // 100,
             "inter_channels": info.inter_channels, "speakers": info.num_speakers, "interface": info.interface,
             "noise": "in-graph" if info.noise_in_graph else "none"}
    have = {p.key for p in proto.metadata_props}
    for key, value in facts.items():
        if key not in have and value is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
    target = Path(output if output is not None else path)
    with atomic_write(target) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return target

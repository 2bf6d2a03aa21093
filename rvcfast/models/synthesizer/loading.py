"""Reading voice model files: checkpoint layout, config (given or inferred), strict weights.

Only :func:`load_vocoder` reads files; it goes through
:func:`rvcfast.safe_load.load_torch_file` and never runs code from the file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ...errors import ModelLoadError, ParameterError
from ...runtime import release_memory, resolve_device
from ...safe_load import checkpoint_kind, kind_advice, load_torch_file, tensor_problems
from ..onnx_vocoder import OnnxVocoder, is_onnx_path
from ..weightnorm import fold_weight_norm
from .config import FEATURE_DIMS, OTHER_GEOMETRIES, RVC_SAMPLE_RATE_CONFIGS
from .decoders import DEFAULT_VOCODER, F0_ONLY_KINDS, VOCODER_NAMES, vocoder_kind
from .model import Synthesizer

__all__ = ["load_vocoder"]

_WN_SUFFIXES = (".weight_v", ".parametrizations.weight.original1", ".weight")


def _list_keys(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return shown + more


def _parse_f0_flag(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "false", "no", ""):
            return False
        if text in ("1", "true", "yes"):
            return True
        raise ValueError(f"f0 flag {value!r} is not understood")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return bool(value.item())
    if value is None or isinstance(value, (bool, int, float)):
        return bool(value)
    raise ValueError(f"f0 flag {value!r} is not understood (expected 1 or 0)"[:200])


def _weight_shape(weights: Mapping[str, torch.Tensor], base: str) -> tuple[int, ...] | None:
    for suffix in _WN_SUFFIXES:
        if base + suffix in weights:
            return tuple(weights[base + suffix].shape)
    return None


def _layer_count(weights: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct indices captured by ``pattern`` among the keys."""
    return len({int(m.group(1)) for k in weights if (m := re.match(pattern, k))})


# --------------------------------------------------------------------------- config inference


def _shape_reader(weights: Mapping[str, torch.Tensor], path: Any) -> Callable[[str], tuple[int, ...]]:
    """``need(key)``: the shape of ``key`` (weight-norm pairs included) or a ModelLoadError."""

    def need(key: str) -> tuple[int, ...]:
        shape = _weight_shape(weights, key[: -len(".weight")]) if key.endswith(".weight") else None
        if shape is None and key in weights:
            shape = tuple(weights[key].shape)
        if shape is None:
            raise ModelLoadError(
                path, f"training checkpoint has no config and no {key!r}, so its architecture cannot be inferred"
            )
        return shape

    return need


def _infer_resblocks(
    weights: Mapping[str, torch.Tensor], need: Callable[[str], tuple[int, ...]], n_ups: int, path: Any
) -> tuple[str, list[int], list[list[int]]]:
    """``(resblock type, kernel sizes, dilations)`` of the decoder's residual blocks."""
    n_blocks = _layer_count(weights, r"dec\.resblocks\.(\d+)\.")
    if n_ups == 0 or n_blocks % n_ups:
        raise ModelLoadError(path, "training checkpoint: cannot tell the decoder layout from dec.ups / dec.resblocks")
    n_k = n_blocks // n_ups
    resblock = "1" if _weight_shape(weights, "dec.resblocks.0.convs1.0") is not None else "2"
    conv_name = "convs1" if resblock == "1" else "convs"
    kernels = [need(f"dec.resblocks.{j}.{conv_name}.0.weight")[2] for j in range(n_k)]
    dilations = [[1, 3, 5] if resblock == "1" else [1, 3] for _ in range(n_k)]
    return resblock, kernels, dilations


def _noise_convs_fit(
    weights: Mapping[str, torch.Tensor], need: Callable[[str], tuple[int, ...]], rates: tuple[int, ...], n_ups: int
) -> bool:
    """Whether the NSF noise convolutions have the kernels ``rates`` gives them."""
    for i in range(n_ups):
        stride = math.prod(rates[i + 1 :]) if i + 1 < n_ups else 1
        expect = 1 if stride == 1 else 2 * stride - stride % 2
        if _weight_shape(weights, f"dec.noise_convs.{i}") is None or need(f"dec.noise_convs.{i}.weight")[2] != expect:
            return False
    return True


def _match_geometry(
    weights: Mapping[str, torch.Tensor],
    need: Callable[[str], tuple[int, ...]],
    up_kernels: tuple[int, ...],
    spec: int | None,
    has_f0: bool,
    path: Any,
) -> tuple[int, int, tuple[int, ...]]:
    """``(sample rate, spec channels, upsample rates)`` of the one known geometry the tensors fit."""
    candidates: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = [
        (sr, s, r, k) for (_, sr), (s, r, k) in RVC_SAMPLE_RATE_CONFIGS.items()
    ] + list(OTHER_GEOMETRIES)
    matches = set()
    for sr, s, rates, kernels in candidates:
        if kernels != up_kernels or (spec is not None and s != spec):
            continue
        if has_f0 and not _noise_convs_fit(weights, need, rates, len(up_kernels)):
            continue
        matches.add((sr, s, rates))
    if len(matches) != 1:
        raise ModelLoadError(
            path,
            f"training checkpoint has no config, and its upsample kernels {list(up_kernels)} do not identify "
            "one known RVC sample-rate configuration; extract a voice model (with its config) first",
        )
    return matches.pop()


def _infer_config(weights: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> tuple[list[Any], str, bool]:
    """Rebuild ``(config, version, has_f0)`` from the tensors of a training checkpoint."""
    need = _shape_reader(weights, path)
    hidden, feat = need("enc_p.emb_phone.weight")
    if feat not in (256, 768):
        raise ModelLoadError(path, f"enc_p.emb_phone.weight has {feat} input features; expected 256 (v1) or 768 (v2)")
    version = "v1" if feat == 256 else "v2"
    has_f0 = "enc_p.emb_pitch.weight" in weights
    inter = need("enc_p.proj.weight")[0] // 2
    filt, _, ksize = need("enc_p.encoder.ffn_layers.0.conv_1.weight")
    n_layers = _layer_count(weights, r"enc_p\.encoder\.attn_layers\.(\d+)\.")
    d = need("enc_p.encoder.attn_layers.0.emb_rel_k")[-1]
    up_init = need("dec.conv_pre.weight")[0]
    n_ups = _layer_count(weights, r"dec\.ups\.(\d+)\.")
    up_kernels = tuple(need(f"dec.ups.{i}.weight")[2] for i in range(n_ups))
    resblock, rb_kernels, dilations = _infer_resblocks(weights, need, n_ups, path)
    spk, gin = need("emb_g.weight")
    spec = need("enc_q.pre.weight")[1] if _weight_shape(weights, "enc_q.pre") is not None else None
    sr, s, rates = _match_geometry(weights, need, up_kernels, spec, has_f0, path)
    config = [
        spec if spec is not None else s, 32, inter, hidden, filt, hidden // d, n_layers, ksize, 0, resblock,
        rb_kernels, dilations, list(rates), up_init, list(up_kernels), spk, gin, sr,
    ]
    return config, version, has_f0


def _check_config_against_weights(config: list[Any], weights: Mapping[str, torch.Tensor], path: Any) -> None:
    """Refuse configs whose sizes the weights cannot have, before any module is built.

    A config claiming 10**9 layers or channels would otherwise make the (meta-device)
    model construction run for ages or overflow; the real sizes can be read off the keys.
    """
    layers = {k.split(".")[3] for k in weights if k.startswith("enc_p.encoder.attn_layers.")}
    n_layers = config[6]
    if isinstance(n_layers, int) and layers and n_layers != len(layers):
        raise ModelLoadError(
            path, f"malformed config: n_layers={n_layers} but the weights hold {len(layers)} text-encoder layers"
        )
    checks = [(3, "enc_p.proj.weight", 1, "hidden_channels"), (13, "dec.conv_pre.weight", 0, "upsample_initial_channel")]
    for index, key, dim, name in checks:
        w = weights.get(key)
        value = config[index]
        if isinstance(w, torch.Tensor) and w.dim() > dim and isinstance(value, int) and value != int(w.shape[dim]):
            raise ModelLoadError(
                path, f"malformed config: {name}={value} but {key} has shape {tuple(w.shape)}"
            )


# --------------------------------------------------------------------------- checkpoint reading

#: A key only each Applio decoder has, to recognise files that do not name their vocoder.
_VOCODER_MARKERS = (
    ("dec.upsample_conv_blocks.0.input_conv.weight", "RefineGAN"),
    ("dec.m_source.merge.0.weight", "RefineGAN"),
    ("dec.mrfs.0.0.layers.0.conv1.weight_v", "MRF HiFi-GAN"),
    ("dec.mrfs.0.0.layers.0.conv1.parametrizations.weight.original1", "MRF HiFi-GAN"),
)


def _vocoder_name(ckpt: Mapping[str, Any], weights: Mapping[str, torch.Tensor], path: Any) -> str:
    """The decoder's name: the file's ``vocoder`` entry, else recognised from the keys, else HiFi-GAN."""
    vocoder = ckpt.get("vocoder")
    if vocoder is not None:
        kind = vocoder_kind(vocoder)
        if kind is None:
            known = ", ".join(repr(v) for v in VOCODER_NAMES.values())
            raise ModelLoadError(path, f"vocoder {vocoder!r} is not supported; rvcfast runs {known}")
        return VOCODER_NAMES[kind]
    for key, name in _VOCODER_MARKERS:
        if key in weights:
            return name
    return DEFAULT_VOCODER



def _read_checkpoint(path: Any) -> Mapping[str, Any]:
    """The file's top-level dict (unpickled safely); ModelLoadError for anything else."""
    try:
        ckpt = load_torch_file(path, what="voice model")
    except (ModelLoadError, ParameterError):
        raise
    except Exception as exc:  # the unpickler can fail in other ways on garbage input
        raise ModelLoadError(
            path, f"voice model file is corrupt or not a PyTorch file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(ckpt, Mapping):
        raise ModelLoadError(
            path, f"not an RVC voice model: expected a dict with 'weight' and 'config', got {type(ckpt).__name__}"
        )
    return ckpt


def _refuse_other_formats(ckpt: Mapping[str, Any], path: Any) -> None:
    """A ModelLoadError for files of other model formats that rvcfast recognises but does not run."""
    if "backend" in ckpt and not ("weight" in ckpt and "config" in ckpt):
        backend = ckpt["backend"]
        text = str(backend).lower() if isinstance(backend, str) else ""
        what = "an Applio v3 model" if "applio" in text and "v3" in text else f"a model for backend {backend!r}"
        raise ModelLoadError(
            path,
            f"this is {what} (backend {backend!r}), not an RVC voice model; rvcfast runs only RVC / Applio "
            "voice models (a .pth with 'weight' and 'config') and does not run it",
        )


def _checkpoint_weights(ckpt: Mapping[str, Any], path: Any) -> tuple[Mapping[str, torch.Tensor], bool]:
    """``(weights, is a training checkpoint)``: the inference ``weight`` or the training ``model`` dict."""
    _refuse_other_formats(ckpt, path)
    kind = checkpoint_kind(ckpt)
    if kind not in (None, "voice", "generator-checkpoint"):
        raise ModelLoadError(path, kind_advice(kind, "a voice model"))
    if "weight" in ckpt:
        weights, training = ckpt["weight"], False
    elif "model" in ckpt:
        weights, training = ckpt["model"], True
    else:
        keys = ", ".join(repr(k) for k in list(ckpt)[:12])
        raise ModelLoadError(path, f"not an RVC voice model: no 'weight' (or training 'model') entry; top-level keys: {keys}")
    if not isinstance(weights, Mapping):
        raise ModelLoadError(path, f"'weight' must be a dict of tensors, got {type(weights).__name__}")
    bad = [str(k) for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(path, f"'weight' holds entries that are not tensors: {_list_keys(bad)}")
    return weights, training


def _f0_flag(value: Any, path: Any) -> bool:
    try:
        return _parse_f0_flag(value)
    except ValueError as exc:
        raise ModelLoadError(path, str(exc)) from None


def _version_from_weights(weights: Mapping[str, torch.Tensor]) -> str:
    """The version of a file that does not say: v2 when ``enc_p.emb_phone`` takes 768 features, else v1.

    RVC and Applio default to v1 (very old files are v1 and lack the key); reading the
    width off the weights gives the same answer for them and loads a v2 file whose
    writer left the key out, where the v1 default could only fail.
    """
    w = weights.get("enc_p.emb_phone.weight")
    if isinstance(w, torch.Tensor) and w.dim() == 2 and int(w.shape[1]) == FEATURE_DIMS["v2"]:
        return "v2"
    return "v1"


def _f0_from_weights(weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether a file that does not say has pitch guidance: whether it has a pitch embedding.

    RVC and Applio default to pitch-guided (``get("f0", 1)``): every file RVC wrote
    without the key is, and has ``enc_p.emb_pitch``. Reading it off the weights gives
    the same answer for them and loads a no-F0 file whose writer left the key out,
    where the default could only fail.
    """
    return "enc_p.emb_pitch.weight" in weights


def _check_feature_width(ckpt: Mapping[str, Any], weights: Mapping[str, torch.Tensor], path: Any) -> None:
    """Refuse weights made for content features of a width no RVC version takes (neither 256 nor 768)."""
    w = weights.get("enc_p.emb_phone.weight")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or int(w.shape[1]) in FEATURE_DIMS.values():
        return  # the usual shape checks report anything else
    stated = f" (the file says version {ckpt['version']!r})" if ckpt.get("version") is not None else ""
    raise ModelLoadError(
        path,
        f"enc_p.emb_phone.weight takes {int(w.shape[1])}-dim content features{stated}, but RVC voices take "
        f"{FEATURE_DIMS['v1']} (v1) or {FEATURE_DIMS['v2']} (v2): this is a voice model for another content "
        "encoder, which rvcfast does not run",
    )


def _checkpoint_config(
    ckpt: Mapping[str, Any], weights: Mapping[str, torch.Tensor], training: bool, path: Any
) -> tuple[list[Any], str, bool]:
    """``(config, version, has_f0)``: as stored, or inferred from a training checkpoint's tensors."""
    if "config" in ckpt:
        _check_feature_width(ckpt, weights, path)
        config, version = ckpt["config"], ckpt.get("version")
        has_f0 = _f0_flag(ckpt["f0"], path) if "f0" in ckpt else _f0_from_weights(weights)
        if version is None:
            version = _version_from_weights(weights)
    elif training:
        config, version, has_f0 = _infer_config(weights, path)
        version = ckpt.get("version", version)
        if "f0" in ckpt:
            has_f0 = _f0_flag(ckpt["f0"], path)
    else:
        raise ModelLoadError(path, "not an RVC voice model: it has 'weight' but no 'config' list")
    if not isinstance(version, str) or version not in FEATURE_DIMS:
        raise ModelLoadError(path, f"unknown model version {version!r} (expected 'v1' or 'v2')")
    if not isinstance(config, (list, tuple)):
        raise ModelLoadError(path, f"malformed config: expected a list of 18 values, got {type(config).__name__}")
    config = list(config)
    if len(config) != 18:
        raise ModelLoadError(path, f"malformed config: expected 18 values, got {len(config)}")
    return config, version, has_f0


def _f0_hint(model: Synthesizer, folded: Mapping[str, torch.Tensor]) -> str:
    """Why the keys may not fit: the file's ``f0`` flag disagrees with its pitch embedding."""
    has_pitch = "enc_p.emb_pitch.weight" in folded
    if has_pitch and not model.has_f0:
        return " (the file's f0 flag says no pitch guidance, but its weights are a pitch-guided model's)"
    if model.has_f0 and not has_pitch:
        return " (the file's f0 flag says pitch-guided, but its weights have no pitch embedding: a no-F0 model?)"
    return ""


def _check_state(model: Synthesizer, folded: Mapping[str, torch.Tensor], path: Any) -> None:
    """Every key present, none unknown, every shape right, all floating point (or a ModelLoadError)."""
    expected = model.state_dict()
    unknown = sorted(set(folded) - set(expected))
    missing = sorted(set(expected) - set(folded))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown keys: {_list_keys(unknown)}")
        if missing:
            parts.append(f"missing keys: {_list_keys(missing)}")
        kind = f"{model.version} {'F0' if model.has_f0 else 'no-F0'}"
        raise ModelLoadError(
            path,
            f"weights do not match an RVC {kind} synthesizer with the {model.vocoder} decoder and this config"
            + _f0_hint(model, folded) + "; " + "; ".join(parts),
        )
    mismatched = [
        f"{k}: file {list(folded[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if tuple(folded[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        hint = ""
        if "enc_p.emb_phone.weight" in folded and folded["enc_p.emb_phone.weight"].shape[-1] != model.feature_dim:
            hint = (
                f" (the file says version {model.version!r}, which takes {model.feature_dim}-dim features, but "
                f"enc_p.emb_phone.weight takes {folded['enc_p.emb_phone.weight'].shape[-1]})"
            )
        raise ModelLoadError(path, f"tensor shapes do not match the config{hint}: {_list_keys(mismatched, 10)}")
    not_float = [k for k, v in folded.items() if not v.is_floating_point()]
    if not_float:
        raise ModelLoadError(path, f"weights must be floating point tensors: {_list_keys(not_float)}")
    problem = tensor_problems(folded)
    if problem:
        raise ModelLoadError(path, problem)


def _check_target(device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype to load onto, checked before any file is read."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise ParameterError(f"dtype must be a floating torch.dtype (float32, bfloat16, float16), got {dtype!r}")
    return resolve_device(device), dtype


def load_vocoder(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    sample_rate: int | None = None,
    providers: Sequence[Any] | None = None,
) -> Synthesizer | OnnxVocoder:
    """Load an RVC / Applio voice model ``.pth`` as a :class:`Synthesizer`, or an exported
    ``.onnx`` one as an :class:`~rvcfast.models.onnx_vocoder.OnnxVocoder` (run by onnxruntime,
    float32 only; ``sample_rate`` for files that do not say theirs, ``providers`` to pick
    onnxruntime's execution providers: see ``docs/onnx.md``).

    Reads the file with :func:`rvcfast.safe_load.load_torch_file` (no code runs). Accepts
    the inference format (``weight``, ``config``, ``sr`` as ``"40k"`` or ``40000``,
    ``f0`` -- when absent, read off the weights: pitch-guided when they have the pitch
    embedding ``enc_p.emb_pitch``, as every file RVC wrote without the entry has --,
    ``version`` -- when absent, v2 if ``enc_p.emb_phone`` takes 768 features,
    else v1 --, optional ``vocoder``) and training
    checkpoints ``{"model": ...}`` (whose architecture is inferred from the tensor
    shapes when they carry no config). The speaker count comes from ``emb_g.weight``.
    Weight norm (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``)
    is folded once in float64; ``enc_q.*`` keys are ignored; every other key must match
    the model exactly.

    The decoder is the one the file's ``vocoder`` entry names: ``"HiFi-GAN"`` (also the
    default), or Applio's ``"MRF HiFi-GAN"`` or ``"RefineGAN"`` (pitch-guided models
    only); files without the entry whose keys are those of an Applio decoder get that
    decoder. The file's ``embedder_model`` (Applio: ``"contentvec"``,
    ``"chinese-hubert-base"``, ``"custom"``...) is kept as the model's
    ``embedder_model`` attribute (``None`` when absent).

    Raises:
        ModelLoadError: the file is unreadable, not a voice model (e.g. an Applio v3
            model, a discriminator ``D_*.pth``, a content encoder or RMVPE weights:
            the message says which and where it belongs), has a malformed config
            (a sample rate that does not fit its decoder included), content features
            of a width no RVC version takes (neither 256 nor 768), an unknown
            vocoder, a RefineGAN / MRF decoder without pitch guidance, unknown /
            missing keys, tensors of the wrong shape, sparse tensors or NaN / Inf
            weights. The message names the file and the offending keys.
        ParameterError: ``dtype`` is not a floating dtype or ``device`` is not a
            usable device (checked before the file is read).
    """
    if is_onnx_path(path):
        return OnnxVocoder(path, device=device, dtype=dtype, sample_rate=sample_rate, providers=providers)
    if sample_rate is not None or providers is not None:
        raise ParameterError(f"{path}: sample_rate= and providers= are for ONNX voice models (.onnx); a .pth says its own rate")
    target, dtype = _check_target(device, dtype)
    ckpt = _read_checkpoint(path)
    weights, training = _checkpoint_weights(ckpt, path)
    vocoder = _vocoder_name(ckpt, weights, path)
    if training and "config" not in ckpt and vocoder_kind(vocoder) != "hifigan":
        raise ModelLoadError(
            path, f"training checkpoint of a {vocoder} model has no config; extract a voice model (with its config) first"
        )
    config, version, has_f0 = _checkpoint_config(ckpt, weights, training, path)
    if vocoder_kind(vocoder) in F0_ONLY_KINDS and not has_f0:
        raise ModelLoadError(
            path,
            f"the {vocoder} decoder exists only for pitch-guided models, but this file "
            + (f"says f0 = {ckpt['f0']!r}" if "f0" in ckpt else "has no pitch embedding (and no f0 entry)")
            + " (Applio builds no decoder for it either)",
        )
    weights = {k: v for k, v in weights.items() if not k.startswith("enc_q.")}
    if "emb_g.weight" not in weights or weights["emb_g.weight"].dim() != 2:
        raise ModelLoadError(path, "missing key 'emb_g.weight' (the speaker embedding, [n_speakers, gin_channels])")
    config[15] = int(weights["emb_g.weight"].shape[0])
    _check_config_against_weights(config, weights, path)
    try:
        with torch.device("meta"):
            model = Synthesizer(config, version=version, has_f0=has_f0, vocoder=vocoder)
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise ModelLoadError(path, f"malformed config: {exc}") from None
    # The real rate is config[17]; RVC and Applio never read the ``sr`` label.
    try:
        folded = fold_weight_norm(weights)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(path, f"malformed weight-norm weights: {exc}") from None
    _check_state(model, folded, path)
    del weights  # with the file's own entries gone, each file tensor is freed as it is cast
    if isinstance(ckpt, dict):
        for key in ("weight", "model", "optimizer"):  # a training checkpoint's optimizer state is twice the model
            ckpt.pop(key, None)
    state = {k: folded.pop(k).float().to(device=target, dtype=dtype) for k in list(folded)}
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.requires_grad_(False)
    model.eval()
    release_memory()  # the conversions' garbage back to the OS
    embedder = ckpt.get("embedder_model")
    model.embedder_model = embedder.strip() if isinstance(embedder, str) and embedder.strip() else None
    return model

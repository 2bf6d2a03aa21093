"""Loading content encoders: fairseq checkpoints and Hugging Face folders, checked strictly.

Two file layouts of the same weights load through :func:`load_encoder`:

* fairseq (``hubert_base.pt``): ``{'model': state_dict, 'cfg': {'model': ..., 'task': ...}}``
  (or the legacy ``args``), read with :func:`rvcfast.safe_load.load_torch_file`;
* a Hugging Face ``HubertModel`` folder (Applio's embedder layout): ``config.json``
  plus ``model.safetensors`` (preferred) or ``pytorch_model.bin``, optionally with
  Applio's ``final_proj`` (768 -> 256).

The configuration comes from the file (fairseq ``cfg.model``/``args``, or
``config.json``), completed from tensor shapes where a fairseq checkpoint is silent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelLoadError, ParameterError
from ...runtime import release_memory, resolve_device
from ...safe_load import (
    InertObject,
    as_path,
    check_file,
    checkpoint_kind,
    kind_advice,
    load_json,
    load_safetensors,
    load_torch_file,
    tensor_problems,
)
from ..weightnorm import fold_weight_norm
from .config import HUBERT_BASE_CONV_LAYERS, HubertConfig
from .conv_spec import parse_conv_layers
from .layout import key_table
from .network import HubertEncoder

__all__ = ["load_encoder"]

# Tensors in the files that inference never reads.
_IGNORED_FAIRSEQ = frozenset({"mask_emb", "label_embs_concat"})
_IGNORED_HF = frozenset({"masked_spec_embed"})


def _name_list(names: Iterable[str], limit: int = 25) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _fold(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """:func:`fold_weight_norm`, its errors as a ModelLoadError naming the file."""
    try:
        return fold_weight_norm(state)
    except ValueError as exc:
        raise ModelLoadError(path, f"malformed weight-norm weights: {exc}") from None


def _map_state(
    state: Mapping[str, Any], cfg: HubertConfig, fmt: str, path: Path, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Strictly map a file's state dict onto internal names, cast to ``dtype``; weight norm is folded first.

    Each tensor is cast as it is mapped (through float32, so every precision gets the
    values a float32 load would round) and, when ``state`` is a dict, its entry is dropped
    at the same time: the file's fp16 tensors and the compute-dtype copies do not all
    coexist (the full-size ``hubert_base.pt``: 190 MB of fp16 plus 360 MB of float32 before).
    """
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(path, f"the weights hold non-tensor entries: {_name_list(map(str, bad))}")
    folded = _fold(state, path)
    # sizes the weights cannot have are refused before the key table is built from them
    present = {k.split(".")[2] for k in folded if k.startswith("encoder.layers.") and k.count(".") >= 3}
    if not present:
        raise ModelLoadError(
            path,
            "the weights hold no transformer layers (encoder.layers.*), so they are not a HuBERT / ContentVec "
            f"model; first keys: {_name_list(list(map(str, folded))[:8], 8)}",
        )
    if len(present) != cfg.num_layers:
        raise ModelLoadError(
            path, f"the config says {cfg.num_layers} transformer layers but the weights hold {len(present)}"
        )
    if len(cfg.conv_layers) > 64 or cfg.num_layers > 256:
        raise ModelLoadError(path, f"implausible encoder size ({len(cfg.conv_layers)} conv layers, {cfg.num_layers} layers)")
    table = key_table(cfg)
    by_source = {(row.fairseq if fmt == "fairseq" else row.hf): row for row in table}
    ignored = _IGNORED_FAIRSEQ if fmt == "fairseq" else _IGNORED_HF
    unknown = [k for k in folded if k not in by_source and k not in ignored]
    missing = [k for k in by_source if k not in folded]
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_list(missing)}")
    if unknown:
        problems.append(f"unexpected keys: {_name_list(unknown)}")
    if problems:
        layout = "fairseq HuBERT" if fmt == "fairseq" else "transformers HubertModel"
        raise ModelLoadError(
            path,
            f"the weights do not match the {layout} layout of the configured model; " + "; ".join(problems),
        )
    mismatched = []
    for name, row in by_source.items():
        t = folded[name]
        if tuple(t.shape) != row.shape:
            mismatched.append(f"{name}: {list(t.shape)} in the file, {list(row.shape)} expected")
        elif not t.is_floating_point():
            mismatched.append(f"{name}: dtype {t.dtype} is not floating point")
    if mismatched:
        raise ModelLoadError(
            path, "tensor shapes do not match the configuration: " + "; ".join(mismatched[:25])
        )
    problem = tensor_problems({name: folded[name] for name in by_source})
    if problem:
        raise ModelLoadError(path, problem)
    out: dict[str, torch.Tensor] = {}
    for name, row in by_source.items():
        t = folded.pop(name).float()
        out[row.internal] = t if dtype == torch.float32 else t.to(dtype)
        if isinstance(state, dict):  # free the file's tensor now (weight-norm pairs: at the end)
            state.pop(name, None)
    return out


def _plain(obj: Any, depth: int = 0) -> Any:
    """Turn plain containers and the inert stand-ins of safe_load (Namespace, omegaconf) into dicts/lists."""
    if depth > 40:
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, InertObject):
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, Mapping):
            if "_content" in state:  # omegaconf DictConfig / ListConfig
                return _plain(state["_content"], depth + 1)
            if "_val" in state:  # omegaconf value node
                return _plain(state["_val"], depth + 1)
            return _plain(dict(state), depth + 1)  # argparse.Namespace: its __dict__
        if state is None and getattr(obj, "__dict__", None):
            extra = {k: v for k, v in vars(obj).items() if k not in ("args", "kwargs", "state")}
            if extra:
                return _plain(extra, depth + 1)
        kwargs = getattr(obj, "kwargs", None)
        if kwargs:
            return _plain(dict(kwargs), depth + 1)
    return None


class _Fields:
    """Typed access to a configuration dict; errors name the file and the field."""

    def __init__(self, values: Mapping[str, Any], path: Path, what: str) -> None:
        self.values = values
        self.path = path
        self.what = what

    def _fail(self, name: str, expected: str) -> ModelLoadError:
        return ModelLoadError(
            self.path, f"{self.what} field {name!r} must be {expected}, got {self.values.get(name)!r}"
        )

    def get_int(self, name: str, default: int) -> int:
        v = self.values.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v <= 0:
            raise self._fail(name, "a positive integer")
        return int(v)

    def get_float(self, name: str, default: float) -> float:
        v = self.values.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise self._fail(name, "a positive number")
        return float(v)

    def get_bool(self, name: str, default: bool) -> bool:
        v = self.values.get(name)
        if v is None:
            return default
        if not isinstance(v, (bool, int)):
            raise self._fail(name, "true or false")
        return bool(v)

    def get_str(self, name: str, default: str) -> str:
        v = self.values.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._fail(name, "a string")
        return v

    def get_int_list(self, name: str) -> list[int] | None:
        v = self.values.get(name)
        if v is None:
            return None
        if not isinstance(v, (list, tuple)) or any(
            isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in v
        ):
            raise self._fail(name, "a list of positive integers")
        return [int(x) for x in v]


def _final_proj_dim(state: Mapping[str, Any]) -> int | None:
    for key in ("final_proj.weight", "final_proj.bias"):
        t = state.get(key)
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            return int(t.shape[0])
    return None


def _infer_fairseq_defaults(state: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters read off tensor shapes, used where the checkpoint's cfg is silent."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    try:
        folded = fold_weight_norm(tensors)
    except ValueError:  # reported, naming the file, when the weights are mapped
        folded = tensors
    out: dict[str, Any] = {}
    convs = []
    i = 0
    while f"feature_extractor.conv_layers.{i}.0.weight" in folded:
        w = folded[f"feature_extractor.conv_layers.{i}.0.weight"]
        if w.dim() != 3:
            break
        convs.append((int(w.shape[0]), int(w.shape[2])))
        i += 1
    if convs:
        base = [(d, k) for d, k, _ in HUBERT_BASE_CONV_LAYERS]
        if [k for _, k in convs] == [k for _, k in base]:
            strides = [s for _, _, s in HUBERT_BASE_CONV_LAYERS]
            out["conv_feature_layers"] = [(d, k, s) for (d, k), s in zip(convs, strides)]
        out["conv_bias"] = "feature_extractor.conv_layers.0.0.bias" in folded
    if "feature_extractor.conv_layers.0.2.1.weight" in folded:
        out["extractor_mode"] = "layer_norm"
    n_layers = 0
    while f"encoder.layers.{n_layers}.fc1.weight" in folded:
        n_layers += 1
    if n_layers:
        out["encoder_layers"] = n_layers
        out["encoder_ffn_embed_dim"] = int(folded["encoder.layers.0.fc1.weight"].shape[0])
    norm = folded.get("encoder.layer_norm.weight")
    if isinstance(norm, torch.Tensor) and norm.dim() == 1:
        h = int(norm.shape[0])
        out["encoder_embed_dim"] = h
        if h % 64 == 0:
            out["encoder_attention_heads"] = h // 64
        pos = folded.get("encoder.pos_conv.0.weight")
        if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[1] and h % int(pos.shape[1]) == 0:
            out["conv_pos"] = int(pos.shape[2])
            out["conv_pos_groups"] = h // int(pos.shape[1])
    return out


def _config_from_fairseq(ckpt: Mapping[str, Any], state: Mapping[str, Any], path: Path) -> HubertConfig:
    values: dict[str, Any] = dict(_infer_fairseq_defaults(state))
    args = _plain(ckpt.get("args"))
    if isinstance(args, Mapping):
        values.update({k: v for k, v in args.items() if v is not None})
    cfg = _plain(ckpt.get("cfg"))
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        values.update({k: v for k, v in cfg["model"].items() if v is not None})
    f = _Fields(values, path, "cfg.model")
    layer_type = f.get_str("layer_type", "transformer")
    if layer_type != "transformer":
        raise ModelLoadError(path, f"encoder layer_type {layer_type!r} is not supported (only 'transformer')")
    if f.get_str("pos_enc_type", "abs") != "abs":
        raise ModelLoadError(
            path, f"pos_enc_type {values.get('pos_enc_type')!r} is not supported (only 'abs')"
        )
    if f.get_bool("conv_pos_batch_norm", False):
        raise ModelLoadError(path, "conv_pos_batch_norm=True is not supported")
    spec = values.get("conv_feature_layers", HUBERT_BASE_CONV_LAYERS)
    try:
        conv_layers = parse_conv_layers(spec)
    except ValueError as exc:
        raise ModelLoadError(
            path, f"cfg.model.conv_feature_layers {spec!r} is not a list of (dim, kernel, stride): {exc}"
        ) from None
    hidden = f.get_int("encoder_embed_dim", 768)
    config = HubertConfig(
        conv_layers=conv_layers,
        conv_bias=f.get_bool("conv_bias", False),
        extractor_mode=f.get_str("extractor_mode", "default"),
        hidden_size=hidden,
        num_layers=f.get_int("encoder_layers", 12),
        num_heads=f.get_int("encoder_attention_heads", 12),
        ffn_dim=f.get_int("encoder_ffn_embed_dim", 3072),
        conv_pos=f.get_int("conv_pos", 128),
        conv_pos_groups=f.get_int("conv_pos_groups", 16),
        layer_norm_first=f.get_bool("layer_norm_first", False),
        layer_norm_eps=1e-5,
        feature_layer_norm=True,
        has_projection=conv_layers[-1][0] != hidden,
        final_proj_dim=_final_proj_dim(state),
        activation=f.get_str("activation_fn", "gelu"),
        feat_activation="gelu",
    )
    _validate(config, path)
    return config


def _config_from_hf(values: Mapping[str, Any], state: Mapping[str, Any], path: Path) -> HubertConfig:
    f = _Fields(values, path, "config.json")
    model_type = values.get("model_type", "hubert")
    if model_type != "hubert":
        raise ModelLoadError(path, f"model_type {model_type!r} is not supported (expected 'hubert')")
    if f.get_bool("conv_pos_batch_norm", False):
        raise ModelLoadError(path, "conv_pos_batch_norm=true is not supported")
    dims = f.get_int_list("conv_dim") or [d for d, _, _ in HUBERT_BASE_CONV_LAYERS]
    kernels = f.get_int_list("conv_kernel") or [k for _, k, _ in HUBERT_BASE_CONV_LAYERS]
    strides = f.get_int_list("conv_stride") or [s for _, _, s in HUBERT_BASE_CONV_LAYERS]
    if not (len(dims) == len(kernels) == len(strides)):
        raise ModelLoadError(
            path,
            f"conv_dim, conv_kernel and conv_stride have different lengths ({len(dims)}, {len(kernels)}, {len(strides)})",
        )
    norm = f.get_str("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise ModelLoadError(path, f"feat_extract_norm {norm!r} is not 'group' or 'layer'")
    config = HubertConfig(
        conv_layers=tuple(zip(dims, kernels, strides)),
        conv_bias=f.get_bool("conv_bias", False),
        extractor_mode="default" if norm == "group" else "layer_norm",
        hidden_size=f.get_int("hidden_size", 768),
        num_layers=f.get_int("num_hidden_layers", 12),
        num_heads=f.get_int("num_attention_heads", 12),
        ffn_dim=f.get_int("intermediate_size", 3072),
        conv_pos=f.get_int("num_conv_pos_embeddings", 128),
        conv_pos_groups=f.get_int("num_conv_pos_embedding_groups", 16),
        layer_norm_first=f.get_bool("do_stable_layer_norm", False),
        layer_norm_eps=f.get_float("layer_norm_eps", 1e-5),
        feature_layer_norm=f.get_bool("feat_proj_layer_norm", True),
        has_projection=True,
        final_proj_dim=_final_proj_dim(state),
        activation=f.get_str("hidden_act", "gelu"),
        feat_activation=f.get_str("feat_extract_activation", "gelu"),
    )
    _validate(config, path)
    return config


def _validate(config: HubertConfig, path: Path) -> None:
    try:
        config.validate()
    except ValueError as exc:
        raise ModelLoadError(path, f"unsupported content-encoder configuration: {exc}") from None


def _build(
    config: HubertConfig,
    weights: dict[str, torch.Tensor],
    path: Path,
    device: str | torch.device,
    dtype: torch.dtype,
) -> HubertEncoder:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ParameterError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    with torch.device("meta"):
        model = HubertEncoder(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:  # pragma: no cover - _map_state already checked names and shapes
        raise ModelLoadError(path, f"weights do not fit the model: {exc}") from None
    model = model.to(device=torch.device(device), dtype=dtype)
    model.eval()
    release_memory()  # the file's tensors and the conversions' garbage back to the OS
    model.requires_grad_(False)
    model.source_path = str(path)
    return model


def _load_fairseq(
    path: Path, ckpt: Mapping[str, Any], device: str | torch.device, dtype: torch.dtype
) -> HubertEncoder:
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise ModelLoadError(path, "the fairseq checkpoint's 'model' entry is not a state dict")
    config = _config_from_fairseq(ckpt, state, path)
    weights = _map_state(state, config, "fairseq", path, dtype)
    model = _build(config, weights, path, device, dtype)
    model.source_format = "fairseq"
    return model


def _strip_base_prefix(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The base model's weights of a transformers head model (``hubert.encoder...``), as transformers loads them.

    A ``HubertFor...`` checkpoint names the base model's tensors ``hubert.*``; keys outside
    that prefix (a task head) stay as they are, so strict checking still reports them.
    """
    prefix = "hubert."
    if any(isinstance(k, str) and k.startswith("encoder.") for k in state):
        return state
    if not any(isinstance(k, str) and k.startswith(prefix + "encoder.") for k in state):
        return state
    out = {(k[len(prefix):] if isinstance(k, str) and k.startswith(prefix) else k): v for k, v in state.items()}
    if isinstance(state, dict):
        state.clear()  # the same tensors now live in ``out`` only
    return out


def _refuse_other_kind(obj: Any, path: Path) -> None:
    """A ModelLoadError saying what the file is when it is a voice, a training checkpoint or RMVPE weights."""
    kind = checkpoint_kind(obj)
    if kind is not None and kind != "encoder":
        raise ModelLoadError(path, kind_advice(kind, "a content encoder"))


def _load_hf(
    folder: Path,
    device: str | torch.device,
    dtype: torch.dtype,
    config_path: Path | None = None,
    weights_path: Path | None = None,
    state: Mapping[str, Any] | None = None,
) -> HubertEncoder:
    config_path = config_path or folder / "config.json"
    values = load_json(config_path, "content encoder config")
    if state is None:
        if weights_path is None:
            for name in ("model.safetensors", "pytorch_model.bin"):
                if (folder / name).is_file():
                    weights_path = folder / name
                    break
            else:
                raise ModelLoadError(
                    folder, "content encoder folder has neither model.safetensors nor pytorch_model.bin"
                )
        if weights_path.suffix.lower() == ".safetensors":
            state = load_safetensors(weights_path, "content encoder weights")
        else:
            state = load_torch_file(weights_path, "content encoder weights")
    assert weights_path is not None
    if not isinstance(state, Mapping):
        raise ModelLoadError(weights_path, "content encoder weights are not a state dict")
    _refuse_other_kind(state, weights_path)
    state = _strip_base_prefix(state)
    config = _config_from_hf(values, state, config_path)
    weights = _map_state(state, config, "hf", weights_path, dtype)
    model = _build(config, weights, weights_path, device, dtype)
    model.source_format = "hf"
    return model


def load_encoder(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> HubertEncoder:
    """Load a HuBERT / ContentVec content encoder from a fairseq ``.pt`` or a Hugging Face folder.

    ``path`` may be a fairseq checkpoint (``hubert_base.pt``: ``{'model', 'cfg'}`` or
    legacy ``{'model', 'args'}``), a transformers ``HubertModel`` folder (or its
    ``config.json``, or a ``.safetensors``/``.bin`` weights file next to a
    ``config.json``). Nothing in the files runs code; weights are checked strictly
    (every missing or unexpected tensor is reported), weight norm is folded and
    each weight is cast to float32 and then to ``dtype`` as it is mapped. The
    base-model weights of a transformers head model (keys ``hubert.*``) are read
    as transformers reads them, without the prefix.

    Raises:
        ModelLoadError: the file is missing, truncated, of another layout (a voice
            model, a training checkpoint or RMVPE weights: the message says which and
            where it belongs), its tensors do not match the configuration, or they
            are sparse or hold NaN / Inf (the message names the file).
        UnsafeFileError: the pickle would build objects that are not plain data.
        ParameterError: ``dtype`` or ``device`` is not usable (checked before reading).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ParameterError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = resolve_device(device)
    p = as_path(path, "content encoder")
    if p.is_dir():
        return _load_hf(p, device, dtype)
    suffix = p.suffix.lower()
    if suffix == ".json":
        check_file(p, "content encoder config")
        return _load_hf(p.parent, device, dtype, config_path=p)
    if suffix == ".safetensors":
        check_file(p, "content encoder weights")
        return _load_hf(p.parent, device, dtype, weights_path=p)
    obj = load_torch_file(p, "content encoder")
    _refuse_other_kind(obj, p)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj.get("model"), Mapping):
        return _load_fairseq(p, obj, device, dtype)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if (p.parent / "config.json").is_file():
            return _load_hf(p.parent, device, dtype, weights_path=p, state=obj)
        raise ModelLoadError(
            p,
            "this is a bare state dict without a config.json beside it; pass the Hugging Face folder instead",
        )
    raise ModelLoadError(
        p,
        "not a content-encoder checkpoint: expected a fairseq dict with 'model' and 'cfg' (or 'args'), "
        "or a Hugging Face HubertModel folder",
    )

"""Random-weight HuBERT / ContentVec encoders in the real file layouts (fairseq, transformers)."""

from __future__ import annotations

import json
import math
import os
import pickle
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..constants import SR_16K
from ..models.encoder.config import GELU_APPROXIMATE, HUBERT_BASE_CONV_LAYERS, HubertConfig
from ..models.encoder.conv_spec import check_conv_layers, format_conv_layers
from ..models.encoder.layout import key_table
from .voice import _is_weight_norm_key, _module_of

__all__ = ["random_hubert_state_dict", "save_random_hubert"]


def random_hubert_state_dict(
    config: HubertConfig,
    fmt: str = "fairseq",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    weight_norm_keys: str = "legacy",
) -> OrderedDict[str, torch.Tensor]:
    """Random weights for ``config`` with the exact key names and shapes of ``fmt``.

    ``fmt`` is ``"fairseq"`` (``hubert_base.pt``'s ``model`` dict, including the
    training-only ``mask_emb`` and ``label_embs_concat [504, final_dim]``) or ``"hf"``
    (transformers ``HubertModel`` + ``final_proj``, including ``masked_spec_embed``).
    The positional conv is weight-normed (``dim=2``) with ``weight_g``/``weight_v``
    (``weight_norm_keys="legacy"``) or ``parametrizations.weight.original0/1``.
    Values are scaled so activations stay in a realistic range.
    """
    if fmt not in ("fairseq", "hf"):
        raise ValueError(f"fmt must be 'fairseq' or 'hf', got {fmt!r}")
    if weight_norm_keys not in ("legacy", "parametrizations"):
        raise ValueError(f"weight_norm_keys must be 'legacy' or 'parametrizations', got {weight_norm_keys!r}")
    config.validate()
    gen = torch.Generator().manual_seed(int(seed))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    h = config.hidden_size
    for row in key_table(config):
        name = row.fairseq if fmt == "fairseq" else row.hf
        shape = row.shape
        is_norm = "norm." in row.internal
        if row.internal == "pos_conv.weight":
            std = math.sqrt(4.0 / (config.conv_pos * h))
            v = randn(*shape) * std
            g = v.double().pow(2).sum(dim=(0, 1), keepdim=True).sqrt().float() * (
                1.0 + 0.05 * randn(1, 1, shape[2])
            )
            base = name[: -len(".weight")]
            if weight_norm_keys == "legacy":
                out[f"{base}.weight_g"], out[f"{base}.weight_v"] = g, v
            else:
                out[f"{base}.parametrizations.weight.original0"] = g
                out[f"{base}.parametrizations.weight.original1"] = v
            continue
        if is_norm and name.endswith("weight"):
            t = 1.0 + 0.1 * randn(*shape)
        elif name.endswith("bias"):
            t = 0.02 * randn(*shape)
        else:
            fan_in = math.prod(shape[1:])
            t = randn(*shape) / math.sqrt(fan_in)
        out[name] = t
    if fmt == "fairseq" and config.final_proj_dim is not None:
        out["label_embs_concat"] = randn(504, config.final_proj_dim) * 0.1
    mask_emb = torch.rand(h, generator=gen)
    if fmt == "hf":
        out["masked_spec_embed"] = mask_emb
    else:
        out["mask_emb"] = mask_emb
        out.move_to_end("mask_emb", last=False)
    return OrderedDict((key, out[key].to(dtype).contiguous()) for key in _reference_order(out, fmt))


def _reference_order(state: Mapping[str, torch.Tensor], fmt: str) -> list[str]:
    """The keys in the order of the reference ``state_dict()`` (fairseq or transformers).

    Both attention classes register ``k_proj``, ``v_proj``, ``q_proj``, ``out_proj``;
    weight norm puts the positional conv's bias before ``weight_g``/``weight_v``;
    transformers' ``masked_spec_embed`` is a parameter of the model itself, so it comes first.
    """
    groups: dict[str, list[str]] = {}
    for key in state:
        groups.setdefault(_module_of(key), []).append(key)
    modules: list[str] = []
    for module in groups:
        if module.endswith(".q_proj"):
            continue
        modules.append(module)
        if module.endswith(".v_proj"):
            modules.append(module[: -len("v_proj")] + "q_proj")
    if fmt == "hf" and "masked_spec_embed" in groups:
        modules.remove("masked_spec_embed")
        modules.insert(0, "masked_spec_embed")
    return [key for module in modules for key in sorted(groups[module], key=_is_weight_norm_key)]


def _fairseq_model_cfg(config: HubertConfig) -> dict[str, Any]:
    return {
        "_name": "hubert",
        "label_rate": 50.0,
        "extractor_mode": config.extractor_mode,
        "encoder_layers": config.num_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.ffn_dim,
        "encoder_attention_heads": config.num_heads,
        "activation_fn": config.activation,
        "layer_type": "transformer",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": config.final_proj_dim or 256,
        "untie_final_proj": True,
        "layer_norm_first": config.layer_norm_first,
        "conv_feature_layers": format_conv_layers(config.conv_layers),
        "conv_bias": config.conv_bias,
        "logit_temp": 0.1,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.8,
        "mask_selection": "static",
        "mask_other": 0.0,
        "no_mask_overlap": False,
        "mask_min_space": 1,
        "mask_channel_length": 10,
        "mask_channel_prob": 0.0,
        "mask_channel_selection": "static",
        "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False,
        "mask_channel_min_space": 1,
        "conv_pos": config.conv_pos,
        "conv_pos_groups": config.conv_pos_groups,
        "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False,
        "skip_nomask": False,
        "checkpoint_activations": False,
        "required_seq_len_multiple": 2,
    }


def _fairseq_task_cfg() -> dict[str, Any]:
    return {
        "_name": "hubert_pretraining",
        "data": "",
        "fine_tuning": False,
        "labels": ["km"],
        "label_dir": None,
        "label_rate": 50.0,
        "sample_rate": SR_16K,
        "normalize": False,
        "enable_padding": False,
        "max_keep_size": None,
        "max_sample_size": 250000,
        "min_sample_size": 32000,
        "single_target": False,
        "random_crop": True,
        "pad_audio": False,
    }


def _hf_config_dict(config: HubertConfig) -> dict[str, Any]:
    act = {"none": "gelu", "tanh": "gelu_new"}
    return {
        "activation_dropout": 0.1,
        "apply_spec_augment": True,
        "attention_dropout": 0.1,
        "bos_token_id": 1,
        "classifier_proj_size": config.final_proj_dim or 256,
        "conv_bias": config.conv_bias,
        "conv_dim": [d for d, _, _ in config.conv_layers],
        "conv_kernel": [k for _, k, _ in config.conv_layers],
        "conv_pos_batch_norm": False,
        "conv_stride": [s for _, _, s in config.conv_layers],
        "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": False,
        "do_stable_layer_norm": config.layer_norm_first,
        "eos_token_id": 2,
        "feat_extract_activation": act[GELU_APPROXIMATE[config.feat_activation]],
        "feat_extract_norm": "group" if config.extractor_mode == "default" else "layer",
        "feat_proj_dropout": 0.0,
        "feat_proj_layer_norm": config.feature_layer_norm,
        "final_dropout": 0.1,
        "hidden_act": act[GELU_APPROXIMATE[config.activation]],
        "hidden_dropout": 0.1,
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.ffn_dim,
        "layer_norm_eps": config.layer_norm_eps,
        "layerdrop": 0.1,
        "mask_feature_length": 10,
        "mask_feature_min_masks": 0,
        "mask_feature_prob": 0.0,
        "mask_time_length": 10,
        "mask_time_min_masks": 2,
        "mask_time_prob": 0.05,
        "model_type": "hubert",
        "num_attention_heads": config.num_heads,
        "num_conv_pos_embedding_groups": config.conv_pos_groups,
        "num_conv_pos_embeddings": config.conv_pos,
        "num_feat_extract_layers": len(config.conv_layers),
        "num_hidden_layers": config.num_layers,
        "pad_token_id": 0,
        "transformers_version": "4.46.3",
        "use_weighted_layer_sum": False,
        "vocab_size": 32,
    }


def _fairseq_pickle_module(stub_classes: tuple[type, ...]) -> types.ModuleType:
    """A pickle 'module' for ``torch.save`` that writes ``stub_classes`` under their fake names.

    Pickle normally refuses a class whose ``__module__`` cannot be imported; this
    pure-Python pickler writes the GLOBAL opcode for those classes directly, so no
    fake module has to be put into ``sys.modules``.
    """

    class _Pickler(pickle._Pickler):
        # the pure-Python pickler's undocumented internals, which typeshed leaves out
        write: Callable[[bytes], Any]
        memoize: Callable[[Any], None]

        def save_global(self, obj: Any, name: str | None = None) -> None:
            if any(obj is cls for cls in stub_classes):
                self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode())
                self.memoize(obj)
                return
            super().save_global(obj, name)  # type: ignore[misc]  # undocumented, absent from typeshed

    module = types.ModuleType("rvcfast_fairseq_pickle")
    module.Pickler = _Pickler  # type: ignore[attr-defined]
    return module


def _fairseq_dictionary(dict_cls: type, num_labels: int) -> Any:
    """An instance with the ``__dict__`` of fairseq's label ``Dictionary`` for ``num_labels`` k-means classes."""
    d: Any = object.__new__(dict_cls)  # a plain class: no __init__, as unpickling makes it
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(num_labels)]
    d.__dict__.update(
        {
            "bos_word": "<s>",
            "unk_word": "<unk>",
            "pad_word": "<pad>",
            "eos_word": "</s>",
            "symbols": symbols,
            "count": [1, 1, 1, 1] + [1000] * num_labels,
            "indices": {s: i for i, s in enumerate(symbols)},
            "bos_index": 0,
            "pad_index": 1,
            "eos_index": 2,
            "unk_index": 3,
            "nspecial": 4,
        }
    )
    return d


def save_random_hubert(
    path_or_dir: str | os.PathLike[str],
    fmt: str = "fairseq",
    *,
    layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    conv_layers: Sequence[tuple[int, int, int]] = HUBERT_BASE_CONV_LAYERS,
    conv_pos: int = 128,
    conv_pos_groups: int = 16,
    final_dim: int | None = 256,
    extractor_mode: str = "default",
    layer_norm_first: bool = False,
    conv_bias: bool = False,
    seed: int = 0,
    weight_norm_keys: str = "legacy",
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a random-weight HuBERT / ContentVec in a real file format; returns what to pass to :func:`load_encoder`.

    ``fmt="fairseq"``: a ``hubert_base.pt``-style checkpoint (``path_or_dir`` is the
    file, or a folder that receives ``hubert_base.pt``) with ``model`` (fp16 tensors,
    legacy weight-norm keys, ``label_embs_concat``, ``mask_emb``), ``cfg`` (plain dicts:
    ``model``, ``task``), ``args=None``, ``optimizer_history``, ``extra_state`` and
    ``task_state`` whose ``dictionaries`` hold one pickled
    ``fairseq.data.dictionary.Dictionary`` (so ``weights_only`` loading needs the same
    allow-listing as the real file).

    ``fmt="hf"``: a folder (``path_or_dir``) with ``config.json`` (transformers
    ``HubertConfig`` fields) and ``pytorch_model.bin`` (plain state dict, Applio's
    ``final_proj`` included when ``final_dim`` is not None).

    The defaults are full-size HuBERT-base. The same ``seed`` and sizes give the
    same weights in both formats.
    """
    config = HubertConfig(
        conv_layers=check_conv_layers(conv_layers),
        conv_bias=conv_bias,
        extractor_mode=extractor_mode,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        ffn_dim=ffn,
        conv_pos=conv_pos,
        conv_pos_groups=conv_pos_groups,
        layer_norm_first=layer_norm_first,
        has_projection=True if fmt == "hf" else conv_layers[-1][0] != hidden,
        final_proj_dim=final_dim,
    )
    state = random_hubert_state_dict(config, fmt, seed=seed, dtype=dtype, weight_norm_keys=weight_norm_keys)
    p = Path(path_or_dir)
    if fmt == "hf":
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(_hf_config_dict(config), indent=2) + "\n", encoding="utf-8")
        torch.save(state, p / "pytorch_model.bin")
        return p
    if p.is_dir():
        p = p / "hubert_base.pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    dict_cls = type("Dictionary", (), {"__module__": "fairseq.data.dictionary", "__qualname__": "Dictionary"})
    ckpt = {
        "args": None,
        "cfg": {
            "_name": None,
            "common": {"_name": None, "fp16": True, "seed": 1337, "log_interval": 200},
            "model": _fairseq_model_cfg(config),
            "task": _fairseq_task_cfg(),
            "criterion": {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0},
        },
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 100000,
            }
        ],
        "task_state": {"dictionaries": [_fairseq_dictionary(dict_cls, 500)]},
        "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}, "val_loss": 2.5},
    }
    torch.save(ckpt, p, pickle_module=_fairseq_pickle_module((dict_cls,)))
    return p

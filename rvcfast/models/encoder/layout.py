"""Where each tensor of the encoder lives in the two file layouts (fairseq, transformers)."""

from __future__ import annotations

from typing import NamedTuple

from .config import HubertConfig

__all__ = ["StateKey", "key_table"]


class StateKey(NamedTuple):
    """One tensor: its name in :class:`~.network.HubertEncoder`, in fairseq's and in
    transformers' state dicts, and its shape."""

    internal: str
    fairseq: str
    hf: str
    shape: tuple[int, ...]


def key_table(cfg: HubertConfig) -> list[StateKey]:
    """Every tensor of the model: internal name, fairseq name, transformers name, shape."""
    rows: list[StateKey] = []
    c_in = 1
    for i, (dim, kernel, _) in enumerate(cfg.conv_layers):
        fs, hf, me = (
            f"feature_extractor.conv_layers.{i}",
            f"feature_extractor.conv_layers.{i}",
            f"conv_layers.{i}",
        )
        rows.append(StateKey(f"{me}.conv.weight", f"{fs}.0.weight", f"{hf}.conv.weight", (dim, c_in, kernel)))
        if cfg.conv_bias:
            rows.append(StateKey(f"{me}.conv.bias", f"{fs}.0.bias", f"{hf}.conv.bias", (dim,)))
        if cfg.extractor_mode == "layer_norm":
            norm_fs: str | None = f"{fs}.2.1"
        else:
            norm_fs = f"{fs}.2" if i == 0 else None
        if norm_fs is not None:
            for p in ("weight", "bias"):
                rows.append(StateKey(f"{me}.norm.{p}", f"{norm_fs}.{p}", f"{hf}.layer_norm.{p}", (dim,)))
        c_in = dim
    h = cfg.hidden_size
    if cfg.feature_layer_norm:
        for p in ("weight", "bias"):
            rows.append(
                StateKey(
                    f"feature_norm.{p}",
                    f"layer_norm.{p}",
                    f"feature_projection.layer_norm.{p}",
                    (cfg.conv_dim,),
                )
            )
    if cfg.has_projection:
        rows.append(
            StateKey(
                "projection.weight",
                "post_extract_proj.weight",
                "feature_projection.projection.weight",
                (h, cfg.conv_dim),
            )
        )
        rows.append(
            StateKey("projection.bias", "post_extract_proj.bias", "feature_projection.projection.bias", (h,))
        )
    rows.append(
        StateKey(
            "pos_conv.weight",
            "encoder.pos_conv.0.weight",
            "encoder.pos_conv_embed.conv.weight",
            (h, h // cfg.conv_pos_groups, cfg.conv_pos),
        )
    )
    rows.append(StateKey("pos_conv.bias", "encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias", (h,)))
    for p in ("weight", "bias"):
        rows.append(StateKey(f"encoder_norm.{p}", f"encoder.layer_norm.{p}", f"encoder.layer_norm.{p}", (h,)))
    for i in range(cfg.num_layers):
        me, fs, hf = f"layers.{i}", f"encoder.layers.{i}", f"encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            rows.append(
                StateKey(
                    f"{me}.{proj}.weight",
                    f"{fs}.self_attn.{proj}.weight",
                    f"{hf}.attention.{proj}.weight",
                    (h, h),
                )
            )
            rows.append(
                StateKey(f"{me}.{proj}.bias", f"{fs}.self_attn.{proj}.bias", f"{hf}.attention.{proj}.bias", (h,))
            )
        for p in ("weight", "bias"):
            rows.append(
                StateKey(f"{me}.attn_norm.{p}", f"{fs}.self_attn_layer_norm.{p}", f"{hf}.layer_norm.{p}", (h,))
            )
        rows.append(
            StateKey(
                f"{me}.fc1.weight",
                f"{fs}.fc1.weight",
                f"{hf}.feed_forward.intermediate_dense.weight",
                (cfg.ffn_dim, h),
            )
        )
        rows.append(
            StateKey(
                f"{me}.fc1.bias",
                f"{fs}.fc1.bias",
                f"{hf}.feed_forward.intermediate_dense.bias",
                (cfg.ffn_dim,),
            )
        )
        rows.append(
            StateKey(
                f"{me}.fc2.weight",
                f"{fs}.fc2.weight",
                f"{hf}.feed_forward.output_dense.weight",
                (h, cfg.ffn_dim),
            )
        )
        rows.append(StateKey(f"{me}.fc2.bias", f"{fs}.fc2.bias", f"{hf}.feed_forward.output_dense.bias", (h,)))
        for p in ("weight", "bias"):
            rows.append(
                StateKey(f"{me}.ffn_norm.{p}", f"{fs}.final_layer_norm.{p}", f"{hf}.final_layer_norm.{p}", (h,))
            )
    if cfg.final_proj_dim is not None:
        rows.append(
            StateKey("final_proj.weight", "final_proj.weight", "final_proj.weight", (cfg.final_proj_dim, h))
        )
        rows.append(StateKey("final_proj.bias", "final_proj.bias", "final_proj.bias", (cfg.final_proj_dim,)))
    return rows

"""Random-weight RVC voice models (``.pth``) in the exact file format RVC and Applio write."""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.synthesizer import Synthesizer, rvc_config
from ..models.synthesizer.decoders import DEFAULT_VOCODER

__all__ = ["save_random_voice_model", "random_voice_state"]


def save_random_voice_model(
    path: str | os.PathLike[str],
    version: str = "v2",
    sr: int | str = 40000,
    f0: bool = True,
    *,
    seed: int = 0,
    num_speakers: int = 109,
    inter_channels: int = 192,
    hidden_channels: int = 192,
    filter_channels: int = 768,
    n_heads: int = 2,
    n_layers: int = 6,
    upsample_initial_channel: int = 512,
    sr_style: str = "rvc",
    weight_norm_keys: str = "legacy",
    vocoder: str | None = None,
    info: str = "rvcfast random weights",
) -> Path:
    """Write a voice model with random weights in the exact RVC ``.pth`` format.

    The file is what RVC's ``extract_small_model``/``savee`` writes: an OrderedDict with
    ``weight`` (generator state dict without ``enc_q``, every tensor fp16, weight-normed
    layers as ``weight_g``/``weight_v``), ``config`` (18 values, :func:`rvc_config`),
    ``info``, ``sr`` (``"40k"``; ``sr_style="applio"`` writes ``40000``), ``f0`` (1/0) and
    ``version``. With the default widths the model is full size (27-29 M parameters, about
    55 MB); pass smaller widths for quick tests -- the decoder geometry for
    ``(version, sr)`` stays the real one.

    Args:
        weight_norm_keys: ``"legacy"`` (``weight_g``/``weight_v``, as RVC and Applio
            store them) or ``"parametrizations"`` (``parametrizations.weight.original0/1``).
        vocoder: if given, the decoder (``"HiFi-GAN"``, ``"MRF HiFi-GAN"``, ``"RefineGAN"``)
            whose weights are written, stored as the ``vocoder`` entry too. For Applio's
            whole file layout use :func:`rvcfast.testing.save_random_applio_model`.

    Returns the path written. The weights depend only on the arguments (``seed``).
    """
    if sr_style not in ("rvc", "applio"):
        raise ValueError(f"sr_style must be 'rvc' or 'applio', got {sr_style!r}")
    if weight_norm_keys not in ("legacy", "parametrizations"):
        raise ValueError(f"weight_norm_keys must be 'legacy' or 'parametrizations', got {weight_norm_keys!r}")
    config = rvc_config(
        version,
        sr,
        inter_channels=inter_channels,
        hidden_channels=hidden_channels,
        filter_channels=filter_channels,
        n_heads=n_heads,
        n_layers=n_layers,
        upsample_initial_channel=upsample_initial_channel,
        num_speakers=num_speakers,
    )
    with torch.device("meta"):
        model = Synthesizer(config, version=version, has_f0=f0, vocoder=vocoder or DEFAULT_VOCODER)
    weight = random_voice_state(model, seed=seed, weight_norm_keys=weight_norm_keys)
    rate = int(config[17])
    ckpt: collections.OrderedDict[str, Any] = collections.OrderedDict()
    ckpt["weight"] = weight
    ckpt["config"] = config
    ckpt["info"] = info
    ckpt["sr"] = f"{rate // 1000}k" if sr_style == "rvc" else rate
    ckpt["f0"] = int(bool(f0))
    ckpt["version"] = version
    if vocoder is not None:
        ckpt["vocoder"] = vocoder
    out = Path(path)
    torch.save(ckpt, out)
    return out


def random_voice_state(
    model: Synthesizer, *, seed: int = 0, weight_norm_keys: str = "legacy"
) -> collections.OrderedDict[str, torch.Tensor]:
    """Random fp16 weights for every tensor of ``model`` (which may live on the meta device).

    Weight-normed layers are stored as ``weight_g``/``weight_v`` (``"legacy"``) or
    ``parametrizations.weight.original0/1``; the values depend only on ``seed``.
    """
    if weight_norm_keys not in ("legacy", "parametrizations"):
        raise ValueError(f"weight_norm_keys must be 'legacy' or 'parametrizations', got {weight_norm_keys!r}")
    gen = torch.Generator().manual_seed(int(seed))
    state: dict[str, torch.Tensor] = {}
    wn_modules = {name for name, m in model.named_modules() if getattr(m, "_rvc_weight_norm", False)}
    for name, meta in model.state_dict().items():
        shape = tuple(meta.shape)
        noise = torch.randn(shape, generator=gen) * 0.02
        if name.endswith(".gamma"):
            value = 1.0 + noise
        elif name.startswith(("dec.ups.", "dec.resblocks.")) and name.endswith(".weight"):
            value = torch.randn(shape, generator=gen) * 0.01 + noise  # RVC's init_weights, perturbed
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:]) if not name.startswith("emb") else shape[-1]
            if ".emb_rel_" in name:
                fan_in = shape[-1]
            value = torch.randn(shape, generator=gen) / math.sqrt(max(fan_in, 1)) + noise
        else:
            value = noise
        module_name = name.rsplit(".", 1)[0]
        if module_name in wn_modules and name.endswith(".weight"):
            g = value.double().pow(2).sum(dim=tuple(range(1, value.dim())), keepdim=True).sqrt().float()
            if weight_norm_keys == "legacy":
                state[module_name + ".weight_g"] = g
                state[module_name + ".weight_v"] = value
            else:
                state[module_name + ".parametrizations.weight.original0"] = g
                state[module_name + ".parametrizations.weight.original1"] = value
        else:
            state[name] = value
    return collections.OrderedDict((k, state[k].half()) for k in _reference_order(state))


_WN_LEAVES = ("weight_g", "weight_v", "parametrizations.weight.original0", "parametrizations.weight.original1")


def _is_weight_norm_key(key: str) -> bool:
    return any(key.endswith("." + leaf) for leaf in _WN_LEAVES)


def _module_of(key: str) -> str:
    for leaf in _WN_LEAVES:
        if key.endswith("." + leaf):
            return key[: -len(leaf) - 1]
    return key.rsplit(".", 1)[0]


def _reference_order(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of ``state`` in the order the reference ``state_dict()`` gives them.

    Weight norm (the legacy hook and the parametrization alike) re-registers the weight
    after the bias, so a weight-normed layer's ``bias`` precedes its ``weight_g``/``weight_v``.
    The HiFi-GAN decoders (NSF and plain) register ``m_source`` first and ``cond`` last.
    """
    groups: dict[str, list[str]] = {}
    for key in state:
        groups.setdefault(_module_of(key), []).append(key)
    modules = list(groups)
    if "dec.ups.0" in groups:  # rvcfast's HiFi-GAN registers these elsewhere
        dec = [m for m in modules if m.startswith("dec.")]
        first = modules.index(dec[0])
        source = [m for m in dec if m.startswith("dec.m_source.")]
        cond = [m for m in dec if m == "dec.cond"]
        middle = [m for m in dec if m not in source and m not in cond]
        rest = [m for m in modules if not m.startswith("dec.")]
        modules = rest[:first] + source + middle + cond + rest[first:]
    return [key for module in modules for key in sorted(groups[module], key=_is_weight_norm_key)]

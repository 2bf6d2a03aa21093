"""Random-weight voice models in the exact file layout Applio writes (any of its vocoders)."""

from __future__ import annotations

import collections
import datetime
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.synthesizer import Synthesizer
from ..models.synthesizer.config import config_from_geometry
from .voice import random_voice_state

__all__ = ["APPLIO_SAMPLE_RATE_CONFIGS", "applio_config", "save_random_applio_model"]

#: Applio's ``rvc/configs/<sr>.json`` decoder geometry per sample rate:
#: ``(spec_channels = filter_length // 2 + 1, upsample_rates, upsample_kernel_sizes)``.
#: 24 kHz is the geometry of Applio's RefineGAN pretrain.
APPLIO_SAMPLE_RATE_CONFIGS: Mapping[int, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    24000: (513, (10, 6, 2, 2), (20, 12, 4, 4)),
    32000: (513, (10, 8, 2, 2), (20, 16, 4, 4)),
    40000: (1025, (10, 10, 2, 2), (16, 16, 4, 4)),
    48000: (1025, (12, 10, 2, 2), (24, 20, 4, 4)),
}


def applio_config(
    sr: int = 40000,
    *,
    inter_channels: int = 192,
    hidden_channels: int = 192,
    filter_channels: int = 768,
    n_heads: int = 2,
    n_layers: int = 6,
    upsample_initial_channel: int = 512,
    num_speakers: int = 109,
    gin_channels: int = 256,
) -> list[Any]:
    """The 18-value ``config`` Applio's ``extract_model`` writes for ``rvc/configs/<sr>.json``.

    The keyword arguments shrink the model for fast tests; the decoder geometry stays
    Applio's. (RefineGAN ignores the widths of config[10], [11], [13] and [14].)
    """
    if sr not in APPLIO_SAMPLE_RATE_CONFIGS:
        raise ValueError(f"Applio has no config for {sr} Hz; known: {sorted(APPLIO_SAMPLE_RATE_CONFIGS)}")
    return config_from_geometry(
        APPLIO_SAMPLE_RATE_CONFIGS[sr],
        sr,
        inter_channels=inter_channels,
        hidden_channels=hidden_channels,
        filter_channels=filter_channels,
        n_heads=n_heads,
        n_layers=n_layers,
        upsample_initial_channel=upsample_initial_channel,
        num_speakers=num_speakers,
        gin_channels=gin_channels,
    )


def save_random_applio_model(
    path: str | os.PathLike[str],
    sr: int = 40000,
    vocoder: str = "HiFi-GAN",
    *,
    seed: int = 0,
    num_speakers: int = 1,
    inter_channels: int = 192,
    hidden_channels: int = 192,
    filter_channels: int = 768,
    n_heads: int = 2,
    n_layers: int = 6,
    upsample_initial_channel: int = 512,
    f0: bool = True,
    embedder_model: str | None = "contentvec",
    model_name: str = "random",
    epoch: int = 1,
    step: int = 1,
) -> Path:
    """Write a random-weight voice model exactly as Applio's ``extract_model`` saves it.

    An OrderedDict with ``weight`` (a dict of fp16 tensors without ``enc_q``, weight
    norm as legacy ``weight_g``/``weight_v``), ``config`` (:func:`applio_config`),
    ``epoch``, ``step``, ``sr`` (int), ``f0`` (bool), ``version`` (``"v2"``),
    ``creation_date``, ``model_hash``, ``dataset_length``, ``model_name``, ``author``,
    ``embedder_model``, ``speakers_id`` and ``vocoder`` (``"HiFi-GAN"``,
    ``"MRF HiFi-GAN"`` or ``"RefineGAN"``). The weights depend only on the arguments.

    ``f0=False`` with MRF HiFi-GAN or RefineGAN writes the decoder-less file Applio
    would produce (no ``dec.*`` weights) -- useful only to test that it is refused.
    """
    config = applio_config(
        sr,
        inter_channels=inter_channels,
        hidden_channels=hidden_channels,
        filter_channels=filter_channels,
        n_heads=n_heads,
        n_layers=n_layers,
        upsample_initial_channel=upsample_initial_channel,
        num_speakers=num_speakers,
    )
    decoder = vocoder if f0 or vocoder == "HiFi-GAN" else "HiFi-GAN"
    with torch.device("meta"):
        model = Synthesizer(config, version="v2", has_f0=f0, vocoder=decoder)
    weight = dict(random_voice_state(model, seed=seed))
    if decoder != vocoder:
        weight = {k: v for k, v in weight.items() if not k.startswith("dec.")}
    ckpt: collections.OrderedDict[str, Any] = collections.OrderedDict()
    ckpt["weight"] = weight
    ckpt["config"] = config
    ckpt["epoch"] = epoch
    ckpt["step"] = step
    ckpt["sr"] = sr
    ckpt["f0"] = bool(f0)
    ckpt["version"] = "v2"
    ckpt["creation_date"] = datetime.datetime(2025, 1, 1).isoformat()
    ckpt["model_hash"] = hashlib.sha256(f"{model_name}-{epoch}-{step}-{sr}-v2-{config}".encode()).hexdigest()
    ckpt["dataset_length"] = None
    ckpt["model_name"] = model_name
    ckpt["author"] = None
    ckpt["embedder_model"] = embedder_model
    ckpt["speakers_id"] = num_speakers
    ckpt["vocoder"] = vocoder
    out = Path(path)
    torch.save(ckpt, out)
    return out

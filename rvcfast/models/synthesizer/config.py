"""The synthesizer's 18-value config list: parsing, validation and RVC's real values."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...constants import F0_HOP, SR_16K

__all__ = ["Arch", "parse_config", "parse_sr", "rvc_config", "RVC_SAMPLE_RATE_CONFIGS", "FEATURE_DIMS"]

#: Decoder geometry of the real RVC configs, per ``(version, sample_rate)``:
#: ``(spec_channels, upsample_rates, upsample_kernel_sizes)`` (rvc.md §3.5; v2 40k uses
#: the v1 40k file).
RVC_SAMPLE_RATE_CONFIGS: Mapping[tuple[str, int], tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    ("v1", 32000): (513, (10, 4, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v1", 40000): (1025, (10, 10, 2, 2), (16, 16, 4, 4)),
    ("v1", 48000): (1025, (10, 6, 2, 2, 2), (16, 16, 4, 4, 4)),
    ("v2", 32000): (513, (10, 8, 2, 2), (20, 16, 4, 4)),
    ("v2", 40000): (1025, (10, 10, 2, 2), (16, 16, 4, 4)),
    ("v2", 48000): (1025, (12, 10, 2, 2), (24, 20, 4, 4)),
}

#: Extra geometry seen in forks (Applio's 24 kHz pretrain), used only to recognise
#: training checkpoints that carry no config: ``(sr, spec_channels, rates, kernels)``.
OTHER_GEOMETRIES: tuple[tuple[int, int, tuple[int, ...], tuple[int, ...]], ...] = (
    (24000, 513, (10, 6, 2, 2), (20, 12, 4, 4)),
)

#: Feature frames per second at the synthesizer's input (one per F0 hop at 16 kHz).
FRAME_RATE = SR_16K // F0_HOP

#: Content-feature width per model version.
FEATURE_DIMS = {"v1": 256, "v2": 768}


@dataclass(frozen=True)
class Arch:
    """The 18 positional synthesizer arguments of a voice file, validated."""

    spec_channels: int
    segment_size: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sr: int


def parse_sr(value: Any) -> int:
    """``40000``, ``"40000"``, ``"40k"`` or ``40000.0`` -> 40000; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"sample rate {value!r} is not a number")
    if isinstance(value, int):
        sr = value
    elif isinstance(value, float) and value.is_integer():
        sr = int(value)
    elif isinstance(value, str):
        sr = _parse_sr_text(value)
    else:
        raise ValueError(f"sample rate {value!r} is not a number")
    if not 1000 <= sr <= 384000:
        raise ValueError(f"sample rate {sr} is out of range")
    return sr


def _parse_sr_text(value: str) -> int:
    text = value.strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*k(?:hz)?", text)
    if m:
        return int(round(float(m.group(1)) * 1000))
    if re.fullmatch(r"\d+", text):
        return int(text)
    raise ValueError(f"sample rate {value!r} is not understood")


def _as_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _as_int_list(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a non-empty list of integers, got {value!r}")
    return tuple(_as_int(v, name) for v in value)


def _parse_resblocks(config: Sequence[Any]) -> tuple[str, tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """``(resblock, kernel sizes, dilations)`` from config[9:12]."""
    resblock = str(config[9])
    if resblock not in ("1", "2"):
        raise ValueError(f"config[9] (resblock) must be '1' or '2', got {config[9]!r}")
    kernels = _as_int_list(config[10], "config[10] (resblock_kernel_sizes)")
    dil_raw = config[11]
    if not isinstance(dil_raw, (list, tuple)) or len(dil_raw) != len(kernels):
        raise ValueError(
            f"config[11] (resblock_dilation_sizes) must be a list of {len(kernels)} lists, got {dil_raw!r}"
        )
    dilations = tuple(_as_int_list(d, "config[11] (resblock_dilation_sizes)") for d in dil_raw)
    if resblock == "2" and any(len(d) < 2 for d in dilations):
        raise ValueError("config[11]: resblock '2' needs two dilations per block")
    return resblock, kernels, dilations


def _parse_upsampling(config: Sequence[Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(upsample rates, kernel sizes)`` from config[12] and config[14], checked to upsample exactly."""
    rates = _as_int_list(config[12], "config[12] (upsample_rates)")
    up_kernels = _as_int_list(config[14], "config[14] (upsample_kernel_sizes)")
    if len(up_kernels) != len(rates):
        raise ValueError(
            f"config[12] and config[14] must have the same length, got {list(rates)} and {list(up_kernels)}"
        )
    for u, k in zip(rates, up_kernels):
        if u % 2 == 0 and (k - u) % 2 != 0:
            raise ValueError(f"upsample kernel {k} with rate {u} would not upsample exactly {u}x")
        if u % 2 == 1 and k - u - 2 * (u // 2 + 1) + 1 != 0:
            raise ValueError(f"upsample kernel {k} with odd rate {u} would not upsample exactly {u}x")
    return rates, up_kernels


def parse_config(config: Any) -> Arch:
    """Validate RVC's 18-element config list; raises ValueError naming the bad entry."""
    if not isinstance(config, (list, tuple)):
        raise ValueError(f"config must be a list of 18 values, got {type(config).__name__}")
    if len(config) != 18:
        raise ValueError(f"config must have 18 values, got {len(config)}")
    resblock, kernels, dilations = _parse_resblocks(config)
    rates, up_kernels = _parse_upsampling(config)
    hidden = _as_int(config[3], "config[3] (hidden_channels)")
    n_heads = _as_int(config[5], "config[5] (n_heads)")
    if hidden % n_heads:
        raise ValueError(f"hidden_channels {hidden} is not divisible by n_heads {n_heads}")
    inter = _as_int(config[2], "config[2] (inter_channels)")
    if inter % 2:
        raise ValueError(f"inter_channels must be even, got {inter}")
    up_init = _as_int(config[13], "config[13] (upsample_initial_channel)")
    if up_init >> len(rates) < 1:
        raise ValueError(f"upsample_initial_channel {up_init} is too small for {len(rates)} upsampling stages")
    p_dropout = config[8]
    if isinstance(p_dropout, bool) or not isinstance(p_dropout, (int, float)):
        raise ValueError(f"config[8] (p_dropout) must be a number, got {p_dropout!r}")
    sr = parse_sr(config[17])
    hop = math.prod(rates)
    if sr != FRAME_RATE * hop:
        # RVC runs 100 feature frames per second and the decoder makes prod(upsample_rates) samples
        # per frame: any other rate plays the audio at the wrong speed and pitch
        raise ValueError(
            f"config[17] (sample rate) {sr} does not fit the decoder: upsample_rates {list(rates)} make {hop} "
            f"samples per frame, i.e. {FRAME_RATE * hop} Hz at {FRAME_RATE} frames per second"
        )
    return Arch(
        spec_channels=_as_int(config[0], "config[0] (spec_channels)"),
        segment_size=_as_int(config[1], "config[1] (segment_size)"),
        inter_channels=inter,
        hidden_channels=hidden,
        filter_channels=_as_int(config[4], "config[4] (filter_channels)"),
        n_heads=n_heads,
        n_layers=_as_int(config[6], "config[6] (n_layers)"),
        kernel_size=_as_int(config[7], "config[7] (kernel_size)"),
        p_dropout=float(p_dropout),
        resblock=resblock,
        resblock_kernel_sizes=kernels,
        resblock_dilation_sizes=dilations,
        upsample_rates=rates,
        upsample_initial_channel=up_init,
        upsample_kernel_sizes=up_kernels,
        spk_embed_dim=_as_int(config[15], "config[15] (spk_embed_dim)"),
        gin_channels=_as_int(config[16], "config[16] (gin_channels)"),
        sr=sr,
    )


def rvc_config(
    version: str = "v2",
    sr: int | str = 40000,
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
    """The 18-element config list RVC writes for ``(version, sr)``.

    With the default widths this is exactly the list in RVC's ``configs/{v1,v2}/*.json``;
    the keyword arguments shrink the model (e.g. for fast tests) while keeping the real
    decoder geometry (upsample rates and kernels, resblocks, gin channels).
    """
    rate = parse_sr(sr)
    key = (str(version), rate)
    if key not in RVC_SAMPLE_RATE_CONFIGS:
        raise ValueError(f"no RVC config for version {version!r} at {rate} Hz; known: {sorted(RVC_SAMPLE_RATE_CONFIGS)}")
    return config_from_geometry(
        RVC_SAMPLE_RATE_CONFIGS[key],
        rate,
        inter_channels=inter_channels,
        hidden_channels=hidden_channels,
        filter_channels=filter_channels,
        n_heads=n_heads,
        n_layers=n_layers,
        upsample_initial_channel=upsample_initial_channel,
        num_speakers=num_speakers,
        gin_channels=gin_channels,
    )


def config_from_geometry(
    geometry: tuple[int, Sequence[int], Sequence[int]],
    sr: int,
    *,
    inter_channels: int,
    hidden_channels: int,
    filter_channels: int,
    n_heads: int,
    n_layers: int,
    upsample_initial_channel: int,
    num_speakers: int,
    gin_channels: int,
) -> list[Any]:
    """The 18-element config list for one decoder geometry.

    ``geometry`` is ``(spec_channels, upsample_rates, upsample_kernel_sizes)``; the text
    encoder's kernel (3), dropout (0), resblock kind ("1"), kernels (3, 7, 11) and dilations
    (1, 3, 5) are those of every RVC and Applio config.
    """
    spec, rates, kernels = geometry
    return [
        spec,
        32,
        inter_channels,
        hidden_channels,
        filter_channels,
        n_heads,
        n_layers,
        3,
        0,
        "1",
        [3, 7, 11],
        [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        list(rates),
        upsample_initial_channel,
        list(kernels),
        num_speakers,
        gin_channels,
        sr,
    ]

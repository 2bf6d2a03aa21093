"""RMVPE pitch estimator: log-mel front end, E2E network, salience decoding.

A pure-PyTorch re-implementation of the RMVPE model that RVC and Applio use
for the ``rmvpe`` F0 method (``infer/lib/rmvpe.py`` / ``rvc/lib/predictors/RMVPE.py``).

* The network hyper-parameters (U-Net depth, ConvBlockRes per block,
  intermediate layers, first-level channels, GRU layers / hidden size) are read
  off the state dict, so the real ``rmvpe.pt`` (``E2E(4, 1, (2, 2))``, 741
  entries, 90.4 M parameters, stored fp16) and reduced test models both load.
  Keys are checked strictly.
* Every eval-mode BatchNorm is folded into the convolution in front of it at
  load time; the input ``BatchNorm2d(1)`` becomes a per-channel affine on the
  mel (folding it into the first conv would be wrong at the zero-padded border).
* The mel front end, padding to a multiple of 32 frames (``"reflect"`` like
  Applio, ``"constant"`` zeros like the RVC WebUI), Applio's 32000-frame
  chunking and the float64/float32 decoding numerics follow the references.

Only :func:`load_rmvpe` reads files; it goes through
:func:`rvcfast.safe_load.load_torch_file` and never runs code from the file.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import AudioError, ModelLoadError, ParameterError
from ..safe_load import load_torch_file

__all__ = [
    "RMVPE",
    "E2E",
    "E2EConfig",
    "load_rmvpe",
    "save_random_rmvpe",
    "infer_e2e_config",
    "e2e_state_shapes",
    "mel_filterbank",
    "decode_salience",
    "SAMPLE_RATE",
    "HOP_LENGTH",
    "N_MELS",
    "N_CLASS",
    "APPLIO_CHUNK_FRAMES",
    "CENTS_OFFSET",
]

SAMPLE_RATE = 16000
"""Input sample rate of RMVPE."""
N_FFT = 1024
"""STFT size and (periodic Hann) window length."""
HOP_LENGTH = 160
"""STFT hop: 10 ms frames, frame ``i`` centred on sample ``160 * i``."""
N_MELS = 128
MEL_FMIN = 30.0
MEL_FMAX = 8000.0
MEL_CLAMP = 1e-5
N_CLASS = 360
"""Salience bins (20 cents each)."""
CENTS_OFFSET = 1997.3794084376191
"""Cents of bin 0 (31.7 Hz relative to 10 Hz)."""
APPLIO_CHUNK_FRAMES = 32000
"""Applio runs the network on the padded mel in non-overlapping chunks of this many frames."""
FRAME_MULTIPLE = 32
"""The U-Net pools time by 2 five times: the network input length must be a multiple of 32."""
DEFAULT_OVERLAP_FRAMES = 512
"""Context frames on each side of a chunk in bounded-memory chunked inference."""
_MEL_BLOCK_FRAMES = 8192  # STFT frames computed at once (bounds the complex STFT buffer)
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.01

AudioLike = np.ndarray | torch.Tensor | Sequence[float]


# --------------------------------------------------------------------------- mel front end


def mel_filterbank(
    sr: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = MEL_FMIN,
    fmax: float = MEL_FMAX,
) -> np.ndarray:
    """HTK-scale triangular mel filters with Slaney area normalisation, ``[n_mels, n_fft//2+1]`` float32.

    Same values as ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels,
    fmin=fmin, fmax=fmax, htk=True, norm='slaney')``: band edges are equally
    spaced on the HTK mel scale ``2595·log10(1 + f/700)``, each filter is a
    triangle over the FFT bin frequencies, stored in float32, then scaled by
    ``2 / (f_hi - f_lo)`` (computed in float64, rounded to float32).
    """
    fft_freqs = np.arange(n_fft // 2 + 1, dtype=np.float64) * (float(sr) / n_fft)
    mel_lo = 2595.0 * np.log10(1.0 + float(fmin) / 700.0)
    mel_hi = 2595.0 * np.log10(1.0 + float(fmax) / 700.0)
    edges_mel = np.linspace(mel_lo, mel_hi, n_mels + 2)
    edges_hz = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    widths = np.diff(edges_hz)
    dist = edges_hz[:, None] - fft_freqs[None, :]
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    tri = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (edges_hz[2 : n_mels + 2] - edges_hz[:n_mels])
    return (tri.astype(np.float64) * area[:, None]).astype(np.float32)


def _reflect_index(length: int, start: int, stop: int) -> np.ndarray:
    """Source indices for positions ``start..stop-1`` of a reflect-padded axis of ``length``.

    Matches ``numpy.pad(mode="reflect")`` (edge not repeated, reflections
    repeated as often as needed) and therefore ``torch`` reflect padding
    whenever the pad is shorter than the axis. A length-1 axis is repeated.
    """
    pos = np.arange(start, stop, dtype=np.int64)
    if length == 1:
        return np.zeros_like(pos)
    period = 2 * (length - 1)
    q = np.mod(pos, period)
    return np.where(q < length, q, period - q)


def _reflect_pad_last(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad the last axis by ``pad`` on both sides (any length >= 1, like :func:`_reflect_index`)."""
    n = x.shape[-1]
    head = torch.from_numpy(_reflect_index(n, -pad, 0)).to(x.device)
    tail = torch.from_numpy(_reflect_index(n, n, n + pad)).to(x.device)
    return torch.cat([x[..., head], x, x[..., tail]], dim=-1)


# --------------------------------------------------------------------------- the E2E network


@dataclass(frozen=True)
class E2EConfig:
    """Hyper-parameters of RMVPE's ``E2E`` network (as inferred from a state dict).

    The real ``rmvpe.pt`` is ``E2EConfig(n_blocks=4, n_gru=1, en_de_layers=5,
    inter_layers=4, in_channels=1, en_out_channels=16, gru_hidden=256)``.
    ``n_gru = 0`` means the head is a plain ``Linear(384, 360)`` without GRU.
    """

    n_blocks: int = 4
    n_gru: int = 1
    en_de_layers: int = 5
    inter_layers: int = 4
    in_channels: int = 1
    en_out_channels: int = 16
    gru_hidden: int = 256
    n_mels: int = N_MELS
    n_class: int = N_CLASS

    @classmethod
    def full_size(cls) -> E2EConfig:
        """The architecture of the published ``rmvpe.pt``."""
        return cls()

    @classmethod
    def reduced(cls) -> E2EConfig:
        """The reduced architecture of the golden test model (``rmvpe_reduced.pt``)."""
        return cls(n_blocks=1, inter_layers=2, en_out_channels=4)


class _ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel: an eval-mode BatchNorm2d after folding."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1))
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class _ConvBlockRes(nn.Module):
    """(3×3 conv, BN, ReLU) × 2 plus a residual (1×1 conv shortcut when channels change)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, (3, 3), (1, 1), (1, 1), bias=False),
            nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, (3, 3), (1, 1), (1, 1), bias=False),
            nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.shortcut: nn.Module | None = nn.Conv2d(cin, cout, (1, 1)) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + (x if self.shortcut is None else self.shortcut(x))


class _ResEncoderBlock(nn.Module):
    """``n_blocks`` ConvBlockRes, then (encoder only) a 2×2 average pool."""

    def __init__(self, cin: int, cout: int, n_blocks: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.ModuleList(
            [_ConvBlockRes(cin, cout)] + [_ConvBlockRes(cout, cout) for _ in range(n_blocks - 1)]
        )
        self.pool = nn.AvgPool2d(kernel_size=(2, 2)) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class _Encoder(nn.Module):
    def __init__(self, cfg: E2EConfig) -> None:
        super().__init__()
        self.bn: nn.Module = nn.BatchNorm2d(cfg.in_channels, momentum=_BN_MOMENTUM)
        layers = []
        cin, cout = cfg.in_channels, cfg.en_out_channels
        for _ in range(cfg.en_de_layers):
            layers.append(_ResEncoderBlock(cin, cout, cfg.n_blocks, pool=True))
            cin, cout = cout, cout * 2
        self.layers = nn.ModuleList(layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        x = self.bn(x)
        for layer in self.layers:
            x = layer(x)
            skips.append(x)
            x = layer.pool(x)
        return x, skips


class _Intermediate(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: E2EConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [_ResEncoderBlock(cin, cout, cfg.n_blocks, pool=False)]
            + [_ResEncoderBlock(cout, cout, cfg.n_blocks, pool=False) for _ in range(cfg.inter_layers - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _ResDecoderBlock(nn.Module):
    """ConvTranspose2d (stride 2) + BN + ReLU, concat the skip, ``n_blocks`` ConvBlockRes."""

    def __init__(self, cin: int, cout: int, n_blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, (3, 3), (2, 2), (1, 1), (1, 1), bias=False),
            nn.BatchNorm2d(cout, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.ModuleList(
            [_ConvBlockRes(2 * cout, cout)] + [_ConvBlockRes(cout, cout) for _ in range(n_blocks - 1)]
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class _Decoder(nn.Module):
    def __init__(self, cin: int, cfg: E2EConfig) -> None:
        super().__init__()
        layers = []
        for _ in range(cfg.en_de_layers):
            layers.append(_ResDecoderBlock(cin, cin // 2, cfg.n_blocks))
            cin //= 2
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer, skip in zip(self.layers, reversed(skips)):
            x = layer(x, skip)
        return x


class _DeepUnet(nn.Module):
    def __init__(self, cfg: E2EConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(cfg)
        deep = self.encoder.out_channels
        self.intermediate = _Intermediate(deep, deep * 2, cfg)
        self.decoder = _Decoder(deep * 2, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        x = self.intermediate(x)
        return self.decoder(x, skips)


class _BiGRU(nn.Module):
    def __init__(self, n_in: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class E2E(nn.Module):
    """RMVPE's network: log-mel ``[B, 128, T]`` (T a multiple of 32) to salience ``[B, T, 360]``.

    Parameter names equal those of the reference ``E2E`` so that its state
    dicts load unchanged. The U-Net and the ``cnn`` head run in the module's
    compute dtype; the BiGRU/Linear/Sigmoid head always runs in float32.
    """

    def __init__(self, cfg: E2EConfig) -> None:
        super().__init__()
        self.config = cfg
        self.unet = _DeepUnet(cfg)
        self.cnn = nn.Conv2d(cfg.en_out_channels, 3, (3, 3), padding=(1, 1))
        if cfg.n_gru:
            self.fc = nn.Sequential(
                _BiGRU(3 * cfg.n_mels, cfg.gru_hidden, cfg.n_gru),
                nn.Linear(2 * cfg.gru_hidden, cfg.n_class),
                nn.Dropout(0.25),
                nn.Sigmoid(),
            )
        else:
            self.fc = nn.Sequential(nn.Linear(3 * cfg.n_mels, cfg.n_class), nn.Dropout(0.25), nn.Sigmoid())
        self.folded = False

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the convolutional part."""
        return self.cnn.weight.dtype

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Salience (after the sigmoid) in float32 for a batch of log-mels."""
        x = mel.to(self.compute_dtype).transpose(-1, -2).unsqueeze(1)
        x = self.cnn(self.unet(x))
        x = x.transpose(1, 2).flatten(-2).float()
        return self.fc(x)

    @torch.no_grad()
    def fold_batchnorm_(self) -> E2E:
        """Fold every eval-mode BatchNorm into the conv before it (in place, float64 maths).

        The input ``BatchNorm2d`` becomes a :class:`_ChannelAffine` on the mel.
        Afterwards the module has no BatchNorm left and cannot be trained.
        """
        if self.folded:
            return self
        enc = self.unet.encoder
        bn = enc.bn
        assert isinstance(bn, nn.BatchNorm2d)
        scale, shift = _bn_scale_shift(bn)
        enc.bn = _ChannelAffine(scale.to(bn.weight.dtype), shift.to(bn.weight.dtype))
        for module in self.modules():
            if isinstance(module, _ConvBlockRes):
                seq = module.conv
                _fold_into(seq[0], seq[1], transposed=False)
                _fold_into(seq[3], seq[4], transposed=False)
                seq[1] = nn.Identity()
                seq[4] = nn.Identity()
            elif isinstance(module, _ResDecoderBlock):
                _fold_into(module.conv1[0], module.conv1[1], transposed=True)
                module.conv1[1] = nn.Identity()
        self.folded = True
        return self


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _fold_into(conv: nn.Module, bn: nn.Module, transposed: bool) -> None:
    assert isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d)
    scale, shift = _bn_scale_shift(bn)
    dtype = conv.weight.dtype
    w = conv.weight.double()
    w = w * (scale.reshape(1, -1, 1, 1) if transposed else scale.reshape(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight = nn.Parameter(w.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


# --------------------------------------------------------------------------- state-dict layout


def _bn_shapes(prefix: str, ch: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.weight", (ch,)),
        (f"{prefix}.bias", (ch,)),
        (f"{prefix}.running_mean", (ch,)),
        (f"{prefix}.running_var", (ch,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def _block_shapes(prefix: str, cin: int, cout: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [(f"{prefix}.conv.0.weight", (cout, cin, 3, 3))]
    out += _bn_shapes(f"{prefix}.conv.1", cout)
    out.append((f"{prefix}.conv.3.weight", (cout, cout, 3, 3)))
    out += _bn_shapes(f"{prefix}.conv.4", cout)
    if cin != cout:
        out += [(f"{prefix}.shortcut.weight", (cout, cin, 1, 1)), (f"{prefix}.shortcut.bias", (cout,))]
    return out


def e2e_state_shapes(cfg: E2EConfig) -> OrderedDict[str, tuple[int, ...]]:
    """Every state-dict key of ``E2E(cfg)`` with its shape, in the reference's order."""
    items: list[tuple[str, tuple[int, ...]]] = _bn_shapes("unet.encoder.bn", cfg.in_channels)
    cin, cout = cfg.in_channels, cfg.en_out_channels
    for i in range(cfg.en_de_layers):
        for j in range(cfg.n_blocks):
            items += _block_shapes(f"unet.encoder.layers.{i}.conv.{j}", cin if j == 0 else cout, cout)
        cin, cout = cout, cout * 2
    deep = cin
    for i in range(cfg.inter_layers):
        for j in range(cfg.n_blocks):
            first = i == 0 and j == 0
            items += _block_shapes(
                f"unet.intermediate.layers.{i}.conv.{j}", deep if first else 2 * deep, 2 * deep
            )
    cin = 2 * deep
    for i in range(cfg.en_de_layers):
        cout = cin // 2
        p = f"unet.decoder.layers.{i}"
        items.append((f"{p}.conv1.0.weight", (cin, cout, 3, 3)))
        items += _bn_shapes(f"{p}.conv1.1", cout)
        for j in range(cfg.n_blocks):
            items += _block_shapes(f"{p}.conv2.{j}", 2 * cout if j == 0 else cout, cout)
        cin = cout
    items += [("cnn.weight", (3, cfg.en_out_channels, 3, 3)), ("cnn.bias", (3,))]
    h = cfg.gru_hidden
    if cfg.n_gru:
        for layer in range(cfg.n_gru):
            n_in = 3 * cfg.n_mels if layer == 0 else 2 * h
            for suffix in ("", "_reverse"):
                items += [
                    (f"fc.0.gru.weight_ih_l{layer}{suffix}", (3 * h, n_in)),
                    (f"fc.0.gru.weight_hh_l{layer}{suffix}", (3 * h, h)),
                    (f"fc.0.gru.bias_ih_l{layer}{suffix}", (3 * h,)),
                    (f"fc.0.gru.bias_hh_l{layer}{suffix}", (3 * h,)),
                ]
        items += [("fc.1.weight", (cfg.n_class, 2 * h)), ("fc.1.bias", (cfg.n_class,))]
    else:
        items += [("fc.0.weight", (cfg.n_class, 3 * cfg.n_mels)), ("fc.0.bias", (cfg.n_class,))]
    return OrderedDict(items)


def _max_index(keys: Sequence[str], pattern: str) -> int | None:
    """Number of layers named by ``pattern``'s index group: ``max + 1``, if the indices are 0..max.

    A gap (e.g. one key claiming layer 10**9) raises ``ValueError`` instead of making
    the caller build that many layers.
    """
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    if not found:
        return None
    if max(found) + 1 != len(found):
        raise ValueError(
            f"layer indices of {pattern!r} are not contiguous (largest {max(found)}, {len(found)} distinct)"
        )
    return max(found) + 1


def infer_e2e_config(state: Mapping[str, Any]) -> E2EConfig:
    """Read the ``E2E`` hyper-parameters off a state dict (defaults: the real model).

    Only the key names and a few shapes are looked at; whether the dict is
    complete is checked separately against :func:`e2e_state_shapes`.
    """
    keys = list(state.keys())
    base = E2EConfig()
    en_de = _max_index(keys, r"unet\.encoder\.layers\.(\d+)\.") or base.en_de_layers
    n_blocks = _max_index(keys, r"unet\.encoder\.layers\.0\.conv\.(\d+)\.") or base.n_blocks
    inter = _max_index(keys, r"unet\.intermediate\.layers\.(\d+)\.") or base.inter_layers
    first = state.get("unet.encoder.layers.0.conv.0.conv.0.weight")
    en_out, in_ch = base.en_out_channels, base.in_channels
    if isinstance(first, torch.Tensor) and first.dim() == 4:
        en_out, in_ch = int(first.shape[0]), int(first.shape[1])
    n_gru = _max_index(keys, r"fc\.0\.gru\.weight_ih_l(\d+)(?:_reverse)?$")
    if n_gru is None:
        n_gru = 0 if "fc.0.weight" in state else base.n_gru
    hidden = base.gru_hidden
    hh = state.get("fc.0.gru.weight_hh_l0")
    if isinstance(hh, torch.Tensor) and hh.dim() == 2:
        hidden = int(hh.shape[1])
    n_class = base.n_class
    head = state.get("fc.1.weight" if n_gru else "fc.0.weight")
    if isinstance(head, torch.Tensor) and head.dim() == 2:
        n_class = int(head.shape[0])
    return E2EConfig(
        n_blocks=n_blocks,
        n_gru=n_gru,
        en_de_layers=en_de,
        inter_layers=inter,
        in_channels=in_ch,
        en_out_channels=en_out,
        gru_hidden=hidden,
        n_class=n_class,
    )


def _list_keys(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_state(path: Path, state: Any) -> tuple[E2EConfig, dict[str, torch.Tensor]]:
    """Validate ``state`` as a complete RMVPE ``E2E`` state dict; return its config and tensors."""
    if not isinstance(state, Mapping):
        raise ModelLoadError(
            path, f"not an RMVPE weights file: expected a plain state dict, found a {type(state).__name__}"
        )
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelLoadError(
            path,
            "not an RMVPE weights file: expected a plain state dict of tensors (keys "
            + _list_keys([str(k) for k in state.keys()], 10)
            + ")",
        )
    try:
        cfg = infer_e2e_config(state)
    except ValueError as exc:
        raise ModelLoadError(path, f"RMVPE state dict does not match the E2E layout: {exc}") from None
    expected = e2e_state_shapes(cfg)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}")
    if problems:
        raise ModelLoadError(path, "RMVPE state dict does not match the E2E layout: " + "; ".join(problems))
    bad = [
        f"{k} {tuple(state[k].shape)} != {shape}"
        for k, shape in expected.items()
        if tuple(state[k].shape) != shape
    ]
    if bad:
        raise ModelLoadError(path, f"RMVPE state dict has tensors of the wrong shape: {_list_keys(bad, 10)}")
    if cfg.in_channels != 1 or cfg.n_class != N_CLASS or cfg.n_mels != N_MELS:
        raise ModelLoadError(
            path,
            f"unsupported RMVPE variant (in_channels {cfg.in_channels}, classes {cfg.n_class}); "
            f"expected 1 input channel and {N_CLASS} salience bins",
        )
    floats = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if floats:
        raise ModelLoadError(path, f"RMVPE weights contain NaN/Inf in {_list_keys(floats, 10)}")
    return cfg, dict(state)


def save_random_rmvpe(path: str | os.PathLike[str], *, full_size: bool = True, seed: int = 0) -> Path:
    """Write random RMVPE weights in the exact format of the real ``rmvpe.pt``.

    The file is a plain ``torch.save``d ordered state dict with the real key
    names and order, floating tensors in fp16 (``num_batches_tracked`` int64),
    like the published file. ``full_size=True`` gives ``E2E(4, 1, (2, 2))``
    (741 entries, 90,423,165 parameters, ~181 MB); ``False`` the reduced
    architecture of the golden test model (~4 MB). Conv weights are scaled by
    fan-in so the activations stay finite; with random weights nearly every
    frame comes out voiced. Returns the path.
    """
    cfg = E2EConfig.full_size() if full_size else E2EConfig.reduced()
    gen = torch.Generator().manual_seed(int(seed))
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    gru_bound = 1.0 / float(np.sqrt(cfg.gru_hidden))
    for key, shape in e2e_state_shapes(cfg).items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(
                1000 + int(torch.randint(0, 100000, (1,), generator=gen)), dtype=torch.int64
            )
            continue
        if key.startswith("fc."):
            bound = gru_bound if key.startswith("fc.0.gru") else 1.0 / float(np.sqrt(shape[-1]))
            t = (torch.rand(shape, generator=gen) * 2 - 1) * bound
        elif key.endswith("running_var"):
            t = torch.exp(0.1 * torch.randn(shape, generator=gen))
        elif ".bn." in key or re.search(r"\.(1|4)\.(weight|bias|running_mean)$", key):
            base = 1.0 if key.endswith(".weight") else 0.0
            t = base + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".weight") and len(shape) == 4:
            fan_in = shape[0 if "decoder" in key and ".conv1.0." in key else 1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=gen) * float(0.5 * np.sqrt(1.0 / fan_in))
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        out[key] = t.to(torch.float16)
    p = Path(path)
    torch.save(out, p)
    return p


# --------------------------------------------------------------------------- decoding


def decode_salience(salience: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """Salience ``[T, 360]`` to F0 in Hz (float64, 0 = unvoiced), with the reference's numerics.

    Per frame: arg-max bin ``c``; the 9 bins ``c-4..c+4`` of the salience and
    of the cents table ``20·k + 1997.379...`` (both zero-padded by 4);
    numerator ``Σ s·m`` in float64 (float32 salience × float64 cents),
    denominator ``Σ s`` in float32; ``max(s) <= threshold`` gives 0 cents;
    ``f0 = 10·2^(cents/1200)`` and exactly 10 Hz becomes 0.
    """
    sal = np.asarray(salience, dtype=np.float32)
    if sal.ndim != 2:
        raise ValueError(f"salience must be [T, bins], got shape {sal.shape}")
    n_bins = sal.shape[1]
    cents_table = np.pad(20 * np.arange(n_bins) + CENTS_OFFSET, (4, 4))
    if sal.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    centre = np.argmax(sal, axis=1)
    padded = np.pad(sal, ((0, 0), (4, 4)))
    cols = centre[:, None] + np.arange(9)[None, :]
    rows = np.arange(sal.shape[0])[:, None]
    window = padded[rows, cols]
    cents_win = cents_table[cols]
    numerator = np.sum(window * cents_win, 1)
    denominator = np.sum(window, 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero frames: 0/0, then set to 0 below
        cents = numerator / denominator
    cents[np.max(padded, axis=1) <= threshold] = 0
    f0 = 10 * (2 ** (cents / 1200))
    f0[f0 == 10] = 0
    return f0


# --------------------------------------------------------------------------- the predictor


def _as_audio(audio: AudioLike) -> torch.Tensor:
    """Validate one 16 kHz mono input and return it as a 1-D float32 CPU tensor."""
    if isinstance(audio, torch.Tensor):
        t = audio.detach()
    else:
        arr = np.asarray(audio)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise AudioError(None, f"RMVPE expects numeric audio, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 1:
        raise AudioError(None, f"RMVPE expects 1-D mono audio at 16 kHz, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise AudioError(None, "RMVPE got empty audio")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise AudioError(None, "audio contains NaN or Inf samples")
    return t


def _padded_len(n_frames: int) -> int:
    return FRAME_MULTIPLE * ((n_frames - 1) // FRAME_MULTIPLE + 1)


class RMVPE(nn.Module):
    """The RMVPE pitch estimator: 16 kHz audio to salience and F0 at 100 frames/s.

    Build it with :func:`load_rmvpe`. ``infer`` returns ``len(audio)//160 + 1``
    frames of F0 in Hz (float64, 0 = unvoiced), matching Applio
    (``pad_mode="reflect"``, the default) or the RVC WebUI
    (``pad_mode="constant"``).

    **Long inputs.** ``chunk_frames`` controls how the network sees the padded
    mel:

    * ``None`` (default): the reference's behaviour. With ``"reflect"`` this is
      Applio's: one pass up to 32000 frames (320 s), beyond that independent
      non-overlapping 32000-frame chunks. With ``"constant"`` it is the WebUI's
      single pass over the whole input.
    * ``0``: one pass over the whole input, however long.
    * ``C > 0`` (a multiple of 32): bounded-memory chunked inference. Each
      chunk of ``C`` frames is run with ``overlap_frames`` extra frames of
      context on each side and only its centre is kept; the mel is computed per
      window too, so memory is bounded by the chunk size (plus the input audio
      and the F0 output). ``overlap_frames=0`` with ``C=32000`` reproduces
      Applio's chunking exactly.

    Measured against a single pass (``chunk_frames=0``) on a 10-minute input
    (the shared 60 s speech clip tiled ×10, 60001 frames) with the reduced
    golden model, CPU float32: ``chunk_frames=4096`` with the default
    ``overlap_frames=512``: max salience difference 1.5e-07, voicing
    identical, max F0 difference 5.6e-05 Hz on voiced frames (2048/256:
    2.0e-07 and 5.2e-05 Hz; 2048/128: 2.1e-07 and 5.3e-05 Hz), i.e. float32
    rounding noise. Peak RSS of the whole process: 0.60 GB chunked vs 2.1 GB
    for the single pass; with chunking it grows only with the audio and F0
    arrays (about 0.5 GB per hour of input). For comparison, Applio's own
    split (32000 frames, no overlap) differs from the single pass by up to
    0.016 in salience and flips 4 voicing decisions near the chunk border.
    The full-size architecture has a larger theoretical receptive field
    (about ±1550 frames through the U-Net); with random full-size weights
    (:func:`save_random_rmvpe`, 60 s input, ``chunk_frames=1024``) overlaps
    of 128 to 1024 frames all gave 2e-07 max salience difference, so 512 is
    a conservative default. Use ``chunk_frames`` of 4096 or more to keep the
    overlap overhead small.

    Attributes ``device`` and ``dtype`` give where and in which precision the
    convolutional network runs (float32, bfloat16 or float16); the mel front
    end and the BiGRU head always run in float32 and results are float32
    (salience) / float64 (F0).
    """

    def __init__(self, model: E2E) -> None:
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank()), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)

    # -- properties --------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.mel_basis.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the convolutional network."""
        return self.model.compute_dtype

    @property
    def config(self) -> E2EConfig:
        """The network's hyper-parameters."""
        return self.model.config

    # -- mel -----------------------------------------------------------------------------

    def _log_mel(self, frames_src: torch.Tensor) -> torch.Tensor:
        """Log-mel of pre-padded signal rows ``[B, L]`` (STFT without centring) -> ``[B, 128, F]``."""
        spec = torch.stft(
            frames_src,
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            win_length=N_FFT,
            window=self.window,
            center=False,
            return_complex=True,
        )
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2))
        mel = torch.matmul(self.mel_basis, magnitude)
        return torch.log(torch.clamp(mel, min=MEL_CLAMP))

    def mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram ``[B, 128, N//160 + 1]`` (float32) of audio ``[B, N]`` at 16 kHz.

        ``torch.stft(n_fft=1024, hop=160, periodic Hann, center=True)`` with
        reflect padding, magnitude, the HTK/Slaney mel basis, ``log(clamp(·, 1e-5))``.
        """
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2 or audio.shape[-1] == 0:
            raise AudioError(None, f"mel expects audio [B, N] with N > 0, got shape {tuple(audio.shape)}")
        audio = audio.to(device=self.device, dtype=torch.float32)
        return self._log_mel(_reflect_pad_last(audio, N_FFT // 2))

    def _mel_frames(self, padded_audio: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Frames ``start..stop-1`` of the log-mel ``[128, stop-start]`` from the 512-sample reflect-padded audio."""
        parts = []
        for a in range(start, stop, _MEL_BLOCK_FRAMES):
            b = min(stop, a + _MEL_BLOCK_FRAMES)
            seg = padded_audio[a * HOP_LENGTH : (b - 1) * HOP_LENGTH + N_FFT]
            parts.append(self._log_mel(seg.unsqueeze(0))[0])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _pad_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return _reflect_pad_last(audio.to(self.device), N_FFT // 2)

    def _mel_window(
        self, padded_audio: torch.Tensor, n_frames: int, start: int, stop: int, pad_mode: str
    ) -> torch.Tensor:
        """Frames ``start..stop-1`` of the mel padded on the right to a multiple of 32 frames."""
        real_stop = min(stop, n_frames)
        if stop <= n_frames:
            return self._mel_frames(padded_audio, start, stop)
        if pad_mode == "constant":
            body = self._mel_frames(padded_audio, start, real_stop) if real_stop > start else None
            tail = torch.zeros(N_MELS, stop - max(start, n_frames), device=self.device)
            return tail if body is None else torch.cat([body, tail], dim=-1)
        # reflect: frames >= n_frames mirror real frames (numpy/torch reflect, edge not repeated)
        src = _reflect_index(n_frames, start, stop)
        lo, hi = int(src.min()), int(src.max()) + 1
        mel = self._mel_frames(padded_audio, lo, hi)
        return mel[:, torch.from_numpy(src - lo).to(self.device)]

    # -- network -------------------------------------------------------------------------

    @staticmethod
    def _check_pad_mode(pad_mode: str) -> str:
        if pad_mode not in ("reflect", "constant"):
            raise ParameterError(
                f"pad_mode must be 'reflect' (Applio) or 'constant' (RVC WebUI), got {pad_mode!r}"
            )
        return pad_mode

    @staticmethod
    def _windows(
        n_padded: int, chunk_frames: int | None, overlap_frames: int | None, pad_mode: str
    ) -> list[tuple[int, int, int, int]]:
        """``(window_start, window_stop, keep_start, keep_stop)`` in padded-mel frames."""
        if chunk_frames is None:
            if pad_mode == "constant":
                return [(0, n_padded, 0, n_padded)]
            chunk, overlap = APPLIO_CHUNK_FRAMES, 0
        else:
            chunk = int(chunk_frames)
            overlap = DEFAULT_OVERLAP_FRAMES if overlap_frames is None else int(overlap_frames)
            if chunk < 0 or chunk % FRAME_MULTIPLE:
                raise ParameterError(
                    f"chunk_frames must be 0 or a positive multiple of 32, got {chunk_frames}"
                )
            if overlap < 0 or overlap % FRAME_MULTIPLE:
                raise ParameterError(
                    f"overlap_frames must be a non-negative multiple of 32, got {overlap_frames}"
                )
            if chunk == 0:
                return [(0, n_padded, 0, n_padded)]
        out = []
        for s in range(0, n_padded, chunk):
            e = min(n_padded, s + chunk)
            out.append((max(0, s - overlap), min(n_padded, e + overlap), s, e))
        return out

    def _run(self, mel: torch.Tensor) -> torch.Tensor:
        """Network on a ``[B, 128, W]`` mel (W a multiple of 32): float32 salience ``[B, W, 360]``."""
        with torch.inference_mode():
            return self.model(mel)

    def _iter_salience(
        self,
        audio16k: AudioLike,
        pad_mode: str,
        chunk_frames: int | None,
        overlap_frames: int | None,
    ) -> Iterator[np.ndarray]:
        """Yield consecutive float32 salience blocks covering the ``N//160 + 1`` frames."""
        pad_mode = self._check_pad_mode(pad_mode)
        audio = _as_audio(audio16k)
        n_frames = audio.shape[0] // HOP_LENGTH + 1
        n_padded = _padded_len(n_frames)
        windows = self._windows(n_padded, chunk_frames, overlap_frames, pad_mode)
        padded_audio = self._pad_audio(audio)
        for ws, we, ks, ke in windows:
            if ks >= n_frames:
                break
            mel = self._mel_window(padded_audio, n_frames, ws, we, pad_mode)
            sal = self._run(mel.unsqueeze(0))[0]
            stop = min(ke, n_frames)
            yield sal[ks - ws : stop - ws].cpu().numpy()

    def salience(
        self,
        audio16k: AudioLike,
        pad_mode: str = "reflect",
        *,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
    ) -> np.ndarray:
        """Network output (after the sigmoid) ``[N//160 + 1, 360]`` float32 for one 16 kHz input.

        The mel's time axis is padded on the right to a multiple of 32 frames
        with ``pad_mode`` (``"reflect"``: Applio; ``"constant"``: zeros, RVC
        WebUI), the network is run, and the output is cropped. See the class
        docstring for ``chunk_frames`` / ``overlap_frames``.
        """
        blocks = list(self._iter_salience(audio16k, pad_mode, chunk_frames, overlap_frames))
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)

    def infer(
        self,
        audio16k: AudioLike,
        threshold: float = 0.03,
        pad_mode: str = "reflect",
        *,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
    ) -> np.ndarray:
        """F0 in Hz (float64, 0 = unvoiced), ``N//160 + 1`` frames, for one 16 kHz input.

        Equivalent to the reference ``infer_from_audio(audio, thred=threshold)``
        (Applio with ``pad_mode="reflect"``, RVC WebUI with ``"constant"``);
        decoding is :func:`decode_salience`. Chunked inference decodes chunk by
        chunk, so the full salience is never held in memory.
        """
        blocks = [
            decode_salience(s, threshold)
            for s in self._iter_salience(audio16k, pad_mode, chunk_frames, overlap_frames)
        ]
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def infer_batch(
        self,
        audios: Sequence[AudioLike],
        threshold: float = 0.03,
        pad_mode: str = "reflect",
        *,
        max_batch: int | None = None,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
    ) -> list[np.ndarray]:
        """F0 for several inputs; each result equals :meth:`infer` on that input alone.

        Inputs whose mel lengths pad to the same multiple of 32 frames (and that
        fit in one pass) run together, up to ``max_batch`` per forward; padding
        to any other length would change the results (the input BatchNorm maps
        padding to non-zero values and the BiGRU runs backwards from the end).
        Others run alone.

        ``max_batch=None`` means 1 on CPU and 8 elsewhere. On CPU, one item
        per forward is faster (measured 1.9 s vs 3.1 s for six 5 s clips with
        the full-size network on 2 cores) and bit-identical to :meth:`infer`.
        A larger batch computes the same function, but BLAS/oneDNN/cuDNN may
        pick other kernels for another batch size, so results can differ from
        solo runs by float32 rounding (about 1e-7 relative in the salience).
        """
        pad_mode = self._check_pad_mode(pad_mode)
        if max_batch is None:
            max_batch = 1 if self.device.type == "cpu" else 8
        if max_batch < 1:
            raise ParameterError(f"max_batch must be >= 1, got {max_batch}")
        results: list[np.ndarray | None] = [None] * len(audios)
        groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for i, item in enumerate(audios):
            audio = _as_audio(item)
            n_frames = audio.shape[0] // HOP_LENGTH + 1
            n_padded = _padded_len(n_frames)
            if len(self._windows(n_padded, chunk_frames, overlap_frames, pad_mode)) > 1:
                results[i] = self.infer(
                    audio, threshold, pad_mode, chunk_frames=chunk_frames, overlap_frames=overlap_frames
                )
            else:
                groups.setdefault(n_padded, []).append((i, audio))
        for n_padded, members in groups.items():
            for g in range(0, len(members), max_batch):
                part = members[g : g + max_batch]
                mels, lengths = [], []
                for _, audio in part:
                    n_frames = audio.shape[0] // HOP_LENGTH + 1
                    mels.append(self._mel_window(self._pad_audio(audio), n_frames, 0, n_padded, pad_mode))
                    lengths.append(n_frames)
                sal = self._run(torch.stack(mels)).cpu().numpy()
                for (i, _), n_frames, s in zip(part, lengths, sal):
                    results[i] = decode_salience(s[:n_frames], threshold)
        out: list[np.ndarray] = []
        for r in results:
            assert r is not None
            out.append(r)
        return out

    def forward(self, audio16k: AudioLike, threshold: float = 0.03) -> np.ndarray:
        """Same as :meth:`infer`."""
        return self.infer(audio16k, threshold)


def load_rmvpe(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    fold_batchnorm: bool = True,
) -> RMVPE:
    """Load RMVPE weights (a plain ``E2E`` state dict such as ``rmvpe.pt``) into an :class:`RMVPE`.

    The architecture is inferred from the state dict and every key is checked:
    missing, unexpected or mis-shaped entries raise
    :class:`~rvcfast.errors.ModelLoadError` listing them; files that are not
    a state dict (or are truncated/corrupt) raise it naming the file. fp16
    storage is cast to float32, BatchNorms are folded in float64
    (``fold_batchnorm=True``), then the convolutional network is cast to
    ``dtype`` (float32, bfloat16 or float16) and moved to ``device``.
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ParameterError(f"unsupported RMVPE dtype {dtype}")
    p = Path(path)
    raw = load_torch_file(p, what="RMVPE weights")
    cfg, state = _check_state(p, raw)
    model = E2E(cfg)
    model.load_state_dict(
        {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()},
        strict=True,
    )
    model.eval()
    if fold_batchnorm:
        model.fold_batchnorm_()
    model.requires_grad_(False)
    model.unet.to(dtype)
    model.cnn.to(dtype)
    return RMVPE(model).to(torch.device(device))

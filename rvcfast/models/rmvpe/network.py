"""RMVPE's ``E2E`` network (a deep U-Net and a BiGRU head) and eval-mode BatchNorm folding.

The hyper-parameters (U-Net depth, ConvBlockRes per block, intermediate layers,
first-level channels, GRU layers / hidden size) are an :class:`E2EConfig`, read off the
state dict at load time (:func:`~.checkpoint.infer_e2e_config`), so the real
``rmvpe.pt`` and reduced test models both build. Parameter names equal the reference's.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ...runtime import openmp_threads, set_thread_count
from .mel import N_MELS

__all__ = ["N_CLASS", "E2EConfig", "E2E"]

N_CLASS = 360
"""Salience bins (20 cents each)."""
_BN_MOMENTUM = 0.01


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

    scale: torch.Tensor  # buffers, [1, C, 1, 1]
    shift: torch.Tensor

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
        self.pool: nn.AvgPool2d | None = nn.AvgPool2d(kernel_size=(2, 2)) if pool else None

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
        for layer in cast("Iterable[_ResEncoderBlock]", self.layers):
            x = layer(x)
            skips.append(x)
            assert layer.pool is not None  # encoder blocks are built with pool=True
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
        gru = self.gru
        if gru.num_layers == 1 and x.device.type == "cpu" and not torch.is_grad_enabled() and torch.get_num_threads() > 1:
            try:
                return bigru_two_threads(gru, x)
            except _NoThread:
                pass  # the process is out of threads: the bidirectional op computes the same
        return gru(x)[0]


class _NoThread(Exception):
    """The second BiGRU thread could not be started."""


def bigru_two_threads(gru: nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """A one-layer, batch-first bidirectional ``gru(x)[0]`` with its two directions on two threads.

    The recurrence is a loop of tiny matrix products (``[B, 256] x [256, 768]`` per frame)
    that gains nothing from several intra-op threads; the two directions are independent,
    so the backward one runs on the time-reversed input in a second thread, each thread on
    one intra-op thread (where torch's threads are OpenMP's, whose count is per thread; the
    caller's count is restored). Each direction does the same arithmetic as inside the
    bidirectional op (bit-identical, tested). On 2 Zen 4 cores, a whole RMVPE call on 7 s
    of audio took 346-352 ms instead of 368-379 ms (two threads each) or 366-391 ms (the
    bidirectional op).
    """
    h0 = x.new_zeros(1, x.shape[0], gru.hidden_size)
    # nn.GRU registers its parameters by name at run time; torch types them Tensor | Module
    forward_params = cast(
        "list[torch.Tensor]", [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    )
    backward_params = cast(
        "list[torch.Tensor]",
        [gru.weight_ih_l0_reverse, gru.weight_hh_l0_reverse, gru.bias_ih_l0_reverse, gru.bias_hh_l0_reverse],
    )
    one_each = openmp_threads()

    def run(params: list[torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # grad mode is per thread: the worker starts with it on
            return torch.gru(inp, h0, params, True, 1, 0.0, False, False, True)[0]

    def backward_in_worker(inp: torch.Tensor) -> torch.Tensor:
        if one_each:
            set_thread_count(1)  # this short-lived thread's own count
        return run(backward_params, inp)

    caller_threads = torch.get_num_threads()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvcfast-bigru") as pool:
        try:
            backward = pool.submit(backward_in_worker, x.flip(1))
        except RuntimeError as exc:  # "can't start new thread" (a thread limit reached)
            raise _NoThread(str(exc)) from exc
        try:
            if one_each:
                set_thread_count(1)
            out_forward = run(forward_params, x)
            out_backward = backward.result().flip(1)
        finally:
            # after the worker is done: the count new threads start with is the caller's again
            backward.exception()
            if one_each:
                set_thread_count(caller_threads)
    return torch.cat([out_forward, out_backward], dim=-1)


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
    with torch.no_grad():
        # float64 product rounded once into the weight's dtype, written back into the same
        # storage (no second copy of the network). Through one layer's float64 temporary:
        # 3x faster than an in-place mixed-dtype mul_ (0.35 -> 0.12 s for the full-size
        # network on 2 Zen 4 cores) and bit-identical to it.
        w64 = conv.weight.double()
        w64.mul_(scale.reshape(1, -1, 1, 1) if transposed else scale.reshape(-1, 1, 1, 1))
        conv.weight.copy_(w64)
        del w64
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.requires_grad_(False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


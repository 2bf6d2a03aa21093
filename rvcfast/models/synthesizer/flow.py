"""The flow ``flow``: four mean-only residual coupling layers (WaveNet), run in reverse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .common import weight_normed

__all__ = ["Flow"]

class _WaveNet(nn.Module):
    """The gated, conditioned WaveNet stack of a coupling layer (RVC's ``WN``)."""

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.cond_layer = weight_normed(nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                weight_normed(nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=dilation, padding=padding))
            )
            out = 2 * hidden if i < n_layers - 1 else hidden
            self.res_skip_layers.append(weight_normed(nn.Conv1d(hidden, out, 1)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        h = self.hidden
        g_all = self.cond_layer(g)  # [B, 2h*n, 1]
        output: torch.Tensor | None = None
        for i in range(self.n_layers):
            a = self.in_layers[i](x) + g_all[:, 2 * h * i : 2 * h * (i + 1)]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = x + rs[:, :h]
                if mask is not None:
                    x = x * mask
                skip = rs[:, h:]
            else:
                skip = rs
            output = skip if output is None else output + skip
        assert output is not None
        if mask is not None:
            output = output * mask
        return output


class _Coupling(nn.Module):
    """Mean-only residual coupling layer; only the reverse direction is implemented."""

    def __init__(self, channels: int, hidden: int, gin_channels: int) -> None:
        super().__init__()
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden, 1)
        self.enc = _WaveNet(hidden, 5, 1, 3, gin_channels)
        self.post = nn.Conv1d(hidden, self.half_channels, 1)

    def reverse(self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, : self.half_channels], x[:, self.half_channels :]
        h = self.pre(x0)
        if mask is not None:
            h = h * mask
        h = self.enc(h, mask, g)
        m = self.post(h)
        if mask is not None:
            m = m * mask
        x1 = x1 - m
        if mask is not None:
            x1 = x1 * mask
        return torch.cat([x0, x1], dim=1)


class _Flip(nn.Module):
    """Placeholder for RVC's channel flip (no parameters; keeps the coupling indices 0, 2, 4, 6)."""


class Flow(nn.Module):
    """RVC's ``ResidualCouplingBlock``: coupling layers alternating with channel flips."""

    def __init__(self, channels: int, hidden: int, gin_channels: int, n_flows: int = 4) -> None:
        super().__init__()
        layers: list[_Coupling | _Flip] = []
        for _ in range(n_flows):
            layers.append(_Coupling(channels, hidden, gin_channels))
            layers.append(_Flip())
        self.flows = nn.ModuleList(layers)

    def reverse(self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        for layer in reversed(cast("Sequence[_Coupling | _Flip]", self.flows)):
            if isinstance(layer, _Flip):
                x = torch.flip(x, [1])
            else:
                x = layer.reverse(x, mask, g)
        return x

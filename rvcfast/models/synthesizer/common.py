"""Small pieces shared by the synthesizer's sub-networks."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

__all__ = ["LRELU_SLOPE", "weight_normed", "embedding", "normal_tensor"]

#: Slope of every leaky ReLU except the one before the decoder's ``conv_post`` (default 0.01).
LRELU_SLOPE = 0.1

_M = TypeVar("_M", bound=nn.Module)


def weight_normed(module: _M) -> _M:
    """Mark a layer whose weight RVC stores as a weight-norm (g, v) pair.

    The loader folds such pairs into one weight; the random-model writer splits them again.
    """
    # Module.__setattr__ takes any value; torch types its argument Tensor | Module
    module._rvc_weight_norm = True  # type: ignore[assignment]
    return module


def normal_tensor(*shape: int, std: float = 1.0) -> torch.Tensor:
    """A new ``N(0, std**2)`` tensor on the current default device; left undrawn on the meta device.

    On the meta device (where the loaders build the models) ``torch.randn`` and
    ``normal_`` run through torch's Python reference implementations, which import
    ``torch._dynamo``: about 1.3 s of start-up for every process, for values that the
    loaded weights replace anyway.
    """
    t = torch.empty(*shape)
    if t.device.type != "meta":
        nn.init.normal_(t, std=std)
    return t


def embedding(num: int, dim: int) -> nn.Embedding:
    """``nn.Embedding(num, dim)`` with its default N(0, 1) weights, built without the meta-device
    detour of :func:`normal_tensor`."""
    return nn.Embedding(num, dim, _weight=normal_tensor(num, dim))

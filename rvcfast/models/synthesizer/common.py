"""Small pieces shared by the synthesizer's sub-networks."""

from __future__ import annotations

from torch import nn

__all__ = ["LRELU_SLOPE", "weight_normed"]

#: Slope of every leaky ReLU except the one before the decoder's ``conv_post`` (default 0.01).
LRELU_SLOPE = 0.1


def weight_normed(module: nn.Module) -> nn.Module:
    """Mark a layer whose weight RVC stores as a weight-norm (g, v) pair.

    The loader folds such pairs into one weight; the random-model writer splits them again.
    """
    module._rvc_weight_norm = True  # type: ignore[attr-defined]
    return module

"""Regression tests for defects found by reading mypy's report of rvcfast (bugs, not typing noise)."""

from __future__ import annotations

import torch
from torch import nn

from rvcfast.models.synthesizer.flow import _Coupling


def test_flow_coupling_keeps_module_half_method() -> None:
    # the coupling layer stored its channel split as ``self.half``, hiding nn.Module.half():
    # coupling.half() and model.apply(lambda m: m.half()) raised "'int' object is not callable"
    coupling = _Coupling(8, 4, 4)
    assert coupling.half() is coupling
    assert coupling.pre.weight.dtype == torch.float16

    model = nn.Sequential(_Coupling(8, 4, 4))
    model.apply(lambda m: m.half())
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_flow_coupling_splits_channels_in_half() -> None:
    # renaming the attribute keeps the layer's shapes: half the channels in and out of the hidden net
    coupling = _Coupling(10, 6, 4)
    assert coupling.half_channels == 5
    assert coupling.pre.in_channels == 5 and coupling.post.out_channels == 5

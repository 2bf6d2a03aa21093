"""Random-weight RMVPE files in the exact format of the published ``rmvpe.pt``."""

from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..models.rmvpe import E2EConfig, e2e_state_shapes

__all__ = ["save_random_rmvpe"]


def save_random_rmvpe(
    path: str | os.PathLike[str], *, full_size: bool = True, seed: int = 0, gru_hidden: int | None = None
) -> Path:
    """Write random RMVPE weights in the exact format of the real ``rmvpe.pt``.

    The file is a plain ``torch.save``d ordered state dict with the real key
    names and order, floating tensors in fp16 (``num_batches_tracked`` int64),
    like the published file. ``full_size=True`` gives ``E2E(4, 1, (2, 2))``
    (741 entries, 90,423,165 parameters, ~181 MB); ``False`` the reduced
    architecture of the golden test model (~4 MB). Conv weights are scaled by
    fan-in so the activations stay finite; with random weights nearly every
    frame comes out voiced. ``gru_hidden`` narrows (or widens) the BiGRU from the real 256
    units: its step-by-step loop is most of a small model's time on a short input, and the
    loader reads the width from the file, so a quick test can use e.g. 32. Returns the path.
    """
    cfg = E2EConfig.full_size() if full_size else E2EConfig.reduced()
    if gru_hidden is not None:
        if int(gru_hidden) < 1:
            raise ValueError(f"gru_hidden must be a positive number of units, got {gru_hidden!r}")
        cfg = dataclasses.replace(cfg, gru_hidden=int(gru_hidden))
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

"""Training the coarse centroids of an index without faiss: RVC's list count and k-means."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["default_nlist", "kmeans"]


def default_nlist(n: int) -> int:
    """RVC's number of IVF lists for ``n`` vectors: ``min(int(16*sqrt(n)), n//39)``, at least 1."""
    return max(1, min(int(16 * math.sqrt(n)), n // 39))



def kmeans(x: torch.Tensor, nlist: int, *, niter: int, seed: int) -> torch.Tensor:
    """Plain Lloyd k-means (float32), for building indexes without faiss."""
    n, d = x.shape
    gen = np.random.default_rng(seed)
    if n > 256 * nlist:
        x = x[torch.as_tensor(np.sort(gen.choice(n, 256 * nlist, replace=False)), device=x.device)]
        n = x.shape[0]
    c = x[torch.as_tensor(gen.choice(n, nlist, replace=False), device=x.device)].clone()
    xn = (x * x).sum(1)
    for _ in range(niter):
        cn = (c * c).sum(1)
        assign = torch.addmm(cn[None, :], x, c.T, alpha=-2.0).argmin(1)
        counts = torch.bincount(assign, minlength=nlist)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None].to(x.dtype))
        if bool(empty.any()):
            # Re-seed empty clusters with the points farthest from their centroid.
            far = (xn + cn[assign] - 2 * (x * c[assign]).sum(1)).argsort(descending=True)
            ne = int(empty.sum())
            c[empty.nonzero()[:, 0]] = x[far[:ne]]
    return c

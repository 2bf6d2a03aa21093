"""The RMVPE F0 backend (the default): one cached model per (weights, device, dtype)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .. import cache
from ..weights import resolve_weights
from .base import BaseF0Extractor, as_audio16k

__all__ = ["RMVPEExtractor", "get_rmvpe_model"]


def get_rmvpe_model(
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    allow_download: bool = False,
):
    """The process-wide RMVPE model for these weights/device/dtype, loaded on first use."""
    from ..models.rmvpe import load_rmvpe

    path = resolve_weights("rmvpe", weights, allow_download=allow_download)
    dev = torch.device(device)
    return cache.get_or_load("rmvpe", path, dev, dtype, lambda: load_rmvpe(path, device=dev, dtype=dtype))


class RMVPEExtractor(BaseF0Extractor):
    """RMVPE pitch tracker (threshold 0.03, 128-band mel, BiGRU, 360-bin local-average decoding).

    Parameters
    ----------
    weights:
        Path to ``rmvpe.pt``; default: ``$RVCFAST_HOME`` then the user cache (see :mod:`rvcfast.weights`).
    threshold:
        Voicing threshold on the salience (reference: 0.03).
    pad_mode:
        How the mel is padded to a multiple of 32 frames: ``"reflect"`` (Applio, the
        default) or ``"constant"`` (RVC WebUI).
    chunk_frames:
        Run long inputs in chunks of this many frames (a multiple of 32) with
        overlap, in bounded memory; ``None`` follows the reference (32000-frame chunks).
    """

    name = "rmvpe"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        threshold: float = 0.03,
        pad_mode: str = "reflect",
        chunk_frames: int | None = None,
        allow_download: bool = False,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.threshold = float(threshold)
        self.pad_mode = pad_mode
        self.chunk_frames = chunk_frames
        self.model = get_rmvpe_model(weights, self.device, dtype, allow_download=allow_download)

    def _kwargs(self) -> dict:
        kw: dict = {"threshold": self.threshold, "pad_mode": self.pad_mode}
        if self.chunk_frames is not None:
            kw["chunk_frames"] = self.chunk_frames
        return kw

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz (float64) for ``len // 160 + 1`` frames; the audio is cast to float32 first."""
        x = as_audio16k(audio16k).astype(np.float32)
        return self.model.infer(x, **self._kwargs())

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Batched RMVPE; each result equals :meth:`extract` on that input alone."""
        xs = [as_audio16k(a).astype(np.float32) for a in audios]
        return self.model.infer_batch(xs, **self._kwargs())

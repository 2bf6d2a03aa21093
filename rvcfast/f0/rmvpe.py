"""The RMVPE F0 backend (the default): one cached model per (weights, device, dtype)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import cache
from ..weights import resolve_weights
from .base import BaseF0Extractor, as_audio16k
from .options import option_count, option_finite

__all__ = ["RMVPEExtractor", "get_rmvpe_model", "AUTO_SINGLE_PASS_FRAMES", "AUTO_CHUNK_FRAMES"]

#: Inputs up to this many frames run through RMVPE in one pass (the reference's way).
AUTO_SINGLE_PASS_FRAMES = 8192
#: Longer inputs run in chunks of this many frames (with 512 frames of context each side).
AUTO_CHUNK_FRAMES = 4096


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
        ``"auto"`` (default): inputs up to :data:`AUTO_SINGLE_PASS_FRAMES` frames (82 s)
        run in one pass, exactly like the reference; longer ones run in 4096-frame
        chunks with 512 frames of context on each side, so an hour of audio stays in
        bounded memory (measured on a 10-minute input: at most 5.6e-05 Hz from a
        single pass, identical voicing). An int chunks every input that way; ``None``
        follows the reference literally (Applio: independent 32000-frame chunks).
    """

    name = "rmvpe"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        threshold: float = 0.03,
        pad_mode: str = "reflect",
        chunk_frames: int | str | None = "auto",
        allow_download: bool = False,
    ) -> None:
        from ..models.rmvpe.predictor import FRAME_MULTIPLE, RMVPE

        super().__init__(device=device, dtype=dtype)
        self.threshold = option_finite(self.name, "threshold", threshold)
        self.pad_mode = RMVPE._check_pad_mode(pad_mode)
        if chunk_frames not in ("auto", None):
            chunk_frames = option_count(self.name, "chunk_frames", chunk_frames, minimum=0)
            RMVPE._windows(FRAME_MULTIPLE, chunk_frames, None, self.pad_mode)  # 0 or a multiple of 32
        self.chunk_frames = chunk_frames
        self.model = get_rmvpe_model(weights, self.device, self.dtype, allow_download=allow_download)

    def _kwargs(self, n_samples: int) -> dict:
        kw: dict = {"threshold": self.threshold, "pad_mode": self.pad_mode}
        chunk = self.chunk_frames
        if chunk == "auto":
            chunk = None if n_samples // 160 + 1 <= AUTO_SINGLE_PASS_FRAMES else AUTO_CHUNK_FRAMES
        if chunk is not None:
            kw["chunk_frames"] = chunk
        return kw

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz (float64) for ``len // 160 + 1`` frames; the audio is cast to float32 first."""
        x = as_audio16k(audio16k).astype(np.float32)
        return self.model.infer(x, **self._kwargs(x.shape[0]))

    def extract_blocks(self, audio16k: np.ndarray) -> list[Callable[[], np.ndarray]]:
        """:meth:`extract` as one call per network pass (an input of up to
        :data:`AUTO_SINGLE_PASS_FRAMES` frames is one, a longer one one per
        :data:`AUTO_CHUNK_FRAMES`-frame chunk): each returns the next block of frames, and
        their concatenation, in order, equals :meth:`extract`."""
        x = as_audio16k(audio16k).astype(np.float32)
        return self.model.infer_blocks(x, **self._kwargs(x.shape[0]))

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Batched RMVPE; each result equals :meth:`extract` on that input alone."""
        xs = [as_audio16k(a).astype(np.float32) for a in audios]
        short = [i for i, x in enumerate(xs) if "chunk_frames" not in self._kwargs(x.shape[0])]
        out: list[np.ndarray | None] = [None] * len(xs)
        if short:
            for i, f0 in zip(short, self.model.infer_batch([xs[i] for i in short], **self._kwargs(0))):
                out[i] = f0
        for i, x in enumerate(xs):
            if out[i] is None:
                out[i] = self.model.infer(x, **self._kwargs(x.shape[0]))
        return out  # type: ignore[return-value]

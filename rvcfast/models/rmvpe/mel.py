"""RMVPE's front end: the log-mel filterbank, its constants and reflect padding."""

from __future__ import annotations

import numpy as np
import torch

from ...constants import F0_HOP, SR_16K

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "N_MELS",
    "MEL_FMIN",
    "MEL_FMAX",
    "MEL_CLAMP",
    "mel_filterbank",
    "reflect_index",
    "reflect_pad_last",
]

SAMPLE_RATE = SR_16K
"""Input sample rate of RMVPE."""
N_FFT = 1024
"""STFT size and (periodic Hann) window length."""
HOP_LENGTH = F0_HOP
"""STFT hop: 10 ms frames, frame ``i`` centred on sample ``160 * i``."""
N_MELS = 128
MEL_FMIN = 30.0
MEL_FMAX = 8000.0
MEL_CLAMP = 1e-5


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


def reflect_index(length: int, start: int, stop: int) -> np.ndarray:
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


def reflect_pad_last(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad the last axis by ``pad`` on both sides (any length >= 1, like :func:`reflect_index`)."""
    n = x.shape[-1]
    head = torch.from_numpy(reflect_index(n, -pad, 0)).to(x.device)
    tail = torch.from_numpy(reflect_index(n, n, n + pad)).to(x.device)
    return torch.cat([x[..., head], x, x[..., tail]], dim=-1)


"""Blockwise versions of the signal stages, so hour-long inputs run in bounded memory.

Each function gives the same samples as its whole-signal counterpart (to float
rounding, and bit-identical where stated), while holding only a block plus some
context in temporary memory:

* :func:`read_mono` decodes a file block by block and mixes channels to mono, never
  holding ``[samples, channels]`` in memory (bit-identical to reading it whole).
* :func:`resample_blocks` runs the polyphase FIR resampler on blocks aligned to its
  phase period with a context wider than the filter (bit-identical).
* :func:`highpass_blocks` runs the zero-phase 48 Hz Butterworth on overlapping blocks;
  its impulse response decays below 1e-22 within 8000 samples, so 1 s of overlap
  loses nothing; the result differs from one ``filtfilt`` call only by that
  ill-conditioned filter's own float64 rounding noise (about 5e-8 relative, the same
  for any overlap). The true ends of the signal get scipy's odd extension exactly as
  ``filtfilt`` does.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import soundfile as sf
from scipy import signal

__all__ = ["read_mono", "resample_blocks", "highpass_blocks", "LONG_INPUT_SAMPLES"]

#: Inputs longer than this (16 kHz samples; 10 minutes) use the blockwise paths.
LONG_INPUT_SAMPLES = 16000 * 600

_READ_BLOCK = 1 << 20


def read_mono(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode ``path`` block by block into mono float64 (the channel mean) and its rate."""
    with sf.SoundFile(os.fspath(path)) as f:
        n, ch, sr = f.frames, f.channels, f.samplerate
        out = np.empty(n, dtype=np.float64)
        pos = 0
        while True:
            block = f.read(_READ_BLOCK, dtype="float64", always_2d=True)
            if block.shape[0] == 0:
                break
            m = block[:, 0] if ch == 1 else block.mean(axis=1)
            if pos + m.shape[0] > out.shape[0]:  # header under-reported the length
                out = np.concatenate([out[:pos], np.empty(m.shape[0] + (pos - out.shape[0]) + out.shape[0])])
            out[pos : pos + m.shape[0]] = m
            pos += m.shape[0]
    return out[:pos], int(sr)


def _poly_taps(up: int, down: int) -> np.ndarray:
    half_len = 16 * max(up, down)
    taps = signal.firwin(2 * half_len + 1, 0.97 / max(up, down), window=("kaiser", 9.0))
    return taps * up


def resample_blocks(
    audio: np.ndarray, orig_sr: int, target_sr: int, block: int = 1 << 22, dtype: type = np.float64
) -> np.ndarray:
    """Band-limited polyphase resampling, block by block (same output as one ``resample_poly`` call).

    Blocks are converted to float64 one at a time, so a long float32 signal is never
    copied whole; the result has ``dtype``.
    """
    if orig_sr == target_sr:
        return audio.astype(dtype, copy=False)
    frac = Fraction(int(target_sr), int(orig_sr))
    up, down = frac.numerator, frac.denominator
    taps = _poly_taps(up, down)
    n_out = int(math.ceil(audio.shape[0] * up / down))
    if audio.shape[0] <= block:
        return signal.resample_poly(audio.astype(np.float64, copy=False), up, down, window=taps)[:n_out].astype(dtype)
    ctx = (len(taps) // up + 2) * 2  # input samples of filter context on each side
    ctx = -(-ctx // down) * down  # a multiple of the phase period
    step = max(down, block // down * down)
    out = np.empty(n_out, dtype=dtype)
    for s in range(0, audio.shape[0], step):
        a = max(0, s - ctx)
        b = min(audio.shape[0], s + step + ctx)
        y = signal.resample_poly(audio[a:b].astype(np.float64), up, down, window=taps)
        o0 = s * up // down
        o1 = min(n_out, (s + step) * up // down)
        off = o0 - a * up // down
        out[o0:o1] = y[off : off + (o1 - o0)]
    return out


def highpass_blocks(
    audio: np.ndarray, block: int = 16000 * 60, overlap: int = 16000, out: np.ndarray | None = None
) -> np.ndarray:
    """RVC's 48 Hz zero-phase high-pass on overlapping blocks (``filtfilt`` to float64 rounding).

    ``out`` (same length) receives the result, so a caller can filter straight into a
    slice of a larger buffer.
    """
    b, a = signal.butter(N=5, Wn=48, btype="high", fs=16000)
    n = audio.shape[0]
    if out is None:
        out = np.empty(n, dtype=np.float64)
    if n <= block + 2 * overlap:
        out[:] = signal.filtfilt(b, a, audio)
        return out
    for s in range(0, n, block):
        lo = max(0, s - overlap)
        hi = min(n, s + block + overlap)
        # interior block edges get no odd extension: the overlap is a run-in that is dropped
        y = _filtfilt_edges(b, a, audio[lo:hi], first=lo == 0, last=hi == n)
        out[s : min(n, s + block)] = y[s - lo : s - lo + min(block, n - s)]
    return out


def _filtfilt_edges(b: np.ndarray, a: np.ndarray, x: np.ndarray, first: bool, last: bool) -> np.ndarray:
    """filtfilt with scipy's odd extension at true signal ends and plain run-in elsewhere."""
    padlen = 3 * max(len(a), len(b))
    left = 2 * x[0] - x[padlen:0:-1] if first else x[:0]
    right = 2 * x[-1] - x[-2 : -padlen - 2 : -1] if last else x[:0]
    ext = np.concatenate([left, x, right])
    zi = signal.lfilter_zi(b, a)
    y, _ = signal.lfilter(b, a, ext, zi=zi * ext[0])
    y = y[::-1]
    y, _ = signal.lfilter(b, a, y, zi=zi * y[0])
    y = y[::-1]
    return y[len(left) : len(left) + len(x)]

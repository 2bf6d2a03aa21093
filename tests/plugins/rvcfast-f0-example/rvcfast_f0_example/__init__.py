"""An example third-party F0 tracker for rvcfast: normalised autocorrelation in numpy.

Registered under the ``rvcfast.f0_extractors`` entry-point group as ``example-autocorr``.
It does not import rvcfast: it satisfies ``rvcfast.protocols.F0Extractor`` by shape
(``name``, ``sample_rate``, ``hop_length``, ``extract``, ``extract_batch``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["AutocorrExtractor"]
__version__ = "0.1.0"


class AutocorrExtractor:
    """Windowed autocorrelation pitch tracker (Boersma-style window correction).

    One frame every 160 samples at 16 kHz, frame ``i`` centred on sample ``160 * i``
    (zero padding at the edges), so ``len(audio) // 160 + 1`` frames, 0 = unvoiced.

    Args:
        device: accepted (and ignored) so rvcfast can pass its usual options.
        dtype: accepted (and ignored), likewise.
        f0_min: lowest pitch in Hz (sets the window: 3 periods of ``f0_min``).
        f0_max: highest pitch in Hz.
        threshold: normalised autocorrelation a frame's peak must exceed to be voiced.
        silence_db: frames quieter than this (dB relative to the loudest frame) are unvoiced.
    """

    name = "example-autocorr"
    sample_rate = 16000
    hop_length = 160

    def __init__(
        self,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        f0_min: float = 50.0,
        f0_max: float = 1100.0,
        threshold: float = 0.6,
        silence_db: float = -45.0,
    ) -> None:
        if not 0 < f0_min < f0_max < self.sample_rate / 4:
            raise ValueError(f"need 0 < f0_min < f0_max < {self.sample_rate // 4}, got {f0_min}, {f0_max}")
        self.device = device
        self.dtype = dtype
        self.f0_min = float(f0_min)
        self.f0_max = float(f0_max)
        self.threshold = float(threshold)
        self.silence_db = float(silence_db)
        self.win = 2 * math.ceil(1.5 * self.sample_rate / self.f0_min)  # 3 periods of f0_min, even
        self.nfft = 1 << (2 * self.win - 1).bit_length()
        self.window = np.hanning(self.win)
        wac = np.fft.irfft(np.abs(np.fft.rfft(self.window, self.nfft)) ** 2, self.nfft)[: self.win]
        self._window_ac = wac / wac[0]
        self.lag_min = max(2, int(math.floor(self.sample_rate / self.f0_max)))
        self.lag_max = min(int(math.ceil(self.sample_rate / self.f0_min)), self.win - 2)

    def __repr__(self) -> str:
        return f"AutocorrExtractor(f0_min={self.f0_min}, f0_max={self.f0_max}, threshold={self.threshold})"

    def extract(self, audio16k: Any) -> np.ndarray:
        """F0 in Hz per 10 ms frame (0 = unvoiced) for one 1-D array at 16 kHz."""
        if hasattr(audio16k, "detach"):  # a torch tensor
            audio16k = audio16k.detach().cpu().numpy()
        x = np.asarray(audio16k, dtype=np.float64).reshape(-1)
        n_frames = len(x) // self.hop_length + 1
        half = self.win // 2
        xp = np.pad(x, (half, half))
        frames = sliding_window_view(xp, self.win)[:: self.hop_length][:n_frames]
        f0 = np.zeros(n_frames, dtype=np.float64)
        rms = np.sqrt(np.mean(frames**2, axis=1)) if n_frames else np.zeros(0)
        loud = rms.max(initial=0.0)
        if loud <= 0.0:
            return f0
        audible = rms > loud * 10.0 ** (self.silence_db / 20.0)
        for start in range(0, n_frames, 512):  # bounded memory on long inputs
            sl = slice(start, min(n_frames, start + 512))
            f0[sl] = self._chunk(frames[sl]) * audible[sl]
        return f0

    def _chunk(self, frames: np.ndarray) -> np.ndarray:
        seg = (frames - frames.mean(axis=1, keepdims=True)) * self.window
        ac = np.fft.irfft(np.abs(np.fft.rfft(seg, self.nfft, axis=1)) ** 2, self.nfft, axis=1)[:, : self.win]
        energy = ac[:, :1]
        r = np.where(energy > 0, ac / np.where(energy > 0, energy, 1.0), 0.0) / self._window_ac
        lo, hi = self.lag_min, self.lag_max
        mid = r[:, lo : hi + 1]
        peaks = (mid > r[:, lo - 1 : hi]) & (mid >= r[:, lo + 1 : hi + 2])
        best = np.where(peaks, mid, -np.inf).max(axis=1)
        # The shortest lag whose peak is within 10 % of the best: avoids octave-down errors.
        good = peaks & (mid >= 0.9 * best[:, None]) & (mid > self.threshold)
        voiced = good.any(axis=1)
        idx = np.argmax(good, axis=1) + lo
        rows = np.arange(len(r))
        y0, y1, y2 = r[rows, idx - 1], r[rows, idx], r[rows, idx + 1]
        denom = y0 - 2.0 * y1 + y2
        shift = np.where(np.abs(denom) > 1e-12, 0.5 * (y0 - y2) / np.where(denom == 0, 1.0, denom), 0.0)
        lag = idx + np.clip(shift, -0.5, 0.5)
        return np.where(voiced, self.sample_rate / lag, 0.0)

    def extract_batch(self, audios: Sequence[Any]) -> list[np.ndarray]:
        """F0 for several arrays; each equals :meth:`extract` on that array alone."""
        return [self.extract(a) for a in audios]

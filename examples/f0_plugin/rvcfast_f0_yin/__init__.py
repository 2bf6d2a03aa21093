"""YIN pitch tracking as an rvcfast F0 plugin.

What rvcfast asks of an F0 backend (the ``rvcfast.protocols.F0Extractor`` protocol):

* ``name``: a string shown in messages and results;
* ``sample_rate = 16000`` and ``hop_length = 160``: input is 16 kHz mono audio and the
  output has one value per 10 ms frame -- rvcfast rejects anything else;
* ``extract(audio16k)``: a 1-D float array in, F0 in Hz out, ``len(audio) // 160 + 1``
  frames, frame ``i`` centred on sample ``160 * i``, **0 for unvoiced frames**;
* ``extract_batch(list_of_arrays)``: one result per array, each equal to ``extract`` on
  that array alone (a loop is fine; a GPU tracker would batch here).

rvcfast does the rest: key shift, the coarse pitch the voice model takes, batching across
files. This module does not import rvcfast at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["YinExtractor"]
__version__ = "0.1.0"


class YinExtractor:
    """The YIN pitch tracker (cumulative mean normalised difference, absolute threshold).

    Args:
        device: rvcfast always passes ``device=`` (and may pass ``dtype=``); a numpy
            tracker accepts and ignores them. Accepting them keeps
            ``Converter.from_pretrained(..., device="cuda")`` working with this backend.
        dtype: accepted and ignored, likewise.
        f0_min: lowest pitch in Hz; sets the longest lag and the analysis window.
        f0_max: highest pitch in Hz.
        threshold: YIN's absolute threshold on the normalised difference (0.1-0.2 is
            usual); a frame whose dip never goes below it is unvoiced.
        silence_db: frames quieter than this, in dB below the loudest frame, are unvoiced.

    Every keyword here can be set by users: ``get_f0_extractor("yin-example",
    threshold=0.15)``, ``f0_options={"threshold": 0.15}`` in ``from_pretrained``, or
    ``--f0-option threshold=0.15`` on the command line. rvcfast refuses options the
    constructor does not accept, with a message listing the ones it does.
    """

    # The three attributes of the protocol. They may be class attributes.
    name = "yin-example"
    sample_rate = 16000
    hop_length = 160

    def __init__(
        self,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        f0_min: float = 50.0,
        f0_max: float = 1100.0,
        threshold: float = 0.15,
        silence_db: float = -50.0,
    ) -> None:
        # Validate options early with a clear message: it is what the user will see.
        if not 0 < f0_min < f0_max <= self.sample_rate / 4:
            raise ValueError(f"need 0 < f0_min < f0_max <= {self.sample_rate // 4} Hz, got {f0_min}, {f0_max}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be within (0, 1), got {threshold}")
        self.device, self.dtype = device, dtype
        self.f0_min, self.f0_max = float(f0_min), float(f0_max)
        self.threshold = float(threshold)
        self.silence_db = float(silence_db)
        self.tau_min = max(2, int(math.floor(self.sample_rate / self.f0_max)))
        self.tau_max = int(math.ceil(self.sample_rate / self.f0_min))
        self.window = self.tau_max  # integration window W: one period of f0_min
        self.frame = self.window + self.tau_max + 1  # samples a frame needs
        self.nfft = 1 << (self.frame + self.window).bit_length()

    def __repr__(self) -> str:
        return f"YinExtractor(f0_min={self.f0_min}, f0_max={self.f0_max}, threshold={self.threshold})"

    # -- the protocol ------------------------------------------------------------------

    def extract(self, audio16k: Any) -> np.ndarray:
        """F0 in Hz per 10 ms frame (0 = unvoiced) for one 1-D array at 16 kHz."""
        if hasattr(audio16k, "detach"):  # rvcfast passes numpy, but accept a torch tensor too
            audio16k = audio16k.detach().cpu().numpy()
        x = np.asarray(audio16k, dtype=np.float64).reshape(-1)
        n_frames = len(x) // self.hop_length + 1  # the frame count rvcfast expects
        # Frame i starts half a frame before sample 160*i, so it is centred there.
        half = self.frame // 2
        padded = np.pad(x, (half, self.frame - half))
        frames = sliding_window_view(padded, self.frame)[:: self.hop_length][:n_frames]
        f0 = np.zeros(n_frames)
        rms = np.sqrt(np.mean(frames**2, axis=1))
        loudest = rms.max(initial=0.0)
        if loudest <= 0:
            return f0  # digital silence: all unvoiced
        audible = rms > loudest * 10 ** (self.silence_db / 20)
        for start in range(0, n_frames, 256):  # bounded memory for long inputs
            part = slice(start, min(n_frames, start + 256))
            f0[part] = np.where(audible[part], self._yin(frames[part]), 0.0)
        return f0

    def extract_batch(self, audios: Sequence[Any]) -> list[np.ndarray]:
        """One F0 track per array, each equal to :meth:`extract` on that array alone."""
        return [self.extract(a) for a in audios]

    # -- YIN ------------------------------------------------------------------------------

    def _yin(self, frames: np.ndarray) -> np.ndarray:
        """F0 (0 = unvoiced) of each row of ``frames`` ([n, frame])."""
        W, T = self.window, self.tau_max
        # Step 1, the difference function d(tau) = sum_j (x_j - x_{j+tau})^2 over j < W,
        # expanded as energy(x[0:W]) + energy(x[tau:tau+W]) - 2 * cross-correlation.
        spec_head = np.fft.rfft(frames[:, :W], self.nfft, axis=1)
        spec_all = np.fft.rfft(frames, self.nfft, axis=1)
        xcorr = np.fft.irfft(np.conj(spec_head) * spec_all, self.nfft, axis=1)[:, : T + 1]
        csum = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
        taus = np.arange(T + 1)
        energy = csum[:, taus + W] - csum[:, taus]
        d = np.maximum(energy[:, :1] + energy - 2 * xcorr, 0.0)
        # Step 2, cumulative mean normalisation: d'(tau) = d(tau) * tau / sum_{k<=tau} d(k).
        running = np.cumsum(d[:, 1:], axis=1)
        dn = np.ones_like(d)
        dn[:, 1:] = d[:, 1:] * taus[1:] / np.where(running > 0, running, 1.0)
        # Step 3, absolute threshold: the first dip below the threshold, then the bottom of
        # that dip (the lowest value before d' rises above the threshold again).
        lags = taus[None, :]
        below = (dn < self.threshold) & (lags >= self.tau_min)
        voiced = below.any(axis=1)
        first = np.argmax(below, axis=1)[:, None]
        after_dip = (lags > first) & ~below
        dip_end = np.where(after_dip.any(axis=1), np.argmax(after_dip, axis=1), T + 1)[:, None]
        in_dip = (lags >= first) & (lags < dip_end)
        tau = np.argmin(np.where(in_dip, dn, np.inf), axis=1)
        # Step 4, parabolic interpolation around the chosen lag for sub-sample precision.
        rows = np.arange(len(frames))
        t = np.clip(tau, 1, T - 1)
        y0, y1, y2 = dn[rows, t - 1], dn[rows, t], dn[rows, t + 1]
        denom = y0 - 2 * y1 + y2
        shift = np.where(np.abs(denom) > 1e-12, 0.5 * (y0 - y2) / np.where(denom == 0, 1.0, denom), 0.0)
        period = t + np.clip(shift, -1.0, 1.0)
        f0 = self.sample_rate / np.maximum(period, 1e-9)
        return np.where(voiced & (f0 >= self.f0_min) & (f0 <= self.f0_max), f0, 0.0)

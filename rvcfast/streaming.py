"""Post-processing of an output that is sent piece by piece (:meth:`Engine.stream`).

:func:`rvcfast.pipeline.finish` works on the whole output: RMS mix, resampling, the
0.99 output peak guard, noise reduction and effects. A stream has only the pieces
synthesised so far, so :class:`StreamFinisher` applies the same steps one piece at a
time:

* **resampling** goes through soxr's stream interface: the concatenated pieces are
  bit-identical to resampling the whole output;
* **RMS mix** (``rms_mix_rate < 1``) is computed for each piece against the span of
  the input it covers; the envelope near the joins differs from the whole-file mix;
* **peak guard**: the whole-file guard scales everything by one factor found from the
  loudest sample of the whole output. Here the factor only ever decreases: a piece
  whose peak exceeds 0.99 lowers the level from that piece on (earlier pieces, already
  sent, stay louder than the whole-file output would have them);
* **noise reduction and effects** run on each piece separately (an effect's tail, e.g.
  a reverb's, is cut at each join).

So the concatenated stream equals the one-shot output whenever the RMS mix is off
(``rms_mix_rate == 1``), the output's peak stays below 0.99 and ``clean``/``effects``
are off. :meth:`Engine.stream` avoids all of this for inputs of one segment (up to
41 s), which it sends as one piece finished exactly like the one-shot output.
"""

from __future__ import annotations

import numpy as np

from .constants import OUTPUT_PEAK, SR_16K
from .dsp import Resampler, change_rms
from .errors import RvcfastError
from .params import ConversionParams
from .pipeline import PreparedAudio

__all__ = ["StreamFinisher"]


class StreamFinisher:
    """Finishes the trimmed segment outputs of one input, in order, as they arrive."""

    def __init__(self, prep: PreparedAudio, model_rate: int, params: ConversionParams) -> None:
        self.prep = prep
        self.model_rate = int(model_rate)
        self.params = params
        self.rate = int(params.output_sample_rate) if params.output_sample_rate is not None else self.model_rate
        self._resampler = Resampler(self.model_rate, self.rate, np.float32) if self.rate != self.model_rate else None
        self._gain = 1.0
        self._pos = 0  # model-rate samples finished so far
        self._finished = False  # the last piece was pushed

    def push(self, piece: np.ndarray, last: bool = False) -> np.ndarray:
        """The finished audio for the next segment output (``last`` flushes the resampler).

        A push after the one marked ``last`` raises :class:`~rvcfast.errors.RvcfastError`
        (the output is complete; with or without resampling).
        """
        if self._finished:
            raise RvcfastError(
                f"{getattr(self.prep, 'label', None) or 'stream'}: the output was already finished (a piece was pushed with last=True); "
                "start a new StreamFinisher for another output"
            )
        last = bool(last)  # soxr takes only a Python bool (a NumPy bool is a TypeError there)
        self._finished = last
        out = np.asarray(piece, dtype=np.float32)
        n = out.shape[0]
        if self.params.rms_mix_rate != 1 and n:
            out = self._rms_mix(out)
        self._pos += n
        if self._resampler is not None:
            out = self._resampler.push(out, last=last)
        return self._effects(self._peak_guard(np.array(out, dtype=np.float32)))

    def _rms_mix(self, out: np.ndarray) -> np.ndarray:
        src = self.prep.audio
        a = int(round(self._pos * SR_16K / self.model_rate))
        b = int(round((self._pos + out.shape[0]) * SR_16K / self.model_rate))
        span = src[min(a, src.shape[0]) : min(b, src.shape[0])]
        if span.shape[0] < 2:
            return out
        return change_rms(span, SR_16K, out, self.model_rate, self.params.rms_mix_rate)

    def _peak_guard(self, out: np.ndarray) -> np.ndarray:
        if out.size:
            peak = float(np.abs(out).max()) * self._gain
            if peak > OUTPUT_PEAK:
                self._gain *= OUTPUT_PEAK / peak
        if self._gain != 1.0:
            out *= np.float32(self._gain)
        return out

    def _effects(self, out: np.ndarray) -> np.ndarray:
        if not out.size:
            return out
        if self.params.clean > 0:
            from .effects import denoise

            out = denoise(out, self.rate, self.params.clean)
        if self.params.effects:
            from .effects import apply_effects

            out = apply_effects(out, self.rate, self.params.effects)
        return np.asarray(out, dtype=np.float32)

"""SOLA: joining independently synthesised blocks without clicks or phase cancellation.

A block-by-block converter (:class:`rvcfast.realtime.RealtimeConverter`) synthesises each
new block from its own window of input. Two windows that overlap in time give slightly
different waveforms there: above all the phase of the voiced harmonics differs (the
vocoder's sine source starts its phase at each window's first frame). A plain overlap-add
of such blocks adds two copies of a harmonic with a phase difference: where it is near
half a period they cancel, and the output shows a dip (or, block after block, a beat)
at every join. SOLA (synchronised overlap-add, as in DDSP-SVC and RVC's realtime GUI)
first moves the new block by up to ``search`` samples to where its head correlates best
with the previous block's tail, then crossfades the two with power-complementary
``sin²`` / ``cos²`` windows.

Everything here is plain numpy on 1-D float arrays, one stream per :class:`Sola`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fade_windows", "sola_offset", "crossfade", "Sola"]

#: Added to the energy under the normalised correlation's square root (silence divides by it).
_EPS = 1e-8


def fade_windows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fade_in, fade_out)`` over ``n`` samples: ``sin²`` rising from 0 to 1 and ``1 - sin²``
    (``cos²``) falling from 1 to 0; they sum to 1 at every sample (RVC's realtime windows)."""
    if n < 1:
        raise ValueError(f"a crossfade needs at least one sample, got {n}")
    fade_in = np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, n)) ** 2
    return fade_in.astype(np.float32), (1.0 - fade_in).astype(np.float32)


def sola_offset(head: np.ndarray, tail: np.ndarray, search: int) -> int:
    """The shift ``o`` in ``0..search`` at which ``head[o : o + len(tail)]`` best matches ``tail``.

    Best is the largest normalised cross-correlation ``<head[o:o+n], tail> / ||head[o:o+n]||``
    (the tail's own norm is the same for every ``o``). ``head`` must hold at least
    ``len(tail) + search`` samples. A silent tail (or head) correlates 0 everywhere: the
    result is then 0, the nominal position.
    """
    n = tail.shape[0]
    if search < 0 or head.shape[0] < n + search:
        raise ValueError(f"sola_offset needs {n + search} head samples for a {n}-sample tail and search {search}, got {head.shape[0]}")
    h = np.asarray(head[: n + search], dtype=np.float64)
    t = np.asarray(tail, dtype=np.float64)
    nom = np.correlate(h, t, mode="valid")  # search + 1 values
    energy = np.concatenate([[0.0], np.cumsum(h * h)])
    den = np.sqrt(np.maximum(energy[n:] - energy[: search + 1], 0.0) + _EPS)
    return int(np.argmax(nom / den))


def crossfade(tail: np.ndarray, head: np.ndarray, fade_in: np.ndarray, fade_out: np.ndarray) -> np.ndarray:
    """``head * fade_in + tail * fade_out`` (all of one length): the old signal fading out while
    the new one fades in."""
    return head * fade_in + tail * fade_out


class Sola:
    """One stream's SOLA state: joins blocks of ``block + crossfade + search`` new samples.

    Each :meth:`step` takes the newest synthesis of a span that starts ``crossfade + search``
    samples before the block's nominal start, finds the offset (:func:`sola_offset`) at which
    its head best continues the previous block's kept tail, crossfades there and returns
    exactly ``block`` samples; the ``crossfade`` samples after them are kept as the next tail.
    The first step crossfades from silence. The output therefore runs ``crossfade + search``
    samples behind the input timeline of the spans, less the offset chosen (0..``search``):
    a block is never moved by more than ``search`` samples and the delay never drifts.
    """

    def __init__(self, block: int, crossfade: int, search: int) -> None:
        if block < 1 or crossfade < 1 or crossfade > block or search < 0:
            raise ValueError(f"Sola needs 1 <= crossfade <= block and search >= 0, got block {block}, crossfade {crossfade}, search {search}")
        self.block, self.crossfade, self.search = int(block), int(crossfade), int(search)
        self.fade_in, self.fade_out = fade_windows(self.crossfade)
        self.tail = np.zeros(self.crossfade, dtype=np.float32)
        #: the offset the last :meth:`step` chose (0..search)
        self.last_offset = 0

    @property
    def span(self) -> int:
        """Samples each :meth:`step` takes: ``block + crossfade + search``."""
        return self.block + self.crossfade + self.search

    def reset(self) -> None:
        """Forget the kept tail: the next block crossfades from silence."""
        self.tail[:] = 0
        self.last_offset = 0

    def step(self, new: np.ndarray) -> np.ndarray:
        """``block`` output samples from the newest ``span`` synthesised samples."""
        if new.ndim != 1 or new.shape[0] != self.span:
            raise ValueError(f"Sola.step takes {self.span} samples (block + crossfade + search), got shape {new.shape}")
        c = self.crossfade
        o = sola_offset(new, self.tail, self.search)
        piece = np.array(new[o : o + self.block + c], dtype=np.float32)
        piece[:c] = crossfade(self.tail, piece[:c], self.fade_in, self.fade_out)
        self.tail = piece[self.block :].copy()
        self.last_offset = o
        return piece[: self.block]

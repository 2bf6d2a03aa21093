"""Exact Viterbi decoding for banded transition matrices (CREPE's pitch tracker).

torchcrepe decodes its pitch posteriorgram with ``librosa.sequence.viterbi``:
log-domain, float64 path scores, a uniform initial distribution, ``epsilon =
finfo(prob.dtype).tiny`` added before every logarithm, and ties resolved towards
the lowest previous state (a strict ``>`` scan). This module reproduces that
decoder bit for bit without librosa or numba.

CREPE's transition matrix is banded: ``transition[k, j] > 0`` only for
``|k - j| <= half_width``. Out of the band its log is the constant
``log(epsilon)``, so the best out-of-band predecessor of state ``j`` is simply
the best ``value[k] + log(epsilon)`` over ``k < j - half_width`` or
``k > j + half_width``: running prefix/suffix maxima give it for every ``j`` at
once. Each step therefore costs ``O(S * (2 * half_width + 1))`` instead of
``O(S**2)`` while choosing exactly the predecessor the dense search would.
Several independent sequences (of different lengths) are decoded together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "crepe_transition",
    "BandedViterbi",
    "viterbi_dense",
]


def crepe_transition(n_states: int = 360, width: int = 12) -> np.ndarray:
    """torchcrepe's Viterbi transition matrix: a triangle of ``width`` bins, rows normalised.

    ``transition[k, j] = max(width - |k - j|, 0) / sum_j(...)`` in float64, built
    exactly as ``torchcrepe.decode.viterbi`` builds it.
    """
    idx = np.arange(n_states)
    xx, yy = np.meshgrid(idx, idx)
    tri = np.maximum(width - np.abs(xx - yy), 0)
    return tri / tri.sum(axis=1, keepdims=True)


def _log_terms(transition: np.ndarray, prob_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.floating]:
    """log transition, log uniform initial distribution and epsilon, as librosa computes them."""
    eps = np.finfo(prob_dtype).tiny
    n_states = transition.shape[0]
    p_init = np.empty(n_states)
    p_init.fill(1.0 / n_states)
    log_trans = np.log(transition + eps)
    log_p_init = np.log(p_init + eps)
    return log_trans, log_p_init, eps


def viterbi_dense(prob: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """Straightforward ``O(T * S**2)`` decoder with librosa's semantics (reference/testing).

    ``prob``: ``[S, T]`` observation likelihoods (float32 as torchcrepe passes them).
    Returns the state sequence ``[T]`` as int64.
    """
    n_states, n_steps = prob.shape
    log_trans, log_p_init, eps = _log_terms(transition, prob.dtype)
    log_prob = np.log(prob + eps).T  # [T, S], in prob's dtype
    value = np.zeros((n_steps, n_states), dtype=np.float64)
    ptr = np.zeros((n_steps, n_states), dtype=np.int64)
    value[0] = log_prob[0] + log_p_init
    for t in range(1, n_steps):
        cost = value[t - 1][:, None] + log_trans  # cost[k, j]
        ptr[t] = np.argmax(cost, axis=0)
        value[t] = log_prob[t] + cost[ptr[t], np.arange(n_states)]
    state = np.zeros(n_steps, dtype=np.int64)
    state[-1] = int(np.argmax(value[-1]))
    for t in range(n_steps - 2, -1, -1):
        state[t] = ptr[t + 1, state[t + 1]]
    return state


class BandedViterbi:
    """Exact librosa-style Viterbi decoder for a banded transition matrix.

    Args:
        transition: ``[S, S]`` row-stochastic matrix whose entries are exactly zero
            outside ``|k - j| <= half_width``.
        half_width: the band half-width; found from ``transition`` when omitted.
        prob_dtype: dtype of the observation probabilities (fixes ``epsilon``).
    """

    def __init__(
        self,
        transition: np.ndarray,
        half_width: int | None = None,
        prob_dtype: np.dtype | type = np.float32,
    ) -> None:
        transition = np.asarray(transition, dtype=np.float64)
        n_states = transition.shape[0]
        if transition.shape != (n_states, n_states):
            raise ValueError(f"transition must be square, got {transition.shape}")
        kk, jj = np.nonzero(transition)
        band = int(np.abs(kk - jj).max()) if kk.size else 0
        if half_width is None:
            half_width = band
        elif band > half_width:
            raise ValueError(f"transition has non-zero entries {band} states off the diagonal (> {half_width})")
        self.n_states = n_states
        self.half_width = int(half_width)
        self.prob_dtype = np.dtype(prob_dtype)
        log_trans, self.log_p_init, self.eps = _log_terms(transition, self.prob_dtype)
        # Every out-of-band entry is log(0 + eps): one constant.
        self.log_out = float(np.log(np.float64(0.0) + self.eps))
        w = self.half_width
        n_off = 2 * w + 1
        # band[d, j] = log_trans[j + d - w, j], -inf where that predecessor does not exist.
        band_lt = np.full((n_off, n_states), -np.inf)
        for d in range(n_off):
            k = np.arange(n_states) + d - w
            ok = (k >= 0) & (k < n_states)
            band_lt[d, ok] = log_trans[k[ok], np.arange(n_states)[ok]]
        self.band_lt = band_lt
        self.band_lt_t = np.ascontiguousarray(band_lt.T)  # [S, 2w+1]
        self.arange = np.arange(n_states)

    # ------------------------------------------------------------------
    def _step(self, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best predecessor cost and index for every state, for a batch ``prev`` ``[B, S]``."""
        n_b, n_s = prev.shape
        w = self.half_width
        n_off = 2 * w + 1
        # In-band candidates, ordered by predecessor index k = j + d - w.
        padded = np.full((n_b, n_s + 2 * w), -np.inf)
        padded[:, w : w + n_s] = prev
        # window[b, j, d] = prev[b, j + d - w]
        window = np.lib.stride_tricks.sliding_window_view(padded, n_off, axis=1)
        band_cost = window + self.band_lt_t  # [B, S, n_off]
        d_best = np.argmax(band_cost, axis=2)  # first maximum = lowest k
        band_best = np.take_along_axis(band_cost, d_best[:, :, None], axis=2)[:, :, 0]
        band_idx = self.arange[None, :] + d_best - w

        # Out-of-band candidates: value[k] + log(eps), identical for every j.
        out = prev + self.log_out
        # Prefix maxima with first (lowest) argmax.
        pre_max = np.maximum.accumulate(out, axis=1)
        prev_pre = np.concatenate([np.full((n_b, 1), -np.inf), pre_max[:, :-1]], axis=1)
        pre_idx = np.maximum.accumulate(np.where(out > prev_pre, self.arange[None, :], 0), axis=1)
        # Suffix maxima with first (lowest) argmax: scan right to left, ties move left.
        rev = out[:, ::-1]
        suf_max_r = np.maximum.accumulate(rev, axis=1)
        prev_suf = np.concatenate([np.full((n_b, 1), -np.inf), suf_max_r[:, :-1]], axis=1)
        suf_pos_r = np.maximum.accumulate(np.where(rev >= prev_suf, self.arange[None, :], 0), axis=1)
        suf_max = suf_max_r[:, ::-1]
        suf_idx = (n_s - 1) - suf_pos_r[:, ::-1]

        # left[j] = best over k <= j - w - 1; right[j] = best over k >= j + w + 1.
        left_best = np.full((n_b, n_s), -np.inf)
        left_idx = np.zeros((n_b, n_s), dtype=np.int64)
        right_best = np.full((n_b, n_s), -np.inf)
        right_idx = np.zeros((n_b, n_s), dtype=np.int64)
        if n_s > w + 1:
            left_best[:, w + 1 :] = pre_max[:, : n_s - w - 1]
            left_idx[:, w + 1 :] = pre_idx[:, : n_s - w - 1]
            right_best[:, : n_s - w - 1] = suf_max[:, w + 1 :]
            right_idx[:, : n_s - w - 1] = suf_idx[:, w + 1 :]

        # Overall first maximum in index order: left < band < right.
        best = np.maximum(np.maximum(left_best, band_best), right_best)
        idx = np.where(left_best == best, left_idx, np.where(band_best == best, band_idx, right_idx))
        return best, idx

    def decode(self, probs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Decode several independent sequences; ``probs[i]`` is ``[S, T_i]``.

        Returns one int64 state sequence ``[T_i]`` per input, each equal to
        ``librosa.sequence.viterbi(probs[i], transition)``.
        """
        if not probs:
            return []
        n_s = self.n_states
        lengths = [int(p.shape[1]) for p in probs]
        for p in probs:
            if p.ndim != 2 or p.shape[0] != n_s:
                raise ValueError(f"expected [{n_s}, T] probabilities, got {p.shape}")
        n_b, t_max = len(probs), max(lengths)
        out: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in probs]
        live = [i for i, n in enumerate(lengths) if n > 0]
        if not live:
            return out
        log_prob = np.zeros((n_b, t_max, n_s), dtype=self.prob_dtype)
        for i, p in enumerate(probs):
            if lengths[i]:
                log_prob[i, : lengths[i]] = np.log(p.astype(self.prob_dtype, copy=False) + self.eps).T
        ptr = np.zeros((t_max, n_b, n_s), dtype=np.int16 if n_s < 32768 else np.int64)
        value = log_prob[:, 0].astype(np.float64) + self.log_p_init
        last = np.zeros((n_b, n_s))
        for i in live:
            if lengths[i] == 1:
                last[i] = value[i]
        for t in range(1, t_max):
            best, idx = self._step(value)
            ptr[t] = idx
            value = log_prob[:, t] + best
            for i in live:
                if lengths[i] == t + 1:
                    last[i] = value[i]
        for i in live:
            n = lengths[i]
            state = np.zeros(n, dtype=np.int64)
            state[-1] = int(np.argmax(last[i]))
            for t in range(n - 2, -1, -1):
                state[t] = ptr[t + 1, i, state[t + 1]]
            out[i] = state
        return out

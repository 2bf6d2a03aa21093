"""Combine several F0 trackers frame by frame (``hybrid:rmvpe+crepe``).

Applio offers ``hybrid[...]`` methods, which crash at its HEAD; historically they took
``np.nanmedian`` across the methods' tracks with unvoiced frames left at 0, so a frame
that only one of two methods called voiced came out at half its pitch. rvcfast's rule
(documented on :class:`HybridExtractor`) votes on voicing first and takes the median in
log-frequency over the voiced tracks only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ParameterError
from ..protocols import F0Extractor
from .base import HOP_LENGTH, SAMPLE_RATE, BaseF0Extractor, as_audio16k, checked_track, frame_tolerance

__all__ = ["HybridExtractor", "checked_member_track", "combine_f0", "frame_tolerance"]


def _fit(f0: np.ndarray, n_frames: int) -> np.ndarray:
    f0 = np.asarray(f0, dtype=np.float64)
    if f0.ndim != 1:  # flattening a [T, 2] or [2, T] track would interleave frames
        raise ParameterError(f"combine_f0 needs 1-D tracks (one F0 value per frame), got shape {f0.shape}")
    if len(f0) >= n_frames:
        return f0[:n_frames]
    return np.pad(f0, (0, n_frames - len(f0)))


def checked_member_track(track: object, n_frames: int, member: str) -> np.ndarray:
    """``track`` of the hybrid member ``member`` as a 1-D float64 array, or an
    :class:`~rvcfast.errors.RvcfastError` naming the member: the checks a single backend's
    track gets (:func:`~rvcfast.f0.base.checked_track`), so a member with the wrong hop or
    layout cannot be silently padded, trimmed or flattened into the vote."""
    return checked_track(track, n_frames, f"hybrid member {member!r}")


def _min_voiced(value: object, n_backends: int) -> int:
    """``min_voiced`` as an int in ``1..n_backends`` (an integer, or a whole number written as
    text); :class:`ParameterError` otherwise (a word, a fraction, ``True``...)."""
    number: int | None = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdecimal() and value.isascii():
        number = int(value)  # isascii: "²" and other non-ASCII digits are refused, not a ValueError
    if number is None or not 1 <= number <= n_backends:
        raise ParameterError(f"hybrid F0 option min_voiced must be a whole number from 1 to {n_backends}, got {value!r}")
    return number


def combine_f0(tracks: Sequence[np.ndarray], n_frames: int, min_voiced: int | None = None) -> np.ndarray:
    """Combine F0 tracks (Hz, 0 or NaN = unvoiced) into one of ``n_frames`` frames.

    Each track is trimmed or zero-padded at the end to ``n_frames``. A frame is voiced
    when at least ``min_voiced`` tracks (default: a strict majority, ``len(tracks) // 2 + 1``)
    give it a positive, finite F0; its value is then the median of those tracks' values
    in log-frequency (for an even count, the geometric mean of the middle two). Other
    frames are 0. ``min_voiced`` must be a whole number from 1 to ``len(tracks)`` and every
    track 1-D (:class:`ParameterError` otherwise).
    """
    if not tracks:
        raise ParameterError("combine_f0 needs at least one track")
    need = len(tracks) // 2 + 1 if min_voiced is None else _min_voiced(min_voiced, len(tracks))
    stack = np.stack([_fit(t, n_frames) for t in tracks])  # [K, T]
    voiced = np.isfinite(stack) & (stack > 0)
    logs = np.where(voiced, np.log(np.where(voiced, stack, 1.0)), np.nan)
    out = np.zeros(n_frames, dtype=np.float64)
    keep = voiced.sum(axis=0) >= need
    if keep.any():
        out[keep] = np.exp(np.nanmedian(logs[:, keep], axis=0))
    return out


class HybridExtractor(BaseF0Extractor):
    """Per-frame vote and log-frequency median over several F0 extractors.

    Rule, per 10 ms frame:

    * every backend's track is trimmed or zero-padded (at the end) to
      ``len(audio) // 160 + 1`` frames;
    * the frame is **voiced** when at least ``min_voiced`` backends give it a positive F0.
      The default is a strict majority (``len(backends) // 2 + 1``): 2 of 2, 2 of 3,
      3 of 4. ``min_voiced=1`` voices a frame when any backend does;
    * a voiced frame's F0 is the median, in log-frequency, of the F0 of the backends
      that call it voiced (so one backend's octave error is outvoted by two that agree);
      unvoiced frames are 0.

    Args:
        backends: the extractors to combine (any objects satisfying
            :class:`~rvcfast.protocols.F0Extractor`), at least two.
        min_voiced: how many backends must call a frame voiced, a whole number in
            ``1..len(backends)`` (default: a strict majority).
        name: the name reported by :attr:`name`; default ``"hybrid:" + "+".join(names)``.

    ``extract_batch`` runs each backend's own ``extract_batch`` (so batched backends stay
    batched) and combines the results item by item.

    Each member's track is checked before the vote (:func:`checked_member_track`): a track
    that is not 1-D, holds NaN, infinite or negative values, or is more than 8 frames
    (plus 1 %) off raises :class:`~rvcfast.errors.RvcfastError` naming the member.
    """

    def __init__(
        self,
        backends: Sequence[F0Extractor],
        *,
        min_voiced: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        backends = list(backends)
        if len(backends) < 2:
            raise ParameterError(f"a hybrid F0 extractor needs at least two backends, got {len(backends)}")
        for b in backends:
            if not isinstance(b, F0Extractor):
                raise ParameterError(f"{b!r} is not an F0 extractor (see rvcfast.protocols.F0Extractor)")
            if getattr(b, "sample_rate", None) != SAMPLE_RATE or getattr(b, "hop_length", None) != HOP_LENGTH:
                raise ParameterError(
                    f"F0 backend {getattr(b, 'name', b)!r} works at sample_rate={b.sample_rate}, "
                    f"hop_length={b.hop_length}; hybrid needs {SAMPLE_RATE} Hz and hop {HOP_LENGTH}"
                )
        self.backends: list[F0Extractor] = backends
        self.min_voiced = len(backends) // 2 + 1 if min_voiced is None else _min_voiced(min_voiced, len(backends))
        self.name = name if name is not None else "hybrid:" + "+".join(str(b.name) for b in backends)
        # worth a worker process only when every member is a pure-CPU tracker
        self.cpu_bound = all(bool(getattr(b, "cpu_bound", False)) for b in backends)

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """Combined F0 in Hz per 10 ms frame (0 = unvoiced): ``len // 160 + 1`` float64 values."""
        audio = as_audio16k(audio16k)
        return self._combine([b.extract(audio) for b in self.backends], len(audio) // HOP_LENGTH + 1)

    def extract_blocks(self, audio16k: np.ndarray) -> list[Callable[[], np.ndarray]]:
        """:meth:`extract` as the members' blocks in turn (a member without ``extract_blocks``
        is one block: its ``extract``). When every member has one block, this is one call
        (:meth:`extract`); otherwise every call but the last returns an empty array and the
        last combines the members' tracks and returns them all, equal to :meth:`extract`."""
        audio = as_audio16k(audio16k)
        members: list[list[Callable[[], np.ndarray]]] = []
        for b in self.backends:
            blocks = getattr(b, "extract_blocks", None)
            members.append(list(blocks(audio)) if blocks is not None else [functools.partial(b.extract, audio)])
        if all(len(m) == 1 for m in members):
            return [functools.partial(self.extract, audio)]
        parts: list[list[np.ndarray]] = [[] for _ in members]
        n_frames = len(audio) // HOP_LENGTH + 1
        last = (len(members) - 1, len(members[-1]) - 1)

        def step(k: int, j: int) -> np.ndarray:
            parts[k].append(np.asarray(members[k][j]()))
            if (k, j) != last:
                return np.zeros(0, dtype=np.float64)
            tracks = [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]
            return self._combine(tracks, n_frames)

        return [functools.partial(step, k, j) for k, m in enumerate(members) for j in range(len(m))]

    def _combine(self, tracks: Sequence[object], n_frames: int) -> np.ndarray:
        checked = [checked_member_track(t, n_frames, str(b.name)) for b, t in zip(self.backends, tracks)]
        return combine_f0(checked, n_frames, self.min_voiced)

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Combined F0 for each array; each result equals :meth:`extract` on that array."""
        items = [as_audio16k(a) for a in audios]
        if not items:
            return []
        per_backend = [list(b.extract_batch(items)) for b in self.backends]
        for b, res in zip(self.backends, per_backend):
            if len(res) != len(items):
                raise RuntimeError(
                    f"F0 backend {b.name!r} returned {len(res)} tracks for a batch of {len(items)}"
                )
        return [self._combine([res[i] for res in per_backend], len(a) // HOP_LENGTH + 1) for i, a in enumerate(items)]

    def __repr__(self) -> str:
        return f"HybridExtractor({self.backends!r}, min_voiced={self.min_voiced})"

"""Reflect padding and RVC's quiet-point splitting of long inputs.

The constants follow the reference's fp32 configuration: ``x_pad = 1`` s of
context on each side of every segment, split points searched within
``x_query = 6`` s of every ``x_center = 38`` s, splitting only inputs longer than
``x_max = 41`` s less one 10 ms frame (655840 samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import F0_HOP, SR_16K
from .errors import ParameterError

__all__ = ["SegmentConfig", "Segment", "reflect_pad", "find_split_points", "plan_segments"]

WINDOW = F0_HOP  # samples per F0 frame at 16 kHz


@dataclass(frozen=True)
class SegmentConfig:
    """Segmentation constants in seconds (RVC/Applio fp32 defaults).

    ``quiet_metric`` selects how a "quiet" 10 ms window is measured: ``"signed"``
    (|sum of samples|, what Applio does and what the golden fixtures use) or
    ``"abs"`` (sum of |samples|, RVC WebUI).

    All four lengths are whole seconds, ``x_pad``, ``x_query`` and ``x_max`` at least 1,
    and ``x_center >= 2 * x_query`` (every RVC configuration is): the search windows
    around consecutive candidate points then never overlap, so split points strictly
    increase. Other values raise :class:`~rvcfast.errors.ParameterError`.
    """

    x_pad: int = 1
    x_query: int = 6
    x_center: int = 38
    x_max: int = 41
    quiet_metric: str = "signed"

    def __post_init__(self) -> None:
        for name in ("x_pad", "x_query", "x_center", "x_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ParameterError(f"SegmentConfig.{name} must be a whole number of seconds >= 1, got {value!r}")
        if self.x_center < 2 * self.x_query:
            raise ParameterError(
                f"SegmentConfig.x_center ({self.x_center}) must be at least 2 * x_query ({2 * self.x_query}): "
                "otherwise the quiet-point searches overlap and can pick the same split point twice"
            )
        if self.quiet_metric not in ("signed", "abs"):
            raise ParameterError(f"SegmentConfig.quiet_metric must be 'signed' or 'abs', got {self.quiet_metric!r}")

    @property
    def t_pad(self) -> int:
        return SR_16K * self.x_pad

    @property
    def t_query(self) -> int:
        return SR_16K * self.x_query

    @property
    def t_center(self) -> int:
        return SR_16K * self.x_center

    @property
    def t_max(self) -> int:
        return SR_16K * self.x_max


@dataclass(frozen=True)
class Segment:
    """One synthesis segment of the padded signal.

    ``start``/``end`` index the padded 16 kHz signal (``end`` may pass its end by
    up to 159 samples when a split point falls in the input's last 10 ms; the slice
    stops at the end, as the reference's does); ``f0_start``/``f0_end`` index its
    frame track. The ``x_pad`` seconds of context on each side are dropped from the
    segment's output by the synthesis step.
    """

    start: int
    end: int
    f0_start: int
    f0_end: int


def reflect_pad(audio: np.ndarray, pad: int) -> np.ndarray:
    """numpy ``reflect`` padding, which also works when ``pad`` exceeds the signal length."""
    if audio.shape[0] < 2:
        # numpy cannot reflect a single sample; RVC would fail here. Repeat it instead.
        return np.pad(audio, (pad, pad), mode="edge")
    return np.pad(audio, (pad, pad), mode="reflect")


def _reflect_window(audio: np.ndarray, start: int, stop: int, pad: int) -> np.ndarray:
    """``np.pad(audio, (pad, pad), "reflect")[start:stop]`` without padding the whole signal."""
    idx = np.arange(start, stop) - pad
    n = audio.shape[0]
    idx = np.where(idx < 0, -idx, idx)
    idx = np.where(idx >= n, 2 * (n - 1) - idx, idx)
    return audio[idx]


def find_split_points(audio: np.ndarray, config: SegmentConfig = SegmentConfig()) -> list[int]:
    """Quiet points where a long (high-passed, unpadded) input is cut, in samples.

    Inputs of ``t_max - 160`` samples or fewer are not split. Otherwise, for every
    ``t`` in ``x_center, 2 x_center, ...`` below the length, the first minimum of
    the moving 160-sample quiet measure (``quiet_metric``) within ``t +- x_query`` wins. Only the
    windows around the candidate points are summed, so an hour of audio costs a
    few milliseconds, and the sums are accumulated in the reference's order, so
    they are bit-identical to its whole-signal moving sum (the minima can be as
    small as 1e-15, far below float32 resolution).
    """
    n = audio.shape[0]
    if n + WINDOW <= config.t_max:
        return []
    if config.quiet_metric not in ("signed", "abs"):
        raise ValueError(f"quiet_metric must be 'signed' or 'abs', got {config.quiet_metric!r}")
    opt_ts: list[int] = []
    for t in range(config.t_center, n, config.t_center):
        lo = t - config.t_query
        hi = min(t + config.t_query, n)
        window = _reflect_window(audio, lo, hi + WINDOW, WINDOW // 2)
        if config.quiet_metric == "abs":
            window = np.abs(window)
        acc = np.zeros(hi - lo, dtype=np.float64)
        for i in range(WINDOW):
            acc += window[i : i + (hi - lo)]
        opt_ts.append(lo + int(np.argmin(np.abs(acc))))
    return opt_ts


def plan_segments(n_samples: int, opt_ts: list[int], config: SegmentConfig = SegmentConfig()) -> list[Segment]:
    """Segments of the padded signal (length ``n_samples + 2 * t_pad``), following the reference loop."""
    t_pad2 = 2 * config.t_pad
    padded_len = n_samples + t_pad2
    p_len = padded_len // WINDOW
    segments: list[Segment] = []
    s = 0
    t = None
    for t in opt_ts:
        t = t // WINDOW * WINDOW
        segments.append(Segment(start=s, end=t + t_pad2 + WINDOW, f0_start=s // WINDOW, f0_end=(t + t_pad2) // WINDOW))
        s = t
    last = 0 if t is None else t
    segments.append(Segment(start=last, end=padded_len, f0_start=last // WINDOW, f0_end=p_len))
    return segments

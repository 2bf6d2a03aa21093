"""Wall-clock seconds per named stage, synchronising CUDA so GPU work is counted where it runs."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

__all__ = ["Timer", "spread"]


class Timer:
    """Accumulates wall-clock seconds per named stage (``with timer.stage("f0"): ...``)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.times: dict[str, float] = {}
        self._cuda = device is not None and device.type == "cuda"
        self._device = device  # synchronised itself: the models may run on another GPU than the current one

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` more for ``stage``."""
        self.times[stage] = self.times.get(stage, 0.0) + seconds

    def stage(self, name: str) -> _Stage:
        """A context manager adding the seconds its block takes to ``name``."""
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> _Stage:
        if self.timer._cuda:
            torch.cuda.synchronize(self.timer._device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.timer._cuda:
            torch.cuda.synchronize(self.timer._device)
        self.timer.add(self.name, time.perf_counter() - self.t0)


def spread(times: Mapping[str, float], weights: Sequence[float], into: Sequence[dict[str, float]]) -> None:
    """Share the stage ``times`` of one call made for several inputs among them, by ``weights``."""
    total = float(sum(weights)) or 1.0
    for w, timings in zip(weights, into):
        for stage, seconds in times.items():
            timings[stage] = timings.get(stage, 0.0) + seconds * float(w) / total

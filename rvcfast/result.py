"""What converting one input gives back: :class:`Result`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Result"]


@dataclass
class Result:
    """The outcome of converting one input.

    ``audio`` is float32 mono at ``sample_rate`` (empty when ``error`` is set, or when a
    batch wrote it to ``output_path`` and did not keep it); ``timings`` maps stage names
    (``decode``, ``f0``, ``features``, ``index``, ``synth``, ``post``, ``write``) to
    seconds; ``warnings`` lists recoverable oddities of the input (a truncated file,
    clipping, a DC offset, channels mixed down), each naming the input.
    """

    audio: np.ndarray
    sample_rate: int
    timings: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    output_path: str | None = None
    error: str | None = None
    skipped: bool = False
    input_seconds: float = 0.0
    index: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the conversion succeeded."""
        return self.error is None

    @property
    def duration(self) -> float:
        """Output duration in seconds."""
        return self.audio.shape[0] / self.sample_rate if self.sample_rate else 0.0

"""What converting one input gives back: :class:`Result`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Result"]


@dataclass
class Result:
    """The outcome of converting one input.

    ``audio`` is float32 at ``sample_rate``, ``[samples]`` (or ``[samples, channels]`` for an
    input converted with ``channels="each"``; empty when ``error`` is set, or when a
    batch wrote it to ``output_path`` and did not keep it); ``timings`` maps stage names
    (``decode``, ``f0``, ``features``, ``index``, ``synth``, ``post``, ``write``) to
    seconds; ``warnings`` lists recoverable oddities of the input (a truncated file,
    clipping, a DC offset, channels mixed down), each naming the input. ``frames`` is the
    output's length in samples at ``sample_rate``, taken from ``audio`` when the Result is
    made: it stays when a batch drops the audio after writing it, so :attr:`duration` does too.
    ``output_path`` is the file a batch wrote or, for an input ``skipped`` by a resumed batch
    (``skip_existing``), its existing output. A batch's outputs of file inputs record their
    source (:func:`rvcfast.writing.recorded_source`). ``voice`` names the voice in a run to
    several voices (:func:`rvcfast.convert_voices`), else it is ``None``.
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
    voice: str | None = None
    frames: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.frames is None:
            self.frames = int(np.shape(self.audio)[0]) if np.ndim(self.audio) else 0

    @property
    def ok(self) -> bool:
        """True when the conversion succeeded."""
        return self.error is None

    @property
    def duration(self) -> float:
        """Output duration in seconds: of ``audio``, or of the written output when the audio was dropped."""
        n = self.audio.shape[0] or (self.frames or 0)
        return n / self.sample_rate if self.sample_rate else 0.0

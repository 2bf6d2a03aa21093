"""What converting one input gives back: :class:`Result`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["Result"]


@dataclass(eq=False)
class Result:
    """The outcome of converting one input.

    :meth:`Converter.convert <rvcfast.Converter.convert>` returns one (its errors are
    raised); a batch yields one per input, a failing input's with ``error`` set.

    Attributes:
        audio: float32 at ``sample_rate``, ``[samples]`` (``[samples, channels]`` for an input
            converted with ``channels="each"``). Empty when ``error`` is set, for a
            ``skipped`` input, or when a batch wrote it to ``output_path`` and did not keep it
            (``keep_audio``).
        sample_rate: The output's rate in Hz: the model's, or ``output_sample_rate``.
        timings: Seconds per stage: ``decode``, ``f0``, ``features``, ``index``, ``synth``,
            ``post`` and, when a batch wrote the output, ``write``.
        source: What was converted: the input's path, ``"array input"`` for samples given
            to ``convert``, ``"array[N]"`` for samples at position ``N`` of a batch.
        output_path: The file a batch wrote or, for an input ``skipped`` by a resumed batch
            (``skip_existing``), its existing output; ``None`` when nothing was written. A
            batch's outputs of file inputs record their source
            (:func:`rvcfast.writing.recorded_source`).
        error: ``None`` on success, else the reason the input failed, naming it.
        skipped: True for an input a batch skipped because its output already existed.
        input_seconds: Duration of the input in seconds.
        index: The input's position in a batch (``None`` from ``convert``).
        warnings: Recoverable oddities of the input (a truncated file, clipping, a DC offset,
            channels mixed down), each naming the input.
        exception: The exception behind ``error``, with its traceback, when the input failed in
            this process (``None`` otherwise): for logging it (``logging.error(..., exc_info=
            result.exception)``) or raising it again. Not compared by ``==``, not shown by
            ``repr`` and not kept when a Result is pickled (``error`` says what it said).
        voice: The voice's name in a run to several voices (:func:`rvcfast.convert_voices`),
            else ``None``.
        frames: The output's length in samples at ``sample_rate``, taken from ``audio`` when
            the Result is made (``frames=`` counts only with empty ``audio``): it stays when a
            batch drops the audio after writing it, so :attr:`duration` does too (0 for a failed
            or skipped input).

    Two Results are equal (``==``) when every field is, ``audio`` by shape and values
    (:func:`numpy.array_equal`), so ``result in results`` and ``results.index(result)`` work.
    A Result is mutable and not hashable.
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
    frames: int | None = None
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = int(np.shape(self.audio)[0]) if np.ndim(self.audio) else 0
        if n or self.frames is None:  # given audio says how long it is (dataclasses.replace(r, audio=...) too)
            self.frames = n

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        for f in fields(self):
            if not f.compare:
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            same = np.array_equal(mine, theirs) if f.name == "audio" else mine == theirs
            if not same:
                return False
        return True

    def __getstate__(self) -> dict[str, object]:
        # an exception may not unpickle elsewhere (required arguments, its module missing)
        return {**self.__dict__, "exception": None}

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass with eq

    @property
    def ok(self) -> bool:
        """True when the conversion succeeded."""
        return self.error is None

    @property
    def duration(self) -> float:
        """Output duration in seconds: of ``audio``, or of the written output when the audio was dropped.

        0.0 for a failed input and for one a resumed batch ``skipped`` (nothing was converted).
        """
        n = self.audio.shape[0] or (self.frames or 0)
        return n / self.sample_rate if self.sample_rate else 0.0

"""The protocols at rvcfast's seams.

A pipeline stage depends on these shapes, never on a concrete class, so any
object with the right attributes plugs in (third-party F0 trackers, other
content encoders, other vocoders).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import Protocol, runtime_checkable


class _ImportedOnUse:
    """A module named in annotations, imported when an attribute is first read: when
    ``typing.get_type_hints`` evaluates ``"np.ndarray"`` (FastAPI, pydantic, sphinx do), not
    when this module is imported, since `import rvcfast` must not import torch or numpy."""

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self._module), name)

    def __repr__(self) -> str:
        return f"<module {self._module!r}, imported on first use>"


if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = _ImportedOnUse("numpy")
    torch = _ImportedOnUse("torch")

__all__ = ["CancelFlag", "F0Extractor", "FeatureEncoder", "Vocoder"]


class CancelFlag(Protocol):
    """What :meth:`Engine.run <rvcfast.engine.Engine.run>` looks at to stop early: a
    :class:`threading.Event`, or anything whose ``is_set()`` says so."""

    def is_set(self) -> bool:
        """Whether the work should stop."""
        ...


@runtime_checkable
class F0Extractor(Protocol):
    """A pitch tracker: 16 kHz mono audio in, one F0 value in Hz per 10 ms frame out.

    ``extract`` returns ``len(audio) // 160 + 1`` frames (frame ``i`` centred on
    sample ``160 * i``) or fewer/more by a few frames for trackers that do not pad
    (at most 8 + 1 %: the engine checks); the pipeline pads or trims to its own frame
    count. Unvoiced frames are 0; NaN, infinite or negative values are errors. The track is
    a numpy array (a torch tracker returns ``f0.detach().float().cpu().numpy()``: a tensor
    that requires grad, lives on a GPU or is bfloat16 is not one). The caller applies the key
    shift and the coarse quantisation.

    An extractor may also set ``cpu_bound = True`` (optional, default False): a
    pure-CPU tracker that gains nothing from batching. The batch engine then runs
    it in worker processes beside the networks (the object must be picklable).

    It may also offer ``extract_blocks(audio16k) -> list[Callable[[], np.ndarray]]``
    (optional): ``extract``'s work split into calls, each returning the next block of
    frames, whose results concatenated in order equal ``extract(audio16k)``, so that a
    scheduler (``Engine.stream(..., pauses=True)``) can interleave other work while a
    long input's F0 is computed.
    """

    name: str
    sample_rate: int  # always 16000
    hop_length: int  # always 160

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz per frame for one 1-D float array at 16 kHz."""
        ...

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """F0 for several arrays; each result equals ``extract`` on that array alone."""
        ...


@runtime_checkable
class FeatureEncoder(Protocol):
    """A content encoder (HuBERT / ContentVec): 16 kHz audio to 50 frames/s features."""

    hidden_size: int
    num_layers: int

    def encode(
        self,
        audio16k: torch.Tensor,
        output_layer: int | None = None,
        final_proj: bool = False,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, N]`` float audio to ``[B, T, C]`` features, ``T = (N - 400) // 320 + 1``."""
        ...


@runtime_checkable
class Vocoder(Protocol):
    """An RVC synthesizer: content features (+ pitch) to a waveform at ``sample_rate``.

    rvcfast has two: :class:`~rvcfast.models.synthesizer.Synthesizer` (torch, from a ``.pth``)
    and :class:`~rvcfast.models.onnx_vocoder.OnnxVocoder` (onnxruntime, from an exported
    ``.onnx``; one batch item per graph call, float32). Optional attributes the front ends
    read: ``embedder_model`` (the content encoder the model names, or ``None``),
    ``supports_head_skip`` (``skip_frames`` may be a ``(head, tail)`` pair).
    """

    sample_rate: int
    version: str
    has_f0: bool
    num_speakers: int
    feature_dim: int
    hop_length: int

    def synthesize(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None = None,
        pitchf: torch.Tensor | None = None,
        speaker: int = 0,
        noise: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        skip_frames: int = 0,
    ) -> torch.Tensor:
        """``[B, T, C]`` features at 100 frames/s to ``[B, T * hop_length]`` audio.

        ``generator`` seeds the noise (one per batch item, or one for all). ``skip_frames``
        tells the vocoder that the first and last ``skip_frames`` frames of every item
        are context whose output the caller drops: it may leave those output samples
        unset (zeros) and save their work; every other sample must be what a full
        pass would give.
        """
        ...

"""Random-weight model files in the exact real file formats, for tests and benchmarks.

These functions write random weights in exactly the layouts rvcfast reads from real
models, so that the test suites of rvcfast and of its plugins (F0 extractors,
vocoders) can run the real loaders and the whole conversion pipeline without
downloading any model. The outputs are deterministic for a given ``seed``; with random
weights the audio is noise, so use them for shapes, formats, batching and speed, never
for quality.

* :func:`save_random_voice_model` -- an RVC voice model ``.pth`` (any version / rate,
  with or without F0, full size or shrunk widths).
"""

from __future__ import annotations

from .voice import save_random_voice_model

__all__ = ["save_random_voice_model"]

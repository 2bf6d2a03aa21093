"""Random-weight model files in the exact real file formats, for tests and benchmarks.

These functions write random weights in exactly the layouts rvcfast reads from real
models: RVC / Applio voice models (``.pth``), HuBERT / ContentVec content encoders
(fairseq ``hubert_base.pt`` or a Hugging Face folder) and RMVPE weights (``rmvpe.pt``).
They let the test suites of rvcfast and of its plugins (F0 extractors, vocoders) run
the real loaders and the whole conversion pipeline without downloading any model.
The outputs are deterministic for a given ``seed``; with random weights the audio is
noise, so use them for shapes, formats, batching and speed, never for quality.

* :func:`save_random_voice_model` -- an RVC voice model ``.pth`` (any version / rate,
  with or without F0, full size or shrunk widths);
* :func:`save_random_applio_model` -- a voice model in Applio's exact layout, with any
  of its vocoders (HiFi-GAN, MRF HiFi-GAN, RefineGAN) at 24/32/40/48 kHz;
* :func:`random_hubert_state_dict` -- a content encoder's state dict with the key names
  of either layout;
* :func:`save_random_hubert` -- a whole content-encoder checkpoint (fairseq file or
  Hugging Face folder);
* :func:`save_random_rmvpe` -- RMVPE weights, full size or the reduced test architecture;
* :func:`build_bench_models` -- all of them at once (full size or tiny), built once and
  reused, and :func:`synth_test_audio`, a sung-like test signal.

A retrieval index needs no random writer: :func:`rvcfast.index.save_index` writes a
faiss file from any vectors.
"""

from __future__ import annotations

from .applio import save_random_applio_model
from .bench import build_bench_models, synth_test_audio
from .hubert import random_hubert_state_dict, save_random_hubert
from .rmvpe import save_random_rmvpe
from .voice import save_random_voice_model

__all__ = [
    "save_random_voice_model",
    "save_random_applio_model",
    "random_hubert_state_dict",
    "save_random_hubert",
    "save_random_rmvpe",
    "build_bench_models",
    "synth_test_audio",
]

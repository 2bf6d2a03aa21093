"""rvcfast: fast, faithful RVC voice conversion as a library.

Public API (``docs/api.md`` has the full reference)::

    rvcfast.Converter.from_pretrained(model, index=None, encoder=None, f0="rmvpe", ...)
    conv.convert(path_or_samples, sample_rate=None, params=None, **settings) -> Result
    conv.convert_batch(inputs, out_dir=None, ...) / conv.iter_batch(...)  -> Results
    rvcfast.Result                  -> audio, sample_rate, error, warnings, timings... of one input
    rvcfast.ConversionParams        -> every conversion setting, validated
    rvcfast.Engine                  -> the conversion engine every front end runs on
    rvcfast.RealtimeConverter(conv) -> a live stream converted block by block
    rvcfast.convert_voices(voices, inputs, out_dir) -> list[Result] (inputs analysed once for all voices)
    rvcfast.iter_voices(...), rvcfast.SharedAnalysis -> the same as it goes, and its memo
    rvcfast.export_onnx(model, path) -> ExportReport (an ONNX file of a voice model, any length)
    rvcfast.load_audio_16k(path_or_array, sample_rate=None) -> float64 mono 16 kHz (the reference's input stage)
    rvcfast.load_encoder(path)      -> FeatureEncoder  (HuBERT / ContentVec)
    rvcfast.load_vocoder(path)      -> Vocoder         (RVC synthesizer)
    rvcfast.load_index(path)        -> RetrievalIndex  (faiss IVF-Flat, read without faiss)
    rvcfast.get_f0_extractor(name)  -> F0Extractor
    rvcfast.available_f0_extractors() -> the F0 backend names
    rvcfast.F0Extractor, FeatureEncoder, Vocoder -> the protocols a plugin implements

Errors (:mod:`rvcfast.errors`): catch ``RvcfastError`` for anything rvcfast raises on
purpose; ``AudioError`` (bad input), ``ParameterError`` (bad settings), ``ModelLoadError``
/ ``UnsafeFileError`` / ``WeightsNotFoundError`` (bad or missing models),
``BackendUnavailableError`` (missing extra, unknown F0 backend). ``Cancelled`` (a set
``cancel`` event) is a ``BaseException``, not an ``RvcfastError``.

Heavy modules are imported on first use, so ``import rvcfast`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AudioError,
    BackendUnavailableError,
    Cancelled,
    ModelLoadError,
    ParameterError,
    RvcfastError,
    UnsafeFileError,
    WeightsNotFoundError,
)
from .protocols import F0Extractor, FeatureEncoder, Vocoder

if TYPE_CHECKING:  # pragma: no cover
    from .api import Converter, Result
    from .audio import load_audio_16k
    from .engine import Engine
    from .f0.registry import available_f0_extractors, get_f0_extractor
    from .index import RetrievalIndex, load_index
    from .models.encoder import load_encoder
    from .models.synthesizer import load_vocoder
    from .onnx_export import export_onnx
    from .params import ConversionParams
    from .realtime import RealtimeConverter
    from .voices import SharedAnalysis, convert_voices, iter_voices

_LAZY = {
    "Converter": ("api", "Converter"),
    "Result": ("api", "Result"),
    "ConversionParams": ("params", "ConversionParams"),
    "Engine": ("engine", "Engine"),
    "load_audio_16k": ("audio", "load_audio_16k"),
    "load_encoder": ("models.encoder", "load_encoder"),
    "load_vocoder": ("models.synthesizer", "load_vocoder"),
    "load_index": ("index", "load_index"),
    "RetrievalIndex": ("index", "RetrievalIndex"),
    "get_f0_extractor": ("f0.registry", "get_f0_extractor"),
    "available_f0_extractors": ("f0.registry", "available_f0_extractors"),
    "export_onnx": ("onnx_export", "export_onnx"),
    "RealtimeConverter": ("realtime", "RealtimeConverter"),
    "convert_voices": ("voices", "convert_voices"),
    "iter_voices": ("voices", "iter_voices"),
    "SharedAnalysis": ("voices", "SharedAnalysis"),
}

__all__ = [
    "__version__",
    "Converter",
    "Result",
    "ConversionParams",
    "Engine",
    "load_audio_16k",
    "load_encoder",
    "load_vocoder",
    "load_index",
    "RetrievalIndex",
    "get_f0_extractor",
    "available_f0_extractors",
    "export_onnx",
    "RealtimeConverter",
    "convert_voices",
    "iter_voices",
    "SharedAnalysis",
    "F0Extractor",
    "FeatureEncoder",
    "Vocoder",
    "AudioError",
    "BackendUnavailableError",
    "Cancelled",
    "ModelLoadError",
    "ParameterError",
    "RvcfastError",
    "UnsafeFileError",
    "WeightsNotFoundError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rvcfast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""rvcfast: fast, faithful RVC voice conversion as a library."""

from ._version import __version__
from .errors import (
    AudioError,
    BackendUnavailableError,
    ModelLoadError,
    ParameterError,
    RvcfastError,
    UnsafeFileError,
    WeightsNotFoundError,
)
from .protocols import F0Extractor, FeatureEncoder, Vocoder

__all__ = [
    "__version__",
    "AudioError",
    "BackendUnavailableError",
    "ModelLoadError",
    "ParameterError",
    "RvcfastError",
    "UnsafeFileError",
    "WeightsNotFoundError",
    "F0Extractor",
    "FeatureEncoder",
    "Vocoder",
]

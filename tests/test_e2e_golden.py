"""End-to-end parity with the reference (Applio) on the golden fixtures: a 5 s and a 47 s (split) input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import rvcfast
from rvcfast.params import ConversionParams
from rvcfast.pipeline import pitch_track, prepare


@pytest.fixture(scope="module")
def converter(golden):
    m = golden / "models"
    return rvcfast.Converter.from_pretrained(
        m / "voice_v2_40k_f0.pth",
        index=m / "index" / "v2_768.index",
        encoder=m / "contentvec_hf",
        f0="rmvpe",
        f0_weights=m / "rmvpe_reduced.pt",
        device="cpu",
    )


def _convert(converter, path):
    return converter.convert(path, pitch=0, index_rate=0.75, protect=0.33, rms_mix_rate=1.0, speaker=0, noise=False)


def test_short_input_discrete_decisions(golden, converter):
    x, _ = sf.read(golden / "audio" / "e2e_short_16k.wav", dtype="float32")
    dbg = np.load(golden / "e2e" / "short_debug.npz")
    prep = prepare(x.astype(np.float64))
    f0 = converter.engine.extract_f0([prep], ConversionParams())[0]
    coarse, pitchf = pitch_track(f0, prep.p_len, ConversionParams())
    np.testing.assert_array_equal(coarse, dbg["pitch_full"][: prep.p_len])
    voiced = dbg["pitchf_full"][: prep.p_len] > 0
    np.testing.assert_array_equal(pitchf > 0, voiced)
    np.testing.assert_allclose(pitchf[voiced], dbg["pitchf_full"][: prep.p_len][voiced], atol=1e-2)
    feats = converter.encoder.encode(torch.from_numpy(prep.padded.astype(np.float32))[None])
    np.testing.assert_allclose(feats.numpy(), dbg["hubert_feats"], atol=2e-4)
    _, ix = converter.index.search(torch.from_numpy(dbg["hubert_feats"][0]), k=8)
    np.testing.assert_array_equal(ix.numpy(), dbg["index_ix"])


def test_short_input_waveform(golden, converter):
    ref, sr = sf.read(golden / "e2e" / "short_out.wav", dtype="float32")
    res = _convert(converter, golden / "audio" / "e2e_short_16k.wav")
    assert res.sample_rate == sr == 40000
    assert res.audio.shape == ref.shape == (200000,)
    err = np.abs(res.audio - ref).max()
    assert err <= 1e-4, err


def test_long_input_waveform_with_split(golden, converter):
    ref, sr = sf.read(golden / "e2e" / "long_out.wav", dtype="float32")
    dbg = np.load(golden / "e2e" / "long_debug.npz")
    res = _convert(converter, golden / "audio" / "e2e_long_16k.wav")
    assert res.audio.shape == ref.shape == (1892000,)
    err = np.abs(res.audio - ref).max()
    assert err <= 1e-4, err
    assert set(res.timings) >= {"decode", "f0", "features", "index", "synth", "post"}
    assert "pitch_full" in dbg.files

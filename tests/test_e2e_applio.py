"""End to end against Applio with its inference options (../shared/golden-features/e2e).

(a) a 44.1 kHz stereo input, the MRF HiFi-GAN vocoder, an embedder folder without
    final_proj, autotune + proposed pitch (Applio applies autotune only and ignores the
    key shift) and an RMS mix of 0.75: the whole output is compared.
(b) a 48 kHz input, formant shifting, noise reduction and reverb + compressor. Applio's
    ``resample_sr=44100`` only relabels its 40 kHz output (rvcfast's
    ``output_sample_rate`` really resamples, docs/differences.md), so the stages are
    compared where they are the same computation: the converted voice (pipeline_out)
    from one ``convert`` call, then rvcfast's denoise and effects on it at the rate
    Applio passed them (44.1 kHz).

Checks follow the fixture README: discrete decisions first (coarse pitch, voicing),
then F0 within 1e-2 Hz and every float stage within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SHARED

import rvcfast
from rvcfast.params import ConversionParams
from rvcfast.pipeline import pitch_track, prepare

FEATURES = SHARED / "golden-features"
GOLDEN = SHARED / "golden"


@pytest.fixture(scope="module")
def features() -> Path:
    if not (FEATURES / "manifest.json").is_file() or not (GOLDEN / "manifest.json").is_file():
        pytest.skip(f"golden-features fixtures not found at {FEATURES} (set RVCFAST_SHARED to the shared/ folder)")
    return FEATURES


def _params(case: str) -> dict:
    return json.loads((FEATURES / "e2e" / f"{case}_params.json").read_text())


def _converter(model: Path, encoder: Path) -> rvcfast.Converter:
    return rvcfast.Converter.from_pretrained(
        model, encoder=encoder, f0="rmvpe", f0_weights=GOLDEN / "models" / "rmvpe_reduced.pt", device="cpu"
    )


def _check_pitch(conv: rvcfast.Converter, audio16k: np.ndarray, params: ConversionParams, dbg) -> None:
    prep = prepare(audio16k)
    raw = conv.engine.extract_f0([prep], params)[0]
    coarse, pitchf = pitch_track(raw, prep.p_len, params)
    np.testing.assert_array_equal(coarse, dbg["pitch_full"][: prep.p_len])
    ref = dbg["pitchf_full"][: prep.p_len]
    np.testing.assert_array_equal(pitchf > 0, ref > 0)
    assert np.abs(pitchf - ref).max() <= 1e-2


def test_case_a_autotune_mrf_embedder_without_final_proj(features: Path) -> None:
    p = _params("a")
    conv = _converter(features / "vocoders" / "mrf_40k.pth", features / "embedders" / "hubert_nofp")
    params = conv.make_params(
        pitch=p["pitch"],
        index_rate=p["index_rate"],
        rms_mix_rate=p["volume_envelope"],
        protect=p["protect"],
        autotune=p["f0_autotune_strength"],
        proposed_pitch=p["proposed_pitch_threshold"],
        speaker=p["sid"],
        noise=False,
    )
    dbg = np.load(features / "e2e" / "a_debug.npz")
    audio16k = rvcfast.load_audio_16k(features / "e2e" / "a_input.wav")
    np.testing.assert_allclose(audio16k, dbg["audio16k_loaded"], rtol=0, atol=1e-9)
    _check_pitch(conv, audio16k, params, dbg)
    ref, sr = sf.read(features / "e2e" / "a_out.wav", dtype="float32")
    res = conv.convert(features / "e2e" / "a_input.wav", params=params)
    assert res.sample_rate == sr == 40000
    assert res.audio.shape == ref.shape
    assert np.abs(res.audio - ref).max() <= 1e-4
    assert any("2 channels mixed down" in w for w in res.warnings)


def test_case_b_formant_clean_effects(features: Path) -> None:
    from rvcfast.effects import apply_effects, denoise, effects_from_applio_kwargs

    p = _params("b")
    conv = _converter(GOLDEN / "models" / "voice_v2_40k_f0.pth", GOLDEN / "models" / "contentvec_hf")
    formant = (p["formant_qfrency"], p["formant_timbre"])
    params = conv.make_params(
        pitch=p["pitch"],
        index_rate=p["index_rate"],
        rms_mix_rate=p["volume_envelope"],
        protect=p["protect"],
        speaker=p["sid"],
        formant=formant,
        noise=False,
    )
    dbg = np.load(features / "e2e" / "b_debug.npz")
    # the formant shift is part of the reference's loading, before the peak guard
    from rvcfast.effects import formant_shift

    shifted = formant_shift(rvcfast.load_audio_16k(features / "e2e" / "b_input.wav"), *formant)
    np.testing.assert_allclose(shifted, dbg["audio16k_loaded"], rtol=0, atol=1e-9)
    _check_pitch(conv, shifted, params, dbg)
    res = conv.convert(features / "e2e" / "b_input.wav", params=params)
    assert res.sample_rate == 40000
    assert res.audio.shape == dbg["pipeline_out"].shape
    assert np.abs(res.audio - dbg["pipeline_out"]).max() <= 1e-4
    # Applio hands the 40 kHz samples to noisereduce and pedalboard labelled 44.1 kHz
    cleaned = denoise(res.audio, 44100, p["clean_strength"])
    assert np.abs(cleaned - dbg["cleaned"]).max() <= 1e-4
    out = apply_effects(cleaned, 44100, effects_from_applio_kwargs(p))
    ref, sr = sf.read(features / "e2e" / "b_out.wav", dtype="float32")
    assert sr == 44100 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4


def test_case_b_options_in_one_call(features: Path) -> None:
    """clean and effects as conversion parameters give denoise + effects of the converted voice at its real rate."""
    from rvcfast.effects import apply_effects, denoise, effects_from_applio_kwargs

    p = _params("b")
    conv = _converter(GOLDEN / "models" / "voice_v2_40k_f0.pth", GOLDEN / "models" / "contentvec_hf")
    effects = effects_from_applio_kwargs(p)
    base = dict(pitch=p["pitch"], protect=p["protect"], formant=(p["formant_qfrency"], p["formant_timbre"]), noise=False)
    plain = conv.convert(features / "e2e" / "b_input.wav", **base)
    full = conv.convert(features / "e2e" / "b_input.wav", clean=p["clean_strength"], effects=effects, **base)
    expected = apply_effects(denoise(plain.audio, 40000, p["clean_strength"]), 40000, effects)
    assert full.sample_rate == 40000
    np.testing.assert_array_equal(full.audio, expected)

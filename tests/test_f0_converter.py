"""Every F0 backend (and a third-party plugin) through ``Converter``; RMVPE is one cached instance."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from test_f0_registry import ensure_example_plugin

import rvcfast
from rvcfast import cache
from rvcfast.f0.rmvpe import RMVPEExtractor


@pytest.fixture(scope="module")
def models(golden):
    return golden / "models"


@pytest.fixture(scope="module")
def clip(golden):
    x, _ = sf.read(golden / "audio" / "probe_16k.wav", dtype="float32")
    return x[:16000].astype(np.float64)  # 1 s


@pytest.mark.parametrize(
    "name", ["rmvpe", "crepe-tiny", "fcpe", "harvest", "dio", "pm", "hybrid:dio+harvest", "crepe"]
)
def test_backend_through_converter(models, clip, name):
    kwargs = {"f0_weights": models / "rmvpe_reduced.pt"} if name == "rmvpe" else {}
    conv = rvcfast.Converter.from_pretrained(
        models / "voice_v2_40k_f0.pth", encoder=models / "contentvec_hf", f0=name, device="cpu", **kwargs
    )
    audio = clip[:8000] if name == "crepe" else clip  # crepe full costs ~2 s per second of audio
    res = conv.convert(audio, 16000, noise=False)
    assert res.ok and np.isfinite(res.audio).all()
    n_in = audio.shape[0] / 16000 * 40000
    assert abs(res.audio.shape[0] - n_in) <= 2 * 400
    assert conv.f0_extractor.name == name or name.startswith("hybrid")


def test_third_party_plugin_through_converter(models, clip):
    ensure_example_plugin()
    assert "example-autocorr" in rvcfast.available_f0_extractors()
    conv = rvcfast.Converter.from_pretrained(
        models / "voice_v2_40k_f0.pth", encoder=models / "contentvec_hf", f0="example-autocorr", device="cpu"
    )
    assert type(conv.f0_extractor).__module__.startswith("rvcfast_f0_example")
    res = conv.convert(clip, 16000, noise=False)
    assert res.ok and res.audio.shape[0] > 0


def test_rmvpe_is_one_cached_instance(models, clip):
    cache.clear()
    a = rvcfast.get_f0_extractor("rmvpe", weights=models / "rmvpe_reduced.pt")
    b = RMVPEExtractor(weights=models / "rmvpe_reduced.pt")
    conv = rvcfast.Converter.from_pretrained(
        models / "voice_v2_40k_f0.pth", encoder=models / "contentvec_hf", f0_weights=models / "rmvpe_reduced.pt", device="cpu"
    )
    conv.convert(clip, 16000, noise=False)
    conv.convert(clip[:9000], 16000, noise=False)
    assert a.model is b.model is conv.f0_extractor.model
    assert cache.load_count("rmvpe") == 1


def test_model_without_f0_needs_no_f0_backend(models, clip):
    conv = rvcfast.Converter.from_pretrained(
        models / "voice_v2_32k_nof0.pth", encoder=models / "contentvec_hf", f0="no-such-backend", device="cpu"
    )
    assert conv.f0_extractor is None
    res = conv.convert(clip, 16000, noise=False)
    assert res.sample_rate == 32000 and abs(res.audio.shape[0] - 32000) <= 640


def test_unknown_backend_lists_available(models):
    with pytest.raises(rvcfast.BackendUnavailableError, match="rmvpe"):
        rvcfast.Converter.from_pretrained(
            models / "voice_v2_40k_f0.pth", encoder=models / "contentvec_hf", f0="nope", device="cpu"
        )


def test_bfloat16_converter_runs_its_networks_in_bf16_and_f0_in_float32_on_a_cpu(models, clip):
    """dtype=bfloat16 reaches the encoder and the synthesizer; on a CPU the F0 network stays
    float32 (runtime.f0_dtype) unless f0_options asks otherwise. The output stays close to
    float32 (random reduced weights: SNR > 25 dB; 43 dB typical, at 0.5 s as at 1 s).

    bfloat16 is emulated, and slow, on CPUs without AVX512-BF16 or AMX: half of the clip
    (0.5 s, plus the 1 s of padding on each side every conversion has) is enough."""
    clip = clip[:8000]
    from rvcfast.runtime import f0_dtype

    common = dict(encoder=models / "contentvec_hf", f0="rmvpe", f0_weights=models / "rmvpe_reduced.pt", device="cpu")
    bf = rvcfast.Converter.from_pretrained(models / "voice_v2_40k_f0.pth", dtype="bfloat16", **common)
    assert isinstance(bf.f0_extractor, RMVPEExtractor)
    assert bf.f0_extractor.model.dtype == torch.float32
    assert next(bf.encoder.parameters()).dtype == torch.bfloat16
    assert next(bf.vocoder.parameters()).dtype == torch.bfloat16
    f32 = rvcfast.Converter.from_pretrained(models / "voice_v2_40k_f0.pth", **common)
    assert f32.f0_extractor.model.dtype == torch.float32
    y_bf = bf.convert(clip, 16000, noise=False).audio
    y_32 = f32.convert(clip, 16000, noise=False).audio
    assert y_bf.shape == y_32.shape
    snr = 10 * np.log10(np.sum(y_32.astype(np.float64) ** 2) / np.sum((y_bf - y_32).astype(np.float64) ** 2))
    assert snr > 25, snr
    # the same F0 as float32: the F0 tracks are identical
    prep = bf.engine.prepare(clip, 16000, params=bf.engine.params(noise=False))
    np.testing.assert_array_equal(bf.engine.extract_f0([prep], bf.engine.params())[0],
                                  f32.engine.extract_f0([prep], f32.engine.params())[0])
    # an explicit F0 dtype wins over the default
    low = rvcfast.Converter.from_pretrained(
        models / "voice_v2_40k_f0.pth", dtype="bfloat16", f0_options={"dtype": torch.bfloat16}, **common
    )
    assert low.f0_extractor.model.dtype == torch.bfloat16
    # on CUDA the F0 network follows the engine (a rule, checked without a GPU)
    assert f0_dtype(torch.float16, torch.device("cuda")) == torch.float16
    assert f0_dtype(torch.bfloat16, torch.device("cpu")) == torch.float32


def test_f0_dtype_option_takes_a_name_and_is_checked(models, monkeypatch):
    """``--f0-option dtype=bfloat16`` arrives as a string: it is a precision name like ``--dtype``'s."""
    from rvcfast import runtime
    from rvcfast.errors import ParameterError
    from rvcfast.f0.registry import build_f0_extractor

    # a CPU without AVX512-FP16 (this test must not depend on the machine's)
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))

    ext = build_f0_extractor("rmvpe", weights=models / "rmvpe_reduced.pt", options={"dtype": "bfloat16"})
    assert ext.dtype == torch.bfloat16 and ext.model.dtype == torch.bfloat16
    with pytest.raises(ParameterError, match="float16 on a CPU needs AVX512-FP16"):
        build_f0_extractor("rmvpe", weights=models / "rmvpe_reduced.pt", options={"dtype": "float16"})
    with pytest.raises(ParameterError, match="dtype must be"):
        build_f0_extractor("rmvpe", weights=models / "rmvpe_reduced.pt", options={"dtype": "half-ish"})

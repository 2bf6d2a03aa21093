"""The CPU fast paths: start-up cost of loading, the fused decoder, its buffer reuse, bfloat16 quality.

Every fast path is checked against an independent computation of the same function (the
plain decoder, float32), never against timings.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401


def test_loading_a_voice_model_does_not_import_dynamo(tiny_models) -> None:
    """Building the model on the meta device must not go through torch's Python reference ops,
    which import torch._dynamo (about 1.3 s of start-up per process)."""
    code = textwrap.dedent(
        f"""
        import sys
        from rvcfast.models.synthesizer import load_vocoder
        load_vocoder({str(tiny_models.voice)!r})
        load_vocoder({str(tiny_models.voice_nof0)!r})
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ the fused HiFi-GAN decoder

import pytest  # noqa: E402
import torch  # noqa: E402

from rvcfast.models.synthesizer import Synthesizer, rvc_config  # noqa: E402
from rvcfast.models.synthesizer import fused as fused_ops  # noqa: E402
from rvcfast.models.synthesizer.hifigan import sine_excitation  # noqa: E402

needs_onednn = pytest.mark.skipif(
    not fused_ops.available(torch.zeros(1)), reason="this torch has no oneDNN fused convolution ops"
)


def _small_synth(sr: int, resblock: str, seed: int) -> Synthesizer:
    """A narrow voice model with RVC's real decoder geometry for ``sr`` and random weights."""
    config = rvc_config("v2", sr, inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1,
                        upsample_initial_channel=32, num_speakers=2)
    if resblock == "2":
        config[9], config[11] = "2", [[1, 3], [1, 3], [1, 3]]
    torch.manual_seed(seed)
    return Synthesizer(config, version="v2", has_f0=True).eval()


def _decoder_inputs(model: Synthesizer, frames: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, model.arch.inter_channels, frames, generator=gen).to(dtype)
    g = torch.randn(1, model.arch.gin_channels, 1, generator=gen).to(dtype)
    f0 = 110.0 + 200.0 * torch.rand(1, frames, generator=gen)
    f0[:, frames // 3 : frames // 2] = 0.0  # an unvoiced stretch
    source = model.dec.m_source(sine_excitation(f0, model.sample_rate, model.hop_length)[:, None, :])
    return z, g, source


def _decode(model: Synthesizer, inputs, fused: bool) -> torch.Tensor:
    model.dec.fused_cpu = fused
    try:
        with torch.inference_mode():
            return model.dec(*inputs, None).float()
    finally:
        model.dec.fused_cpu = True


def _snr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (test - ref).pow(2).sum().clamp_min(1e-30)))


@needs_onednn
@pytest.mark.parametrize("sr, resblock", [(40000, "1"), (48000, "1"), (32000, "2")])
def test_fused_decoder_equals_plain_decoder_in_float32(sr: int, resblock: str) -> None:
    """The fused path does the same float32 arithmetic, up to the summation order of the noise
    convolutions: float32 rounding noise (unit roundoff 2**-24, -144 dB per operation; a few
    hundred chained operations stay above 100 dB), where any real difference is below 40 dB."""
    model = _small_synth(sr, resblock, seed=1)
    inputs = _decoder_inputs(model, 60, torch.float32, seed=2)
    plain = _decode(model, inputs, fused=False)
    out = _decode(model, inputs, fused=True)
    assert out.shape == plain.shape
    assert float(plain.abs().max()) > 0
    assert _snr_db(plain, out) > 100.0


@needs_onednn
def test_fused_decoder_in_bfloat16_is_no_worse_than_the_plain_one() -> None:
    """bfloat16 against the float32 reference: the fused path rounds each residual sum once
    instead of twice, so its error is at most the plain bfloat16 path's (within 1 dB) and far
    from noise (the 8-bit mantissa gives ~50 dB per operation; the decoder chains ~40)."""
    model = _small_synth(40000, "1", seed=3)
    ref = _decode(model, _decoder_inputs(model, 60, torch.float32, seed=4), fused=False)
    model = model.to(torch.bfloat16)
    inputs = _decoder_inputs(model, 60, torch.bfloat16, seed=4)
    snr_fused = _snr_db(ref, _decode(model, inputs, fused=True))
    snr_plain = _snr_db(ref, _decode(model, inputs, fused=False))
    assert snr_fused >= snr_plain - 1.0
    assert snr_fused > 25.0


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_decoder_buffers_carry_nothing_between_calls(dtype: torch.dtype) -> None:
    """Each call gets its own buffers: calls of other lengths in between change nothing."""
    model = _small_synth(40000, "1", seed=5).to(dtype)
    a, b = _decoder_inputs(model, 48, dtype, seed=6), _decoder_inputs(model, 80, dtype, seed=7)
    first_a, first_b = _decode(model, a, True), _decode(model, b, True)
    assert torch.equal(_decode(model, a, True), first_a)
    assert torch.equal(_decode(model, b, True), first_b)
    assert torch.equal(_decode(model, a, True), first_a)


def test_workspace_views_are_channels_last_and_bounded() -> None:
    ws = fused_ops.Workspace(2, 6 * 10, torch.float32, torch.device("cpu"))
    a = ws.get(0, (1, 6, 1, 10))
    b = ws.get(1, (1, 3, 1, 20))
    assert a.is_contiguous(memory_format=torch.channels_last) and b.shape == (1, 3, 1, 20)
    a.fill_(1.0)
    b.fill_(2.0)
    assert float(a.sum()) == 60.0  # the two buffers do not overlap
    with pytest.raises(ValueError, match="workspace"):
        ws.get(0, (1, 7, 1, 10))


# ------------------------------------------------------------------ float16 on a CPU


def test_float16_on_a_cpu_only_with_native_half_precision(tiny_models, monkeypatch) -> None:
    """float16 is refused on a CPU without AVX512-FP16/AMX-FP16 (it would run through slow
    conversions) and runs where the CPU has it: the networks in float16, the F0 network in
    float32 as for bfloat16, the audio close to float32's (tiny models: 42 dB; bfloat16 gives
    40 dB, float16's 3 more mantissa bits being partly masked by index neighbours that change)."""
    import numpy as np
    from helpers import tone

    from rvcfast import runtime
    from rvcfast.errors import ParameterError

    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    with pytest.raises(ParameterError, match="AVX512-FP16"):
        tiny_models.converter(dtype="float16")
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16  # auto never picks float16

    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx512f", "avx512_bf16", "avx512_fp16"}))
    audio = tone(1.5, freq=180.0)
    reference = tiny_models.converter(dtype="float32").convert(audio, sample_rate=16000).audio
    half = tiny_models.converter(dtype="float16")
    assert half.dtype == torch.float16 and half.engine.f0_extractor.dtype == torch.float32
    out = half.convert(audio, sample_rate=16000).audio
    assert out.shape == reference.shape and np.isfinite(out).all()
    snr = 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - out).astype(np.float64) ** 2))
    assert snr > 25.0, snr


# ------------------------------------------------------------------ prepacked oneDNN weights


def _conv_sum_reference(m, x: torch.Tensor) -> torch.Tensor:
    """``conv(x) + bias`` from the module's current weight, through torch's own convolution."""
    w = m.weight.detach().unsqueeze(2)
    return torch.nn.functional.conv2d(x, w, m.bias, (1, m.stride[0]), (0, m.padding[0]), (1, m.dilation[0]), m.groups)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _close(out: torch.Tensor, ref: torch.Tensor, rel: float) -> bool:
    """Equal up to rounding: the largest difference a small fraction of the output's scale
    (float32 sums of ~100 products: ~1e-7 of it; a wrong weight: order 1)."""
    return float((out.float() - ref.float()).abs().max()) <= rel * float(ref.float().abs().max())


@needs_onednn
@pytest.mark.parametrize("channels, kernel, dilation, stride", [(16, 7, 3, 1), (1, 8, 1, 4)])
def test_packed_weight_follows_the_weight(channels: int, kernel: int, dilation: int, stride: int) -> None:
    """The oneDNN copy is made once, reused, and made again whenever the weight changes (in place
    under no_grad, replaced, or cast); every result equals the convolution of the current weight."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(channels, 12, kernel, stride=stride, dilation=dilation,
                           padding=(kernel * dilation - dilation) // 2 if stride == 1 else (kernel - stride) // 2)
    x = _channels_last(torch.randn(1, channels, 1, 96 * stride))

    def fused_out(m, inp):
        ref = _conv_sum_reference(m, inp)
        out = _channels_last(torch.zeros_like(ref))
        fused_ops.conv_sum_(out, m, inp)
        return out, ref

    with torch.inference_mode():
        out, ref = fused_out(conv, x)  # not prepacked yet: the plain weight
    assert _close(out, ref, 2e-6) and fused_ops.PACKED_ATTR not in conv.__dict__
    first = fused_ops.packed_weight(conv)  # from now on conv_sum_ hands oneDNN this copy
    assert fused_ops.packed_weight(conv) is first  # kept, not remade
    with torch.inference_mode():
        out, ref = fused_out(conv, x)
    assert _close(out, ref, 2e-6)

    with torch.no_grad():
        conv.weight.mul_(-2.0)  # in place: the version counter moves
    with torch.inference_mode():
        out, ref = fused_out(conv, x)
    assert fused_ops.packed_weight(conv) is not first
    assert _close(out, ref, 2e-6)

    conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))  # replaced
    with torch.inference_mode():
        out, ref = fused_out(conv, x)
    assert _close(out, ref, 2e-6)

    if not fused_ops.available(x.to(torch.bfloat16)):
        return  # oneDNN has no bfloat16 on this CPU (AVX2 only): the fused path is float32 only
    conv = conv.to(torch.bfloat16)  # cast
    with torch.inference_mode():
        out, ref = fused_out(conv, x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert _close(out, ref, 2e-2)


def test_fused_path_is_bfloat16_only_where_onednn_computes_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without AVX512BW/VL/DQ or AVX-NE-CONVERT (e.g. AMD Zen 3, AVX2 only) oneDNN's
    bfloat16 weight reorder raises: a bfloat16 decoder there must neither prepack nor take the
    fused path, and still decode (through torch's own bfloat16 convolutions)."""
    bf16 = torch.zeros(1, dtype=torch.bfloat16)
    assert fused_ops.available(bf16) == (fused_ops._ops_present() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    monkeypatch.setattr(fused_ops, "_bf16_supported", lambda: False)
    assert not fused_ops.available(bf16)
    assert fused_ops.available(torch.zeros(1)) == fused_ops._ops_present()  # float32 unaffected
    model = _small_synth(40000, "1", seed=8).to(torch.bfloat16)
    model.dec.prepare()
    assert not any(fused_ops.PACKED_ATTR in m.__dict__ for m in model.dec.modules())
    out = _decode(model, _decoder_inputs(model, 40, torch.bfloat16, seed=9), fused=True)
    assert out.shape[-1] == 40 * model.hop_length and bool(torch.isfinite(out).all())


@needs_onednn
def test_a_model_with_packed_weights_copies_pickles_and_loads_under_inference_mode() -> None:
    """oneDNN tensors cannot be copied or pickled: the held copies travel as empty and are made
    again, so a copied model decodes exactly like the original; weights created under
    torch.inference_mode (no version counter) work too."""
    import copy
    import pickle

    model = _small_synth(40000, "1", seed=8)
    model.dec.prepack_all = True
    model.prepare()
    inputs = _decoder_inputs(model, 40, torch.float32, seed=9)
    first = _decode(model, inputs, fused=True)
    assert any(fused_ops.PACKED_ATTR in m.__dict__ for m in model.modules())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(_decode(clone, inputs, fused=True), first)
    with torch.inference_mode():
        frozen = _small_synth(40000, "1", seed=8)  # parameters are inference tensors here
        frozen.dec.prepack_all = True
        frozen.prepare()
        assert frozen.dec.resblocks[0].convs1[0].weight.is_inference()
        assert torch.equal(_decode(frozen, inputs, fused=True), first)


@needs_onednn
def test_prepacking_every_weight_changes_no_result() -> None:
    """By default only the noise convolutions are prepacked; prepack_all adds the resblocks'
    (oneDNN runs the same kernels on them: bit-identical in float32)."""
    model = _small_synth(40000, "1", seed=10)
    model.prepare()
    packed = [n for n, m in model.dec.named_modules() if fused_ops.PACKED_ATTR in m.__dict__]
    assert packed and all(n.startswith("noise_convs.") for n in packed)
    inputs = _decoder_inputs(model, 50, torch.float32, seed=11)
    default = _decode(model, inputs, fused=True)
    model.dec.prepack_all = True
    model.prepare()
    packed = [n for n, m in model.dec.named_modules() if fused_ops.PACKED_ATTR in m.__dict__]
    assert any(n.startswith("resblocks.") for n in packed)
    assert torch.equal(_decode(model, inputs, fused=True), default)


def test_bfloat16_without_hardware_support_warns_and_auto_avoids_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an AVX2-only CPU (AMD Zen 3, measured) bfloat16 convolutions run 7-13x slower than
    float32: asking for bfloat16 there still works but warns; 'auto' takes float32 silently."""
    import warnings

    from rvcfast import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "fma"}))
    with pytest.warns(RuntimeWarning, match="bfloat16 on this CPU runs without hardware support"):
        assert runtime.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_dtype("auto", cpu) == torch.float32
        assert runtime.resolve_dtype(torch.float32, cpu) == torch.float32
        monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
        assert runtime.resolve_dtype("bfloat16", cpu) == torch.bfloat16  # native: no warning

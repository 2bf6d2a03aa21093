"""Applio's MRF HiFi-GAN and RefineGAN vocoders: golden parity, windows, batches, every rate, errors.

Golden checks use ``../shared/golden-features/vocoders`` (README §2): Applio's
``Synthesizer.infer`` with every random draw off; tolerances are the README's (waveform
and ``har_source`` max abs <= 1e-5, ``m_p``/``logs_p``/``z`` <= 1e-4). Every model in the
folder with an ``_inputs.npz`` is checked, so another fixture set with other
configurations runs the same tests. The other tests build random-weight files in
Applio's exact layout (:func:`rvcfast.testing.save_random_applio_model`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SHARED

import rvcfast
from rvcfast.cli import main as cli_main
from rvcfast.errors import ModelLoadError
from rvcfast.models.synthesizer import kaiser_resample, windows
from rvcfast.models.synthesizer.applio_source import harmonic_sines, upsample_f0
from rvcfast.models.synthesizer.refinegan import refinegan_margin_frames
from rvcfast.testing import save_random_applio_model

VOCODERS = SHARED / "golden-features" / "vocoders"
GOLDEN_NAMES = sorted(p.name[: -len("_inputs.npz")] for p in VOCODERS.glob("*_inputs.npz"))

#: Small text encoder / flow (the decoder geometry stays Applio's; RefineGAN's widths are fixed anyway).
SMALL = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=1)
APPLIO_RATES = (32000, 40000, 48000)


@pytest.fixture(autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


def _inputs(t: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, coarse pitch and f0 (Hz, with an unvoiced run) for ``t`` frames."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, t, 768, generator=g)
    pitchf = 90 + 150 * torch.rand(batch, t, generator=g)
    pitchf[:, t // 4 : t // 4 + t // 8] = 0
    coarse = torch.randint(1, 256, (batch, t), generator=g)
    return feats, coarse, pitchf


@pytest.fixture(scope="module")
def applio_models(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """Random Applio files: MRF HiFi-GAN (narrow) and RefineGAN (its fixed widths) at 32/40/48 kHz."""
    root = tmp_path_factory.mktemp("applio")
    out = {}
    for vocoder in ("MRF HiFi-GAN", "RefineGAN"):
        for sr in APPLIO_RATES:
            tag = vocoder.split()[0].lower()
            out[(vocoder, sr)] = save_random_applio_model(
                root / f"{tag}_{sr}.pth",
                sr,
                vocoder,
                seed=sr // 1000,
                num_speakers=2,
                upsample_initial_channel=64,
                **SMALL,
            )
    return out


# --------------------------------------------------------------------------- golden parity


@pytest.mark.golden
@pytest.mark.parametrize("name", GOLDEN_NAMES or ["(none)"])
def test_golden_vocoder_matches_applio(name: str) -> None:
    if not GOLDEN_NAMES:
        pytest.skip(f"golden-features vocoder fixtures not found at {VOCODERS}")
    model = rvcfast.load_vocoder(VOCODERS / f"{name}.pth")
    ckpt = torch.load(VOCODERS / f"{name}.pth", weights_only=True)
    assert model.vocoder == ckpt["vocoder"]
    inp = np.load(VOCODERS / f"{name}_inputs.npz")
    ref = np.load(VOCODERS / f"{name}_intermediates.npz")
    wav, sr = sf.read(VOCODERS / f"{name}_out.wav", dtype="float32")
    assert sr == model.sample_rate
    pitchf = torch.from_numpy(inp["pitchf"])
    out = model.synthesize_debug(
        torch.from_numpy(inp["phone"]),
        torch.from_numpy(inp["phone_lengths"]),
        torch.from_numpy(inp["pitch"]),
        pitchf,
        int(inp["sid"][0]),
        noise=False,
    )
    for key in ("m_p", "logs_p", "z"):
        assert np.abs(out[key].numpy() - ref[key]).max() <= 1e-4, key
    source = model.dec.source_signal(pitchf, None, None)
    assert source.shape == (1, 1, wav.shape[0])
    assert np.abs(source[0, 0].numpy() - ref["har_source"]).max() <= 1e-5
    assert out["audio"].shape == (1, wav.shape[0])
    assert np.abs(out["audio"][0].numpy() - wav).max() <= 1e-5


# --------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("factor", [2, 8, 10, 12])
def test_kaiser_resampler_keeps_a_passband_sine_and_removes_an_alias(factor: int) -> None:
    """Downsampling by ``factor``: a sine at 20 % of the new Nyquist comes out as the same sine
    (away from the zero-padded ends), one at 1.5x the new Nyquist is suppressed."""
    n = 400 * factor
    t = torch.arange(n, dtype=torch.float64)
    low = torch.sin(2 * math.pi * 0.1 / factor * t)
    high = torch.sin(2 * math.pi * 0.75 / factor * t)
    y_low = kaiser_resample.resample(low[None, None], factor, 1)[0, 0]
    y_high = kaiser_resample.resample(high[None, None], factor, 1)[0, 0]
    assert y_low.shape == (400,)
    edge = kaiser_resample.kernel_width(factor, 1) // factor + 2
    expect = low[::factor]
    assert (y_low - expect)[edge:-edge].abs().max() < 1e-3
    assert y_high[edge:-edge].abs().max() < 1e-3


def test_kaiser_kernel_is_symmetric_with_unit_dc_gain_in_its_dtype() -> None:
    for dtype in (torch.float32, torch.float64):
        kernel, width = kaiser_resample.kaiser_kernel(10, 1, dtype)
        assert kernel.dtype == dtype and kernel.shape == (1, 1, 2 * width + 10)
        k = kernel[0, 0, : 2 * width + 1]  # taps -width..width around the output sample
        assert torch.allclose(k, k.flip(0), atol=1e-7)
        assert abs(float(k.sum()) - 1) < 1e-3
    assert kaiser_resample.kernel_width(20, 10) == kaiser_resample.kernel_width(2, 1) == 136


def test_sine_source_constant_f0_is_the_analytic_harmonic_series() -> None:
    """Applio's sine generator for a constant voiced f0: phase (n+1) f (h+1) / sr, amplitude 0.1;
    unvoiced samples are 0 without noise; with generators the fundamental still starts at phase 0."""
    sr, f0, n = 40000, 123.0, 20000
    f = torch.full((1, n), f0)
    f[:, 15000:] = 0
    s = harmonic_sines(f, sr, 8)
    k = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    # per-sample phase step f0 (h+1) / sr, rounded to float32 as the reference stores it
    step = (torch.tensor([f0 * h for h in range(1, 10)], dtype=torch.float32) / sr).double()[None, :]
    expect = 0.1 * torch.sin(2 * math.pi * torch.remainder(k * step, 1.0))
    # the reference subtracts 1 in float32 at each of the ~400 wraps of the 9th harmonic
    # (rad - 1 rounds by up to 6e-8 cycles): that drift is at most 0.1 * 2 pi * 400 * 6e-8
    assert (s[0, :15000].double() - expect[:15000]).abs().max() < 2e-5
    assert (s[0, :15000, 0].double() - expect[:15000, 0]).abs().max() < 1e-6
    assert s[0, 15000:].abs().max() == 0
    noisy = harmonic_sines(f, sr, 8, [torch.Generator().manual_seed(3)])
    again = harmonic_sines(f, sr, 8, [torch.Generator().manual_seed(3)])
    assert torch.equal(noisy, again)
    assert 0.02 < float(noisy[0, 15000:].std()) < 0.05  # unvoiced: noise of std 0.1/3
    assert float((noisy[0, :15000, 0] - s[0, :15000, 0]).std()) < 0.005  # fundamental: sine + 0.003 noise


def test_f0_upsampling_modes() -> None:
    f0 = torch.tensor([[100.0, 200.0, 0.0]])
    near = upsample_f0(f0, 4, "nearest")
    assert near.tolist() == [[100.0] * 4 + [200.0] * 4 + [0.0] * 4]
    lin = upsample_f0(f0, 4, "linear")[0]  # align_corners=False: source position (i + 0.5) / 4 - 0.5
    assert lin.tolist() == [100.0, 100.0, 112.5, 137.5, 162.5, 187.5, 175.0, 125.0, 75.0, 25.0, 0.0, 0.0]


# --------------------------------------------------------------------------- every rate, windows, batches


@pytest.mark.parametrize("vocoder", ["MRF HiFi-GAN", "RefineGAN"])
@pytest.mark.parametrize("sr", APPLIO_RATES)
def test_every_applio_rate_builds_and_runs(applio_models, vocoder: str, sr: int) -> None:
    model = rvcfast.load_vocoder(applio_models[(vocoder, sr)])
    assert model.vocoder == vocoder and model.sample_rate == sr and model.hop_length == sr // 100
    assert model.has_f0 and model.embedder_model == "contentvec" and model.num_speakers == 2
    t = 24
    feats, coarse, pitchf = _inputs(t)
    args = (feats, torch.tensor([t]), coarse, pitchf)
    y = model.synthesize(*args, speaker=1, noise=False)
    assert y.shape == (1, t * sr // 100) and torch.isfinite(y).all() and y.abs().max() <= 1
    a = model.synthesize(*args, speaker=1, noise=True, generator=torch.Generator().manual_seed(5))
    b = model.synthesize(*args, speaker=1, noise=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, y)


@pytest.mark.parametrize("vocoder", ["MRF HiFi-GAN", "RefineGAN"])
def test_windowed_decoding_and_skip_frames_equal_a_whole_pass(
    applio_models, vocoder: str, monkeypatch
) -> None:
    """Small windows (several per item, some with context on both sides) and skip_frames keep
    exactly the samples of one pass; the dropped samples are 0.

    RefineGAN (margin 89 frames at 48 kHz) is expensive per frame, so it gets the shortest
    item that still has a window starting at the item's first frame, one with both edges
    inside the item and its kept samples exactly ``margin_frames`` from each edge, and a
    last, partial window widened to the window size: 191 frames, 3 windows of 10 kept
    frames (MRF HiFi-GAN keeps 190 of 250 frames in windows of 60).
    """
    model = rvcfast.load_vocoder(applio_models[(vocoder, 48000)])
    t, skip, chunk = (250, 30, 60) if vocoder == "MRF HiFi-GAN" else (191, 81, 10)
    hop = model.hop_length
    feats, coarse, pitchf = _inputs(t, seed=2)
    args = (feats, torch.tensor([t]), coarse, pitchf)
    whole = model.synthesize(*args, noise=False)
    tol = 1e-5 * max(float(whole.abs().max()), 1e-3) + 1e-6
    monkeypatch.setattr(windows, "DECODER_SINGLE_FRAMES", 64)
    monkeypatch.setattr(model.dec, "window_frames", 2 * model.dec.margin_frames + chunk, raising=False)
    calls: list[tuple[int, ...]] = []
    real = model.dec.forward

    def spy(x, *a, **k):
        calls.append(tuple(x.shape))
        return real(x, *a, **k)

    monkeypatch.setattr(model.dec, "forward", spy)
    kept = model.synthesize(*args, noise=False, skip_frames=skip)
    assert len(calls) == math.ceil((t - 2 * skip) / chunk) >= 3
    if vocoder == "RefineGAN":  # the short item still has the windows the docstring names
        margin, size = model.dec.margin_frames, model.dec.window_frames
        plan = windows._plan_windows(t, skip, margin, size)
        assert plan[0][0] == 0 and plan[-1][3] - plan[-1][2] < chunk and plan[-1][1] - plan[-1][0] == size
        assert any(0 < s0 and e0 < t and k0 - s0 == e0 - k1 == margin for s0, e0, k0, k1 in plan)
    sl = slice(skip * hop, (t - skip) * hop)
    assert float((kept[:, sl] - whole[:, sl]).abs().max()) <= tol
    assert not kept[:, : skip * hop].any() and not kept[:, (t - skip) * hop :].any()
    if vocoder == "MRF HiFi-GAN":  # cheap: windows from the item's first frame too
        windowed = model.synthesize(*args, noise=False)
        assert float((windowed - whole).abs().max()) <= tol


@pytest.mark.parametrize("vocoder", ["MRF HiFi-GAN", "RefineGAN"])
def test_padded_batch_items_equal_solo_runs(applio_models, vocoder: str) -> None:
    """Each item of a padded batch (one 14 frames shorter) equals its solo run, with and
    without noise; its padding is 0. A leak of the padding reaches the short item's last
    frames, next to it, and the text encoder's attention reaches all of them, at any
    length: 36 frames show it as well as longer items."""
    model = rvcfast.load_vocoder(applio_models[(vocoder, 32000)])
    hop, t, lens = model.hop_length, 36, [36, 22]
    feats, coarse, pitchf = _inputs(t, batch=2, seed=4)
    for noise in (False, True):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(2)] if noise else None
        batch = model.synthesize(feats, torch.tensor(lens), coarse, pitchf, noise=noise, generator=gens)
        for i, n in enumerate(lens):
            g = [torch.Generator().manual_seed(10 + i)] if noise else None
            solo = model.synthesize(
                feats[i : i + 1, :n],
                torch.tensor([n]),
                coarse[i : i + 1, :n],
                pitchf[i : i + 1, :n],
                noise=noise,
                generator=g,
            )
            assert float((batch[i, : n * hop] - solo[0]).abs().max()) <= 1e-5, (noise, i)
            assert not batch[i, n * hop :].any()


@pytest.mark.parametrize("sr", [32000, pytest.param(40000, marks=pytest.mark.slow), 48000])
def test_refinegan_margin_bounds_the_measured_receptive_field(applio_models, sr: int) -> None:
    """Perturbing one frame of z, or one source sample, changes the RefineGAN output only
    within the computed margin (minus its 3 frames of safety)."""
    model = rvcfast.load_vocoder(applio_models[("RefineGAN", sr)])
    dec, hop = model.dec, model.hop_length
    assert dec.margin_frames == refinegan_margin_frames(model.arch.upsample_rates)
    assert 2 * dec.margin_frames < dec.window_frames
    g = torch.Generator().manual_seed(7)
    t, f = 200, 100
    z = torch.randn(1, 16, t, generator=g)
    spk = torch.randn(1, 256, 1, generator=g)
    src = 0.1 * torch.randn(1, 1, t * hop, generator=g)
    with torch.inference_mode():
        y0 = dec(z, spk, src, None)[0, 0]
        z2 = z.clone()
        z2[..., f] += 1.0
        s2 = src.clone()
        s2[..., f * hop] += 1.0
        reaches = []
        for y in (dec(z2, spk, src, None)[0, 0], dec(z, spk, s2, None)[0, 0]):
            changed = torch.nonzero(y != y0).flatten()
            assert changed.numel() > 0
            reaches.append(max(f - changed.min().item() / hop, changed.max().item() / hop - (f + 1)))
    assert 5 < reaches[0] <= dec.margin_frames - 3
    assert 50 < reaches[1] <= dec.margin_frames - 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_refinegan_in_half_precision_stays_finite(applio_models, dtype: torch.dtype) -> None:
    """torchaudio's float16 kernel overflows (I0(beta) > 65504); rvcfast's half models use the
    float32 kernel cast down, so the output stays finite and near float32's."""
    path = applio_models[("RefineGAN", 32000)]
    t = 6  # the kernel is the same at any length; half precision runs slowly on CPUs without it
    feats, coarse, pitchf = _inputs(t, seed=5)
    args = (feats, torch.tensor([t]), coarse, pitchf)
    ref = rvcfast.load_vocoder(path).synthesize(*args, noise=False)
    half = rvcfast.load_vocoder(path, dtype=dtype).synthesize(*args, noise=False)
    assert torch.isfinite(half).all()
    # a broken kernel gives inf/NaN or O(1) errors; half precision alone stays far below 10 %
    assert float((half - ref).norm() / ref.norm()) < 0.1


# --------------------------------------------------------------------------- errors


def test_applio_v3_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "v3_model.pth"
    torch.save(
        {"backend": "applio-v3", "model": {"enc.weight": torch.zeros(4, 4)}, "sample_rate": 48000}, path
    )
    with pytest.raises(ModelLoadError) as info:
        rvcfast.load_vocoder(path)
    text = str(info.value)
    assert str(path) in text and "Applio v3 model" in text and "does not run" in text


@pytest.mark.parametrize("vocoder", ["MRF HiFi-GAN", "RefineGAN"])
def test_no_f0_file_with_an_f0_only_vocoder_is_refused(tmp_path: Path, vocoder: str) -> None:
    path = save_random_applio_model(tmp_path / "nof0.pth", 40000, vocoder, f0=False, **SMALL)
    with pytest.raises(ModelLoadError) as info:
        rvcfast.load_vocoder(path)
    assert str(path) in str(info.value) and vocoder in str(info.value) and "pitch-guided" in str(info.value)


def test_unknown_vocoder_and_mismatched_weights_are_refused(applio_models, tmp_path: Path) -> None:
    ckpt = torch.load(applio_models[("MRF HiFi-GAN", 40000)], weights_only=True)
    path = tmp_path / "bigvgan.pth"
    torch.save(dict(ckpt, vocoder="BigVGAN"), path)
    with pytest.raises(ModelLoadError, match="BigVGAN") as info:
        rvcfast.load_vocoder(path)
    assert str(path) in str(info.value) and "RefineGAN" in str(info.value)
    torch.save(dict(ckpt, vocoder="RefineGAN"), path)  # MRF weights under the RefineGAN name
    with pytest.raises(ModelLoadError, match="unknown keys: dec.conv_post.bias") as info:
        rvcfast.load_vocoder(path)
    assert str(path) in str(info.value)
    weight = dict(ckpt["weight"])
    del weight["dec.m_source.l_linear.weight"]
    weight["dec.extra.weight"] = torch.zeros(1)
    torch.save(dict(ckpt, weight=weight), path)
    with pytest.raises(
        ModelLoadError, match="unknown keys: dec.extra.weight; missing keys: dec.m_source.l_linear"
    ):
        rvcfast.load_vocoder(path)


def test_refinegan_config_it_cannot_run_is_refused(applio_models, tmp_path: Path) -> None:
    ckpt = torch.load(applio_models[("RefineGAN", 48000)], weights_only=True)
    config = list(ckpt["config"])
    config[12], config[14] = [6, 2, 10, 2, 2], [12, 4, 20, 4, 4]
    path = tmp_path / "five_stages.pth"
    torch.save(dict(ckpt, config=config), path)
    with pytest.raises(ModelLoadError, match="exactly 4 upsample rates"):
        rvcfast.load_vocoder(path)


def test_files_without_a_vocoder_entry_are_recognised_by_their_keys(applio_models, tmp_path: Path) -> None:
    for vocoder in ("MRF HiFi-GAN", "RefineGAN"):
        ckpt = torch.load(applio_models[(vocoder, 40000)], weights_only=True)
        del ckpt["vocoder"]
        path = tmp_path / "unnamed.pth"
        torch.save(ckpt, path)
        assert rvcfast.load_vocoder(path).vocoder == vocoder


# --------------------------------------------------------------------------- rvcfast info


def test_info_names_the_vocoder_and_the_embedder(applio_models, capsys) -> None:
    path = applio_models[("RefineGAN", 40000)]
    assert cli_main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "RefineGAN" in text and "contentvec" in text
    assert cli_main(["info", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)["model"]
    assert report["vocoder"] == "RefineGAN" and report["embedder"] == "contentvec"
    assert report["sample_rate"] == 40000 and report["f0"] is True

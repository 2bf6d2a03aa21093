"""Robustness of the synthesizer: batching, windows, noise, odd inputs, memory and threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rvcfast
from rvcfast.errors import ParameterError
from rvcfast.models.synthesizer import Synthesizer, windows
from rvcfast.testing import save_random_applio_model, save_random_voice_model

SMALL = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, Path]:
    """Small random voices: RVC HiFi-GAN (40 kHz), MRF HiFi-GAN and RefineGAN (32 kHz)."""
    root = tmp_path_factory.mktemp("synth_robust")
    out = {"hifigan": save_random_voice_model(root / "hifigan.pth", "v2", 40000, True, num_speakers=2,
                                              upsample_initial_channel=32, **SMALL)}
    for vocoder, tag in (("MRF HiFi-GAN", "mrf"), ("RefineGAN", "refinegan")):
        out[tag] = save_random_applio_model(root / f"{tag}.pth", 32000, vocoder, seed=1, num_speakers=2,
                                            upsample_initial_channel=64, **SMALL)
    return out


def _inputs(t: int, batch: int = 1, seed: int = 0, channels: int = 768):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, t, channels, generator=g)
    pitchf = 90 + 150 * torch.rand(batch, t, generator=g)
    pitchf[:, t // 4 : t // 4 + t // 8] = 0
    coarse = torch.randint(1, 256, (batch, t), generator=g)
    return feats, coarse, pitchf


def test_refinegan_seeded_noise_of_an_item_does_not_depend_on_how_windows_are_grouped(voices, monkeypatch) -> None:
    """On accelerators the windows of all items are batched into decoder calls. RefineGAN
    draws its AdaIN noise per row, layer by layer; two windows of one item in one call took
    their noise from one generator in an order set by the grouping, so a seeded item's audio
    changed with the other items of the batch. Each item must equal its solo run."""
    model: Synthesizer = rvcfast.load_vocoder(voices["refinegan"])
    # tiny windows (the margin is below the receptive field, which this comparison of two
    # identical window plans does not need) keep RefineGAN's fixed widths quick
    monkeypatch.setattr(windows, "DECODER_SINGLE_FRAMES", 50)
    monkeypatch.setattr(model.dec, "window_frames", 40, raising=False)
    monkeypatch.setattr(model.dec, "margin_frames", 10, raising=False)
    real_group = windows._group_windows
    # what a CUDA device does (windows batched up to DECODER_BATCH_FRAMES per call)
    monkeypatch.setattr(windows, "_group_windows", lambda w, limit: real_group(w, windows.DECODER_BATCH_FRAMES))
    lens, skip = [30, 80], 20  # item 0: one window; item 1: two windows of 40 frames
    feats, coarse, pitchf = _inputs(max(lens), batch=2, seed=3)
    hop = model.hop_length

    def run(idx: list[int]) -> torch.Tensor:
        t = max(lens[i] for i in idx)
        gens = [torch.Generator().manual_seed(100 + i) for i in idx]
        return model.synthesize(feats[idx, :t], [lens[i] for i in idx], coarse[idx, :t], pitchf[idx, :t],
                                noise=True, generator=gens, skip_frames=skip)

    both = run([0, 1])
    for i in (0, 1):
        solo = run([i])[0]
        n = lens[i]
        # float rounding of batch-size dependent kernels only (the noisy audio is O(0.1))
        assert float((both[i, : n * hop] - solo).abs().max()) <= 1e-4, i


@pytest.mark.parametrize("kind", ["hifigan", "mrf", "refinegan"])
def test_padding_frames_holding_nan_do_not_reach_the_item(voices, kind: str) -> None:
    """Frames beyond an item's length are padding and must not influence it, whatever they
    hold: NaN there was multiplied by the 0 masks (NaN * 0 = NaN) and made the item NaN."""
    model = rvcfast.load_vocoder(voices[kind])
    feats, coarse, pitchf = _inputs(20, batch=2, seed=5)
    lens = [20, 12]
    clean = model.synthesize(feats, lens, coarse, pitchf, noise=False)
    dirty = feats.clone()
    dirty[1, 12:] = float("nan")
    out = model.synthesize(dirty, lens, coarse, pitchf, noise=False)
    assert torch.equal(out, clean)


def test_non_finite_features_in_valid_frames_are_refused(voices) -> None:
    """NaN/Inf content features gave all-NaN audio silently; pitchf already was checked."""
    model = rvcfast.load_vocoder(voices["hifigan"])
    feats, coarse, pitchf = _inputs(10, batch=2)
    for bad in (float("nan"), float("inf")):
        f = feats.clone()
        f[1, 3, 7] = bad
        with pytest.raises(ParameterError, match=r"features contain NaN or infinite values \(batch items \[1\]\)"):
            model.synthesize(f, [10, 10], coarse, pitchf, noise=False)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"lengths": None}, "lengths must be an integer tensor"),
        ({"lengths": torch.tensor([True, True])}, "lengths must be an integer tensor"),
        ({"speaker": torch.tensor([True, False])}, "speaker must be an int or an integer tensor"),
        ({"speaker": torch.tensor([1 + 0j, 0j])}, "speaker must be an int or an integer tensor"),
        ({"speaker": -1}, r"speaker id \[-1, -1\] out of range: this model has 2 speaker"),
        ({"speaker": torch.tensor([0, 2])}, r"speaker id \[0, 2\] out of range"),
    ],
)
def test_bad_lengths_and_speakers_are_parameter_errors(voices, kwargs: dict, needle: str) -> None:
    """None lengths were a raw RuntimeError; boolean or complex tensors were read as 0/1 ids."""
    model = rvcfast.load_vocoder(voices["hifigan"])
    feats, coarse, pitchf = _inputs(10, batch=2)
    args = {"features": feats, "lengths": [10, 10], "pitch": coarse, "pitchf": pitchf, "noise": False}
    args.update(kwargs)
    with pytest.raises(ParameterError, match=needle):
        model.synthesize(**args)


def test_applio_sine_source_in_scan_steps_is_the_one_pass_scan_to_the_bit(monkeypatch) -> None:
    """The MRF/RefineGAN source is scanned :data:`SCAN_SAMPLES` at a time (bounded memory);
    carrying the float64 running sums across steps must give one whole scan exactly."""
    from rvcfast.models.synthesizer import applio_source as src

    gen = torch.Generator().manual_seed(0)
    f0 = 50 + 900 * torch.rand(2, 40, generator=gen)
    f0[:, 10:17] = 0
    f0_up = src.upsample_f0(f0, 320, "nearest")
    whole = src.harmonic_sines(f0_up, 32000, 8)  # 12800 samples: one step
    # independent reference: Applio's formula in float64, rounded where it rounds
    rad = (f0_up[:, :, None] * torch.arange(1, 10) / 32000) % 1
    sums = torch.cumsum(rad.double(), 1).float() % 1
    shift = torch.zeros_like(rad)
    shift[:, 1:] = ((sums[:, 1:] - sums[:, :-1]) < 0) * -1.0
    ref = torch.sin(torch.cumsum((rad + shift).double(), 1).float() * 2 * torch.pi) * 0.1 * (f0_up > 0)[:, :, None]
    assert torch.equal(whole, ref)
    for step in (1, 999, 4096):
        monkeypatch.setattr(src, "SCAN_SAMPLES", step)
        assert torch.equal(src.harmonic_sines(f0_up, 32000, 8), whole), step


_SOURCE_MEMORY = """
import resource, sys, torch
from rvcfast.models.synthesizer.applio_source import source_signal
from rvcfast.models.synthesizer.hifigan_mrf import _HarmonicSource
torch.set_num_threads(1)
f0 = 100 + 100 * torch.rand(1, 4500)  # 45 s, the longest segment, at 48 kHz: 2.16 M samples
merge = _HarmonicSource(8)
with torch.inference_mode():
    torch.zeros(1)  # warm the allocator
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = source_signal(f0, None, upp=480, sr=48000, mode="nearest", harmonics=8, merge=merge, gens=[None])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) / 1024, out.numel() * 4 / 2**20)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_mrf_source_of_a_long_segment_stays_within_a_few_outputs_of_memory() -> None:
    """The 9-overtone source held [B, N, 9] float64 running sums and several float32 copies
    at once: ~700 MB of peak for one 45 s segment at 48 kHz (80x its 8 MB output). Scanned
    in steps, it needs the output plus a few MB per step."""
    res = subprocess.run([sys.executable, "-c", _SOURCE_MEMORY], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    growth_mb, output_mb = map(float, res.stdout.split())
    assert growth_mb < 20 * output_mb, (growth_mb, output_mb)

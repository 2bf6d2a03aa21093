"""Tests of the RVC synthesizer (rvcfast.models.synthesizer)."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvcfast.errors import ModelLoadError, ParameterError
from rvcfast.models.synthesizer import (
    RVC_SAMPLE_RATE_CONFIGS,
    Synthesizer,
    load_vocoder,
    rvc_config,
)
from rvcfast.models.synthesizer.hifigan import sine_excitation
from rvcfast.protocols import Vocoder
from rvcfast.safe_load import load_torch_file
from rvcfast.testing import save_random_voice_model

VARIANTS = ["v2_40k_f0", "v1_48k_f0", "v2_32k_nof0"]
# (sample_rate, version, has_f0, num_speakers from emb_g rows, hop)
EXPECTED_ATTRS = {
    "v2_40k_f0": (40000, "v2", True, 3, 400),
    "v1_48k_f0": (48000, "v1", True, 2, 480),
    "v2_32k_nof0": (32000, "v2", False, 4, 320),
}
SMALL = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run this module single-threaded: on a busy 2-core box, two spinning OpenMP
    threads make these small convolutions several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(golden: Path) -> dict[str, Synthesizer]:
    return {v: load_vocoder(golden / "models" / f"voice_{v}.pth") for v in VARIANTS}


def _inputs(golden: Path, variant: str) -> dict[str, torch.Tensor]:
    data = np.load(golden / "synth" / f"{variant}_inputs.npz")
    return {k: torch.from_numpy(data[k]) for k in data.files}


def _short(inp: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` frames of a golden input (keeps the non-golden tests quick)."""
    out = {k: (v[:, :n] if v.dim() >= 2 else v) for k, v in inp.items()}
    out["phone_lengths"] = torch.tensor([n])
    return out


def _run(model: Synthesizer, inp: dict[str, torch.Tensor], **kw):
    return model.synthesize_debug(
        inp["phone"], inp["phone_lengths"], inp.get("pitch"), inp.get("pitchf"), inp["sid"], **kw
    )


# --------------------------------------------------------------------------- golden parity


@pytest.mark.golden
@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_parity(golden: Path, models, variant: str) -> None:
    model = models[variant]
    out = _run(model, _inputs(golden, variant), noise=False)
    ref, sr = sf.read(golden / "synth" / f"{variant}_out.wav", dtype="float32")
    assert sr == model.sample_rate
    audio = out["audio"][0].numpy()
    assert audio.shape == ref.shape
    assert np.abs(audio - ref).max() <= 2e-5
    inter = np.load(golden / "synth" / f"{variant}_intermediates.npz")
    for key in ("m_p", "logs_p", "z"):
        assert out[key].shape == inter[key].shape
        assert np.abs(out[key].numpy() - inter[key]).max() <= 1e-4, key


@pytest.mark.golden
@pytest.mark.parametrize("variant", VARIANTS)
def test_attributes(models, variant: str) -> None:
    model = models[variant]
    sr, version, has_f0, n_spk, hop = EXPECTED_ATTRS[variant]
    assert model.sample_rate == sr
    assert model.version == version
    assert model.has_f0 is has_f0
    assert model.num_speakers == n_spk
    assert model.hop_length == hop
    assert model.feature_dim == (256 if version == "v1" else 768)
    assert model.config[15] == n_spk and model.config[17] == sr
    assert isinstance(model, Vocoder)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.golden
def test_speaker_count_from_emb_g_not_config(golden: Path, models) -> None:
    ckpt = load_torch_file(golden / "models" / "voice_v1_48k_f0.pth")
    assert ckpt["config"][15] == 109
    assert models["v1_48k_f0"].num_speakers == ckpt["weight"]["emb_g.weight"].shape[0] == 2


# --------------------------------------------------------------------------- file variants


@pytest.mark.golden
def test_parametrization_keys_give_identical_output(golden: Path, models, tmp_path: Path) -> None:
    ckpt = load_torch_file(golden / "models" / "voice_v2_40k_f0.pth")
    renamed = collections.OrderedDict()
    n = 0
    for key, value in ckpt["weight"].items():
        if key.endswith(".weight_g"):
            key = key[: -len(".weight_g")] + ".parametrizations.weight.original0"
            n += 1
        elif key.endswith(".weight_v"):
            key = key[: -len(".weight_v")] + ".parametrizations.weight.original1"
        renamed[key] = value
    assert n > 0
    ckpt["weight"] = renamed
    path = tmp_path / "param_keys.pth"
    torch.save(ckpt, path)
    model = load_vocoder(path)
    inp = _short(_inputs(golden, "v2_40k_f0"), 50)
    a = _run(model, inp, noise=False)["audio"]
    b = _run(models["v2_40k_f0"], inp, noise=False)["audio"]
    assert torch.equal(a, b)


@pytest.mark.golden
def test_applio_spelling_and_training_checkpoint(golden: Path, models, tmp_path: Path) -> None:
    ckpt = load_torch_file(golden / "models" / "voice_v1_48k_f0.pth")
    # Applio spelling: int sr, bool f0, vocoder key, extra metadata.
    applio = dict(ckpt, sr=48000, f0=True, vocoder="HiFi-GAN", epoch=3, author="x", embedder_model="contentvec")
    torch.save(applio, tmp_path / "applio.pth")
    inp = _short(_inputs(golden, "v1_48k_f0"), 40)
    ref = _run(models["v1_48k_f0"], inp, noise=False)["audio"]
    assert torch.equal(_run(load_vocoder(tmp_path / "applio.pth"), inp, noise=False)["audio"], ref)
    # Training checkpoint: {"model": state dict with enc_q.*, ...}, no config at all.
    weights = dict(ckpt["weight"])
    hidden = weights["enc_p.emb_phone.weight"].shape[0]
    weights["enc_q.pre.weight"] = torch.zeros(hidden, 1025, 1, dtype=torch.float16)
    weights["enc_q.proj.bias"] = torch.zeros(4, dtype=torch.float16)
    train = {"model": weights, "iteration": 10, "optimizer": {}, "learning_rate": 1e-4}
    torch.save(train, tmp_path / "G_10.pth")
    model = load_vocoder(tmp_path / "G_10.pth")
    assert (model.version, model.sample_rate, model.has_f0, model.hop_length) == ("v1", 48000, True, 480)
    assert model.config[12] == [10, 6, 2, 2, 2]
    assert torch.equal(_run(model, inp, noise=False)["audio"], ref)


def _mutated(golden: Path, tmp_path: Path, name: str, mutate) -> Path:
    ckpt = load_torch_file(golden / "models" / "voice_v2_32k_nof0.pth")
    mutate(ckpt)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


@pytest.mark.golden
def test_unknown_key_rejected(golden: Path, tmp_path: Path) -> None:
    path = _mutated(golden, tmp_path, "unknown.pth", lambda c: c["weight"].__setitem__("dec.extra.weight", torch.zeros(3)))
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    assert str(path) in str(info.value) and "dec.extra.weight" in str(info.value)
    assert "unknown" in str(info.value)


@pytest.mark.golden
def test_missing_key_rejected(golden: Path, tmp_path: Path) -> None:
    path = _mutated(golden, tmp_path, "missing.pth", lambda c: c["weight"].pop("dec.conv_post.weight"))
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    assert str(path) in str(info.value) and "dec.conv_post.weight" in str(info.value)
    assert "missing" in str(info.value)


@pytest.mark.golden
def test_enc_q_keys_ignored(golden: Path, tmp_path: Path) -> None:
    path = _mutated(golden, tmp_path, "encq.pth", lambda c: c["weight"].__setitem__("enc_q.pre.weight", torch.zeros(2)))
    assert load_vocoder(path).num_speakers == 4


@pytest.mark.golden
def test_shape_mismatch_rejected(golden: Path, tmp_path: Path) -> None:
    def mutate(c):
        c["weight"]["dec.conv_pre.weight"] = torch.zeros(5, 5, 7, dtype=torch.float16)

    path = _mutated(golden, tmp_path, "shape.pth", mutate)
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    assert str(path) in str(info.value) and "dec.conv_pre.weight" in str(info.value)


@pytest.mark.golden
def test_wrong_version_gives_clear_error(golden: Path, tmp_path: Path) -> None:
    path = _mutated(golden, tmp_path, "version.pth", lambda c: c.__setitem__("version", "v1"))
    with pytest.raises(ModelLoadError, match="emb_phone"):
        load_vocoder(path)


@pytest.mark.golden
def test_wrong_vocoder_rejected(golden: Path, tmp_path: Path) -> None:
    path = _mutated(golden, tmp_path, "refinegan.pth", lambda c: c.__setitem__("vocoder", "RefineGAN"))
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    assert str(path) in str(info.value) and "RefineGAN" in str(info.value)


@pytest.mark.parametrize(
    "content, needle",
    [
        (["not", "a", "dict"], "not an RVC voice model"),
        ({"foo": 1}, "'weight'"),
        ({"weight": {"emb_g.weight": torch.zeros(2, 4)}}, "config"),
        ({"weight": {"emb_g.weight": torch.zeros(2, 4)}, "config": [1, 2, 3]}, "18"),
        ({"weight": {"a": 1}, "config": []}, "not tensors"),
    ],
)
def test_not_a_voice_model(tmp_path: Path, content, needle: str) -> None:
    path = tmp_path / "bad.pth"
    torch.save(content, path)
    with pytest.raises(ModelLoadError, match=needle) as info:
        load_vocoder(path)
    assert str(path) in str(info.value)


@pytest.mark.golden
def test_malformed_config_rejected(golden: Path, tmp_path: Path) -> None:
    def mutate(c):
        c["config"][12] = "ten"

    path = _mutated(golden, tmp_path, "cfg.pth", mutate)
    with pytest.raises(ModelLoadError, match="config") as info:
        load_vocoder(path)
    assert str(path) in str(info.value)


def test_garbage_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- inputs


@pytest.mark.golden
def test_input_validation(golden: Path, models) -> None:
    f0_model, nof0_model = models["v2_40k_f0"], models["v2_32k_nof0"]
    t = 12
    feats = torch.randn(1, t, 768)
    lens = torch.tensor([t])
    pitch = torch.full((1, t), 60)
    pitchf = torch.full((1, t), 150.0)
    with pytest.raises(ParameterError, match="pitch"):
        f0_model.synthesize(feats, lens, noise=False)
    with pytest.raises(ParameterError, match="speaker"):
        f0_model.synthesize(feats, lens, pitch, pitchf, speaker=3, noise=False)
    with pytest.raises(ParameterError, match="channels"):
        f0_model.synthesize(torch.randn(1, t, 256), lens, pitch, pitchf, noise=False)
    with pytest.raises(ParameterError, match="lengths"):
        f0_model.synthesize(feats, torch.tensor([t + 1]), pitch, pitchf, noise=False)
    with pytest.raises(ParameterError, match="pitch"):
        f0_model.synthesize(feats, lens, pitch.float(), pitchf, noise=False)
    with pytest.raises(ParameterError, match="0..255"):
        f0_model.synthesize(feats, lens, pitch + 300, pitchf, noise=False)
    # No-F0 models ignore pitch arguments.
    a = nof0_model.synthesize(feats, lens, pitch, pitchf, speaker=1, noise=False)
    b = nof0_model.synthesize(feats, lens, speaker=torch.tensor([1]), noise=False)
    assert torch.equal(a, b) and a.shape == (1, t * 320)


# --------------------------------------------------------------------------- batching and noise


def _batch_from(inp: dict[str, torch.Tensor], t: int, lens: list[int], offsets: list[int]):
    b = len(lens)
    feats = torch.randn(b, t, inp["phone"].shape[2], generator=torch.Generator().manual_seed(0))  # padding garbage
    pitch = torch.full((b, t), 77, dtype=torch.long)
    pitchf = torch.full((b, t), 123.0)
    for i, (n, o) in enumerate(zip(lens, offsets)):
        feats[i, :n] = inp["phone"][0, o : o + n]
        if "pitch" in inp:
            pitch[i, :n] = inp["pitch"][0, o : o + n]
            pitchf[i, :n] = inp["pitchf"][0, o : o + n]
    return feats, pitch, pitchf


@pytest.mark.golden
@pytest.mark.parametrize("variant", ["v2_40k_f0", "v2_32k_nof0"])
@pytest.mark.parametrize("noise", [False, True])
def test_batch_equals_solo(golden: Path, models, variant: str, noise: bool) -> None:
    model = models[variant]
    inp = _short(_inputs(golden, variant), 64)
    t = 48
    lens, offsets = [t, 31, 13], [0, 30, 50]  # all windows lie inside the 64 golden frames kept
    feats, pitch, pitchf = _batch_from(inp, t, lens, offsets)
    sid = torch.tensor([0, 1, 2])
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    out = model.synthesize(feats, torch.tensor(lens), pitch, pitchf, sid, noise=noise, generator=gens)
    assert out.shape == (3, t * model.hop_length)
    hop = model.hop_length
    for i, (n, o) in enumerate(zip(lens, offsets)):
        solo = model.synthesize(
            inp["phone"][:, o : o + n],
            torch.tensor([n]),
            inp["pitch"][:, o : o + n] if "pitch" in inp else None,
            inp["pitchf"][:, o : o + n] if "pitchf" in inp else None,
            i,
            noise=noise,
            generator=[torch.Generator().manual_seed(10 + i)],
        )[0]
        diff = (out[i, : n * hop] - solo).abs().max().item()
        assert diff <= 1e-5 * solo.abs().max().item(), (i, diff)
        assert torch.all(out[i, n * hop :] == 0)


@pytest.mark.golden
def test_seeded_noise(golden: Path, models) -> None:
    model = models["v2_40k_f0"]
    inp = _short(_inputs(golden, "v2_40k_f0"), 40)
    a = _run(model, inp, noise=True, generator=torch.Generator().manual_seed(1))["audio"]
    b = _run(model, inp, noise=True, generator=torch.Generator().manual_seed(1))["audio"]
    c = _run(model, inp, noise=True, generator=torch.Generator().manual_seed(2))["audio"]
    d = _run(model, inp, noise=False)["audio"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)
    assert not torch.allclose(a, d, atol=1e-4)
    # A single generator seeds one generator per item: item 0 of a batch matches a solo run.
    feats = inp["phone"].repeat(2, 1, 1)
    batch = model.synthesize(
        feats, inp["phone_lengths"].repeat(2), inp["pitch"].repeat(2, 1), inp["pitchf"].repeat(2, 1), 1,
        noise=True, generator=torch.Generator().manual_seed(1),
    )
    assert torch.allclose(batch[0], a[0], rtol=0, atol=1e-6)
    assert not torch.allclose(batch[1], a[0], atol=1e-4)


def test_sine_phase_is_accurate_for_long_inputs() -> None:
    sr, upp, t = 48000, 480, 3000  # 30 s
    f0 = 100.0 + 150.0 * torch.rand(1, t, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f0[:, 100:130] = 0.0
    f0 = f0.float()
    got = sine_excitation(f0, sr, upp)[0].double()
    inc = (f0.double() / sr).repeat_interleave(upp, dim=1)[0]
    phase = torch.remainder(torch.cumsum(inc, 0), 1.0)
    voiced = (f0[0] > 0).double().repeat_interleave(upp)
    ref = 0.1 * torch.sin(2 * math.pi * phase) * voiced
    assert (got - ref).abs().max().item() < 2e-6


# --------------------------------------------------------------------------- random full-size architecture


@pytest.mark.parametrize("version, sr, f0", [("v1", 32000, True), ("v2", 48000, False)])
def test_random_voice_model_roundtrip(tmp_path: Path, version: str, sr: int, f0: bool) -> None:
    path = save_random_voice_model(tmp_path / "rand.pth", version, sr, f0, num_speakers=3, seed=5, **SMALL)
    ckpt = load_torch_file(path)
    assert list(ckpt) == ["weight", "config", "info", "sr", "f0", "version"]
    assert ckpt["sr"] == f"{sr // 1000}k" and ckpt["f0"] == int(f0) and ckpt["version"] == version
    assert ckpt["config"][12] == list(RVC_SAMPLE_RATE_CONFIGS[(version, sr)][1])
    assert all(v.dtype == torch.float16 for v in ckpt["weight"].values())
    assert any(k.endswith(".weight_g") for k in ckpt["weight"]) and not any("enc_q" in k for k in ckpt["weight"])
    model = load_vocoder(path)
    assert (model.version, model.sample_rate, model.has_f0, model.num_speakers) == (version, sr, f0, 3)
    t = 9
    out = model.synthesize(
        torch.randn(2, t, model.feature_dim), torch.tensor([t, 5]),
        torch.randint(1, 256, (2, t)), 100 + 100 * torch.rand(2, t), torch.tensor([0, 2]), noise=True,
    )
    assert out.shape == (2, t * sr // 100)
    assert torch.isfinite(out).all() and out[0].abs().max() > 0
    # Same seed, same file contents.
    again = load_torch_file(save_random_voice_model(tmp_path / "again.pth", version, sr, f0, num_speakers=3, seed=5, **SMALL))
    assert all(torch.equal(ckpt["weight"][k], again["weight"][k]) for k in ckpt["weight"])


def test_random_voice_model_applio_style(tmp_path: Path) -> None:
    path = save_random_voice_model(
        tmp_path / "a.pth", "v2", "40k", True, sr_style="applio", weight_norm_keys="parametrizations",
        vocoder="HiFi-GAN", num_speakers=1, **SMALL,
    )
    ckpt = load_torch_file(path)
    assert ckpt["sr"] == 40000 and ckpt["vocoder"] == "HiFi-GAN"
    assert any(k.endswith(".parametrizations.weight.original0") for k in ckpt["weight"])
    assert load_vocoder(path).hop_length == 400


def test_full_size_configs_match_rvc() -> None:
    assert rvc_config("v2", 40000) == [
        1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        [10, 10, 2, 2], 512, [16, 16, 4, 4], 109, 256, 40000,
    ]
    with torch.device("meta"):
        v2_40k = Synthesizer(rvc_config("v2", 40000), version="v2", has_f0=True)
        v1_48k = Synthesizer(rvc_config("v1", "48k"), version="v1", has_f0=True)
    # rvc.md §3.5: tensor counts with enc_q removed, n_spk = 109 (weight norm stored as g/v pairs).
    def stored_tensors(model: Synthesizer) -> tuple[int, float]:
        wn = sum(1 for m in model.modules() if getattr(m, "_rvc_weight_norm", False))
        sd = model.state_dict()
        return len(sd) + wn, sum(v.numel() for v in sd.values())

    n, params = stored_tensors(v2_40k)
    assert n == 457 and abs(params / 1e6 - 27.54) < 0.05
    n, _ = stored_tensors(v1_48k)
    assert n == 516
    for (_version, sr), (_, rates, _) in RVC_SAMPLE_RATE_CONFIGS.items():
        assert math.prod(rates) == sr // 100


@pytest.mark.golden
@pytest.mark.parametrize("variant", ["v2_40k_f0", "v1_48k_f0", "v2_32k_nof0"])
@pytest.mark.parametrize("noise", [False, True])
def test_skip_frames_decodes_only_kept_region(golden: Path, models, variant: str, noise: bool) -> None:
    """skip_frames: kept frames equal a full decode (margin > receptive field), dropped ones are 0."""
    model = models[variant]
    inp = _short(_inputs(golden, variant), 64)
    t, skip = 64, 8
    lens, offsets = [64, 40, 20], [0, 10, 30]
    rng = torch.Generator().manual_seed(0)
    feats, pitch, pitchf = _batch_from(inp, t, lens, offsets)
    feats = feats.repeat(1, 4, 1)[:, : t * 4]  # make items long enough for a real crop (256 frames)
    pitch, pitchf = pitch.repeat(1, 4)[:, : t * 4], pitchf.repeat(1, 4)[:, : t * 4]
    lens = [256, 190, 120]
    hop = model.hop_length
    for skip in (20, 45):
        gens_a = [torch.Generator().manual_seed(5 + i) for i in range(3)]
        gens_b = [torch.Generator().manual_seed(5 + i) for i in range(3)]
        full = model.synthesize(feats, torch.tensor(lens), pitch, pitchf, noise=noise, generator=gens_a)
        part = model.synthesize(feats, torch.tensor(lens), pitch, pitchf, noise=noise, generator=gens_b, skip_frames=skip)
        for i, n in enumerate(lens):
            kept = slice(skip * hop, (n - skip) * hop)
            diff = (full[i, kept] - part[i, kept]).abs().max().item()
            assert diff <= 1e-5 * full[i].abs().max().item(), (i, skip, diff)
            assert torch.all(part[i, (n + 32 - skip) * hop :] == 0)
    del rng


@pytest.mark.golden
def test_long_items_decode_in_windows_like_one_pass(golden: Path, models, monkeypatch) -> None:
    """Items longer than DECODER_SINGLE_FRAMES are decoded in overlapping windows: same samples as one pass."""
    import rvcfast.models.synthesizer.windows as synth

    model = models["v2_40k_f0"]
    g = torch.Generator().manual_seed(3)
    # the real sizes scaled down 4x (1088 / 544 frames; items of 2600 and 1900 frames took
    # ~30 s on a 2-core CPU): the same plan, several full windows and a partial last one
    monkeypatch.setattr(synth, "DECODER_SINGLE_FRAMES", 272)
    monkeypatch.setattr(model.dec, "window_frames", 136, raising=False)
    t = 650
    feats = torch.randn(2, t, 768, generator=g)
    pitch = torch.randint(1, 255, (2, t), generator=g)
    pitchf = torch.rand(2, t, generator=g) * 300 + 60
    pitchf[:, 25:100] = 0
    lens = torch.tensor([t, 475])
    calls: list[int] = []
    real = model.dec.forward
    monkeypatch.setattr(model.dec, "forward", lambda x, *a, **k: calls.append(x.shape[-1]) or real(x, *a, **k))
    windowed = model.synthesize(feats, lens, pitch, pitchf, noise=False)
    assert len(calls) > 4 and max(calls) == 136  # really window by window, at the window size
    windowed_skip = model.synthesize(feats, lens, pitch, pitchf, noise=False, skip_frames=100)
    monkeypatch.setattr(synth, "DECODER_SINGLE_FRAMES", 10**6)
    whole = model.synthesize(feats, lens, pitch, pitchf, noise=False)
    hop = model.hop_length
    for i, n in enumerate(lens.tolist()):
        ref = whole[i, : n * hop]
        assert (windowed[i, : n * hop] - ref).abs().max() <= 1e-5 * ref.abs().max()
        kept = slice(100 * hop, (n - 100) * hop)
        assert (windowed_skip[i, kept] - ref[kept]).abs().max() <= 1e-5 * ref.abs().max()


def test_bucket_frames_and_window_widening() -> None:
    """Sizes keep 5 significant bits (16 per octave, at most 1/16 above n); windows grow with
    the item's own frames, right first, and are left alone when the item is too short."""
    import rvcfast.models.synthesizer.windows as synth

    sizes = {synth._bucket_frames(n) for n in range(513, 1025)}  # 544 ... 1024
    assert len(sizes) == 16 and all(synth._bucket_frames(s) == s for s in sizes)
    assert all(n <= synth._bucket_frames(n) < n + max(1, n / 16) for n in range(1, 5000))
    # span 164 -> 168: 4 more frames, all from the right (item long enough)
    assert synth._widen_window((68, 232, 100, 200), 300, 168) == (68, 236, 100, 200)
    # at the item's end: the rest from the left
    assert synth._widen_window((68, 232, 100, 200), 234, 168) == (66, 234, 100, 200)
    # the item itself is shorter than the target: unchanged
    assert synth._widen_window((0, 190, 20, 170), 190, 192) == (0, 190, 20, 170)


@pytest.mark.parametrize("margin", [13, 17, 18])
def test_plan_windows_cover_kept_frames_with_margin_and_few_shapes(margin: int) -> None:
    """For every item length and skip: the kept pieces tile the needed frames exactly once,
    every kept frame is at least ``margin`` frames inside its window (or the window meets
    the item's end, as a whole pass does), windows stay inside the item, and long items
    use only DECODER_WINDOW_FRAMES and its quarters."""
    import rvcfast.models.synthesizer.windows as synth

    size = synth.DECODER_WINDOW_FRAMES
    allowed = {size * q // 4 for q in (1, 2, 3, 4)}
    long_sizes: set[int] = set()
    for n in list(range(1, 1400, 7)) + [2000, 3333, 4100, 4567, 6000]:
        for skip in (0, 5, 100):
            ks, ke = (skip, n - skip) if n - 2 * skip >= 1 else (0, n)
            windows = synth._plan_windows(n, skip, margin)
            assert windows[0][2] == ks and windows[-1][3] == ke, (n, skip)
            for (s0, e0, k0, k1), nxt in zip(windows, windows[1:] + [None]):
                assert 0 <= s0 <= k0 < k1 <= e0 <= n, (n, skip, s0, e0, k0, k1)
                assert k0 - s0 >= margin or s0 == 0, (n, skip)
                assert e0 - k1 >= margin or e0 == n, (n, skip)
                if nxt is not None:
                    assert nxt[2] == k1  # contiguous, no frame kept twice
            if min(n, ke + margin) - max(0, ks - margin) > synth.DECODER_SINGLE_FRAMES:
                spans = [e0 - s0 for s0, e0, _, _ in windows]
                assert all(sp == size for sp in spans[:-1]) and spans[-1] in allowed, (n, skip, spans)
                long_sizes.update(spans)
            else:
                assert len(windows) == 1
    assert long_sizes <= allowed


def test_group_windows_packs_calls_within_the_frame_limit() -> None:
    """One window per call at limit 0 (the CPU); otherwise consecutive windows share a call
    while (count x longest) stays within the limit."""
    import rvcfast.models.synthesizer.windows as synth

    w = [(0, 0, 544, 0, 500), (0, 500, 1044, 500, 1000), (1, 0, 136, 0, 100), (2, 0, 900, 0, 900)]
    assert synth._group_windows(w, 0) == [[x] for x in w]
    assert synth._group_windows(w, 1700) == [w[:3], w[3:]]
    assert synth._group_windows(w, 10**6) == [w]


def test_long_segments_reach_the_decoder_in_few_shapes_one_window_per_cpu_call(monkeypatch) -> None:
    """Segments of many lengths (a long file): on a CPU every decoder call gets one window,
    and all calls together use at most the four long-item window sizes (oneDNN keeps a
    scratch buffer per shape, so this bounds memory)."""
    import rvcfast.models.synthesizer.windows as synth

    torch.manual_seed(0)
    model = Synthesizer([*rvc_config("v2", 40000)[:13], 32, [16, 16, 4, 4], 4, 16, 40000], version="v2")
    model.prepare()
    calls: list[tuple[int, ...]] = []

    def fake_decoder(x, g, source, lengths):
        calls.append(tuple(x.shape))
        return torch.zeros(x.shape[0], 1, x.shape[-1] * model.hop_length)

    monkeypatch.setattr(model.dec, "forward", fake_decoder)
    gen = torch.Generator().manual_seed(1)
    for n in (1300, 1400, 1777, 2100, 2600):
        feats = torch.randn(1, n, 768, generator=gen)
        pitch = torch.randint(1, 255, (1, n), generator=gen)
        pitchf = torch.rand(1, n, generator=gen) * 200 + 80
        model.synthesize(feats, torch.tensor([n]), pitch, pitchf, noise=False, skip_frames=100)
    size = synth.DECODER_WINDOW_FRAMES
    assert len(calls) >= 5 * 2
    assert all(c[0] == 1 for c in calls)
    assert {c[-1] for c in calls} <= {size // 4, size // 2, 3 * size // 4, size}


@pytest.mark.parametrize("version,sr", sorted(RVC_SAMPLE_RATE_CONFIGS))
def test_decoder_margin_exceeds_measured_receptive_field(version: str, sr: int) -> None:
    """Perturbing one frame of z changes decoder output only within the computed margin
    (minus its 3 frames of safety), for all six RVC configurations (random weights): so
    windowed decoding cannot differ from a whole pass."""
    torch.manual_seed(0)
    model = Synthesizer(rvc_config(version, sr), version=version, has_f0=True)
    model.prepare()
    dec = model.dec
    g = torch.Generator().manual_seed(4)
    t, f = 80, 40
    z = torch.randn(1, dec.conv_pre.in_channels, t, generator=g)
    spk = torch.randn(1, dec.cond.in_channels, 1, generator=g)
    src = torch.randn(1, 1, t * model.hop_length, generator=g)
    with torch.inference_mode():
        y0 = dec(z, spk, src, None)[0, 0]
        z2 = z.clone()
        z2[..., f] += 1.0
        y1 = dec(z2, spk, src, None)[0, 0]
    changed = torch.nonzero(y1 != y0).flatten()
    assert changed.numel() > 0
    hop = model.hop_length
    reach = max(f - changed.min().item() / hop, changed.max().item() / hop - (f + 1))
    assert 8 < reach <= dec.margin_frames - 3, (reach, dec.margin_frames)


@pytest.mark.golden
def test_widened_decoder_windows_repeat_shapes_and_keep_samples(golden: Path, models, monkeypatch) -> None:
    """Items of 298/300/302 frames with skip_frames=100 all decode a 136-frame window (one
    shape), and the kept samples equal decoding the exact 132/134/136-frame windows."""
    import rvcfast.models.synthesizer.windows as synth

    model = models["v2_40k_f0"]
    hop = model.hop_length
    shapes: list[int] = []
    real_forward = model.dec.forward

    def spy(x, *args, **kwargs):
        shapes.append(x.shape[-1])
        return real_forward(x, *args, **kwargs)

    monkeypatch.setattr(model.dec, "forward", spy)
    g = torch.Generator().manual_seed(11)
    outs = {}
    for n in (298, 300, 302):
        feats = torch.randn(1, n, 768, generator=g)
        pitch = torch.randint(1, 255, (1, n), generator=g)
        pitchf = torch.rand(1, n, generator=g) * 300 + 60
        args = (feats, torch.tensor([n]), pitch, pitchf)
        widened = model.synthesize(*args, noise=False, skip_frames=100)
        with monkeypatch.context() as m:
            m.setattr(synth, "_widen_window", lambda w, n, size: w)
            exact = model.synthesize(*args, noise=False, skip_frames=100)
        outs[n] = (widened, exact)
    assert shapes == [136, 132, 136, 134, 136, 136]
    for n, (widened, exact) in outs.items():
        kept = slice(100 * hop, (n - 100) * hop)
        ref = exact[0, kept]
        assert (widened[0, kept] - ref).abs().max() <= 1e-5 * ref.abs().max(), n

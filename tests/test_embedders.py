"""Embedder folders without ``final_proj`` and the embedder a voice model names.

Golden checks use ``../shared/golden-features/embedders`` (README §7): a transformers
``HubertModel`` folder without ``final_proj``, run by Applio as ``model(x)["last_hidden_state"]``;
tolerance 2e-4 (the README's suggested check). A v1 model would need ``final_proj``, which
such a folder does not have: rvcfast refuses instead of using random weights (Applio's
transformers initialises them randomly on every load).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SHARED

import rvcfast
from rvcfast.errors import ModelLoadError, ParameterError, WeightsNotFoundError
from rvcfast.testing import (
    save_random_applio_model,
    save_random_hubert,
    save_random_rmvpe,
    save_random_voice_model,
)
from rvcfast.weights import EmbedderWarning, find_embedder, resolve_encoder_for

EMBEDDERS = SHARED / "golden-features" / "embedders"
TINY_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
TINY_ENCODER = dict(
    layers=1, hidden=768, heads=12, ffn=64, conv_layers=TINY_CONV, conv_pos=16, conv_pos_groups=16
)


@pytest.fixture(scope="module")
def nofp() -> Path:
    folder = EMBEDDERS / "hubert_nofp"
    if not (folder / "config.json").is_file() or not (EMBEDDERS / "hubert_nofp_out.npz").is_file():
        pytest.skip(f"golden-features embedder fixtures not found at {EMBEDDERS}")
    return folder


@pytest.mark.golden
def test_folder_without_final_proj_matches_transformers(nofp: Path) -> None:
    enc = rvcfast.load_encoder(nofp)
    assert not enc.has_final_proj and enc.final_proj_dim is None
    ref = np.load(EMBEDDERS / "hubert_nofp_out.npz")
    audio, sr = sf.read(EMBEDDERS / "probe_16k.wav")
    assert sr == 16000
    x = torch.from_numpy(audio).float()[None]
    last = enc.encode(x)
    assert last.shape == ref["last_hidden_state"].shape
    assert last.shape[1] == int(ref["n_frames"]) == (x.shape[1] - 400) // 320 + 1
    assert np.abs(last.numpy() - ref["last_hidden_state"]).max() <= 2e-4
    hidden = ref["hidden_states"]  # [0] = after the positional conv (+ LayerNorm), [L] = the output
    assert hidden.shape[0] == enc.num_layers + 1
    assert np.abs(last[0].numpy() - hidden[-1]).max() <= 2e-4
    for layer in range(enc.num_layers):
        got = enc.encode(x, output_layer=layer)[0].numpy()
        assert np.abs(got - hidden[layer]).max() <= 2e-4, layer


@pytest.mark.golden
def test_final_proj_on_a_folder_without_it_is_refused(nofp: Path) -> None:
    enc = rvcfast.load_encoder(nofp)
    with pytest.raises(ParameterError) as info:
        enc.encode(torch.zeros(1, 16000), final_proj=True)
    assert "final_proj" in str(info.value) and "hubert_nofp" in str(info.value) and "v1" in str(info.value)


def test_random_folder_without_final_proj_loads_strictly(tmp_path: Path) -> None:
    folder = save_random_hubert(tmp_path / "plain", "hf", final_dim=None, seed=3, **TINY_ENCODER)
    enc = rvcfast.load_encoder(folder)
    assert not enc.has_final_proj
    y = enc.encode(torch.randn(1, 8000))
    assert y.shape == (1, (8000 - 400) // 320 + 1, 768) and torch.isfinite(y).all()
    with pytest.raises(ParameterError, match="final_proj"):
        enc.encode(torch.randn(1, 8000), final_proj=True)


# --------------------------------------------------------------------------- the embedder a model names


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("RVCFAST_HOME", str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


def test_resolve_encoder_for_finds_the_named_embedder(home: Path) -> None:
    explicit = home / "anything"
    assert resolve_encoder_for("chinese-hubert-base", explicit) == explicit
    for name in (None, "", "contentvec", "ContentVec", "hubert_base"):
        assert resolve_encoder_for({"embedder_model": name}, None) is None
    folder = save_random_hubert(home / "chinese_hubert_base", "hf", seed=1, **TINY_ENCODER)
    assert find_embedder("chinese-hubert-base") == folder
    assert resolve_encoder_for({"embedder_model": "chinese-hubert-base"}, None) == folder
    spin = save_random_hubert(home / "embedders" / "spin-v2", "hf", seed=2, **TINY_ENCODER)
    assert resolve_encoder_for("spin-v2", None) == spin


def test_resolve_encoder_for_warns_when_the_embedder_is_missing(home: Path) -> None:
    (home / "korean_hubert_base").mkdir()  # no config.json / weights: not an embedder folder
    with pytest.warns(EmbedderWarning, match="'korean-hubert-base' embedder"):
        assert resolve_encoder_for("korean-hubert-base", None) is None
    with pytest.warns(EmbedderWarning, match="custom embedder"):
        assert resolve_encoder_for("custom", None) is None
    save_random_hubert(home / "x", "hf", seed=1, **TINY_ENCODER)
    with pytest.warns(EmbedderWarning):  # names are folder names, never paths
        assert resolve_encoder_for("../home/x", None) is None
    assert find_embedder("../home/x") is None


def test_converter_uses_the_embedder_the_model_names(home: Path, tmp_path: Path) -> None:
    enc_dir = save_random_hubert(home / "chinese_hubert_base", "hf", final_dim=None, seed=1, **TINY_ENCODER)
    rmvpe = save_random_rmvpe(tmp_path / "rmvpe.pt", full_size=False)
    small = dict(
        inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=32
    )
    model = save_random_applio_model(
        tmp_path / "mrf.pth", 40000, "MRF HiFi-GAN", embedder_model="chinese-hubert-base", **small
    )
    conv = rvcfast.Converter.from_pretrained(model, f0_weights=rmvpe, device="cpu")
    assert Path(conv.engine.encoder.source_path).parent == enc_dir
    assert conv.engine.vocoder.embedder_model == "chinese-hubert-base"
    out = conv.convert(0.1 * np.sin(2 * np.pi * 150 * np.arange(8000) / 16000).astype(np.float32), 16000)
    assert out.audio.size > 0 and np.isfinite(out.audio).all()
    # an explicit encoder wins; a model naming a missing embedder warns and falls back
    other = save_random_applio_model(
        tmp_path / "spin.pth", 40000, "RefineGAN", embedder_model="spin", **small
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbedderWarning)
        conv = rvcfast.Converter.from_pretrained(other, encoder=enc_dir, f0_weights=rmvpe, device="cpu")
    assert Path(conv.engine.encoder.source_path).parent == enc_dir
    with (
        pytest.warns(EmbedderWarning, match="'spin' embedder"),
        pytest.raises(WeightsNotFoundError),
    ):
        rvcfast.Converter.from_pretrained(other, f0_weights=rmvpe, device="cpu")


def test_v1_model_with_an_encoder_without_final_proj_fails_clearly(tmp_path: Path) -> None:
    """A v1 model needs final_proj's 256-d features: never random weights, a clear error."""
    enc_dir = save_random_hubert(tmp_path / "plain", "hf", final_dim=None, seed=1, **TINY_ENCODER)
    rmvpe = save_random_rmvpe(tmp_path / "rmvpe.pt", full_size=False)
    model = save_random_voice_model(
        tmp_path / "v1.pth",
        "v1",
        40000,
        True,
        inter_channels=16,
        hidden_channels=16,
        filter_channels=32,
        n_layers=1,
        upsample_initial_channel=32,
    )
    with pytest.raises(ModelLoadError, match="final_proj"):  # refused at load, before any input is converted
        rvcfast.Converter.from_pretrained(model, encoder=enc_dir, f0_weights=rmvpe, device="cpu")


@pytest.mark.parametrize(
    ("version", "encoder", "made"),
    [("v1", dict(hidden=768, heads=12, final_dim=128), "128-d"), ("v2", dict(hidden=512, heads=8, final_dim=256), "512-d")],
)
def test_an_encoder_of_the_wrong_width_is_refused_at_load_naming_it(tmp_path: Path, version, encoder, made) -> None:
    # every input used to fail at synthesis ("features have 128 channels but this v1 model
    # expects 256"), after decoding and F0, without naming the encoder
    spec = {**TINY_ENCODER, **{k: v for k, v in encoder.items() if k != "final_dim"}}
    enc_dir = save_random_hubert(tmp_path / "odd_encoder", "hf", final_dim=encoder["final_dim"], seed=1, **spec)
    rmvpe = save_random_rmvpe(tmp_path / "rmvpe.pt", full_size=False)
    model = save_random_voice_model(
        tmp_path / f"{version}.pth", version, 40000, True,
        inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=32,
    )
    with pytest.raises(ModelLoadError) as info:
        rvcfast.Converter.from_pretrained(model, encoder=enc_dir, f0_weights=rmvpe, device="cpu")
    text = str(info.value)
    assert "odd_encoder" in text and made in text and f"{256 if version == 'v1' else 768}-d" in text

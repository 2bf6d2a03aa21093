"""The random-weight writers of :mod:`rvcfast.testing` against real-format files.

The golden fixtures (``shared/golden``, ``shared/golden-features``) are files written by the
reference code. For each of them the matching generator is run with the same architecture
and the *structure* is compared: the checkpoint's keys and their types, the ``config`` list,
every weight key in the order the reference ``state_dict()`` gives it, shapes, storage
dtypes and the zip layout ``torch.save`` produced. The values are random on both sides and
are not compared. Tests needing the fixtures skip when ``shared/`` is absent.
"""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED

from rvcfast.safe_load import load_torch_file
from rvcfast.testing import (
    build_bench_models,
    save_random_applio_model,
    save_random_hubert,
    save_random_rmvpe,
    save_random_voice_model,
)
from rvcfast.testing.bench import _atomic_build

FEATURES = SHARED / "golden-features"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def features() -> Path:
    if not (FEATURES / "manifest.json").is_file():
        pytest.skip(f"golden-features fixtures not found at {FEATURES} (set RVCFAST_SHARED to the shared/ folder)")
    return FEATURES


def _layout(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items()]


def _kind(value: Any) -> Any:
    """A value's structure: types all the way down (lists element by element), no values."""
    if isinstance(value, list):
        return [_kind(v) for v in value]
    return type(value).__name__


def _zip_records(path: Path) -> tuple[str, list[str], bytes]:
    """(record prefix, record names without the prefix and the tensor storages, pickle protocol header)."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        prefix = names[0].split("/", 1)[0]
        rest = sorted(n.split("/", 1)[1] for n in names if not n.split("/", 1)[1].startswith("data/"))
        return prefix, rest, z.read(f"{prefix}/data.pkl")[:2]


def _assert_same_zip_layout(golden: Path, made: Path) -> None:
    g_prefix, g_rest, g_proto = _zip_records(golden)
    m_prefix, m_rest, m_proto = _zip_records(made)
    assert g_prefix == golden.stem and m_prefix == made.stem
    assert m_rest == g_rest
    assert m_proto == g_proto == b"\x80\x02"


def _assert_voice_like(golden: Path, made: Path, skip_top: tuple[str, ...] = ()) -> None:
    g = torch.load(golden, map_location="cpu", weights_only=True)
    m = torch.load(made, map_location="cpu", weights_only=True)
    assert type(m) is type(g)
    g_top = [k for k in g if k not in skip_top]
    m_top = [k for k in m if k not in skip_top]
    assert m_top == g_top
    for key in g_top:
        if key != "weight":
            assert _kind(m[key]) == _kind(g[key]), key
    rows = int(g["weight"]["emb_g.weight"].shape[0])
    g_config = list(g["config"])
    g_config[15] = rows  # a merged-model quirk of one fixture; the loaders use emb_g's rows
    assert m["config"] == g_config
    assert _layout(m["weight"]) == _layout(g["weight"])
    _assert_same_zip_layout(golden, made)


VOICES = [
    # fixture, (version, sr, f0, sr_style), widths
    ("voice_v2_40k_f0", ("v2", 40000, True, "applio"), dict(hidden_channels=64, filter_channels=128, n_layers=3)),
    ("voice_v1_48k_f0", ("v1", 48000, True, "rvc"), dict(inter_channels=96, hidden_channels=48, filter_channels=96, n_layers=2)),
    ("voice_v2_32k_nof0", ("v2", 32000, False, "rvc"), dict(inter_channels=64, hidden_channels=32, filter_channels=64, n_layers=2)),
]


@pytest.mark.parametrize(("name", "args", "widths"), VOICES, ids=[v[0] for v in VOICES])
def test_voice_model_matches_golden_structure(golden: Path, tmp_path: Path, name: str, args: tuple, widths: dict) -> None:
    g_path = golden / "models" / f"{name}.pth"
    g = torch.load(g_path, map_location="cpu", weights_only=True)
    version, sr, f0, sr_style = args
    made = save_random_voice_model(
        tmp_path / f"{name}.pth", version, sr, f0, sr_style=sr_style,
        num_speakers=int(g["weight"]["emb_g.weight"].shape[0]),
        upsample_initial_channel=int(g["config"][13]), info="x", vocoder="HiFi-GAN", **widths,
    )
    assert g["config"][2] == widths.get("inter_channels", 192)
    _assert_voice_like(g_path, made)


@pytest.mark.parametrize("weight_norm_keys", ["legacy", "parametrizations"])
def test_weight_normed_layers_store_bias_first(tmp_path: Path, weight_norm_keys: str) -> None:
    # Both weight-norm implementations re-register the weight after the bias.
    made = save_random_voice_model(
        tmp_path / "v.pth", inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1,
        upsample_initial_channel=32, weight_norm_keys=weight_norm_keys,
    )
    keys = list(torch.load(made, weights_only=True)["weight"])
    g_leaf = "weight_g" if weight_norm_keys == "legacy" else "parametrizations.weight.original0"
    v_leaf = "weight_v" if weight_norm_keys == "legacy" else "parametrizations.weight.original1"
    for module in ("dec.ups.0", "dec.resblocks.0.convs1.0", "flow.flows.0.enc.in_layers.0"):
        i = keys.index(f"{module}.bias")
        assert keys[i + 1 : i + 3] == [f"{module}.{g_leaf}", f"{module}.{v_leaf}"]
    dec = [k for k in keys if k.startswith("dec.")]
    assert dec[0].startswith("dec.m_source.") and dec[-1].startswith("dec.cond.")


VOCODERS = [("mrf_40k", 40000, "MRF HiFi-GAN"), ("refinegan_32k", 32000, "RefineGAN")]


@pytest.mark.parametrize(("name", "sr", "vocoder"), VOCODERS, ids=[v[0] for v in VOCODERS])
def test_applio_vocoder_model_matches_golden_structure(
    features: Path, tmp_path: Path, name: str, sr: int, vocoder: str
) -> None:
    g_path = features / "vocoders" / f"{name}.pth"
    g = torch.load(g_path, map_location="cpu", weights_only=True)
    c = g["config"]
    made = save_random_applio_model(
        tmp_path / f"{name}.pth", sr, vocoder, num_speakers=int(g["weight"]["emb_g.weight"].shape[0]),
        inter_channels=c[2], hidden_channels=c[3], filter_channels=c[4], n_heads=c[5], n_layers=c[6],
        upsample_initial_channel=c[13],
    )
    m = torch.load(made, map_location="cpu", weights_only=True)
    # The fixture keeps RVC's `info`; Applio writes its own metadata keys instead.
    applio_only = ("epoch", "step", "creation_date", "model_hash", "dataset_length", "model_name", "author",
                   "embedder_model", "speakers_id")
    assert [k for k in m if k not in applio_only] == [k for k in g if k != "info"]
    assert m["vocoder"] == g["vocoder"] and m["f0"] is True and m["sr"] == g["sr"] == sr
    assert _layout(m["weight"]) == _layout(g["weight"])
    _assert_same_zip_layout(g_path, made)


def test_rmvpe_matches_golden_structure(golden: Path, tmp_path: Path) -> None:
    g_path = golden / "models" / "rmvpe_reduced.pt"
    made = save_random_rmvpe(tmp_path / "rmvpe_reduced.pt", full_size=False)
    g = torch.load(g_path, map_location="cpu", weights_only=True)
    m = torch.load(made, map_location="cpu", weights_only=True)
    assert type(m) is type(g)
    assert _layout(m) == _layout(g)
    _assert_same_zip_layout(g_path, made)


_CONTENTVEC = dict(
    layers=2, hidden=768, heads=12, ffn=256, conv_pos=24, conv_pos_groups=16,
    conv_layers=[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2,
)


def test_fairseq_hubert_matches_golden_structure(golden: Path, tmp_path: Path) -> None:
    g_path = golden / "models" / "contentvec_fairseq" / "hubert_base.pt"
    made = save_random_hubert(tmp_path / "hubert_base.pt", "fairseq", **_CONTENTVEC)
    g = load_torch_file(g_path, "encoder")
    m = load_torch_file(made, "encoder")
    assert _layout(m["model"]) == _layout(g["model"])
    assert set(m["cfg"]["task"]) == set(g["cfg"]["task"])
    for key, value in m["cfg"]["task"].items():
        assert value == g["cfg"]["task"][key], key
    # cfg.model: the fixture's fairseq also writes fields added after ContentVec's checkpoint
    # (pos_enc_type, fp16, attn_type...); every field written here is one fairseq has.
    assert set(m["cfg"]["model"]) <= set(g["cfg"]["model"])
    for key in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                "conv_pos", "conv_pos_groups", "final_dim", "extractor_mode", "layer_norm_first", "conv_bias"):
        assert m["cfg"]["model"][key] == g["cfg"]["model"][key], key
    _assert_same_zip_layout(g_path, made)


def test_fairseq_hubert_needs_the_dictionary_allow_listed_like_the_real_file(tmp_path: Path) -> None:
    made = save_random_hubert(tmp_path / "hubert_base.pt", "fairseq", **_CONTENTVEC)
    with pytest.raises(Exception, match="fairseq.data.dictionary.Dictionary"):
        torch.load(made, map_location="cpu", weights_only=True)


def test_hf_hubert_matches_golden_structure(golden: Path, tmp_path: Path) -> None:
    g_dir = golden / "models" / "contentvec_hf"
    made = save_random_hubert(tmp_path / "contentvec_hf", "hf", **_CONTENTVEC)
    g = torch.load(g_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    m = torch.load(made / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert _layout(m) == _layout(g)
    g_cfg = json.loads((g_dir / "config.json").read_text())
    m_cfg = json.loads((made / "config.json").read_text())
    assert list(m_cfg) == list(g_cfg)  # transformers writes every field, sorted
    for key in g_cfg:
        if key != "transformers_version":
            assert m_cfg[key] == g_cfg[key], key
    _assert_same_zip_layout(g_dir / "pytorch_model.bin", made / "pytorch_model.bin")


def test_hf_hubert_parametrized_weight_norm_matches_golden(features: Path, tmp_path: Path) -> None:
    g_dir = features / "embedders" / "hubert_nofp"
    cfg = json.loads((g_dir / "config.json").read_text())
    made = save_random_hubert(
        tmp_path / "hubert_nofp", "hf", layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
        heads=cfg["num_attention_heads"], ffn=cfg["intermediate_size"],
        conv_layers=list(zip(cfg["conv_dim"], cfg["conv_kernel"], cfg["conv_stride"])),
        conv_pos=cfg["num_conv_pos_embeddings"], conv_pos_groups=cfg["num_conv_pos_embedding_groups"],
        final_dim=None, weight_norm_keys="parametrizations",
    )
    g = torch.load(g_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    m = torch.load(made / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert _layout(m) == _layout(g)


# ------------------------------------------------------------------ the shared bench cache


def test_bench_models_are_byte_identical_and_named_like_real_files(tmp_path: Path) -> None:
    a = build_bench_models(tmp_path / "a", small=True)
    b = build_bench_models(tmp_path / "b", small=True)
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key
    for key in ("model", "encoder", "f0_weights"):
        prefix, _, _ = _zip_records(a[key])
        assert prefix == a[key].stem, key  # what torch.save writes for a file saved under its name
    assert sorted(p.name for p in (tmp_path / "a" / "small").iterdir()) == sorted(p.name for p in a.values())


def test_concurrent_builds_of_one_cached_file_all_succeed(tmp_path: Path) -> None:
    target = tmp_path / "rmvpe.pt"
    both_written = threading.Barrier(2, timeout=60)
    errors: list[BaseException] = []

    def build(tmp: Path) -> None:
        save_random_rmvpe(tmp, full_size=False)
        both_written.wait()  # both builds are complete before either renames

    def run() -> None:
        try:
            _atomic_build(target, build)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(torch.load(target, weights_only=True)) == 213
    assert [p.name for p in tmp_path.iterdir()] == ["rmvpe.pt"]


def test_failed_build_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "voice.pth"

    def build(tmp: Path) -> None:
        tmp.write_bytes(b"half a model")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        _atomic_build(target, build)
    assert list(tmp_path.iterdir()) == []

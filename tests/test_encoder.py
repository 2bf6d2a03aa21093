"""Tests of the HuBERT / ContentVec content encoder (rvcfast.models.encoder)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvcfast.errors import AudioError, ModelLoadError, ParameterError, UnsafeFileError
from rvcfast.models.encoder import (
    HUBERT_BASE_CONV_LAYERS,
    HubertConfig,
    HubertEncoder,
    load_encoder,
    parse_conv_layers,
)
from rvcfast.protocols import FeatureEncoder
from rvcfast.safe_load import load_torch_file
from rvcfast.testing import random_hubert_state_dict, save_random_hubert

TOL = 2e-4
BATCH_TOL = 1e-4

# A small model that exercises the other code paths: LayerNorm conv extractor, conv bias,
# pre-LN layers, an odd positional kernel and parametrization weight-norm keys.
TINY = dict(
    layers=2,
    hidden=64,
    heads=4,
    ffn=96,
    conv_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    conv_pos=15,
    conv_pos_groups=4,
    final_dim=16,
)


# ---------------------------------------------------------------- helpers


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Minimal safetensors writer: 8-byte LE header length, JSON header, aligned raw buffers."""
    names = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in blobs:
            f.write(raw)


def max_err(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float((a.float() - torch.as_tensor(np.asarray(b)).float()).abs().max())


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """These models are tiny; one thread avoids oversubscription on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def probe(golden: Path) -> torch.Tensor:
    audio, sr = sf.read(golden / "audio" / "probe_16k.wav", dtype="float32")
    assert sr == 16000
    return torch.from_numpy(audio)[None]


@pytest.fixture(scope="module")
def ref(golden: Path) -> dict[str, np.ndarray]:
    with np.load(golden / "hubert" / "hubert_out.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def hf_model(golden: Path) -> HubertEncoder:
    return load_encoder(golden / "models" / "contentvec_hf")


@pytest.fixture(scope="module")
def fs_model(golden: Path) -> HubertEncoder:
    return load_encoder(golden / "models" / "contentvec_fairseq" / "hubert_base.pt")


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    kw = dict(TINY, extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True, seed=3)
    return {
        "hf": save_random_hubert(root / "hf", "hf", weight_norm_keys="parametrizations", **kw),
        "fairseq": save_random_hubert(root / "tiny.pt", "fairseq", **kw),
    }


# ---------------------------------------------------------------- conv spec parser


def test_parse_conv_layers() -> None:
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == HUBERT_BASE_CONV_LAYERS
    assert parse_conv_layers("[(64,10,5), (64,3,2), (64,2,2),]") == ((64, 10, 5), (64, 3, 2), (64, 2, 2))
    assert parse_conv_layers(" 2 * [(8, 3, 1)] + ([(4, 2, 2)]) ") == ((8, 3, 1), (8, 3, 1), (4, 2, 2))
    assert parse_conv_layers([[1, 2, 3]]) == ((1, 2, 3),)
    for bad in (
        "__import__('os').system('true')",
        "[(512,10)]",
        "[(512,10,5)] * 100000000",
        "[(512,10,5)] - [(1,1,1)]",
        "[(0,1,1)]",
        "[(1,1,1)",
        "",
        "[]",
    ):
        with pytest.raises(ValueError):
            parse_conv_layers(bad)


# ---------------------------------------------------------------- golden parity


@pytest.mark.golden
@pytest.mark.parametrize("fmt", ["hf", "fairseq"])
def test_golden_parity(fmt: str, request: pytest.FixtureRequest, probe: torch.Tensor, ref: dict) -> None:
    model: HubertEncoder = request.getfixturevalue("hf_model" if fmt == "hf" else "fs_model")
    assert isinstance(model, FeatureEncoder)
    assert (model.hidden_size, model.num_layers, model.has_final_proj, model.final_proj_dim) == (
        768,
        2,
        True,
        256,
    )
    t = int(ref["n_frames"])
    assert model.num_frames(probe.shape[1]) == t == (probe.shape[1] - 400) // 320 + 1

    last = model.encode(probe)
    assert last.shape == (1, t, 768) and last.dtype == torch.float32
    assert max_err(last, ref["last_hidden_state"]) <= TOL
    for k in range(2):
        assert max_err(model.encode(probe, output_layer=k)[0], ref["hidden_states_lower"][k]) <= TOL
    assert max_err(model.encode(probe, final_proj=True), ref["v1_final_proj_last"]) <= TOL
    # RVC's v1 exit (layer 9) on a 2-layer model runs every layer (fairseq semantics).
    assert max_err(model.encode(probe, output_layer=9, final_proj=True), ref["v1_final_proj_last"]) <= TOL
    assert max_err(model.encode(probe, output_layer=1, final_proj=True), ref["v1_final_proj_layer1"]) <= TOL
    assert max_err(model.conv_features(probe), ref["conv_features"]) <= TOL


@pytest.mark.golden
def test_formats_identical(hf_model: HubertEncoder, fs_model: HubertEncoder, probe: torch.Tensor) -> None:
    x = probe[:, :20000]
    for kw in ({}, {"output_layer": 1, "final_proj": True}):
        assert torch.equal(hf_model.encode(x, **kw), fs_model.encode(x, **kw))
    for (ka, a), (kb, b) in zip(hf_model.state_dict().items(), fs_model.state_dict().items()):
        assert ka == kb and torch.equal(a, b)


@pytest.mark.golden
def test_safetensors_preferred(
    golden: Path, tmp_path: Path, hf_model: HubertEncoder, probe: torch.Tensor
) -> None:
    src = golden / "models" / "contentvec_hf"
    folder = tmp_path / "contentvec_st"
    folder.mkdir()
    shutil.copy(src / "config.json", folder / "config.json")
    write_safetensors(folder / "model.safetensors", load_torch_file(src / "pytorch_model.bin"))
    # A broken .bin next to it proves the .safetensors file is the one read.
    (folder / "pytorch_model.bin").write_bytes(b"not a torch file")
    x = probe[:, :16000]
    expected = hf_model.encode(x, output_layer=1, final_proj=True)
    for target in (folder, folder / "config.json", folder / "model.safetensors"):
        model = load_encoder(target)
        assert torch.equal(model.encode(x, output_layer=1, final_proj=True), expected)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="pytorch_model.bin"):
        load_encoder(folder)


# ---------------------------------------------------------------- batching


def _check_batch(model: HubertEncoder, audio: torch.Tensor, lens: list[int], **kw: object) -> None:
    n = max(lens)
    batch = torch.zeros(len(lens), n)
    for i, length in enumerate(lens):
        batch[i, :length] = audio[:length]
    out = model.encode(batch, lengths=torch.tensor(lens), **kw)
    assert out.shape[:2] == (len(lens), model.num_frames(n))
    for i, length in enumerate(lens):
        solo = model.encode(batch[i : i + 1, :length], **kw)[0]
        t = (length - 400) // 320 + 1
        assert solo.shape[0] == t
        assert max_err(out[i, :t], solo) <= BATCH_TOL, (length, kw)
        assert not out[i, t:].any()
    conv = model.conv_features(batch, lengths=lens)
    for i, length in enumerate(lens):
        solo = model.conv_features(batch[i : i + 1, :length])[0]
        assert max_err(conv[i, :, : solo.shape[-1]], solo) <= BATCH_TOL


@pytest.mark.golden
def test_batched_lengths_equal_solo(hf_model: HubertEncoder, probe: torch.Tensor) -> None:
    audio = probe[0]
    lens = [48219, 30001, 12345, 400, 721, 32000]
    _check_batch(hf_model, audio, lens)
    _check_batch(hf_model, audio, lens, output_layer=1, final_proj=True)
    _check_batch(hf_model, audio, lens, output_layer=0)
    # lengths that all equal the padded length take the unmasked path
    full = hf_model.encode(probe, lengths=[probe.shape[1]])
    assert torch.equal(full, hf_model.encode(probe))


def test_tiny_variants_both_formats_and_batching(tiny_paths: dict[str, Path]) -> None:
    hf = load_encoder(tiny_paths["hf"])
    fs = load_encoder(tiny_paths["fairseq"])
    assert hf.config.layer_norm_first and hf.config.extractor_mode == "layer_norm" and hf.config.conv_bias
    assert fs.config == hf.config
    gen = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(9000, generator=gen)
    for kw in ({}, {"output_layer": 1}, {"output_layer": 2, "final_proj": True}):
        assert torch.equal(hf.encode(audio[None], **kw), fs.encode(audio[None], **kw))
    out = hf.encode(audio[None])
    assert out.shape == (1, (9000 - 400) // 320 + 1, 64) and torch.isfinite(out).all()
    _check_batch(hf, audio, [9000, 5000, 401, 6419])
    _check_batch(hf, audio, [9000, 3333, 7000], output_layer=1, final_proj=True)


def test_default_extractor_odd_kernel_batching(tmp_path: Path) -> None:
    path = save_random_hubert(tmp_path / "m.pt", **dict(TINY, conv_pos=7, seed=5))
    model = load_encoder(path)
    audio = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(1))
    _check_batch(model, audio, [8000, 2500, 6001])


def test_lower_precision(tiny_paths: dict[str, Path]) -> None:
    ref_model = load_encoder(tiny_paths["hf"])
    model = load_encoder(tiny_paths["hf"], dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    audio = 0.1 * torch.randn(1, 6000, generator=torch.Generator().manual_seed(2))
    out = model.encode(audio)
    assert out.dtype == torch.bfloat16
    assert max_err(out, ref_model.encode(audio)) < 0.25


# ---------------------------------------------------------------- full-size fairseq layout


@contextlib.contextmanager
def fake_classes(*qualified: str) -> Iterator[dict[str, type]]:
    """Plain classes with the given ``module.Name`` pickle names, importable only inside the block."""
    classes: dict[str, type] = {}
    mods: dict[str, types.ModuleType] = {}
    for full in qualified:
        module, name = full.rsplit(".", 1)
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            mods.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        cls = type(name, (), {"__module__": module, "__qualname__": name})
        setattr(mods[module], name, cls)
        classes[full] = cls
    assert not any(n in sys.modules for n in mods)
    sys.modules.update(mods)
    try:
        yield classes
    finally:
        for n in mods:
            sys.modules.pop(n, None)


def _save_with_fake_fairseq_dictionary(obj: dict, path: Path) -> None:
    """torch.save ``obj`` with a task_state holding a real-named fairseq Dictionary object."""
    with fake_classes("fairseq.data.dictionary.Dictionary") as classes:
        d = classes["fairseq.data.dictionary.Dictionary"]()
        symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(500)]
        d.__dict__.update(
            symbols=symbols,
            count=[1] * len(symbols),
            indices={s: i for i, s in enumerate(symbols)},
            bos_index=0,
            pad_index=1,
            eos_index=2,
            unk_index=3,
            nspecial=4,
        )
        torch.save(dict(obj, task_state={"dictionaries": [d]}), path)


def test_full_size_fairseq_layout(tmp_path: Path) -> None:
    config = HubertConfig()  # HuBERT-base / ContentVec
    state = random_hubert_state_dict(config, "fairseq", seed=1)
    assert all(t.dtype == torch.float16 for t in state.values())
    assert state["encoder.pos_conv.0.weight_g"].shape == (1, 1, 128)
    assert state["encoder.pos_conv.0.weight_v"].shape == (768, 48, 128)
    assert state["label_embs_concat"].shape == (504, 256)
    cfg = {
        "_name": None,
        "model": {
            "_name": "hubert",
            "extractor_mode": "default",
            "encoder_layers": 12,
            "encoder_embed_dim": 768,
            "encoder_ffn_embed_dim": 3072,
            "encoder_attention_heads": 12,
            "activation_fn": "gelu",
            "layer_norm_first": False,
            "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
            "conv_bias": False,
            "conv_pos": 128,
            "conv_pos_groups": 16,
            "final_dim": 256,
            "untie_final_proj": True,
            "label_rate": 50,
        },
        "task": {"_name": "hubert_pretraining", "sample_rate": 16000, "normalize": False, "labels": ["km"]},
    }
    path = tmp_path / "hubert_base.pt"
    _save_with_fake_fairseq_dictionary(
        {"args": None, "cfg": cfg, "model": state, "optimizer_history": []}, path
    )
    with zipfile.ZipFile(path) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        assert b"fairseq.data.dictionary\nDictionary" in z.read(pkl)
    model = load_encoder(path)
    assert (model.hidden_size, model.num_layers, model.final_proj_dim) == (768, 12, 256)
    n = 4000
    audio = 0.1 * torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    out = model.encode(audio)
    assert out.shape == (1, (n - 400) // 320 + 1, 768) and torch.isfinite(out).all()
    assert model.encode(audio, output_layer=9, final_proj=True).shape == (1, out.shape[1], 256)


def test_save_random_hubert_formats(tmp_path: Path) -> None:
    pt = save_random_hubert(tmp_path, "fairseq", **TINY)
    assert pt == tmp_path / "hubert_base.pt"
    ckpt = load_torch_file(pt)
    assert set(ckpt) >= {"model", "cfg", "task_state", "args"}
    assert ckpt["cfg"]["model"]["conv_feature_layers"] == "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
    assert type(ckpt["task_state"]["dictionaries"][0]).__name__ == "Inert_Dictionary"
    assert all(t.dtype == torch.float16 for t in ckpt["model"].values())
    hf = save_random_hubert(tmp_path / "hf", "hf", **TINY)
    assert json.loads((hf / "config.json").read_text())["model_type"] == "hubert"
    sd = load_torch_file(hf / "pytorch_model.bin")
    assert "encoder.pos_conv_embed.conv.weight_g" in sd and "final_proj.weight" in sd
    x = 0.1 * torch.randn(1, 5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_encoder(pt).encode(x), load_encoder(hf).encode(x))


# ---------------------------------------------------------------- unsafe / broken files


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_refuses_code_in_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": _Evil(marker)}, path)
    with pytest.raises(UnsafeFileError) as info:
        load_encoder(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.golden
def test_truncated_file(golden: Path, tmp_path: Path) -> None:
    data = (golden / "models" / "contentvec_fairseq" / "hubert_base.pt").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_encoder(path)
    assert str(path) in str(info.value)


@pytest.mark.golden
def test_missing_and_unexpected_keys(golden: Path, tmp_path: Path) -> None:
    ckpt = load_torch_file(golden / "models" / "contentvec_fairseq" / "hubert_base.pt")
    state = dict(ckpt["model"])
    del state["encoder.layers.1.fc2.bias"]
    path = tmp_path / "missing.pt"
    torch.save({"model": state, "cfg": ckpt["cfg"]}, path)
    with pytest.raises(ModelLoadError, match=r"missing keys: encoder\.layers\.1\.fc2\.bias") as info:
        load_encoder(path)
    assert str(path) in str(info.value)

    state = dict(ckpt["model"], **{"encoder.layers.1.extra.weight": torch.zeros(3)})
    torch.save({"model": state, "cfg": ckpt["cfg"]}, path)
    with pytest.raises(ModelLoadError, match=r"unexpected keys: encoder\.layers\.1\.extra\.weight"):
        load_encoder(path)

    state = dict(ckpt["model"], **{"encoder.layers.0.fc1.bias": torch.zeros(7)})
    torch.save({"model": state, "cfg": ckpt["cfg"]}, path)
    with pytest.raises(ModelLoadError, match=r"encoder\.layers\.0\.fc1\.bias: \[7\]"):
        load_encoder(path)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_encoder(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)
    empty_dir = tmp_path / "folder"
    empty_dir.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_encoder(empty_dir)
    (empty_dir / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="neither model.safetensors nor pytorch_model.bin"):
        load_encoder(empty_dir)
    junk = tmp_path / "junk.pt"
    torch.save([1, 2, 3], junk)
    with pytest.raises(ModelLoadError, match="not a content-encoder checkpoint"):
        load_encoder(junk)
    bad_spec = tmp_path / "bad_spec.pt"
    torch.save({"model": {}, "cfg": {"model": {"conv_feature_layers": "os.system('x')"}}}, bad_spec)
    with pytest.raises(ModelLoadError, match="conv_feature_layers"):
        load_encoder(bad_spec)


def test_inert_namespace_cfg(tmp_path: Path, tiny_paths: dict[str, Path]) -> None:
    """Legacy ``args`` pickled as argparse.Namespace load through the inert stand-in."""
    import argparse

    ckpt = load_torch_file(tiny_paths["fairseq"])
    args = argparse.Namespace(**ckpt["cfg"]["model"])
    path = tmp_path / "legacy.pt"
    torch.save({"args": args, "model": ckpt["model"]}, path)
    a = load_encoder(path)
    b = load_encoder(tiny_paths["fairseq"])
    assert a.config == b.config


def test_omegaconf_like_cfg(tmp_path: Path, tiny_paths: dict[str, Path]) -> None:
    """A cfg pickled as omegaconf DictConfig/AnyNode objects is read through the inert stand-ins."""
    ckpt = load_torch_file(tiny_paths["fairseq"])
    names = ("omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode", "omegaconf.base.ContainerMetadata")
    path = tmp_path / "omegaconf.pt"
    with fake_classes(*names) as classes:
        dict_config, any_node, meta = (classes[n] for n in names)

        def container(content: dict, parent: object = None) -> object:
            obj = dict_config()
            obj.__dict__.update(_metadata=meta(), _parent=parent, _content=content)
            return obj

        def node(value: object, parent: object) -> object:
            obj = any_node()
            obj.__dict__.update(_metadata=meta(), _parent=parent, _val=value)
            return obj

        root = container({})
        model = container({}, root)
        model.__dict__["_content"] = {k: node(v, model) for k, v in ckpt["cfg"]["model"].items()}
        root.__dict__["_content"] = {"model": model, "task": container({}, root)}
        torch.save({"args": None, "cfg": root, "model": ckpt["model"]}, path)
    assert load_encoder(path).config == load_encoder(tiny_paths["fairseq"]).config


def test_encode_argument_errors(tiny_paths: dict[str, Path]) -> None:
    model = load_encoder(tiny_paths["hf"])
    with pytest.raises(AudioError):
        model.encode(torch.zeros(1, 399))
    with pytest.raises(AudioError):
        model.encode(torch.zeros(2, 1000), lengths=[1000, 300])
    with pytest.raises(ParameterError):
        model.encode(torch.zeros(2, 1000), lengths=[1000, 1001])
    with pytest.raises(ParameterError):
        model.encode(torch.zeros(1, 1000), output_layer=-1)
    x = 0.1 * torch.randn(1, 2000, generator=torch.Generator().manual_seed(0))
    # pre-LN model: output_layer beyond the depth runs every layer, without the final LayerNorm
    assert torch.equal(model.encode(x, output_layer=5), model.encode(x, output_layer=2))
    assert torch.equal(model.encode(x[0]), model.encode(x))


def test_no_final_proj(tmp_path: Path) -> None:
    path = save_random_hubert(tmp_path / "hf", "hf", **dict(TINY, final_dim=None))
    model = load_encoder(path)
    assert not model.has_final_proj and model.final_proj_dim is None
    with pytest.raises(ParameterError, match="final_proj"):
        model.encode(torch.zeros(1, 1000), final_proj=True)

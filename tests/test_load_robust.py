"""Loading model files that are not what the loader expects, or are subtly broken.

Each case is a file a user can really end up passing: a discriminator ``D_*.pth``, a
content encoder or RMVPE weights given as the voice (and the other way round), a voice
shared as a zip archive, a config whose sample rate does not fit its decoder, NaN or
sparse weights, a file without ``version``, a transformers head model's ``hubert.*``
keys, bad ``dtype`` / ``device`` / path arguments. The expectations come from the file
formats (rvc.md §4, applio.md §2), not from what the loaders happen to print.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers import TINY_CONV, TINY_VOICE, TinyModels, names_file, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.errors import ModelLoadError, ParameterError
from rvcfast.models.encoder import load_encoder
from rvcfast.models.rmvpe import load_rmvpe
from rvcfast.models.synthesizer import load_vocoder
from rvcfast.models.synthesizer.config import RVC_SAMPLE_RATE_CONFIGS, parse_config, rvc_config
from rvcfast.safe_load import load_safetensors, load_torch_file
from rvcfast.testing import save_random_hubert, save_random_voice_model


@pytest.fixture(scope="module", name="files")
def files_fixture(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models plus a fairseq encoder, a v1 voice and RVC-style G_ / D_ training checkpoints."""
    root = tmp_path_factory.mktemp("load_robust")
    fairseq = save_random_hubert(
        root / "hubert_base.pt", "fairseq", layers=1, hidden=768, heads=12, ffn=64,
        conv_layers=TINY_CONV, conv_pos=16, conv_pos_groups=16, final_dim=256, seed=7,
    )
    v1 = save_random_voice_model(root / "voice_v1.pth", "v1", 40000, True, seed=8, **TINY_VOICE)
    voice = load_torch_file(tiny_models.voice)
    # RVC's train.py: utils.save_checkpoint(net_g / net_d, optim, lr, epoch, path) -> G_*.pth / D_*.pth
    g_state = OrderedDict((k, v.float()) for k, v in voice["weight"].items())
    torch.save({"model": g_state, "iteration": 3, "optimizer": {"state": {}, "param_groups": []},
                "learning_rate": 1e-4}, root / "G_2333.pth")
    d_state = OrderedDict()
    for i in range(2):
        d_state[f"discriminators.{i}.convs.0.weight_g"] = torch.ones(16, 1, 1)
        d_state[f"discriminators.{i}.convs.0.weight_v"] = torch.randn(16, 1, 15)
        d_state[f"discriminators.{i}.conv_post.weight"] = torch.randn(1, 16, 3)
    torch.save({"model": d_state, "iteration": 3, "optimizer": {"state": {}, "param_groups": []},
                "learning_rate": 1e-4}, root / "D_2333.pth")
    return {
        "voice": tiny_models.voice, "voice_v1": v1, "encoder_hf": tiny_models.encoder,
        "encoder_bin": tiny_models.encoder / "pytorch_model.bin", "encoder_fairseq": fairseq,
        "rmvpe": tiny_models.rmvpe, "G_": root / "G_2333.pth", "D_": root / "D_2333.pth",
    }


def _edited_voice(src: Path, dst: Path, edit) -> Path:
    ckpt = load_torch_file(src)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


# ------------------------------------------------------------------ a file of another kind


def test_discriminator_checkpoint_as_voice_says_what_it_is(files: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(files["D_"])
    msg = str(info.value)
    assert names_file(msg, files["D_"]) and "discriminator" in msg and "D_" in msg, msg
    assert "G_" in msg and "weights folder" in msg, msg  # what to give instead
    assert "cannot be inferred" not in msg, msg


def test_generator_checkpoint_still_loads_as_voice(files: dict[str, Path]) -> None:
    """G_*.pth is a voice (its architecture is read off the tensors), with the same weights."""
    from_g = load_vocoder(files["G_"])
    small = load_vocoder(files["voice"])
    assert (from_g.sample_rate, from_g.version, from_g.has_f0) == (small.sample_rate, small.version, small.has_f0)
    a, b = from_g.state_dict(), small.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


WRONG_PLACE = [
    # (file, loader, words the message must hold: what the file is, and where it belongs)
    ("encoder_fairseq", "voice", ("content encoder", "encoder")),
    ("encoder_bin", "voice", ("content encoder", "encoder")),
    ("rmvpe", "voice", ("RMVPE", "f0")),
    ("voice", "encoder", ("voice model",)),
    ("G_", "encoder", ("G_", "voice model")),
    ("D_", "encoder", ("D_",)),
    ("rmvpe", "encoder", ("RMVPE", "f0")),
    ("voice", "rmvpe", ("voice model",)),
    ("G_", "rmvpe", ("G_",)),
    ("encoder_fairseq", "rmvpe", ("content encoder", "encoder")),
]


@pytest.mark.parametrize("which,loader,words", WRONG_PLACE, ids=[f"{w}-as-{lo}" for w, lo, _ in WRONG_PLACE])
def test_model_given_in_the_wrong_place_says_what_it_is(
    files: dict[str, Path], which: str, loader: str, words: tuple[str, ...]
) -> None:
    fn = {"voice": load_vocoder, "encoder": load_encoder, "rmvpe": load_rmvpe}[loader]
    with pytest.raises(ModelLoadError) as info:
        fn(files[which])
    msg = str(info.value)
    assert names_file(msg, files[which]), msg
    assert msg.count("this is ") == 1, msg
    for word in words:
        assert word.lower() in msg.lower(), (word, msg)


@pytest.mark.parametrize("nested", [True, False])
def test_voice_shared_as_a_zip_archive_says_extract_it(files: dict[str, Path], tmp_path: Path, nested: bool) -> None:
    """Voices are shared as ``Name.zip`` holding the .pth and the added_*.index (sometimes in a folder)."""
    inner = "MyVoice/" if nested else ""
    path = tmp_path / "MyVoice.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(files["voice"], f"{inner}MyVoice.pth")
        zf.write(files["rmvpe"].parent / "added_768.index", f"{inner}added_IVF4_Flat_nprobe_1_MyVoice_v2.index")
    for fn in (load_vocoder, load_encoder, load_rmvpe):
        with pytest.raises(ModelLoadError) as info:
            fn(path)
        msg = str(info.value)
        assert names_file(msg, path) and "zip archive" in msg and f"{inner}MyVoice.pth" in msg, msg
        assert "extract" in msg and ".index" in msg, msg
        assert "hasRecord" not in msg and "subdirectory" not in msg, msg


def test_real_torch_zip_files_are_not_taken_for_archives(files: dict[str, Path]) -> None:
    assert zipfile.is_zipfile(files["voice"])  # torch.save's format is a zip
    assert load_vocoder(files["voice"]).sample_rate == 40000


# ------------------------------------------------------------------ config and flags


def test_every_real_rvc_config_fits_its_sample_rate() -> None:
    for version, sr in RVC_SAMPLE_RATE_CONFIGS:
        arch = parse_config(rvc_config(version, sr))
        assert arch.sr == sr and 100 * math.prod(arch.upsample_rates) == sr


@pytest.mark.parametrize("rate", [48000, 32000, "48k"])
def test_sample_rate_that_does_not_fit_the_decoder_is_refused(files: dict[str, Path], tmp_path: Path, rate) -> None:
    """A 40 kHz decoder (upsample 10*10*2*2 = 400 samples per 10 ms frame) labelled otherwise played at the
    wrong speed and pitch (2 s of input gave 1.32 s at '48000 Hz')."""

    def edit(ckpt: dict) -> None:
        ckpt["config"][17] = rate

    path = _edited_voice(files["voice"], tmp_path / "relabelled.pth", edit)
    with pytest.raises(ModelLoadError, match=r"config\[17\].*400 samples per frame.*40000 Hz") as info:
        load_vocoder(path)
    assert names_file(str(info.value), path)


def test_the_sr_label_is_not_read(files: dict[str, Path], tmp_path: Path) -> None:
    """RVC and Applio never read ``sr``; only config[17] counts."""

    def edit(ckpt: dict) -> None:
        ckpt["sr"] = "48k"

    assert load_vocoder(_edited_voice(files["voice"], tmp_path / "label.pth", edit)).sample_rate == 40000


@pytest.mark.parametrize("which,expected", [("voice", "v2"), ("voice_v1", "v1")])
def test_missing_version_is_read_off_the_weights(files: dict[str, Path], tmp_path: Path, which: str, expected: str) -> None:
    def edit(ckpt: dict) -> None:
        del ckpt["version"]

    model = load_vocoder(_edited_voice(files[which], tmp_path / "noversion.pth", edit))
    assert model.version == expected
    assert model.feature_dim == {"v1": 256, "v2": 768}[expected]


def test_a_stated_version_is_still_checked(files: dict[str, Path], tmp_path: Path) -> None:
    def edit(ckpt: dict) -> None:
        ckpt["version"] = "v1"

    with pytest.raises(ModelLoadError, match="says version 'v1'"):
        load_vocoder(_edited_voice(files["voice"], tmp_path / "v1label.pth", edit))


@pytest.mark.parametrize("flag", [torch.tensor([1, 0]), [1], {"f0": 1}])
def test_unreadable_f0_flag_is_a_model_load_error(files: dict[str, Path], tmp_path: Path, flag) -> None:
    def edit(ckpt: dict) -> None:
        ckpt["f0"] = flag

    path = _edited_voice(files["voice"], tmp_path / "flag.pth", edit)
    with pytest.raises(ModelLoadError, match="f0 flag") as info:
        load_vocoder(path)
    assert names_file(str(info.value), path)


def test_f0_flag_that_contradicts_the_weights_is_named(files: dict[str, Path], tmp_path: Path) -> None:
    def edit(ckpt: dict) -> None:
        ckpt["f0"] = 0

    with pytest.raises(ModelLoadError, match="f0 flag says no pitch guidance"):
        load_vocoder(_edited_voice(files["voice"], tmp_path / "f0_0.pth", edit))


# ------------------------------------------------------------------ tensors


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_voice_with_nan_or_inf_weights_is_refused(files: dict[str, Path], tmp_path: Path, value: float) -> None:
    """NaN weights converted every input to NaN audio without an error."""

    def edit(ckpt: dict) -> None:
        ckpt["weight"]["enc_p.proj.weight"][0, 0, 0] = value

    path = _edited_voice(files["voice"], tmp_path / "nan.pth", edit)
    with pytest.raises(ModelLoadError, match=r"NaN or Inf.*enc_p\.proj\.weight") as info:
        load_vocoder(path)
    assert names_file(str(info.value), path)


def test_weight_norm_pair_with_zero_direction_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    """``g * v / ||v||`` with ``v = 0`` is NaN: refused at load, not heard as silence or noise."""

    def edit(ckpt: dict) -> None:
        ckpt["weight"]["dec.ups.0.weight_v"].zero_()

    with pytest.raises(ModelLoadError, match=r"NaN or Inf.*dec\.ups\.0\.weight"):
        load_vocoder(_edited_voice(files["voice"], tmp_path / "zero_v.pth", edit))


def test_voice_with_sparse_weights_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    def edit(ckpt: dict) -> None:
        ckpt["weight"]["emb_g.weight"] = ckpt["weight"]["emb_g.weight"].float().to_sparse()

    with pytest.raises(ModelLoadError, match=r"sparse: emb_g\.weight"):
        load_vocoder(_edited_voice(files["voice"], tmp_path / "sparse.pth", edit))


def test_encoder_with_nan_weights_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(files["encoder_hf"], folder)
    state = load_torch_file(folder / "pytorch_model.bin")
    state["encoder.layers.0.feed_forward.intermediate_dense.weight"][0, 0] = float("nan")
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"NaN or Inf.*encoder\.layers\.0\.feed_forward\.intermediate_dense\.weight"):
        load_encoder(folder)


def test_transformers_head_model_keys_load_as_the_base_model(files: dict[str, Path], tmp_path: Path) -> None:
    """A ``HubertFor...`` checkpoint names the base model's tensors ``hubert.*``; transformers strips it."""
    folder = tmp_path / "hf_prefixed"
    shutil.copytree(files["encoder_hf"], folder)
    state = load_torch_file(folder / "pytorch_model.bin")
    prefixed = OrderedDict((k if k.startswith("final_proj.") else f"hubert.{k}", v) for k, v in state.items())
    torch.save(prefixed, folder / "pytorch_model.bin")
    a, b = load_encoder(folder).state_dict(), load_encoder(files["encoder_hf"]).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_encoder_weights_without_transformer_layers_say_so(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "hf_other"
    shutil.copytree(files["encoder_hf"], folder)
    torch.save({"decoder.weight": torch.zeros(3, 3)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"no transformer layers \(encoder\.layers\.\*\)"):
        load_encoder(folder)


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    import json
    import struct

    names = {torch.float32: "F32", torch.float16: "F16"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_weights_are_held_once(tmp_path: Path) -> None:
    """The tensors are views of one file buffer (was: the file's bytes plus a copy of every tensor)."""
    src = {"a": torch.randn(64, 33), "b": torch.randn(1000), "c": torch.randn(7, 3).half()}
    path = tmp_path / "w.safetensors"
    _write_safetensors(path, src)
    out = load_safetensors(path)
    assert out.keys() == src.keys() and all(torch.equal(out[k], src[k]) for k in src)
    # the entries lie in the memory exactly as in the file: one buffer, no per-tensor copies
    assert out["b"].data_ptr() - out["a"].data_ptr() == 64 * 33 * 4
    assert out["c"].data_ptr() - out["b"].data_ptr() == 1000 * 4


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize("loader", ["voice", "encoder", "rmvpe"])
def test_bad_device_or_path_argument_is_a_parameter_error(files: dict[str, Path], loader: str) -> None:
    fn, path = {
        "voice": (load_vocoder, files["voice"]),
        "encoder": (load_encoder, files["encoder_hf"]),
        "rmvpe": (load_rmvpe, files["rmvpe"]),
    }[loader]
    with pytest.raises(ParameterError, match="device 'gpu'"):
        fn(path, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="CUDA is not available"):
            fn(path, device="cuda")
    with pytest.raises(ParameterError, match="path must be a file path"):
        fn(None)
    with pytest.raises(ParameterError, match="path must be a file path"):
        fn(42)


@pytest.mark.parametrize("device", ["meta", "xpu", "mps"])
def test_a_device_rvcfast_does_not_run_on_is_a_parameter_error(files: dict[str, Path], device: str) -> None:
    # before: 'meta' loaded and then failed in F0 ("Cannot copy out of meta tensor"); 'mps' and 'xpu'
    # raised torch's RuntimeError/AssertionError from deep in the loader (or, on a Mac, a float64
    # TypeError in the middle of a conversion)
    from rvcfast.runtime import resolve_device

    expected = {
        "meta": r"device 'meta': rvcfast runs on 'cpu' and 'cuda' \(NVIDIA, or AMD with a ROCm build of torch\), not 'meta'",
        "xpu": r"device 'xpu': rvcfast runs on 'cpu' and 'cuda' .*not 'xpu'",
        "mps": r"device 'mps': rvcfast does not run on Apple's MPS yet: .*float64.*use device='cpu'",
    }[device]
    with pytest.raises(ParameterError, match=expected):
        resolve_device(device)
    with pytest.raises(ParameterError, match=expected):
        load_vocoder(files["voice"], device=device)
    with pytest.raises(ParameterError, match=expected):
        rvcfast.Converter.from_pretrained(files["voice"], encoder=files["encoder_hf"], device=device)


@pytest.mark.parametrize("dtype", [torch.int64, "float16", torch.complex64])
def test_voice_bad_dtype_is_a_parameter_error(files: dict[str, Path], dtype) -> None:
    with pytest.raises(ParameterError, match="dtype"):
        load_vocoder(files["voice"], dtype=dtype)


def test_bytes_and_non_ascii_paths_load(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "Stimme_ü_声.pth"
    shutil.copy(files["voice"], path)
    assert load_vocoder(path).sample_rate == 40000
    assert load_vocoder(bytes(path)).sample_rate == 40000



# ------------------------------------------------------------------ weight norm


def test_plain_weight_beside_a_weight_norm_pair_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    """Both ``dec.ups.0.weight`` and its (g, v) pair: the plain one silently replaced the folded weight."""

    def edit(ckpt: dict) -> None:
        ckpt["weight"]["dec.ups.0.weight"] = torch.zeros_like(ckpt["weight"]["dec.ups.0.weight_v"])

    with pytest.raises(ModelLoadError, match=r"dec\.ups\.0 has both a plain weight and a weight-norm"):
        load_vocoder(_edited_voice(files["voice"], tmp_path / "both.pth", edit))


@pytest.mark.parametrize("g_shape", [(1, 1, 5), (2, 1, 1, 1)])
def test_encoder_weight_norm_pair_that_does_not_fit_names_the_file(
    files: dict[str, Path], tmp_path: Path, g_shape: tuple[int, ...]
) -> None:
    """A raw ValueError / RuntimeError (naming neither file nor key) before."""
    ckpt = load_torch_file(files["encoder_fairseq"])
    ckpt["model"]["encoder.pos_conv.0.weight_g"] = torch.ones(g_shape)
    path = tmp_path / "bad_pos_conv.pt"
    torch.save({"model": ckpt["model"], "cfg": ckpt["cfg"]}, path)
    with pytest.raises(ModelLoadError, match=r"encoder\.pos_conv\.0\.weight_g") as info:
        load_encoder(path)
    assert names_file(str(info.value), path)


@pytest.mark.parametrize("name", ["rmvpe.onnx", "rmvpe.pt"])
def test_onnx_model_says_what_it_is(tmp_path: Path, name: str) -> None:
    """RVC ships rmvpe.onnx beside rmvpe.pt; its bytes were read as a pickle ('opcode 8 is not supported')."""
    # ONNX ModelProto as torch.onnx writes it: field 1 ir_version (varint 8), field 2 producer_name "pytorch"
    path = tmp_path / name
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.1.0" + bytes(200))
    for fn in (load_rmvpe, load_vocoder):
        with pytest.raises(ModelLoadError, match="ONNX model.*rmvpe.pt") as info:
            fn(path)
        assert names_file(str(info.value), path) and "opcode" not in str(info.value)
        if name.endswith(".pt"):  # what an older server stored an ONNX voice upload as (NAME.pth)
            assert "loads under a name ending in .onnx" in str(info.value)

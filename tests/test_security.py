"""Safe loading: hostile and malformed model files never run code and fail with a clear error.

Every hostile file here would run a shell command that creates a marker file if it
were unpickled with :mod:`pickle` (``test_payloads_are_live`` proves it). Each test
loads such a file through an rvcfast loader and checks that

* an :class:`UnsafeFileError` (or :class:`ModelLoadError`) naming the file is raised,
* the marker file never appears.

Malformed files (truncated, wrong type, absurd sizes) must fail with a
:class:`ModelLoadError` naming the file, quickly and without allocating memory
for the absurd sizes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import TinyModels, names_file, one_thread_fixture, rss_mb, tiny_models_fixture  # noqa: F401 (fixtures)

import rvcfast
from rvcfast import cache
from rvcfast.errors import ModelLoadError, UnsafeFileError
from rvcfast.index import load_index
from rvcfast.models.encoder import load_encoder
from rvcfast.models.rmvpe import load_rmvpe
from rvcfast.models.synthesizer import load_vocoder
from rvcfast.safe_load import load_json, load_safetensors, load_torch_file

# ------------------------------------------------------------------ crafting hostile pickles


class Ref:
    """Stands for the callable ``module.name`` in a pickle; written as a GLOBAL (or STACK_GLOBAL) opcode."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle insists that a reduce function is callable
        raise AssertionError("never called here")


class Call:
    """Unpickles as ``module.name(*args)``."""

    def __init__(self, fn: Ref, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def hostile_pickle_module(stack_global: bool = False) -> types.ModuleType:
    """A pickle 'module' for ``torch.save`` that writes :class:`Ref` objects as the globals they name.

    No fake module is imported or registered: the opcodes are written directly.
    """

    class Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
        def save(self, obj: Any, save_persistent_id: bool = True) -> None:
            if isinstance(obj, Ref):
                if stack_global and self.proto >= 4:
                    self.save(obj.module)
                    self.save(obj.name)
                    self.write(pickle.STACK_GLOBAL)
                else:
                    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
                self.memoize(obj)
                return
            super().save(obj, save_persistent_id)

    module = types.ModuleType("hostile_pickle")
    module.Pickler = Pickler  # type: ignore[attr-defined]
    module.dump = lambda obj, f, protocol=2: Pickler(f, protocol).dump(obj)  # type: ignore[attr-defined]
    return module


def hostile_dumps(obj: Any, protocol: int = 2, stack_global: bool = False) -> bytes:
    buf = io.BytesIO()
    hostile_pickle_module(stack_global).Pickler(buf, protocol).dump(obj)
    return buf.getvalue()


def _touch(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


#: name -> function(marker) returning an object whose unpickling creates ``marker``.
PAYLOADS: dict[str, Callable[[Path], Call]] = {
    "os.system": lambda m: Call(Ref("os", "system"), _touch(m)),
    "posix.system": lambda m: Call(Ref("posix", "system"), _touch(m)),
    "builtins.eval": lambda m: Call(Ref("builtins", "eval"), f"__import__('os').system({_touch(m)!r})"),
    "builtins.exec": lambda m: Call(Ref("builtins", "exec"), f"import os\nos.system({_touch(m)!r})"),
    "subprocess.Popen": lambda m: Call(Ref("subprocess", "Popen"), ["touch", str(m)]),
    "subprocess.check_call": lambda m: Call(Ref("subprocess", "check_call"), ["touch", str(m)]),
}


_ALL_MARKERS: list[Path] = []


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    """The file a hostile payload would create; it must never exist."""
    m = tmp_path / "PWNED_MARKER"
    _ALL_MARKERS.append(m)
    yield m
    assert not m.exists(), "a hostile file ran code"


@pytest.fixture(scope="module", autouse=True)
def _no_marker_ever_appears():
    """A Popen payload would run asynchronously: look at every marker once more at the end."""
    yield
    time.sleep(0.3)
    assert not [m for m in _ALL_MARKERS if m.exists()], "a hostile file ran code"


def assert_refused(exc_info: pytest.ExceptionInfo, path: Path, *, unsafe: bool = True) -> None:
    err = exc_info.value
    assert isinstance(err, ModelLoadError)
    if unsafe:
        assert isinstance(err, UnsafeFileError), f"expected UnsafeFileError, got {type(err).__name__}: {err}"
    assert names_file(str(err), path), str(err)
    text = str(err)
    # never advise the user to turn the safe loader off
    assert "weights_only` set to `False`" not in text and "weights_only=False" not in text
    assert "\x1b[" not in text


# ------------------------------------------------------------------ the payloads are live


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_payloads_are_live(payload: str, tmp_path: Path) -> None:
    """Control: plain :func:`pickle.loads` of each payload really runs the command."""
    m = tmp_path / "CONTROL_MARKER"
    result = pickle.loads(hostile_dumps(PAYLOADS[payload](m)))
    if isinstance(result, subprocess.Popen):
        result.wait(10)
    assert m.exists()


# ------------------------------------------------------------------ file forms


@pytest.fixture(scope="module")
def voice_ckpt(tiny_models: TinyModels) -> dict:
    return torch.load(tiny_models.voice, map_location="cpu", weights_only=True)


def _raw(obj: Any, path: Path) -> Path:
    path.write_bytes(hostile_dumps(obj))
    return path


def _raw_proto0(obj: Any, path: Path) -> Path:
    path.write_bytes(hostile_dumps(obj, protocol=0))
    return path


def _raw_proto4(obj: Any, path: Path) -> Path:
    path.write_bytes(hostile_dumps(obj, protocol=4, stack_global=True))
    return path


def _zip(obj: Any, path: Path) -> Path:
    torch.save(obj, path, pickle_module=hostile_pickle_module())
    return path


def _legacy(obj: Any, path: Path) -> Path:
    torch.save(obj, path, pickle_module=hostile_pickle_module(), _use_new_zipfile_serialization=False)
    return path


def _handmade_zip(obj: Any, path: Path) -> Path:
    """A zip laid out like a PyTorch file (version, byteorder, data.pkl, a data record) by hand."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", hostile_dumps({"weight": {"evil": obj}, "config": [1] * 18}))
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", b"\0" * 64)
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/.data/serialization_id", "0123456789")
    return path


FORMS: dict[str, Callable[[Any, Path], Path]] = {
    "raw-pickle": _raw,
    "raw-pickle-protocol0-text": _raw_proto0,
    "raw-pickle-protocol4-stack-global": _raw_proto4,
    "torch-zip": _zip,
    "torch-legacy": _legacy,
    "handmade-zip": _handmade_zip,
}


def _voice_with(voice_ckpt: dict, where: str, evil: Call) -> dict:
    ck = dict(voice_ckpt)
    if where == "weight":
        ck["weight"] = dict(ck["weight"])
        ck["weight"]["enc_p.evil"] = evil
    elif where == "config":
        ck["config"] = list(ck["config"])
        ck["config"][9] = evil
    elif where == "info":
        ck["info"] = evil
    else:  # top level: the whole file is the payload
        return evil
    return ck


# ------------------------------------------------------------------ voice models


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("form", sorted(FORMS))
def test_voice_model_hostile_file(form: str, payload: str, marker: Path, tmp_path: Path) -> None:
    path = FORMS[form](PAYLOADS[payload](marker), tmp_path / "voice.pth")
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    assert_refused(info, path)


@pytest.mark.parametrize("where", ["weight", "config", "info"])
@pytest.mark.parametrize("form", ["torch-zip", "torch-legacy"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_voice_model_payload_inside_valid_model(
    voice_ckpt: dict, where: str, form: str, payload: str, marker: Path, tmp_path: Path
) -> None:
    """A GLOBAL for os.system (etc.) inside the ``weight`` dict / ``config`` of an otherwise valid voice."""
    path = FORMS[form](_voice_with(voice_ckpt, where, PAYLOADS[payload](marker)), tmp_path / "voice.pth")
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    assert_refused(info, path)
    assert payload in str(info.value)


def test_valid_tiny_voice_written_the_same_way_loads(voice_ckpt: dict, tmp_path: Path) -> None:
    """Control for the tests above: the same writer without a payload gives a loadable model."""
    for form in ("torch-zip", "torch-legacy"):
        path = FORMS[form](dict(voice_ckpt), tmp_path / f"{form}.pth")
        assert load_vocoder(path).sample_rate == 40000


# ------------------------------------------------------------------ RMVPE, fairseq HuBERT, HF folders, index


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.Popen", "posix.system"])
@pytest.mark.parametrize("form", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_rmvpe_hostile_file(tiny_models: TinyModels, form: str, payload: str, marker: Path, tmp_path: Path) -> None:
    state = dict(torch.load(tiny_models.rmvpe, weights_only=True))
    state["cnn.evil"] = PAYLOADS[payload](marker)
    path = FORMS[form](state, tmp_path / "rmvpe.pt")
    with pytest.raises(ModelLoadError) as info:
        load_rmvpe(path)
    assert_refused(info, path)


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("form", ["torch-zip", "torch-legacy", "raw-pickle-protocol4-stack-global"])
def test_fairseq_hubert_hostile_file(tiny_models: TinyModels, form: str, payload: str, marker: Path, tmp_path: Path) -> None:
    state = dict(torch.load(tiny_models.encoder / "pytorch_model.bin", weights_only=True))
    ckpt = {"model": state, "cfg": {"model": {"_name": "hubert"}}, "args": PAYLOADS[payload](marker)}
    path = FORMS[form](ckpt, tmp_path / "hubert_base.pt")
    with pytest.raises(ModelLoadError) as info:
        load_encoder(path)
    assert_refused(info, path)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.check_call"])
def test_hf_folder_hostile_weights(tiny_models: TinyModels, payload: str, marker: Path, tmp_path: Path) -> None:
    folder = tmp_path / "contentvec"
    shutil.copytree(tiny_models.encoder, folder)
    state = dict(torch.load(folder / "pytorch_model.bin", weights_only=True))
    state["masked_spec_embed"] = PAYLOADS[payload](marker)
    _zip(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as info:
        load_encoder(folder)
    assert_refused(info, folder / "pytorch_model.bin")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Minimal safetensors writer: 8-byte header length, JSON header, raw buffers."""
    names = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    return path


def test_hf_folder_prefers_safetensors_over_a_hostile_bin(tiny_models: TinyModels, marker: Path, tmp_path: Path) -> None:
    folder = tmp_path / "contentvec"
    shutil.copytree(tiny_models.encoder, folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    write_safetensors(folder / "model.safetensors", dict(state))
    evil = dict(state)
    evil["masked_spec_embed"] = PAYLOADS["os.system"](marker)
    _zip(evil, folder / "pytorch_model.bin")
    enc = load_encoder(folder)
    assert enc.hidden_size == 768


def test_hf_config_is_data_only(tiny_models: TinyModels, marker: Path, tmp_path: Path) -> None:
    """``auto_map`` / ``trust_remote_code`` in config.json never import the code next to it."""
    folder = tmp_path / "contentvec"
    shutil.copytree(tiny_models.encoder, folder)
    (folder / "modeling_evil.py").write_text(f"import os\nos.system({_touch(marker)!r})\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update({"auto_map": {"AutoModel": "modeling_evil.EvilModel"}, "trust_remote_code": True,
                "architectures": ["EvilModel"], "custom_pipelines": {"x": {"impl": "modeling_evil.X"}}})
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_encoder(folder).hidden_size == 768
    assert "modeling_evil" not in sys.modules


@pytest.mark.parametrize("form", ["raw-pickle", "torch-zip", "torch-legacy"])
def test_index_is_parsed_never_unpickled(form: str, marker: Path, tmp_path: Path) -> None:
    path = FORMS[form](PAYLOADS["os.system"](marker), tmp_path / "added_IVF4_Flat.index")
    with pytest.raises(ModelLoadError) as info:
        load_index(path)
    assert_refused(info, path, unsafe=False)
    assert "faiss" in str(info.value) or "index" in str(info.value)


# ------------------------------------------------------------------ through Converter.from_pretrained


@pytest.mark.parametrize("which", ["model", "encoder-fairseq", "encoder-hf", "f0_weights", "index"])
def test_from_pretrained_refuses_hostile_files(
    tiny_models: TinyModels, voice_ckpt: dict, which: str, marker: Path, tmp_path: Path
) -> None:
    evil = PAYLOADS["os.system"](marker)
    kw: dict[str, Any] = dict(index=tiny_models.index, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")
    model = tiny_models.voice
    if which == "model":
        model = bad = _zip(_voice_with(voice_ckpt, "weight", evil), tmp_path / "voice.pth")
    elif which == "encoder-fairseq":
        kw["encoder"] = bad = _legacy({"model": {"x": evil}, "cfg": {}}, tmp_path / "hubert_base.pt")
    elif which == "encoder-hf":
        folder = tmp_path / "hf"
        shutil.copytree(tiny_models.encoder, folder)
        bad = _zip({"masked_spec_embed": evil}, folder / "pytorch_model.bin")
        kw["encoder"] = folder
    elif which == "f0_weights":
        kw["f0_weights"] = bad = _zip({"cnn.weight": evil}, tmp_path / "rmvpe.pt")
    else:
        kw["index"] = bad = _raw(evil, tmp_path / "voice.index")
    with pytest.raises(ModelLoadError) as info:
        rvcfast.Converter.from_pretrained(model, **kw)
    assert_refused(info, bad, unsafe=which != "index")


# ------------------------------------------------------------------ truncated and wrong-type files


@pytest.fixture(scope="module")
def wav_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    p = tmp_path_factory.mktemp("wav") / "a.wav"
    sf.write(p, np.zeros(1600), 16000)
    return p.read_bytes()


LOADERS: dict[str, Callable[[Path], Any]] = {
    "voice": load_vocoder,
    "rmvpe": load_rmvpe,
    "hubert": load_encoder,
    "index": load_index,
    "torch": load_torch_file,
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(
    "content",
    ["wav-renamed", "text", "json", "zeros", "random", "empty", "zip-not-torch", "one-byte"],
)
def test_wrong_type_file(loader: str, content: str, wav_bytes: bytes, tmp_path: Path) -> None:
    ext = {"voice": ".pth", "rmvpe": ".pt", "hubert": ".pt", "index": ".index", "torch": ".pth"}[loader]
    path = tmp_path / f"model{ext}"
    if content == "wav-renamed":
        path.write_bytes(wav_bytes)
    elif content == "text":
        path.write_text("this is not a model\n")
    elif content == "json":
        path.write_text('{"weight": {}, "config": []}')
    elif content == "zeros":
        path.write_bytes(b"\0" * 4096)
    elif content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "one-byte":
        path.write_bytes(b"\x80")
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelLoadError) as info:
        LOADERS[loader](path)
    assert names_file(str(info.value), path), str(info.value)


@pytest.mark.parametrize(
    "content,says",
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "WAV"),
        (b"fLaC\x00\x00\x00\x22", "FLAC"),
        (b"IwFl\x00\x03\x00\x00", "faiss"),
        (b"<!DOCTYPE html><html>", "HTML"),
        (b'{"model_type": "hubert"}', "JSON"),
        (struct.pack("<Q", 14) + b'{"__metadata__":{}}', "safetensors"),
    ],
)
def test_wrong_type_file_says_what_it_is(content: bytes, says: str, tmp_path: Path) -> None:
    path = tmp_path / "voice.pth"
    path.write_bytes(content + b"\0" * 64)
    with pytest.raises(ModelLoadError, match=says) as info:
        load_vocoder(path)
    assert names_file(str(info.value), path)


def test_truncated_zip_says_so(tiny_models: TinyModels, tmp_path: Path) -> None:
    data = tiny_models.voice.read_bytes()
    path = tmp_path / "voice.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_vocoder(path)


@pytest.mark.parametrize("which", ["voice", "rmvpe", "hubert-hf-bin", "index"])
@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.97])
def test_truncated_file(tiny_models: TinyModels, which: str, fraction: float, tmp_path: Path) -> None:
    src = {
        "voice": tiny_models.voice,
        "rmvpe": tiny_models.rmvpe,
        "hubert-hf-bin": tiny_models.encoder / "pytorch_model.bin",
        "index": tiny_models.index,
    }[which]
    data = src.read_bytes()
    if which == "hubert-hf-bin":
        folder = tmp_path / "hf"
        shutil.copytree(tiny_models.encoder, folder)
        path = folder / "pytorch_model.bin"
    else:
        path = tmp_path / src.name
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    loader = {"voice": load_vocoder, "rmvpe": load_rmvpe, "index": load_index, "hubert-hf-bin": load_encoder}[which]
    with pytest.raises(ModelLoadError) as info:
        loader(path.parent if which == "hubert-hf-bin" else path)
    assert names_file(str(info.value), path), str(info.value)


@pytest.mark.parametrize("what", ["missing", "directory"])
@pytest.mark.parametrize("loader", ["voice", "rmvpe", "hubert", "index"])
def test_missing_or_directory(loader: str, what: str, tmp_path: Path) -> None:
    path = tmp_path / "thing.pth"
    if what == "directory":
        path.mkdir()
    fn = {"voice": load_vocoder, "rmvpe": load_rmvpe, "hubert": load_encoder, "index": load_index}[loader]
    with pytest.raises(ModelLoadError) as info:
        fn(path)
    assert names_file(str(info.value), path)


# ------------------------------------------------------------------ JSON configuration


def _hf_copy(tiny_models: TinyModels, tmp_path: Path, config_text: str) -> Path:
    folder = tmp_path / "hf"
    shutil.copytree(tiny_models.encoder, folder)
    (folder / "config.json").write_text(config_text, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "text",
    ["[1, 2, 3]", '"hubert"', "null", "42", "{not json", "[" * 100_000 + "]" * 100_000, "\ufeff\ufeff{}"],
    ids=["list", "string", "null", "number", "invalid", "deeply-nested", "double-bom"],
)
def test_hf_config_wrong_json(tiny_models: TinyModels, text: str, tmp_path: Path) -> None:
    folder = _hf_copy(tiny_models, tmp_path, text)
    with pytest.raises(ModelLoadError) as info:
        load_encoder(folder)
    assert names_file(str(info.value), folder / "config.json")


def test_load_json_accepts_a_bom(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')
    assert load_json(p) == {"a": 1}


def test_load_json_refuses_huge_file(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    with open(p, "wb") as f:
        f.write(b'{"a": "')
        f.seek(20 << 20)
        f.write(b'"}')
    with pytest.raises(ModelLoadError, match="config"):
        load_json(p)


@pytest.mark.parametrize(
    "field,value",
    [
        ("hidden_size", 12 * 16 * 10**7),
        ("intermediate_size", 10**9),
        ("num_conv_pos_embeddings", 10**9),
        ("conv_dim", [10**9] + [32] * 6),
        ("num_attention_heads", 10**9),
        ("hidden_size", -768),
        ("num_hidden_layers", 0),
        ("layer_norm_eps", "small"),
        ("conv_kernel", [10, 3]),
    ],
)
def test_hf_config_absurd_or_bad_values_fail_fast(tiny_models: TinyModels, field: str, value: Any, tmp_path: Path) -> None:
    cfg = json.loads((tiny_models.encoder / "config.json").read_text())
    cfg[field] = value
    folder = _hf_copy(tiny_models, tmp_path, json.dumps(cfg))
    before = rss_mb()
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_encoder(folder)
    assert time.perf_counter() - t0 < 10
    assert rss_mb() - before < 200, "tried to allocate for an absurd size"
    assert str(folder) in str(info.value)


# ------------------------------------------------------------------ absurd sizes (run in a child with limits)

_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys, time
    import torch
    from rvcfast.errors import ModelLoadError
    from rvcfast.models.encoder import load_encoder
    from rvcfast.models.rmvpe import load_rmvpe
    from rvcfast.models.synthesizer import load_vocoder
    torch.set_num_threads(1)

    class Deadline(BaseException):
        pass

    def on_alarm(*_):
        raise Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    for line in open('/proc/self/status'):
        if line.startswith('VmSize:'):
            vm = int(line.split()[1]) * 1024
    limit = vm + (768 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cases = json.loads(sys.argv[1])
    loaders = {'voice': load_vocoder, 'rmvpe': load_rmvpe, 'hubert': load_encoder}
    out = {}
    for name, (kind, path) in cases.items():
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, %(deadline)s)
        try:
            loaders[kind](path)
            res = ['loaded', '']
        except ModelLoadError as exc:
            res = ['ModelLoadError', str(exc)[:500]]
        except Deadline:
            res = ['timeout', '']
        except BaseException as exc:
            res = [type(exc).__name__, str(exc)[:300]]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        res.append(time.perf_counter() - t0)
        out[name] = res
    print('RESULTS' + json.dumps(out))
    """
)

#: Each absurd case must fail with ModelLoadError within this many seconds.
ABSURD_DEADLINE = 4.0

ABSURD_XFAIL = {
}


@pytest.fixture(scope="module")
def absurd_results(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("absurd")
    cases: dict[str, tuple[str, str]] = {}
    base_cfg = json.loads((tiny_models.encoder / "config.json").read_text())
    for name, field, value in [
        ("hf-hidden_size-1.9e9", "hidden_size", 12 * 16 * 10**7),
        ("hf-num_hidden_layers-1e9", "num_hidden_layers", 10**9),
    ]:
        folder = root / name
        shutil.copytree(tiny_models.encoder, folder)
        (folder / "config.json").write_text(json.dumps({**base_cfg, field: value}))
        cases[name] = ("hubert", str(folder))
    ck = torch.load(tiny_models.voice, weights_only=True)
    for name, i in [("voice-n_layers-1e9", 6), ("voice-hidden-1e9", 3), ("voice-upsample_initial-1e9", 13),
                    ("voice-filter-1e9", 4)]:
        c = dict(ck)
        c["config"] = list(ck["config"])
        c["config"][i] = 10**9
        torch.save(c, root / f"{name}.pth")
        cases[name] = ("voice", str(root / f"{name}.pth"))
    sd = torch.load(tiny_models.rmvpe, weights_only=True)
    for name, key in [("rmvpe-layer-index-1e9", "unet.encoder.layers.1000000000.conv.0.x"),
                      ("rmvpe-gru-layer-1e8", "fc.0.gru.weight_ih_l100000000")]:
        s = dict(sd)
        s[key] = torch.zeros(1)
        torch.save(s, root / f"{name}.pt")
        cases[name] = ("rmvpe", str(root / f"{name}.pt"))
    code = _CHILD % {"deadline": ABSURD_DEADLINE}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(line[0][len("RESULTS"):])
    for name, res in results.items():
        res.append(cases[name][1])
    return results


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=ABSURD_XFAIL[name], strict=True)) if name in ABSURD_XFAIL else name
        for name in [
            "hf-hidden_size-1.9e9",
            "hf-num_hidden_layers-1e9",
            "voice-n_layers-1e9",
            "voice-hidden-1e9",
            "voice-upsample_initial-1e9",
            "voice-filter-1e9",
            "rmvpe-layer-index-1e9",
            "rmvpe-gru-layer-1e8",
        ]
    ],
)
def test_absurd_sizes_fail_fast_without_allocating(absurd_results: dict[str, list], case: str) -> None:
    """Absurd sizes in a config or a key name give ModelLoadError within seconds and 768 MB of address space."""
    outcome, message, seconds, path = absurd_results[case]
    print(case, outcome, f"{seconds:.2f} s", message[:300])
    assert outcome == "ModelLoadError", f"{case}: {outcome} {message} after {seconds:.1f} s"
    assert names_file(message, path)
    assert seconds < ABSURD_DEADLINE


# ------------------------------------------------------------------ index headers


def _flat_index(path: Path, d: int, ntotal: int, payload: bytes = b"") -> Path:
    head = b"IxF2" + struct.pack("<iqqqBi", d, ntotal, 1 << 20, 1 << 20, 1, 1)
    path.write_bytes(head + struct.pack("<Q", (ntotal * d) % 2**64) + payload)
    return path


def _assert_index_refused_cheaply(path: Path) -> None:
    """load_index refuses ``path`` with a ModelLoadError naming it, without allocating what the header claims."""
    before = rss_mb()
    with pytest.raises(ModelLoadError) as info:
        load_index(path)
    assert rss_mb() - before < 100
    assert names_file(str(info.value), path)


@pytest.mark.parametrize("ntotal", [10**12, 2**62, -5])
def test_flat_index_header_claims_absurd_count(ntotal: int, tmp_path: Path) -> None:
    path = _flat_index(tmp_path / "huge.index", 768, ntotal, b"\0" * 3072)
    _assert_index_refused_cheaply(path)


def test_ivf_index_header_claims_absurd_count(tiny_models: TinyModels, tmp_path: Path) -> None:
    data = bytearray(tiny_models.index.read_bytes())
    assert data[:4] == b"IwFl"
    struct.pack_into("<q", data, 8, 10**12)  # ntotal, after fourcc and the int32 dimension
    path = tmp_path / "huge.index"
    path.write_bytes(bytes(data))
    _assert_index_refused_cheaply(path)


def test_ivf_index_with_absurd_nlist(tiny_models: TinyModels, tmp_path: Path) -> None:
    data = bytearray(tiny_models.index.read_bytes())
    off = 4 + 4 + 8 * 3 + 1 + 4  # fourcc, d, ntotal, 2 dummies, is_trained, metric
    struct.pack_into("<Q", data, off, 10**12)
    path = tmp_path / "nlist.index"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as info:
        load_index(path)
    assert names_file(str(info.value), path)


# ------------------------------------------------------------------ safetensors


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]},  # numel overflows int64 to 0
        {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [4], "data_offsets": [0, 10**12]},
        {"dtype": "PICKLE", "shape": [4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]},
    ],
)
def test_safetensors_bad_entries(entry: dict, tmp_path: Path) -> None:
    head = json.dumps({"w": entry}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 16)
    with pytest.raises(ModelLoadError) as info:
        load_safetensors(path)
    assert names_file(str(info.value), path)


def test_safetensors_header_length_beyond_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**15) + b"{}")
    with pytest.raises(ModelLoadError, match="header length"):
        load_safetensors(path)


# ------------------------------------------------------------------ the cache never keeps a refused file


def test_refused_file_is_not_cached(tiny_models: TinyModels, marker: Path, tmp_path: Path) -> None:
    bad = _zip({"cnn.weight": PAYLOADS["os.system"](marker)}, tmp_path / "rmvpe.pt")
    before = cache.load_count("rmvpe")
    for _ in range(2):
        with pytest.raises(UnsafeFileError):
            rvcfast.Converter.from_pretrained(
                tiny_models.voice, encoder=tiny_models.encoder, f0_weights=bad, device="cpu"
            )
    assert cache.load_count("rmvpe") == before


def test_concurrent_loads_keep_each_others_allow_list(tmp_path: Path) -> None:
    """Loads in several threads at once (a server, models loading side by side) all succeed.

    torch's safe-globals list is process-wide: without serialising, one thread leaving its
    allow-list context stripped the fairseq stubs from another thread's load mid-way and the
    real encoder file was refused as unsafe.
    """
    from concurrent.futures import ThreadPoolExecutor

    from rvcfast.testing import save_random_hubert, save_random_rmvpe

    hubert = save_random_hubert(tmp_path / "hubert_base.pt", layers=1, hidden=64, heads=2, ffn=128, final_dim=32)
    rmvpe = save_random_rmvpe(tmp_path / "rmvpe.pt", full_size=False)
    jobs = [(hubert, "content encoder"), (rmvpe, "RMVPE weights")] * 24
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = list(pool.map(lambda job: load_torch_file(*job), jobs))
    assert all(isinstance(obj, dict) and obj for obj in loaded)
    assert all("model" in obj for obj in loaded[::2])  # the fairseq checkpoints, Dictionary stub included

"""The API reference as a library user reads it: ``help()``, IDE hover and docs/api.md.

* every public name imports, is listed by ``dir()`` and has a docstring, and docs/api.md
  (or, for Ray, docs/scale-out.md) documents it; every ``:::`` reference and member there
  exists;
* the type hints take what the docs say a call takes: ``convert(path, {"pitch": 2})``, a
  torch tensor or a list of numbers, a NumPy integer rate, progress callbacks;
* the Converter's properties, the Result's fields and the error classes say what they are;
* the "What to catch" table of docs/api.md: each row's error is the one raised, of the
  built-in class it names, with the example message it shows.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import importlib.util
import inspect
import re
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
import rvcfast.errors
from rvcfast.api import Converter

REPO = Path(__file__).resolve().parent.parent
API_MD = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
SCALE_OUT_MD = (REPO / "docs" / "scale-out.md").read_text(encoding="utf-8")

PUBLIC_MODULES = ["rvcfast", "rvcfast.serve", "rvcfast.testing"]


def _public(module: str) -> list[tuple[str, object]]:
    mod = importlib.import_module(module)
    return [(name, getattr(mod, name)) for name in mod.__all__ if name != "__version__"]


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_imports_is_listed_and_documented(module):
    mod = importlib.import_module(module)
    listed = dir(mod)
    for name, obj in _public(module):
        assert name in listed, f"{module}.{name} is missing from dir()"
        assert inspect.getdoc(obj), f"{module}.{name} has no docstring"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_is_in_the_api_reference(module):
    """docs/api.md names each public function and class (a ``:::`` block or the text)."""
    missing = [name for name, _ in _public(module) if not re.search(rf"\b{re.escape(name)}\b", API_MD)]
    assert not missing, f"{module}: not in docs/api.md: {missing}"


def test_ray_public_names_are_documented():
    # rvcfast.integrations.ray needs Ray only to import; its names are read from the source.
    source = (REPO / "rvcfast" / "integrations" / "ray" / "__init__.py").read_text(encoding="utf-8")
    names = re.search(r"__all__ = \[(.*?)\]", source, re.S).group(1)
    for name in re.findall(r'"(\w+)"', names):
        documented = re.search(rf"\b{name}\b", SCALE_OUT_MD) or re.search(rf"`{name}`", API_MD)
        assert documented, f"rvcfast.integrations.ray.{name} is in neither docs/scale-out.md nor docs/api.md"
    assert "(scale-out.md#api)" in API_MD and "\n## API\n" in SCALE_OUT_MD


def _resolve(path: str) -> object:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


def test_every_reference_in_api_md_exists_and_is_documented():
    current = None
    for line in API_MD.splitlines():
        ref = re.match(r"^::: ([\w.]+)\s*$", line)
        if ref:
            if ref.group(1).startswith("rvcfast.integrations.ray.") and importlib.util.find_spec("ray") is None:
                current = None  # the ray extra is not installed here
                continue
            current = _resolve(ref.group(1))
            assert inspect.getdoc(current), f"{ref.group(1)} has no docstring"
            continue
        member = re.match(r"^ {8}- (\w+)\s*$", line)
        if member and current is not None:
            name = member.group(1)
            owner = current
            assert hasattr(owner, name), f"docs/api.md lists {name!r}, which {owner!r} lacks"
            attr = inspect.getattr_static(owner, name)
            target = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
            assert inspect.getdoc(target), f"{getattr(owner, '__name__', owner)}.{name} has no docstring"


def test_converter_public_properties_have_docstrings():
    for name, attr in vars(Converter).items():
        if isinstance(attr, property) and not name.startswith("_"):
            assert attr.fget.__doc__, f"Converter.{name} has no docstring"
    assert "engine" in Converter.__doc__


def test_result_docstring_describes_every_field():
    doc = rvcfast.Result.__doc__
    for f in dataclasses.fields(rvcfast.Result):
        assert re.search(rf"^\s+{f.name}:", doc, re.M), f"Result.{f.name} is not described"


def test_package_docstring_names_the_public_api():
    doc = rvcfast.__doc__
    for name in rvcfast.__all__:
        if name != "__version__":
            assert re.search(rf"\b{name}\b", doc), f"help(rvcfast) does not mention {name}"


def test_py_typed_ships():
    assert (REPO / "rvcfast" / "py.typed").is_file()
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "py.typed" in pyproject


# ---------------------------------------------------------------------------------------------- hints


def _union_members(hint: object) -> set[object]:
    args: set[object] = set()
    for arg in typing.get_args(hint) or (hint,):
        inner = typing.get_args(arg)
        if typing.get_origin(arg) in (typing.Union, type(int | str)) and inner:
            args |= _union_members(arg)
        else:
            args.add(typing.get_origin(arg) or arg)
    return args


def test_convert_hints_take_what_the_docs_say():
    hints = typing.get_type_hints(Converter.convert)
    sources = _union_members(hints["audio_or_path"])
    assert {str, np.ndarray, torch.Tensor, collections.abc.Sequence} <= sources
    rates = _union_members(hints["sample_rate"])
    assert {int, np.integer, rvcfast.ConversionParams, collections.abc.Mapping, type(None)} <= rates
    assert collections.abc.Mapping in _union_members(hints["params"])  # any mapping, not only a dict


def test_batch_hints_name_the_callbacks():
    hints = typing.get_type_hints(Converter.iter_batch)
    progress = [a for a in typing.get_args(hints["progress"]) if a is not type(None)]
    assert typing.get_origin(progress[0]) is collections.abc.Callable
    assert typing.get_args(progress[0])[0] == [rvcfast.Result, int, int]
    audio = [a for a in typing.get_args(hints["audio_progress"]) if a is not type(None)]
    assert typing.get_args(audio[0])[0] == [int, float]
    for name in ("convert", "iter_batch", "convert_batch", "make_params", "from_pretrained", "from_engine"):
        typing.get_type_hints(getattr(Converter, name))  # resolvable at run time, not only by a checker


def test_convert_accepts_every_documented_input(tiny_converter):
    x = tone(0.3)
    want = tiny_converter.convert(x, 16000, seed=0, pitch=2).audio
    for source, rate in ((torch.from_numpy(x), np.int64(16000)), (x.tolist(), 16000)):
        got = tiny_converter.convert(source, rate, seed=0, pitch=2).audio
        np.testing.assert_allclose(got, want, atol=1e-6)
    got = tiny_converter.convert(x, 16000, {"pitch": 2}, seed=0).audio
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------- errors


TABLE_ROWS = {
    "AudioError": ValueError,
    "ParameterError": ValueError,
    "ModelLoadError": ValueError,
    "WeightsNotFoundError": FileNotFoundError,
    "BackendUnavailableError": ImportError,
}


def test_error_table_classes_and_bases():
    table = API_MD[API_MD.index("What to catch:") :]
    for name, base in TABLE_ROWS.items():
        cls = getattr(rvcfast, name)
        assert issubclass(cls, rvcfast.RvcfastError) and issubclass(cls, base), name
        assert re.search(rf"\| `{name}`[^|]*\| `{base.__name__}` \|", table), f"{name} row"
    assert issubclass(rvcfast.errors.UnsafeFileError, rvcfast.ModelLoadError)
    assert issubclass(rvcfast.errors.AudioTooLongError, rvcfast.AudioError)
    assert not issubclass(rvcfast.Cancelled, Exception)
    for name in rvcfast.errors.__all__:  # every class says what it is for
        assert len(inspect.getdoc(getattr(rvcfast.errors, name))) > 40, name


def _raised(call) -> BaseException:
    with pytest.raises(rvcfast.RvcfastError) as info:
        call()
    return info.value


def test_error_table_examples_are_the_real_messages(tiny_models, tiny_converter, tmp_path, monkeypatch):
    table = API_MD[API_MD.index("What to catch:") :]
    missing = tmp_path / "clip.wav"
    err = _raised(lambda: tiny_converter.convert(missing))
    assert isinstance(err, rvcfast.AudioError) and str(err) == f"{missing}: file does not exist"
    assert "`clip.wav: file does not exist`" in table
    err = _raised(lambda: tiny_converter.convert(np.zeros(0, np.float32), 16000))
    assert isinstance(err, rvcfast.AudioError) and str(err) == "array input: audio has no samples"
    assert "`array input: audio has no samples`" in table
    err = _raised(lambda: tiny_converter.convert(tone(0.3), 999))
    assert isinstance(err, rvcfast.AudioError) and "outside 1000..768000 Hz" in str(err)  # a rate out of range
    err = _raised(lambda: tiny_converter.convert(tone(0.3), 16000, pitch=49))
    assert isinstance(err, rvcfast.ParameterError) and str(err) == "pitch must be within -48..48 semitones, got 49"
    assert f"`{err}`" in table
    voice = tmp_path / "voice.pth"
    err = _raised(lambda: rvcfast.Converter.from_pretrained(voice, device="cpu"))
    assert isinstance(err, rvcfast.ModelLoadError) and str(err) == f"{voice}: voice model file does not exist"
    assert "`voice.pth: voice model file does not exist`" in table
    monkeypatch.setenv("RVCFAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    err = _raised(lambda: rvcfast.Converter.from_pretrained(tiny_models.voice, encoder=tiny_models.encoder, device="cpu"))
    assert isinstance(err, rvcfast.WeightsNotFoundError)
    assert str(err).startswith("RMVPE pitch model weights (rmvpe.pt) not found. Looked in: ")
    assert "`RMVPE pitch model weights (rmvpe.pt) not found. Looked in: ...`" in table
    monkeypatch.setitem(sys.modules, "stftpitchshift", None)
    err = _raised(lambda: tiny_converter.convert(tone(0.3), 16000, formant=(1.0, 1.2)))
    assert isinstance(err, rvcfast.BackendUnavailableError)
    assert f"`{err}`" in table

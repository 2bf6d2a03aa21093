"""The public typing is usable: hints resolve at run time, and a typed user program type-checks.

rvcfast ships ``py.typed``. Tools that read hints at run time (FastAPI, pydantic, typer,
sphinx-autodoc-typehints) call :func:`typing.get_type_hints`, which raised ``NameError`` on
public callables whose hints named types imported only for type checkers. Users' type checkers
read the same hints, so a program written as docs/api.md shows must type-check cleanly.

``mypy rvcfast`` on the whole package is not run here: a cold run takes about 1.5 to 3 minutes
on two cores, and the package is not yet clean (errors remain in modules outside this test's
scope, mostly torch's ``nn.Module`` typing).
"""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
import textwrap
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rvcfast
from rvcfast.api import Converter
from rvcfast.audio import decode

ROOT = Path(__file__).resolve().parents[1]


def _methods(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties a class defines or inherits from rvcfast itself."""
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        elif isinstance(raw, property):
            raw = raw.fget
        if inspect.isfunction(raw) and raw.__module__.startswith("rvcfast"):
            yield f"{cls.__name__}.{name}", raw


def _public_callables() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in rvcfast.__all__:
        obj = getattr(rvcfast, name)
        if inspect.isclass(obj):
            out.append((name, obj))  # class-level annotations (dataclass fields)
            out.extend(_methods(obj))
        elif callable(obj):
            out.append((name, obj))
    return out


PUBLIC = _public_callables()


def test_the_walk_finds_the_public_api() -> None:
    labels = {label for label, _ in PUBLIC}
    # the names the brief of this check started from, and one of each kind
    for expected in ("load_vocoder", "convert_voices", "SharedAnalysis.engine", "Converter.convert",
                     "Converter.convert_batch", "Result", "Vocoder.synthesize", "F0Extractor.extract"):
        assert expected in labels
    assert len(PUBLIC) > 60


@pytest.mark.parametrize(("label", "obj"), PUBLIC, ids=[label for label, _ in PUBLIC])
def test_type_hints_resolve(label: str, obj: Any) -> None:
    hints = typing.get_type_hints(obj)
    assert all(hint is not None for hint in hints.values())


def test_protocol_hints_are_the_real_classes() -> None:
    """The protocols' hints resolve to numpy's and torch's classes, not to stand-ins."""
    assert typing.get_type_hints(rvcfast.F0Extractor.extract)["return"] is np.ndarray
    assert typing.get_type_hints(rvcfast.FeatureEncoder.encode)["return"] is torch.Tensor
    assert typing.get_type_hints(rvcfast.Vocoder.synthesize)["features"] is torch.Tensor


def test_import_rvcfast_stays_light() -> None:
    """Resolving hints imports what they name; importing rvcfast imports neither torch nor numpy."""
    code = "import sys, rvcfast; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------- inputs

SAMPLES: list[tuple[str, Any]] = [
    ("numpy", np.zeros(1600, dtype=np.float32)),
    ("int16 numpy", np.zeros(1600, dtype=np.int16)),
    ("tensor", torch.zeros(1600)),
    ("list", [0.0] * 1600),
    ("rows", [[0.0, 0.0]] * 1600),
]


def _members(hint: Any) -> set[Any]:
    return {typing.get_origin(a) or a for a in typing.get_args(hint)}


def test_convert_input_hint_names_every_kind_of_samples() -> None:
    """The hint of ``convert``'s input lists what the runtime decodes (paths, arrays, tensors, lists)."""
    hint = typing.get_type_hints(Converter.convert)["audio_or_path"]
    args = typing.get_args(hint)
    assert {str, np.ndarray, torch.Tensor} <= _members(hint)
    assert Sequence[float] in args and Sequence[Sequence[float]] in args


@pytest.mark.parametrize(("kind", "samples"), SAMPLES, ids=[k for k, _ in SAMPLES])
def test_every_kind_the_hint_names_decodes(kind: str, samples: Any) -> None:
    decoded = decode(samples, 16000)
    assert decoded.audio.shape == (1600,) and decoded.source_rate == 16000


def test_batch_item_hint_is_a_path_or_a_samples_pair() -> None:
    hint = typing.get_type_hints(Converter.convert_batch)["inputs"]
    flat = str(hint)
    for name in ("str", "os.PathLike", "tuple", "torch.Tensor", "numpy.ndarray", "Sequence[float]"):
        assert name in flat, (name, flat)


# ---------------------------------------------------------------------------------- mypy

USER_PROGRAM = '''
"""A typed program using rvcfast as docs/api.md shows."""
from pathlib import Path

import numpy as np
import torch

import rvcfast

conv = rvcfast.Converter.from_pretrained("voice.pth", index="voice.index", f0="rmvpe", device="auto")

one: rvcfast.Result = conv.convert("input.wav", pitch=2, index_rate=0.75, protect=0.33)
warnings: list[str] = one.warnings
settings = rvcfast.ConversionParams(pitch=2, autotune=0.5)
two = conv.convert(Path("input.wav"), params=settings, index_rate=0.5)
three = conv.convert("input.wav", {"pitch": 2})
arrays = [
    conv.convert(np.zeros(16000, dtype=np.float32), 16000),
    conv.convert(torch.zeros(16000), sample_rate=16000),
    conv.convert([0.0] * 16000, 16000),
    conv.convert([[0.0, 0.0]] * 16000, np.int64(16000)),
]
audio: np.ndarray | None = one.audio
rate: int = one.sample_rate
ok: bool = one.ok
print(one.error, one.timings, one.source)

for result in conv.iter_batch(["input.wav", "audio/"], "converted/", pitch=2):
    print(result.source, result.ok, result.output_path or result.error)
results: list[rvcfast.Result] = conv.convert_batch(
    ["a.wav", Path("b.flac"), (np.zeros(16000), 16000), (torch.zeros(8000), 8000), ([0.0] * 16000, 16000)],
    "out/", format="m4a", bitrate=128,
)
alone = conv.convert_batch((np.zeros(16000), 16000))
voices: list[rvcfast.Result] = rvcfast.convert_voices([conv, conv], ["input.wav"], "out/")
'''

# each line is wrong; mypy must say so (the check has teeth)
WRONG_PROGRAM = '''
import rvcfast

conv = rvcfast.Converter.from_pretrained("voice.pth")
conv.convert(5, 16000)
conv.convert_batch([object()])
rate: str = conv.convert("input.wav").sample_rate
'''


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install 'rvcfast[dev]')")
def test_a_typed_user_program_type_checks(tmp_path: Path) -> None:
    (tmp_path / "user_program.py").write_text(textwrap.dedent(USER_PROGRAM))
    (tmp_path / "wrong_program.py").write_text(textwrap.dedent(WRONG_PROGRAM))
    cmd = [
        sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(tmp_path / "cache"), "--follow-imports=silent", "--no-error-summary",
        "--hide-error-context", "--no-pretty",
        str(tmp_path / "user_program.py"), str(tmp_path / "wrong_program.py"),
    ]
    # from the repository root, so that mypy reads this checkout's rvcfast (an editable install's
    # import hook is invisible to it)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if "user_program.py" in e], out.stdout + out.stderr
    wrong = sorted(int(e.split(":")[1]) for e in errors if "wrong_program.py" in e)
    assert wrong == [5, 6, 7], out.stdout + out.stderr

"""What a release ships and what a first install meets.

One module-scoped build does what ``python -m build`` does, without git or network: an sdist
of a copy of the source tree, then a wheel built from that unpacked sdist. The tests read
both archives (contents, metadata, entry points) and collect the tests of the unpacked sdist.
A plain ``pip install rvcfast`` (no extras) is reproduced in one child process that hides
every optional package (``sys.modules[name] = None``, as if never installed): rvcfast
imports, converts, and each optional feature fails with one line naming its
``pip install "rvcfast[...]"``, never a traceback from a third-party import.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

import pytest
from helpers import TinyModels, one_thread_fixture, tiny_models_fixture, write_tone  # noqa: F401

REPO = Path(__file__).resolve().parent.parent

#: What the sdist must hold besides the package: the tests and what they read (MANIFEST.in).
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "constraints.txt", "mkdocs.yml",
                "mkdocs_hooks.py", "noxfile.py")
SOURCE_DIRS = ("rvcfast", "tests", "docs", "examples", "benchmarks")
#: Never part of a distribution: caches, build leftovers, models a working checkout may hold.
_NOT_SOURCE = ("__pycache__", "*.py[cod]", "*.egg-info", "build", "dist", "demo-models", ".pytest_cache",
               ".hypothesis", ".benchmarks")
#: Extras that are for working on rvcfast itself, not features.
DEVELOPMENT_EXTRAS = {"test", "docs", "dev"}
#: No file in the wheel is near this size (the largest module is tens of KB): a guard against
#: model weights or test data slipping into the package.
MAX_WHEEL_FILE = 1 << 20


@dataclass(frozen=True)
class Built:
    source: Path  # the copy the sdist was built from (no .git)
    sdist: Path
    unpacked: Path  # the unpacked sdist, which the wheel was built from
    wheel: Path
    log: str  # the build's output (setuptools' warnings)

    def sdist_names(self) -> set[str]:
        with tarfile.open(self.sdist) as tar:
            return {m.name.partition("/")[2] for m in tar.getmembers() if m.isfile()}

    def wheel_names(self) -> list[str]:
        return zipfile.ZipFile(self.wheel).namelist()

    def dist_info(self, name: str) -> str:
        (path,) = [n for n in self.wheel_names() if n.endswith(f".dist-info/{name}") and n.count("/") == 1]
        return zipfile.ZipFile(self.wheel).read(path).decode("utf-8")


def _build_hook(hook: str, cwd: Path, out: Path) -> tuple[Path, str]:
    """Run setuptools' PEP 517 ``hook`` (build_sdist / build_wheel) in ``cwd`` in a child process."""
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No module named 'setuptools'" in done.stderr:
        pytest.skip("cannot build here: setuptools is not installed")
    assert done.returncode == 0, f"{hook} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return out / done.stdout.strip().splitlines()[-1], done.stdout + done.stderr


def _skip_without_the_build_backend() -> None:
    """pip builds in an isolated environment holding what ``[build-system] requires``; these tests
    call this environment's setuptools, which must be as recent (``license = "MIT"``: 77)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = version("setuptools")
    except PackageNotFoundError:
        pytest.skip("cannot build here: setuptools is not installed")
    major = int(have.split(".")[0]) if have.split(".")[0].isdigit() else 0
    if major < 77:
        pytest.skip(f"cannot build here: pyproject.toml's build needs setuptools>=77, this environment has {have}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _skip_without_the_build_backend()
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, source / name)
    for name in SOURCE_DIRS:
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    (root / "dist").mkdir()
    sdist, log = _build_hook("build_sdist", source, root / "dist")
    with tarfile.open(sdist) as tar:
        tar.extractall(root / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (root / "unpacked").iterdir()
    wheel, wheel_log = _build_hook("build_wheel", unpacked, root / "dist")
    return Built(source, sdist, unpacked, wheel, log + wheel_log)


def _source_version() -> str:
    tree = ast.parse((REPO / "rvcfast" / "_version.py").read_text(encoding="utf-8"))
    (value,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"]  # type: ignore[attr-defined]
    return str(value)


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ the archives


def test_the_wheel_ships_py_typed_and_the_license(built: Built) -> None:
    # before: no py.typed (type checkers ignored rvcfast's annotations) and no licence file
    names = built.wheel_names()
    assert "rvcfast/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert "rvcfast/serve/live.py" in names and "rvcfast/integrations/ray/_job.py" in names  # subpackages too


def test_the_wheel_holds_the_whole_package_and_nothing_else(built: Built) -> None:
    names = built.wheel_names()
    package = {n for n in names if ".dist-info/" not in n}
    # every module and data file of the source package (a folder without __init__.py would be left out)
    expected = {f"rvcfast/{n}" for n in _files_under(built.source / "rvcfast")}
    assert package == expected, f"missing: {sorted(expected - package)}; extra: {sorted(package - expected)}"
    assert {n.split("/")[0] for n in names} == {"rvcfast", built.wheel.name.split("-py")[0] + ".dist-info"}
    sizes = {i.filename: i.file_size for i in zipfile.ZipFile(built.wheel).infolist()}
    assert max(sizes.values()) < MAX_WHEEL_FILE, max(sizes.items(), key=lambda kv: kv[1])


def test_the_sdist_is_the_source_tree_the_tests_need(built: Built) -> None:
    # before: setuptools' default sdist held tests/test_*.py without tests/conftest.py, helpers.py,
    # plugins/, docs/ or examples/: pytest in an unpacked sdist stopped on "No module named 'helpers'"
    names = built.sdist_names()
    expected = set(SOURCE_FILES) | {f"{d}/{n}" for d in SOURCE_DIRS for n in _files_under(built.source / d)}
    assert not expected - names, f"not in the sdist: {sorted(expected - names)[:20]}"
    stray = sorted(n for n in names - expected if not n.startswith("rvcfast.egg-info/") and n not in {"PKG-INFO", "setup.cfg"})
    assert not stray, f"in the sdist but not source: {stray[:20]}"


def test_the_tests_of_an_unpacked_sdist_collect(built: Built) -> None:
    # this file imports helpers (conftest.py and helpers.py must be there); -n 0: no pytest-xdist workers
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:randomly", "tests/test_packaging.py"],
        cwd=built.unpacked, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "test_the_tests_of_an_unpacked_sdist_collect" in done.stdout


# ------------------------------------------------------------------ metadata


def test_one_version_everywhere(built: Built) -> None:
    version = _source_version()
    meta = HeaderParser().parsestr(built.dist_info("METADATA"))
    assert meta["Name"] == "rvcfast" and meta["Version"] == version
    assert built.wheel.name.startswith(f"rvcfast-{version}-") and built.sdist.name == f"rvcfast-{version}.tar.gz"
    shown = subprocess.run([sys.executable, "-m", "rvcfast", "--version"], cwd=built.unpacked,
                           capture_output=True, text=True, timeout=120)
    assert (shown.returncode, shown.stdout.strip()) == (0, f"rvcfast {version}"), shown.stderr[-2000:]


def test_the_metadata_a_package_index_shows(built: Built) -> None:
    meta = HeaderParser().parsestr(built.dist_info("METADATA"))
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip() == (REPO / "README.md").read_text(encoding="utf-8").strip()
    assert meta.get_all("Project-URL"), "no project URL"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert any(r.startswith("torch>=") for r in meta.get_all("Requires-Dist") or [])


def test_the_build_is_free_of_deprecations_and_states_licence_and_pythons(built: Built) -> None:
    assert "is deprecated" not in built.log, [ln for ln in built.log.splitlines() if "deprecated" in ln][:3]
    meta = HeaderParser().parsestr(built.dist_info("METADATA"))
    assert meta["License-Expression"] == "MIT"
    classifiers = set(meta.get_all("Classifier") or [])
    assert {"Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.11", "Typing :: Typed"} <= classifiers


def test_the_entry_points_name_real_objects(built: Built) -> None:
    groups: dict[str, dict[str, str]] = {}
    group = ""
    for line in built.dist_info("entry_points.txt").splitlines():
        if line.startswith("["):
            group = line.strip("[]")
        elif "=" in line:
            name, _, target = (s.strip() for s in line.partition("="))
            groups.setdefault(group, {})[name] = target
    assert groups["console_scripts"] == {"rvcfast": "rvcfast.cli:run"}
    assert set(groups["rvcfast.f0_extractors"]) >= {"rmvpe", "crepe", "crepe-tiny", "fcpe", "harvest", "dio", "pm", "swift"}
    names = set(built.wheel_names())
    for target in [*groups["console_scripts"].values(), *groups["rvcfast.f0_extractors"].values()]:
        module, _, obj = target.partition(":")
        path = module.replace(".", "/")
        file = f"{path}.py" if f"{path}.py" in names else f"{path}/__init__.py"
        assert file in names, target
        source = zipfile.ZipFile(built.wheel).read(file).decode("utf-8")
        assert re.search(rf"^(class|def) {obj}\b", source, re.M), target
    assert "rvcfast/__main__.py" in names  # python -m rvcfast


def test_every_extra_named_anywhere_exists_and_every_feature_extra_is_documented(built: Built) -> None:
    meta = HeaderParser().parsestr(built.dist_info("METADATA"))
    extras = set(meta.get_all("Provides-Extra") or [])
    texts = {p: p.read_text(encoding="utf-8") for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                                                         *sorted((REPO / "rvcfast").rglob("*.py"))]}
    named = {
        (path.relative_to(REPO).as_posix(), extra.strip())
        for path, text in texts.items()
        for group in re.findall(r"rvcfast\[([a-z0-9, -]+)\]", text)
        for extra in group.split(",")
    }
    unknown = sorted((where, extra) for where, extra in named if extra not in extras)
    assert not unknown, f"extras named but not in pyproject.toml: {unknown}"
    table = texts[REPO / "docs" / "getting-started.md"]
    undocumented = sorted(e for e in extras - DEVELOPMENT_EXTRAS if f"`rvcfast[{e}]`" not in table)
    assert not undocumented, f"extras missing from the table of docs/getting-started.md: {undocumented}"


# ------------------------------------------------------------------ a plain install: no extras

#: The importable modules of each extra (what `pip install rvcfast` leaves out).
EXTRA_MODULES = {
    "fcpe": ["torchfcpe"],
    "pm": ["parselmouth"],
    "swift": ["swift_f0", "onnxruntime"],
    "faiss": ["faiss"],
    "progress": ["tqdm"],
    "formant": ["stftpitchshift"],
    "clean": ["noisereduce"],
    "effects": ["pedalboard"],
    "av": ["av"],
    "serve": ["fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "websockets"],
    "ray": ["ray"],
    "onnx": ["onnx", "onnxruntime"],
}

_NO_EXTRAS_CHILD = r"""
import contextlib, io, json, sys, traceback
hidden, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in hidden:
    sys.modules[name] = None  # `import name` now fails as if the package were not installed

import rvcfast
import rvcfast.serve, rvcfast.cli, rvcfast.testing, rvcfast.integrations  # the public entry modules
from rvcfast.cli import main

out = {}
def cli(key, *argv):
    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        try:
            rc = main([str(a) for a in argv])
        except BaseException:  # escaped main(): the console script would print this traceback
            traceback.print_exc(file=err)
            rc = "raised"
    out["cli " + key] = {"rc": rc, "stderr": err.getvalue(), "stdout": so.getvalue()}

def lib(key, fn):
    try:
        fn()
        out["lib " + key] = {"error": None}
    except Exception as exc:
        out["lib " + key] = {"error": type(exc).__module__ + "." + type(exc).__name__, "message": str(exc),
                             "rvcfast": isinstance(exc, rvcfast.RvcfastError), "traceback": traceback.format_exc()}

weights = ["--encoder", p["encoder"], "--f0-weights", p["rmvpe"], "--device", "cpu"]
conv_args = ["convert", p["voice"], p["wav"], "-o"]
cli("info --system", "info", "--system")
cli("backends", "backends")
cli("convert", *conv_args, p["out"] + "/plain", *weights)
cli("serve", "serve", p["root"], "--port", "0")
cli("ray", *conv_args, p["out"] + "/ray", *weights, "--ray", "auto")
cli("onnx export", "export-onnx", p["voice"], "-o", p["out"] + "/v.onnx")
cli("onnx model", "info", p["onnx"])
cli("av input", "convert", p["voice"], p["webm"], "-o", p["out"] + "/webm", *weights)
cli("av output", *conv_args, p["out"] + "/m4a", *weights, "--format", "m4a")
cli("effects", *conv_args, p["out"] + "/fx", *weights, "--effect", "reverb")
cli("clean", *conv_args, p["out"] + "/clean", *weights, "--clean", "0.5")
cli("formant", *conv_args, p["out"] + "/formant", *weights, "--formant", "1.2", "1.0")
for name in ("fcpe", "pm", "swift"):
    cli(name, *conv_args, p["out"] + "/" + name, "--encoder", p["encoder"], "--device", "cpu", "--f0", name)
cli("pm f0", "f0", p["wav"], "-o", p["out"] + "/f0", "--method", "pm")

conv = rvcfast.Converter.from_pretrained(p["voice"], encoder=p["encoder"], f0_weights=p["rmvpe"], device="cpu")
lib("convert", lambda: conv.convert(p["wav"]))
for name in ("fcpe", "pm", "swift"):
    lib(name, lambda name=name: rvcfast.Converter.from_pretrained(p["voice"], encoder=p["encoder"], f0=name, device="cpu"))
lib("formant", lambda: conv.convert(p["wav"], formant=(1.2, 1.0)))
lib("clean", lambda: conv.convert(p["wav"], clean=0.5))
lib("effects", lambda: conv.convert(p["wav"], effects={"reverb": {}}))
lib("av input", lambda: conv.convert(p["webm"]))
lib("av output", lambda: conv.convert_batch([p["wav"]], out_dir=p["out"] + "/lib-m4a", format="m4a"))
lib("onnx export", lambda: rvcfast.export_onnx(p["voice"], p["out"] + "/lib.onnx"))
lib("onnx model", lambda: rvcfast.Converter.from_pretrained(p["onnx"], encoder=p["encoder"], f0_weights=p["rmvpe"]))
lib("serve", lambda: rvcfast.serve.create_app())
lib("ray", lambda: __import__("rvcfast.integrations.ray"))
print("\n" + json.dumps(out))
"""

#: (case, the extra its message must name); the cases are keys of the child's report.
MISSING_EXTRA_CASES = [
    ("cli serve", "serve"), ("cli ray", "ray"), ("cli onnx export", "onnx"), ("cli onnx model", "onnx"),
    ("cli av input", "av"), ("cli av output", "av"), ("cli effects", "effects"), ("cli clean", "clean"),
    ("cli formant", "formant"), ("cli fcpe", "fcpe"), ("cli pm", "pm"), ("cli swift", "swift"), ("cli pm f0", "pm"),
    ("lib fcpe", "fcpe"), ("lib pm", "pm"), ("lib swift", "swift"), ("lib formant", "formant"), ("lib clean", "clean"),
    ("lib effects", "effects"), ("lib av input", "av"), ("lib av output", "av"), ("lib onnx export", "onnx"),
    ("lib onnx model", "onnx"), ("lib serve", "serve"), ("lib ray", "ray"),
]


@pytest.fixture(scope="module")
def no_extras(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("no_extras")
    (work / "junk.webm").write_bytes(bytes(range(256)) * 20)  # needs PyAV to be read at all
    (work / "voice.onnx").write_bytes(b"not read without onnxruntime")
    paths = {
        "root": tiny_models.root, "voice": tiny_models.voice, "encoder": tiny_models.encoder, "rmvpe": tiny_models.rmvpe,
        "wav": write_tone(work, "in.wav"), "webm": work / "junk.webm", "onnx": work / "voice.onnx", "out": work / "out",
    }
    hidden = sorted({m for modules in EXTRA_MODULES.values() for m in modules})
    done = subprocess.run(
        [sys.executable, "-c", _NO_EXTRAS_CHILD, json.dumps(hidden), json.dumps({k: str(v) for k, v in paths.items()})],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "RVCFAST_PROFILE": str(work / "profile.json"), "RVCFAST_HOME": str(work / "home")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, dict] = json.loads(done.stdout.strip().splitlines()[-1])
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


def test_a_plain_install_imports_describes_the_system_and_converts(no_extras: dict[str, dict]) -> None:
    for key in ("cli info --system", "cli backends", "cli convert"):
        assert no_extras[key]["rc"] == 0, (key, no_extras[key]["stderr"][-2000:])
    assert (Path(no_extras["paths"]["out"]) / "plain" / "in.wav").is_file()
    assert no_extras["lib convert"]["error"] is None, no_extras["lib convert"]
    listing = no_extras["cli backends"]["stdout"]
    for name in ("fcpe", "pm", "swift"):  # listed, with what to install
        (line,) = [ln for ln in listing.splitlines() if ln.split()[:1] == [name]]
        assert f"rvcfast[{name}]" in line, line


@pytest.mark.parametrize(("case", "extra"), MISSING_EXTRA_CASES, ids=[c for c, _ in MISSING_EXTRA_CASES])
def test_a_feature_without_its_extra_names_the_install_line(no_extras: dict[str, dict], case: str, extra: str) -> None:
    got = no_extras[case]
    if case.startswith("cli "):
        text = got["stderr"] + got["stdout"]
        assert got["rc"] == 1, (got["rc"], text[-2000:])
        assert "Traceback" not in text, text[-3000:]
        lines = [ln for ln in text.splitlines() if f"rvcfast[{extra}]" in ln and "pip install" in ln]
        assert lines, text[-2000:]
    else:
        assert got["error"] is not None and got["rvcfast"], got.get("traceback", got)
        assert "\n" not in got["message"], got["message"]
        assert f"rvcfast[{extra}]" in got["message"] and "pip install" in got["message"], got["message"]


def test_every_install_line_can_be_pasted_into_any_shell(no_extras: dict[str, dict]) -> None:
    # zsh, macOS's default shell, reads rvcfast[pm] as a glob and refuses it: the hint must be quoted
    unquoted = []
    for case, extra in MISSING_EXTRA_CASES:
        got = no_extras[case]
        text = got.get("message") or got.get("stderr", "")
        if f'pip install "rvcfast[{extra}]"' not in text:
            unquoted.append((case, text.strip().splitlines()[-1]))
    listing = no_extras["cli backends"]["stdout"]
    unquoted += [("cli backends", ln) for ln in listing.splitlines() if "rvcfast[" in ln and '"rvcfast[' not in ln]
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        unquoted += [(page.name, m.group(0)) for m in re.finditer(r"pip install (-U )?rvcfast\[[^\]]*\]", text)]
    assert not unquoted, unquoted

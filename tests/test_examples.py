"""Smoke tests: every script in examples/ and every runnable code block in docs/, with tiny random models.

``examples/make_demo_models.py`` writes small random-weight models in the real formats into a
temporary folder; each example then runs in its own subprocess against them. Code blocks in
the docs marked with an ``<!-- test -->`` line just before the fence are extracted and run
the way the pages tell readers to: in the demo folder, with ``RVCFAST_HOME`` pointing at it
(so ``hubert_base.pt`` and ``rmvpe.pt`` are found), Python blocks of a page sharing one
namespace in order, and ``rvcfast ...`` lines of bash blocks run through ``rvcfast.cli.main``
(each must exit 0). The MkDocs build check runs when mkdocs is installed (the ``docs`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DOCS = REPO / "docs"
#: Pages whose ``<!-- test -->`` blocks are run.
DOC_PAGES = ["getting-started.md", "cli.md", "api.md", "plugins.md", "realtime.md"]

_MARK = re.compile(r"^\s*<!--\s*test\s*-->\s*$")
_FENCE = re.compile(r"^```(\w+)\s*$")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # One thread per process: the tiny models gain nothing from more on a shared machine.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo models, written by the script's main() in-process (saves a subprocess start)."""
    out = tmp_path_factory.mktemp("demo")
    argv = sys.argv
    sys.argv = ["make_demo_models.py", "--out", str(out)]
    try:
        _load_example("make_demo_models").main()
    finally:
        sys.argv = argv
    for name in ("voice.pth", "voice48k.pth", "voice.index", "hubert_base.pt", "rmvpe.pt", "input.wav"):
        assert (out / name).is_file(), name
    assert len(list((out / "audio").glob("*.wav"))) == 3
    return out


# ---------------------------------------------------------------------------------------------- examples

# The example scripts run as ``__main__`` in one subprocess (not in the pytest process), one after
# the other with their own ``sys.argv``: a separate interpreter per script would spend most of this
# file's time importing torch again.
_EXAMPLES_RUNNER = """
import contextlib, io, json, runpy, sys, traceback

jobs, report = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for name, argv in jobs:
    out, err = io.StringIO(), io.StringIO()
    sys.argv = argv
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            status = 1
    results[name] = {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}
with open(report, "w", encoding="utf-8") as fh:
    json.dump(results, fh)
"""


@pytest.fixture(scope="module")
def ran(demo, tmp_path_factory) -> dict:
    """Run every example script once; ``ran[name]`` holds its exit status, output and output folder."""
    work = tmp_path_factory.mktemp("examples")
    m = str(demo)
    jobs = {
        "batch_folder": ["--models", m, "--output", str(work / "batch"), "--device", "cpu"],
        "numpy_in_out": ["--models", m, "--save", str(work / "numpy.wav")],
        "swap_f0_backends": ["--models", m, "--backends", "rmvpe", "dio", "hybrid:rmvpe+dio", "--output", str(work / "f0")],
        "several_voices": ["--models", m, "--output", str(work / "voices")],
    }
    argv = [[name, [str(EXAMPLES / f"{name}.py"), *args]] for name, args in jobs.items()]
    runner, report = work / "run_examples.py", work / "report.json"
    runner.write_text(_EXAMPLES_RUNNER, encoding="utf-8")
    _run([str(runner), json.dumps(argv), str(report)], cwd=work, timeout=300)
    results = json.loads(report.read_text(encoding="utf-8"))
    for r in results.values():
        r["work"] = work
    return results


def _ok(ran: dict, name: str) -> dict:
    r = ran[name]
    assert r["status"] == 0, f"{name}.py exited with {r['status']}\n--- stdout\n{r['stdout']}\n--- stderr\n{r['stderr']}"
    return r


def test_batch_folder(ran):
    r = _ok(ran, "batch_folder")
    assert sorted(p.name for p in (r["work"] / "batch").iterdir()) == ["clip1.wav", "clip2.wav", "clip3.wav"]
    assert "3 files (0 failed, 0 skipped)" in r["stdout"]


def test_numpy_in_out(ran):
    r = _ok(ran, "numpy_in_out")
    assert (r["work"] / "numpy.wav").is_file()
    assert "float32 at 40000 Hz" in r["stdout"] and "array[2]" in r["stdout"]


def test_swap_f0_backends(ran):
    r = _ok(ran, "swap_f0_backends")
    assert len(list((r["work"] / "f0").glob("*.wav"))) == 4  # three backends + the FixedPitch object
    assert "fixed" in r["stdout"] and "220.0 Hz" in r["stdout"]


def test_several_voices(ran):
    r = _ok(ran, "several_voices")
    voices = r["work"] / "voices"
    assert (voices / "voice" / "input.wav").is_file() and (voices / "voice48k" / "input.wav").is_file()
    assert "content encoder loads: 1, RMVPE loads: 1" in r["stdout"]
    assert "F0 tracks computed 1, reused 1" in r["stdout"]  # the second voice reads the first one's analysis


def test_f0_plugin_example(tmp_path):
    plugin = EXAMPLES / "f0_plugin"
    if sys.version_info >= (3, 11):
        import tomllib

        meta = tomllib.loads((plugin / "pyproject.toml").read_text(encoding="utf-8"))
        target = meta["project"]["entry-points"]["rvcfast.f0_extractors"]["yin-example"]
        module, attr = target.split(":")
        assert (plugin / module / "__init__.py").is_file()
        spec = importlib.util.spec_from_file_location(module, plugin / module / "__init__.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        import rvcfast

        assert isinstance(getattr(mod, attr)(device="cpu"), rvcfast.F0Extractor)
    # the plugin's own tests, as its README tells users to run them
    _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin / "tests")], cwd=tmp_path)


# ---------------------------------------------------------------------------------------------- docs


def extract_blocks(page: Path) -> list[tuple[str, int, str]]:
    """``(language, first code line number, code)`` of each fenced block preceded by ``<!-- test -->``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if _MARK.match(lines[i]):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            m = _FENCE.match(lines[j]) if j < len(lines) else None
            if m is None:
                raise AssertionError(f"{page.name}:{i + 1}: <!-- test --> is not followed by a fenced code block")
            k = j + 1
            while k < len(lines) and lines[k].strip() != "```":
                k += 1
            blocks.append((m.group(1), j + 2, "\n".join(lines[j + 1 : k]) + "\n"))
            i = k
        i += 1
    return blocks


_RUNNER = '''
import shlex
import sys

from rvcfast.cli import main as rvcfast_main

BLOCKS = {blocks!r}

namespaces = {{}}
for page, lang, line, code in BLOCKS:
    print(f"== {{page}}:{{line}} ({{lang}})", flush=True)
    if lang == "python":
        ns = namespaces.setdefault(page, {{"__name__": "__main__"}})
        exec(compile("\\n" * (line - 1) + code, page, "exec"), ns)
        continue
    for offset, command in enumerate(code.splitlines()):
        argv = shlex.split(command, comments=True)
        if not argv:
            continue
        if argv[0] != "rvcfast":
            sys.exit(f"{{page}}:{{line + offset}}: only `rvcfast ...` lines can be tested, got {{command!r}}")
        status = rvcfast_main(argv[1:])
        if status != 0:
            sys.exit(f"{{page}}:{{line + offset}}: `{{command}}` exited with status {{status}}")
print("all blocks ran")
'''


def test_doc_pages_have_runnable_blocks():
    blocks = extract_blocks(DOCS / "getting-started.md")
    assert sum(lang == "python" for lang, _, _ in blocks) >= 4
    assert any(lang == "bash" for lang, _, _ in blocks)
    for page in DOC_PAGES:
        for lang, line, _ in extract_blocks(DOCS / page):
            assert lang in ("python", "bash"), f"{page}:{line}: cannot run a {lang!r} block"


def test_doc_code_blocks_run(demo, tmp_path):
    blocks = [(str(DOCS / page), lang, line, code) for page in DOC_PAGES for lang, line, code in extract_blocks(DOCS / page)]
    runner = tmp_path / "run_doc_blocks.py"
    runner.write_text(_RUNNER.format(blocks=blocks), encoding="utf-8")
    home = tmp_path / "cache"  # keep the user's real cache out of it
    proc = _run([str(runner)], cwd=demo, timeout=300, RVCFAST_HOME=str(demo), XDG_CACHE_HOME=str(home))
    assert "all blocks ran" in proc.stdout
    assert (demo / "output.wav").is_file() and (demo / "converted" / "input.wav").is_file()


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs / mkdocstrings not installed (pip install -e '.[docs]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    # the docstrings' Sphinx roles (:class:`~rvcfast.Converter`) show as code, not as raw role text
    assert not re.search(r":(class|meth|func|attr|mod|data|exc|obj):<code>", api)
    assert "<code>ConversionParams</code>" in api

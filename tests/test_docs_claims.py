"""What the user documentation states, checked against what the code does.

``tests/test_examples.py`` runs the docs' code blocks; this file checks the statements and
tables around them: options and defaults, quoted error messages, sample output, the README's
set-up commands, the extras table and the pages the home page links.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.cli import build_parser, main
from rvcfast.errors import ParameterError
from rvcfast.params import ConversionParams, param_specs

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def read(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


@contextlib.asynccontextmanager
async def _healthy_client(app):  # type: ignore[no-untyped-def]
    """An in-process client of ``app`` once its models are loaded (``/health`` answers 200)."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
        end = time.monotonic() + 120
        while (await client.get("/health")).status_code != 200:
            assert time.monotonic() < end, "the app never became healthy"
            await asyncio.sleep(0.05)
        yield client


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a Markdown heading line) up to the next heading of any level."""
    start = text.index(heading + "\n") + len(heading) + 1
    m = re.search(r"^#{1,6} ", text[start:], re.M)
    return text[start : start + m.start()] if m else text[start:]


# ---------------------------------------------------------------------------------------------- options


def test_every_command_line_option_is_documented():
    sub = build_parser()._rvcfast_subparsers  # type: ignore[attr-defined]
    pages = {"serve": read("docs/serving.md")}
    for name, parser in sub.choices.items():
        doc = pages.get(name, read("docs/cli.md"))
        flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        missing = [f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", doc)]
        assert not missing, f"`rvcfast {name}` options missing from the docs: {missing}"


def test_parameters_page_lists_every_parameter_with_its_default():
    rows = {r[0].strip("`"): r for r in table_rows(section(read("docs/parameters.md"), "# Conversion parameters"))}
    specs = list(param_specs())
    missing = [s.name for s in specs if s.name not in rows]
    assert not missing, f"parameters.md does not list {missing}"
    for s in specs:
        documented = rows[s.name][1].strip("`")
        if s.default is None or isinstance(s.default, bool):
            assert documented == str(s.default), (s.name, documented)
        elif isinstance(s.default, str):
            assert documented == f'"{s.default}"', (s.name, documented, s.default)
        else:
            assert float(documented) == s.default, (s.name, documented, s.default)


def test_cli_convert_table_defaults_match_the_parameters():
    rows = table_rows(section(read("docs/cli.md"), "## `rvcfast convert`"))
    by_flag = {re.match(r"`(--[\w-]+)", r[0]).group(1): r for r in rows if re.match(r"`(--[\w-]+)", r[0])}
    for s in param_specs():
        assert s.flag in by_flag, f"{s.flag} is not in cli.md's convert table"
        if s.kind == "number":
            shown = re.match(r"`(-?[\d.]+)`", by_flag[s.flag][1])
            assert shown and float(shown.group(1)) == s.default, (s.flag, by_flag[s.flag][1], s.default)


# ---------------------------------------------------------------------------------------------- messages


def _value_from_message(message: str):
    quoted = re.search(r"got '(.*)' \((\w+)\)$", message)
    if quoted:
        return quoted.group(1)
    return ast.literal_eval(re.search(r"got (\S+)$", message).group(1))


def test_quoted_parameter_errors_are_the_real_messages():
    """Every ``<parameter> must ..., got <value>`` message in reliability.md is what validate() says."""
    text = section(read("docs/reliability.md"), "## Parameters and options")
    fields = {s.name for s in param_specs()}
    checked = 0
    for row in table_rows(text):
        for message in re.findall(r"`(?:ParameterError: )?(\w+ must [^`]*, got [^`]+)`", row[-1]):
            name = message.split()[0]
            if name not in fields:
                continue
            value = _value_from_message(message)
            with pytest.raises(ParameterError) as info:
                ConversionParams(**{name: value}).validate(None)
            assert str(info.value) == message
            checked += 1
    assert checked >= 8


def test_array_errors_carry_the_documented_prefix(tiny_models):
    text = read("docs/reliability.md")
    assert "(arrays: `array input: <problem>`)" in text
    conv = tiny_models.converter()
    with pytest.raises(rvcfast.AudioError) as info:
        conv.convert(np.zeros((2, 16000), np.float32), 16000)
    assert str(info.value).startswith("array input: ")


def test_cli_failure_sample_quotes_the_real_decode_error(tmp_path):
    shown = re.search(r"broken\.wav: FAILED: (.+)", read("docs/cli.md")).group(1).strip()
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    with pytest.raises(rvcfast.AudioError) as info:
        rvcfast.load_audio_16k(bad)
    assert str(info.value).startswith(f"{bad}: {shown}"), (str(info.value), shown)


# ---------------------------------------------------------------------------------------------- sample output


def test_info_sample_matches_the_real_output(tiny_models):
    block = re.search(r"```text\n(model .*?)```", section(read("docs/cli.md"), "## `rvcfast info`"), re.S).group(1)
    shown = []
    for line in block.splitlines():
        if line.strip() == "...":
            break
        shown.append(re.split(r"\s{2,}", line.strip())[0])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", str(tiny_models.voice)]) == 0
    labels = [re.split(r"\s{2,}", line.strip())[0] for line in out.getvalue().splitlines() if line.strip()]
    assert labels[: len(shown)] == shown


# ---------------------------------------------------------------------------------------------- set-up and pages


def _extras() -> dict[str, list[str]]:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    return tomllib.loads(read("pyproject.toml"))["project"]["optional-dependencies"]


def test_readme_set_up_is_install_then_tests():
    text = section(read("README.md"), "## Set-up (fresh machine)")
    commands = [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(commands) == 2, commands
    install, tests = (shlex.split(c) for c in commands)
    assert install[:4] == ["python", "-m", "pip", "install"] and tests == ["python", "-m", "pytest"]
    assert (REPO / install[install.index("-c") + 1]).is_file()
    extra = re.fullmatch(r"\.\[(\w+)\]", install[-1]).group(1)
    assert extra in _extras()
    assert "torch==" in read("constraints.txt")


def test_getting_started_lists_every_run_time_extra():
    rows = table_rows(section(read("docs/getting-started.md"), "## Install"))
    listed = {m.group(1) for r in rows if (m := re.fullmatch(r"`rvcfast\[(\w+)\]`", r[0]))}
    wanted = set(_extras()) - {"test", "docs", "dev"}
    assert listed == wanted, sorted(wanted ^ listed)
    everything = {e for spec in _extras()["all"] for e in re.search(r"\[(.*)\]", spec).group(1).split(",")}
    assert everything == wanted - {"faiss", "all"}  # what the table's `all` row says


def test_links_between_pages_land_on_a_heading():
    """A link ``page.md#anchor`` (or ``#anchor``) names a heading of that page (MkDocs' slugs):
    a renamed heading leaves no link pointing nowhere."""
    from markdown.extensions.toc import slugify

    pages = {p.name: read(f"docs/{p.name}") for p in DOCS.glob("*.md")}
    headings = {
        name: {slugify(re.sub(r"[`*]", "", h).strip(), "-") for h in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)}
        for name, text in pages.items()
    }
    links = [(name, page or name, anchor) for name, text in pages.items() for page, anchor in re.findall(r"\]\(([\w-]*\.md)?#([\w-]+)\)", text)]
    assert len(links) > 20 and any(n == "troubleshooting.md" for n, _, _ in links)
    broken = [link for link in links if link[2] not in headings.get(link[1], set())]
    assert not broken, broken


def test_troubleshooting_names_only_real_options():
    sub = build_parser()._rvcfast_subparsers  # type: ignore[attr-defined]
    real = {o for parser in sub.choices.values() for a in parser._actions for o in a.option_strings}
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", read("docs/troubleshooting.md")))
    assert len(named) > 10 and not named - real - {"--traceback"}, sorted(named - real)


def test_home_page_links_every_page():
    nav = re.findall(r"^\s+- [^:]+: (\S+\.md)$", read("mkdocs.yml"), re.M)
    assert len(nav) >= 10
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", section(read("docs/index.md"), "## Where to go next")))
    missing = [p for p in nav if p != "index.md" and p not in linked]
    assert not missing, f"docs/index.md does not link {missing}"


# ---------------------------------------------------------------------------------------------- server


def test_server_status_for_a_form_without_its_file(tiny_models, tmp_path):
    """serving.md's status table: a multipart form without ``file`` is a 422 naming it; a URL-encoded form a 415."""
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from rvcfast.serve import create_app

    statuses = {}
    for row in table_rows(section(read("docs/serving.md"), "## Limits and errors")):
        if row[0].isdigit():
            statuses[int(row[0])] = row[1]
    assert "multipart form without its `file` field" in statuses[422]
    assert "URL-encoded form" in statuses[415]

    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "alice.pth").write_bytes(tiny_models.voice.read_bytes())
    app = create_app(voices=[voices], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
                     threads=1, jobs_dir=tmp_path / "spool")

    async def body() -> tuple:
        async with _healthy_client(app) as client:
            # multipart/form-data with fields only (what `curl -F voice=alice` sends)
            no_file = await client.post("/v1/convert", files={"voice": (None, "alice")})
            urlencoded = await client.post("/v1/convert", data={"voice": "alice"})
            return no_file, urlencoded

    try:
        no_file, urlencoded = asyncio.run(body())
    finally:
        app.state.rvcfast.close()
    assert no_file.status_code == 422 and no_file.json()["parameter"] == "file", no_file.text
    assert urlencoded.status_code == 415, urlencoded.text


def test_stream_header_sizes_are_as_documented():
    from rvcfast.serve.encode import wav_stream_header

    assert "RIFF and data\nsizes `0xFFFFFFFF`" in read("docs/serving.md")
    header = wav_stream_header(40000, "PCM_16")
    buf = io.BytesIO(header)
    assert buf.read(4) == b"RIFF" and int.from_bytes(buf.read(4), "little") == 0xFFFFFFFF
    assert header[-8:-4] == b"data" and int.from_bytes(header[-4:], "little") == 0xFFFFFFFF


def test_batch_result_order_is_as_documented(tiny_models, tmp_path):
    """architecture.md: iter_batch reports a decode failure as soon as it is found; convert_batch keeps input order."""
    text = read("docs/architecture.md")
    assert "as soon as it is found (`convert_batch` returns every result in input order)" in text
    sr = 16000
    good = tmp_path / "a.wav"
    sf.write(good, 0.1 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr), sr)
    bad = tmp_path / "b.wav"
    bad.write_text("not audio")
    conv = tiny_models.converter()
    yielded = [Path(r.source).name for r in conv.iter_batch([good, bad], tmp_path / "out1")]
    returned = [Path(r.source).name for r in conv.convert_batch([good, bad], tmp_path / "out2")]
    assert yielded == ["b.wav", "a.wav"] and returned == ["a.wav", "b.wav"]


def test_paths_open_without_the_api_key_are_as_documented():
    pytest.importorskip("fastapi")
    from rvcfast.serve.middleware import OPEN_PATHS

    row = next(r for r in table_rows(read("docs/serving.md")) if r[0] == "401")
    said_open = set(re.findall(r"`(/[\w.]+)`", row[1].split("stay open")[0]))
    assert said_open == {"/health", "/docs", "/openapi.json"} and said_open <= OPEN_PATHS
    assert "`/metrics` needs the key" in row[1] and "/metrics" not in OPEN_PATHS


def test_the_readme_links_work_where_it_is_read_off_the_repository() -> None:
    """The README is also the package's page on PyPI, where a relative link leads nowhere: every
    link is absolute, and each into this repository names a file that exists here."""
    import tomllib

    urls = tomllib.loads(read("pyproject.toml"))["project"]["urls"]
    home = urls["Source"].rstrip("/") + "/blob/main/"
    links = re.findall(r"\]\(([^)\s]+)\)", read("README.md"))
    assert links
    relative = [t for t in links if not re.match(r"[a-z]+://", t) and not t.startswith("#")]
    assert not relative, f"relative links in README.md (broken on PyPI): {relative}"
    ours = [t for t in links if t.startswith(home)]
    assert ours
    missing = [t for t in ours if not (REPO / t[len(home):].split("#")[0]).exists()]
    assert not missing, f"README links to files this repository does not have: {missing}"


def test_metrics_row_names_every_metric_and_the_log_lines_are_the_real_ones(tiny_models, tmp_path):
    """serving.md: the `GET /metrics` row names every metric family the server exposes (and no
    other), and the server's own log lines it quotes are what the server logs."""
    import logging

    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from rvcfast.serve import create_app

    text = read("docs/serving.md")
    row = next(r for r in table_rows(section(text, "## Endpoints")) if r[0] == "`GET /metrics`")
    documented = set(re.findall(r"`(rvcfast_\w+)`", row[1]))
    quoted = [q for q in re.findall(r"`((?:voice \w+ )?(?:models )?loaded in [^`]*)`", text)]
    assert len(quoted) == 2, quoted

    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "alice.pth").write_bytes(tiny_models.voice.read_bytes())
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("rvcfast.serve")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    app = create_app(voices=[voices], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
                     threads=1, jobs_dir=tmp_path / "spool")

    async def scrape() -> str:
        async with _healthy_client(app) as client:
            return (await client.get("/metrics")).text

    try:
        metrics = asyncio.run(scrape())
    finally:
        app.state.rvcfast.close()
        logger.removeHandler(handler)
        logger.setLevel(level)
    exposed = set(re.findall(r"^# TYPE (\w+) ", metrics, re.M))
    assert documented == exposed, f"documented only: {documented - exposed}; not documented: {exposed - documented}"
    for line in quoted:
        pattern = re.escape(line).replace(r"1\.2", r"\d+\.\d").replace(r"2\.4", r"\d+\.\d")
        assert any(re.fullmatch(pattern, m) for m in logged), (line, logged)


def test_a_pytorch_file_given_as_an_index_gets_the_quoted_refusal(tiny_models, tmp_path):
    """reliability.md quotes what loading a voice .pth (or a raw pickle) as an index says."""
    import pickle

    from rvcfast.index import load_index

    row = next(r for r in table_rows(read("docs/reliability.md")) if r[0].startswith("PyTorch file (a voice `.pth`)"))
    whole = re.search(r"`<file>: (not a faiss index file: [^`]*)`", row[1]).group(1)
    pickled = re.search(r"a raw pickle: `(it is [^`]*), \.\.\.`", row[1]).group(1)
    pth = tmp_path / "voice.index"
    pth.write_bytes(tiny_models.voice.read_bytes())
    raw = tmp_path / "raw.index"
    raw.write_bytes(pickle.dumps({"weight": {}}))
    with pytest.raises(rvcfast.ModelLoadError) as info:
        load_index(pth)
    assert str(info.value) == f"{pth}: {whole}"
    with pytest.raises(rvcfast.ModelLoadError) as info:
        load_index(raw)
    assert str(info.value).startswith(f"{raw}: not a faiss index file: {pickled}")


def test_rvcfast_f0_checks_the_track_as_the_plugin_page_says(monkeypatch, tmp_path):
    """plugins.md: `rvcfast f0` fails an input whose track holds NaN (no file written), as a conversion does."""
    import rvcfast.f0.registry as registry

    text = read("docs/plugins.md")
    assert "look for `nan` or negative" not in text
    assert "Both check the track as described above" in text

    class NaNTrack:
        name, sample_rate, hop_length = "nan-track", 16000, 160

        def extract(self, audio16k):
            f0 = np.full(len(audio16k) // 160 + 1, 200.0)
            f0[3] = np.nan
            return f0

        def extract_batch(self, audios):
            return [self.extract(a) for a in audios]

    monkeypatch.setattr(registry, "build_f0_extractor", lambda *a, **k: NaNTrack())
    wav = tmp_path / "in.wav"
    sf.write(wav, 0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000), 16000)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["f0", str(wav), "-o", str(tmp_path / "f0"), "-m", "dio"]) == 1
    assert "NaN, infinite or negative F0 values" in err.getvalue()
    assert not list((tmp_path / "f0").glob("*"))


def test_export_onnx_output_name_refusal_is_as_quoted(tiny_models, tmp_path, monkeypatch):
    """onnx.md: on the command line a file name for -o must end in .onnx (usage error, status 2)."""
    quoted = re.search(r"usage error, status 2: `([^`]+)`", read("docs/onnx.md")).group(1)
    name = re.fullmatch(r"output (\S+) does not end in \.onnx", quoted).group(1)
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export-onnx", str(tiny_models.voice), "-o", name]) == 2
    assert quoted in err.getvalue()
    assert not (tmp_path / name).exists()


def test_differences_lists_every_core_runtime_dependency():
    """differences.md's "Runtime dependencies" row names every package a plain install brings."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    row = next(r for r in table_rows(read("docs/differences.md")) if r[0] == "Runtime dependencies")
    deps = [re.match(r"[\w.-]+", d).group(0) for d in tomllib.loads(read("pyproject.toml"))["project"]["dependencies"]]
    named = {"pyworld-prebuilt": "pyworld"}  # the distribution's module
    missing = [d for d in deps if d != "typing-extensions" and not re.search(rf"\b{named.get(d, d)}\b", row[-1])]
    assert not missing, f"differences.md's runtime dependencies leave out {missing}"


_MUTATING_CALLS = {"setdefault", "pop", "popitem", "clear", "update", "append", "add", "remove", "discard", "extend", "insert"}
_CONTAINER_CALLS = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "WeakValueDictionary", "WeakKeyDictionary"}


def _module_containers(tree: ast.Module) -> set[str]:
    """Names bound at module level to a new mutable container."""
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        call = value.func if isinstance(value, ast.Call) else None
        called = getattr(call, "id", None) or getattr(call, "attr", None)
        if isinstance(value, (ast.Dict, ast.List, ast.Set)) or called in _CONTAINER_CALLS:
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _mutated_module_state(tree: ast.Module) -> set[str]:
    """Module-level containers the module changes (item assignment, a mutating call), and `global` names."""
    names = _module_containers(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found |= set(node.names)
        targets = getattr(node, "targets", None) or ([node.target] if isinstance(node, ast.AugAssign) else [])
        found |= {t.value.id for t in targets if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)} & names
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr in _MUTATING_CALLS and isinstance(func.value, ast.Name):
            found |= {func.value.id} & names
    return found


def test_module_level_mutable_state_is_only_where_architecture_says():
    bullet = re.search(r"\* \*\*Module-level mutable state\*\*(.*?)(?:\n\*|\Z)", read("docs/architecture.md"), re.S).group(1)
    documented = set(re.findall(r"`([\w/]+\.py)`", bullet))
    package = REPO / "rvcfast"
    found = {
        path.relative_to(package).as_posix()
        for path in sorted(package.rglob("*.py"))
        if _mutated_module_state(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert found == documented, f"state not documented: {found - documented}; documented, not found: {documented - found}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(path: Path, modules: set[str]) -> set[str]:
    """The rvcfast modules ``path`` imports anywhere in it (inside functions and for type hints too);
    a package's ``__init__`` is not counted as imported by its own modules."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
                break
    return found


def test_the_architecture_rules_hold_no_loops_one_way_and_short_modules():
    """docs/architecture.md, "Rules the code keeps": no two modules import each other (not even in
    a function or for type hints), stage modules never import the engine or a front end, the
    engine no front end, and no module is over 800 lines."""
    files = sorted((REPO / "rvcfast").rglob("*.py"))
    modules = {_module_name(p) for p in files}
    edges = {_module_name(p): _imports_of(p, modules) for p in files}
    rules = read("docs/architecture.md")
    assert "* **No loops.**" in rules and "* **One way.**" in rules and "none over 800 lines" in rules

    def reaches(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    loops = sorted(m for m in modules if m in reaches(m))
    assert not loops, f"modules in an import loop: {loops}"
    front_ends = {"rvcfast.api", "rvcfast.batch", "rvcfast.voices", "rvcfast.realtime", "rvcfast.cli", "rvcfast.serve",
                  "rvcfast.integrations"}
    stages = [m for m in modules if m.startswith(("rvcfast.f0", "rvcfast.models", "rvcfast.index"))] + [
        "rvcfast.audio", "rvcfast.pipeline", "rvcfast.segment", "rvcfast.dsp", "rvcfast.writing", "rvcfast.effects"]
    def front_end(module: str) -> bool:
        return ".".join(module.split(".")[:2]) in front_ends  # rvcfast.serve.app, rvcfast.integrations.ray._job...

    for stage in stages:
        above = {t for t in edges[stage] if t == "rvcfast.engine" or front_end(t)}
        assert not above, f"{stage} imports {above}"
    assert not {t for t in edges["rvcfast.engine"] if front_end(t)}
    long = {p.relative_to(REPO).as_posix(): n for p in files if (n := len(p.read_text(encoding="utf-8").splitlines())) > 800}
    assert not long, f"modules over 800 lines: {long}"

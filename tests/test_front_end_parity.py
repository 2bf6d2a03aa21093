"""One engine under every front end: the library, ``rvcfast convert`` and ``rvcfast serve`` give
the same samples for the same input, voice and settings (docs/parameters.md, docs/serving.md).

The walk of an engineer who prototyped with ``Converter.convert_batch``, moved the job to the
command line, then to a server, and diffs the outputs:

* a real speech clip (CMU ARCTIC, 1.5 s) and a stereo clip made of two of them, the golden
  fixtures' audible random voice with its index, the noise seeded (``seed=7``), one torch thread
  everywhere: the decoded samples of the library's file, the command line's file and the
  server's answers (synchronous, job, and ``stream=true`` where it is allowed) are equal, bit
  for bit, for the defaults, a key/index/protect set, a hybrid F0, Applio's formant shift,
  autotune, effects and noise reduction, a 44.1 kHz FLAC output, ``channels="each"`` and
  ``loudness="match"``; each set also changes the output (the setting reached the engine);
* every conversion parameter, set to a value other than its default, arrives in the
  ``ConversionParams`` the engine runs with, from each front end (tiny models);
* the "Names in each front end" table of docs/parameters.md names every parameter, and each
  command-line flag and server field it lists is accepted and sets that parameter.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from helpers import golden_converter, one_thread_fixture, tiny_models_fixture  # noqa: F401
from serve_helpers import run_in_process

import rvcfast
from rvcfast.params import ConversionParams, param_specs

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

REPO = Path(__file__).resolve().parent.parent
SEED = 7
DEADLINE = 120.0


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


# (name, library keywords, command-line options, server fields, input, format, F0 backend)
CASES: list[tuple[str, dict[str, Any], list[str], dict[str, str], str, str, str]] = [
    ("defaults", {}, [], {}, "mono", "wav", "rmvpe"),
    (
        "key_index_protect",
        {"pitch": 5, "index_rate": 0.5, "protect": 0.2},
        ["--pitch", "5", "--index-rate", "0.5", "--protect", "0.2"],
        {"pitch": "5", "index_rate": "0.5", "protect": "0.2"},
        "mono", "wav", "rmvpe",
    ),
    (
        "hybrid_f0",
        {"filter_radius": 1},
        ["--filter-radius", "1"],
        {"filter_radius": "1"},
        "mono", "wav", "hybrid:rmvpe+harvest",
    ),
    (
        "applio_extras",
        {"formant": (1.0, 1.2), "autotune": 0.5, "effects": {"reverb": {"room_size": 0.3}}, "clean": 0.5},
        ["--formant", "1.0", "1.2", "--autotune", "0.5", "--effect", "reverb:room_size=0.3", "--clean", "0.5"],
        {"formant": "1.0,1.2", "autotune": "0.5", "effects": json.dumps({"reverb": {"room_size": 0.3}}), "clean": "0.5"},
        "mono", "wav", "rmvpe",
    ),
    ("flac_44100", {"output_sample_rate": 44100}, ["--sample-rate", "44100"], {"sample_rate": "44100"}, "mono", "flac", "rmvpe"),
    ("channels_each", {"channels": "each"}, ["--channels", "each"], {"channels": "each"}, "stereo", "wav", "rmvpe"),
    ("loudness_match", {"loudness": "match"}, ["--loudness", "match"], {"loudness": "match"}, "mono", "wav", "rmvpe"),
]
#: Cases also sent as a job and as a stream (every case is sent as a synchronous request).
JOB_AND_STREAM = ("defaults", "key_index_protect")
EXTRAS = {"applio_extras": ("stftpitchshift", "noisereduce", "pedalboard")}


class Walk:
    """The inputs, the library's converters and the server of the walk (one per module)."""

    def __init__(self, golden: Path, shared_audio: Path, root: Path) -> None:
        from rvcfast.serve import create_app

        self.models = golden / "models"
        self.index = self.models / "index" / "v2_768.index"
        self.root = root
        speech, rate = sf.read(shared_audio / "arctic_a0009.wav")
        other, _ = sf.read(shared_audio / "arctic_a0007.wav")
        n = int(1.5 * rate)
        self.inputs = {"mono": root / "in" / "clip.wav", "stereo": root / "in" / "stereo.wav"}
        self.inputs["mono"].parent.mkdir(parents=True)
        sf.write(self.inputs["mono"], speech[:n], rate, subtype="PCM_16")
        sf.write(self.inputs["stereo"], np.stack([speech[:n], 0.5 * other[:n]], axis=1), rate, subtype="PCM_16")
        voices = root / "voices"
        voices.mkdir()
        shutil.copy(self.models / "voice_v2_40k_f0.pth", voices / "alice.pth")
        shutil.copy(self.index, voices / "alice.index")  # the server finds a voice's index beside it
        self.app = create_app(
            voices=[voices], encoder=self.models / "contentvec_hf", f0_weights=self.models / "rmvpe_reduced.pt",
            device="cpu", threads=1, jobs_dir=root / "spool",
        )
        self._converters: dict[str, rvcfast.Converter] = {}
        self._default: np.ndarray | None = None

    def converter(self, f0: str) -> rvcfast.Converter:
        if f0 not in self._converters:
            self._converters[f0] = rvcfast.Converter.from_pretrained(
                self.models / "voice_v2_40k_f0.pth", index=self.index, encoder=self.models / "contentvec_hf", f0=f0,
                f0_weights=self.models / "rmvpe_reduced.pt", device="cpu",
            )
        return self._converters[f0]

    def default_output(self) -> np.ndarray:
        """The library's output of the mono clip with the default settings (once)."""
        if self._default is None:
            self._default = self.library("default_output", {}, "mono", "wav", "rmvpe")[0]
        return self._default

    def library(self, name: str, kwargs: dict[str, Any], source: str, fmt: str, f0: str) -> tuple[np.ndarray, int]:
        results = self.converter(f0).convert_batch([self.inputs[source]], self.root / "lib" / name, format=fmt, seed=SEED, **kwargs)
        assert results[0].ok, results[0].error
        return _decode(Path(results[0].output_path).read_bytes())

    def command_line(self, name: str, options: list[str], source: str, fmt: str, f0: str) -> tuple[np.ndarray, int]:
        from rvcfast.cli import main

        out = self.root / "cli" / name
        status = main([
            "convert", str(self.models / "voice_v2_40k_f0.pth"), str(self.inputs[source]), "-o", str(out),
            "--index", str(self.index), "--encoder", str(self.models / "contentvec_hf"),
            "--f0-weights", str(self.models / "rmvpe_reduced.pt"), "--device", "cpu", "--f0", f0,
            "--seed", str(SEED), "--format", fmt, "-q", *options,
        ])
        assert status == 0
        return _decode((out / f"{self.inputs[source].stem}.{fmt}").read_bytes())

    def server(self, fields: dict[str, str], source: str, fmt: str, f0: str, job_and_stream: bool) -> dict[str, tuple[np.ndarray, int]]:
        form = {"voice": "alice", "seed": str(SEED), "format": fmt, **fields, **({} if f0 == "rmvpe" else {"f0": f0})}
        data = self.inputs[source].read_bytes()

        async def body(client: Any) -> dict[str, tuple[np.ndarray, int]]:
            async def post(path: str, form: dict[str, str], status: int) -> Any:
                answer = await client.post(path, data=form, files={"file": (self.inputs[source].name, data)})
                assert answer.status_code == status, answer.text
                return answer

            got = {"sync": _decode((await post("/v1/convert", form, 200)).content)}
            if job_and_stream:
                got["stream"] = _decode((await post("/v1/convert", {**form, "stream": "true"}, 200)).content)
                job = (await post("/v1/jobs", form, 202)).json()["id"]
                while (state := (await client.get(f"/v1/jobs/{job}")).json())["state"] not in ("done", "failed"):
                    await asyncio.sleep(0.05)
                assert state["state"] == "done", state
                got["job"] = _decode((await client.get(f"/v1/jobs/{job}/audio")).content)
            return got

        return run_in_process(self.app, body, DEADLINE)


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    """The file's samples as integers (16-bit WAV and FLAC): compared exactly."""
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    return audio, rate


@pytest.fixture(scope="module")
def walk(golden: Path, shared_audio: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    w = Walk(golden, shared_audio, tmp_path_factory.mktemp("front_end_parity"))
    try:
        yield w
    finally:
        w.app.state.rvcfast.close()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_library_cli_and_server_give_the_same_samples(walk: Walk, case: tuple[Any, ...]) -> None:
    """docs/parameters.md ("Every front end checks the values with the same ConversionParams")
    and docs/serving.md ("A job's output equals Converter.convert of the same input"; an input
    of one segment is streamed as one piece, "finished exactly like the non-streamed output"):
    with the noise seeded the outputs are equal sample for sample."""
    name, kwargs, options, fields, source, fmt, f0 = case
    missing = [m for m in EXTRAS.get(name, ()) if not _have(m)]
    if missing:
        pytest.skip(f"extras not installed: {', '.join(missing)}")
    lib, lib_rate = walk.library(name, kwargs, source, fmt, f0)
    expected_rate = kwargs.get("output_sample_rate", 40000)
    assert lib_rate == expected_rate
    assert lib.ndim == (2 if kwargs.get("channels") == "each" else 1) and np.abs(lib).max() > 1000  # audible
    cli, cli_rate = walk.command_line(name, options, source, fmt, f0)
    assert cli_rate == expected_rate and np.array_equal(cli, lib), f"{name}: rvcfast convert differs from convert_batch"
    for route, (audio, rate) in walk.server(fields, source, fmt, f0, name in JOB_AND_STREAM).items():
        assert rate == expected_rate and np.array_equal(audio, lib), f"{name}: the server's {route} answer differs from convert_batch"
    # the setting reached the engine: its output is not the default one
    default = walk.default_output()
    if name != "defaults" and default.shape == lib.shape:
        assert not np.array_equal(default, lib), f"{name}: the settings did not change the output"
    if name == "channels_each":  # each channel converted on its own: not the mix, and the channels differ
        assert not np.array_equal(lib[:, 0], lib[:, 1])


# ---------------------------------------------------------------------- every parameter reaches the engine

#: A value other than the default for every conversion parameter, as Python, command line and server field.
NON_DEFAULT: dict[str, tuple[Any, list[str], str]] = {
    "pitch": (3.0, ["--pitch", "3"], "3"),
    "index_rate": (0.4, ["--index-rate", "0.4"], "0.4"),
    "protect": (0.25, ["--protect", "0.25"], "0.25"),
    "rms_mix_rate": (0.5, ["--rms-mix-rate", "0.5"], "0.5"),
    "filter_radius": (1, ["--filter-radius", "1"], "1"),
    "speaker": (1, ["--speaker", "1"], "1"),
    "noise": (False, ["--no-noise"], "false"),
    "seed": (11, ["--seed", "11"], "11"),
    "output_sample_rate": (44100, ["--sample-rate", "44100"], "44100"),
    "v1_output_layer": (12, ["--v1-output-layer", "12"], "12"),
    "fill_unvoiced": (True, ["--fill-unvoiced"], "true"),
    "keep_length": (True, ["--keep-length"], "yes"),
    "autotune": (0.3, ["--autotune", "0.3"], "0.3"),
    "proposed_pitch": (200.0, ["--proposed-pitch", "200"], "200"),
    "formant": ((1.0, 1.1), ["--formant", "1.0", "1.1"], "1.0,1.1"),
    "clean": (0.2, ["--clean", "0.2"], "0.2"),
    "effects": ({"gain": {"db": -1.0}}, ["--effect", "gain:db=-1"], '{"gain": {"db": -1.0}}'),
    "loudness": (-20.0, ["--loudness", "-20"], "-20"),
    "channels": ("each", ["--channels", "each"], "each"),
    "strict": (True, ["--strict"], "on"),
}


def test_every_parameter_has_a_non_default_value_here() -> None:
    """The table above covers every ConversionParams field (a new parameter must be added)."""
    specs = {s.name: s.default for s in param_specs()}
    assert set(NON_DEFAULT) == set(specs)
    assert all(value != specs[name] for name, (value, _, _) in NON_DEFAULT.items())


@pytest.fixture
def engine_params(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ConversionParams]]:
    """``(method, params)`` of every ``Engine.run`` and ``Engine.stream`` call (the calls still run)."""
    from rvcfast.engine import Engine

    seen: list[tuple[str, ConversionParams]] = []

    def recording(method: str) -> Any:
        real = getattr(Engine, method)

        def call(self: Any, preps: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
            many = isinstance(params, (list, tuple)) and not isinstance(params, ConversionParams)
            seen.extend((method, ConversionParams.build(p)) for p in (params if many else [params]))
            return real(self, preps, params, *args, **kwargs)

        return call

    monkeypatch.setattr(Engine, "run", recording("run"))
    monkeypatch.setattr(Engine, "stream", recording("stream"))
    return seen


def _all_extras() -> None:
    missing = [m for m in ("stftpitchshift", "noisereduce", "pedalboard") if not _have(m)]
    if missing:
        pytest.skip(f"extras not installed: {', '.join(missing)}")


def test_every_parameter_reaches_the_engine_from_each_front_end(
    tiny_models: Any, tmp_path: Path, engine_params: list[tuple[str, ConversionParams]]
) -> None:
    """Farm-style: each parameter given a non-default value through the library, ``rvcfast
    convert`` and the server (synchronous and job) arrives in the engine's ConversionParams."""
    from rvcfast.cli import main
    from rvcfast.serve import create_app

    _all_extras()
    expected = ConversionParams(**{name: value for name, (value, _, _) in NON_DEFAULT.items()})
    clip = tmp_path / "stereo.wav"
    t = np.arange(8000) / 16000
    sf.write(clip, np.stack([0.3 * np.sin(2 * np.pi * 180 * t), 0.2 * np.sin(2 * np.pi * 230 * t)], axis=1), 16000)

    tiny_models.converter().convert_batch([clip], tmp_path / "lib", **{n: v for n, (v, _, _) in NON_DEFAULT.items()})
    assert engine_params and all(p == expected for _, p in engine_params), engine_params
    engine_params.clear()

    options = [o for _, flags, _ in NON_DEFAULT.values() for o in flags]
    status = main([
        "convert", str(tiny_models.voice), str(clip), "-o", str(tmp_path / "cli"), "--index", str(tiny_models.index),
        "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu", "-q", *options,
    ])
    assert status == 0
    assert engine_params and all(p == expected for _, p in engine_params), engine_params
    engine_params.clear()

    voices = tmp_path / "voices"
    voices.mkdir()
    shutil.copy(tiny_models.voice, voices / "alice.pth")
    app = create_app(
        voices=[voices], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads=1,
        jobs_dir=tmp_path / "spool", analysis_cache_mb=0,
    )
    form = {"voice": "alice", **{("sample_rate" if n == "output_sample_rate" else n): text for n, (_, _, text) in NON_DEFAULT.items()}}

    async def body(client: Any) -> list[int]:
        sync = await client.post("/v1/convert", data=form, files={"file": ("stereo.wav", clip.read_bytes())})
        job = await client.post("/v1/jobs", data=form, files={"file": ("stereo.wav", clip.read_bytes())})
        if job.status_code == 202:
            url = f"/v1/jobs/{job.json()['id']}"
            while (await client.get(url)).json()["state"] not in ("done", "failed"):
                await asyncio.sleep(0.05)
        return [sync.status_code, job.status_code]

    try:
        assert run_in_process(app, body, DEADLINE) == [200, 202]
    finally:
        app.state.rvcfast.close()
    # the synchronous request through Engine.run, the job channel by channel through Engine.stream
    assert {m for m, _ in engine_params} == {"run", "stream"} and all(p == expected for _, p in engine_params), engine_params


# ---------------------------------------------------------------------- the docs' table of names


def _front_end_table() -> list[list[str]]:
    """The rows of docs/parameters.md's "Names in each front end" table, as cells."""
    text = (REPO / "docs" / "parameters.md").read_text(encoding="utf-8")
    lines = text.split("### Names in each front end", 1)[1].splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("| Python"))
    table: list[list[str]] = []
    for line in lines[start + 2:]:  # past the header and its separator, to the first line outside the table
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return table


def _python_name(cell: str) -> str:
    return re.match(r"`(\w+)", cell).group(1)  # type: ignore[union-attr]


def test_the_docs_table_names_every_parameter_and_each_front_end_accepts_its_names() -> None:
    """docs/parameters.md, "Names in each front end": one row per ConversionParams field; the
    first flag of the command-line cell is an option of ``rvcfast convert`` that sets that
    parameter, and every field of the server cell is accepted by the server for it."""
    from rvcfast.cli import build_parser
    from rvcfast.serve.forms import parse_fields

    table = _front_end_table()
    names = [_python_name(row[0]) for row in table]
    assert sorted(names) == sorted(s.name for s in param_specs()), names
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["convert"]  # type: ignore[attr-defined]
    dest_of = {opt: a.dest for a in sub._actions for opt in a.option_strings}
    for (_python, cli, server), name in zip(table, names):
        flag = re.search(r"`(--[\w-]+)", cli).group(1)  # type: ignore[union-attr]
        assert dest_of.get(flag) == name, f"{flag} (docs row {name}) is not an option of rvcfast convert for {name}"
        value, _, text = NON_DEFAULT[name]
        for field in re.findall(r"`(\w+)(?:=[^`]*)?`", server):
            if field == "none":
                continue
            got = parse_fields([("voice", "alice"), (field, text)]).overrides
            assert got == {name: value}, f"server field {field} (docs row {name}) gave {got}"


# ---------------------------------------------------------------------- a request's F0 backend without its weights


def test_a_request_f0_without_weights_on_the_server_is_the_f0_fields_error(
    tiny_models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library and ``rvcfast convert --f0 rmvpe`` without rmvpe.pt stop with WeightsNotFoundError
    naming the file; the server, asked for ``f0=rmvpe`` by a request while its own backend is
    harvest (whose voices take no --f0-weights), should answer the same as an error of the
    request's ``f0`` field (422, ``"parameter": "f0"``), not as an internal error."""
    from rvcfast.serve import create_app

    for variable in ("RVCFAST_HOME", "XDG_CACHE_HOME"):  # no rmvpe.pt anywhere it is looked for
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    voices = tmp_path / "voices"
    voices.mkdir()
    shutil.copy(tiny_models.voice, voices / "alice.pth")
    clip = tmp_path / "clip.wav"
    sf.write(clip, 0.3 * np.sin(2 * np.pi * 180 * np.arange(8000) / 16000), 16000)
    app = create_app(voices=[voices], encoder=tiny_models.encoder, f0="harvest", device="cpu", threads=1, jobs_dir=tmp_path / "spool")

    async def body(client: Any) -> Any:
        return await client.post("/v1/convert", data={"voice": "alice", "f0": "rmvpe"}, files={"file": ("clip.wav", clip.read_bytes())})

    try:
        answer = run_in_process(app, body, DEADLINE)
    finally:
        app.state.rvcfast.close()
    assert answer.status_code == 422, answer.text
    assert answer.json()["parameter"] == "f0" and "rmvpe.pt" in answer.json()["error"], answer.text
    assert str(tmp_path) not in answer.text, answer.text  # no server paths

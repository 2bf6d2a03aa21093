"""ONNX export as a user walks through docs/onnx.md: the Python API and ``rvcfast export-onnx``
with odd output paths, several exports at once, and the onnxruntime snippet of the docs.

Small random-weight models in the real ``.pth`` format; exports without verification where the
graph itself is not what a test checks (tests/test_onnx_export.py checks the graph).
"""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.cli import main
from rvcfast.errors import ParameterError
from rvcfast.testing import save_random_voice_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TINY = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=1,
            upsample_initial_channel=32, num_speakers=2)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "onnx.md"


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx_walk")
    return {
        "f0": save_random_voice_model(d / "v2 40k é.pth", "v2", 40000, True, seed=21, **TINY),
        "nof0": save_random_voice_model(d / "v1_32k_nof0.pth", "v1", 32000, False, seed=22, **TINY),
    }


@pytest.fixture(scope="module")
def exported(voices, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each voice exported as the docs do it (verified), deterministic."""
    d = tmp_path_factory.mktemp("onnx_walk_out")
    return {k: rvcfast.export_onnx(v, d / f"{k}.onnx", noise=False).path for k, v in voices.items()}


@pytest.fixture(scope="module")
def noisy_f0(voices, tmp_path_factory: pytest.TempPathFactory) -> rvcfast.onnx_export.ExportReport:
    """The pitch-guided voice with the default noise (the NSF noise drawn in the graph), unverified."""
    return rvcfast.export_onnx(voices["f0"], tmp_path_factory.mktemp("onnx_walk_noisy") / "noisy.onnx", verify=False)


def test_concurrent_exports_do_not_collide(voices, tmp_path, monkeypatch) -> None:
    """torch.onnx.export keeps its state in process globals: two exports at once failed with
    "GLOBALS.in_onnx_export must be False". The wrapper below holds the first export until a
    second one enters (or a second has passed), so without serialisation both always overlap."""
    real = torch.onnx.export
    meet = threading.Barrier(2)
    active, peak, lock = [0], [0], threading.Lock()

    @functools.wraps(real)  # the same signature: the exporter is called with dynamo=False
    def export(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            try:
                meet.wait(timeout=1.0)  # serialised: nobody comes, the barrier breaks, go on
            except threading.BrokenBarrierError:
                pass
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(torch.onnx, "export", export)
    jobs = [(voices["f0"], 15, tmp_path / "a.onnx"), (voices["nof0"], 18, tmp_path / "b.onnx")]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        model, opset, out = jobs[i]
        try:
            results[i] = rvcfast.export_onnx(model, out, opset=opset, noise=False, verify=False)
        except Exception as exc:  # noqa: BLE001 - the test reports it below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, rvcfast.onnx_export.ExportReport) for r in results.values()), results
    assert peak[0] == 1
    import onnx

    for _, opset, out in jobs:
        proto = onnx.load(out)
        assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {opset}


@pytest.mark.parametrize("suffix", [".pth", ".PT"])
def test_a_loaded_model_is_not_written_over_a_torch_file(voices, tmp_path, suffix) -> None:
    """A loaded model does not know its file: ``export_onnx(model, "voice.pth")`` replaced the
    voice model with the ONNX graph (docs: the output may not be the model file itself)."""
    own = tmp_path / "voice.pth"
    own.write_bytes(voices["f0"].read_bytes())  # a copy: the old code replaced it
    model = rvcfast.load_vocoder(own)
    with pytest.raises(ParameterError, match=r"overwrite a PyTorch model file"):
        rvcfast.export_onnx(model, own, verify=False)
    assert own.read_bytes() == voices["f0"].read_bytes()
    with pytest.raises(ParameterError, match=re.escape(suffix)):
        rvcfast.export_onnx(model, tmp_path / f"other{suffix}", verify=False)
    assert [p.name for p in tmp_path.iterdir()] == ["voice.pth"]


def test_a_voices_index_is_not_written_over(voices, tmp_path) -> None:
    """``export_onnx(model, "voice.index")`` replaced the voice's faiss index with the graph."""
    index = tmp_path / "voice.index"
    index.write_bytes(b"an index")
    with pytest.raises(ParameterError, match=r"overwrite a faiss index file \(\.index\)"):
        rvcfast.export_onnx(voices["nof0"], index, verify=False)
    assert index.read_bytes() == b"an index"


def test_a_path_ending_in_a_separator_is_a_folder(voices, tmp_path) -> None:
    """``export_onnx(model, "models/")`` wrote a file named ``models`` (Path drops the slash)."""
    target = str(tmp_path / "models") + "/"
    with pytest.raises(ParameterError, match="is a folder; name the .onnx file"):
        rvcfast.export_onnx(voices["nof0"], target, verify=False)
    assert not (tmp_path / "models").exists()


def test_cli_output_folder_ending_in_a_slash_is_created(voices, tmp_path, capsys) -> None:
    """``rvcfast export-onnx voice.pth -o models/`` (the docs' example) with no ``models`` yet:
    was status 2, "output models does not end in .onnx"."""
    status = main(["export-onnx", str(voices["f0"]), "-o", str(tmp_path / "new" / "models") + "/", "--no-verify", "-q"])
    written = tmp_path / "new" / "models" / "v2 40k é.onnx"
    assert status == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(written)
    assert written.is_file() and rvcfast.load_vocoder(written).sample_rate == 40000


def _docs_snippet() -> str:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Running it with onnxruntime", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("voice", ["f0", "nof0"])
def test_the_docs_onnxruntime_snippet_runs(exported, voice) -> None:
    """The docs' onnxruntime code, as written, on an export of each kind (with and without
    pitch inputs): it feeds the graph and gets ``T * hop`` samples."""
    code = _docs_snippet().replace('"voice.onnx"', repr(str(exported[voice])))
    scope: dict[str, object] = {}
    exec(compile(code, str(DOCS), "exec"), scope)  # noqa: S102 - the documented snippet
    audio = scope["audio"]
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32
    assert audio.shape == (int(scope["T"]) * int(scope["hop"]),) and np.isfinite(audio).all()
    assert scope["sample_rate"] == {"f0": 40000, "nof0": 32000}[voice]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [(dict(providers=["NoSuchExecutionProvider"]), "not available"), (dict(device="mps"), "pass providers=")],
)
def test_a_provider_error_names_the_voice(exported, kwargs, problem) -> None:
    """A server or a batch loads several voices: the provider error said which device, not which file."""
    with pytest.raises(ParameterError, match=problem) as info:
        rvcfast.load_vocoder(exported["f0"], **kwargs)
    assert str(info.value).startswith(f"{exported['f0']}: ")


def test_noise_metadata_says_what_the_graph_does(voices, noisy_f0, tmp_path, capsys) -> None:
    """A model without pitch guidance, RVC's interface, default noise: the graph draws nothing
    (its prior noise is the input rnd), but the file said noise=in-graph and the CLI "drawn in
    the graph"; two runs are identical."""
    import onnx

    out = tmp_path / "nof0.onnx"
    assert main(["export-onnx", str(voices["nof0"]), "-o", str(out), "--no-verify"]) == 0
    assert "noise: none (deterministic graph, nothing in this model draws any)" in capsys.readouterr().err
    proto = onnx.load(out)
    assert not any(n.op_type.startswith("Random") for n in proto.graph.node)
    assert {p.key: p.value for p in proto.metadata_props}["noise"] == "none"
    # with pitch guidance the NSF noise is drawn in the graph
    assert noisy_f0.noise and noisy_f0.metadata["noise"] == "in-graph"


def test_the_unseeded_noise_warning_points_at_the_caller(noisy_f0) -> None:
    """The warning that in-graph noise ignores the seed was reported at torch's
    ``utils/_contextlib.py`` (the inference_mode wrapper), not at the line calling synthesize."""
    voc = rvcfast.load_vocoder(noisy_f0.path)
    g = torch.Generator().manual_seed(0)
    feats, pitchf = torch.randn(1, 20, 768, generator=g), torch.full((1, 20), 150.0)
    with pytest.warns(UserWarning, match="gives no seed") as record:
        voc.synthesize(feats, torch.tensor([20]), torch.full((1, 20), 60), pitchf, 0, generator=g)
    assert [Path(w.filename).name for w in record if "gives no seed" in str(w.message)] == [Path(__file__).name]


def test_the_install_hint_can_be_pasted_into_zsh(voices, tmp_path, monkeypatch) -> None:
    """``pip install rvcfast[onnx]`` unquoted is a glob in zsh ("no matches found"); the docs quote it."""
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(rvcfast.errors.BackendUnavailableError, match=re.escape('pip install "rvcfast[onnx]"')):
        rvcfast.export_onnx(voices["nof0"], tmp_path / "x.onnx")


def test_cli_an_onnx_model_without_output_gets_the_real_reason(exported, capsys) -> None:
    """``rvcfast export-onnx voice.onnx`` said "output voice.onnx is the voice model itself; name
    another file with -o" (status 2), and with -o the user then learnt that an .onnx cannot be exported."""
    assert main(["export-onnx", str(exported["nof0"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"rvcfast: error: {exported['nof0']}: is an ONNX file already; export-onnx takes the voice model .pth "
        "(an .onnx voice runs as it is)"
    )


def test_dtype_auto_runs_an_onnx_voice_in_float32(exported, tiny_models, monkeypatch) -> None:
    """On a CPU with native bfloat16 (AMX, AVX512-BF16) ``dtype="auto"`` means bfloat16, and an
    ONNX voice refused it: ``rvcfast convert voice.onnx --dtype auto`` (or a server started with
    ``--dtype auto`` over a folder holding an export) failed there. For an ONNX voice "auto" is
    float32; an explicit bfloat16 is still refused."""
    import rvcfast.tuning as tuning

    monkeypatch.setattr(tuning, "tuned_dtype", lambda dtype, device, profile=None: torch.bfloat16)  # as on such a CPU
    cpu = torch.device("cpu")
    assert tuning.tuned_settings("auto", None, cpu, exported["f0"])[0] == torch.float32
    assert tuning.tuned_settings("auto", None, cpu, "voice.pth")[0] == torch.bfloat16
    engine = rvcfast.Engine.load(exported["f0"], dtype="auto", device="cpu", encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe)
    assert engine.dtype == torch.float32
    with pytest.raises(ParameterError, match="float32 only"):
        rvcfast.Engine.load(exported["f0"], dtype="bfloat16", device="cpu", encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe)

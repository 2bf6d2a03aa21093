"""ONNX export (:func:`rvcfast.export_onnx`, ``rvcfast export-onnx``): the graph runs at any
length in onnxruntime and computes what torch computes.

Every check compares onnxruntime with the torch model at frame counts other than the traced
one (:data:`rvcfast.onnx_export.TRACE_FRAMES`), on small random-weight models saved in the
real ``.pth`` format, and against the golden reference waveforms when ``../shared/golden``
is there. Tolerance: float32 rounding only. The torch model and the graph use other
kernels and other summation orders through ~30 layers; on these models that leaves
differences of at most a few 1e-6 of the output's peak (the full-size models: 1e-7 to 1e-5
of full scale), so the bound below is 1e-4 of the peak, while every fault this guards
against (a length frozen into the graph, a lost mask, a wrong phase or prior) changes the
waveform by percents.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import assert_close_to_peak

import rvcfast
from rvcfast.cli import main
from rvcfast.errors import BackendUnavailableError, ParameterError
from rvcfast.models.synthesizer import load_vocoder, onnx_graph
from rvcfast.models.synthesizer.applio_source import harmonic_sines
from rvcfast.onnx_export import MIN_SNR_DB, TRACE_FRAMES, OnnxExportError
from rvcfast.testing import save_random_applio_model, save_random_voice_model

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINY = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=1)
LENGTHS = (37, 611)  # frames; neither is the traced length
REL_TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread for torch and onnxruntime (the export's verification follows torch's count):
    on a busy 2-core box two spinning threads make these small convolutions many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(frames: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, coarse pitch 1..255 and f0 in Hz with an unvoiced run."""
    g = torch.Generator().manual_seed(seed)
    phone = torch.randn(1, frames, dim, generator=g)
    pitchf = 80 + 200 * torch.rand(1, frames, generator=g)
    pitchf[:, frames // 3 : frames // 3 + 9] = 0
    return phone, torch.randint(1, 256, (1, frames), generator=g), pitchf


def _feed(session: ort.InferenceSession, **values: torch.Tensor | np.ndarray) -> np.ndarray:
    """Run ``session`` with the named inputs it has (others are ignored); returns ``audio[0, 0]``."""
    names = {i.name for i in session.get_inputs()}
    feed = {k: np.asarray(v) for k, v in values.items() if k in names}
    assert set(feed) == names, (sorted(feed), sorted(names))
    return session.run(["audio"], feed)[0][0, 0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "f0": save_random_voice_model(d / "v2_40k_f0.pth", "v2", 40000, True, seed=11, num_speakers=3,
                                      upsample_initial_channel=32, **TINY),
        "nof0": save_random_voice_model(d / "v1_32k_nof0.pth", "v1", 32000, False, seed=12, num_speakers=2,
                                        upsample_initial_channel=32, **TINY),
        "dir": d,
    }


@pytest.fixture(scope="module")
def f0_export(files):
    """The pitch-guided model, loaded; its output before the export; the deterministic export made
    from the loaded object (not the file), with verification."""
    model = load_vocoder(files["f0"])
    phone, pitch, pitchf = _inputs(120, 768, seed=5)
    before = model.synthesize(phone, torch.tensor([120]), pitch, pitchf, 2, noise=False)
    report = rvcfast.export_onnx(model, files["dir"] / "f0.onnx", noise=False)
    return model, before, (phone, pitch, pitchf), report


def test_trace_length_is_not_a_tested_length() -> None:
    assert TRACE_FRAMES not in LENGTHS


@pytest.mark.parametrize("frames", LENGTHS)
def test_graph_matches_torch_at_other_lengths(f0_export, frames: int) -> None:
    model, _, _, report = f0_export
    session = _session(report.path)
    phone, pitch, pitchf = _inputs(frames, 768, seed=frames)
    got = _feed(session, phone=phone, phone_lengths=np.array([frames]), pitch=pitch, pitchf=pitchf,
                ds=np.array([2]), rnd=np.zeros((1, 16, frames), np.float32))
    ref = model.synthesize(phone, torch.tensor([frames]), pitch, pitchf, 2, noise=False)[0].numpy()
    assert_close_to_peak(got, ref, REL_TOL, 1e-5)
    # another speaker gives another output: `ds` reaches the graph
    other = _feed(session, phone=phone, phone_lengths=np.array([frames]), pitch=pitch, pitchf=pitchf,
                  ds=np.array([0]), rnd=np.zeros((1, 16, frames), np.float32))
    assert np.abs(other - got).max() > 10 * REL_TOL * np.abs(ref).max()


def test_phone_lengths_marks_padding(f0_export) -> None:
    """Frames beyond phone_lengths are padding: the valid samples are those of the trimmed input,
    the rest are 0 (what Synthesizer.synthesize does for a padded batch item)."""
    model, _, _, report = f0_export
    phone, pitch, pitchf = _inputs(90, 768, seed=3)
    phone[:, 70:] = 1e3  # garbage in the padding must not leak into the valid samples
    got = _feed(_session(report.path), phone=phone, phone_lengths=np.array([70]), pitch=pitch, pitchf=pitchf,
                ds=np.array([1]), rnd=np.zeros((1, 16, 90), np.float32))
    ref = model.synthesize(phone[:, :70], torch.tensor([70]), pitch[:, :70], pitchf[:, :70], 1, noise=False)
    assert got.shape == (90 * 400,)
    assert_close_to_peak(got[: 70 * 400], ref[0].numpy(), REL_TOL, 1e-5)
    assert not got[70 * 400 :].any()
    # a count above T means all of them
    full = _feed(_session(report.path), phone=phone[:, :70], phone_lengths=np.array([500]), pitch=pitch[:, :70],
                 pitchf=pitchf[:, :70], ds=np.array([1]), rnd=np.zeros((1, 16, 70), np.float32))
    assert np.array_equal(full, got[: 70 * 400])


def test_names_shapes_and_dtypes(f0_export) -> None:
    report = f0_export[3]
    session = _session(report.path)
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert list(inputs) == ["phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd"] == list(report.inputs)
    assert inputs["phone"][0] == "tensor(float)" and inputs["phone"][1][0] == 1 and inputs["phone"][1][2] == 768
    assert inputs["phone_lengths"] == ("tensor(int64)", [1])
    assert inputs["pitch"][0] == "tensor(int64)" and inputs["pitchf"][0] == "tensor(float)"
    assert inputs["ds"] == ("tensor(int64)", [1])
    assert inputs["rnd"][0] == "tensor(float)" and inputs["rnd"][1][:2] == [1, 16]
    frames = {inputs[n][1][1] for n in ("phone", "pitch", "pitchf")} | {inputs["rnd"][1][2]}
    assert len(frames) == 1 and isinstance(frames.pop(), str)  # one symbolic (dynamic) frame axis
    (output,) = session.get_outputs()
    assert output.name == "audio" and output.type == "tensor(float)"
    assert output.shape[:2] == [1, 1] and isinstance(output.shape[2], str)


def test_metadata(f0_export) -> None:
    report = f0_export[3]
    meta = _session(report.path).get_modelmeta().custom_metadata_map
    expected = {"sample_rate": "40000", "version": "v2", "f0": "1", "feature_dim": "768", "hop_length": "400",
                "vocoder": "HiFi-GAN", "speakers": "3", "inter_channels": "16", "interface": "rvc", "noise": "none"}
    assert {k: meta.get(k) for k in expected} == expected
    assert meta == report.metadata
    wokada = json.loads(meta["metadata"])
    assert wokada == {"application": "VC_CLIENT", "version": "2.1", "modelType": "onnxRVC", "samplingRate": 40000,
                      "f0": True, "embChannels": 768, "embedder": "hubert_base", "embOutputLayer": 12,
                      "useFinalProj": False}


def test_the_callers_model_is_unchanged(files, f0_export) -> None:
    model, before, (phone, pitch, pitchf), _ = f0_export
    assert model.dec.fused_cpu is True  # the export's copy takes the plain path, not the caller's model
    assert not any(p.requires_grad for p in model.parameters())
    after = model.synthesize(phone, torch.tensor([120]), pitch, pitchf, 2, noise=False)
    assert torch.equal(before, after)
    fresh = load_vocoder(files["f0"]).state_dict()
    state = model.state_dict()
    assert list(state) == list(fresh)
    for k, a in state.items():
        assert a.dtype == torch.float32 and torch.equal(a, fresh[k]), k


def test_verification_is_reported(f0_export) -> None:
    v = f0_export[3].verification
    assert v is not None and v.frames != TRACE_FRAMES and v.snr_db > MIN_SNR_DB and v.max_abs_error < 1e-3


def test_verification_catches_a_wrong_graph(files, monkeypatch) -> None:
    """A graph without the attention's relative-position keys (a small change in the output
    of this tiny model) is refused, and nothing is written."""
    monkeypatch.setattr(onnx_graph, "_rel_to_abs", lambda rel, window: torch.zeros(()))
    target = files["dir"] / "wrong.onnx"
    with pytest.raises(OnnxExportError, match="does not match torch"):
        rvcfast.export_onnx(files["f0"], target, noise=False)
    assert not target.exists()


@pytest.fixture(scope="module")
def nof0_cli(files) -> tuple[int, str, Path]:
    """``rvcfast export-onnx`` of the model without pitch: (status, stdout, the file)."""
    out = files["dir"] / "cli" / "voice.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["export-onnx", str(files["nof0"]), "-o", str(out), "--deterministic", "--no-verify", "--opset", "18"])
    return status, stdout.getvalue(), out


def test_no_f0_model_and_the_prior_noise_input(files, nof0_cli) -> None:
    """A v1 model without pitch: no pitch/pitchf inputs; rnd = 0 gives the noise-free output, and
    rnd = eps * 0.66666 gives synthesize(noise=True) with the generator that drew eps (for a
    model without pitch the prior is its only random draw): z_p = m_p + exp(logs_p) * rnd."""
    model = load_vocoder(files["nof0"])
    session = _session(nof0_cli[2])
    assert [i.name for i in session.get_inputs()] == ["phone", "phone_lengths", "ds", "rnd"]
    frames = 203
    phone = _inputs(frames, 256, seed=7)[0]
    got = _feed(session, phone=phone, phone_lengths=np.array([frames]), ds=np.array([1]),
                rnd=np.zeros((1, 16, frames), np.float32))
    assert_close_to_peak(got, model.synthesize(phone, torch.tensor([frames]), speaker=1, noise=False)[0].numpy(), REL_TOL, 1e-5)
    eps = torch.randn((16, frames), generator=torch.Generator().manual_seed(42))
    noisy = _feed(session, phone=phone, phone_lengths=np.array([frames]), ds=np.array([1]),
                  rnd=(eps * 0.66666)[None].numpy())
    ref = model.synthesize(phone, torch.tensor([frames]), speaker=1, noise=True,
                           generator=[torch.Generator().manual_seed(42)])[0].numpy()
    assert_close_to_peak(noisy, ref, REL_TOL, 1e-5)
    assert np.abs(noisy - got).max() > 10 * REL_TOL * np.abs(ref).max()
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["metadata"])["useFinalProj"] is True and meta["feature_dim"] == "256"


def test_w_okada_interface_with_noise_in_the_graph(files) -> None:
    """w-okada's input names; the prior and the NSF noise are drawn in the graph (two runs
    differ); with those draws set to 0 the graph equals torch (the export's verification)."""
    report = rvcfast.export_onnx(files["f0"], files["dir"] / "wokada.onnx", interface="w-okada")
    import onnx

    assert "RandomNormalLike" in {n.op_type for n in onnx.load(report.path).graph.node}
    session = _session(report.path)
    assert [i.name for i in session.get_inputs()] == ["feats", "p_len", "pitch", "pitchf", "sid"]
    phone, pitch, pitchf = _inputs(77, 768, seed=77)
    feed = dict(feats=phone, p_len=np.array([77]), pitch=pitch, pitchf=pitchf, sid=np.array([1]))
    a, b = _feed(session, **feed), _feed(session, **feed)
    assert a.shape == (77 * 400,) and np.isfinite(a).all() and np.abs(a - b).max() > 0
    v = report.verification
    assert v is not None and v.frames != TRACE_FRAMES and v.snr_db > MIN_SNR_DB
    assert report.metadata["noise"] == "in-graph" and report.metadata["interface"] == "w-okada"


@pytest.mark.parametrize(("vocoder", "sr"), [("MRF HiFi-GAN", 48000), ("RefineGAN", 32000)])
def test_applio_vocoders(tmp_path, vocoder: str, sr: int) -> None:
    path = save_random_applio_model(tmp_path / "applio.pth", sr, vocoder, seed=3, upsample_initial_channel=32, **TINY)
    model = load_vocoder(path)
    report = rvcfast.export_onnx(path, tmp_path / "applio.onnx", noise=False, verify=False)
    assert report.metadata["vocoder"] == vocoder
    frames = 45
    phone, pitch, pitchf = _inputs(frames, 768, seed=45)
    got = _feed(_session(report.path), phone=phone, phone_lengths=np.array([frames]), pitch=pitch, pitchf=pitchf,
                ds=np.array([0]), rnd=np.zeros((1, 16, frames), np.float32))
    assert_close_to_peak(got, model.synthesize(phone, torch.tensor([frames]), pitch, pitchf, 0, noise=False)[0].numpy(), REL_TOL, 1e-5)


class _SineScan(torch.nn.Module):
    def forward(self, f0: torch.Tensor) -> torch.Tensor:
        return onnx_graph._applio_sines(f0, 48000, 2, False)


@pytest.mark.filterwarnings("ignore")  # torch's notes on its TorchScript-based exporter
def test_applio_sine_scan_stays_exact_over_long_inputs() -> None:
    """Applio's sine phase is a running sum over every output sample; the graph accumulates it
    in float64 (a float32 ``CumSum`` in onnxruntime drifts by ~1e-4 within 10 s at 48 kHz)."""
    g = torch.Generator().manual_seed(0)
    f0 = (100 + 300 * torch.rand(1, 1000, generator=g)).repeat_interleave(480, dim=1)  # 10 s at 48 kHz
    f0[:, 100_000:140_000] = 0
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_SineScan(), (f0[:, :4800],), buf, dynamo=False, input_names=["f0"], output_names=["s"],
                          dynamic_axes={"f0": {1: "n"}}, opset_version=17)
    got = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"f0": f0.numpy()})[0]
    ref = harmonic_sines(f0, 48000, 2).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-6


@pytest.mark.golden
@pytest.mark.parametrize("variant", ["v2_40k_f0", "v1_48k_f0", "v2_32k_nof0"])
def test_golden_parity(golden: Path, tmp_path, variant: str) -> None:
    """The graph on the golden synthesizer inputs gives the reference's waveform (README §2:
    Applio's Synthesizer.infer with its noise off) within the torch implementation's own bound."""
    report = rvcfast.export_onnx(golden / "models" / f"voice_{variant}.pth", tmp_path / "g.onnx", noise=False,
                                 verify=False)
    data = np.load(golden / "synth" / f"{variant}_inputs.npz")
    frames = data["phone"].shape[1]
    assert frames != TRACE_FRAMES
    inter = int(report.metadata["inter_channels"])
    got = _feed(_session(report.path), phone=data["phone"], phone_lengths=data["phone_lengths"],
                pitch=data["pitch"] if "pitch" in data else None, pitchf=data["pitchf"] if "pitchf" in data else None,
                ds=data["sid"], rnd=np.zeros((1, inter, frames), np.float32))
    ref, sr = sf.read(golden / "synth" / f"{variant}_out.wav", dtype="float32")
    assert sr == int(report.metadata["sample_rate"])
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 2e-5


# ---------------------------------------------------------------------------------------------- errors


def test_refuses_to_overwrite_the_model(files) -> None:
    before = files["f0"].read_bytes()
    with pytest.raises(ParameterError, match="overwrite"):
        rvcfast.export_onnx(files["f0"], files["f0"], verify=False)
    assert files["f0"].read_bytes() == before


@pytest.mark.parametrize("opset", [12, 21, "17", True])
def test_bad_opset(files, opset) -> None:
    with pytest.raises(ParameterError, match="opset"):
        rvcfast.export_onnx(files["f0"], files["dir"] / "x.onnx", opset=opset)


def test_missing_extra_is_named(files, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"rvcfast\[onnx\]"):
        rvcfast.export_onnx(files["f0"], files["dir"] / "x.onnx")
    assert not (files["dir"] / "x.onnx").exists()


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_writes_the_file(nof0_cli) -> None:
    status, stdout, out = nof0_cli
    assert status == 0 and stdout.strip() == str(out)
    import onnx

    proto = onnx.load(out)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["f0"] == "0" and meta["noise"] == "none"  # --deterministic
    assert [p.name for p in out.parent.iterdir()] == ["voice.onnx"]  # no temporary file left


def test_cli_refuses_to_overwrite_the_model(files, capsys) -> None:
    before = files["f0"].read_bytes()
    assert main(["export-onnx", str(files["f0"]), "-o", str(files["f0"])]) == 2
    assert "voice model itself" in capsys.readouterr().err
    assert files["f0"].read_bytes() == before


def test_an_output_under_a_file_is_refused_before_the_export(files, tmp_path, capsys, monkeypatch) -> None:
    import rvcfast.onnx_export as onnx_export

    (tmp_path / "afile").write_bytes(b"notes")
    target = tmp_path / "afile" / "x.onnx"
    # was: the model exported and verified, then "cannot write the ONNX file: File exists" (status 1)
    monkeypatch.setattr(onnx_export, "_resolve_model", lambda *a: pytest.fail("the export ran"))
    assert main(["export-onnx", str(files["f0"]), "-o", str(target)]) == 2
    assert f"output {tmp_path / 'afile'} exists and is not a folder" in capsys.readouterr().err
    with pytest.raises(rvcfast.errors.ParameterError, match="exists and is not a folder"):
        onnx_export.export_onnx(files["f0"], target)
    assert (tmp_path / "afile").read_bytes() == b"notes"


@pytest.mark.parametrize("content", [None, b"not a pytorch file"])
def test_cli_bad_model_file(tmp_path, capsys, content) -> None:
    bad = tmp_path / "broken.pth"
    if content is not None:
        bad.write_bytes(content)
    assert main(["export-onnx", str(bad), "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rvcfast: error:") and "broken.pth" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_an_onnx_input_is_named_not_a_traceback(nof0_cli, capsys) -> None:
    # an .onnx now loads as a voice (OnnxVocoder), which has no torch modules to export
    _, _, exported = nof0_cli
    target = exported.parent / "again.onnx"
    assert main(["export-onnx", str(exported), "-o", str(target)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rvcfast: error:") and "is an ONNX file already" in err[-1]
    assert not any("Traceback" in line for line in err) and not target.exists()


def test_a_model_loaded_in_bfloat16_is_refused(files, tmp_path) -> None:
    # before: its weights, already rounded to bfloat16, were copied to float32 and exported; the
    # check compared the graph with that rounded copy and reported it exact (125 dB), while the
    # file was 47 dB from an export of the .pth
    model = load_vocoder(files["f0"], "cpu", torch.bfloat16)
    with pytest.raises(ParameterError, match=r"loaded in bfloat16: its weights are rounded to it; export the \.pth"):
        rvcfast.export_onnx(model, tmp_path / "v.onnx")
    assert not (tmp_path / "v.onnx").exists()

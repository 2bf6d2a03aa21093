"""Exported voice models run by onnxruntime (:class:`rvcfast.models.onnx_vocoder.OnnxVocoder`):
``load_vocoder("voice.onnx")``, ``Converter.from_pretrained("voice.onnx")``, ``rvcfast convert``.

The reference is always the torch model of the same ``.pth`` with every random draw off
(``noise=False``): the export of such a model is equal to it up to float32 rounding (other
kernels and summation orders; :mod:`tests.test_onnx_export` bounds that at 1e-4 of the
output's peak), so any fault in feeding the graph (wrong speaker, lengths, pitch, noise
input, padding, interface) shows as a difference of percents.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import names_file, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.cli import main
from rvcfast.describe import describe_model
from rvcfast.errors import ModelLoadError, ParameterError
from rvcfast.models.onnx_vocoder import OnnxVocoder, add_onnx_metadata
from rvcfast.segment import SegmentConfig
from rvcfast.testing import save_random_voice_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REL_TOL = 1e-4
TINY_V1 = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=1,
               upsample_initial_channel=32, num_speakers=2)


def _close(got: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> None:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    peak = float(np.abs(ref).max())
    assert peak > 1e-6  # a silent reference would prove nothing
    err = float(np.abs(got - ref).max())
    assert err <= REL_TOL * peak, f"max abs error {err:.3g} for a peak of {peak:.3g}"


def _inputs(b: int, t: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pitchf = 90 + 160 * torch.rand(b, t, generator=g)
    pitchf[:, t // 3 : t // 3 + 7] = 0
    return torch.randn(b, t, dim, generator=g), torch.randint(1, 256, (b, t), generator=g), pitchf


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Exports of the tiny voices: deterministic (RVC interface), with noise in the graph, the latter
    without metadata (as RVC WebUI writes it), a no-F0 v2 one whose prior noise is loud, and a
    no-F0 v1 32 kHz one with w-okada's interface (prior noise in the graph)."""
    d = tmp_path_factory.mktemp("onnx_vocoder")
    v1 = save_random_voice_model(d / "v1_32k.pth", "v1", 32000, False, seed=7, **TINY_V1)
    ckpt = torch.load(tiny_models.voice_nof0, weights_only=True)
    ckpt["weight"]["enc_p.proj.bias"][16:] += 3.0  # exp(logs_p) * 20: the prior noise moves the output by ~4 %
    torch.save(ckpt, d / "loud_nof0.pth")
    out = {"pth": tiny_models.voice, "nof0_pth": d / "loud_nof0.pth", "v1_pth": v1}
    for name, src, kw in (
        ("det", tiny_models.voice, dict(noise=False)),
        ("noisy", tiny_models.voice, dict(noise=True)),
        ("nof0", out["nof0_pth"], dict(noise=True)),
        ("v1", v1, dict(noise=True, interface="w-okada")),
    ):
        out[name] = rvcfast.export_onnx(src, d / f"{name}.onnx", verify=False, **kw).path
    proto = onnx.load(out["noisy"])
    del proto.metadata_props[:]
    out["bare"] = d / "bare.onnx"
    onnx.save(proto, out["bare"])
    return out


def test_padded_batch_equals_torch(files) -> None:
    """(a) A padded batch of two lengths: each item as the torch model computes it, zeros past its length."""
    voc = rvcfast.load_vocoder(files["det"])
    ref_model = rvcfast.load_vocoder(files["pth"])
    assert isinstance(voc, OnnxVocoder) and not voc.info.noise_in_graph
    assert (voc.sample_rate, voc.version, voc.has_f0, voc.num_speakers, voc.feature_dim, voc.hop_length) == (
        40000, "v2", True, 4, 768, 400)
    feats, pitch, pitchf = _inputs(2, 83, 768, seed=1)
    lengths = torch.tensor([83, 52])
    got = voc.synthesize(feats, lengths, pitch, pitchf, speaker=2, noise=False, skip_frames=(4, 0))
    ref = ref_model.synthesize(feats, lengths, pitch, pitchf, speaker=2, noise=False)
    assert got.dtype == torch.float32 and got.shape == (2, 83 * 400)
    _close(got, ref)
    assert not got[1, 52 * 400 :].any()
    other = voc.synthesize(feats, lengths, pitch, pitchf, speaker=torch.tensor([2, 0]), noise=False)
    _close(other[0], ref[0])  # a per-item speaker tensor: item 1 now speaks as speaker 0
    _close(other[1], ref_model.synthesize(feats[1:], lengths[1:], pitch[1:], pitchf[1:], speaker=0, noise=False)[0])
    with pytest.raises(ParameterError, match="speaker id"):
        voc.synthesize(feats, lengths, pitch, pitchf, speaker=4)


def test_noise_in_the_graph_is_zeroed_for_noise_false(files) -> None:
    """A graph that draws noise itself (RVC's export) still gives torch's noise=False output when asked;
    with noise=True it draws, unseeded, and a seed given says so."""
    voc = rvcfast.load_vocoder(files["noisy"])
    assert voc.info.noise_in_graph
    feats, pitch, pitchf = _inputs(1, 70, 768, seed=2)
    lengths = torch.tensor([70])
    ref = rvcfast.load_vocoder(files["pth"]).synthesize(feats, lengths, pitch, pitchf, 1, noise=False)
    _close(voc.synthesize(feats, lengths, pitch, pitchf, 1, noise=False), ref)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = voc.synthesize(feats, lengths, pitch, pitchf, 1, noise=True, generator=torch.Generator().manual_seed(0))
        b = voc.synthesize(feats, lengths, pitch, pitchf, 1, noise=True, generator=torch.Generator().manual_seed(0))
    assert [str(w.message) for w in caught if "draws noise inside itself" in str(w.message)][:1]
    assert len([w for w in caught if "draws noise inside itself" in str(w.message)]) == 1  # once per model
    assert not torch.equal(a, b)  # the graph's own draws: documented, not seedable
    assert not torch.equal(a, ref)


def test_seeded_noise_is_reproducible_and_scaled_as_in_torch(files) -> None:
    """(c) The prior noise ``rnd`` comes from the item's generator, ``randn * 0.66666``: a no-F0 model
    (no other noise) gives exactly torch's seeded noise=True output, and the same seed the same audio."""
    voc = rvcfast.load_vocoder(files["nof0"])
    ref_model = rvcfast.load_vocoder(files["nof0_pth"])
    assert not voc.has_f0 and not voc.info.noise_in_graph
    feats, _, _ = _inputs(2, 64, 768, seed=3)
    lengths = torch.tensor([64, 41])

    def run(model, seed):
        return model.synthesize(feats, lengths, speaker=3, noise=True, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(voc, 5), run(voc, 5), run(voc, 6)
    quiet = voc.synthesize(feats, lengths, speaker=3, noise=False)
    peak = float(quiet.abs().max())
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-2 * peak and float((a - quiet).abs().max()) > 1e-2 * peak
    _close(a, run(ref_model, 5))  # unscaled randn (RVC's onnx_inference) would differ by percents


def test_file_without_metadata_needs_its_sample_rate(files, tmp_path) -> None:
    """(d) RVC WebUI's exporter writes no metadata: the rate must be given, and must fit the graph."""
    bare = files["bare"]
    with pytest.raises(ModelLoadError, match="does not say its sample rate") as err:
        rvcfast.load_vocoder(bare)
    assert names_file(str(err.value), bare) and "40000 Hz" in str(err.value)  # the decoder's hop, as a hint
    with pytest.raises(ModelLoadError, match="hop length") as err:
        rvcfast.load_vocoder(bare, sample_rate=48000)
    assert names_file(str(err.value), bare)
    voc = rvcfast.load_vocoder(bare, sample_rate=40000)
    assert (voc.version, voc.has_f0, voc.num_speakers, voc.info.inter_channels, voc.hop_length) == ("v2", True, 4, 16, 400)
    feats, pitch, pitchf = _inputs(1, 45, 768, seed=4)
    lengths = torch.tensor([45])
    ref = rvcfast.load_vocoder(files["pth"]).synthesize(feats, lengths, pitch, pitchf, 3, noise=False)
    _close(voc.synthesize(feats, lengths, pitch, pitchf, 3, noise=False), ref)
    assert describe_model(bare)["sample_rate"] is None
    with pytest.raises(ParameterError, match="ONNX"):
        rvcfast.load_vocoder(files["pth"], sample_rate=40000)
    tagged = add_onnx_metadata(bare, sample_rate=40000, output=tmp_path / "tagged.onnx")
    assert rvcfast.load_vocoder(tagged).sample_rate == 40000


def test_bad_files_are_refused_naming_the_file(files, tmp_path) -> None:
    """(e) Not ONNX, an ONNX graph with other inputs, or RVC's names with the wrong types."""
    from onnx import TensorProto, helper

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 this is not a protobuf" * 20)
    pth = tmp_path / "renamed.onnx"
    shutil.copy(files["pth"], pth)
    other = tmp_path / "other.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])), other)
    typed = tmp_path / "half.onnx"
    proto = onnx.load(files["det"])
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(proto, typed)
    for path, words in ((junk, "ONNX"), (pth, "ONNX"), (other, r"inputs are \['x'\]"), (typed, "'phone'"),
                        (tmp_path / "missing.onnx", "does not exist")):
        with pytest.raises(ModelLoadError, match=words) as err:
            rvcfast.load_vocoder(path)
        assert names_file(str(err.value), path), str(err.value)


def test_float32_only_and_providers(files) -> None:
    """(f) bfloat16 / float16 are refused; so are a CUDA device without onnxruntime's CUDA provider
    and providers onnxruntime does not have."""
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(ParameterError, match="float32 only"):
            rvcfast.load_vocoder(files["det"], dtype=dtype)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ParameterError, match="CUDAExecutionProvider"):
            rvcfast.load_vocoder(files["det"], device="cuda")
    with pytest.raises(ParameterError, match="NoSuchExecutionProvider"):
        rvcfast.load_vocoder(files["det"], providers=["NoSuchExecutionProvider"])
    voc = rvcfast.load_vocoder(files["det"], providers=["CPUExecutionProvider"])
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):  # onnxruntime follows torch's intra-op thread count, call by call
            torch.set_num_threads(threads)
            assert voc._session(True).get_session_options().intra_op_num_threads == threads
    finally:
        torch.set_num_threads(before)


def _small_segments(conv: rvcfast.Converter) -> rvcfast.Converter:
    """The converter with 3 s segments (RVC's split logic, scaled down) so that a short clip is
    cut into several segments that share padded model calls."""
    engine = copy.copy(conv.engine)
    engine.segment_config = SegmentConfig(x_pad=1, x_query=1, x_center=2, x_max=3)
    return rvcfast.Converter.from_engine(engine)


def test_converter_from_onnx_equals_converter_from_pth(tiny_models, files) -> None:
    """(b) End to end through the engine (features, index, protect, padded batches, skip_frames,
    segment joins): the .onnx voice converts as its .pth does."""
    kw = dict(index=tiny_models.index, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")
    by_pth = _small_segments(rvcfast.Converter.from_pretrained(files["pth"], **kw))
    by_onnx = _small_segments(rvcfast.Converter.from_pretrained(files["det"], **kw))
    assert isinstance(by_onnx.vocoder, OnnxVocoder)
    clip = tone(6.5, freq=180.0)
    settings = dict(noise=False, index_rate=0.5, protect=0.3, speaker=2, pitch=3)
    ref = by_pth.convert(clip, 16000, **settings)
    got = by_onnx.convert(clip, 16000, **settings)
    assert got.sample_rate == ref.sample_rate == 40000
    _close(got.audio, ref.audio)


def test_v1_w_okada_file_picks_the_v1_features(tiny_models, files) -> None:
    """A v1 no-F0 32 kHz export with w-okada's interface (prior noise drawn in the graph): the
    converter feeds it 256-d final_proj features, as the .pth's converter does."""
    kw = dict(encoder=tiny_models.encoder, device="cpu")
    by_onnx = rvcfast.Converter.from_pretrained(files["v1"], **kw)
    assert (by_onnx.vocoder.version, by_onnx.vocoder.info.interface, by_onnx.vocoder.sample_rate) == ("v1", "w-okada", 32000)
    clip = tone(1.5)
    ref = rvcfast.Converter.from_pretrained(files["v1_pth"], **kw).convert(clip, 16000, noise=False, speaker=1)
    _close(by_onnx.convert(clip, 16000, noise=False, speaker=1).audio, ref.audio)


def test_w_okada_metadata_json_alone_is_read(files, tmp_path) -> None:
    """w-okada's own files carry only the ``metadata`` JSON: its samplingRate is the model's rate."""
    proto = onnx.load(files["v1"])
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key == "metadata"]
    assert keep and '"samplingRate": 32000' in keep[0][1]
    del proto.metadata_props[:]
    for key, value in keep:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, tmp_path / "wokada_own.onnx")
    voc = rvcfast.load_vocoder(tmp_path / "wokada_own.onnx")
    assert (voc.sample_rate, voc.hop_length, voc.version, voc.has_f0, voc.num_speakers) == (32000, 320, "v1", False, 2)
    assert voc.embedder_model == "hubert_base"  # w-okada's name for ContentVec: the default encoder


def test_cli_converts_and_describes_with_an_onnx_model(tiny_models, files, tmp_path, capsys) -> None:
    """(g) ``rvcfast convert voice.onnx in.wav -o out/`` and ``rvcfast info voice.onnx``."""
    clip = tmp_path / "in.wav"
    sf.write(clip, tone(1.2), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    args = ["--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe), "--device", "cpu"]
    code = main(["convert", str(files["det"]), str(clip), "-o", str(out), "--no-noise", "--format", "wav",
                 "--subtype", "FLOAT", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "det.onnx: v2 40000 Hz" in captured.err
    audio, rate = sf.read(out / "in.wav", dtype="float32")
    ref = rvcfast.Converter.from_pretrained(files["pth"], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe,
                                            device="cpu").convert(clip, noise=False)
    assert rate == 40000
    _close(audio, ref.audio)
    assert main(["info", str(files["noisy"])]) == 0
    text = capsys.readouterr().out
    assert "40000 Hz" in text and '"noise_in_graph": true' in text


def test_realtime_converter_runs_an_onnx_voice(tiny_models, files) -> None:
    """The realtime path (one buffer per block, ``skip_frames=(head, 0)``) gives the .pth's output too."""
    kw = dict(encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")
    clip = tone(1.2).astype(np.float32)
    outs = []
    for model in (files["pth"], files["det"]):
        rt = rvcfast.RealtimeConverter(rvcfast.Converter.from_pretrained(model, **kw), 16000, noise=False)
        outs.append(np.concatenate([rt.push(clip[i : i + 4000]) for i in range(0, clip.shape[0], 4000)] + [rt.flush()]))
    _close(outs[1], outs[0])

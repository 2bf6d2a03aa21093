"""A streamer's walk through docs/realtime.md with a voice exported to ONNX (docs/onnx.md) beside
its ``.pth``: ``rvcfast export-onnx``, then the realtime API with both voices side by side at
16, 44.1 and 48 kHz, odd push sizes, ``whole_blocks``, the end-of-stream tail, two streams on
one voice in threads, and the errors a user meets (a graph that runs at one length only, a
block too short for the content encoder).

Tiny random-weight models (tests/helpers.py); short streams with a small geometry.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close_to_peak, one_thread_fixture, stream_in_pieces, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.cli import main
from rvcfast.errors import ModelLoadError, ParameterError
from rvcfast.realtime import RealtimeConverter

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

#: docs/onnx.md: the ONNX voice's output equals the torch model's "to float32 rounding";
#: the ONNX tests bound that at 1e-4 of the output's peak.
REL_TOL = 1e-4
#: A short stream geometry: 0.1 s blocks, 0.2 s of context, 20 ms crossfade (the default 10 ms search).
SMALL = dict(block_seconds=0.1, context_seconds=0.2, crossfade_seconds=0.02)


def _speechlike(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A voiced tone with a vibrato and a little noise, float32."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(180.0 + 20.0 * np.sin(2 * np.pi * 3.0 * t)) / rate
    noise = 0.01 * np.random.default_rng(seed).standard_normal(t.shape[0])
    return (0.3 * np.sin(phase) + 0.1 * np.sin(2 * phase) + noise).astype(np.float32)


def _converter(models, voice: Path) -> rvcfast.Converter:
    kw = dict(index=models.index, encoder=models.encoder, f0_weights=models.rmvpe, device="cpu")
    return rvcfast.Converter.from_pretrained(voice, **kw)


@pytest.fixture(scope="module")
def voices(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, rvcfast.Converter]:
    """The tiny .pth voice and its export made as docs/onnx.md shows (``rvcfast export-onnx
    voice.pth -o out/voice.onnx --deterministic``), each a Converter with the index."""
    out = tmp_path_factory.mktemp("rt_onnx") / "voice.onnx"
    assert main(["export-onnx", str(tiny_models.voice), "-o", str(out), "--deterministic", "--no-verify", "-q"]) == 0
    return {"pth": tiny_models.converter(), "onnx": _converter(tiny_models, out), "path": out}  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("rate", "sizes", "whole"),
    [(16000, [7, 1, 1600, 333], False), (44100, [1000], False), (48000, [48000], False), (48000, [4800], True)],
)
def test_the_onnx_voice_streams_as_its_pth(voices, rate: int, sizes: list[int], whole: bool) -> None:
    """Tiny, odd and larger-than-the-buffer pushes at the docs' rates: every push is answered with
    as many samples, the flush with ``latency_samples``, the whole output is the input's length
    plus the latency, and the ONNX voice's stream equals the .pth's (noise=False)."""
    x = _speechlike(0.4, rate)
    outs = []
    for kind in ("pth", "onnx"):
        rt = RealtimeConverter(voices[kind], sample_rate=rate, whole_blocks=whole, noise=False, **SMALL)
        y = stream_in_pieces(rt, x, sizes)
        assert y.shape == (x.shape[0] + rt.latency_samples,)
        outs.append(y)
    assert_close_to_peak(outs[1], outs[0], REL_TOL, 1e-6)


def test_two_streams_share_one_onnx_voice(voices) -> None:
    """docs/realtime.md: several converters may share one Converter. Two streams on the ONNX
    voice in threads give what each gives alone."""
    rate = 22050
    inputs = [_speechlike(0.3, rate, seed=1), _speechlike(0.3, rate, seed=2)[::-1].copy()]
    alone = [stream_in_pieces(RealtimeConverter(voices["onnx"], rate, noise=False, **{**SMALL, "block_seconds": 0.12}), x, [999])
             for x in inputs]
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(2)

    def run(i: int) -> None:
        rt = RealtimeConverter(voices["onnx"], rate, noise=False, **{**SMALL, "block_seconds": 0.12})
        start.wait(timeout=30)
        got[i] = stream_in_pieces(rt, inputs[i], [999])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_array_equal(got[i], alone[i])


def test_a_graph_that_runs_at_one_length_names_the_file(voices, tiny_models, tmp_path) -> None:
    """An ONNX voice whose graph runs only at its traced length (RVC WebUI's exports, reported
    usable at 200 frames only) loaded, then failed at the first block with onnxruntime's bare
    "Got invalid dimensions for input: pitchf ... Expected: 200", naming no file. Now a
    ModelLoadError names the file and the frames, and the stream restarts from silence."""
    proto = onnx.load(voices["path"])
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.ClearField("dim_param")
                dim.dim_value = 200
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, fixed)
    rt = RealtimeConverter(_converter(tiny_models, fixed), 16000, noise=False, **SMALL)
    with pytest.raises(ModelLoadError, match=r"failed to run the graph on 33 frames .*Expected: 200.*export-onnx") as info:
        rt.push(np.zeros(1600, np.float32))
    assert str(info.value).startswith(f"{fixed}: ")


def test_a_buffer_shorter_than_the_encoders_window_is_refused_when_made(voices) -> None:
    """``block_seconds=0.01, crossfade_seconds=0.01, search_seconds=0, context_seconds=0``
    (a streamer chasing the lowest latency) was accepted, then every push failed with the
    encoder's "audio of 320 samples is too short" (the stream's 10 ms blocks are 20 ms with
    the crossfade). Now it is refused when made, naming a context that works, which does."""
    low = dict(block_seconds=0.01, crossfade_seconds=0.01, search_seconds=0)
    with pytest.raises(ParameterError, match=r"= 0\.02 s is shorter than the content encoder's window .*"
                       r"use context_seconds=0\.01 \(context_seconds=0 now\)"):
        RealtimeConverter(voices["onnx"], 48000, context_seconds=0, noise=False, **low)
    rt = RealtimeConverter(voices["onnx"], 48000, context_seconds=0.01, noise=False, **low)
    x = _speechlike(0.05, 48000)
    assert stream_in_pieces(rt, x, [480]).shape == (x.shape[0] + rt.latency_samples,)


def test_docs_say_how_onnx_voices_stream() -> None:
    """docs/onnx.md said the realtime output is the same as the .pth's, which holds with
    noise=False only (the default noise=True draws the NSF noise unseeded in the graph, or
    not at all); docs/realtime.md did not mention ONNX voices."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    onnx_md = " ".join((docs / "onnx.md").read_text(encoding="utf-8").split())
    realtime_md = " ".join((docs / "realtime.md").read_text(encoding="utf-8").split())
    assert "runs an `.onnx` voice too (same output as the `.pth`)" not in onnx_md
    assert "with `noise=False` its output equals the `.pth` voice's realtime output" in onnx_md
    assert "An `.onnx` voice" in realtime_md and "only the prior noise follows `seed`" in realtime_md

"""``extract_blocks`` of CREPE (full, tiny), FCPE and hybrid trackers.

Before, only RMVPE split its work into blocks: a long input tracked with CREPE or FCPE
froze ``Engine.run``'s progress for the whole F0 pass, and in the server held every other
request back until it ended. Each block here is a bounded amount of network work, and
the blocks' results, concatenated in order, equal ``extract`` bit for bit. Block sizes
are made small (``block_frames``) so that short signals have several blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

from rvcfast.errors import BackendUnavailableError
from rvcfast.f0 import crepe as crepe_mod
from rvcfast.f0 import fcpe as fcpe_mod
from rvcfast.f0.crepe import CrepeExtractor, CrepeTinyExtractor
from rvcfast.f0.fcpe import FCPEExtractor
from rvcfast.f0.hybrid import HybridExtractor

SR = 16000
HOP = 160


def _weights(path_fn: Any) -> None:
    try:
        path_fn()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    """A gliding tone with noise and a silent stretch (voiced and unvoiced frames)."""
    rng = np.random.default_rng(3)
    t = np.arange(HOP * 360) / SR
    x = 0.3 * np.sin(2 * np.pi * (140 * t + 40 * t**2)) + 0.01 * rng.standard_normal(t.size)
    x[HOP * 150 : HOP * 190] = 0.0
    return x.astype(np.float32)


def _joined(ext: Any, audio: np.ndarray) -> tuple[np.ndarray, int]:
    blocks = ext.extract_blocks(audio)
    parts = [np.asarray(b()) for b in blocks]
    return np.concatenate(parts), len(blocks)


def _lengths(block: int, longest: int) -> list[int]:
    """Sample counts: empty, one frame, either side of one and two blocks, and long."""
    frames = [block - 1, block, block + 1, 2 * block, 2 * block + 1]
    return sorted({0, 1, 159, 160, 161, *(f * HOP - 1 for f in frames), *(f * HOP for f in frames), longest})


class PassLog:
    """Wraps a network to log the frames of each pass: ``passes[-1]`` is the current block's."""

    def __init__(self, net: Any) -> None:
        self.net, self.passes = net, [[]]

    def __call__(self, frames: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.passes[-1].append(int(frames.shape[0]))
        return self.net(frames, **kw)


def test_crepe_tiny_blocks_equal_extract_at_every_length(signal: np.ndarray):
    _weights(lambda: crepe_mod.crepe_weights_path("tiny"))
    # 48-frame Viterbi segments straddle the 32-frame blocks; 16-frame passes
    ext = CrepeTinyExtractor(block_frames=32, forward_batch=16, batch_size=48)
    assert ext.block_size() == 32
    for n in _lengths(32, signal.size):
        audio = signal[:n]
        got, count = _joined(ext, audio)
        want = ext.extract(audio)
        assert count == max(1, -(-(n // HOP + 1) // 32)), n
        assert got.dtype == want.dtype and np.array_equal(got, want), n
    assert np.count_nonzero(want) and np.count_nonzero(want == 0)  # voiced and unvoiced frames


@pytest.mark.parametrize("options", [{}, {"refine": True, "decoder": "argmax"}])
def test_crepe_full_blocks_equal_extract(signal: np.ndarray, options: dict[str, Any]):
    _weights(lambda: crepe_mod.crepe_weights_path("full"))
    ext = CrepeExtractor(block_frames=48, forward_batch=16, batch_size=40, **options)  # full CREPE is slow
    audio = signal[: 110 * HOP]
    got, count = _joined(ext, audio)
    assert count == 3 and np.array_equal(got, ext.extract(audio))


def test_crepe_blocks_are_bounded_and_short_inputs_are_one(signal: np.ndarray):
    _weights(lambda: crepe_mod.crepe_weights_path("tiny"))
    ext = CrepeTinyExtractor(block_frames=40, forward_batch=16)  # rounded up to whole passes
    assert ext.block_size() == 48
    assert CrepeTinyExtractor().block_size() == crepe_mod.BLOCK_FRAMES["tiny"]
    log = PassLog(ext.model)
    ext.model = log
    audio = signal[: 200 * HOP]
    blocks = ext.extract_blocks(audio)
    assert not log.passes[0]  # nothing runs before the first call
    parts = []
    for b in blocks:
        parts.append(b())
        log.passes.append([])
    per_block = [sum(p) for p in log.passes[:-1]]
    assert len(blocks) == 5 and per_block == [48, 48, 48, 48, 16]  # 201 frames; the last pass padded to 16
    assert all(len(p) == 3 for p in log.passes[:4])  # extract's 16-frame passes
    assert [len(p) for p in parts] == [0, 0, 0, 0, 201]  # the filters span the track: all at the end
    for n in (0, HOP, 47 * HOP):  # at most 48 frames: one call, extract itself (so extract_batch stays batched)
        assert len(ext.extract_blocks(signal[:n])) == 1


def test_crepe_blocks_must_run_in_order(signal: np.ndarray):
    _weights(lambda: crepe_mod.crepe_weights_path("tiny"))
    blocks = CrepeTinyExtractor(block_frames=16, forward_batch=16).extract_blocks(signal[: 40 * HOP])
    with pytest.raises(RuntimeError, match="in order"):
        blocks[1]()
    _weights(fcpe_mod.fcpe_weights_path)
    blocks = FCPEExtractor(block_frames=16).extract_blocks(signal[: 40 * HOP])
    with pytest.raises(RuntimeError, match="in order"):
        blocks[2]()


@pytest.mark.parametrize("max_frames", [32768, 128, 64])
def test_fcpe_blocks_equal_extract_at_every_length(signal: np.ndarray, max_frames: int):
    _weights(fcpe_mod.fcpe_weights_path)
    # 128 / 64: longer inputs take the windowed path (one pass per window, with context)
    ext = FCPEExtractor(block_frames=50, max_frames=max_frames)
    layers = len(ext.model.net.net.encoder_layers)
    for n in _lengths(50, signal.size):
        audio = signal[:n]
        got, count = _joined(ext, audio)
        frames = n // HOP + 1
        windows = -(-frames // max_frames) if frames > max_frames else 1
        assert count == (1 if frames <= 50 else windows * (layers + 1)), n
        assert got.dtype == np.float32 and np.array_equal(got, ext.extract(audio)), n


def test_fcpe_blocks_run_one_layer_pass_each(signal: np.ndarray):
    _weights(fcpe_mod.fcpe_weights_path)
    ext = FCPEExtractor(block_frames=50, max_frames=128)
    assert FCPEExtractor().block_frames == fcpe_mod.BLOCK_FRAMES
    layers = ext.model.net.net.encoder_layers
    log: list[list[int]] = [[]]
    hooks = [layer.register_forward_hook(lambda m, args, out: log[-1].append(int(out.shape[1]))) for layer in layers]
    try:
        audio = signal[: 300 * HOP]  # 301 frames: three windows of at most 128 frames
        blocks = ext.extract_blocks(audio)
        assert not log[0]
        for b in blocks:
            b()
            log.append([])
    finally:
        for h in hooks:
            h.remove()
    per_block = log[:-1]
    assert len(per_block) == 3 * (len(layers) + 1)
    # the first block of each window runs its input convolution only; then one layer each,
    # over the window and at most 128 frames of context on each side
    assert all(len(p) <= 1 for p in per_block) and sum(map(len, per_block)) == 3 * len(layers)
    assert all(f <= 128 + 2 * 128 for p in per_block for f in p)
    assert len(ext.extract_blocks(signal[: 49 * HOP])) == 1


def test_hybrid_blocks_delegate_and_equal_extract(signal: np.ndarray):
    _weights(lambda: crepe_mod.crepe_weights_path("tiny"))
    _weights(fcpe_mod.fcpe_weights_path)
    crepe = CrepeTinyExtractor(block_frames=32, forward_batch=16)
    fcpe = FCPEExtractor(block_frames=60)
    hybrid = HybridExtractor([crepe, fcpe], min_voiced=1)
    for n in (0, HOP, 31 * HOP, 32 * HOP, 59 * HOP, 60 * HOP, 200 * HOP + 7):
        audio = signal[:n]
        got, count = _joined(hybrid, audio)
        frames = n // HOP + 1
        members = [len(crepe.extract_blocks(audio)), len(fcpe.extract_blocks(audio))]
        assert count == (1 if members == [1, 1] else sum(members)), n
        assert np.array_equal(got, hybrid.extract(audio)) and got.shape == (frames,), n


def test_hybrid_member_without_blocks_is_one_block(signal: np.ndarray):
    _weights(lambda: crepe_mod.crepe_weights_path("tiny"))

    class Plain:
        name, sample_rate, hop_length = "plain", SR, HOP

        def extract(self, audio: np.ndarray) -> np.ndarray:
            return np.full(audio.size // HOP + 1, 200.0)

        def extract_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
            return [self.extract(a) for a in audios]

    hybrid = HybridExtractor([CrepeTinyExtractor(block_frames=32, forward_batch=16), Plain()])
    audio = signal[: 100 * HOP]
    got, count = _joined(hybrid, audio)
    assert count == 4 + 1 and np.array_equal(got, hybrid.extract(audio))


def test_engine_run_with_crepe_tiny_reports_f0_progress_first(tiny_models):
    _weights(lambda: crepe_mod.crepe_weights_path("tiny"))
    engine = tiny_models.converter(f0="crepe-tiny", f0_weights=None, f0_options={"block_frames": 256}).engine
    prep = engine.prepare(tone(4.0).astype(np.float32), SR)
    blocks = len(engine.f0_extractor.extract_blocks(prep.padded))
    assert blocks > 1
    params = engine.params(seed=2)
    events: list[tuple[str, float]] = []
    synth = engine.synthesize_segments

    def logged(segs: Any, *args: Any) -> Any:
        events.append(("batch", 0.0))
        return synth(segs, *args)

    engine.synthesize_segments = logged  # type: ignore[method-assign]
    try:
        res = engine.run([prep], params, on_progress=lambda k, f: events.append(("progress", f)))[0]
    finally:
        del engine.synthesize_segments
    assert res.error is None
    first_batch = [e[0] for e in events].index("batch")
    during_f0 = [f for kind, f in events[:first_batch] if kind == "progress"]
    assert len(during_f0) == blocks and 0 < during_f0[0] < during_f0[-1] < 1
    plain = engine.run([prep], params)[0]
    assert np.array_equal(res.audio, plain.audio)

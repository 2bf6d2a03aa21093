"""Reproducibility, walked as a user who needs the same output for the same input and settings.

A producer re-rendering a song, a data-set builder, a test suite of their own: with ``seed``
the model noise is drawn per file segment from that seed, so a file's output does not depend
on what else is in the batch, on the batch's order or size budget, on the compute workers,
on the front end (``convert``, ``convert_batch``, ``iter_batch``, ``prepare`` + ``run``,
``stream``, the command line) or on how a long file is split. ``noise=False`` draws nothing.

Tolerance. Run alone, the same call gives the same samples bit for bit. Packing segments of
other files into the same model call changes the tensors' shapes (padding, oneDNN's
blocking, another thread count with compute workers): float32 rounding then moves samples
by at most ~3e-7 of the output's peak on these models (measured; 5e-7 on the golden voice).
:data:`FLOAT_NOISE` (1e-5 of the peak) leaves 30x room for that, while a change in the noise
itself (another seed, a noise draw shifted by the batch) moves samples by 1e-2 or more of the
peak: each test also checks that a different seed is told apart at the same tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (  # noqa: F401 (fixtures)
    cli_weights,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast
from rvcfast.errors import BackendUnavailableError
from rvcfast.segment import SegmentConfig

#: Largest change float32 rounding may make, as a share of the expected output's peak.
FLOAT_NOISE = 1e-5
#: Smallest change another noise draw makes, as a share of the peak (measured 2e-2 to 1.2).
NOISE_CHANGE = 1e-3


def _share(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest sample difference as a share of ``expected``'s peak."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    peak = float(np.abs(expected).max())
    assert peak > 0, "a silent output tells nothing apart"
    return float(np.abs(actual.astype(np.float64) - expected).max()) / peak


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    share = _share(actual, expected)
    assert share <= FLOAT_NOISE, f"outputs differ by {share:.3g} of the peak (float rounding stays under {FLOAT_NOISE})"


def assert_other(actual: np.ndarray, expected: np.ndarray) -> None:
    share = _share(actual, expected)
    assert share > NOISE_CHANGE, f"outputs differ by only {share:.3g} of the peak: the noise did not change"


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    """Inputs of other lengths (16 kHz): the file under test, and the batch's other files."""
    return {
        "song": tone(1.3, freq=200),
        "long": tone(2.7, freq=150),
        "short": tone(0.6, freq=300),
        "stub": tone(0.05, freq=250),
    }


class _CallSpy:
    """Records how many segments each model call of ``engine`` took."""

    def __init__(self, engine: rvcfast.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        inner = engine.synthesize_segments

        def spy(segs, params, timer):
            self.calls.append(len(segs))
            return inner(segs, params, timer)

        monkeypatch.setattr(engine, "synthesize_segments", spy)


# ----------------------------------------------------------------------------- the library


def test_same_seed_same_samples_other_seed_other_noise(tiny_converter, clips):
    conv, song = tiny_converter, clips["song"]
    first = conv.convert(song, 16000, seed=7).audio
    np.testing.assert_array_equal(conv.convert(song, 16000, seed=7).audio, first)
    assert_other(conv.convert(song, 16000, seed=8).audio, first)
    # noise=False draws nothing: the seed does not matter, and the output is not the seeded one
    quiet = conv.convert(song, 16000, noise=False, seed=1).audio
    np.testing.assert_array_equal(conv.convert(song, 16000, noise=False, seed=2).audio, quiet)
    np.testing.assert_array_equal(conv.convert(song, 16000, noise=False).audio, quiet)
    assert_other(first, quiet)


def test_without_a_seed_every_run_draws_new_noise(tiny_converter, clips):
    """As documented (CLI ``--seed``: "random"): without a seed two runs differ."""
    song = clips["song"]
    assert_other(tiny_converter.convert(song, 16000).audio, tiny_converter.convert(song, 16000).audio)


@pytest.mark.parametrize(
    "settings",
    [dict(seed=7), dict(noise=False), dict(seed=7, keep_length=True, rms_mix_rate=0.5, output_sample_rate=44100)],
    ids=["seed", "no-noise", "seed-keep-length"],
)
def test_a_file_converts_the_same_in_any_batch(tiny_converter, clips, monkeypatch, settings):
    """The file alone, then among files of other lengths packed into the same model calls,
    in both orders, and with every segment in a call of its own."""
    conv = tiny_converter
    alone = {name: conv.convert(audio, 16000, **settings).audio for name, audio in clips.items()}
    spy = _CallSpy(conv.engine, monkeypatch)
    names = list(clips)
    for order, budget in ((names, 300.0), (names[::-1], 300.0), (names, 0.5)):
        spy.calls.clear()
        results = conv.convert_batch([(clips[n], 16000) for n in order], batch_seconds=budget, **settings)
        assert max(spy.calls) == (len(names) if budget == 300 else 1), spy.calls  # really packed (or not)
        for name, result in zip(order, results):
            assert result.ok, result.error
            assert_same(result.audio, alone[name])
    if "seed" in settings:
        other = conv.convert_batch([(clips[n], 16000) for n in names], batch_seconds=300, **{**settings, "seed": 8})
        assert_other(other[0].audio, alone[names[0]])


def test_every_front_end_gives_the_seeded_output(tiny_converter, clips, tmp_path):
    """convert, convert_batch, iter_batch, prepare + run, stream, two compute workers: one output."""
    conv, engine = tiny_converter, tiny_converter.engine
    paths = []
    for name in ("long", "song", "short"):
        paths.append(tmp_path / f"{name}.wav")
        sf.write(paths[-1], clips[name], 16000, subtype="FLOAT")
    song = paths[1]
    expected = conv.convert(song, seed=3).audio
    assert_same(conv.convert_batch(paths, seed=3, batch_seconds=300)[1].audio, expected)
    assert_same(list(conv.iter_batch(paths[::-1], seed=3))[1].audio, expected)
    q = engine.params(seed=3)
    preps = [engine.prepare(p) for p in paths]
    assert_same(engine.run(preps, q, batch_seconds=300)[1].audio, expected)
    assert_same(np.concatenate(list(engine.stream(preps[1], q))), expected)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers of one thread each
    try:
        workers = conv.convert_batch(paths, seed=3, compute_workers=2, batch_seconds=0.5)
    finally:
        torch.set_num_threads(before)
    assert_same(workers[1].audio, expected)
    assert_other(conv.convert(song, seed=4).audio, expected)


def test_a_long_file_split_into_segments_converts_the_same(tiny_converter, clips, monkeypatch):
    """An input longer than ``x_max`` is cut into segments, each with noise of its own from the
    seed: alone, packed with another file, and streamed segment by segment, the output is the
    same. The segment plan is scaled down (split past 4 s, about every 3 s instead of past 41 s,
    every 38 s) so that the test stays short: the code path is the one a song takes."""
    base = tiny_converter.engine
    engine = rvcfast.Engine(
        base.vocoder, base.encoder, base.f0_extractor, base.index, device="cpu",
        segment_config=SegmentConfig(x_pad=1, x_query=1, x_center=3, x_max=4),
    )
    conv = rvcfast.Converter.from_engine(engine)
    track = tone(8.5, freq=180)
    prep = engine.prepare(track, 16000)
    assert len(prep.segments) == 3
    alone = conv.convert(track, 16000, seed=5).audio
    spy = _CallSpy(engine, monkeypatch)
    packed = conv.convert_batch([(clips["short"], 16000), (track, 16000)], seed=5, batch_seconds=300)[1]
    assert spy.calls == [4]  # the three segments and the other file in one call
    assert_same(packed.audio, alone)
    streamed = np.concatenate(list(engine.stream(prep, engine.params(seed=5))))
    assert_same(streamed, alone)
    kept = conv.convert(track, 16000, seed=5, keep_length=True).audio
    assert_same(conv.convert_batch([(track, 16000), (clips["song"], 16000)], seed=5, keep_length=True, batch_seconds=300)[0].audio, kept)
    assert_other(conv.convert(track, 16000, seed=6).audio, alone)


def test_channels_each_converts_every_channel_as_its_own_file(tiny_converter, clips):
    """channels="each": every channel is converted as that channel alone would be, same seed,
    whatever else is in the batch (an input under 41 s is not split; no peak over 0.95)."""
    conv = tiny_converter
    left, right = tone(1.3, freq=200, amp=0.3), tone(1.3, freq=260, amp=0.2)
    stereo = np.stack([left, right], axis=1)
    out = conv.convert(stereo, 16000, seed=9, channels="each").audio
    assert out.shape[1] == 2
    assert_same(out[:, 0], conv.convert(left, 16000, seed=9).audio)
    assert_same(out[:, 1], conv.convert(right, 16000, seed=9).audio)
    batch = conv.convert_batch([(clips["long"], 16000), (stereo, 16000)], seed=9, channels="each", batch_seconds=300)
    assert_same(batch[1].audio, out)


def test_the_command_line_seed_gives_the_library_output(tiny_models, tiny_converter, clips, tmp_path):
    from rvcfast.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("song", "long"):
        sf.write(inputs / f"{name}.wav", clips[name], 16000, subtype="FLOAT")
    before = torch.get_num_threads()
    try:
        argv = ["convert", str(tiny_models.voice), str(inputs), "-o", str(tmp_path / "out"), "--index", str(tiny_models.index),
                *cli_weights(tiny_models), "--seed", "5", "--subtype", "FLOAT", "--batch-seconds", "300", "-q"]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(before)
    for name in ("song", "long"):
        written, rate = sf.read(tmp_path / "out" / f"{name}.wav", dtype="float32")
        assert rate == tiny_converter.sample_rate
        assert_same(written, tiny_converter.convert(inputs / f"{name}.wav", seed=5).audio)


def test_a_live_stream_is_the_same_however_the_samples_arrive(tiny_converter, clips):
    """RealtimeConverter: the same seed and input give the same output whatever the push sizes."""
    from rvcfast.realtime import RealtimeConverter

    audio = np.concatenate([clips["song"], clips["short"]]).astype(np.float32)

    def run(sizes: list[int], **settings) -> np.ndarray:
        rt = RealtimeConverter(tiny_converter, 16000, **settings)
        out, at, k = [], 0, 0
        while at < audio.shape[0]:
            out.append(rt.push(audio[at : at + sizes[k % len(sizes)]]))
            at += sizes[k % len(sizes)]
            k += 1
        out.append(rt.flush())
        return np.concatenate(out)

    seeded = run([4000], seed=4)
    np.testing.assert_array_equal(run([333, 5001, 1200], seed=4), seeded)
    assert_other(run([4000], seed=5), seeded)
    np.testing.assert_array_equal(run([700], noise=False), run([4000], noise=False))


def test_a_live_stream_takes_any_integer_seed_as_convert_does(tiny_converter, clips):
    from rvcfast.realtime import RealtimeConverter

    seed = 2**64 + 3  # "any integer" (docs/parameters.md); convert() and the CLI take it
    tiny_converter.convert(clips["short"], 16000, seed=seed)
    x = clips["song"].astype(np.float32)
    first = RealtimeConverter(tiny_converter, 16000, seed=seed).push(x)
    np.testing.assert_array_equal(RealtimeConverter(tiny_converter, 16000, seed=seed).push(x), first)
    RealtimeConverter(tiny_converter, 16000, seed=-(2**64) - 5).push(x)


# ----------------------------------------------------------------------------- F0 and the index


@pytest.mark.parametrize("backend", ["rmvpe", "dio", "pm", "harvest", "fcpe", "crepe-tiny"])
def test_f0_tracks_do_not_depend_on_the_batch(tiny_models, clips, backend):
    """Each backend gives a file the same track alone, twice, and among files of other lengths
    in either order (the engine tracks a whole batch's files in one call)."""
    from rvcfast.f0.registry import build_f0_extractor

    kw = {"weights": tiny_models.rmvpe} if backend == "rmvpe" else {}
    try:
        ext = build_f0_extractor(backend, device="cpu", **kw)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    song, other, short = (np.asarray(clips[n], dtype=np.float64) for n in ("short", "song", "stub"))
    alone = np.asarray(ext.extract(song))
    assert (alone > 0).any()
    np.testing.assert_array_equal(np.asarray(ext.extract(song)), alone)
    for batch, at in (([other, song, short], 1), ([short, song, other], 1)):
        tracks = ext.extract_batch(batch)
        np.testing.assert_array_equal((np.asarray(tracks[at]) > 0), (alone > 0))  # the same voiced frames
        np.testing.assert_allclose(np.asarray(tracks[at]), alone, rtol=1e-5, atol=0)


def test_index_neighbours_do_not_depend_on_the_other_frames(tmp_path):
    """Exact duplicates and equidistant vectors (ties): a frame gets the same neighbours (ties to
    the lower id, as faiss) searched alone, in a batch, or in another order; so the blend too."""
    from rvcfast.index import load_index, save_index

    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 16)).astype(np.float32)
    centre, offset = rng.standard_normal((2, 5, 16)).astype(np.float32)
    coarse = np.round(base * 4) / 4  # exactly representable: exact distance ties
    vectors = np.concatenate([base, base[:20], centre + offset, centre - offset, coarse]).astype(np.float32)
    save_index(tmp_path / "ties.index", vectors, nlist=4, niter=5)
    index = load_index(tmp_path / "ties.index")
    index.nprobe = 4
    queries = np.concatenate([centre, coarse[:10], base[:5], rng.standard_normal((30, 16)).astype(np.float32)])
    dist, ids = index.search(queries, 8)
    assert int((dist[:, :-1] == dist[:, 1:]).sum()) > 0  # the data has ties
    for i in range(queries.shape[0]):
        d1, i1 = index.search(queries[i : i + 1], 8)
        assert torch.equal(i1[0], ids[i]), (i, i1[0].tolist(), ids[i].tolist())
        torch.testing.assert_close(d1[0], dist[i], rtol=1e-6, atol=0)
    perm = rng.permutation(queries.shape[0])
    assert torch.equal(index.search(queries[perm], 8)[1], ids[perm])
    feats = torch.from_numpy(queries)
    one_by_one = torch.cat([index.blend(feats[i : i + 1], 0.75) for i in range(feats.shape[0])])
    torch.testing.assert_close(index.blend(feats, 0.75), one_by_one, rtol=1e-6, atol=1e-7)

"""Cutting into segments and joining them again: boundaries, seams and edge lengths.

The synthesizer is replaced by an identity stand-in (16 kHz "model", one 160-sample
hop per frame, frame ``j`` of a segment = its padded samples ``160 j .. 160 j + 159``),
so the joined output can be compared with the input sample by sample. The segment
plan is also checked against an independent transcription of RVC's loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from rvcfast.errors import AudioError, ParameterError
from rvcfast.params import ConversionParams
from rvcfast.pipeline import (
    PreparedAudio,
    finish,
    prepare,
    segment_frames,
    segment_inputs,
    segment_output_length,
)
from rvcfast.segment import SegmentConfig, find_split_points, plan_segments, reflect_pad
from rvcfast.streaming import StreamFinisher

HOP = 160  # identity stand-in: a 16 kHz model with one input frame per output hop

CONFIGS = {
    "fp32": SegmentConfig(),
    "fp16": SegmentConfig(x_pad=3, x_query=10, x_center=60, x_max=65),
    "4gb": SegmentConfig(x_pad=1, x_query=5, x_center=30, x_max=32),
}


def _identity_join(prep: PreparedAudio, keep_length: bool) -> np.ndarray:
    """Each segment through the identity stand-in, trimmed as the engine trims, joined."""
    trim = 16000 * prep.config.x_pad
    pieces = []
    for seg in segment_inputs(prep, None, None):
        frames = segment_frames(seg.audio.shape[0], seg.frames, keep_length)
        y = seg.audio[: frames * HOP]
        assert y.shape[0] == frames * HOP  # a segment's audio always covers its frames
        piece = y[trim : frames * HOP - trim]
        assert piece.shape[0] == segment_output_length(seg.audio.shape[0], seg.frames, HOP, trim, keep_length)
        pieces.append(piece)
    return np.concatenate(pieces)


def _reference_plan(audio: np.ndarray, cfg: SegmentConfig) -> list[tuple[int, int, int, int]]:
    """RVC's split search and segment loop, transcribed directly (whole-signal moving sum)."""
    window = 160
    audio_pad = np.pad(audio, (window // 2, window // 2), mode="reflect")
    opt_ts = []
    if audio_pad.shape[0] > cfg.t_max:
        audio_sum = np.zeros_like(audio)
        for i in range(window):
            audio_sum += audio_pad[i : i - window]
        for t in range(cfg.t_center, audio.shape[0], cfg.t_center):
            w = np.abs(audio_sum[t - cfg.t_query : t + cfg.t_query])
            opt_ts.append(t - cfg.t_query + np.where(w == w.min())[0][0])
    padded_len = audio.shape[0] + 2 * cfg.t_pad
    plan, s, t = [], 0, None
    for t in opt_ts:
        t = t // window * window
        plan.append((s, min(t + 2 * cfg.t_pad + window, padded_len), s // window, (t + 2 * cfg.t_pad) // window))
        s = t
    last = 0 if t is None else t
    plan.append((last, padded_len, last // window, padded_len // window))
    return plan


def _noise(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # loudness varying every 0.1 s, so the quiet points are well defined
    return rng.standard_normal(n) * np.repeat(rng.uniform(0.01, 0.3, n // 1600 + 1), 1600)[:n]


def _lengths_around_thresholds(cfg: SegmentConfig) -> list[int]:
    tm = cfg.t_max
    return [tm - 161, tm - 160, tm - 159, tm - 1, tm, tm + 1, 2 * cfg.t_center + 5, 3 * cfg.t_center + 159]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_identity_join_with_keep_length_is_the_input(name: str) -> None:
    cfg = CONFIGS[name]
    for n in _lengths_around_thresholds(cfg):
        prep = prepare(_noise(n, n % 97), cfg)
        out = _identity_join(prep, keep_length=True)
        whole = n // HOP * HOP  # the last partial 10 ms frame is the only thing not synthesised
        assert out.shape[0] == whole, (n, len(prep.segments))
        np.testing.assert_array_equal(out, prep.audio[:whole])  # no seam: nothing lost or repeated


@pytest.mark.parametrize("name", list(CONFIGS))
def test_segment_plan_matches_the_reference_loop(name: str) -> None:
    cfg = CONFIGS[name]
    for n in _lengths_around_thresholds(cfg):
        prep = prepare(_noise(n, n % 89), cfg)
        plan = [(s.start, min(s.end, prep.padded.shape[0]), s.f0_start, s.f0_end) for s in prep.segments]
        assert plan == _reference_plan(prep.audio, cfg), n


def test_default_join_drops_only_what_the_reference_drops() -> None:
    # the reference keeps min(N // 160, 2 * T50) frames per segment, T50 = (N - 400) // 320 + 1
    cfg = SegmentConfig()
    for n in _lengths_around_thresholds(cfg):
        prep = prepare(_noise(n, 3), cfg)
        expected = []
        for start, end, _, _ in _reference_plan(prep.audio, cfg):
            big_n = min(end, prep.padded.shape[0]) - start
            frames = min(big_n // 160, 2 * ((big_n - 400) // 320 + 1))
            expected.append(max(0, frames * HOP - 2 * cfg.t_pad))
        out = _identity_join(prep, keep_length=False)
        assert out.shape[0] == sum(expected), n
        # every piece starts where its segment's input starts: the kept samples are the input's
        pos = 0
        for seg, length in zip(prep.segments, expected):
            np.testing.assert_array_equal(out[pos : pos + length], prep.audio[seg.start : seg.start + length])
            pos += length


@pytest.mark.parametrize("splits", [[1], [159], [160], [699_999], [700_000], [300_000, 699_999]])
def test_split_points_at_the_very_ends_join_seamlessly(splits: list[int]) -> None:
    # a split in the first or last 10 ms: a segment's end may pass the padded end, its slice stops there
    cfg = SegmentConfig()
    n = 700_001
    x = _noise(n, 5)
    padded = reflect_pad(x, cfg.t_pad)
    prep = PreparedAudio(padded=padded, segments=plan_segments(n, splits, cfg), p_len=padded.shape[0] // HOP, config=cfg)
    out = _identity_join(prep, keep_length=True)
    np.testing.assert_array_equal(out, x[: n // HOP * HOP])


def test_split_threshold_is_t_max_less_one_frame() -> None:
    cfg = SegmentConfig()
    assert find_split_points(np.zeros(cfg.t_max - 160), cfg) == []
    # flat silence: every candidate's window is all minima, the first one wins (as np.where(...)[0][0])
    assert find_split_points(np.zeros(cfg.t_max - 159), cfg) == [cfg.t_center - cfg.t_query]
    flat = find_split_points(np.zeros(3 * cfg.t_center + 1), cfg)
    assert flat == [k * cfg.t_center - cfg.t_query for k in (1, 2, 3)]


@pytest.mark.parametrize("n", [1, 2, 159, 160, 161, 399, 400, 16_000])
def test_inputs_shorter_than_the_padding_are_one_segment(n: int) -> None:
    x = _noise(n, 7)
    prep = prepare(x)
    assert prep.padded.shape[0] == n + 32_000
    if n >= 2:  # numpy's repeated reflection (RVC pads the same way)
        np.testing.assert_array_equal(prep.padded, np.pad(prep.audio, (16_000, 16_000), mode="reflect"))
    [seg] = prep.segments
    assert (seg.start, seg.end, seg.f0_start, seg.f0_end) == (0, n + 32_000, 0, (n + 32_000) // 160)


@pytest.mark.parametrize("bad", [np.zeros(0), np.zeros((16_000, 2)), np.zeros((2, 16_000)), np.array(0.5)])
def test_prepare_refuses_empty_or_multichannel_input_clearly(bad: np.ndarray) -> None:
    # used to fail inside numpy ("can't extend empty axis", a broadcast error, an IndexError)
    with pytest.raises(AudioError, match=r"^clip\.wav: audio (has no samples|must be 1-D)"):
        prepare(bad, label="clip.wav")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x_center": 0},  # range() step 0
        {"x_query": 0},  # argmin of an empty window
        {"x_center": 10, "x_query": 6},  # overlapping searches: the same split point twice
        {"x_pad": 0},
        {"x_pad": -1},
        {"x_pad": 1.5},  # fractional seconds: float sample indices
        {"x_max": True},
        {"quiet_metric": "rms"},  # used to be accepted silently for inputs that are not split
    ],
)
def test_segment_config_refuses_values_that_cannot_segment(kwargs: dict) -> None:
    with pytest.raises(ParameterError, match="SegmentConfig"):
        SegmentConfig(**kwargs)


def test_segment_config_accepts_every_rvc_configuration() -> None:
    for cfg in CONFIGS.values():
        assert cfg.t_center >= 2 * cfg.t_query
    SegmentConfig(x_max=10**6)  # "never split"
    SegmentConfig(x_query=np.int64(6))


@pytest.mark.parametrize("model_rate,out_rate", [(40_000, None), (40_000, 44_100), (48_000, 44_100), (32_000, 16_000)])
def test_stream_finisher_any_piece_sizes_equal_the_whole_file_finish(model_rate: int, out_rate: int | None) -> None:
    # pieces of sizes that divide neither the hop nor the resampling ratio, empty ones included
    prep = prepare(_noise(16_000 * 3, 11))
    y = (np.random.default_rng(2).standard_normal(model_rate * 3) * 0.1).astype(np.float32)
    q = ConversionParams(output_sample_rate=out_rate)
    expected, _ = finish([y], prep, model_rate, q)
    for sizes in ([1, 2, 3, 7, 159, 161, 401], [0, 5, 0, 11], [y.shape[0]]):
        cuts = np.cumsum(sizes)
        pieces = np.split(y, cuts[cuts < y.shape[0]])
        fin = StreamFinisher(prep, model_rate, q)
        got = np.concatenate([fin.push(p, last=k == len(pieces) - 1) for k, p in enumerate(pieces)])
        np.testing.assert_array_equal(got, expected)
    # a finisher carries nothing into the next one: a second stream of the same input is identical
    again = StreamFinisher(prep, model_rate, q)
    np.testing.assert_array_equal(again.push(y, last=True), expected)

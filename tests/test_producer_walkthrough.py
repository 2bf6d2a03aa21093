"""Walkthrough: a music producer converting sung vocal stems (docs/getting-started.md's
conversion section, docs/parameters.md, docs/f0.md).

The stems are synthetic: sung-like harmonic tones (vibrato, glides) from 70 to 1000 Hz with
long silent gaps, a breath, a clipped note, a DC offset and 10 s of leading digital silence,
as stereo 48 kHz 24-bit WAV. The random-weight voice models put out noise that does not follow
their input, so timing is read through a *probe vocoder*: it plays a sine at each frame's
``pitchf`` (silence where unvoiced), and every other stage (decoding, resampling, peak guard,
high-pass, split points, padding, F0, key shift, segment joins, trimming, writing) is
rvcfast's own. A note's onset in the output then shows where the pipeline put that frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.engine import Engine
from rvcfast.f0.post import postprocess
from rvcfast.segment import SegmentConfig, find_split_points

RATE = 48000
LEAD = 10.0  # seconds of digital silence the stem starts with
#: (onset s, seconds, f0 Hz, vibrato semitones, glide target Hz or None)
NOTES = [
    (10.0, 2.0, 220.0, 0.3, None),
    (14.0, 1.5, 1000.0, 0.3, None),
    (17.5, 2.0, 70.0, 0.2, None),
    (21.5, 2.5, 300.0, 0.0, 900.0),
    (26.0, 2.0, 880.0, 0.4, None),
    (31.0, 2.5, 75.0, 0.1, 150.0),
    (36.0, 2.0, 500.0, 0.3, None),
    (44.5, 1.5, 330.0, 0.2, None),  # clipped at full scale
    (48.0, 2.0, 650.0, 0.5, None),
    (52.5, 2.0, 110.0, 0.3, None),
]
BREATH = (40.0, 0.6)
SECONDS = 57.0


def sung_note(
    f0: float, seconds: float, rate: int, vibrato: float, glide: float | None, amp: float = 0.5
) -> np.ndarray:
    """A harmonic tone (partials below 0.45 of the rate, 1/k amplitudes) with 5.5 Hz vibrato,
    an optional log glide and 30/50 ms fades."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f = f0 * (glide / f0) ** (t / seconds) if glide else np.full(n, f0)
    f = f * 2 ** (vibrato * np.sin(2 * np.pi * 5.5 * t) / 12)
    phase = 2 * np.pi * np.cumsum(f) / rate
    x = sum((k * f < 0.45 * rate) * np.sin(k * phase) / k for k in range(1, 12))
    env = np.minimum(1.0, np.minimum(t / 0.03, (seconds - t) / 0.05))
    return amp * x / np.abs(x).max() * env


def make_stem(rate: int = RATE) -> np.ndarray:
    """``[samples, 2]``: the notes (right channel at 0.7), a breath, a clipped note, DC from ``LEAD`` on."""
    mono = np.zeros(int(SECONDS * rate))
    for start, seconds, f0, vib, glide in NOTES:
        note = sung_note(f0, seconds, rate, vib, glide)
        if start == 44.5:
            note = np.clip(2.5 * note, -1.0, 1.0)
        i = int(start * rate)
        mono[i : i + note.shape[0]] += note
    i, n = int(BREATH[0] * rate), int(BREATH[1] * rate)
    mono[i : i + n] += 0.05 * np.random.default_rng(0).standard_normal(n) * np.hanning(n)
    stereo = np.stack([mono, 0.7 * mono], axis=1)
    stereo[int(LEAD * rate) :] += 0.02
    return np.clip(stereo, -1.0, 1.0)


class ProbeVocoder:
    """A stand-in voice model: a sine (amplitude 0.5) at each frame's ``pitchf``, 0 where unvoiced."""

    def __init__(self, base: object) -> None:
        for name in ("sample_rate", "version", "has_f0", "num_speakers", "feature_dim", "hop_length"):
            setattr(self, name, getattr(base, name))

    def synthesize(
        self, features, lengths, pitch=None, pitchf=None, speaker=0, noise=True, generator=None, skip_frames=0
    ):
        frames = pitchf.shape[1]
        f = pitchf.double().repeat_interleave(self.hop_length, dim=1)
        out = 0.5 * torch.sin(torch.cumsum(2 * np.pi * f / self.sample_rate, dim=1)) * (f > 0)
        valid = torch.arange(frames * self.hop_length)[None, :] < lengths[:, None] * self.hop_length
        return (out * valid).float()


@pytest.fixture(scope="module")
def probe(tiny_models) -> rvcfast.Converter:
    base = tiny_models.converter(index=None)
    engine = Engine(
        ProbeVocoder(base.engine.vocoder), base.engine.encoder, rvcfast.get_f0_extractor("dio"), None
    )
    return rvcfast.Converter.from_engine(engine)


@pytest.fixture(scope="module")
def stem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stems") / "lead_vocal.wav"
    sf.write(path, make_stem(), RATE, subtype="PCM_24")
    return path


def onsets(y: np.ndarray, rate: int, quiet: float = 0.5, shift: float = 0.0) -> np.ndarray:
    """Seconds of every first non-zero sample after at least ``quiet`` s of exact zeros, leaving
    out the breath, ``shift`` s late (a tracker may call it voiced or not)."""
    loud = np.abs(y) > 1e-3
    idx = np.nonzero(loud)[0]
    if idx.size == 0:
        return np.zeros(0)
    starts = idx[np.concatenate(([True], np.diff(idx) > quiet * rate))] / rate
    breath = BREATH[0] + shift
    return starts[(starts < breath - 0.05) | (starts > breath + BREATH[1] + 0.05)]


def test_stem_notes_stay_in_time_across_segment_joins(probe, stem) -> None:
    """A 57 s 24-bit stereo stem at +12: two segments, joined in a silent gap; every note starts
    where it starts in the input (within 20 ms: the tracker's voicing onset), the 10 s of
    leading digital silence and the gaps stay exactly silent, the pitch is an octave up, and
    keep_length gives the exact length with no shift at all."""
    prep = probe.engine.prepare(stem)
    joins = [seg.start / 16000 for seg in prep.segments[1:]]
    assert len(joins) == 1
    ends = [(s, s + d) for s, d, *_ in NOTES] + [(BREATH[0], sum(BREATH))]
    assert not any(a - 0.05 < joins[0] < b + 0.05 for a, b in ends), f"join at {joins[0]} s inside a note"

    exact = probe.convert(stem, pitch=12, keep_length=True, noise=False)
    short = probe.convert(stem, pitch=12, noise=False)
    rate = exact.sample_rate
    assert exact.audio.shape == (int(SECONDS * rate),)
    assert (
        0 < exact.audio.shape[0] - short.audio.shape[0] <= 0.02 * rate
    )  # the reference drops the last frames
    assert any("clipped" in w for w in exact.warnings) and any("DC offset" in w for w in exact.warnings)
    for out in (exact.audio, short.audio):
        assert np.isfinite(out).all() and np.abs(out).max() <= 0.99
        assert not out[: int(LEAD * rate)].any()  # the leading digital silence stays digital silence

    found = onsets(exact.audio, rate)
    want = np.array([s for s, *_ in NOTES])
    assert found.shape == want.shape, (found, want)
    np.testing.assert_allclose(found, want, atol=0.02)
    # without keep_length the join moves what follows by 0 or one frame (10 ms), never more
    drift = onsets(short.audio, rate) - found
    assert np.all(drift <= 1e-9) and np.all(drift >= -0.0101)
    assert np.all(drift[want < joins[0]] == 0)

    # an octave up: the 220 Hz note comes out at 440 Hz (zero crossings over its steady middle)
    mid = exact.audio[int(10.5 * rate) : int(11.5 * rate)]
    crossings = np.count_nonzero((mid[:-1] < 0) & (mid[1:] >= 0))
    assert crossings == pytest.approx(440, rel=0.01)
    # the gaps between notes (beyond the tracker's 20 ms) are exactly silent
    voiced = np.zeros(exact.audio.shape[0], bool)
    for s, d, *_ in [*NOTES, BREATH]:
        voiced[int((s - 0.03) * rate) : int((s + d + 0.03) * rate)] = True
    assert not exact.audio[~voiced].any()


def test_stereo_each_keeps_both_channels_in_time(probe, tmp_path) -> None:
    """``channels="each"``: stereo in, stereo out, each channel's notes where that channel has them
    (the right channel is the left one 1.5 s later), both split at the same quiet point."""
    left = make_stem()[:, 0]
    right = np.concatenate([np.zeros(int(1.5 * RATE)), left[: -int(1.5 * RATE)]])
    path = tmp_path / "duet.flac"
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="PCM_24")
    res = probe.convert(path, channels="each", keep_length=True, noise=False)
    assert res.audio.shape == (int(SECONDS * res.sample_rate), 2)
    want = np.array([s for s, *_ in NOTES])
    np.testing.assert_allclose(onsets(res.audio[:, 0], res.sample_rate), want, atol=0.02)
    np.testing.assert_allclose(
        onsets(res.audio[:, 1], res.sample_rate, shift=1.5), want[want + 1.5 < SECONDS] + 1.5, atol=0.02
    )


@pytest.mark.parametrize(
    ("fmt", "subtype", "written"),
    [
        ("wav", None, "PCM_16"),
        ("flac", None, "PCM_16"),
        ("wav", "PCM_24", "PCM_24"),
        ("flac", "PCM_24", "PCM_24"),
        ("wav", "FLOAT", "FLOAT"),
    ],
)
def test_output_sample_format_is_the_formats_not_the_inputs(probe, tmp_path, fmt, subtype, written) -> None:
    """docs/parameters.md: a 24-bit 48 kHz stem comes back 16-bit at the model's rate unless
    ``subtype`` / ``output_sample_rate`` say otherwise."""
    x = make_stem()[int(9.5 * RATE) : int(12.5 * RATE)]
    src = tmp_path / "take.wav"
    sf.write(src, x, RATE, subtype="PCM_24")
    kw = {} if subtype is None else {"subtype": subtype}
    (res,) = probe.convert_batch([src], tmp_path / "out", format=fmt, noise=False, **kw)
    info = sf.info(res.output_path)
    assert (info.subtype, info.samplerate, info.channels) == (written, probe.sample_rate, 1)
    (res,) = probe.convert_batch(
        [src], tmp_path / "out48", format=fmt, output_sample_rate=48000, noise=False, **kw
    )
    assert sf.info(res.output_path).samplerate == 48000


def test_key_shift_is_not_clipped_to_the_embedding_range() -> None:
    """docs/parameters.md, ``pitch``: -24 on a 70 Hz note gives 17.5 Hz (coarse bin 1, the
    unvoiced bin), +24 on 1000 Hz gives 4000 Hz (bin 255); unvoiced frames stay 0."""
    f0 = np.array([70.0, 0.0, 1000.0])
    coarse, pitchf = postprocess(f0, 3, -24)
    np.testing.assert_allclose(pitchf, [17.5, 0.0, 250.0], rtol=1e-6)
    assert coarse[0] == 1 and coarse[1] == 1
    coarse, pitchf = postprocess(f0, 3, 24)
    np.testing.assert_allclose(pitchf, [280.0, 0.0, 4000.0], rtol=1e-6)
    assert coarse[2] == 255


def test_split_point_of_a_steady_note_and_the_abs_measure(probe) -> None:
    """docs/parameters.md: Applio's signed measure can put the join inside a steady 200 Hz note
    (10 ms holds two whole periods) although a -60 dBFS gap is near; ``quiet_metric="abs"``
    puts it in the gap, and a converter takes it through ``engine.segment_config``."""
    rate = 16000
    x = 1e-3 * np.random.default_rng(0).standard_normal(50 * rate)
    for a, b in [(5, 31), (35, 46)]:
        x[a * rate : b * rate] += sung_note(200.0, b - a, rate, 0.0, None)
    hp = rvcfast.dsp.highpass_48hz(x)
    (signed,) = find_split_points(hp)
    (absolute,) = find_split_points(hp, SegmentConfig(quiet_metric="abs"))
    assert 35 < signed / rate < 46
    assert 31 < absolute / rate < 35
    before = probe.engine.segment_config
    try:
        probe.engine.segment_config = SegmentConfig(quiet_metric="abs")
        assert probe.engine.prepare(x, rate).segments[1].start == absolute // 160 * 160
    finally:
        probe.engine.segment_config = before


def _voiced(track: np.ndarray, note: int) -> float:
    frames = track[note * 150 + 10 : note * 150 + 90]
    return float(np.mean(frames > 0))


def test_crepe_fmax_at_the_top_of_its_grid_loses_low_notes() -> None:
    """docs/f0.md, "CREPE near the top of its grid": with fmax=2000 the Viterbi path parks in the
    top bins through a 65 Hz note that shares the clip with a 1000 Hz one; fmax=1900 and the
    argmax decoder read both."""
    rate = 16000
    gap = np.zeros(rate // 2)
    x = np.concatenate(
        [sung_note(65.0, 1.0, rate, 0.3, None), gap, sung_note(1000.0, 1.0, rate, 0.3, None), gap]
    )
    x = x.astype(np.float32)
    top = rvcfast.get_f0_extractor("crepe-tiny", device="cpu", fmax=2000).extract(x)
    assert _voiced(top, 0) == 0 and _voiced(top, 1) == 1
    for opts in ({"fmax": 1900}, {"fmax": 2006, "decoder": "argmax"}):
        track = rvcfast.get_f0_extractor("crepe-tiny", device="cpu", **opts).extract(x)
        assert _voiced(track, 0) == 1 and _voiced(track, 1) == 1, opts
        assert np.median(track[10:90]) == pytest.approx(65, rel=0.02)


def test_hybrid_range_needs_both_spellings() -> None:
    """docs/f0.md, pitch range table: for ``hybrid:crepe-tiny+pm`` a 1400 Hz note needs both
    ``fmax`` (crepe) and ``f0_max`` (pm) raised."""
    pytest.importorskip("parselmouth")
    rate = 16000
    x = np.concatenate([sung_note(1400.0, 1.0, rate, 0.3, None), np.zeros(rate // 2)]).astype(np.float32)

    def read(**opts: float) -> tuple[float, float]:
        frames = rvcfast.get_f0_extractor("hybrid:crepe-tiny+pm", device="cpu", **opts).extract(x)[10:90]
        voiced = frames[frames > 0]
        return float(voiced.size / frames.size), float(np.median(voiced)) if voiced.size else 0.0

    assert read(f0_max=1600)[0] < 0.5
    share, hz = read(fmax=1600)
    assert share == 1 and hz == pytest.approx(1400 / 2**0.5, rel=0.03)  # crepe's 1400 and pm's 700
    share, hz = read(fmax=1600, f0_max=1600)
    assert share == 1 and hz == pytest.approx(1400, rel=0.01)


def test_effects_gain_passes_the_peak_limit_and_loudness_restores_it(probe, tmp_path) -> None:
    """docs/parameters.md ("Fixed"): effects run after the 0.99 limit, so +12 dB of ``gain`` takes
    a 0.5-peak output to about 2, which a PCM file clips at full scale and a FLOAT file keeps;
    ``loudness`` (applied last) keeps the limit."""
    pytest.importorskip("pedalboard")
    x = make_stem()[int(9.5 * RATE) : int(12.5 * RATE)]
    gain = {"gain": {"db": 12.0}}
    loud = probe.convert(x, RATE, noise=False, effects=gain)
    assert np.abs(loud.audio).max() == pytest.approx(0.5 * 10 ** (12 / 20), rel=0.01)
    # the clipping is said (it was silent): the peak in dBFS, and what to do
    assert any("clean/effects took the output's peak to +6.0 dBFS" in w for w in loud.warnings), loud.warnings
    assert not any("dBFS" in w for w in probe.convert(x, RATE, noise=False, effects={"gain": {"db": -3.0}}).warnings)
    pcm, flt = (
        probe.convert_batch([(x, RATE)], tmp_path / sub, noise=False, effects=gain, subtype=sub)[0]
        for sub in ("PCM_16", "FLOAT")
    )
    assert np.abs(sf.read(pcm.output_path)[0]).max() == 1.0
    assert np.abs(sf.read(flt.output_path)[0]).max() == pytest.approx(0.5 * 10 ** (12 / 20), rel=0.01)
    limited = probe.convert(x, RATE, noise=False, effects=gain, loudness=-14.0)
    assert np.abs(limited.audio).max() <= 0.99
    assert not any("clean/effects took" in w for w in limited.warnings)

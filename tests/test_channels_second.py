"""``channels="each"``, second pass: what a multi-channel input's users hit beyond the first tests.

* a DC offset is removed from each channel on its own (each is high-passed alone), so each
  channel's offset is reported (and refused with ``strict``), not the mix's;
* decoding a long multi-channel file holds one ``[samples, channels]`` buffer, not three;
* ``loudness`` works for any number of channels (BS.1770 layouts stop at 5);
* ``proposed_pitch`` gives an input's channels one key, worked out from all of them.
"""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401 (fixtures)

from rvcfast.audio import decode
from rvcfast.errors import AudioError
from rvcfast.loudness import integrated_loudness
from rvcfast.params import ConversionParams
from rvcfast.pipeline import finish, prepare_input


def _offset_stereo(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    """Two tones with opposite DC offsets: the mix has none, each channel has 0.1."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * 200 * t) + 0.1, 0.3 * np.sin(2 * np.pi * 300 * t) - 0.1], axis=1)


def test_each_channel_reports_its_own_dc_offset(tmp_path: Path) -> None:
    x = _offset_stereo()
    sf.write(tmp_path / "dc.wav", x, 16000, subtype="FLOAT")
    for source, rate, label in ((x, 16000, "array input"), (tmp_path / "dc.wav", None, str(tmp_path / "dc.wav"))):
        kept = decode(source, rate, keep_channels=True)
        assert kept.warnings == [
            f"{label}: DC offset of +0.100 in channel 1 removed (48 Hz high-pass)",
            f"{label}: DC offset of -0.100 in channel 2 removed (48 Hz high-pass)",
        ]
        mixed = decode(source, rate)  # mixed down, the offsets cancel: only the mix-down is noted
        assert mixed.warnings == [f"{label}: 2 channels mixed down to mono"]
    with pytest.raises(AudioError, match="DC offset of \\+0.100 in channel 1.*strict mode"):
        prepare_input(x, 16000, params=ConversionParams(channels="each", strict=True))
    one = decode(x[:, 0].copy(), 16000, keep_channels=True)  # one channel: worded as before
    assert one.warnings == ["array input: DC offset of +0.100 removed (48 Hz high-pass)"]


def test_decoding_the_channels_holds_one_buffer(tmp_path: Path) -> None:
    # 60 s of stereo at 44.1 kHz: the kept [samples, 2] float64 output is 15.4 MB; the pieces of
    # every channel were kept in lists, then joined per channel, then stacked (three copies; now one
    # buffer and a few read blocks of 4 MB)
    rng = np.random.default_rng(0)
    with sf.SoundFile(tmp_path / "long.wav", "w", 44100, 2, subtype="PCM_16") as f:
        for _ in range(6):
            f.write((0.1 * rng.standard_normal((441000, 2))).astype(np.float32))
    tracemalloc.start()
    try:
        kept = decode(tmp_path / "long.wav", keep_channels=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept.audio.shape == (960000, 2)
    assert peak < 2 * kept.audio.nbytes, f"decoding peaked at {peak / 1e6:.1f} MB for {kept.audio.nbytes / 1e6:.1f} MB of audio"
    for c in range(2):  # the same samples as before: each channel as that channel decoded alone
        alone = decode(sf.read(tmp_path / "long.wav")[0][:, c].copy(), 44100).audio
        np.testing.assert_allclose(kept.audio[:, c], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [6, 8])
def test_loudness_of_more_than_five_channels(channels: int) -> None:
    # finishing a 6- or 8-channel output with any loudness raised ValueError (pyloudnorm takes 5)
    x = tone(1.0, 16000, channels=channels)
    for loudness in (-20.0, "match"):
        params = ConversionParams(channels="each", loudness=loudness)
        prep = prepare_input(x, 16000, params=params)
        assert prep.n_channels == channels
        out = np.stack([tone(1.0, 40000, freq=300.0 + 50 * c, amp=0.05) for c in range(channels)], axis=1).astype(np.float32)
        warnings: list[str] = []
        audio, rate = finish(out, prep, 40000, params, warnings)
        assert warnings == [] and audio.shape == out.shape
        target = loudness if loudness != "match" else integrated_loudness(np.stack([c.audio for c in (prep, *prep.more_channels)], axis=1), 16000)
        assert math.isfinite(target)
        assert integrated_loudness(audio, rate) == pytest.approx(target, abs=0.05)
        gain = audio / out
        np.testing.assert_allclose(gain, gain[100, 0], rtol=1e-5)  # one gain for every channel


def test_an_eight_channel_conversion_with_loudness(tiny_converter) -> None:
    res = tiny_converter.convert(tone(1.0, 16000, channels=8), 16000, channels="each", loudness="match", noise=False)
    assert res.ok and res.audio.shape[1] == 8


def test_a_long_input_is_split_where_its_high_passed_mix_is_quiet(monkeypatch) -> None:
    # inputs over 10 minutes are high-passed in blocks with a 1 s run-in; the mix was filtered in
    # place, so each block's run-in read the previous block's filtered output (errors of 9 % of
    # the signal near the block edges, where the split points are looked for)
    import rvcfast.pipeline as pipeline
    from rvcfast.dsp import highpass_blocks

    monkeypatch.setattr(pipeline, "LONG_INPUT_SAMPLES", 16000)  # the long-input path, at 130 s
    seen: list[np.ndarray] = []
    real = pipeline.find_split_points
    monkeypatch.setattr(pipeline, "find_split_points", lambda audio, config: seen.append(np.array(audio)) or real(audio, config))
    n = 130 * 16000
    t = np.arange(n) / 16000
    rng = np.random.default_rng(1)
    x = np.stack([0.2 * np.sin(2 * np.pi * 20 * t) + 0.1, 0.05 * rng.standard_normal(n)], axis=1)  # strong low end, DC
    prep = prepare_input(x, 16000, params=ConversionParams(channels="each"))
    assert prep.n_channels == 2 and len(seen) == 1
    np.testing.assert_allclose(seen[0], highpass_blocks(x.mean(axis=1)), rtol=0, atol=1e-12)


def test_decoding_many_channels_reads_blocks_of_bounded_size(tmp_path: Path) -> None:
    # a 13 kB Ogg upload of 255 silent channels: read 2**18 frames at a time, one block held
    # 163 MB of float64 (535 MB for longer files) and its checks as much again, mixed or kept
    p = tmp_path / "many.ogg"
    with sf.SoundFile(p, "w", 8000, 255, format="OGG", subtype="VORBIS") as f:
        f.write(np.zeros((8000 * 10, 255), np.float32))
    for keep in (False, True):
        tracemalloc.start()
        try:
            decoded = decode(p, keep_channels=keep)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert decoded.audio.shape == ((160000,) if not keep else (160000, 255))
        assert peak < 1.5 * decoded.audio.nbytes + 40e6, f"keep_channels={keep}: decoding peaked at {peak / 1e6:.0f} MB"


def test_run_takes_one_f0_track_per_channel(tiny_converter, monkeypatch) -> None:
    # a batch's or server's CPU tracker (harvest, pm...) computes every channel's track beside the
    # model worker: run() takes them as a tuple and extracts none of them again
    from rvcfast.errors import ParameterError

    engine = tiny_converter.engine
    q = engine.params(channels="each", noise=False)
    prep = engine.prepare(tone(1.0, 16000, channels=2) * [1.0, 0.5], 16000, params=q)
    tracks = tuple(engine.extract_f0([prep, *prep.more_channels], q))
    expected = engine.run([prep], q, raise_errors=True)[0].audio
    monkeypatch.setattr(engine, "extract_f0", lambda *a: pytest.fail("a given track was extracted again"))
    np.testing.assert_array_equal(engine.run([prep], q, f0=[tracks], raise_errors=True)[0].audio, expected)
    with pytest.raises(ParameterError, match="1 F0 tracks given for an input of 2 channels"):
        engine.run([prep], q, f0=[tracks[:1]])


def test_a_failing_channel_fails_its_input_and_is_named(tiny_converter) -> None:
    engine = tiny_converter.engine
    q = engine.params(channels="each", noise=False)
    prep = engine.prepare(tone(1.0, 16000, channels=2) * [1.0, 0.5], 16000, name="song.wav", params=q)
    first = engine.extract_f0([prep], q)[0]
    [res] = engine.run([prep], q, f0=[(first, RuntimeError("tracker crashed"))])
    assert not res.ok and res.audio.size == 0
    assert res.error.startswith("song.wav: channel 2: F0 extraction failed") and "tracker crashed" in res.error, res.error


def _straddling(engine, q, prep) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Two constant F0 tracks a semitone apart (one per channel) and a proposed_pitch target
    whose own offsets round apart (0 and +1 semitone): channels converted with their own key
    would come out a semitone apart."""
    n = prep.padded.shape[0] // 160 + 1
    low, high = np.full(n, 200.0), np.full(n, 200.0 * 2 ** (1 / 12))
    return (high, low), float(np.sqrt(200.0 * 200.0 * 2 ** (1 / 12)) * 2 ** (0.5 / 12))


def test_proposed_pitch_gives_every_channel_one_key(tiny_converter) -> None:
    """Each channel worked out its own proposed-pitch offset from its own median: a stereo take
    whose channels' pitch medians straddled a rounding point came out a semitone apart."""
    from rvcfast.f0.post import proposed_pitch_offset, proposed_pitch_offset_of_channels

    engine = tiny_converter.engine
    q = engine.params(channels="each", noise=False)
    prep = engine.prepare(tone(1.0, 16000, channels=2), 16000, params=q)
    tracks, target = _straddling(engine, q, prep)
    own = [proposed_pitch_offset(t, target) for t in tracks]
    shared = proposed_pitch_offset_of_channels(tracks, target)
    assert own == [0, 1] and shared in own, (own, shared)  # the construction: the channels' own keys differ
    got = engine.run([prep], q.replace(proposed_pitch=target), f0=[tracks], raise_errors=True)[0].audio
    keyed = engine.run([prep], q.replace(pitch=shared), f0=[tracks], raise_errors=True)[0].audio
    np.testing.assert_array_equal(got, keyed)  # both channels in the one shared key
    # one channel's own offset is what a mono input gets: one track gives proposed_pitch_offset's answer
    assert proposed_pitch_offset_of_channels(tracks[:1], target) == own[0]
    assert proposed_pitch_offset_of_channels([np.zeros(5), tracks[1]], target) == own[1]  # a silent channel has no say

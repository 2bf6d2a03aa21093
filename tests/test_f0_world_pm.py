"""harvest / dio / pm (WORLD and Praat, as RVC runs them) and the hybrid combiner."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import medfilt

from rvcfast.errors import BackendUnavailableError, ParameterError
from rvcfast.f0.hybrid import HybridExtractor, combine_f0
from rvcfast.f0.pm import PMExtractor, pad_like_rvc
from rvcfast.f0.world import DioExtractor, HarvestExtractor
from rvcfast.protocols import F0Extractor

SR = 16000


def harmonic(f0: float, seconds: float, extra: int = 0) -> np.ndarray:
    """A 5-harmonic tone at ``f0`` Hz, ``seconds`` long plus ``extra`` samples, float32."""
    t = np.arange(int(seconds * SR) + extra) / SR
    return sum(0.5 / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def tone() -> np.ndarray:
    # 1 s + 37 samples: not a multiple of the hop, to exercise len // 160 + 1.
    return harmonic(150.0, 1.0, extra=37)


@pytest.fixture(scope="module")
def speech(shared_audio) -> np.ndarray:
    audio, sr = sf.read(shared_audio / "arctic_a0007.wav", dtype="float32")
    assert sr == SR
    return audio[int(0.3 * SR) : int(1.8 * SR) + 53]  # 1.5 s of speech (harvest is slow)


@pytest.fixture(scope="module")
def tone_tracks(tone) -> dict[str, np.ndarray]:
    return {e.name: e.extract(tone) for e in (HarvestExtractor(), DioExtractor(), PMExtractor())}


@pytest.fixture(scope="module")
def harvest_raw_speech(speech) -> np.ndarray:
    """RVC's harvest recipe run directly through pyworld (before the median filter)."""
    import pyworld

    x = speech.astype(np.float64)
    f0, t = pyworld.harvest(x, fs=SR, f0_ceil=1100, f0_floor=50, frame_period=10)
    return pyworld.stonemask(x, f0, t, SR)


# --- harvest / dio / pm ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["harvest", "dio", "pm"])
def test_tone_frames_and_pitch(tone, tone_tracks, name):
    f0 = tone_tracks[name]
    assert f0.shape == (len(tone) // 160 + 1,)
    assert np.all(np.isfinite(f0)) and np.all(f0 >= 0)
    voiced = f0 > 0
    assert voiced.mean() > 0.9
    assert np.median(f0[voiced]) == pytest.approx(150.0, rel=0.01)
    assert np.all(np.abs(f0[voiced][3:-3] - 150.0) < 3.0)


@pytest.mark.parametrize("cls", [HarvestExtractor, DioExtractor, PMExtractor])
def test_protocol_and_constants(cls):
    e = cls()
    assert isinstance(e, F0Extractor)
    assert (e.sample_rate, e.hop_length) == (16000, 160)
    assert e.name in ("harvest", "dio", "pm")


def test_speech_frames_and_pitch(speech, harvest_raw_speech):
    n = len(speech) // 160 + 1
    assert len(harvest_raw_speech) == n
    ref = np.median(harvest_raw_speech[harvest_raw_speech > 0])
    assert 70 < ref < 250  # a male CMU ARCTIC speaker
    for e in (DioExtractor(), PMExtractor()):
        f0 = e.extract(speech)
        assert f0.shape == (n,), e.name
        voiced = f0 > 0
        assert voiced.mean() > 0.3, e.name
        assert np.median(f0[voiced]) == pytest.approx(ref, rel=0.1), e.name
        both = voiced & (harvest_raw_speech > 0)
        close = np.abs(np.log2(f0[both] / harvest_raw_speech[both])) < 0.1
        assert close.mean() > 0.8, e.name


def test_harvest_filter_radius_is_rvc_medfilt_switch(speech, harvest_raw_speech):
    filtered = HarvestExtractor(filter_radius=3).extract(speech)
    expected = medfilt(harvest_raw_speech, 3)
    assert not np.array_equal(expected, harvest_raw_speech)  # the filter does something here
    np.testing.assert_array_equal(filtered, expected)
    # filter_radius <= 2 switches the filter off (RVC: `if filter_radius > 2`).
    np.testing.assert_array_equal(HarvestExtractor(filter_radius=2).extract(speech), harvest_raw_speech)


def test_harvest_default_filter_radius_is_3():
    assert HarvestExtractor().filter_radius == 3


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_harvest_bad_filter_radius(bad):
    with pytest.raises(ParameterError):
        HarvestExtractor(filter_radius=bad)


@pytest.mark.parametrize("cls", [HarvestExtractor, DioExtractor, PMExtractor])
def test_bad_range(cls):
    with pytest.raises(ParameterError):
        cls(f0_min=500, f0_max=100)


@pytest.mark.parametrize("n", [0, 1, 159, 160, 959, 960, 1000])
def test_short_inputs(n):
    x = np.zeros(n, dtype=np.float32)
    for e in (DioExtractor(), PMExtractor()):
        assert e.extract(x).shape == (n // 160 + 1,), (e.name, n)
    if n in (0, 160):  # harvest is slow: two lengths are enough (0 crashes raw pyworld)
        assert np.all(HarvestExtractor().extract(x) == 0)
        assert HarvestExtractor().extract(x).shape == (n // 160 + 1,)


def test_input_validation():
    from rvcfast.errors import AudioError

    with pytest.raises(AudioError):
        DioExtractor().extract(np.zeros((2, 1600)))
    with pytest.raises(AudioError):
        PMExtractor().extract(np.full(1600, np.nan))


def test_pm_padding_matches_rvc():
    rng = np.random.default_rng(0)
    for n_samples in (960, 1000, 16000, 16123, 16159, 16160, 31999, 48000):
        import parselmouth

        x = rng.standard_normal(n_samples) * 0.1
        raw = (
            parselmouth.Sound(x, SR)
            .to_pitch_ac(time_step=0.01, voicing_threshold=0.6, pitch_floor=50, pitch_ceiling=1100)
            .selected_array["frequency"]
        )
        raw = raw + 1.0  # make every frame non-zero so misplacement shows
        # RVC (rvc.md §2.1), p_len = len // 160:
        p_len = n_samples // 160
        pad_size = (p_len - len(raw) + 1) // 2
        rvc = raw
        if pad_size > 0 or p_len - len(raw) - pad_size > 0:
            rvc = np.pad(raw, [[pad_size, p_len - len(raw) - pad_size]], mode="constant")
        ours = pad_like_rvc(raw, n_samples)
        assert len(ours) == n_samples // 160 + 1
        np.testing.assert_array_equal(ours[:p_len], rvc[:p_len])
        assert ours[-1] == 0.0


def test_pm_missing_parselmouth(monkeypatch):
    monkeypatch.setitem(sys.modules, "parselmouth", None)  # `import parselmouth` now fails
    with pytest.raises(BackendUnavailableError, match=r'pip install "rvcfast\[pm\]"'):
        PMExtractor()


def test_batch_equals_single(tone):
    e = DioExtractor()
    items = [tone[:5000], tone, tone[:333]]
    for a, b in zip(e.extract_batch(items), items):
        np.testing.assert_array_equal(a, e.extract(b))


# --- hybrid ---------------------------------------------------------------------------


class FakeTracker:
    """Returns a fixed track (cut/padded by the hybrid), records its calls."""

    sample_rate = 16000
    hop_length = 160

    def __init__(self, name: str, track) -> None:
        self.name = name
        self.track = np.asarray(track, dtype=np.float64)
        self.batch_calls = 0

    def extract(self, audio16k):
        return self.track.copy()

    def extract_batch(self, audios):
        self.batch_calls += 1
        return [self.extract(a) for a in audios]


def test_hybrid_on_tone(tone, tone_tracks):
    h = HybridExtractor([HarvestExtractor(), DioExtractor(), PMExtractor()])
    assert isinstance(h, F0Extractor)
    assert h.name == "hybrid:harvest+dio+pm"
    f0 = h.extract(tone)
    assert f0.shape == (len(tone) // 160 + 1,)
    voiced = f0 > 0
    assert voiced.mean() > 0.9
    assert np.median(f0[voiced]) == pytest.approx(150.0, rel=0.01)
    np.testing.assert_allclose(f0, combine_f0(list(tone_tracks.values()), len(f0)))


def test_combine_rule_majority_and_log_median():
    a = [150.0, 150.0, 150.0, 0.0, 0.0, 200.0, np.nan]
    b = [300.0, 0.0, 160.0, 0.0, 120.0, 0.0, 100.0]
    c = [150.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0]
    out = combine_f0([a, b, c], 7)
    assert out[0] == pytest.approx(150.0)  # one octave error outvoted
    assert out[1] == 0.0  # 1 of 3 voiced: unvoiced
    assert out[2] == pytest.approx(np.sqrt(150.0 * 160.0))  # 2 voiced: geometric mean
    assert out[3] == 0.0 and out[4] == 0.0 and out[5] == 0.0
    assert out[6] == pytest.approx(100.0)  # NaN counts as unvoiced
    # min_voiced=1: any voiced backend voices the frame.
    any_voiced = combine_f0([a, b, c], 7, min_voiced=1)
    assert any_voiced[1] == pytest.approx(150.0) and any_voiced[4] == pytest.approx(120.0)
    assert any_voiced[3] == 0.0


def test_hybrid_two_backends_need_both():
    audio = np.zeros(160 * 4, dtype=np.float32)  # 5 frames
    h = HybridExtractor([FakeTracker("a", [100, 100, 0, 0, 100]), FakeTracker("b", [400, 0, 100, 0, 100])])
    np.testing.assert_allclose(h.extract(audio), [200.0, 0.0, 0.0, 0.0, 100.0])


def test_hybrid_aligns_lengths_and_batches():
    short = FakeTracker("short", [100.0] * 3)  # too few frames: padded with unvoiced
    long = FakeTracker("long", [100.0] * 9)  # too many: trimmed
    third = FakeTracker("third", [100.0] * 6)
    h = HybridExtractor([short, long, third])
    audio = np.zeros(160 * 5 + 7, dtype=np.float32)  # 6 frames
    np.testing.assert_allclose(h.extract(audio), [100.0] * 6)
    batch = h.extract_batch([audio, audio[:320]])
    assert [len(b) for b in batch] == [6, 3]
    np.testing.assert_allclose(batch[0], h.extract(audio))
    assert short.batch_calls == 1 and long.batch_calls == 1  # members' own batch path is used
    assert h.extract_batch([]) == []


def test_hybrid_bad_arguments():
    t = FakeTracker("t", [1.0])
    with pytest.raises(ParameterError):
        HybridExtractor([t])
    with pytest.raises(ParameterError):
        HybridExtractor([t, object()])
    with pytest.raises(ParameterError):
        HybridExtractor([t, FakeTracker("u", [1.0])], min_voiced=3)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 257])
def test_harvest_median_filter_equals_scipys_medfilt(n: int) -> None:
    import warnings

    from rvcfast.f0.world import _median3

    rng = np.random.default_rng(n)
    f0 = rng.uniform(80.0, 400.0, n)
    f0[rng.random(n) < 0.3] = 0.0  # unvoiced frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # under 3 frames scipy warns that it zero-pads
        expected = medfilt(f0, 3)
    got = _median3(f0)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)

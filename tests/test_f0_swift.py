"""The ``swift`` F0 backend (SwiftF0's ONNX model through the swift-f0 package).

Checked against independent expectations: the frame count rule, analytic pitches (sines,
harmonic tones, a vibrato whose F0 is known at every sample), the swift-f0 package's own
``detect`` at its native 16 ms frames, hand-made tracks for the resampling onto 10 ms frames,
WORLD ground truth and Harvest on real speech, and a conversion with the tiny models.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.errors import BackendUnavailableError, ParameterError
from rvcfast.f0.swift import NATIVE_HOP, SwiftF0Extractor, to_frame_grid

swift_f0 = pytest.importorskip("swift_f0", reason="needs rvcfast[swift] (swift-f0, onnxruntime)")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SR = 16000


@pytest.fixture(scope="module")
def ext() -> SwiftF0Extractor:
    e = rvcfast.get_f0_extractor("swift")
    assert isinstance(e, SwiftF0Extractor)
    return e


@pytest.fixture(scope="module")
def detector():
    """The swift-f0 package's own detector (one onnxruntime thread, as rvcfast's default)."""
    return swift_f0.SwiftF0(threads=1, spin=False)


def harmonic(freq: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    """A harmonic tone (1/k partials up to 7.9 kHz), float32."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * freq * t) / k for k in range(1, int(7900 // freq) + 1))
    return (amp * x / np.abs(x).max()).astype(np.float32)


def sine(freq: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def mixed_clip(seconds: float = 3.0) -> np.ndarray:
    """Tones, a glide, noise and digital silence: voiced and unvoiced frames, boundaries of every kind."""
    rng = np.random.default_rng(7)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f = 120.0 * 2 ** (2 * t / seconds)  # 120 -> 480 Hz
    ph = np.cumsum(f) / SR
    x = sum(np.sin(2 * np.pi * k * ph) / k for k in range(1, 12)) * 0.2
    x[int(0.7 * SR) : int(1.1 * SR)] = 0.0  # silence
    noise = slice(int(1.6 * SR), min(n, int(1.9 * SR)))
    x[noise] = 0.05 * rng.standard_normal(len(x[noise]))  # noise
    return x.astype(np.float32)


def cents(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return 1200 * np.log2(np.asarray(a) / b)


# ----------------------------------------------------------------- registry, options, errors


def test_registered_and_cpu_bound(ext):
    assert rvcfast.available_f0_extractors()["swift"] == "rvcfast (built-in)"
    assert ext.name == "swift" and ext.sample_rate == 16000 and ext.hop_length == 160
    assert ext.cpu_bound is True  # onnxruntime on the CPU, one input per run: the batch runs it in processes
    assert (ext.threshold, ext.fmin, ext.fmax, ext.threads) == (0.5, 50.0, 1100.0, 1)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"fmin": 30}, "46.875"),  # below SwiftF0's range
        ({"fmax": 3000}, "2093.75"),  # above it
        ({"fmin": 400, "fmax": 300}, "fmin"),
        ({"fmin": 100, "fmax": 103}, "swift-f0"),  # narrower than one of the model's pitch steps (4.1 %)
        ({"threads": 0}, "threads"),
        ({"threads": 1.5}, "threads"),
    ],
)
def test_bad_options_are_parameter_errors(options, word):
    with pytest.raises(ParameterError, match="swift") as info:
        rvcfast.get_f0_extractor("swift", **options)
    assert word in str(info.value)


def test_unknown_option_is_refused():
    with pytest.raises(ParameterError, match="confidence_threshold"):
        rvcfast.get_f0_extractor("swift", confidence_threshold=0.5)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "swift_f0", None)  # import swift_f0 -> ImportError
    with pytest.raises(BackendUnavailableError, match=r'pip install "rvcfast\[swift\]"'):
        rvcfast.get_f0_extractor("swift")
    with pytest.raises(BackendUnavailableError, match=r"rvcfast\[swift\]"):
        SwiftF0Extractor()


def test_old_package_api_is_refused(monkeypatch):
    import types

    old = types.ModuleType("swift_f0")
    old.__version__ = "0.1.0"

    class SwiftF0:  # swift-f0 0.1's shape: options on the constructor, no band per call
        def __init__(self, confidence_threshold=0.9, fmin=46.875, fmax=2093.75):
            pass

        def detect_from_array(self, audio_array, sample_rate):
            pass

    old.SwiftF0 = SwiftF0
    monkeypatch.setitem(sys.modules, "swift_f0", old)
    with pytest.raises(BackendUnavailableError, match=r"swift-f0 >= 0.3.*0\.1\.0.*rvcfast\[swift\]"):
        rvcfast.get_f0_extractor("swift")


def test_device_and_dtype_are_accepted_and_ignored():
    e = rvcfast.get_f0_extractor("swift", device="cpu", dtype="float32", threads=None)
    assert len(e.extract(harmonic(200.0, 0.5))) == 8000 // 160 + 1


# ----------------------------------------------------------------- frames


@pytest.mark.parametrize(
    "n",
    [0, 1, 2, 159, 160, 161, 255, 256, 257, 319, 511, 512, 513, 1001, 4095, 4097, 16000, 16001, 33333, 48161],
)
def test_frame_count(ext, n):
    x = (0.2 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    x[: n // 2] += harmonic(180.0, n / SR + 0.1)[: n // 2]
    f0 = ext.extract(x)
    assert f0.dtype == np.float64 and f0.shape == (n // 160 + 1,)
    assert np.isfinite(f0).all() and (f0 >= 0).all()


def test_empty_and_tiny_inputs(ext):
    np.testing.assert_array_equal(ext.extract(np.zeros(0, np.float32)), [0.0])
    centres, f0, conf = ext.extract_native(np.zeros(0, np.float32))
    assert len(centres) == len(f0) == len(conf) == 0
    assert ext.extract(np.zeros(100, np.float32)).tolist() == [0.0]


def test_silence_is_unvoiced(ext):
    assert not ext.extract(np.zeros(SR * 2, np.float32)).any()
    assert not ext.extract(np.full(SR, 1e-4, np.float32)).any()  # below swift-f0's silence peak


def test_integer_pcm_and_float64_match_float32(ext):
    x = harmonic(220.0, 1.0)
    pcm = np.round(x * 32767).astype(np.int16)
    np.testing.assert_array_equal(ext.extract(pcm), ext.extract(pcm.astype(np.float32) / 32768))
    np.testing.assert_array_equal(ext.extract(x.astype(np.float64)), ext.extract(x))


def test_bad_audio_is_an_audio_error(ext):
    with pytest.raises(rvcfast.AudioError):
        ext.extract(np.zeros((2, 100), np.float32))
    with pytest.raises(rvcfast.AudioError):
        ext.extract(np.array([0.0, np.nan], np.float32))


# ----------------------------------------------------------------- pitch


# Not 500 or 1000 Hz: a tone whose partials all sit exactly on SwiftF0's STFT bins (multiples
# of 16000 / 2048 = 7.8125 Hz) has a line spectrum unlike any voice, which the model reads
# 20 cents flat (500 Hz) or an octave up (1000 Hz, full range).
@pytest.mark.parametrize(
    "freq", [83.0, 115.0, 152.0, 199.0, 292.0, 383.0, 452.0, 593.0, 699.0, 869.0, 1081.0]
)
def test_harmonic_tones(ext, freq):
    f0 = ext.extract(harmonic(freq))
    inner = f0[10:-10]
    assert (inner > 0).all(), f"{freq} Hz: {np.mean(inner > 0):.0%} voiced"
    assert np.abs(cents(inner, freq)).max() < 10


@pytest.mark.parametrize("freq", [330.0, 440.0, 880.0, 1000.0])
def test_pure_sines(ext, freq):
    f0 = ext.extract(sine(freq))
    inner = f0[10:-10]
    assert (inner > 0).all()
    assert np.abs(cents(inner, freq)).max() < 8


def test_low_pure_sine_needs_a_lower_threshold(detector):
    # a pure 150 Hz sine gets confidence ~0.45 from SwiftF0 (it was trained on voices and
    # instruments): unvoiced at the default 0.5, voiced (and right) at 0.3
    x = sine(150.0)
    conf = detector.detect(x, SR, 50.0, 1100.0).confidence[5:-5]
    assert 0.3 < conf.min() and conf.max() < 0.5
    assert not rvcfast.get_f0_extractor("swift").extract(x)[10:-10].any()
    f0 = rvcfast.get_f0_extractor("swift", threshold=0.3).extract(x)[10:-10]
    assert (f0 > 0).all() and np.abs(cents(f0, 150.0)).max() < 12


def test_band_is_respected():
    x = harmonic(440.0)
    f0 = rvcfast.get_f0_extractor("swift", fmin=100, fmax=300).extract(x)
    assert not f0.any()  # 440 Hz is outside the band: the model scores nothing voiced there
    full = rvcfast.get_f0_extractor("swift", fmin=46.875, fmax=2093.75).extract(harmonic(1800.0))[10:-10]
    assert (full > 0).all() and np.abs(cents(full, 1800.0)).max() < 12  # above RVC's default 1100 Hz ceiling


def test_frame_centres_follow_a_vibrato(ext):
    """Frame j is centred on sample 160 j: on a fast vibrato (6 Hz, +-3 semitones, up to ~2000
    cents/s) the track fits the F0 at 160 j far better than at 160 j +- 64 (a half-hop error
    in the mapping of SwiftF0's 256-sample frames)."""
    n = 2 * SR
    t = np.arange(n) / SR

    def inst(tt):
        return 200.0 * 2 ** (3 / 12 * np.sin(2 * np.pi * 6 * tt))

    ph = np.cumsum(inst(t)) / SR
    x = (0.3 * sum(np.sin(2 * np.pi * k * ph) / k for k in range(1, 15))).astype(np.float32)
    f0 = ext.extract(x)
    j = np.arange(len(f0))
    voiced = f0 > 0
    voiced[:20] = voiced[-20:] = False
    assert voiced.mean() > 0.7

    def rms(shift):
        return float(np.sqrt(np.mean(cents(f0[voiced], inst((160 * j[voiced] + shift) / SR)) ** 2)))

    assert rms(0) < 20
    assert rms(-64) > rms(0) + 10 and rms(64) > rms(0) + 10


# ----------------------------------------------------------------- the package's own API


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"threshold": 0.3},
        {"threshold": 0.8},
        {"fmin": 46.875, "fmax": 2093.75},
        {"fmin": 100.0, "fmax": 400.0},
    ],
)
def test_native_frames_equal_the_package(detector, options):
    x = mixed_clip()
    e = rvcfast.get_f0_extractor("swift", **options)
    centres, f0, conf = e.extract_native(x)
    ref = detector.detect(x, SR, e.fmin, e.fmax)
    np.testing.assert_array_equal(centres, np.arange(len(ref.pitch_hz)) * NATIVE_HOP)
    np.testing.assert_allclose(ref.timestamps * SR, centres, atol=1e-6)
    np.testing.assert_array_equal(conf, ref.confidence)
    voiced = ref.confidence >= e.threshold
    assert 0 < voiced.sum() < len(voiced)
    np.testing.assert_array_equal(f0, np.where(voiced, ref.pitch_hz, 0.0))
    # rvcfast frame 8 k and SwiftF0 frame 5 k share a centre (sample 1280 k): the same value
    out = e.extract(x)
    k = np.arange(0, min(len(out) // 8 + 1, len(f0) // 5 + 1))
    k = k[(8 * k < len(out)) & (5 * k < len(f0))]
    np.testing.assert_array_equal(out[8 * k], f0[5 * k])


def test_long_input_matches_the_package(ext, detector):
    # swift-f0 cuts inputs over 30 s into windows with context: rvcfast goes through it
    x = np.tile(mixed_clip(), 12)[: 35 * SR]
    _, f0, _ = ext.extract_native(x)
    ref = detector.detect(x, SR, 50.0, 1100.0)
    np.testing.assert_array_equal(f0, np.where(ref.confidence >= 0.5, ref.pitch_hz, 0.0))
    assert len(ext.extract(x)) == len(x) // 160 + 1


# ----------------------------------------------------------------- resampling onto 10 ms frames


def test_grid_interpolates_voiced_pairs_in_log_frequency():
    centres = np.array([0.0, 256.0, 512.0])
    f0 = np.array([100.0, 200.0, 200.0])
    out = to_frame_grid(centres, f0, 4)  # frames at 0, 160, 320, 480
    assert out[0] == 100.0
    assert out[1] == pytest.approx(100.0 * 2 ** (160 / 256))  # 62.5 % of an octave up
    assert out[2] == pytest.approx(200.0) and out[3] == pytest.approx(200.0)


def test_grid_never_blends_voiced_with_unvoiced():
    centres = np.arange(4) * 256.0  # 0, 256, 512, 768
    f0 = np.array([0.0, 150.0, 150.0, 0.0])
    out = to_frame_grid(centres, f0, 6)  # frames at 0, 160, 320, 480, 640, 800
    # 160: between unvoiced 0 and voiced 256, nearer 256 -> voiced 150 (not 150 * 160/256)
    # 640: exactly between voiced 512 and unvoiced 768 -> the earlier frame (voiced)
    # 800: after the last centre -> held (unvoiced)
    np.testing.assert_array_equal(out, [0.0, 150.0, 150.0, 150.0, 150.0, 0.0])
    f0 = np.array([150.0, 0.0, 0.0, 300.0])
    out = to_frame_grid(centres, f0, 6)
    np.testing.assert_array_equal(out, [150.0, 0.0, 0.0, 0.0, 0.0, 300.0])  # 100 from 0 and 160 from 256 -> 0


def test_grid_holds_the_ends_and_handles_empty():
    out = to_frame_grid(np.array([0.0, 256.0]), np.array([120.0, 130.0]), 5)  # frames up to sample 640
    assert out[2] == pytest.approx(130.0) and out[3] == out[4] == 130.0
    np.testing.assert_array_equal(to_frame_grid(np.zeros(0), np.zeros(0), 3), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(to_frame_grid(np.array([0.0]), np.array([90.0]), 3), [90.0] * 3)
    with pytest.raises(ValueError):
        to_frame_grid(np.zeros(2), np.zeros(3), 3)


def test_voiced_runs_keep_their_length(ext):
    """A tone between two silences: the 10 ms track's voiced run starts and ends within one
    SwiftF0 hop (16 ms) of the tone's edges; nothing voiced far outside it."""
    x = np.zeros(3 * SR, np.float32)
    x[SR : 2 * SR] = harmonic(200.0, 1.0)
    f0 = ext.extract(x)
    v = np.flatnonzero(f0 > 0)
    assert abs(v[0] * 160 - SR) <= NATIVE_HOP + 160 and abs((v[-1] + 1) * 160 - 2 * SR) <= NATIVE_HOP + 160
    assert (f0[v[0] : v[-1] + 1] > 0).all()
    assert np.abs(cents(f0[v], 200.0)).max() < 30


# ----------------------------------------------------------------- batches, pickling


def test_batch_equals_one_at_a_time(ext):
    rng = np.random.default_rng(3)
    audios = [
        mixed_clip(2.0),
        np.zeros(0, np.float32),
        harmonic(300.0, 0.01),
        (0.1 * rng.standard_normal(12345)).astype(np.float32),
        harmonic(95.0, 1.3).astype(np.float64),
        np.zeros(5000, np.float32),
    ]
    batch = ext.extract_batch(audios)
    assert len(batch) == len(audios)
    for a, b in zip(audios, batch):
        np.testing.assert_array_equal(b, ext.extract(a))
        assert len(b) == len(a) // 160 + 1


def test_pickles_for_worker_processes(ext):
    e = rvcfast.get_f0_extractor("swift", threshold=0.4, fmin=60, fmax=900)
    clone = pickle.loads(pickle.dumps(e))
    assert (clone.threshold, clone.fmin, clone.fmax, clone.threads) == (0.4, 60.0, 900.0, 1)
    x = mixed_clip(1.5)
    np.testing.assert_array_equal(clone.extract(x), e.extract(x))


# ----------------------------------------------------------------- real speech


def _truth():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import f0_accuracy as acc
    import f0_truth as truth

    if truth.audio_dir() is None:
        pytest.skip("shared audio not found (set RVCFAST_SHARED to the shared/ folder)")
    return acc, truth


def test_accuracy_on_world_ground_truth(ext):
    acc, truth = _truth()
    clip = truth.build_truth_set(("arctic_a0007",), ("mid",), max_seconds=2.0)[0]
    s = acc.evaluate("swift", ext.extract, [clip], warmup=False)[0].scores
    # measured 83.6 % RPA, 91.6 % F1, 100 % voicing precision, no octave errors, 6.8 cents
    assert s["rpa"] >= 0.78, s
    assert s["voicing_f1"] >= 0.88 and s["voicing_precision"] >= 0.95, s
    assert s["octave_error_rate"] <= 0.02, s
    assert s["fine_error_cents"] < 15, s


def test_real_speech_agrees_with_harvest_and_the_package(ext, detector):
    acc, truth = _truth()
    x = truth.load_source("arctic_a0007")
    an = truth.analyse(x)  # Harvest F0, voiced where Harvest and D4C agree
    ref = np.where(an.voiced, an.f0, 0.0)
    f0 = ext.extract(x)
    assert len(f0) == len(ref) == len(x) // 160 + 1
    both = (f0 > 0) & (ref > 0)
    assert both.sum() > 150
    assert np.mean(np.abs(cents(f0[both], ref[both])) < 50) >= 0.9
    assert np.mean(ref[f0 > 0] > 0) >= 0.95  # what SwiftF0 voices, Harvest voices too
    _, native, _ = ext.extract_native(x)
    res = detector.detect(x, SR, 50.0, 1100.0)
    np.testing.assert_array_equal(native, np.where(res.confidence >= 0.5, res.pitch_hz, 0.0))


# ----------------------------------------------------------------- in a conversion


def test_conversion_uses_the_swift_track(tiny_models):
    conv = rvcfast.Converter.from_pretrained(
        tiny_models.voice,
        encoder=tiny_models.encoder,
        index=None,
        f0="swift",
        f0_options={"threshold": 0.4},
        device="cpu",
    )
    assert isinstance(conv.f0_extractor, SwiftF0Extractor) and conv.f0_extractor.threshold == 0.4
    x = tone(1.5, freq=180.0)
    res = conv.convert(x, 16000, noise=False)
    assert res.ok and np.isfinite(res.audio).all()
    assert abs(res.audio.shape[0] - 1.5 * 40000) <= 2 * 400
    engine = conv.engine
    params = conv.make_params(None, noise=False)
    prep = engine.prepare(x, 16000, params=params)
    (track,) = engine.extract_f0([prep], params)
    np.testing.assert_array_equal(track, SwiftF0Extractor(threshold=0.4).extract(prep.padded))
    voiced = track[track > 0]
    assert len(voiced) > 0.8 * len(track) and abs(np.median(cents(voiced, 180.0))) < 20
    (again,) = engine.run([prep], params, f0=[track])
    np.testing.assert_array_equal(again.audio, res.audio)  # the conversion ran on this track
    (octave,) = engine.run([prep], params, f0=[track * 2])
    assert not np.array_equal(octave.audio, res.audio)


def test_batch_conversion_through_worker_processes(tiny_models):
    conv = rvcfast.Converter.from_pretrained(
        tiny_models.voice, encoder=tiny_models.encoder, index=None, f0="swift", device="cpu"
    )
    inputs = [(tone(1.0, freq=150.0), 16000), (tone(0.7, freq=260.0), 16000)]
    results = conv.convert_batch(inputs, f0_workers=1, noise=False)
    for (x, sr), res in zip(inputs, results):
        assert res.ok, res.error
        np.testing.assert_allclose(res.audio, conv.convert(x, sr, noise=False).audio, atol=1e-6)


def test_in_a_hybrid():
    h = rvcfast.get_f0_extractor("hybrid:swift+dio", swift={"threshold": 0.4})
    assert h.cpu_bound is True  # every member is: the batch runs the hybrid in worker processes
    x = harmonic(199.0, 1.0)
    f0 = h.extract(x)
    assert f0.shape == (len(x) // 160 + 1,)
    inner = f0[10:-10]
    assert (inner > 0).mean() > 0.9 and abs(np.median(cents(inner[inner > 0], 199.0))) < 15

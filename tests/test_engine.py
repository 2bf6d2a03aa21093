"""The engine every front end runs on: one way through the stages, per-input results and errors."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.engine import Engine
from rvcfast.errors import AudioError, Cancelled, ParameterError
from rvcfast.params import ConversionParams


def clip(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f = 120 + 60 * seed
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.shape[0])).astype(np.float32)


@pytest.fixture(scope="module")
def engine(tiny_converter: rvcfast.Converter) -> Engine:
    return tiny_converter.engine


def test_convert_is_a_batch_of_one(engine: Engine, tiny_converter: rvcfast.Converter) -> None:
    params = engine.params(pitch=3, noise=False)
    prep = engine.prepare(clip(1.3, 1), 16000, params=params)
    via_run = engine.run([prep], params)[0]
    via_convert = tiny_converter.convert(clip(1.3, 1), 16000, params)
    assert via_run.ok and via_convert.ok
    np.testing.assert_array_equal(via_run.audio, via_convert.audio)
    assert {"f0", "features", "index", "synth", "post"} <= set(via_run.timings)
    assert "decode" in via_convert.timings


def test_per_input_parameters_in_one_run(engine: Engine) -> None:
    settings = [
        engine.params(pitch=0, noise=False),
        engine.params(pitch=7, index_rate=0.2, protect=0.1, noise=False),
        engine.params(pitch=-5, speaker=2, noise=False),  # another speaker: its own model call
        engine.params(pitch=2, noise=True, seed=11),
    ]
    clips = [clip(1.0 + 0.4 * k, k) for k in range(4)]
    preps = [engine.prepare(c, 16000) for c in clips]
    together = engine.run(preps, settings)
    for k, (c, q) in enumerate(zip(clips, settings)):
        alone = engine.run([engine.prepare(c, 16000)], q)[0]
        assert together[k].ok
        np.testing.assert_allclose(together[k].audio, alone.audio, rtol=0, atol=1e-5)
    # the settings really were applied per input: a different pitch gives a different output
    other = engine.run([preps[1]], settings[0])[0]
    assert np.abs(other.audio - together[1].audio).max() > 0.1 * np.abs(together[1].audio).max()


def test_a_failing_input_does_not_affect_the_others(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    params = engine.params(noise=False)
    preps = [engine.prepare(clip(1.0, k), 16000, name=f"clip{k}") for k in range(3)]
    good = [engine.run([p], params)[0].audio for p in preps]
    real = engine.extract_f0

    def broken(ps, q):
        out = real(ps, q)
        return [RuntimeError("tracker exploded") if p is preps[1] else t for p, t in zip(ps, out)]

    monkeypatch.setattr(engine, "extract_f0", broken)
    results = engine.run(preps, params)
    assert results[1].error is not None and "clip1" in results[1].error and "tracker exploded" in results[1].error
    for k in (0, 2):
        assert results[k].ok
        np.testing.assert_allclose(results[k].audio, good[k], rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="tracker exploded"):
        engine.run(preps, params, raise_errors=True)


def test_an_f0_failure_names_the_backend(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # the error said only "F0 extraction failed: ValueError: boom", not which backend failed
    prep = engine.prepare(clip(1.0, 0), 16000, name="in.wav")

    def boom(preps, params):
        return [ValueError("boom") for _ in preps]

    monkeypatch.setattr(engine, "extract_f0", boom)
    error = engine.run([prep], engine.params())[0].error
    assert error is not None and "in.wav" in error and "boom" in error
    assert f"backend {engine.f0_extractor.name!r}" in error


@pytest.mark.parametrize(
    ("f0", "options", "where"),
    [("harvest", {"filter_radius": 0}, "f0_options filter_radius"),
     ("hybrid[pm+harvest]", {"harvest": {"filter_radius": 0}}, "f0_options['harvest'] filter_radius")],
)
def test_filter_radius_as_an_f0_option_is_refused_not_silently_replaced(tiny_models, f0, options, where) -> None:
    # the conversion parameter filter_radius (default 3) silently replaced the option's 0
    with pytest.raises(ParameterError) as info:
        tiny_models.converter(f0=f0, f0_weights=None, f0_options=options)
    assert where in str(info.value) and "--filter-radius" in str(info.value)
    engine = tiny_models.converter(f0="harvest", f0_weights=None).engine
    assert engine.f0_extractor_for(engine.params(filter_radius=0)).filter_radius == 0  # the way that works


def test_a_set_cancel_event_stops_the_run_between_model_batches(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    params = engine.params(noise=False)
    preps = [engine.prepare(clip(1.0, k), 16000, name=f"clip{k}") for k in range(3)]
    cancel = threading.Event()
    synthesized: list[int] = []
    real = engine.synthesize_segments

    def spy(segs, *args, **kwargs):
        synthesized.append(len(segs))
        cancel.set()  # the caller gives up while the first batch is on the models
        return real(segs, *args, **kwargs)

    monkeypatch.setattr(engine, "synthesize_segments", spy)
    with pytest.raises(Cancelled):
        engine.run(preps, params, batch_seconds=1.0, cancel=cancel)  # one input per model batch
    assert synthesized == [1]  # the batch under way finished; the other two never started
    with pytest.raises(Cancelled):  # already set: not even the F0 runs
        engine.run(preps, params, cancel=cancel)
    assert synthesized == [1]
    assert not isinstance(Cancelled(), Exception)  # a failing-input handler never swallows it
    monkeypatch.setattr(engine, "synthesize_segments", real)
    results = engine.run(preps, params, cancel=threading.Event())  # an unset event changes nothing
    for r, ref in zip(results, engine.run(preps, params)):
        assert r.ok
        np.testing.assert_array_equal(r.audio, ref.audio)


def test_one_model_call_refuses_segments_that_disagree_on_what_it_shares(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """synthesize_segments took the first segment's speaker, noise and v1 layer for every segment
    of the call: a direct caller mixing them got the wrong speaker for the rest, silently."""
    from rvcfast.timing import Timer

    seen: list = []
    real = engine.synthesize_segments

    def keep(segs, *args, **kwargs):
        seen.extend(segs)
        return real(segs, *args, **kwargs)

    monkeypatch.setattr(engine, "synthesize_segments", keep)
    engine.run([engine.prepare(clip(0.6, k), 16000, name=f"c{k}") for k in range(2)], engine.params(noise=False))
    monkeypatch.setattr(engine, "synthesize_segments", real)
    segs = seen[:2]
    a, b = engine.params(speaker=0, noise=False), engine.params(speaker=1, noise=False)
    with pytest.raises(ParameterError, match="must share speaker"):
        engine.synthesize_segments(segs, [a, b], Timer())
    with pytest.raises(ParameterError, match="must share noise"):
        engine.synthesize_segments(segs, [a, engine.params(speaker=0, noise=True)], Timer())
    with pytest.raises(ParameterError, match="1 settings given for 2 segments"):
        engine.synthesize_segments(segs, [a], Timer())
    both = engine.synthesize_segments(segs, [b, engine.params(speaker=1, noise=False, pitch=3)], Timer())
    assert len(both) == 2 and all(np.isfinite(x).all() and x.size for x in both)  # the rest may differ


def test_parameters_are_checked_and_named(engine: Engine) -> None:
    with pytest.raises(ParameterError, match="unknown conversion parameter 'pich'.*did you mean 'pitch'"):
        engine.params(pich=2)
    with pytest.raises(ParameterError, match="speaker 99 is out of range"):
        engine.params(speaker=99)
    with pytest.raises(ParameterError, match="2 inputs but 1 parameter sets"):
        engine.run([engine.prepare(clip(0.5, 0), 16000)] * 2, [ConversionParams()])


def test_build_from_params_and_overrides() -> None:
    base = ConversionParams(pitch=2, index_rate=0.5)
    p = ConversionParams.build(base, pitch=4)
    assert (p.pitch, p.index_rate) == (4, 0.5) and base.pitch == 2
    assert ConversionParams.build({"protect": 0.2}).protect == 0.2


def test_prepare_is_free_of_networks_and_strict_refuses(engine: Engine) -> None:
    stereo = np.stack([clip(1.0, 0), clip(1.0, 1)], axis=1)
    prep = engine.prepare(stereo, 44100, name="st")
    assert prep.warnings == ["st: 2 channels mixed down to mono"]
    with pytest.raises(AudioError, match="2 channels.*strict mode"):
        engine.prepare(stereo, 44100, name="st", params=ConversionParams(strict=True))


def test_import_rvcfast_is_light() -> None:
    """``import rvcfast`` loads no torch, numpy or optional package (front ends start fast)."""
    import subprocess
    import sys

    code = (
        "import sys, rvcfast; heavy = [m for m in ('torch', 'numpy', 'scipy', 'soundfile', 'fastapi', 'ray', 'av', "
        "'pedalboard', 'noisereduce', 'stftpitchshift') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_converting_needs_no_scipy_signal(tmp_path) -> None:
    """The engine's modules and stage 1 (decode, resample, the 48 Hz high-pass) never import
    scipy.signal, whose import alone takes ~0.65 s in every process."""
    import subprocess
    import sys

    import soundfile as sf

    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 220 * np.arange(22050) / 44100), 44100)
    code = (
        "import sys, numpy as np, rvcfast.engine, rvcfast.cli; from rvcfast.pipeline import prepare_input; "
        f"prep = prepare_input({str(wav)!r}); from rvcfast.dsp import highpass_blocks; "
        "highpass_blocks(np.ones(16000 * 130)); print(prep.padded.shape[0] > 0, 'scipy.signal' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_stage_one_runs_without_torch(tmp_path) -> None:
    """prepare_input (decode + signal stages) never imports torch: a cluster's decoding tasks stay light."""
    import subprocess
    import sys

    import soundfile as sf

    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.3 * np.sin(np.arange(44100) * 2 * np.pi * 220 / 44100), 44100)
    code = (
        "import sys; from rvcfast.pipeline import prepare_input; import rvcfast.integrations.ray._stages; "
        f"p = prepare_input({str(wav)!r}); print(p.padded.shape[0] > 16000, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_filter_radius_reaches_harvest_inside_a_hybrid(engine: Engine) -> None:
    from rvcfast.f0.registry import get_f0_extractor

    hybrid = _engine_with(engine, get_f0_extractor("hybrid:harvest+dio"))
    base = hybrid.f0_extractor
    radius0 = hybrid.f0_extractor_for(hybrid.params(filter_radius=0))
    assert radius0 is not base and radius0.backends[0].filter_radius == 0
    assert base.backends[0].filter_radius == 3  # the engine's own extractor is left as it was
    assert radius0.backends[1] is base.backends[1]  # dio has no such option
    assert hybrid.f0_extractor_for(hybrid.params(filter_radius=3)) is base  # nothing to change: no copy
    # and it changes the track: RVC's median filter on harvest's output (radius 3) or not (0)
    padded = hybrid.prepare(clip(2.0, 1), 16000).padded
    assert np.abs(radius0.extract(padded) - base.extract(padded)).max() > 0


def _engine_with(engine: Engine, extractor) -> Engine:
    """A fresh engine on the module's networks with another F0 backend (not ``with_f0``: a copy
    would keep what other tests patched onto the shared engine)."""
    return Engine(engine.vocoder, engine.encoder, extractor, engine.index)


class _Plugin:
    """An F0 backend that returns what it is told to, for the engine's checks of its tracks."""

    name = "plugin"
    sample_rate = 16000
    hop_length = 160

    def __init__(self, make) -> None:
        self.make = make

    def extract(self, audio16k):
        return self.make(audio16k.shape[0] // 160 + 1)

    def extract_batch(self, audios):
        return [self.extract(a) for a in audios]


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda n: np.full(n, np.nan), r"gave \d+ NaN, infinite or negative F0 values"),
        (lambda n: -np.ones(n), "NaN, infinite or negative"),
        (lambda n: np.ones((n, 2)), r"shape \(\d+, 2\)"),
        (lambda n: np.full(n // 2, 150.0), r"gave \d+ frames for \d+"),
        (lambda n: np.zeros(0), r"gave 0 frames for \d+"),
        (lambda n: "not numbers", "not an array of numbers"),
    ],
)
def test_a_backends_bad_track_is_an_error_naming_it_and_the_input(engine: Engine, make, problem) -> None:
    plugged = _engine_with(engine, _Plugin(make))
    prep = plugged.prepare(clip(1.0, 0), 16000, name="take7")
    result = plugged.run([prep], plugged.params(noise=False))[0]
    assert not result.ok and "take7" in result.error and "'plugin'" in result.error
    assert re.search(problem, result.error), result.error


def test_tracks_a_few_frames_off_are_fitted_and_a_short_batch_is_redone_per_input(engine: Engine) -> None:
    plugged = _engine_with(engine, _Plugin(lambda n: np.full(n - 3, 150.0)))  # a tracker that does not pad its ends
    prep = plugged.prepare(clip(1.0, 0), 16000)
    assert plugged.run([prep], plugged.params(noise=False))[0].ok

    class OneShort(_Plugin):
        def extract_batch(self, audios):
            return super().extract_batch(audios)[:-1]

    plugged = _engine_with(engine, OneShort(lambda n: np.full(n, 150.0)))
    preps = [plugged.prepare(clip(1.0, k), 16000) for k in range(2)]
    assert all(r.ok for r in plugged.run(preps, plugged.params(noise=False)))  # each input on its own


def test_a_formant_shift_the_input_was_not_prepared_with_is_refused(engine: Engine) -> None:
    pytest.importorskip("stftpitchshift")
    shifted = engine.params(formant=(1.0, 1.2), noise=False)
    plain = engine.prepare(clip(1.0, 0), 16000, name="take3")  # prepared without the shift
    with pytest.raises(ParameterError, match=r"take3: formant=\(1\.0, 1\.2\) asked for, but the input was prepared with formant=None"):
        engine.run([plain], shifted)
    with pytest.raises(ParameterError, match="pass the same params to prepare"):
        next(iter(engine.stream(plain, shifted)))
    ready = engine.prepare(clip(1.0, 0), 16000, params=shifted)
    assert ready.formant == (1.0, 1.2) and engine.run([ready], shifted)[0].ok
    with pytest.raises(ParameterError):  # and the other way round: a shifted input, settings without it
        engine.run([ready], engine.params(noise=False))


def test_a_v1_voice_with_an_encoder_without_final_proj_is_refused_at_load(tiny_models, tmp_path) -> None:
    from helpers import TINY_CONV, TINY_VOICE

    from rvcfast.errors import ModelLoadError
    from rvcfast.testing import save_random_hubert, save_random_voice_model

    plain = save_random_hubert(
        tmp_path / "plain_hf", "hf", layers=1, hidden=768, heads=12, ffn=64, conv_layers=TINY_CONV, conv_pos=16,
        conv_pos_groups=16, final_dim=None, seed=3,
    )
    v1 = save_random_voice_model(tmp_path / "v1.pth", "v1", 40000, True, seed=6, **TINY_VOICE)
    with pytest.raises(ModelLoadError, match=r"plain_hf.*no final_proj weights.*v1 voice"):
        rvcfast.Converter.from_pretrained(v1, encoder=plain, f0_weights=tiny_models.rmvpe, device="cpu")
    # a v2 voice takes that encoder, and a v1 voice one with final_proj
    rvcfast.Converter.from_pretrained(tiny_models.voice, encoder=plain, f0_weights=tiny_models.rmvpe, device="cpu")
    rvcfast.Converter.from_pretrained(v1, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")

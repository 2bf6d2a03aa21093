"""One input, many voices (:func:`rvcfast.convert_voices`): every voice's output equals its own
batch's, the F0 tracks and content features are computed once for all voices, and the files
are named, resumed and failed per voice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import TINY_VOICE, names_file, one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
from rvcfast.errors import ParameterError
from rvcfast.testing import save_random_voice_model

NOF0 = "voice_v2_40k_nof0"  # the voices' names: their model files' stems
MAIN = "voice_v2_40k_f0"


class Voices:
    """The converters of this module: four voices on one encoder and one RMVPE."""

    def __init__(self, tiny_models, root: Path) -> None:
        alto = self.alto_path = save_random_voice_model(root / "alto.pth", "v2", 32000, True, seed=11, **TINY_VOICE)
        oldie = save_random_voice_model(root / "oldie.pth", "v1", 40000, True, seed=12, **TINY_VOICE)
        m = tiny_models
        self.main = m.converter()  # v2 40 kHz with pitch, 768-d index
        self.nof0 = rvcfast.Converter.from_pretrained(m.voice_nof0, encoder=m.encoder, device="cpu")
        self.alto = rvcfast.Converter.from_pretrained(alto, encoder=m.encoder, f0_weights=m.rmvpe, device="cpu")
        self.oldie = rvcfast.Converter.from_pretrained(
            oldie, index=m.index_256, encoder=m.encoder, f0_weights=m.rmvpe, device="cpu"
        )  # v1: layer-9 features through final_proj (256-d)


@pytest.fixture(scope="module")
def voices(tiny_models, tmp_path_factory) -> Voices:
    return Voices(tiny_models, tmp_path_factory.mktemp("voices"))


def clips() -> list[tuple[np.ndarray, int]]:
    """Two short array inputs of the same length at two rates (one segment each)."""
    return [(tone(0.6, 16000, 220.0), 16000), (tone(0.6, 22050, 330.0), 22050)]


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal within 1e-6 of the expected output's peak."""
    assert got.shape == want.shape
    assert np.abs(want).max() > 0
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def by_voice(results) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in results:
        out.setdefault(r.voice, []).append(r)
    return out


def write_inputs(folder: Path, **tones: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (stem, seconds) in enumerate(tones.items()):
        sf.write(folder / f"{stem}.wav", tone(seconds, 16000, 200.0 + 70 * k), 16000)
        paths.append(folder / f"{stem}.wav")
    return paths


def spy(monkeypatch: pytest.MonkeyPatch, obj, name: str) -> list[int]:
    """Count the calls of ``obj.name`` (an instance's method) while the test runs; the shadowing
    instance attribute is removed afterwards (the object is the session's cached network)."""
    calls: list[int] = []
    original = getattr(obj, name)
    assert name not in vars(obj)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setitem(vars(obj), name, counted)
    return calls


# ---------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("noise", [dict(seed=5), dict(noise=False)], ids=["seeded", "no-noise"])
def test_every_voice_equals_its_own_batch(voices: Voices, noise: dict) -> None:
    """A voice without pitch first (F0 from the next voice's backend), a v1 voice among v2 ones
    (its layer-9, final_proj features kept apart from the v2 ones), a 32 kHz voice, and a pitch
    shift for one voice only: each output equals what that voice's own batch gives."""
    order = {NOF0: voices.nof0, "oldie": voices.oldie, MAIN: voices.main, "alto": voices.alto}
    per_voice = {"alto": {"pitch": 7}, "oldie": {"protect": 0.2}}
    shared = rvcfast.SharedAnalysis()
    results = rvcfast.convert_voices(
        list(order.values()), clips(), voice_params=per_voice, index_rate=0.5, shared=shared, **noise
    )
    assert [(r.index, r.voice) for r in results] == [(i, name) for i in range(2) for name in order]
    got = by_voice(results)
    for name, conv in order.items():
        own = conv.convert_batch(clips(), index_rate=0.5, **noise, **per_voice.get(name, {}))
        for mine, theirs in zip(got[name], own):
            assert mine.ok, mine.error
            assert theirs.voice is None  # an ordinary batch names no voice
            assert mine.sample_rate == conv.engine.sample_rate == theirs.sample_rate
            assert_same(mine.audio, theirs.audio)
    # the per-voice setting took effect: alto without its shift sounds different
    unshifted = voices.alto.convert_batch(clips(), index_rate=0.5, **noise)[0].audio
    assert np.abs(unshifted - got["alto"][0].audio).max() > 1e-3 * np.abs(unshifted).max()
    # the work was shared: 2 tracks for 3 pitched voices; v2 and v1 features once per input each
    assert (shared.f0_computed, shared.f0_reused) == (2, 4)
    assert (shared.features_computed, shared.features_reused) == (4, 4)


def test_channels_each_are_analysed_once_for_every_voice(voices: Voices) -> None:
    stereo = [(tone(0.8, 16000, 180.0, channels=2), 16000)]
    shared = rvcfast.SharedAnalysis()
    results = rvcfast.convert_voices([voices.main, voices.alto], stereo, channels="each", seed=2, shared=shared)
    for r, conv in zip(results, (voices.main, voices.alto)):
        own = conv.convert_batch(stereo, channels="each", seed=2)[0]
        assert r.ok and r.audio.ndim == 2 and r.audio.shape[1] == 2
        assert_same(r.audio, own.audio)
    assert (shared.f0_computed, shared.f0_reused) == (2, 2)  # one track per channel
    assert (shared.features_computed, shared.features_reused) == (2, 2)


def test_engines_can_be_voices_and_the_callers_converters_are_left_as_they_were(voices: Voices) -> None:
    main = voices.main.engine
    encoder, extractor, name = main.encoder, main.f0_extractor, main.name
    before = voices.main.convert_batch(clips()[:1], noise=False)[0].audio
    results = rvcfast.convert_voices([main, voices.nof0.engine], clips()[:1], noise=False)
    assert [r.voice for r in results] == [MAIN, NOF0]
    assert_same(results[0].audio, before)
    assert main.encoder is encoder and main.f0_extractor is extractor and main.name == name
    renamed = rvcfast.convert_voices({"lead": voices.main, "choir": voices.nof0}, clips()[:1], noise=False)
    assert [r.voice for r in renamed] == ["lead", "choir"]
    assert main.name == name  # naming a voice does not rename its engine
    np.testing.assert_array_equal(voices.main.convert_batch(clips()[:1], noise=False)[0].audio, before)


# ---------------------------------------------------------------------------------------------- sharing


def test_the_encoder_and_the_f0_network_run_once_for_three_voices(voices: Voices, monkeypatch) -> None:
    encoder = voices.main.engine.encoder
    rmvpe = voices.main.engine.f0_extractor.model
    # the model cache gives every voice the same networks (what the sharing relies on)
    assert voices.alto.engine.encoder is encoder and voices.nof0.engine.encoder is encoder
    assert voices.alto.engine.f0_extractor.model is rmvpe
    encodes = spy(monkeypatch, encoder, "encode")
    tracks = spy(monkeypatch, rmvpe, "infer_batch")
    singles = spy(monkeypatch, rmvpe, "infer")
    inputs = clips()

    voices.main.convert_batch(inputs, noise=False)
    alone = (len(encodes), len(tracks) + len(singles))
    assert alone[0] >= 1 and alone[1] >= 1
    trio = [voices.main, voices.alto, voices.nof0]

    for calls in (encodes, tracks, singles):
        calls.clear()
    shared = rvcfast.SharedAnalysis()
    first = rvcfast.convert_voices(trio, inputs, noise=False, shared=shared)
    assert (len(encodes), len(tracks) + len(singles)) == alone  # not 3x
    assert (shared.features_computed, shared.features_reused) == (2, 4)
    assert (shared.f0_computed, shared.f0_reused) == (2, 2)

    # no memory for features: each voice encodes the inputs again; the tracks are still shared
    for calls in (encodes, tracks, singles):
        calls.clear()
    bare = rvcfast.SharedAnalysis(0)
    second = rvcfast.convert_voices(trio, inputs, noise=False, shared=bare)
    assert (len(encodes), len(tracks) + len(singles)) == (3 * alone[0], alone[1])
    assert bare.features_reused == 0 and bare.feature_bytes == 0 and bare.features_computed == 6
    assert (bare.f0_computed, bare.f0_reused) == (2, 2)
    for a, b in zip(first, second):
        assert (a.voice, a.index) == (b.voice, b.index)
        np.testing.assert_array_equal(a.audio, b.audio)

    # shared_memory_mb=0 does the same without a memo of one's own
    encodes.clear()
    third = rvcfast.convert_voices(trio, inputs, noise=False, shared_memory_mb=0)
    assert len(encodes) == 3 * alone[0]
    for a, c in zip(first, third):
        np.testing.assert_array_equal(a.audio, c.audio)


def test_a_full_memo_keeps_the_first_inputs_and_encodes_the_rest_per_voice(voices: Voices) -> None:
    """One file per group (batch_seconds=0.5): the memo holds the first input's features only;
    the later voices take those and encode the second input again, with unchanged outputs."""
    inputs = clips()
    probe = rvcfast.SharedAnalysis()
    rvcfast.convert_voices([voices.main], inputs[:1], noise=False, shared=probe)
    first_bytes = probe.feature_bytes
    assert first_bytes > 0
    tight = rvcfast.SharedAnalysis(max_feature_mb=first_bytes / 2**20)
    trio = [voices.main, voices.alto, voices.nof0]
    results = rvcfast.convert_voices(trio, inputs, noise=False, shared=tight, batch_seconds=0.5)
    assert tight.feature_bytes == first_bytes <= tight.max_feature_bytes
    assert tight.features_reused == 2  # input 0 for alto and nof0
    assert tight.features_computed == 4  # input 0 once, input 1 three times
    got = by_voice(results)
    for name, conv in zip((MAIN, "alto", NOF0), trio):
        for mine, theirs in zip(got[name], conv.convert_batch(inputs, noise=False)):
            assert_same(mine.audio, theirs.audio)


def test_a_memo_of_ones_own_is_reused_across_calls(voices: Voices) -> None:
    """The features of the same encoder are taken from an earlier call's memo (the F0 tracks are
    kept per backend object, here another voice's: not asserted)."""
    shared = rvcfast.SharedAnalysis()
    rvcfast.convert_voices([voices.main], clips(), noise=False, shared=shared)
    assert (shared.f0_computed, shared.features_computed) == (2, 2)
    later = rvcfast.convert_voices([voices.alto], clips(), noise=False, shared=shared)
    assert (shared.features_computed, shared.features_reused) == (2, 2)
    for mine, theirs in zip(later, voices.alto.convert_batch(clips(), noise=False)):
        assert_same(mine.audio, theirs.audio)


def test_harvest_at_a_filter_radius_of_ones_own_gives_each_voice_its_own_batchs_output(voices: Voices, tiny_models) -> None:
    """A CPU-bound backend (harvest: the batch runs it in worker processes) at a filter_radius
    other than its default: each voice's output is its own batch's at that radius."""
    pytest.importorskip("pyworld")
    main = tiny_models.converter(f0="harvest", f0_weights=None)
    other = rvcfast.Converter.from_pretrained(voices.alto_path, encoder=tiny_models.encoder, f0="harvest", device="cpu")
    inputs = [(tone(0.3, 16000, 200.0), 16000)]
    shared = rvcfast.SharedAnalysis()
    results = rvcfast.convert_voices([main, other], inputs, noise=False, filter_radius=1, shared=shared)
    assert shared.f0_computed + shared.f0_reused == 2  # both voices' tracks went through the memo
    # the second voice's track was filtered as its own batch filters it
    assert_same(results[1].audio, other.convert_batch(inputs, noise=False, filter_radius=1, f0_workers=1)[0].audio)
    assert results[0].ok and results[0].audio.size > 0


# ---------------------------------------------------------------------------------------------- files


def test_outputs_go_to_a_folder_per_voice(voices: Voices, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "in", take1=0.5, take2=0.7)
    out = tmp_path / "out"
    seen: list[tuple[str, int, int]] = []
    results = rvcfast.convert_voices(
        {"lead": voices.main, "choir": voices.alto}, src, out, noise=False,
        progress=lambda r, done, total: seen.append((r.voice, done, total)),
    )
    assert [(r.index, r.voice) for r in results] == [(0, "lead"), (0, "choir"), (1, "lead"), (1, "choir")]
    # progress per (input, voice), voice after voice, out of inputs x voices
    assert seen == [("lead", 1, 4), ("lead", 2, 4), ("choir", 3, 4), ("choir", 4, 4)]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "choir/take1.wav", "choir/take2.wav", "lead/take1.wav", "lead/take2.wav",
    ]
    expected = {"lead": voices.main.convert_batch(src, noise=False), "choir": voices.alto.convert_batch(src, noise=False)}
    for r in results:
        assert r.ok and r.source == str(src[r.index])
        assert r.output_path == str(out / r.voice / f"{src[r.index].stem}.wav")
        written, rate = sf.read(r.output_path, dtype="float32")
        want = expected[r.voice][r.index]
        assert rate == want.sample_rate
        assert written.shape == want.audio.shape
        assert np.abs(written - want.audio).max() <= 1.01 / 2**15  # within a step of the 16-bit file


def test_iter_voices_yields_each_voice_as_its_batch_finishes(voices: Voices, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "in", a=0.4, b=0.4)
    got = [(r.voice, r.index) for r in rvcfast.iter_voices([voices.main, voices.nof0], src, tmp_path / "out", noise=False)]
    assert got == [(MAIN, 0), (MAIN, 1), (NOF0, 0), (NOF0, 1)]
    assert (tmp_path / "out" / MAIN / "a.wav").is_file() and (tmp_path / "out" / NOF0 / "b.wav").is_file()


def test_a_template_for_several_voices_must_name_the_voice(voices: Voices, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "in", a=0.4)
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match=r"\{voice\}"):
        rvcfast.convert_voices([voices.main, voices.nof0], src, out, name_template="{stem}")
    assert not out.exists() or not any(out.rglob("*"))
    # another spelling that names the voice is taken
    rvcfast.convert_voices([voices.main, voices.nof0], src, out, name_template="{stem}-{voice}", noise=False)
    assert sorted(p.name for p in out.iterdir()) == [f"a-{MAIN}.wav", f"a-{NOF0}.wav"]
    # one voice needs no {voice}; without out_dir nothing is named
    one = rvcfast.convert_voices([voices.main], src, tmp_path / "solo", name_template="{stem}", noise=False)
    assert one[0].output_path == str(tmp_path / "solo" / "a.wav")
    assert len(rvcfast.convert_voices([voices.main, voices.nof0], src, name_template="{stem}", noise=False)) == 2


def test_voices_need_distinct_names(voices: Voices, tiny_models, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "in", a=0.4)
    twin = tiny_models.converter()  # another converter of the same model file: the same stem
    for pair in ([voices.main, voices.main], [voices.main, twin]):
        with pytest.raises(ParameterError, match=MAIN):
            rvcfast.convert_voices(pair, src, tmp_path / "out")
        with pytest.raises(ParameterError, match=MAIN):
            list(rvcfast.iter_voices(pair, src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # a mapping names them; the same voice twice gives the same output twice
    results = rvcfast.convert_voices({"x": voices.main, "y": twin}, src, tmp_path / "out", noise=False, keep_audio=True)
    assert [r.voice for r in results] == ["x", "y"]
    np.testing.assert_array_equal(results[0].audio, results[1].audio)
    assert (tmp_path / "out" / "x" / "a.wav").is_file() and (tmp_path / "out" / "y" / "a.wav").is_file()


def test_bad_arguments_are_refused_before_any_file_is_written(voices: Voices, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "in", a=0.4)
    out = tmp_path / "out"
    pair = [voices.main, voices.nof0]
    cases = [
        (dict(voice_params={"nobody": {"pitch": 2}}), "nobody"),
        (dict(voice_params=[{"pitch": 2}]), "1 entries for 2 voices"),
        (dict(voice_params={NOF0: {"speaker": 9}}), "speaker 9"),  # the second voice's setting
        (dict(shared_memory_mb=-1), "shared_memory_mb"),
        (dict(progress="bar"), "progress"),
        (dict(pitch=500), "pitch"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ParameterError, match=message):
            rvcfast.convert_voices(pair, src, out, **kwargs)
        assert not out.exists() or not any(out.rglob("*.wav")), kwargs
    with pytest.raises(ParameterError, match="at least one voice"):
        rvcfast.convert_voices([], src, out)
    with pytest.raises(ParameterError, match="voice 1"):
        rvcfast.convert_voices([voices.main, "alto.pth"], src, out)


def test_skip_existing_resumes_each_voice(voices: Voices, tmp_path: Path) -> None:
    src = write_inputs(tmp_path / "in", a=0.4, b=0.5)
    out = tmp_path / "out"
    first = rvcfast.convert_voices({"lead": voices.main}, src[:1], out, noise=False)
    assert first[0].ok and first[0].output_path == str(out / "lead" / "a.wav")
    stamp = (out / "lead" / "a.wav").stat().st_mtime_ns
    again = rvcfast.convert_voices({"lead": voices.main, "choir": voices.nof0}, src, out, noise=False, skip_existing=True)
    state = {(r.voice, Path(r.source).name): (r.skipped, r.ok) for r in again}
    assert state == {
        ("lead", "a.wav"): (True, True),
        ("lead", "b.wav"): (False, True),
        ("choir", "a.wav"): (False, True),
        ("choir", "b.wav"): (False, True),
    }
    assert (out / "lead" / "a.wav").stat().st_mtime_ns == stamp
    assert {r.output_path for r in again} == {str(out / v / f"{s}.wav") for v in ("lead", "choir") for s in "ab"}


def test_a_folder_input_is_listed_once_before_any_voice_writes_into_it(voices: Voices, tmp_path: Path) -> None:
    """In place and recursive: the first voice's outputs land inside the input folder, and
    must not become the second voice's inputs (nor, when resumed, anyone's)."""
    src = tmp_path / "in"
    write_inputs(src, a=0.4)
    for resumed in (False, True):
        seen: list[tuple[int, int]] = []
        results = rvcfast.convert_voices(
            [voices.main, voices.nof0], [src], src, recursive=True, skip_existing=resumed, noise=False,
            progress=lambda r, done, total, seen=seen: seen.append((done, total)),
        )
        assert [(r.voice, r.source, r.skipped) for r in results] == [
            (MAIN, str(src / "a.wav"), resumed), (NOF0, str(src / "a.wav"), resumed),
        ]
        assert seen == [(1, 2), (2, 2)]
        assert sorted(str(p.relative_to(src)) for p in src.rglob("*.wav")) == ["a.wav", f"{MAIN}/a.wav", f"{NOF0}/a.wav"]


def test_a_bad_input_fails_for_every_voice_and_the_others_convert(voices: Voices, tmp_path: Path) -> None:
    good = write_inputs(tmp_path / "in", good=0.5)[0]
    garbage = tmp_path / "in" / "garbage.wav"
    garbage.write_bytes(b"RIFF but not a wave file at all")
    missing = tmp_path / "in" / "missing.wav"
    out = tmp_path / "out"
    seen: list[tuple[int, int]] = []
    results = rvcfast.convert_voices(
        [voices.main, voices.nof0], [garbage, good, missing], out, noise=False,
        progress=lambda r, done, total: seen.append((done, total)),
    )
    assert [(r.index, r.voice) for r in results] == [(i, v) for i in range(3) for v in (MAIN, NOF0)]
    assert sorted(done for done, _ in seen) == list(range(1, 7)) and {t for _, t in seen} == {6}
    for r in results:
        if r.index == 1:
            assert r.ok and r.output_path == str(out / r.voice / "good.wav")
        else:
            bad = (garbage, good, missing)[r.index]
            assert not r.ok and r.error and names_file(r.error, bad), r.error
            assert r.output_path is None
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.wav")) == [f"{MAIN}/good.wav", f"{NOF0}/good.wav"]



# ------------------------------------------------------------------ regressions (found in review)


def test_a_filter_radius_other_than_the_backends_own_tracks_f0_once(voices: Voices, tiny_models) -> None:
    """The F0 memo was keyed by the per-voice copy of the extractor that a filter_radius other than
    its own makes: each voice tracked its own F0 (2 computed, 0 reused)."""
    pytest.importorskip("pyworld")
    main = tiny_models.converter(f0="harvest", f0_weights=None)
    other = rvcfast.Converter.from_pretrained(voices.alto_path, encoder=tiny_models.encoder, f0="harvest", device="cpu")
    shared = rvcfast.SharedAnalysis()
    rvcfast.convert_voices([main, other], [(tone(0.3, 16000, 200.0), 16000)], noise=False, filter_radius=1, shared=shared)
    assert (shared.f0_computed, shared.f0_reused) == (1, 1)


def test_an_output_format_one_voice_cannot_take_is_refused_before_any_voice_writes(voices: Voices, tmp_path: Path) -> None:
    """The format was checked against a voice's rate only when its batch started, after the
    voices before it had written their files."""
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match="OPUS"):
        rvcfast.convert_voices(
            [voices.main, voices.nof0], clips()[:1], out, format="ogg", subtype="OPUS",
            voice_params=[{"output_sample_rate": 48000}, {}],  # Opus takes 48 kHz, not 40 kHz
        )
    assert not out.exists() or not any(out.rglob("*.ogg"))


def test_a_voice_with_another_f0_backend_or_options_gets_its_own_tracks(voices: Voices, tiny_models) -> None:
    """A voice loaded with another F0 backend (or other options, or other weights) silently got the
    first voice's RMVPE tracks, and an output that was not its own batch's: each F0 setting now
    has its own tracks, and alike voices (loaded apart from the same weights) share theirs."""
    pytest.importorskip("parselmouth")
    inputs = clips()[:1]
    pm = rvcfast.Converter.from_pretrained(voices.alto_path, encoder=tiny_models.encoder, f0="pm", device="cpu")
    strict = rvcfast.Converter.from_pretrained(
        voices.alto_path, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
        f0_options={"threshold": 0.2},
    )
    again = rvcfast.Converter.from_pretrained(voices.alto_path, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")
    assert again.engine.f0_extractor is not voices.main.engine.f0_extractor
    shared = rvcfast.SharedAnalysis()
    named = {"main": voices.main, "pm": pm, "strict": strict, "again": again}
    results = rvcfast.convert_voices(named, inputs, noise=False, shared=shared)
    for r in results:
        assert_same(r.audio, named[r.voice].convert_batch(inputs, noise=False)[0].audio)
    assert (shared.f0_computed, shared.f0_reused) == (3, 1)  # main and again share; pm and strict their own


def test_two_voice_names_that_spell_one_output_folder_are_refused(voices: Voices, tmp_path: Path) -> None:
    """Names were compared as given, but output names replace '/' by '_': voices "a/b" and "a_b"
    both wrote out/a_b/<stem>.wav, the second over the first; a voice named ".." failed only when
    its turn came, after the voices before it had written."""
    out = tmp_path / "out"
    for names in (("a/b", "a_b"), ("x", ".."), ("Alto", "alto"), ("caf\u00e9", "cafe\u0301")):  # NFC / NFD: one on macOS
        with pytest.raises(ParameterError, match="name"):
            rvcfast.convert_voices(dict(zip(names, (voices.main, voices.nof0))), clips()[:1], out, noise=False)
        assert not out.exists() or not any(out.rglob("*.wav")), names


def test_iter_voices_checks_its_options_when_called(voices: Voices, tmp_path: Path) -> None:
    """iter_voices was a generator: nothing was checked until it was first advanced."""
    with pytest.raises(ParameterError, match="decode_workers"):
        rvcfast.iter_voices([voices.main, voices.nof0], clips()[:1], tmp_path / "out", decode_workers=0)
    with pytest.raises(ParameterError, match="voice 1"):
        rvcfast.iter_voices([voices.main, "x.pth"], clips()[:1])


# ------------------------------------------------------------------ the memo in a server (evict=True)


def test_an_evicting_memo_keeps_the_most_recently_used_within_its_bounds(voices: Voices) -> None:
    seen: list[tuple[str, int]] = []
    a, b, c = ((tone(0.6, 16000, f), 16000) for f in (180.0, 240.0, 300.0))
    probe = rvcfast.SharedAnalysis(64)
    rvcfast.Converter.from_engine(probe.engine(voices.main.engine)).convert(*a, noise=False)
    per_clip, per_track = probe.feature_bytes, probe.track_bytes  # one clip's (padded) features and F0 track
    memo = rvcfast.SharedAnalysis(
        2.5 * per_clip / 2**20, evict=True, max_track_mb=2.5 * per_track / 2**20, on_reuse=lambda k, n: seen.append((k, n))
    )
    engine = memo.engine(voices.main.engine)
    conv = rvcfast.Converter.from_engine(engine)
    for clip in (a, b, c):  # room for two clips' features: a is dropped when c comes
        conv.convert(*clip, noise=False)
    assert len(memo._features) == 2 and memo.feature_bytes <= memo.max_feature_bytes
    assert memo.track_bytes <= memo.max_track_bytes and len(memo._tracks) == 2
    conv.convert(*b, noise=False)  # kept: reused (and now the most recent)
    assert seen == [("f0", 1), ("features", 1)]
    conv.convert(*a, noise=False)  # dropped: computed again, pushing c out
    assert seen == [("f0", 1), ("features", 1)]
    assert memo.features_computed == 4 and memo.features_reused == 1
    want = voices.main.convert(*c, noise=False).audio
    assert_same(conv.convert(*c, noise=False).audio, want)


def test_a_wrapped_engine_applies_each_calls_filter_radius(voices: Voices, tiny_models) -> None:
    pytest.importorskip("pyworld")
    plain = tiny_models.converter(f0="harvest", f0_weights=None)
    memo = rvcfast.SharedAnalysis(8, evict=True)
    wrapped = rvcfast.Converter.from_engine(memo.engine(plain.engine))
    clip = (tone(0.5, 16000, 210.0) * np.linspace(0.2, 1, 8000), 16000)
    for radius in (3, 1, 7, 1):
        assert_same(wrapped.convert(*clip, noise=False, filter_radius=radius).audio,
                    plain.convert(*clip, noise=False, filter_radius=radius).audio)
    assert memo.f0_computed == 3 and memo.f0_reused == 1  # one track per radius, the repeated one reused


def test_a_streamed_conversion_with_f0_turns_reads_and_fills_the_memo(voices: Voices) -> None:
    memo = rvcfast.SharedAnalysis(8, evict=True)
    engine = memo.engine(voices.main.engine)
    prep = engine.prepare(tone(0.8, 16000, 190.0), 16000)
    want = voices.main.engine.run([prep], voices.main.engine.params(noise=False))[0].audio
    for _ in range(2):  # computed block by block, then taken from the memo
        pieces = [p for p in engine.stream(prep, engine.params(noise=False), pauses=True) if p is not None]
        assert_same(np.concatenate(pieces), want)
    assert memo.f0_computed == 1 and memo.f0_reused == 1


def test_without_shared_gives_the_engine_its_own_models_back(voices: Voices) -> None:
    memo = rvcfast.SharedAnalysis()
    engine = memo.engine(voices.main.engine)
    plain = rvcfast.voices.without_shared(engine)
    assert plain.encoder is voices.main.engine.encoder and plain.f0_extractor is voices.main.engine.f0_extractor
    assert rvcfast.voices.without_shared(voices.main.engine) is voices.main.engine


class _Inner:
    """A stand-in encoder (module level: it pickles)."""

    hidden_size = 768


def test_a_shared_encoder_copies_and_pickles() -> None:
    """The wrapper forwarded every missing attribute to ``self.inner``: copy and pickle, which ask
    for ``__setstate__`` before ``inner`` is set, recursed until RecursionError."""
    import copy
    import pickle

    from rvcfast.voices import _SharedEncoder

    wrapped = _SharedEncoder(_Inner(), None, serial=1)  # type: ignore[arg-type]
    for again in (copy.copy(wrapped), pickle.loads(pickle.dumps(wrapped))):
        assert again.hidden_size == 768 and again.serial == 1
    with pytest.raises(AttributeError):
        _SharedEncoder.__new__(_SharedEncoder).hidden_size  # noqa: B018 - no inner yet: an AttributeError, not a recursion


def test_a_speaker_one_voice_does_not_have_names_that_voice(tiny_models, tmp_path) -> None:
    """A shared ``speaker`` out of range for one voice only was refused as "this model has 1
    speaker(s)", without saying which of the voices; settings wrong for any voice still name none."""
    one = save_random_voice_model(tmp_path / "solo.pth", "v2", 40000, True, seed=9, **{**TINY_VOICE, "num_speakers": 1})
    kw = dict(encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu")
    voices = [rvcfast.Converter.from_pretrained(tiny_models.voice, **kw), rvcfast.Converter.from_pretrained(one, **kw)]
    clip = [(tone(0.3, 16000), 16000)]
    with pytest.raises(ParameterError, match=r"^voice 'solo': speaker 2 is out of range: this model has 1 speaker"):
        rvcfast.convert_voices(voices, clip, tmp_path / "out", speaker=2)
    with pytest.raises(ParameterError, match=r"^pitch must be within"):  # every voice's: no voice named
        rvcfast.convert_voices(voices, clip, tmp_path / "out", pitch=99)
    assert not (tmp_path / "out").exists()  # refused before any work

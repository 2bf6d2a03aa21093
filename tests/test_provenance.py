"""Outputs record their source; a resumed batch matches outputs to inputs by that record.

Names of repeated stems follow input order (``001.wav``, ``001_1.wav``), so inputs added
between two runs used to shift a name onto another input's output: the resumed batch
skipped the new input (its "output" was another speaker's) and converted the old one
again under a new name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401 (fixtures)

import rvcfast
from rvcfast.batch import BatchOptions, expand_inputs
from rvcfast.errors import ParameterError
from rvcfast.writing import recorded_source, source_id, write_audio_atomic


def _audio(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, np.zeros(1600, np.float32), 16000)


def _output_of(source: Path, out: Path) -> None:
    """An output an earlier run wrote for ``source``."""
    write_audio_atomic(out, np.full(800, 0.1, np.float32), 40000, source=source)


def _plan(inputs: list[Path], out: Path, **kw) -> list[tuple[Path, Path]]:
    jobs = expand_inputs(inputs, BatchOptions(out_dir=out, **kw))
    return [(j.path, j.out_path) for j in jobs]


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_an_output_records_the_id_of_its_source_and_not_its_path(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "private-folder" / "take.wav"
    _audio(src)
    out = write_audio_atomic(tmp_path / f"out.{fmt}", np.zeros(4000, np.float32), 40000, source=src)
    assert recorded_source(out) == source_id(src)
    assert b"private-folder" not in out.read_bytes()
    assert recorded_source(write_audio_atomic(tmp_path / f"plain.{fmt}", np.zeros(4000, np.float32), 40000)) is None
    # an id given as it is (a server told it by its client, who alone has the input)
    told = write_audio_atomic(tmp_path / f"told.{fmt}", np.zeros(4000, np.float32), 40000, recorded=source_id(src))
    assert recorded_source(told) == source_id(src)
    with pytest.raises(ParameterError, match="source or recorded"):
        write_audio_atomic(tmp_path / f"both.{fmt}", np.zeros(4000, np.float32), 40000, source=src, recorded=source_id(src))


def test_the_source_id_is_one_per_file_whatever_its_spelling(tmp_path: Path) -> None:
    a, b = tmp_path / "in" / "a.wav", tmp_path / "in" / "b.wav"
    _audio(a, b)
    (tmp_path / "link.wav").symlink_to(a)
    spellings = [a, Path(f"{tmp_path}/in/./a.wav"), tmp_path / "in" / ".." / "in" / "a.wav", tmp_path / "link.wav"]
    assert {source_id(p) for p in spellings} == {source_id(a)}
    assert source_id(a) != source_id(b)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert source_id("in/a.wav") == source_id(a)
    finally:
        os.chdir(cwd)


def test_nothing_is_recorded_by_other_files(tmp_path: Path) -> None:
    other = tmp_path / "other.wav"
    with sf.SoundFile(other, "w", 16000, 1) as f:
        f.comment = "made by another program"
        f.write(np.zeros(160, np.float32))
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    assert recorded_source(other) is None
    assert recorded_source(tmp_path / "junk.wav") is None
    assert recorded_source(tmp_path / "missing.wav") is None
    assert recorded_source(tmp_path) is None


def test_an_added_input_does_not_take_the_name_of_an_earlier_output(tmp_path: Path) -> None:
    spk1, spk2, out = tmp_path / "spk1" / "001.wav", tmp_path / "spk2" / "001.wav", tmp_path / "out"
    _audio(spk1, spk2)
    _output_of(spk2, out / "001.wav")  # the first run had spk2 only
    assert _plan([spk1, spk2], out, skip_existing=True) == [(spk1, out / "001_1.wav"), (spk2, out / "001.wav")]
    # a fresh run (nothing skipped, everything written again) names by input order as always
    assert _plan([spk1, spk2], out) == [(spk1, out / "001.wav"), (spk2, out / "001_1.wav")]


def test_a_removed_input_does_not_hand_its_output_to_another(tmp_path: Path) -> None:
    a, b, c, out = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav", tmp_path / "c" / "x.wav", tmp_path / "out"
    _audio(a, b, c)
    _output_of(a, out / "x.wav")
    _output_of(b, out / "x_1.wav")
    # a is gone from the resumed run: b keeps its output; c, new, takes neither (it was planned
    # onto a's x.wav and skipped as done: b found its own output, so the folder is this batch's)
    assert _plan([b, c], out, skip_existing=True) == [(b, out / "x_1.wav"), (c, out / "x_2.wav")]
    assert _plan([c, b], out, skip_existing=True) == [(c, out / "x_2.wav"), (b, out / "x_1.wav")]
    # a fresh run writes every output again, by input order
    assert _plan([b, c], out) == [(b, out / "x.wav"), (c, out / "x_1.wav")]


def test_outputs_without_a_record_are_matched_by_name_as_before(tmp_path: Path) -> None:
    spk1, spk2, out = tmp_path / "spk1" / "001.wav", tmp_path / "spk2" / "001.wav", tmp_path / "out"
    _audio(spk1, spk2, out / "001.wav", out / "001_1.wav")  # another tool's files, or rvcfast before records
    assert _plan([spk1, spk2], out, skip_existing=True) == [(spk1, out / "001.wav"), (spk2, out / "001_1.wav")]
    # records of files outside the batch (a moved input folder) leave the names as they were too
    moved = tmp_path / "old-place" / "001.wav"
    _output_of(moved, out / "001.wav")
    assert _plan([spk1, spk2], out, skip_existing=True) == [(spk1, out / "001.wav"), (spk2, out / "001_1.wav")]


def test_a_record_never_puts_an_output_on_an_input(tmp_path: Path) -> None:
    """An in-place batch: ``x.wav``'s output is ``x_rvc.wav``; a file recording ``x.wav``
    that is itself an input is not its output."""
    src = tmp_path / "in"
    x = src / "x.wav"
    _audio(x)
    _output_of(x, src / "x_rvc.wav")
    assert _plan([x], src, skip_existing=True) == [(x, src / "x_rvc.wav")]
    assert _plan([x, src / "x_rvc.wav"], src, skip_existing=False)[0] == (x, src / "x_2.wav")


def test_an_in_place_folder_run_again_leaves_out_its_earlier_outputs(tmp_path: Path) -> None:
    """Run again on its folder without --skip-existing, an in-place batch converted its earlier
    ``x_rvc.wav`` (into ``x_rvc_rvc.wav``) and wrote ``x``'s output as ``x_2.wav``."""
    src = tmp_path / "in"
    x, y, other = src / "x.wav", src / "y.wav", tmp_path / "elsewhere" / "z.wav"
    _audio(x, y, other)
    _output_of(x, src / "x_rvc.wav")
    _output_of(other, src / "z_rvc.wav")  # records a file outside the batch: an input like any other
    assert _plan([src], src) == [(x, src / "x_rvc.wav"), (y, src / "y_rvc.wav"), (src / "z_rvc.wav", src / "z_rvc_rvc.wav")]
    # an output folder elsewhere holding an earlier output, given as an input folder too
    takes, out = tmp_path / "takes", tmp_path / "out"
    a = takes / "a.wav"
    _audio(a)
    _output_of(a, out / "a.wav")
    assert _plan([takes, out], out) == [(a, out / "a.wav")]
    # named one by one, an earlier output stays an input (unless resumed): never dropped unasked
    assert _plan([a, out / "a.wav"], out) == [(a, out / "a_rvc.wav"), (out / "a.wav", out / "a_2.wav")]


def test_a_resumed_batch_skips_each_input_whose_own_output_exists(
    tiny_converter: rvcfast.Converter, tmp_path: Path
) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    spk2 = corpus / "spk2" / "001.wav"
    spk2.parent.mkdir(parents=True)
    sf.write(spk2, tone(0.5, freq=220), 16000)
    first = tiny_converter.convert_batch([spk2], out)
    assert first[0].ok and recorded_source(out / "001.wav") == source_id(spk2)
    before = (out / "001.wav").stat().st_mtime_ns, sf.info(out / "001.wav").frames

    spk1 = corpus / "spk1" / "001.wav"  # a speaker added before the resumed run, sorted first
    spk1.parent.mkdir()
    sf.write(spk1, tone(0.8, freq=150), 16000)
    results = tiny_converter.convert_batch([corpus], out, recursive=True, skip_existing=True)
    by_source = {Path(r.source): r for r in results}
    assert by_source[spk2].skipped and by_source[spk2].output_path == str(out / "001.wav")
    assert not by_source[spk1].skipped and by_source[spk1].ok
    assert by_source[spk1].output_path == str(out / "001_1.wav")
    assert ((out / "001.wav").stat().st_mtime_ns, sf.info(out / "001.wav").frames) == before
    assert recorded_source(out / "001_1.wav") == source_id(spk1)
    assert sf.info(out / "001_1.wav").duration == pytest.approx(0.8, abs=0.03)


# ---------------------------------------------------------------------- {voice} and {pitch}


def test_outputs_can_be_named_by_voice_and_key(tiny_models, tmp_path: Path) -> None:
    """Trying several voices or keys on one input into one folder: each run its own files."""
    src, out = tmp_path / "song.wav", tmp_path / "out"
    sf.write(src, tone(0.5), 16000)
    template = "{stem}-{voice}-{pitch}"
    with_f0 = tiny_models.converter()
    without = rvcfast.Converter.from_pretrained(
        tiny_models.voice_nof0, encoder=tiny_models.encoder, device="cpu"
    )
    runs = [(with_f0, 0), (with_f0, 2), (with_f0, -1.5), (without, 0)]
    for conv, pitch in runs:
        [res] = conv.convert_batch([src], out, name_template=template, pitch=pitch, skip_existing=True)
        assert res.ok and not res.skipped, res.error
    assert sorted(p.name for p in out.iterdir()) == [
        "song-voice_v2_40k_f0-+2.wav", "song-voice_v2_40k_f0--1.5.wav", "song-voice_v2_40k_f0-0.wav", "song-voice_v2_40k_nof0-0.wav"
    ]
    # a Converter built from model objects has no file name: "voice"
    engine = with_f0.engine
    bare = rvcfast.Converter.from_engine(type(engine)(engine.vocoder, engine.encoder, engine.f0_extractor))
    [res] = bare.convert_batch([src], out, name_template="{voice}/{stem}")
    assert res.output_path == str(out / "voice" / "song.wav")
    from rvcfast.batch_inputs import check_name_template

    with pytest.raises(ParameterError, match=r"\{voice\} and \{pitch\}"):
        check_name_template("{stem}-{speaker}")

"""Resumed batches (``skip_existing``), second pass: gaps in a repeated stem's names, in-place
batches whose earlier outputs have no ``_rvc`` name, and the planning cost of many inputs
sharing a stem.

Each output records its source (:func:`rvcfast.writing.recorded_source`); these tests write
such outputs directly (as an earlier run would have) and check the plan of the next run, then
one resumed batch end to end with the tiny models (``tests/helpers.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401 (fixtures)

import rvcfast
import rvcfast.writing
from rvcfast.batch import BatchOptions, expand_inputs
from rvcfast.writing import recorded_source, source_id, write_audio_atomic


def _audio(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, np.zeros(1600, np.float32), 16000)


def _output_of(source: Path, out: Path) -> None:
    """An output an earlier run wrote for ``source``."""
    write_audio_atomic(out, np.full(800, 0.1, np.float32), 40000, source=source, format=out.suffix[1:])


def _plan(inputs: list[Path], out: Path, **kw) -> list[tuple[Path, Path]]:
    jobs = expand_inputs(inputs, BatchOptions(out_dir=out, **kw))
    return [(j.path, j.out_path) for j in jobs]


# ------------------------------------------------------------------ gaps in the names


def test_an_output_past_a_missing_name_stays_its_inputs(tmp_path: Path) -> None:
    """``b`` failed in the first run (no ``x_1``), then was taken out: ``c`` keeps ``x_2``.
    Was: the search for ``c``'s output stopped at the missing ``x_1``, so ``c`` was converted
    again into ``x_1`` and ``x_2`` was left as a second copy."""
    a, b, c, out = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav", tmp_path / "c" / "x.wav", tmp_path / "out"
    _audio(a, b, c)
    _output_of(a, out / "x.wav")
    _output_of(c, out / "x_2.wav")
    assert _plan([a, c], out, skip_existing=True) == [(a, out / "x.wav"), (c, out / "x_2.wav")]
    # b back again: it gets the free name, and nobody's output
    assert _plan([a, b, c], out, skip_existing=True) == [(a, out / "x.wav"), (b, out / "x_1.wav"), (c, out / "x_2.wav")]
    # an input added before c does not take c's output either
    d = tmp_path / "b0" / "x.wav"
    _audio(d)
    assert _plan([a, d, c], out, skip_existing=True) == [(a, out / "x.wav"), (d, out / "x_1.wav"), (c, out / "x_2.wav")]


def test_a_name_past_a_gap_that_records_another_input_is_passed_by(tmp_path: Path) -> None:
    a, b, c, out = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav", tmp_path / "c" / "x.wav", tmp_path / "out"
    _audio(a, b, c)
    _output_of(c, out / "x_1.wav")  # x.wav was deleted (to convert a again)
    _output_of(b, out / "x_3.wav")
    plan = _plan([a, b, c], out, skip_existing=True)
    assert plan == [(a, out / "x.wav"), (b, out / "x_3.wav"), (c, out / "x_1.wav")]


def test_an_in_place_input_finds_its_rvc_output_past_a_gap(tmp_path: Path) -> None:
    """In place, ``x.wav``'s names are ``x_rvc``, ``x_2``...: ``x_1`` is none of them."""
    folder = tmp_path / "in"
    x, y = folder / "x.wav", tmp_path / "other" / "x.wav"
    _audio(x, y)
    _output_of(y, folder / "x_2.wav")
    _output_of(x, folder / "x_1.wav")  # not one of x's names in its own folder: not its output
    plan = _plan([x, y], folder, skip_existing=True)
    assert plan == [(x, folder / "x_rvc.wav"), (y, folder / "x_2.wav")]


# ------------------------------------------------------------------ in-place batches


def test_a_resumed_recursive_in_place_batch_takes_no_output_for_an_input(tmp_path: Path) -> None:
    """``a/x.wav`` and ``b/x.wav`` into their top folder are ``x.wav`` and ``x_1.wav`` there.
    Was: the resumed batch read both as inputs, converted all four files and gave ``a`` and
    ``b`` new names (``x_rvc.wav``, ``x_2.wav``)."""
    top = tmp_path / "corpus"
    a, b = top / "a" / "x.wav", top / "b" / "x.wav"
    _audio(a, b)
    assert _plan([top], top, recursive=True) == [(a, top / "x.wav"), (b, top / "x_1.wav")]
    _output_of(a, top / "x.wav")
    _output_of(b, top / "x_1.wav")
    assert _plan([top], top, recursive=True, skip_existing=True) == [(a, top / "x.wav"), (b, top / "x_1.wav")]
    # positions ({index}) are those of the first run
    assert [j.number for j in expand_inputs([top], BatchOptions(out_dir=top, recursive=True, skip_existing=True))] == [0, 1]
    # the files themselves, named one by one, are left out too; an unrelated file is kept
    _audio(top / "y.wav")
    plan = _plan([top / "x.wav", a, top / "y.wav", b], top, skip_existing=True)
    assert plan == [(a, top / "x.wav"), (top / "y.wav", top / "y_rvc.wav"), (b, top / "x_1.wav")]


def test_a_resumed_in_place_batch_with_a_stem_in_two_formats_skips_both(tmp_path: Path) -> None:
    """``x.flac`` and ``x.wav`` in place: ``x_rvc.wav`` and ``x_2.wav``. Was: ``x_2.wav`` was
    converted as an input on the resumed run, and ``x.wav`` again into ``x_3.wav``."""
    folder = tmp_path / "in"
    flac, wav = folder / "x.flac", folder / "x.wav"
    _audio(flac, wav)
    assert _plan([folder], folder) == [(flac, folder / "x_rvc.wav"), (wav, folder / "x_2.wav")]
    _output_of(flac, folder / "x_rvc.wav")
    _output_of(wav, folder / "x_2.wav")
    assert _plan([folder], folder, skip_existing=True) == [(flac, folder / "x_rvc.wav"), (wav, folder / "x_2.wav")]


def test_files_recording_other_inputs_found_in_a_folder_are_left_out_without_skip_existing(tmp_path: Path) -> None:
    """A batch run again without --skip-existing converted its earlier outputs found in its
    folders too (in place: ``x_rvc.wav`` into ``x_rvc_rvc.wav``, ``x``'s output renamed
    ``x_2.wav``). An earlier output records its input exactly, so it is left out, and its input's
    output replaces it, as a rerun does; a file named one by one stays an input."""
    top = tmp_path / "corpus"
    a = top / "a" / "x.wav"
    _audio(a)
    _output_of(a, top / "x.wav")
    assert _plan([top], top, recursive=True) == [(a, top / "x.wav")]
    assert [p for p, _ in _plan([a, top / "x.wav"], top)] == [a, top / "x.wav"]


# ------------------------------------------------------------------ planning cost


def test_planning_many_inputs_of_one_stem_reads_each_output_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """400 folders of ``vocals.wav`` (a stem separator's layout). Was: each input walked every
    earlier name, resolving each (~80,000 path resolutions: minutes for a few thousand files);
    now each name is looked at about once."""
    n = 400
    inputs = [tmp_path / "in" / f"song{k:03d}" / "vocals.wav" for k in range(n)]
    _audio(*inputs)
    out = tmp_path / "out"
    resolves = 0
    real_resolve = Path.resolve

    def counting_resolve(self: Path, strict: bool = False) -> Path:
        nonlocal resolves
        resolves += 1
        return real_resolve(self, strict)

    monkeypatch.setattr(Path, "resolve", counting_resolve)
    jobs = expand_inputs([tmp_path / "in"], BatchOptions(out_dir=out, recursive=True))
    assert [j.out_path.name for j in jobs] == ["vocals.wav"] + [f"vocals_{k}.wav" for k in range(1, n)]
    assert resolves < 12 * n, resolves

    for j in jobs[::2]:  # half of them written by an earlier run
        _output_of(j.path, j.out_path)
    reads = 0
    real_recorded = rvcfast.writing.recorded_source

    def counting_recorded(path):
        nonlocal reads
        reads += 1
        return real_recorded(path)

    monkeypatch.setattr(rvcfast.writing, "recorded_source", counting_recorded)
    resolves = 0
    resumed = expand_inputs([tmp_path / "in"], BatchOptions(out_dir=out, recursive=True, skip_existing=True))
    assert [j.out_path for j in resumed] == [j.out_path for j in jobs]
    assert reads <= n // 2 and resolves < 12 * n, (reads, resolves)


# ------------------------------------------------------------------ end to end


def test_a_resumed_in_place_recursive_batch_converts_nothing_again(
    tiny_converter: rvcfast.Converter, tmp_path: Path
) -> None:
    top = tmp_path / "corpus"
    a, b = top / "a" / "x.wav", top / "b" / "x.wav"
    for p, seconds in ((a, 0.5), (b, 0.7)):
        p.parent.mkdir(parents=True)
        sf.write(p, tone(seconds, freq=200), 16000)
    first = tiny_converter.convert_batch([top], top, recursive=True)
    assert [r.output_path for r in first] == [str(top / "x.wav"), str(top / "x_1.wav")]
    files = sorted(top.rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in files if p.is_file()}
    again = tiny_converter.convert_batch([top], top, recursive=True, skip_existing=True)
    assert [(r.source, r.skipped, r.output_path) for r in again] == [
        (str(a), True, str(top / "x.wav")), (str(b), True, str(top / "x_1.wav")),
    ]
    assert sorted(top.rglob("*")) == files
    assert {p: p.stat().st_mtime_ns for p in files if p.is_file()} == stamps
    assert recorded_source(top / "x_1.wav") == source_id(b)

"""A batch at scale: planning, resuming and writing thousands of short files.

The work a batch does per file besides the models must not grow with the number of files
(no quadratic planning of names, no folder listing per write), a resumed batch reports its
skipped files as it finds them, and outputs waiting for their write do not pile up in memory.
No timings: each test counts the work, or watches the order of events.
"""

from __future__ import annotations

import concurrent.futures as cf
import pathlib
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast.batch
import rvcfast.writing
from rvcfast.batch import BatchOptions, expand_inputs
from rvcfast.batch_inputs import _Namer


class _Counter:
    def __init__(self) -> None:
        self.n = 0


def test_resuming_an_in_place_batch_plans_in_linear_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-place batch (output folder = input folder) resumed with ``skip_existing`` leaves out its
    earlier ``x_rvc.wav`` outputs; each was checked against every name of the folder: planning the
    resume of 4,000 inputs took 70 s (twice on the command line) before the first file."""
    n = 150
    for i in range(n):
        (tmp_path / f"take{i:03d}.wav").write_bytes(b"")
        (tmp_path / f"take{i:03d}_rvc.wav").write_bytes(b"")  # the outputs of the first run
    stems = _Counter()
    stem = pathlib.PurePath.stem

    def counted(self: pathlib.PurePath) -> str:
        stems.n += 1
        return stem.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(pathlib.PurePath, "stem", property(counted))
    jobs = expand_inputs([tmp_path], BatchOptions(out_dir=tmp_path, skip_existing=True))
    monkeypatch.undo()
    assert [Path(j.label).name for j in jobs] == [f"take{i:03d}.wav" for i in range(n)]
    assert [j.out_path.name for j in jobs] == [f"take{i:03d}_rvc.wav" for i in range(n)]  # type: ignore[union-attr]
    assert stems.n < 20 * n  # a few per file (it was about n * n / 2)


def test_inputs_named_alike_are_planned_with_one_look_at_their_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of inputs with one name (``<speaker>/audio.wav``) resumed into a folder where half
    of them have an output: each input's plan sorted every existing name of that stem again."""
    n = 120
    for i in range(n):
        (tmp_path / "in" / f"{i:03d}").mkdir(parents=True)
        (tmp_path / "in" / f"{i:03d}" / "audio.wav").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    for k in range(n // 2):  # outputs an older run left, without a record of their inputs
        (out / ("audio.wav" if k == 0 else f"audio_{k}.wav")).write_bytes(b"")
    looks = _Counter()

    class Names(set):
        def __iter__(self):  # type: ignore[no-untyped-def]
            looks.n += 1
            return super().__iter__()

    listing = _Namer._list
    monkeypatch.setattr(_Namer, "_list", lambda self, folder: {k: Names(v) for k, v in listing(self, folder).items()})
    jobs = expand_inputs([tmp_path / "in"], BatchOptions(out_dir=out, skip_existing=True, recursive=True))
    assert [j.out_path.name for j in jobs] == ["audio.wav"] + [f"audio_{k}.wav" for k in range(1, n)]  # type: ignore[union-attr]
    assert looks.n <= 4  # once for the stem (it was twice per input)


def _wav(path: Path, seconds: float = 0.1, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate), rate)
    return path


def test_a_resumed_batch_reports_skipped_files_as_it_finds_them(tiny_converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished batch run again with ``skip_existing``: nothing is decoded, the outputs are looked
    at in the decode threads, and each skipped file is reported as it is found. (Skipped files
    waited for a group of files to convert: the whole batch was looked at, the progress standing
    at 0, before the first was reported.)"""
    n = 24
    inputs = [_wav(tmp_path / "in" / f"c{i:02d}.wav") for i in range(n)]
    out = tmp_path / "out"
    for i in range(n - 1):  # every output but the last one's is there
        _wav(out / f"c{i:02d}.wav", rate=40000)
    looked: list[str] = []
    finished = rvcfast.batch.finished_output

    def counted(path):  # type: ignore[no-untyped-def]
        looked.append(threading.current_thread().name)
        return finished(path)

    monkeypatch.setattr(rvcfast.batch, "finished_output", counted)
    decoded: list[str] = []
    prepare = tiny_converter.engine.prepare
    monkeypatch.setattr(tiny_converter.engine, "prepare", lambda source, *a, **k: (decoded.append(str(source)), prepare(source, *a, **k))[1])
    at_first: list[int] = []
    results = tiny_converter.convert_batch(
        inputs, out, skip_existing=True, progress=lambda res, done, total: at_first.append(len(looked)) if done == 1 else None
    )
    assert [r.skipped for r in results] == [True] * (n - 1) + [False]
    assert results[-1].ok and Path(results[-1].output_path).is_file()
    assert decoded == [str(inputs[-1])]  # the skipped inputs are not decoded
    assert at_first[0] <= 8  # the files prefetched (4), not the whole batch (24)
    assert len(looked) == n and all(name.startswith("rvcfast-decode") for name in looked)


def test_outputs_waiting_for_their_write_do_not_pile_up(tiny_converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine faster than the writer (a GPU, an m4a encoder, a slow disk): the batch took group
    after group while the first output waited for its write, holding every output of the batch in
    memory (4,000 short files: 87 MB where 8 MB do). It now waits once more groups than there are
    write workers wait to be written."""
    first_written, may_write = threading.Event(), threading.Event()
    write = rvcfast.batch._write_timed

    def slow_first(path, *args):  # type: ignore[no-untyped-def]
        if path.name == "array_0000.wav":
            may_write.wait(30)  # until the batch waits for it (or ran ahead: the test fails)
            try:
                return write(path, *args)
            finally:
                first_written.set()
        return write(path, *args)

    wait = cf.wait

    def waiting(*args, **kwargs):  # type: ignore[no-untyped-def]
        may_write.set()  # the batch waits instead of computing on: the first write may finish
        return wait(*args, **kwargs)

    computed_ahead: list[int] = []
    run = tiny_converter.engine.run
    calls = _Counter()

    def counted_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.n += 1
        if calls.n >= 3 and not first_written.is_set():
            computed_ahead.append(calls.n)
            may_write.set()
        return run(*args, **kwargs)

    monkeypatch.setattr(rvcfast.batch, "_write_timed", slow_first)
    monkeypatch.setattr(cf, "wait", waiting)
    monkeypatch.setattr(tiny_converter.engine, "run", counted_run)
    clips = [(tone(0.1, freq=150 + 10 * i), 16000) for i in range(6)]
    results = tiny_converter.convert_batch(clips, tmp_path, batch_seconds=0.01, compute_workers=1, write_workers=1)
    assert [r.ok for r in results] == [True] * 6 and calls.n == 6
    assert computed_ahead == []  # group 3 went to the engine only once group 1 was on disk
    assert all(Path(r.output_path).is_file() for r in results)


def test_a_batch_does_not_list_its_output_folder_for_each_write(tiny_converter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write looked for stale temporary files of its own name, which lists the whole output
    folder: 5 ms more per write with 4,000 outputs in the folder, 11 ms with 8,000 (quadratic in
    the batch). The batch removes them from each of its folders once, before the first write."""
    listed = _Counter()
    remove = rvcfast.writing.remove_stale_parts

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        listed.n += 1
        return remove(*args, **kwargs)

    monkeypatch.setattr(rvcfast.writing, "remove_stale_parts", counted)
    stale = tmp_path / ".array_0000.wav.otherhost~1~0.part"  # not this host's: left alone
    stale.write_bytes(b"")
    clips = [(tone(0.1), 16000) for _ in range(5)]
    results = tiny_converter.convert_batch(clips, tmp_path, batch_seconds=0.01)
    assert all(r.ok for r in results) and stale.exists()
    assert listed.n == 0


def test_many_failures_keep_the_batch_and_its_progress_in_step(tiny_converter, tmp_path: Path) -> None:
    """A corpus with many broken files: every input is reported once, in a progress count that
    ends at the total, the failed ones named, the good ones written under unique names."""
    folders = [tmp_path / "in" / f"spk{s}" for s in range(3)]
    inputs: list[Path] = []
    for folder in folders:
        for i in range(4):
            inputs.append(_wav(folder / f"clip{i}.wav"))  # the same names in each folder
        broken = folder / "broken.wav"
        broken.write_bytes(b"RIFF\0\0garbage")
        inputs.append(broken)
    seen: list[tuple[int, int]] = []
    results = tiny_converter.convert_batch(
        [tmp_path / "in"], tmp_path / "out", recursive=True, progress=lambda res, done, total: seen.append((done, total))
    )
    assert seen == [(k, len(inputs)) for k in range(1, len(inputs) + 1)]
    assert sorted(r.source for r in results) == sorted(str(p) for p in inputs)
    failed = [r for r in results if r.error is not None]
    assert sorted(r.source for r in failed) == sorted(str(f / "broken.wav") for f in folders)
    assert all(r.source in r.error for r in failed)  # type: ignore[operator]
    written = sorted(Path(r.output_path).name for r in results if r.ok)  # type: ignore[arg-type]
    assert written == sorted(f"clip{i}{s}.wav" for i in range(4) for s in ("", "_1", "_2"))
    assert all(np.isfinite(sf.read(tmp_path / "out" / name)[0]).all() for name in written)

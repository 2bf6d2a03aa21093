"""The batch front end under failure: a dead F0 worker process, outputs that only look finished."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (  # noqa: F401 (fixtures)
    MODEL_SR,
    TinyModels,
    one_thread_fixture,
    tiny_converter_fixture,
    tiny_models_fixture,
    tone,
)

import rvcfast


class _KillsItsProcessOnLongInputs:
    """A ``cpu_bound`` F0 plugin whose worker process dies (as on a crash in a C tracker, or the
    OOM killer) on inputs longer than ``limit`` padded 16 kHz samples. In the test process
    itself it raises instead, so a mistake here can never end the test run."""

    name, sample_rate, hop_length = "kills-on-long", 16000, 160
    cpu_bound = True

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parent = os.getpid()

    def extract(self, audio: np.ndarray) -> np.ndarray:
        if len(audio) > self.limit:
            if os.getpid() == self.parent:
                raise RuntimeError("the F0 track was computed in the test process, not in a worker process")
            os._exit(3)
        return np.full(len(audio) // 160 + 1, 200.0)

    def extract_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        return [self.extract(a) for a in audios]


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@pytest.fixture
def crash_batch(tiny_models: TinyModels, tmp_path: Path) -> tuple[rvcfast.Converter, list[Path]]:
    """Eight short files and one long one (the fourth), with an F0 backend that dies on the long one."""
    names = [f"c{i}.wav" for i in range(9)]
    for i, n in enumerate(names):
        sf.write(tmp_path / n, tone(2.0 if i == 3 else 0.3, freq=150 + 10 * i), 16000)
    probe = tiny_models.converter(index=None)
    short, long_ = (probe.engine.prepare(tmp_path / n).padded.shape[0] for n in ("c0.wav", "c3.wav"))
    assert short < long_
    conv = tiny_models.converter(f0=_KillsItsProcessOnLongInputs((short + long_) // 2), index=None)
    return conv, [tmp_path / n for n in names]


def test_a_dead_f0_worker_process_fails_only_its_file(crash_batch: tuple[rvcfast.Converter, list[Path]], tmp_path: Path) -> None:
    # One dead worker process used to break the whole process pool: the batch ended with a raw
    # BrokenProcessPool (on_error="continue"), the files after it never converted.
    conv, inputs = crash_batch
    out = tmp_path / "out"
    seen: list[tuple[int, int]] = []
    results = conv.convert_batch(
        inputs, out, batch_seconds=0.5, f0_workers=2, progress=lambda r, done, total: seen.append((done, total))
    )
    assert [Path(r.source).name for r in results] == [p.name for p in inputs]
    failed = [r for r in results if not r.ok]
    assert [Path(r.source).name for r in failed] == ["c3.wav"]
    assert "c3.wav" in failed[0].error and "F0 worker process died" in failed[0].error
    assert "kills-on-long" in failed[0].error
    assert _outputs(out) == sorted(p.name for p in inputs if p.name != "c3.wav")
    for r in results:
        if r.ok:  # every other file, also those that were in the pool with the dead process
            assert sf.info(r.output_path).frames == pytest.approx(0.3 * MODEL_SR, abs=MODEL_SR // 20)
    assert seen == [(k, len(inputs)) for k in range(1, len(inputs) + 1)]


def test_on_error_stop_after_a_dead_f0_worker_process_stops_at_that_file(
    crash_batch: tuple[rvcfast.Converter, list[Path]], tmp_path: Path
) -> None:
    conv, inputs = crash_batch
    out = tmp_path / "out"
    yielded: list[str] = []
    with pytest.raises(rvcfast.RvcfastError) as info:
        for r in conv.iter_batch(inputs, out, batch_seconds=0.5, on_error="stop"):
            yielded.append(Path(r.source).name)
    assert "c3.wav" in str(info.value) and "F0 worker process died" in str(info.value)
    assert yielded == ["c0.wav", "c1.wav", "c2.wav"]
    assert _outputs(out) == ["c0.wav", "c1.wav", "c2.wav"]


def test_skip_existing_converts_again_over_an_output_that_is_not_audio(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    # skip_existing used to skip any name that existed: a 0-byte file, a file that is not audio
    # or a folder in the output's place was reported as a finished output, the input never converted.
    names = ["done.wav", "empty.wav", "junk.wav", "folder.wav"]
    for n in names:
        sf.write(tmp_path / n, tone(0.3), 16000)
    out = tmp_path / "out"
    first = tiny_converter.convert_batch([tmp_path / "done.wav"], out)
    assert first[0].ok
    stamp = (out / "done.wav").stat().st_mtime_ns
    (out / "empty.wav").write_bytes(b"")
    (out / "junk.wav").write_bytes(b"RIFF\x00\x00")
    (out / "folder.wav").mkdir()
    results = tiny_converter.convert_batch([tmp_path / n for n in names], out, skip_existing=True)
    by_name = {Path(r.source).name: r for r in results}
    assert by_name["done.wav"].skipped and (out / "done.wav").stat().st_mtime_ns == stamp
    for n in ("empty.wav", "junk.wav"):
        assert not by_name[n].skipped and by_name[n].ok, by_name[n].error
        assert sf.info(out / n).frames == pytest.approx(0.3 * MODEL_SR, abs=MODEL_SR // 20)
    # a folder in the output's place is not a finished output: the file is converted, and its
    # write fails (a file cannot replace a folder), reported in its Result
    assert not by_name["folder.wav"].skipped and not by_name["folder.wav"].ok
    assert "folder.wav" in by_name["folder.wav"].error and (out / "folder.wav").is_dir()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_an_output_copied_only_half_way_is_not_finished(tmp_path: Path, fmt: str) -> None:
    # finished_output used to take any file that libsndfile opened with frames in its header:
    # a copy cut short (a WAV holding half the frames its header gives, a FLAC or MP3 whose
    # last frames do not decode) was skipped by skip_existing and never converted again.
    from rvcfast.writing import finished_output, write_audio_atomic

    whole = write_audio_atomic(tmp_path / f"whole.{fmt}", 0.5 * tone(1.0, 44100), 44100)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    assert finished_output(whole)
    assert not finished_output(cut)


def test_skip_existing_converts_again_over_a_wav_copied_half_way(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    src = tmp_path / "song.wav"
    sf.write(src, tone(1.0), 16000)
    out = tmp_path / "out"
    assert tiny_converter.convert_batch([src], out)[0].ok
    whole = (out / "song.wav").read_bytes()
    frames = sf.info(out / "song.wav").frames
    (out / "song.wav").write_bytes(whole[: len(whole) // 2])  # an interrupted copy of the output
    (r,) = tiny_converter.convert_batch([src], out, skip_existing=True)
    assert r.ok and not r.skipped
    assert len((out / "song.wav").read_bytes()) == len(whole)
    assert sf.read(out / "song.wav")[0].shape[0] == frames  # converted again, whole


@pytest.mark.parametrize("progress", ["print", 5, "bar"], ids=["text", "number", "BatchProgress"])
def test_a_progress_that_cannot_be_called_is_refused_before_any_work(
    tiny_converter: rvcfast.Converter, tmp_path: Path, progress: object
) -> None:
    # It used to fail with a raw TypeError at the first finished file, after that file was
    # converted and written (BatchProgress, documented next to the batch, is not callable).
    from rvcfast.errors import ParameterError
    from rvcfast.progress import BatchProgress

    if progress == "bar":
        progress = BatchProgress(1, enabled=False)
    sf.write(tmp_path / "a.wav", tone(0.3), 16000)
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match="progress must be a function") as info:
        tiny_converter.iter_batch([tmp_path / "a.wav"], out, progress=progress)
    if isinstance(progress, BatchProgress):
        assert "bar.update(result)" in str(info.value)
    assert not out.exists()
    seen: list[tuple[str, int, int]] = []
    results = tiny_converter.convert_batch(
        [tmp_path / "a.wav"], out, progress=lambda r, done, total: seen.append((Path(r.source).name, done, total))
    )
    assert results[0].ok and seen == [("a.wav", 1, 1)]


class _FailsOnLoud:
    """An F0 plugin that raises on inputs louder than 0.3 peak (run in this process: not cpu_bound)."""

    name, sample_rate, hop_length = "fails-on-loud", 16000, 160

    def extract(self, audio: np.ndarray) -> np.ndarray:
        if np.abs(audio).max() > 0.3:
            raise ValueError("this tracker cannot follow loud voices")
        return np.full(len(audio) // 160 + 1, 200.0)

    def extract_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        return [self.extract(a) for a in audios]


def test_a_failed_results_exception_keeps_the_original_error_and_its_traceback(tiny_models: TinyModels, tmp_path: Path) -> None:
    import pickle
    import traceback

    sf.write(tmp_path / "quiet.wav", 0.2 * tone(0.4, freq=180), 16000)
    sf.write(tmp_path / "loud.wav", 0.9 * tone(0.4, freq=180) / np.abs(tone(0.4, freq=180)).max(), 16000)
    (tmp_path / "text.wav").write_text("not audio at all\n" * 50)
    conv = tiny_models.converter(f0=_FailsOnLoud(), index=None)
    ok, loud, text = conv.convert_batch([tmp_path / n for n in ("quiet.wav", "loud.wav", "text.wav")], out_dir=tmp_path / "out")
    assert ok.ok and ok.exception is None
    # the engine's failure: the tracker's own exception, raised where the tracker raised it
    assert isinstance(loud.exception, ValueError) and "loud voices" in str(loud.exception) and "loud voices" in loud.error
    assert "extract" in [f.name for f in traceback.extract_tb(loud.exception.__traceback__)]
    # a file that does not decode: the decoder's error
    assert isinstance(text.exception, rvcfast.errors.AudioError) and str(text.exception) in text.error
    # the exception is not part of what a Result is (==) and is not pickled
    copy = pickle.loads(pickle.dumps(loud))
    assert copy.exception is None and copy.error == loud.error and copy == loud
    assert "exception" not in repr(loud)

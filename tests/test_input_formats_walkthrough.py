"""Inputs of every kind, from a producer's walkthrough: damaged FLAC, paths the operating
system refuses to look at (a name too long, a folder that cannot be searched or listed),
and the words of FFmpeg's errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.audio import decode
from rvcfast.av_decode import av_available
from rvcfast.batch import BatchOptions
from rvcfast.batch_inputs import expand_inputs

SR = 16000


def _tone(seconds: float, rate: int = SR) -> np.ndarray:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    return 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(n)


def _damaged_flac(path: Path, seconds: float = 2.0) -> Path:
    """A FLAC with 200 bytes of garbage in the middle of its audio (fixed bytes)."""
    sf.write(path, _tone(seconds), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _readable_frames(path: Path, block: int = 64) -> int:
    """Frames libsndfile decodes from the start in small blocks before its first error."""
    got = 0
    with sf.SoundFile(str(path)) as f:
        try:
            while len(piece := f.read(block)):
                got += len(piece)
        except (sf.LibsndfileError, RuntimeError):
            pass
    return got


def test_flac_damaged_in_its_first_block_keeps_the_readable_part(tmp_path: Path) -> None:
    """libsndfile's FLAC decoder cannot seek back once it lost sync: the whole file was
    refused ("cannot decode audio: flac decoder lost sync") though its first second is intact."""
    p = _damaged_flac(tmp_path / "take.flac")
    readable = _readable_frames(p)
    assert 0.5 * SR < readable < 2 * SR  # the damage is where it was put
    d = decode(p)
    # at 16 kHz no resampling: the kept part is what libsndfile reads, to within a salvage block
    assert readable - 256 <= d.audio.shape[0] <= readable
    assert len(d.warnings) == 1
    assert d.warnings[0].startswith(f"{p}: file is damaged: decoding stopped after ")
    assert "of 2.00 s" in d.warnings[0] and "lost sync" in d.warnings[0]


def test_damaged_flac_converts_in_a_batch_and_strict_fails_it(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    bad = _damaged_flac(tmp_path / "in" / "bad.flac")
    good = tmp_path / "in" / "good.wav"
    sf.write(good, _tone(0.5), SR)
    results = tiny_converter.convert_batch([tmp_path / "in"], tmp_path / "out", seed=0)
    assert [r.ok for r in results] == [True, True]
    assert any("file is damaged" in w for w in results[0].warnings)
    assert sf.info(str(results[0].output_path)).frames > 0.5 * 40000
    strict = tiny_converter.convert_batch([bad, good], tmp_path / "strict", seed=0, strict=True)
    assert [r.ok for r in strict] == [False, True] and "file is damaged" in strict[0].error


def test_a_name_too_long_is_an_audio_error_and_the_batch_carries_on(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    """``Path.exists()`` raises (``File name too long``) instead of answering False: decode,
    convert and convert_batch raised a bare ``OSError``, the batch converting nothing."""
    long = tmp_path / ("a" * 300 + ".wav")
    with pytest.raises(rvcfast.AudioError, match="cannot open the file: File name too long") as info:
        decode(long)
    assert str(long) in str(info.value)
    with pytest.raises(rvcfast.AudioError, match="File name too long"):
        tiny_converter.convert(long)
    good = tmp_path / "good.wav"
    sf.write(good, _tone(0.5), SR)
    results = tiny_converter.convert_batch([long, good], tmp_path / "out", seed=0)
    assert [r.ok for r in results] == [False, True]
    assert results[0].error == f"{long}: cannot open the file: File name too long"


_UNPRIVILEGED = """
import sys
from pathlib import Path
import rvcfast
from rvcfast.audio import decode
from rvcfast.batch import BatchOptions
from rvcfast.batch_inputs import expand_inputs

root = Path(sys.argv[1])
for p in (root / "locked" / "x.wav", root / "locked"):
    try:
        decode(p)
    except rvcfast.AudioError as exc:
        print("ERROR", exc)
jobs = expand_inputs([root / "locked", root / "open"], BatchOptions(out_dir=root / "out"))
print("JOBS", [j.label for j in jobs])
"""


def _run_without_permission_bypass(root: Path, script: str = _UNPRIVILEGED) -> list[str]:
    """Run the checks above as a process that file permissions apply to: directly when not
    root; as root without the capabilities that bypass them (``setpriv``)."""
    command = [sys.executable, "-c", textwrap.dedent(script), str(root)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(rvcfast.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0 and "setpriv" in done.stderr:
        pytest.skip(f"setpriv cannot drop the capabilities here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_folders_without_permission_are_named_not_crashed_or_skipped(tmp_path: Path) -> None:
    """A file under a folder that cannot be searched raised a bare ``PermissionError`` (from
    ``Path.exists``/``is_dir``: the CLI printed a traceback, a batch ended); a folder input that
    cannot be listed gave no files without a word."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "open").mkdir()
    sf.write(tmp_path / "locked" / "x.wav", _tone(0.2), SR)
    sf.write(tmp_path / "open" / "y.wav", _tone(0.2), SR)
    (tmp_path / "locked").chmod(0)
    try:
        lines = _run_without_permission_bypass(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    locked = tmp_path / "locked"
    assert lines[0] == f"ERROR {locked / 'x.wav'}: cannot open the file: Permission denied (a folder on its path cannot be searched)"
    assert lines[1] == f"ERROR {locked}: is a folder whose files cannot be listed (Permission denied)"
    assert lines[2] == f"JOBS {[str(locked), str(tmp_path / 'open' / 'y.wav')]}"


def test_a_folder_that_can_be_listed_is_not_an_input_itself(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", _tone(0.2), SR)
    (tmp_path / "empty").mkdir()
    jobs = expand_inputs([tmp_path / "in", tmp_path / "empty"], BatchOptions(out_dir=tmp_path / "out"))
    assert [j.label for j in jobs] == [str(tmp_path / "in" / "a.wav")]
    with pytest.raises(rvcfast.AudioError, match="is a directory, expected an audio file"):
        decode(tmp_path / "empty")


@pytest.mark.skipif(not av_available(), reason="needs PyAV (the av extra)")
def test_ffmpeg_errors_give_its_words_once_without_errno_or_path(tmp_path: Path) -> None:
    """PyAV's ``str()`` of an error is ``[Errno 1094995529] Invalid data found when processing
    input: '<path>'``: the messages carried the code and named the file twice."""
    garbage = tmp_path / "clip.m4a"
    garbage.write_bytes(np.random.default_rng(2).integers(0, 256, 600, dtype=np.uint8).tobytes())
    with pytest.raises(rvcfast.AudioError) as info:
        decode(garbage)
    assert str(info.value) == f"{garbage}: cannot decode audio: Invalid data found when processing input"
    riff = tmp_path / "riff.wav"
    riff.write_bytes(b"RIFF" + np.random.default_rng(3).integers(0, 256, 600, dtype=np.uint8).tobytes())
    with pytest.raises(rvcfast.AudioError) as info:
        decode(riff)
    message = str(info.value)
    assert message.count(str(riff)) == 1 and "[Errno" not in message
    assert message.startswith(f"{riff}: cannot decode audio: ") and "(libsndfile); " in message


@pytest.mark.skipif(not av_available(), reason="needs PyAV (the av extra)")
def test_a_file_handed_to_ffmpeg_says_why_when_ffmpeg_fails_too(tmp_path: Path) -> None:
    """An Ogg Vorbis cut in half: libsndfile sees no audio in it, so FFmpeg is asked, and fails;
    the error gave only FFmpeg's ``[Errno 541478725] End of file: '<path>'``."""
    whole = tmp_path / "whole.ogg"
    sf.write(whole, _tone(0.5, 44100), 44100, format="OGG", subtype="VORBIS")
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    if sf.info(str(cut)).frames != 0:
        pytest.skip("this libsndfile reads the cut Ogg file's length")
    with pytest.raises(rvcfast.AudioError) as info:
        decode(cut)
    message = str(info.value)
    assert message.startswith(f"{cut}: cannot decode audio: its header says it holds no audio")
    assert message.endswith("(libsndfile); End of file (FFmpeg)") and message.count(str(cut)) == 1


def test_the_command_line_names_a_path_too_long_and_converts_the_rest(tiny_models, tmp_path: Path, capsys) -> None:
    """``rvcfast convert voice.pth <300-character name>.wav ok.wav`` ended with an OSError
    traceback from its up-front check that the inputs exist; the long name now fails on its
    own (status 1) and ok.wav is converted."""
    from helpers import cli_weights, write_tone

    from rvcfast.cli import main

    good = write_tone(tmp_path / "in", "ok.wav")
    long_name = str(tmp_path / ("a" * 300 + ".wav"))
    out = tmp_path / "out"
    assert main(["convert", str(tiny_models.voice), long_name, str(good), "-o", str(out), *cli_weights(tiny_models)]) == 1
    err = capsys.readouterr().err
    assert "File name too long" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["ok.wav"]


_UNPRIVILEGED_RECURSIVE = """
import sys
from pathlib import Path
from rvcfast.batch import BatchOptions
from rvcfast.batch_inputs import expand_inputs

root = Path(sys.argv[1])
jobs = expand_inputs([root / "tree"], BatchOptions(out_dir=root / "out", recursive=True))
print("JOBS", [j.label for j in jobs])
"""


def test_a_sub_folder_that_cannot_be_listed_is_named_in_a_recursive_batch(tmp_path: Path) -> None:
    """``--recursive`` skipped a sub-folder it could not list without a word (os.walk drops
    it); it is now an input of its own, which fails naming it, beside the files found."""
    tree = tmp_path / "tree"
    (tree / "locked").mkdir(parents=True)
    (tree / "open").mkdir()
    sf.write(tree / "locked" / "x.wav", _tone(0.2), SR)
    sf.write(tree / "open" / "y.wav", _tone(0.2), SR)
    (tree / "locked").chmod(0)
    try:
        lines = _run_without_permission_bypass(tmp_path, _UNPRIVILEGED_RECURSIVE)
    finally:
        (tree / "locked").chmod(0o755)
    assert lines == [f"JOBS {[str(tree / 'locked'), str(tree / 'open' / 'y.wav')]}"]

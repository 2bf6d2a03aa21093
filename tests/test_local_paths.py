"""Text that is a URI where a local path is expected: refused by name, never taken for a folder.

``pathlib`` reads ``s3://bucket/out`` as the relative path ``s3:/bucket/out``: a batch given it
as its output folder wrote every file under ``./s3:/bucket/out`` and reported them written, and
an input URI failed as ``s3:/bucket/a.wav: file does not exist`` (a path nobody gave).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cli_weights, tiny_converter_fixture, tiny_models_fixture, write_tone  # noqa: F401

from rvcfast.cli import main
from rvcfast.errors import AudioError, ParameterError
from rvcfast.local_paths import uri_refusal


@pytest.mark.parametrize("value", ["out", "C:/out", "C:\\out", "a://", "./s3:/x", Path("s3://b/k")])
def test_local_paths_and_drive_letters_are_not_uris(value) -> None:
    # a Path has lost its "//" already: only text can still say what it was
    assert uri_refusal(value) is None


def test_a_batch_refuses_uris_for_its_output_folder_and_inputs(tiny_converter, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    clip = write_tone(tmp_path, "a.wav")
    with pytest.raises(ParameterError, match=r"out_dir s3://bkt/out is a URI.*Ray runner"):
        tiny_converter.convert_batch([clip], out_dir="s3://bkt/out")
    with pytest.raises(ParameterError, match=r"out_dir file:///data/out is a file:// URI, not a path: give its local path '/data/out'"):
        tiny_converter.convert_batch([clip], out_dir="file:///data/out")
    with pytest.raises(ParameterError, match=r"input 1: gs://bkt/b\.wav is a URI"):
        tiny_converter.convert_batch([clip, "gs://bkt/b.wav"], out_dir=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # no ./s3: or ./file: folder, no out/
    with pytest.raises(AudioError, match=r"^s3://bkt/a\.wav: a URI"):
        tiny_converter.convert("s3://bkt/a.wav")


def test_the_command_line_refuses_a_file_uri_as_its_output_folder(tiny_models, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    clip = write_tone(tmp_path, "a.wav")
    out = tmp_path / "out"
    code = main(["convert", str(tiny_models.voice), str(clip), "-o", f"file://{out}", *cli_weights(tiny_models), "-q"])
    assert code == 2
    assert f"-o file://{out} is a file:// URI, not a path: give its local path '{out}'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # nothing written under ./file:

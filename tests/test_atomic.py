"""rvcfast.atomic: the one way every writer of rvcfast puts a file in place."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from rvcfast.atomic import NAME_BYTES, atomic_write, new_temporary, short_name


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_a_finished_block_replaces_the_target_with_the_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    old_umask = os.umask(0o022)
    try:
        with atomic_write(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.") and tmp.exists()
            assert target.read_text() == "old"  # nothing visible before the block ends
            tmp.write_text("new")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new" and _leftovers(tmp_path) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # 0o666 less the umask, not mkstemp's 0o600


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_block_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(type(exc)):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise exc
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_the_content_is_flushed_to_disk_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder was not flushed after the rename: after a power loss the rename could be lost
    (the old file, or none, back) although the batch had reported the output written."""
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        order.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b))[1])
    with atomic_write(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"abc")
    expected = ["fsync file", "replace"] + ([] if os.name == "nt" else ["fsync folder"])
    assert order == expected and (tmp_path / "x.bin").read_bytes() == b"abc"


def test_a_target_name_near_the_limit_still_gets_a_temporary_file(tmp_path: Path) -> None:
    name = "é" * 120 + ".wav"  # 244 bytes: a valid name, too long with a temporary suffix added
    assert len(os.fsencode(short_name(name))) <= NAME_BYTES and short_name("a.wav") == "a.wav"
    assert short_name(name) != short_name("é" * 119 + "x.wav")  # the hash keeps them apart
    with atomic_write(tmp_path / name) as tmp:
        tmp.write_bytes(b"x")
    assert (tmp_path / name).read_bytes() == b"x" and _leftovers(tmp_path) == []


def test_temporary_files_are_distinct_and_tagged(tmp_path: Path) -> None:
    a, b = new_temporary(tmp_path / "t.wav"), new_temporary(tmp_path / "t.wav", "host~42")
    assert a != b and a.exists() and b.exists()
    assert a.name.startswith(f".t.wav.{os.getpid()}~") and b.name.startswith(".t.wav.host~42~")


def test_every_writer_goes_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audio, index and manifest writers fail alike when the flush fails:
    nothing at the target, no temporary file left."""
    import rvcfast.atomic as atomic
    from rvcfast.index.format import IndexArrays, write_index_file
    from rvcfast.integrations.ray._job import write_manifest
    from rvcfast.writing import write_audio_atomic

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    arrays = IndexArrays(
        list_vectors=np.zeros((3, 4), np.float32), centroids=np.zeros((1, 4), np.float32),
        list_sizes=np.array([3]), list_ids=np.arange(3), nprobe=1, kind="flat",
    )
    writers = {
        "a.index": lambda t: write_index_file(t, arrays),
        "m.jsonl": lambda t: write_manifest([], t),
        "a.wav": lambda t: write_audio_atomic(t, np.zeros(160, np.float32), 16000),
    }
    for name, write in writers.items():
        with pytest.raises(OSError, match="disk full"):
            write(tmp_path / name)
        assert not (tmp_path / name).exists(), name
    assert _leftovers(tmp_path) == []

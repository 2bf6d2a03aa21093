"""A folder of voice models collected over the years: files whose writers left entries out or
used another content encoder load, or are refused with a message that says what they are."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers import TINY_VOICE, one_thread_fixture  # noqa: F401

from rvcfast.cli import main
from rvcfast.describe import describe_model
from rvcfast.errors import ModelLoadError
from rvcfast.models.synthesizer import load_vocoder
from rvcfast.safe_load import load_torch_file
from rvcfast.testing import save_random_applio_model, save_random_voice_model


def _resave(src: Path, dst: Path, drop: tuple[str, ...] = (), **changes: object) -> Path:
    """``src`` written again as ``dst`` without the entries ``drop``, with ``changes``."""
    ckpt = load_torch_file(src)
    for key in drop:
        del ckpt[key]
    ckpt.update(changes)
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module", name="zoo")
def zoo_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    save_random_voice_model(root / "nof0.pth", "v2", 40000, False, seed=1, **TINY_VOICE)
    save_random_voice_model(root / "f0_v1.pth", "v1", 40000, True, seed=2, **TINY_VOICE)
    return root


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_no_f0_file_without_its_f0_entry_loads_as_no_f0(zoo: Path) -> None:
    """The weights say there is no pitch embedding: the file is the no-F0 voice it is (it was refused
    with 'missing keys ... enc_p.emb_pitch.weight', the default f0=1 being the only one tried)."""
    plain = _resave(zoo / "nof0.pth", zoo / "nof0_no_entry.pth", drop=("f0",))
    model, reference = load_vocoder(plain), load_vocoder(zoo / "nof0.pth")
    assert model.has_f0 is False
    assert _same_weights(model, reference)
    assert describe_model(plain)["f0"] is False


def test_old_file_without_f0_or_version_is_v1_with_f0(zoo: Path) -> None:
    """RVC's defaults for its oldest files (v1, pitch-guided) still hold."""
    old = _resave(zoo / "f0_v1.pth", zoo / "old.pth", drop=("f0", "version"))
    model = load_vocoder(old)
    assert (model.version, model.has_f0, model.feature_dim) == ("v1", True, 256)
    assert _same_weights(model, load_vocoder(zoo / "f0_v1.pth"))


def _wide(zoo: Path, name: str, width: int, drop: tuple[str, ...] = (), **changes: object) -> Path:
    ckpt = load_torch_file(zoo / "nof0.pth")
    weight = OrderedDict(ckpt["weight"])
    rows = weight["enc_p.emb_phone.weight"].shape[0]
    weight["enc_p.emb_phone.weight"] = torch.randn(rows, width).half()
    return _resave(zoo / "nof0.pth", zoo / name, drop=drop, weight=weight, **changes)


def test_content_width_of_no_rvc_version_is_named_without_a_version_the_file_does_not_state(zoo: Path) -> None:
    """A 1024-dim model without a version entry: the message said 'the file says version v1'."""
    path = _wide(zoo, "wide_no_version.pth", 1024, drop=("version",))
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    msg = str(info.value)
    assert str(path) in msg and "1024-dim" in msg and "256 (v1) or 768 (v2)" in msg
    assert "says version" not in msg


def test_content_width_of_no_rvc_version_is_named_before_its_version_label(zoo: Path) -> None:
    """'v3' with 1024-dim features: the width is what makes it another kind of model (the message
    was only 'unknown model version')."""
    path = _wide(zoo, "wide_v3.pth", 1024, version="v3")
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    msg = str(info.value)
    assert "1024-dim" in msg and "'v3'" in msg and "another content encoder" in msg


def test_rvcfast_info_json_on_the_repaired_files(zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = _resave(zoo / "nof0.pth", zoo / "nof0_info.pth", drop=("f0", "version"))
    assert main(["info", str(plain), "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["version"], model["f0"], model["feature_dim"], model["sample_rate"]) == ("v2", False, 768, 40000)
    wide = _wide(zoo, "wide_info.pth", 1024)
    assert main(["info", str(wide)]) == 1
    err = capsys.readouterr().err
    assert "wide_info.pth" in err and "1024-dim" in err


def test_refinegan_without_pitch_or_f0_entry_says_so(tmp_path: Path) -> None:
    """Applio's decoder-less no-F0 RefineGAN file with its f0 entry gone: refused, saying why."""
    src = save_random_applio_model(tmp_path / "rg.pth", 32000, "RefineGAN", f0=False, seed=3, **TINY_VOICE)
    path = _resave(src, tmp_path / "rg_no_entry.pth", drop=("f0",))
    with pytest.raises(ModelLoadError) as info:
        load_vocoder(path)
    msg = str(info.value)
    assert str(path) in msg and "RefineGAN" in msg and "no pitch embedding" in msg


def _index_error(path: Path) -> str:
    from rvcfast.index import load_index

    with pytest.raises(ModelLoadError) as info:
        load_index(path)
    msg = str(info.value)
    assert str(path) in msg
    return msg


def test_voice_model_passed_as_the_index_is_named_a_voice_model(zoo: Path) -> None:
    """Zip-format and legacy (pickle) .pth files: 'not a faiss index file (unrecognised header bytes)' before."""
    assert "pass it as the voice model" in _index_error(zoo / "nof0.pth")
    legacy = zoo / "legacy.pth"
    torch.save(load_torch_file(zoo / "nof0.pth"), legacy, _use_new_zipfile_serialization=False)
    assert "pass it as the voice model" in _index_error(legacy)


def test_files_that_are_no_index_say_what_they_are(tmp_path: Path) -> None:
    """A Git LFS pointer, a failed download, a zipped model pack named .index: each said
    'unknown index type (fourcc ...)'."""
    import zipfile

    lfs = tmp_path / "added_lfs.index"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 123456\n")
    assert "Git LFS pointer" in _index_error(lfs)
    page = tmp_path / "added_page.index"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    assert "HTML" in _index_error(page)
    pack = tmp_path / "pack.index"
    with zipfile.ZipFile(pack, "w") as zf:
        zf.writestr("voice/added_IVF4_Flat.index", b"IwFl")
        zf.writestr("voice/voice.pth", b"x")
    msg = _index_error(pack)
    assert "zip archive" in msg and "voice/added_IVF4_Flat.index" in msg


def test_rvcfast_info_tells_renamed_files_by_their_contents(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A voice renamed .index was described as an index ('not a faiss index file ... pass it as the
    voice model', which `rvcfast info` then could not do); an index renamed .pth is described as one."""
    import shutil

    from rvcfast.index import save_index

    voice = shutil.copy(zoo / "nof0.pth", tmp_path / "voice_v2.index")
    assert main(["info", str(voice), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "index" not in report and report["model"]["version"] == "v2"
    index = tmp_path / "added.pth"
    save_index(index, torch.randn(40, 256).numpy(), nlist=2, niter=2)
    assert main(["info", str(index), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "model" not in report and (report["index"]["dim"], report["index"]["vectors"]) == (256, 40)
    missing = tmp_path / "gone.index"
    assert main(["info", str(missing)]) == 1
    assert "gone.index: index file does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_rvcfast_info_on_a_named_pipe_is_refused_without_opening_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Telling files by their first bytes must not open a pipe (that waits for a writer forever)."""
    fifo = tmp_path / "voice.pth"
    os.mkfifo(fifo)
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(main(["info", str(fifo)])), daemon=True)
    worker.start()
    worker.join(60)  # a hang guard, not a timing assertion
    if worker.is_alive():  # release the blocked open() before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("rvcfast info opened the named pipe")
    assert codes == [1]
    assert "not a regular file" in capsys.readouterr().err


def test_a_git_lfs_pointer_saved_as_the_voice_says_so(tmp_path: Path) -> None:
    """A clone without ``git lfs`` holds 130-byte pointer files named ``voice.pth``; they were
    'corrupt or not a PyTorch file (pickle opcode 118 ...)'."""
    pointer = tmp_path / "voice.pth"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 55027589\n")
    with pytest.raises(ModelLoadError, match=r"voice\.pth.*Git LFS pointer.*git lfs pull"):
        load_vocoder(pointer)

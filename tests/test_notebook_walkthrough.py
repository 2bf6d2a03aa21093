"""A researcher's hour in a notebook: Results looked at and compared, arrays from other
pipelines, a kernel interrupt in the middle of a batch, progress without a terminal, the
model cache, and the stage timer on a GPU that is not the current one."""

from __future__ import annotations

import dataclasses
import gc
import io
import os
import signal
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import build_tiny_models, one_thread_fixture, tiny_converter_fixture, tiny_models_fixture, tone  # noqa: F401

import rvcfast
import rvcfast.cache
from rvcfast.progress import BatchProgress
from rvcfast.result import Result
from rvcfast.timing import Timer

# ------------------------------------------------------------------ Result in a notebook


def _result(source: str, audio: np.ndarray | None = None) -> Result:
    return Result(np.zeros(400, np.float32) if audio is None else audio, 40000, source=source)


def test_results_compare_in_lists() -> None:
    """``r in results`` / ``results.index(r)`` used to raise numpy's "truth value of an array
    is ambiguous" for any Result not first in the list (the dataclass compared ``audio`` arrays)."""
    a, b = _result("a.wav"), _result("b.wav")
    results = [a, b]
    assert b in results
    assert results.index(b) == 1
    assert a != b
    results.remove(b)
    assert results == [a]
    assert _result("a.wav") == a  # same fields, audio by value
    assert _result("a.wav", np.ones(400, np.float32)) != a
    assert _result("a.wav", np.zeros(401, np.float32)) != a
    assert a != "a.wav"


def test_repr_is_short_and_says_how_long_a_dropped_output_is() -> None:
    """A batch that wrote its output drops the audio: the repr showed ``audio=array([])``
    and nothing of the output's length (``frames`` was hidden)."""
    written = Result(np.zeros(0, np.float32), 40000, source="a.wav", output_path="out/a.wav", frames=39200)
    text = repr(written)
    assert "frames=39200" in text
    assert written.duration == pytest.approx(0.98)
    trimmed = dataclasses.replace(_result("a.wav"), audio=np.zeros(100, np.float32))  # a notebook edit
    assert trimmed.frames == 100 and "frames=100" in repr(trimmed)
    long = _result("long.wav", np.zeros(40000 * 600, np.float32))  # ten minutes
    assert len(repr(long)) < 1000  # numpy summarises the array


# ------------------------------------------------------------------ the stage timer


def test_timer_synchronises_the_models_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.cuda.synchronize()`` waits for the *current* GPU: an engine on ``cuda:1`` had its
    GPU work counted in whichever stage synchronised it later."""
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    timer = Timer(torch.device("cuda", 1))
    with timer.stage("synth"):
        pass
    assert calls == [torch.device("cuda", 1)] * 2
    assert set(timer.times) == {"synth"}
    Timer(torch.device("cpu")).stage("f0").__enter__()
    assert len(calls) == 2  # nothing synchronised on the CPU


# ------------------------------------------------------------------ arrays from other pipelines


def test_arrays_from_other_pipelines_convert_alike(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    """float64, strided, Fortran-ordered, read-only, big-endian, memmapped and int16 samples of
    one signal give the same output as the plain float32 array."""
    pcm = (tone(0.3, 16000) * 32768).astype(np.int16)
    x = pcm.astype(np.float32) / 32768  # exactly what int16 scales to
    reference = tiny_converter.convert(x, 16000, seed=0).audio
    readonly = x.astype(np.float64)
    readonly.setflags(write=False)
    mapped = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=x.shape)
    mapped[:] = x
    mapped.flush()
    variants = {
        "float64": x.astype(np.float64),
        "strided": np.repeat(x, 2)[::2],
        "fortran column": np.asfortranarray(x[:, None]),
        "read-only": readonly,
        "big-endian": x.astype(">f8"),
        "memmap": np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="r", shape=x.shape),
        "int16": pcm,
    }
    for name, samples in variants.items():
        out = tiny_converter.convert(samples, 16000, seed=0).audio
        np.testing.assert_array_equal(out, reference, err_msg=name)


# ------------------------------------------------------------------ interrupting a batch


def _no_partial_files(out: Path) -> list[str]:
    names = sorted(p.name for p in out.iterdir())
    assert all(n.endswith(".wav") and not n.startswith(".") for n in names), names
    for n in names:
        assert sf.info(str(out / n)).frames > 0
    return names


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT is handled by something else here")
def test_interrupt_during_batch_then_resume(tiny_converter: rvcfast.Converter, tmp_path: Path) -> None:
    """Ctrl-C (a kernel interrupt) while a batch runs: KeyboardInterrupt in the caller, no thread
    left behind, only whole files written; the same Converter then finishes the batch."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        sf.write(str(inputs / f"take{i}.wav"), tone(1.0, 16000, freq=150.0 + 20 * i), 16000)
    out = tmp_path / "out"
    before = threading.active_count()
    sent: list[bool] = []

    def interrupt(index: int, seconds: float) -> None:  # the first model batch is through
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        tiny_converter.convert_batch([inputs], out, batch_seconds=1.0, audio_progress=interrupt)
    deadline = time.monotonic() + 30.0
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]
    done = _no_partial_files(out) if out.exists() else []
    assert len(done) < 4

    stream = io.StringIO()  # a notebook's stderr: not a terminal
    with BatchProgress(total_files=4, total_seconds=4.0, stream=stream) as bar:
        for result in tiny_converter.iter_batch([inputs], out, skip_existing=True, batch_seconds=1.0):
            bar.update(result)
            assert result.ok, result.error
            assert result.skipped == (Path(result.output_path).name in done)
    assert _no_partial_files(out) == [f"take{i}.wav" for i in range(4)]
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split("]")[0] for line in lines] == ["[1/4", "[2/4", "[3/4", "[4/4"]


# ------------------------------------------------------------------ the model cache


def test_second_load_reuses_base_models_and_memory_comes_back(tmp_path: Path) -> None:
    """Running the loading cell again loads no base model; dropping the Converters and
    clearing the cache frees the models, as docs/api.md says."""
    models = build_tiny_models(tmp_path / "models")  # files of its own: no other test holds these models
    first = models.converter()
    loads = rvcfast.cache.load_count()
    second = models.converter()
    assert rvcfast.cache.load_count() == loads
    assert second.encoder is first.encoder
    second.convert(tone(0.2, 16000), 16000)
    refs = [weakref.ref(first.encoder), weakref.ref(first.vocoder), weakref.ref(second.vocoder)]
    del first, second
    rvcfast.cache.clear()
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_a_warning_points_at_the_users_line(tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bfloat16-without-hardware warning named ``rvcfast/tuning.py`` (a fixed ``stacklevel``
    is right for one entry point only): it names the line of the user's notebook cell."""
    import warnings

    import rvcfast.runtime

    monkeypatch.setattr(rvcfast.runtime, "native_bf16", lambda device: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_models.converter(dtype="bfloat16")  # <- the user's line
    (w,) = [w for w in caught if "bfloat16 on this CPU" in str(w.message)]
    assert Path(w.filename).name == "helpers.py", w.filename  # the first frame outside rvcfast
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rvcfast.runtime.resolve_dtype("bfloat16", torch.device("cpu"))
    assert [Path(w.filename) for w in caught] == [Path(__file__)]


def test_loading_models_does_not_show_the_users_warnings_again(tiny_models, tmp_path: Path) -> None:
    """Each model load wrapped ``torch.load`` in ``warnings.catch_warnings()``, whose exit resets
    every module's "already shown" record: a warning the user's code had shown came back after
    every load (and rvcfast's own, such as an ignored profile, twice per conversion)."""
    import subprocess
    import sys

    script = tmp_path / "cell.py"
    script.write_text(
        "import warnings\n"
        "from rvcfast.safe_load import load_torch_file\n"
        "def mine():\n"
        "    warnings.warn('the users own warning', UserWarning)\n"
        f"load_torch_file({str(tiny_models.voice)!r})  # the first load may add its filter\n"
        "for _ in range(3):\n"
        "    mine()\n"
        f"    load_torch_file({str(tiny_models.voice)!r})\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("UserWarning: the users own warning") == 1, done.stderr

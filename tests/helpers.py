"""Tiny random models and small utilities shared by the reliability tests.

The models are built once per test session into a temporary folder:

* a v2 40 kHz F0 voice model with tiny widths (real decoder geometry),
* a one-layer Hugging Face ContentVec folder (``config.json`` + ``pytorch_model.bin``)
  with hidden size 768, as a v2 voice needs, but narrow convolutions,
* the reduced RMVPE with a 32-unit BiGRU (``save_random_rmvpe(path, full_size=False, gru_hidden=32)``:
  the real 256 units are a third of a tiny conversion's time),
* a small 768-d IVF-Flat index (and a 256-d one, which does not fit a v2 model).

Import the fixtures into a test module with
``from helpers import one_thread_fixture, tiny_converter_fixture, tiny_models_fixture  # noqa: F401``
(the fixtures are then named ``tiny_models``, ``tiny_converter``; ``one_thread`` is autouse).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rvcfast
from rvcfast.index import save_index
from rvcfast.testing import save_random_hubert, save_random_rmvpe, save_random_voice_model

#: Output rate of the tiny voice model.
MODEL_SR = 40000

#: Narrow convolutions with HuBERT's real strides and kernels (hop 320, receptive field 400).
TINY_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2

TINY_VOICE = dict(
    inter_channels=16,
    hidden_channels=16,
    filter_channels=32,
    n_heads=2,
    n_layers=1,
    upsample_initial_channel=16,
    num_speakers=4,
)


@dataclass(frozen=True)
class TinyModels:
    """Paths of the tiny models (all inside one session temporary folder)."""

    root: Path
    voice: Path  # v2 40k F0, 4 speakers
    voice_nof0: Path  # v2 40k without F0
    encoder: Path  # HF folder, 1 layer, hidden 768
    rmvpe: Path  # reduced RMVPE
    index: Path  # 768-d IVF-Flat
    index_256: Path  # 256-d IVF-Flat (a v1 index: does not fit the v2 voice)

    def converter(self, **kwargs) -> rvcfast.Converter:
        kw = dict(index=self.index, encoder=self.encoder, f0_weights=self.rmvpe, device="cpu")
        kw.update(kwargs)
        return rvcfast.Converter.from_pretrained(self.voice, **kw)


def build_tiny_models(root: Path) -> TinyModels:
    """Write every tiny model into ``root`` (about a second)."""
    root.mkdir(parents=True, exist_ok=True)
    voice = save_random_voice_model(root / "voice_v2_40k_f0.pth", "v2", 40000, True, seed=1, **TINY_VOICE)
    voice_nof0 = save_random_voice_model(root / "voice_v2_40k_nof0.pth", "v2", 40000, False, seed=2, **TINY_VOICE)
    encoder = save_random_hubert(
        root / "contentvec_hf",
        "hf",
        layers=1,
        hidden=768,
        heads=12,
        ffn=64,
        conv_layers=TINY_CONV,
        conv_pos=16,
        conv_pos_groups=16,
        final_dim=256,
        seed=3,
    )
    rmvpe = save_random_rmvpe(root / "rmvpe.pt", full_size=False, seed=4, gru_hidden=32)
    rng = np.random.default_rng(5)
    save_index(root / "added_768.index", rng.standard_normal((200, 768)).astype(np.float32), nlist=4, niter=3)
    save_index(root / "added_256.index", rng.standard_normal((100, 256)).astype(np.float32), nlist=2, niter=3)
    return TinyModels(root, voice, voice_nof0, encoder, rmvpe, root / "added_768.index", root / "added_256.index")


@pytest.fixture(scope="session", name="tiny_models")
def tiny_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny models, built once per session."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session", name="tiny_converter")
def tiny_converter_fixture(tiny_models: TinyModels) -> rvcfast.Converter:
    """A CPU Converter over the tiny models (with the 768-d index)."""
    return tiny_models.converter()


@pytest.fixture(name="profile_file")
def profile_file_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tune profile file of this test's own (``RVCFAST_PROFILE``), not yet written."""
    path = tmp_path / "profile.json"
    monkeypatch.setenv("RVCFAST_PROFILE", str(path))
    return path


def profile_entry(**fields: Any) -> dict[str, Any]:
    """A profile entry for this machine's CPU (``fields`` added or replaced)."""
    from rvcfast.tuning import machine_id

    return {"machine": machine_id("cpu"), "dtype": "float32", "threads": 1, "batch_seconds": 8.0, **fields}


def write_profiles(path: Path, *entries: dict[str, Any]) -> None:
    """A profile file holding ``entries``."""
    path.write_text(json.dumps({"profiles": list(entries)}))


@pytest.fixture(name="two_threads")
def two_threads_fixture() -> Iterator[None]:
    """Two torch threads for one test (compute workers need a thread each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True, name="one_thread")
def one_thread_fixture() -> Iterator[None]:
    """The models are tiny and the machine shared: one torch thread per module using these helpers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ audio helpers


def tone(seconds: float, rate: int = 16000, freq: float = 220.0, amp: float = 0.3, channels: int = 0) -> np.ndarray:
    """A harmonic tone with a little noise ([n] or [n, channels] float64)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = amp * (np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(2 * np.pi * 2 * freq * t))
    x += 0.01 * np.random.default_rng(n).standard_normal(n)
    x = np.clip(x, -1, 1)
    if channels:
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)
    return x


def write_tone(folder: Path, name: str = "in.wav", seconds: float = 0.4, freq: float = 180.0) -> Path:
    """A 16 kHz WAV of :func:`tone` at ``folder/name`` (the folder made); its path."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    sf.write(path, tone(seconds, 16000, freq=freq), 16000)
    return path


def cli_weights(models: TinyModels, *extra: str) -> list[str]:
    """The command-line options that point a command at the tiny base models on the CPU, then ``extra``."""
    return ["--encoder", str(models.encoder), "--f0-weights", str(models.rmvpe), "--device", "cpu", *extra]


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found")  # pragma: no cover


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def names_file(message: str, path: os.PathLike | str) -> bool:
    """True when ``message`` names ``path`` (full path or its file name)."""
    p = os.fspath(path)
    return p in message or Path(p).name in message


__all__ = [
    "MODEL_SR",
    "TinyModels",
    "build_tiny_models",
    "tiny_models_fixture",
    "tiny_converter_fixture",
    "one_thread_fixture",
    "tone",
    "rss_mb",
    "write_tone",
    "cli_weights",
    "is_root",
    "names_file",
]


def golden_converter(golden: Path) -> rvcfast.Converter:
    """A CPU Converter over the golden fixtures' v2 40 kHz voice, HF ContentVec and reduced RMVPE
    (random weights, but an audible output: the tiny voices put out near-silence)."""
    m = golden / "models"
    return rvcfast.Converter.from_pretrained(
        m / "voice_v2_40k_f0.pth", encoder=m / "contentvec_hf", f0="rmvpe", f0_weights=m / "rmvpe_reduced.pt", device="cpu"
    )


@pytest.fixture(name="no_loading")
def no_loading_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: a command-line mistake must be found before."""
    import rvcfast.api
    import rvcfast.f0.registry

    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded before the command line checked its arguments")

    monkeypatch.setattr(rvcfast.api.Converter, "from_pretrained", refuse)
    monkeypatch.setattr(rvcfast.f0.registry, "build_f0_extractor", refuse)


def golden_speech(golden: Path, dtype: str = "float32") -> np.ndarray:
    """The golden fixtures' short 16 kHz speech input."""
    import soundfile as sf

    x, rate = sf.read(golden / "audio" / "e2e_short_16k.wav", dtype=dtype)
    assert rate == 16000
    return x


def stream_in_pieces(rt: Any, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``x`` pushed into the realtime converter ``rt`` in pieces of ``sizes`` (cycled), each answer
    checked to be as long as its piece, then the flush (``latency_samples`` long): all of it."""
    out, i, k = [], 0, 0
    while i < x.shape[0]:
        piece = x[i : i + sizes[k % len(sizes)]]
        y = rt.push(piece)
        assert y.shape == piece.shape and y.dtype == np.float32
        out.append(y)
        i, k = i + piece.shape[0], k + 1
    tail = rt.flush()
    assert tail.shape == (rt.latency_samples,)
    return np.concatenate([*out, tail])


def assert_close_to_peak(got: np.ndarray, ref: np.ndarray, rel_tol: float, min_peak: float) -> None:
    """``got`` equals ``ref`` within ``rel_tol`` of ``ref``'s peak, which must exceed ``min_peak``
    (a silent reference would prove nothing)."""
    assert got.shape == ref.shape
    peak = float(np.abs(ref).max())
    assert peak > min_peak
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= rel_tol * peak, f"max abs error {err:.3g} for a peak of {peak:.3g}"


def child_processes() -> list[int]:
    """This process's child processes (Linux ``/proc``; empty elsewhere)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(entry))
    return found

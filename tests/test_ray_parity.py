"""The Ray runner gives what the library gives (docs/scale-out.md: "The outputs are those of a
local ``rvcfast convert`` of the same files: with the model's noise seeded or off, bit for bit
when the local run uses as many threads as a worker").

The last step of an engineer's walk (library, command line, server, then a cluster), on one
local cluster (2 CPUs, 127.0.0.1, no dashboard, usage statistics off) started once for the file:

* ``convert_files`` and ``convert_dataset`` with every conversion parameter set to a value other
  than its default: the ``ConversionParams`` the job ships to its workers equal the ones given;
* ``rvcfast convert --ray`` with every conversion option changed (44.1 kHz FLAC out,
  ``channels=each`` on a stereo real-speech clip, ``loudness``, formant, effects...): the job
  ships those parameters, and each output equals ``Converter.convert_batch``'s sample for sample.

The golden fixtures' audible random voice; the library runs one torch thread, as each worker.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture  # noqa: F401

import rvcfast
from rvcfast.params import ConversionParams, param_specs

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")
from ray_helpers import local_cluster  # noqa: E402

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: Every conversion parameter at a value other than its default.
NON_DEFAULT: dict[str, Any] = {
    "pitch": 3.0, "index_rate": 0.4, "protect": 0.25, "rms_mix_rate": 0.5, "filter_radius": 1, "speaker": 1,
    "noise": False, "seed": 11, "output_sample_rate": 44100, "v1_output_layer": 12, "fill_unvoiced": True,
    "keep_length": True, "autotune": 0.3, "proposed_pitch": 200.0, "formant": (1.0, 1.1), "clean": 0.2,
    "effects": {"gain": {"db": -1.0}}, "loudness": -20.0, "channels": "each", "strict": True,
}
#: The same, as options of ``rvcfast convert``.
FLAGS = [
    "--pitch", "3", "--index-rate", "0.4", "--protect", "0.25", "--rms-mix-rate", "0.5", "--filter-radius", "1",
    "--speaker", "1", "--no-noise", "--seed", "11", "--sample-rate", "44100", "--v1-output-layer", "12", "--fill-unvoiced",
    "--keep-length", "--autotune", "0.3", "--proposed-pitch", "200", "--formant", "1.0", "1.1", "--clean", "0.2",
    "--effect", "gain:db=-1", "--loudness", "-20", "--channels", "each", "--strict",
]
EXTRAS = ("stftpitchshift", "noisereduce", "pedalboard")


class Cluster:
    """The inputs, the models and the library's converters of the file."""

    def __init__(self, golden: Path, shared_audio: Path, root: Path) -> None:
        self.models = golden / "models"
        self.voice = self.models / "voice_v2_40k_f0.pth"
        self.index = self.models / "index" / "v2_768.index"
        self.engine = {"encoder": self.models / "contentvec_hf", "f0_weights": self.models / "rmvpe_reduced.pt", "device": "cpu"}
        self.root = root
        speech, rate = sf.read(shared_audio / "arctic_a0009.wav")
        other, _ = sf.read(shared_audio / "arctic_a0007.wav")
        n = int(1.0 * rate)
        (root / "in").mkdir()
        self.mono, self.stereo = root / "in" / "clip.wav", root / "in" / "stereo.wav"
        sf.write(self.mono, speech[:n], rate, subtype="PCM_16")
        sf.write(self.stereo, np.stack([speech[:n], 0.5 * other[:n]], axis=1), rate, subtype="PCM_16")

    def converter(self, f0: str = "rmvpe") -> rvcfast.Converter:
        return rvcfast.Converter.from_pretrained(self.voice, index=self.index, f0=f0, **self.engine)


@pytest.fixture(scope="module")
def cluster(golden: Path, shared_audio: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    setup = Cluster(golden, shared_audio, tmp_path_factory.mktemp("ray_parity"))
    with local_cluster():
        yield setup


def _samples(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(path.read_bytes()), dtype="int16")
    return audio, rate


class _Stop(Exception):
    """Raised once a job's checked settings are recorded: nothing more needs to run."""


def _record_shipped(monkeypatch: pytest.MonkeyPatch, stop: bool) -> list[ConversionParams]:
    """The ``ConversionParams`` each job ships to its workers (recorded on the driver, where the
    job's settings are checked); ``stop``: end the call there, before any Ray work."""
    from rvcfast.integrations.ray import _job

    shipped: list[ConversionParams] = []
    real = _job._checked

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        job = real(*args, **kwargs)
        shipped.append(job["params"])
        if stop:
            raise _Stop
        return job

    monkeypatch.setattr(_job, "_checked", recording)
    return shipped


def _need_extras() -> None:
    import importlib.util

    missing = [m for m in EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"extras not installed: {', '.join(missing)}")


def test_python_keywords_reach_the_job_spec(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """convert_files and convert_dataset take the Python names as keyword arguments
    (docs/parameters.md): every one, changed from its default, is in the job's ConversionParams."""
    from rvcfast.integrations.ray import convert_dataset, convert_files

    _need_extras()
    assert set(NON_DEFAULT) == {s.name for s in param_specs()}  # a new parameter must be added here
    shipped = _record_shipped(monkeypatch, stop=True)
    with pytest.raises(_Stop):
        convert_files([cluster.mono], cluster.root / "keywords", cluster.voice, index=cluster.index, progress=False,
                      **cluster.engine, **NON_DEFAULT)
    with pytest.raises(_Stop):
        convert_dataset([cluster.mono], cluster.voice, cluster.root / "keywords", index=cluster.index, **cluster.engine, **NON_DEFAULT)
    assert shipped == [ConversionParams(**NON_DEFAULT)] * 2


def test_cli_ray_run_with_every_option_equals_the_library(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rvcfast convert --ray` with every conversion option changed from its default and FLAC out
    (a mono and a stereo clip; the command joins this process's cluster): the job ships exactly
    those parameters, and each output equals Converter.convert_batch's sample for sample."""
    from rvcfast.cli import main

    _need_extras()
    shipped = _record_shipped(monkeypatch, stop=False)
    out = cluster.root / "cli"
    status = main([
        "convert", str(cluster.voice), str(cluster.mono), str(cluster.stereo), "-o", str(out), "--index", str(cluster.index),
        "--encoder", str(cluster.engine["encoder"]), "--f0-weights", str(cluster.engine["f0_weights"]), "--device", "cpu",
        "--format", "flac", "--ray", "-q", *FLAGS,
    ])
    assert status == 0, capsys.readouterr().err
    assert shipped == [ConversionParams(**NON_DEFAULT)]
    conv = cluster.converter()
    local = conv.convert_batch([cluster.mono, cluster.stereo], cluster.root / "lib", format="flac", **NON_DEFAULT)
    assert all(r.ok for r in local), [r.error for r in local]
    for res in local:
        audio, rate = _samples(out / Path(res.output_path).name)
        expected, expected_rate = _samples(Path(res.output_path))
        assert rate == expected_rate == 44100 and audio.shape == expected.shape, res
        assert np.array_equal(audio, expected), f"{res.source}: the Ray output differs from convert_batch"
    stereo, _ = _samples(out / "stereo.flac")
    assert stereo.ndim == 2 and stereo.shape[1] == 2  # channels="each" reached the worker
    default, _ = _samples(Path(conv.convert_batch([cluster.mono], cluster.root / "default", format="flac", seed=11)[0].output_path))
    mono, _ = _samples(out / "clip.flac")
    assert default.shape != mono.shape or not np.array_equal(default, mono)
    shutil.rmtree(out)

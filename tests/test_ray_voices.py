"""Several voices in one Ray job (``convert_files(..., voices=...)``, ``rvcfast convert --ray --voice``).

One local cluster for the module (``ray.init(num_cpus=2)`` on 127.0.0.1, usage statistics
off) and two jobs on it: a library job of three voices, whose outputs must equal
``rvcfast.convert_voices`` in this process bit for bit, and a resumed job through the command
line. The stages themselves (naming a dataset's outputs per voice, decoding once, the shared
F0 and features in a worker) are run in this process on the same cluster. Tiny random models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (  # noqa: F401
    TINY_VOICE,
    assert_close_to_peak,
    names_file,
    one_thread_fixture,
    tiny_models_fixture,
    tone,
)

from rvcfast.errors import ModelLoadError, ParameterError
from rvcfast.testing import save_random_voice_model

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")
from ray_helpers import local_cluster, record_map_batches  # noqa: E402

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

VOICES = ("alice", "bob", "carol")
GOOD = ("a.wav", "b.wav")
BAD = "broken.wav"
CAROL_PITCH = -5


@pytest.fixture(scope="module")
def voices(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """alice (F0, with the index), bob (no F0, no index), carol (alice's model with its own key)."""
    folder = tmp_path_factory.mktemp("ray_voices")
    paths = {name: folder / f"{name}.pth" for name in VOICES}
    shutil.copy(tiny_models.voice, paths["alice"])
    shutil.copy(tiny_models.voice_nof0, paths["bob"])
    shutil.copy(tiny_models.voice, paths["carol"])
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two short clips (one stereo at 16 kHz) and a file that is not audio."""
    folder = tmp_path_factory.mktemp("ray_voices_in")
    sf.write(folder / "a.wav", tone(1.0, 44100, 190.0), 44100)
    sf.write(folder / "b.wav", tone(0.6, 16000, 260.0, channels=2), 16000)
    (folder / BAD).write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really")
    return folder


def _mapping(tiny_models, voices) -> dict:
    return {"alice": (voices["alice"], tiny_models.index), "bob": voices["bob"], "carol": (voices["carol"], tiny_models.index)}


def _options(tiny_models, **extra):
    kw = dict(encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu", threads_per_worker=1, noise=False,
              subtype="FLOAT", progress=False)
    kw.update(extra)
    return kw


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


class TestVoicesOnRay:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def cluster(cls):
        with local_cluster():
            yield

    @pytest.fixture(scope="class")
    @classmethod
    def first_run(cls, tiny_models, voices, inputs, tmp_path_factory):
        from rvcfast.integrations.ray import convert_files

        out = tmp_path_factory.mktemp("ray_voices_out") / "out"
        rows = convert_files(
            inputs, out, voices=_mapping(tiny_models, voices), voice_params={"carol": {"pitch": CAROL_PITCH}}, num_workers=1,
            **_options(tiny_models),
        )
        return out, rows

    def test_outputs_equal_convert_voices_with_a_row_per_input_and_voice(self, first_run, tiny_models, voices, inputs, tmp_path):
        import rvcfast
        from rvcfast.writing import recorded_source, source_id

        out, rows = first_run
        assert [(Path(r["path"]).name, r["voice"]) for r in rows] == [(n, v) for n in (*GOOD, BAD) for v in VOICES]
        assert _files(out) == {f"{v}/{n}" for v in VOICES for n in GOOD} | {"rvcfast-manifest.jsonl"}
        # the same voices in this process, each voice's own batch through the shared memo
        convs = {
            name: rvcfast.Converter.from_pretrained(
                model, index=index, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
            )
            for name, (model, index) in ((n, v if isinstance(v, tuple) else (v, None)) for n, v in _mapping(tiny_models, voices).items())
        }
        local = tmp_path / "local"
        rvcfast.convert_voices(convs, [inputs / n for n in GOOD], local, voice_params={"carol": {"pitch": CAROL_PITCH}},
                               noise=False, subtype="FLOAT")
        for r in rows:
            if Path(r["path"]).name == BAD:  # an error row for each voice, naming the file
                assert r["status"] == "error" and names_file(r["error"], inputs / BAD), r
                continue
            assert r["status"] == "ok" and r["error"] is None, r
            assert r["output_path"] == str(out / r["voice"] / Path(r["path"]).name)
            assert recorded_source(r["output_path"]) == source_id(r["path"])
            ours, rate = sf.read(r["output_path"], dtype="float32")
            theirs, _ = sf.read(local / r["voice"] / Path(r["path"]).name, dtype="float32")
            assert rate == 40000
            np.testing.assert_array_equal(ours, theirs)
        alice, carol = (sf.read(out / v / "a.wav")[0] for v in ("alice", "carol"))
        assert np.abs(alice - carol).max() > 0  # one model: only carol's own key tells them apart
        # every input decoded once: its decoding time is on its first voice's row only
        for name in (*GOOD, BAD):
            decode = [r["decode_s"] for r in rows if Path(r["path"]).name == name]
            assert decode[0] > 0 and decode[1:] == [0.0, 0.0], (name, decode)
        for r in rows:  # an input's warnings on each of its rows
            assert ("2 channels mixed down" in r["warnings"]) == (Path(r["path"]).name == "b.wav"), r
        manifest = [json.loads(line) for line in (out / "rvcfast-manifest.jsonl").read_text().splitlines()]
        assert [(m["path"], m["voice"], m["status"]) for m in manifest] == [(r["path"], r["voice"], r["status"]) for r in rows]

    def test_the_stages_decode_once_and_share_f0_and_features(self, tiny_models, voices, inputs, tmp_path):
        # a dataset's rows are named in the decoding task ({voice}/{stem}), and a worker runs every
        # voice through one memo: F0 tracked once per input for alice and carol (bob has none), the
        # content features encoded once for the three voices
        import pyarrow as pa

        from rvcfast.integrations.ray import VOICE_ROW_SCHEMA
        from rvcfast.integrations.ray._stages import JobSpec, write_outputs
        from rvcfast.integrations.ray._voices import VoiceJob, VoicesWorker, decode_voices
        from rvcfast.integrations.ray._weights import ModelFiles
        from rvcfast.params import ConversionParams

        def files(name, index):
            return ModelFiles(str(voices[name]), index and str(index), str(tiny_models.encoder), str(tiny_models.rmvpe))

        jobs = (
            VoiceJob("alice", files("alice", tiny_models.index), ConversionParams(noise=False)),
            VoiceJob("bob", files("bob", None), ConversionParams(noise=False)),
            VoiceJob("carol", files("carol", tiny_models.index), ConversionParams(noise=False, pitch=CAROL_PITCH)),
        )
        spec = JobSpec(files=jobs[0].files, params=jobs[0].params, out_dir=str(tmp_path / "out"), subtype="FLOAT",
                       device="cpu", threads=1, voices=jobs, name_template="{voice}/{stem}", write_in="task")
        sf.write(tmp_path / "done.wav", tone(0.4, 16000), 16000)
        (tmp_path / "out" / "bob").mkdir(parents=True)
        sf.write(tmp_path / "out" / "bob" / "done.wav", tone(0.4, 16000), 16000)  # an output that is there already
        batch = pa.table({"path": [str(inputs / "a.wav"), str(inputs / "b.wav"), str(tmp_path / "done.wav")]})
        decoded = decode_voices(batch, spec)
        assert decoded.num_rows == 3  # one row per input, each decoded once
        worker = VoicesWorker(spec)
        converted = worker(decoded)
        assert (worker.memo.f0_computed, worker.memo.f0_reused) == (3, 3)
        # alice encodes every input once; bob (but for done.wav) and carol take alice's features
        assert worker.memo.features_reused > worker.memo.features_computed > 0
        assert not worker.memo._tracks and not worker.memo._features  # nothing kept for the next batch
        rows = write_outputs(converted, spec).to_pylist()
        assert set(rows[0]) == set(VOICE_ROW_SCHEMA.names)
        assert [(Path(r["path"]).name, r["voice"], r["status"]) for r in rows] == [
            (n, v, "skipped" if (n, v) == ("done.wav", "bob") else "ok") for n in ("a.wav", "b.wav", "done.wav") for v in VOICES
        ]
        assert _files(tmp_path / "out") == {f"{v}/{n}" for v in VOICES for n in ("a.wav", "b.wav", "done.wav")}

    def test_dataset_rows_that_one_name_would_merge_are_told_to_use_name_template(self, tiny_models, voices, inputs, tmp_path):
        # a dataset given with voices= has no output_path column: the error rows of two files with
        # one stem (and of an earlier job's output of another file) point at name_template, whose
        # suggested form then names them apart
        import pyarrow as pa

        from rvcfast.integrations.ray._stages import JobSpec, OutputClaims
        from rvcfast.integrations.ray._voices import VoiceJob, decode_voices
        from rvcfast.integrations.ray._weights import ModelFiles
        from rvcfast.params import ConversionParams
        from rvcfast.writing import write_audio_atomic

        jobs = tuple(VoiceJob(n, ModelFiles(str(voices[n])), ConversionParams(noise=False)) for n in ("alice", "bob"))
        (tmp_path / "other").mkdir()
        shutil.copy(inputs / "a.wav", tmp_path / "other" / "a.wav")
        out = tmp_path / "out"
        write_audio_atomic(out / "bob" / "b.wav", tone(0.1, 40000), 40000, source=tmp_path / "gone.wav")  # an earlier job's
        batch = pa.table({"path": [str(inputs / "a.wav"), str(tmp_path / "other" / "a.wav"), str(inputs / "b.wav")]})

        def decoded(template, batch=batch):
            spec = JobSpec(files=jobs[0].files, params=jobs[0].params, out_dir=str(out), voices=jobs, name_template=template,
                           claims=ray.remote(num_cpus=0)(OutputClaims).remote())
            return [e for r in decode_voices(batch, spec).to_pylist() for e in json.loads(r["entries"])]

        rows = decoded("{voice}/{stem}")
        assert [(Path(r["path"]).parent.name, Path(r["path"]).name, r["voice"], r["status"]) for r in rows] == [
            (inputs.name, "a.wav", "alice", "pending"), (inputs.name, "a.wav", "bob", "pending"),
            ("other", "a.wav", "alice", "error"), ("other", "a.wav", "bob", "error"),
            (inputs.name, "b.wav", "alice", "pending"), (inputs.name, "b.wav", "bob", "error"),
        ]
        for r in (rows[2], rows[3], rows[5]):
            assert "name_template '{voice}/{stem}'" in r["error"] and "{parent}" in r["error"], r["error"]
            assert "output_path values" not in r["error"], r["error"]  # a column such a dataset cannot have
        assert "already the output of" in rows[2]["error"] and "records another input" in rows[5]["error"]
        rows = decoded("{voice}/{parent}/{stem}")  # as the message suggests
        assert [r["status"] for r in rows] == ["pending"] * 6, [r["error"] for r in rows]
        # an output_path column the driver could not see (a lazy dataset's schema is unknown): error
        # rows saying so, nothing decoded, rather than outputs silently named otherwise
        rows = decoded("{voice}/{stem}", pa.table({"path": [str(inputs / "a.wav")], "output_path": [str(tmp_path / "mine.wav")]}))
        assert [(r["voice"], r["status"], r["decode_s"]) for r in rows] == [("alice", "error", 0.0), ("bob", "error", 0.0)]
        assert all("no 'output_path'" in r["error"] and names_file(r["error"], inputs / "a.wav") for r in rows), rows

    def test_a_bad_voice_is_refused_before_any_task_naming_it(self, tiny_models, voices, inputs, tmp_path):
        from rvcfast.integrations.ray import convert_files

        out = tmp_path / "never"
        good = _mapping(tiny_models, voices)

        def run(mapping=good, **kw):
            return convert_files(inputs, out, voices=mapping, num_workers=1, **_options(tiny_models, **kw))

        with pytest.raises(ModelLoadError, match="voice 'bob': voice model file does not exist") as info:
            run({**good, "bob": tmp_path / "gone.pth"})
        assert names_file(str(info.value), tmp_path / "gone.pth")
        with pytest.raises(ModelLoadError, match="voice 'alice': index not found") as info:
            run({**good, "alice": (voices["alice"], tmp_path / "gone.index")})
        assert names_file(str(info.value), tmp_path / "gone.index")
        with pytest.raises(ModelLoadError, match="voice 'carol': index dimension 256"):
            run({**good, "carol": (voices["carol"], tiny_models.index_256)})
        with pytest.raises(ParameterError, match="voice 'carol': pitch must be within"):
            run(voice_params={"carol": {"pitch": 99}})
        with pytest.raises(ParameterError, match="voice 'bob': speaker 7 is out of range"):
            run(voice_params={"bob": {"speaker": 7}})
        with pytest.raises(ParameterError, match="voice_params names voice 'dave'"):
            run(voice_params={"dave": {"pitch": 1}})
        dave = save_random_voice_model(tmp_path / "dave.pth", "v2", 48000, True, seed=7, **TINY_VOICE)
        with pytest.raises(ParameterError, match="voice 'alice': subtype OPUS needs a sample_rate"):
            run({"dave": dave, "alice": voices["alice"]}, format="ogg", subtype="OPUS")  # 48 kHz takes Opus, 40 kHz not
        with pytest.raises(ParameterError, match="the name 'alice' twice"):
            run([voices["alice"], tmp_path / "x" / "alice.pth"])
        with pytest.raises(ParameterError, match="no {voice} field"):
            run(name_template="{stem}")
        with pytest.raises(ParameterError, match="model is for a one-voice job"):
            convert_files(inputs, out, voices["alice"], voices=good, **_options(tiny_models))
        assert not out.exists()

    def test_the_default_pool_holds_every_voice_in_memory(self, tiny_models, voices, inputs, tmp_path, monkeypatch):
        from rvcfast.integrations.ray import CPU_WORKER_MEMORY, convert_dataset

        calls = record_map_batches(monkeypatch)
        opts = _options(tiny_models)
        opts.pop("progress")
        convert_dataset([inputs / "a.wav"], out_dir=tmp_path / "out", voices=_mapping(tiny_models, voices), **opts)  # lazy
        [(name, kw)] = [c for c in calls if c[0] == "VoicesWorker"]
        # beyond the first voice: bob's model, carol's model and index (a model up to twice its file in float32)
        extra = 2 * voices["bob"].stat().st_size + 2 * voices["carol"].stat().st_size + tiny_models.index.stat().st_size
        node_memory = ray.nodes()[0]["Resources"]["memory"]
        assert kw["memory"] == min(CPU_WORKER_MEMORY + extra, int(node_memory // kw["compute"].max_size))
        assert not (tmp_path / "out").exists()

    def test_command_line_resumes_only_the_missing_pairs(self, first_run, tiny_models, voices, inputs, tmp_path, capsys):
        from rvcfast.cli import main
        from rvcfast.writing import this_host

        out = tmp_path / "out"
        shutil.copytree(first_run[0], out)
        (out / "alice" / "a.wav").unlink()
        (out / "bob" / "a.wav").unlink()  # b.wav has all its outputs: not even decoded
        kept = {p: (out / p).stat().st_mtime_ns for p in _files(out) if p.endswith(".wav")}
        # a killed writer's temporary file beside a skipped output, in a voice's folder (not out/ itself)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = out / "carol" / f".b.wav.{this_host()}~{dead.pid}~x.part"
        stale.write_bytes(b"RIFF partial")
        argv = [
            "convert", str(voices["alice"]), str(inputs), "-o", str(out), "--index", str(tiny_models.index),
            "--voice", str(voices["bob"]), "--voice", f"{voices['carol']},{tiny_models.index}", "--voice-pitch",
            f"carol={CAROL_PITCH}", "--encoder", str(tiny_models.encoder), "--f0-weights", str(tiny_models.rmvpe),
            "--device", "cpu", "--no-noise", "--subtype", "FLOAT", "--skip-existing", "--ray", "--workers", "1",
        ]
        assert main(argv) == 1  # broken.wav failed, for each voice
        captured = capsys.readouterr()
        assert f"(voice {VOICES[0]})" in captured.err and "9 files (3 failed, 4 skipped)" in captured.out
        rows = [json.loads(line) for line in (out / "rvcfast-manifest.jsonl").read_text().splitlines()]
        status = {(Path(r["path"]).name, r["voice"]): r["status"] for r in rows}
        assert status == {
            **{(n, v): "skipped" for n in GOOD for v in VOICES}, ("a.wav", "alice"): "ok", ("a.wav", "bob"): "ok",
            **{(BAD, v): "error" for v in VOICES},
        }
        assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept  # only the missing pairs were written
        assert not stale.exists()  # cleaned in every voice's folder, as a one-voice job cleans its folder
        # a.wav is alone in its batch now: the same output up to the float rounding of another batch
        # shape. The tiny voice's output peaks near 4e-4, and that rounding reached 2.5e-5 of it on
        # an AVX-512 CPU (1.1e-8 absolute), so the bound is 1e-4 of the peak: still 80 dB below it
        for name in ("alice/a.wav", "bob/a.wav"):
            again, before = sf.read(out / name)[0], sf.read(first_run[0] / name)[0]
            assert_close_to_peak(again, before, rel_tol=1e-4, min_peak=1e-4)
        b_rows = [r for r in rows if Path(r["path"]).name == "b.wav"]
        assert all(r["audio_seconds"] == 0 and r["decode_s"] == 0 for r in b_rows)  # skipped without decoding
        assert [r["decode_s"] > 0 for r in rows if Path(r["path"]).name == "a.wav"] == [True, False, False]

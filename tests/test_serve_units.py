"""The server's parts without a server: scheduler grouping and isolation, job spool, metrics, WAV stream header."""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from rvcfast.result import Result
from rvcfast.serve.encode import pcm_bytes, wav_stream_header
from rvcfast.serve.jobs import JobStore, JobStoreFull
from rvcfast.serve.metrics import Metrics
from rvcfast.serve.scheduler import END, Admission, QueueFull, Scheduler


class FakeEngine:
    """Records the inputs of each run() call; an input labelled "bad" breaks a shared call."""

    sample_rate = 40000

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.cancels: list[object] = []  # the cancel flag of each call

    def run(self, preps, params, f0=None, cancel=None):
        labels = [p.label for p in preps]
        self.calls.append(labels)
        self.cancels.append(cancel)
        if "bad" in labels and len(labels) > 1:
            raise RuntimeError("shared call failed")
        return [Result(np.full(3, float(len(p.label)), np.float32), 40000, {}, p.label,
                       error="broken input" if p.label == "bad" else None) for p in preps]


def prep(label: str, seconds: float = 7.0):
    return SimpleNamespace(label=label, padded=np.zeros(int(seconds * 16000)), seconds=seconds, n_channels=1)


def test_requests_of_one_voice_are_gathered_up_to_the_budget() -> None:
    a, b = FakeEngine(), FakeEngine()
    sched = Scheduler(group_seconds=30)
    futures = [sched.submit(eng, prep(f"{name}{i}"), None) for i in range(5) for eng, name in ((a, "a"), (b, "b"))]
    sched.start()
    results = [f.result(10) for f in futures]
    sched.close()
    # 7 s each: four fit in 30 s; the synthesizer never mixes voices
    assert a.calls == [["a0", "a1", "a2", "a3"], ["a4"]] and b.calls == [["b0", "b1", "b2", "b3"], ["b4"]]
    assert all(r.ok and "queue" in r.timings for r in results)


def test_one_request_per_call_with_no_budget() -> None:
    eng = FakeEngine()
    sched = Scheduler(group_seconds=0)
    futures = [sched.submit(eng, prep(f"x{i}"), None) for i in range(3)]
    sched.start()
    [f.result(10) for f in futures]
    sched.close()
    assert eng.calls == [["x0"], ["x1"], ["x2"]]


def test_a_failing_request_does_not_fail_the_others() -> None:
    eng = FakeEngine()
    sched = Scheduler(group_seconds=30)
    futures = [sched.submit(eng, prep(name), None) for name in ("good1", "bad", "good2")]
    sched.start()
    results = [f.result(10) for f in futures]
    sched.close()
    assert results[0].ok and results[2].ok and results[1].error == "broken input"
    assert eng.calls[0] == ["good1", "bad", "good2"] and eng.calls[1:] == [["good1"], ["bad"], ["good2"]]


def test_steps_interleave_with_requests_and_wait_for_credit() -> None:
    order: list[str] = []
    eng = FakeEngine()

    def steps():
        for k in range(3):
            order.append(f"step{k}")
            yield k

    received: list[object] = []
    got = threading.Event()

    def sink(item):
        received.append(item)
        got.set()

    sched = Scheduler(group_seconds=0)
    task = sched.submit_steps(steps(), sink, credit=1)
    fut = sched.submit(eng, prep("req"), None)
    sched.start()
    fut.result(10)
    order.append("req")
    got.wait(10)
    time.sleep(0.2)
    assert received == [0] and order == ["step0", "req"]  # parked: no credit until the receiver takes one
    for expected in ([0, 1], [0, 1, 2], [0, 1, 2, END]):
        got.clear()
        sched.grant(task)
        got.wait(10)
        assert received == expected
    sched.close()


def test_a_pause_sends_nothing_and_lets_other_work_in() -> None:
    order: list[str] = []
    eng = FakeEngine()
    fut_box: list[cf.Future] = []

    def steps():
        order.append("f0 block 1")
        fut_box.append(sched.submit(eng, prep("req"), None))  # a request arrives meanwhile
        yield None  # a pause between F0 blocks
        order.append("f0 block 2")
        yield "piece"

    received: list[object] = []
    done = threading.Event()

    def sink(item):
        received.append(item)
        if item is END:
            done.set()

    sched = Scheduler(group_seconds=0)
    original = eng.run

    def run(preps, params, f0=None, cancel=None):
        order.append("req")
        return original(preps, params, f0, cancel)

    eng.run = run
    sched.submit_steps(steps(), sink, credit=2)  # the piece and END: a pause must not use up a credit
    sched.start()
    assert done.wait(10)
    assert received == ["piece", END] and order == ["f0 block 1", "req", "f0 block 2"]
    assert fut_box[0].result(10).ok
    sched.close()


def test_a_failing_step_task_reports_its_exception() -> None:
    def broken():
        yield 1
        raise ValueError("segment 2 failed")

    box: list[object] = []
    done = threading.Event()
    sched = Scheduler(group_seconds=0)
    sched.submit_steps(broken(), lambda item: (box.append(item), done.set() if not isinstance(item, int) else None))
    sched.start()
    done.wait(10)
    sched.close()
    assert box[0] == 1 and isinstance(box[1], ValueError)


def test_admission_limit_and_retry_after() -> None:
    adm = Admission(2)
    adm.enter()
    adm.enter()
    with pytest.raises(QueueFull) as info:
        adm.enter()
    assert 1 <= info.value.retry_after <= 120
    adm.leave(4.0)
    adm.enter()


def test_job_spool_ttl_and_size_bound(tmp_path) -> None:
    store = JobStore(tmp_path, ttl=10, max_bytes=100, min_keep=0)  # no minimum age: evicted for space at once
    jobs = [store.create("v", f"in{i}.wav", "wav", None) for i in range(3)]
    now = time.time()
    for i, job in enumerate(jobs):
        store.path(job, ".wav").write_bytes(b"x" * 40)
        job.state, job.bytes, job.finished = "done", 40, now - 3 + i
    assert store.sweep(now=now) == [jobs[0].id]  # 120 bytes > 100: the oldest result goes first
    assert not store.path(jobs[0], ".wav").exists() and store.get(jobs[1].id) is jobs[1]
    assert sorted(store.sweep(now=now + 20)) == sorted([jobs[1].id, jobs[2].id])  # expired
    with pytest.raises(KeyError):
        store.get("../../etc/passwd")
    full = JobStore(tmp_path / "full", ttl=1e9, max_bytes=10)
    job = full.create("v", "a.wav", "wav", None)
    job.state, job.bytes, job.finished = "running", 0, None
    job.state, job.bytes, job.finished = "done", 10, time.time()
    with pytest.raises(JobStoreFull):
        full.create("v", "b.wav", "wav", None)


def test_metrics_text_format() -> None:
    m = Metrics()
    m.inc("rvcfast_requests_total", route="/v1/convert", status="200")
    m.observe("rvcfast_batch_requests", 3)
    m.add_stages({"synth": 1.5})
    m.gauge("rvcfast_queue_depth", "waiting", lambda: 2)
    text = m.render()
    assert 'rvcfast_requests_total{route="/v1/convert",status="200"} 1' in text
    assert 'rvcfast_batch_requests_bucket{le="2"} 0' in text and 'rvcfast_batch_requests_bucket{le="4"} 1' in text
    assert 'rvcfast_batch_requests_count 1' in text and 'rvcfast_stage_seconds_total{stage="synth"} 1.5' in text
    assert "# TYPE rvcfast_queue_depth gauge\nrvcfast_queue_depth 2" in text


def test_a_count_read_at_scrape_time_is_a_counter_named_total() -> None:
    m = Metrics()
    loads = {(("kind", "encoder"),): 1.0}
    m.gauge("rvcfast_model_loads_total", "models loaded", lambda: loads, kind="counter")
    assert '# TYPE rvcfast_model_loads_total counter\nrvcfast_model_loads_total{kind="encoder"} 1' in m.render()
    loads[(("kind", "encoder"),)] = 2.0
    assert 'rvcfast_model_loads_total{kind="encoder"} 2' in m.render()
    with pytest.raises(ValueError, match="_total"):
        m.gauge("rvcfast_model_loads", "a counter must end in _total", lambda: 1.0, kind="counter")
    with pytest.raises(ValueError, match="_total"):
        m.gauge("rvcfast_loaded_total", "a gauge must not look like a counter", lambda: 1.0)


@pytest.mark.parametrize("subtype", [None, "PCM_24", "PCM_32", "FLOAT"])
def test_stream_header_and_pieces_read_as_the_whole_file(subtype) -> None:
    rng = np.random.default_rng(0)
    pieces = [(0.5 * rng.standard_normal(n)).astype(np.float32).clip(-1, 1) for n in (1000, 1, 2345)]
    data = wav_stream_header(40000, subtype) + b"".join(pcm_bytes(p, 40000, subtype) for p in pieces)
    streamed, rate = sf.read(io.BytesIO(data), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(pieces), 40000, format="WAV", subtype=subtype)
    whole, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
    assert rate == 40000
    np.testing.assert_array_equal(streamed, whole)


def test_scheduler_keeps_running_after_a_future_was_cancelled() -> None:
    eng = FakeEngine()
    sched = Scheduler(group_seconds=0)
    first = sched.submit(eng, prep("gone"), None)
    assert first.cancel()
    second = sched.submit(eng, prep("kept"), None)
    sched.start()
    assert second.result(10).ok
    with pytest.raises(cf.CancelledError):
        first.result(0)
    sched.close()
    assert eng.calls == [["kept"]]


def test_a_shared_call_stops_only_when_every_caller_gave_up() -> None:
    eng = FakeEngine()
    sched = Scheduler(group_seconds=30.0)
    a, b = sched.submit(eng, prep("a"), None), sched.submit(eng, prep("b"), None)
    sched.start()
    assert a.result(10).ok and b.result(10).ok
    flag = eng.cancels[-1]
    assert eng.calls[-1] == ["a", "b"] and not flag.is_set()
    # the flag the engine looks at is set only when both callers have left
    tasks = flag.tasks
    tasks[0].gone.set()
    assert not flag.is_set()
    tasks[1].gone.set()
    assert flag.is_set()
    sched.close()


def test_giving_up_a_running_call_ends_its_future_with_cancelled() -> None:
    from rvcfast.errors import Cancelled

    entered, release = threading.Event(), threading.Event()

    class Waiting(FakeEngine):
        def run(self, preps, params, f0=None, cancel=None):
            entered.set()
            assert release.wait(10)
            if cancel is not None and cancel.is_set():  # the engine's check at its next model batch
                raise Cancelled("the conversion was cancelled")
            return super().run(preps, params, f0, cancel)

    sched = Scheduler(group_seconds=0)
    fut = sched.submit(Waiting(), prep("x"), None)
    sched.start()
    assert entered.wait(10)
    sched.give_up(fut)  # running: cannot be cancelled as a future, so the engine is told
    release.set()
    with pytest.raises(Cancelled):
        fut.result(10)
    after = sched.submit(FakeEngine(), prep("y"), None)  # the worker lives on
    assert after.result(10).ok
    sched.close()


def test_a_voice_that_failed_to_load_is_not_loaded_again_until_its_files_change(tmp_path) -> None:
    import os

    from rvcfast.errors import ModelLoadError
    from rvcfast.serve.voices import Voice, VoiceRegistry

    model = tmp_path / "zoe.pth"
    model.write_bytes(b"not a model")
    attempts: list[str] = []

    def load(voice: Voice):
        attempts.append(voice.id)
        if voice.model.read_bytes() == b"not a model":
            raise ModelLoadError(voice.model, "not a voice model")
        voc = SimpleNamespace(version="v2", sample_rate=40000, has_f0=True, num_speakers=1)
        return SimpleNamespace(name="engine", vocoder=voc)

    registry = VoiceRegistry([Voice("zoe", model)], load, max_loaded=2)
    for _ in range(3):
        with pytest.raises(ModelLoadError, match="zoe.pth: not a voice model"):
            registry.engine("zoe")
    assert attempts == ["zoe"]  # one load, the same error answered after it
    model.write_bytes(b"a fixed model file")  # replaced in place: other size and time
    os.utime(model, ns=(1, 2))
    assert registry.engine("zoe").name == "engine" and attempts == ["zoe", "zoe"]
    registry.add(Voice("zoe", model), replace=True)  # a new upload is loaded anew too
    model.write_bytes(b"not a model")
    os.utime(model, ns=(3, 4))
    with pytest.raises(ModelLoadError):
        registry.engine("zoe")
    assert attempts == ["zoe", "zoe", "zoe"]


def test_an_uploaded_onnx_voice_is_kept_as_onnx_and_replaces_the_other_kind(tmp_path) -> None:
    """An .onnx upload was checked as ONNX, then stored as <id>.pth (a .pth holding ONNX bytes,
    which then failed to load); a voice replaced by the other kind kept its old file beside it,
    two voices of one name at the next start."""
    from rvcfast.serve.voices import discover_voices, save_upload

    models = tmp_path / "models"
    checked: list = []

    def upload(name: str, data: bytes):
        spool = tmp_path / "spool"
        spool.mkdir(exist_ok=True)
        tmp = spool / name
        tmp.write_bytes(data)
        return save_upload(models, "carol", tmp, None, lambda m, i: checked.append(m.suffix))

    first = upload("upload.pth", b"pth bytes")
    assert first.model.name == "carol.pth"
    second = upload("upload.onnx", b"onnx bytes")
    assert second.model.name == "carol.onnx" and second.model.read_bytes() == b"onnx bytes"
    assert sorted(p.name for p in models.iterdir()) == ["carol.onnx"]
    assert [v.model.name for v in discover_voices([models])] == ["carol.onnx"]
    assert upload("x.PTH", b"again").model.name == "carol.pth" and sorted(p.name for p in models.iterdir()) == ["carol.pth"]
    assert checked == [".pth", ".onnx", ".PTH"]


def test_an_onnx_export_beside_its_pth_is_a_voice_of_its_own(tmp_path) -> None:
    """``rvcfast export-onnx voices/alice.pth`` writes voices/alice.onnx, and the server then
    refused to start ("two voices are named 'alice'"); the export is now the voice ``alice.onnx``.
    The same name from two folders is still refused."""
    import pytest

    from rvcfast.errors import ParameterError
    from rvcfast.serve.voices import VOICE_ID, discover_voices

    voices = tmp_path / "voices"
    voices.mkdir()
    for name in ("alice.pth", "alice.onnx", "alice.index", "bob.onnx"):
        (voices / name).write_bytes(b"x")
    found = {v.id: v for v in discover_voices([voices])}
    assert sorted(found) == ["alice", "alice.onnx", "bob"]
    assert found["alice"].model.name == "alice.pth" and found["alice.onnx"].model.name == "alice.onnx"
    assert found["alice.onnx"].index == found["alice"].index == (voices / "alice.index").resolve()
    assert all(VOICE_ID.match(v) for v in found)
    other = tmp_path / "other"
    other.mkdir()
    (other / "bob.pth").write_bytes(b"x")
    with pytest.raises(ParameterError, match="two voices are named 'bob'"):
        discover_voices([voices, other])


def test_a_broken_link_or_a_folder_named_like_a_voice_is_logged(tmp_path, caplog) -> None:
    """They were dropped from the voice list without a word in the log."""
    import logging

    from rvcfast.serve.voices import discover_voices

    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "alice.pth").write_bytes(b"x")
    (voices / "folder.pth").mkdir()
    (voices / "gone.pth").symlink_to(tmp_path / "nowhere.pth")
    with caplog.at_level(logging.WARNING, logger="rvcfast.serve"):
        assert [v.id for v in discover_voices([voices])] == ["alice"]
    text = caplog.text
    assert "folder.pth skipped: not a file" in text and "gone.pth skipped: a broken link" in text

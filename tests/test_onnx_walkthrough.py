"""ONNX export as a user walks through docs/onnx.md: the Python API and ``rvcfast export-onnx``
with odd output paths, several exports at once, and the onnxruntime snippet of the docs.

Small random-weight models in the real ``.pth`` format; exports without verification where the
graph itself is not what a test checks (tests/test_onnx_export.py checks the graph).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import rvcfast
from rvcfast.testing import save_random_voice_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TINY = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=1,
            upsample_initial_channel=32, num_speakers=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx_walk")
    return {
        "f0": save_random_voice_model(d / "v2 40k é.pth", "v2", 40000, True, seed=21, **TINY),
        "nof0": save_random_voice_model(d / "v1_32k_nof0.pth", "v1", 32000, False, seed=22, **TINY),
    }


def test_concurrent_exports_do_not_collide(voices, tmp_path, monkeypatch) -> None:
    """torch.onnx.export keeps its state in process globals: two exports at once failed with
    "GLOBALS.in_onnx_export must be False". The wrapper below holds the first export until a
    second one enters (or a second has passed), so without serialisation both always overlap."""
    real = torch.onnx.export
    meet = threading.Barrier(2)
    active, peak, lock = [0], [0], threading.Lock()

    @functools.wraps(real)  # the same signature: the exporter is called with dynamo=False
    def export(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            try:
                meet.wait(timeout=1.0)  # serialised: nobody comes, the barrier breaks, go on
            except threading.BrokenBarrierError:
                pass
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(torch.onnx, "export", export)
    jobs = [(voices["f0"], 15, tmp_path / "a.onnx"), (voices["nof0"], 18, tmp_path / "b.onnx")]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        model, opset, out = jobs[i]
        try:
            results[i] = rvcfast.export_onnx(model, out, opset=opset, noise=False, verify=False)
        except Exception as exc:  # noqa: BLE001 - the test reports it below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, rvcfast.onnx_export.ExportReport) for r in results.values()), results
    assert peak[0] == 1
    import onnx

    for _, opset, out in jobs:
        proto = onnx.load(out)
        assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {opset}

"""Helpers of the Ray test files (imported only by them: importing this module imports Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import ray
import ray.data


@contextmanager
def local_cluster(**options: Any) -> Iterator[None]:
    """A local one-node cluster of 2 CPUs on 127.0.0.1, no dashboard, shut down afterwards: always a
    new one (``address="local"``), never a cluster found running on the machine (``ray start``, or
    another run's left in /tmp/ray/ray_current_cluster), which ``num_cpus`` would make an error."""
    ray.init(**{"address": "local", "num_cpus": 2, "include_dashboard": False, "_node_ip_address": "127.0.0.1", **options})
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def actors_wait(seconds: float) -> Iterator[None]:
    """At most ``seconds`` for an actor pool's first workers to start (``DataContext.wait_for_min_actors_s``:
    a pool that cannot start fails, never hangs), restored afterwards. A Ray Data without the setting
    (before 2.30) is left as it is: it waits with its own limit (none in 2.10, 10 minutes in 2.22)."""
    ctx = ray.data.DataContext.get_current()
    if not hasattr(ctx, "wait_for_min_actors_s"):
        yield
        return
    before, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, seconds
    try:
        yield
    finally:
        ctx.wait_for_min_actors_s = before


def record_map_batches(monkeypatch: Any) -> list[tuple[str, dict[str, Any]]]:
    """Record every ``Dataset.map_batches`` call as ``(stage name, keyword arguments)``; the calls still run."""
    calls: list[tuple[str, dict[str, Any]]] = []
    real = ray.data.Dataset.map_batches

    def recording(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((getattr(fn, "__name__", str(fn)), kwargs))
        return real(self, fn, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", recording)
    return calls


@pytest.fixture(name="no_cluster")
def no_cluster_fixture(monkeypatch: Any) -> None:
    """``ray.put``/``ray.get`` as the identity, and a fixed node for new rows: the stage
    functions run in the test process, no Ray started."""
    from rvcfast.integrations.ray import _stages

    monkeypatch.setattr(ray, "put", lambda data: data)
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.setattr(_stages, "_where", lambda: ("node-1", "host-1"))

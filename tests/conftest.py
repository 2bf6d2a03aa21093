"""Shared test fixtures: where the golden parity fixtures and test audio live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Test files that start local Ray clusters: run one after another on one worker when the
#: suite runs in several processes (pytest-xdist), never two clusters at once.
RAY_FILES = (
    "test_ray.py", "test_ray_checks.py", "test_ray_robust.py", "test_ray_voices.py", "test_ray_walkthrough.py", "test_ray_parity.py",
)
#: The files that take longest (the Ray group 4-5 minutes, the load tests 3), started first.
LONGEST_FIRST = (*RAY_FILES, "test_load.py", "test_serve.py", "test_vocoders_applio.py")

# A machine profile written by `rvcfast tune` on this machine would change the defaults the
# tests expect (precision for "auto", batch size, threads, compute workers): tests that want
# one point RVCFAST_PROFILE at their own file.
os.environ.setdefault("RVCFAST_PROFILE", "off")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
AUDIO = SHARED / "audio"


@pytest.fixture(scope="session")
def golden() -> Path:
    """The golden fixture folder; tests using it skip when it is absent."""
    if not (GOLDEN / "manifest.json").is_file():
        pytest.skip(f"golden parity fixtures not found at {GOLDEN} (set RVCFAST_SHARED to the shared/ folder)")
    return GOLDEN


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    """The shared speech clips; tests using them skip when the folder is absent."""
    if not AUDIO.is_dir():
        pytest.skip(f"shared test audio not found at {AUDIO} (set RVCFAST_SHARED to the shared/ folder)")
    return AUDIO


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker: share the CPU's cores among the workers.

    Every worker is a process of its own; with PyTorch's default (a thread per core in each)
    two workers on two cores would run four spinning OpenMP threads. Tests that want another
    count set it themselves and put it back (``one_thread_fixture`` and the thread tests).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests by file for pytest-xdist's ``--dist loadgroup`` (the README's command).

    ``tryfirst``: pytest-xdist reads the ``xdist_group`` marks in its own hook of this name; run
    after it, the marks were ignored and every file was spread over all workers, each setting
    up the file's module-scoped fixtures again (two 500-file load runs, Ray clusters side by side).

    A file's module- and class-scoped fixtures (servers, tiny models, Ray clusters) are
    then set up once, on one worker, as in a single-process run; the Ray files form one
    group, so two local clusters never start at once. In a run of several workers the
    longest groups go first (the workers take groups in order: one started last would keep
    one worker busy while the others wait).
    """
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name in RAY_FILES else name))
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0) > 1:
        items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST))

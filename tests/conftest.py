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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's ``--dist loadfile`` (the README's command), with the Ray files as one unit.

    Each file runs on one worker, so its module- and class-scoped fixtures (servers, tiny
    models, Ray clusters) are set up once, as in a single-process run, and the Ray files run
    one after another on one worker: two local clusters never start at once.

    A scheduler rather than ``xdist_group`` marks: pytest-xdist carries a group in the test's
    node id, which pytest 9.2 no longer lets it change (pytest-xdist issue #1386), so the marks
    were silently ignored and every file was spread over all workers, each setting up the
    file's fixtures again (two 500-file load runs, Ray clusters side by side).
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndRayGroup(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "ray" if Path(path).name in RAY_FILES else path

    return FilesAndRayGroup(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a run of several workers, start the longest files first.

    The workers take files in collection order (``--no-loadscope-reorder`` in the README's
    command: pytest-xdist would otherwise order them by their number of tests), and a long file
    started last would keep one worker busy while the others wait.
    """
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0) > 1:
        items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST))


@pytest.fixture(autouse=True)
def _logging_left_as_found():
    """Put rvcfast's and uvicorn's loggers back as they were after each test: ``rvcfast serve``
    run in-process (``main(["serve", ...])``) configures logging as a server process should
    (rvcfast's records to its own stderr handler, not propagated), which hid every later
    test's records from ``caplog`` in the same test worker."""
    import logging

    def state() -> dict[str, tuple[object, ...]]:
        names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("rvcfast", "uvicorn")]
        found = {}
        for name in names:
            lg = logging.getLogger(name)
            found[name] = (lg.level, lg.propagate, lg.disabled, list(lg.handlers), list(lg.filters))
        return found

    before = state()
    yield
    for name in state():
        lg = logging.getLogger(name)
        lg.level, lg.propagate, lg.disabled, handlers, filters = before.get(name, (logging.NOTSET, True, False, [], []))
        lg.handlers[:], lg.filters[:] = handlers, filters

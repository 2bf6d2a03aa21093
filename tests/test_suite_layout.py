"""The suite's own distribution over pytest-xdist workers (tests/conftest.py).

Each test file runs on one worker, and the Ray files together on one: their module- and
class-scoped fixtures (tiny models, servers, local Ray clusters) are then set up once, and two
clusters never start at once. pytest 9.2 silently broke the ``xdist_group`` marks this used to
rest on, and nothing failed: the suite only got slower. This runs a few quick tests of two
files and of two Ray files in a child pytest with two workers and reads which worker ran each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("xdist", reason="pytest-xdist is not installed")


def test_each_file_and_the_ray_files_together_run_on_one_worker(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason='the Ray files need Ray (pip install "rvcfast[ray]")')
    selected = [
        "tests/test_loudness.py::test_a_sine_reads_its_analytic_loudness",
        "tests/test_loudness.py::test_streamed_output_refuses_loudness",
        "tests/test_ray_checks.py::test_file_errors_survive_pickling",
        "tests/test_ray_robust.py::test_an_output_path_naming_another_format_is_an_error_row",
        "tests/test_ray_robust.py::test_an_output_that_is_the_input_under_another_name_is_an_error_row",
    ]
    env = {**os.environ, "PYTEST_ADDOPTS": ""}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *selected, "-n", "2", "-v", "-p", "no:randomly", "--basetemp", str(tmp_path / "t")],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, nodeid in re.findall(r"^\[(gw\d+)\] \[\s*\d+%\] PASSED (\S+)", proc.stdout, re.M):
        workers[Path(nodeid.split("::")[0]).name].add(worker)
    # every selected file ran, with more than one test each (a split would show two workers)
    assert set(workers) == {"test_loudness.py", "test_ray_checks.py", "test_ray_robust.py"}, proc.stdout[-3000:]
    assert len(workers["test_loudness.py"]) == 1, workers
    assert len(workers["test_ray_checks.py"] | workers["test_ray_robust.py"]) == 1, workers

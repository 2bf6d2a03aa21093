"""Scale-out on Ray, from a user's walkthrough of docs/scale-out.md: what the page promises that
no other test pinned.

* with a seed, a job's output equals a local conversion at the worker's thread count bit for bit;
* a re-run with ``skip_existing`` leaves every output untouched and writes its own manifest
  (every row ``skipped``) over the earlier one; a ``.json`` manifest is JSON Lines too;
* ``rvcfast convert --ray`` without the ``ray`` extra is a one-line error naming the extra.

One local cluster (2 CPUs, 127.0.0.1, usage statistics off), one small job run twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_models_fixture, tone  # noqa: F401

ray = pytest.importorskip("ray", reason='Ray Data is not installed (pip install "rvcfast[ray]")')
pytest.importorskip("ray.data")
from ray_helpers import local_cluster  # noqa: E402

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def test_seeded_output_equals_local_and_a_rerun_rewrites_the_manifest(tiny_models, tmp_path: Path) -> None:
    from rvcfast.integrations.ray import convert_files

    clip = tmp_path / "in" / "a.wav"
    clip.parent.mkdir()
    sf.write(clip, tone(1.2, 44100, 190), 44100)
    out, manifest = tmp_path / "out", tmp_path / "rows.json"
    kw = dict(
        index=tiny_models.index, encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
        threads_per_worker=1, seed=5, subtype="FLOAT", progress=False, manifest=manifest,
    )
    with local_cluster():
        first = convert_files([clip], out, tiny_models.voice, num_workers=1, **kw)
        stamp = (out / "a.wav").stat().st_mtime_ns
        second = convert_files([clip], out, tiny_models.voice, num_workers=1, skip_existing=True, **kw)
    assert [r["status"] for r in first] == ["ok"], first
    # the noise is seeded and the worker runs one thread, as this process does (one_thread fixture)
    local = tiny_models.converter().convert(clip, seed=5).audio
    audio, rate = sf.read(out / "a.wav", dtype="float32")
    assert rate == 40000 and np.array_equal(audio, local)
    # the re-run skips the file, leaves it as it was and writes its own rows over the manifest
    assert [r["status"] for r in second] == ["skipped"] and (out / "a.wav").stat().st_mtime_ns == stamp
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(r["path"], r["status"], r["audio_seconds"]) for r in rows] == [(str(clip), "skipped", 0.0)]


def test_cli_without_the_ray_extra_is_one_line_naming_it(tiny_models, tmp_path: Path) -> None:
    clip = tmp_path / "a.wav"
    sf.write(clip, tone(0.5, 16000, 200), 16000)
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"
        "from rvcfast.cli import main\n"
        f"sys.exit(main(['convert', {str(tiny_models.voice)!r}, {str(clip)!r}, '-o', {str(tmp_path / 'out')!r}, '--ray']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "rvcfast[ray]"' in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()

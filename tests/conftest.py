"""Shared test fixtures: where the golden parity fixtures and test audio live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

"""The rows of a job, checked on the driver: for :func:`~rvcfast.integrations.ray.convert_files`
exactly one per planned input (per voice, with several voices), in the plan's order.

The dataset pipeline gives back one row per row it was given; a row it lost (a block dropped
on the way) or gave back twice would break that, and the manifest with it. So the driver
matches what came back against what it planned: a planned input with no row becomes an
``error`` row saying no result came back (its output, if any, is left as it is: a rerun with
``skip_existing`` picks the file up), and of an input given back twice one row is kept, the
one that got furthest (``ok``, then ``skipped``, then ``error``; a ``skipped`` row that only
repeats an earlier row of the job says nothing of the file and comes last).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from ._schema import REPEAT_NOTE, STAGES

__all__ = ["collect_rows", "one_per_input", "known_schema"]


def _rank(row: dict[str, Any]) -> int:
    """Which of two rows of one input is kept: the lower, the one that got furthest. A repeat
    of an earlier row is ``skipped`` whatever became of the file: below an ``error``."""
    status = row.get("status")
    if status == "skipped" and REPEAT_NOTE in str(row.get("warnings") or ""):
        return 3
    return {"ok": 0, "skipped": 1}.get(str(status), 2)


def known_schema(ds: Any) -> Any:
    """A user's dataset's schema when known without running anything, else ``None``: also when its
    blocks disagree on a column's type (an ``output_path`` of text in one block, of ints in
    another), whose rows the tasks check one by one (an error row each that names no file)."""
    import pyarrow as pa

    try:
        return ds.schema(fetch_if_missing=False)
    except (pa.ArrowException, TypeError, ValueError):
        return None


def collect_rows(ds: Any) -> list[dict[str, Any]]:
    """Every row the job's dataset gives back, as dictionaries (runs the job)."""
    return [dict(row) for row in ds.iter_rows()]


def _planned(items: list[dict[str, str]], voices: list[str] | None) -> dict[tuple[str, str | None], str | None]:
    """``(input, voice)`` → the planned output, in the plan's order (``voice`` ``None`` in a one-voice job)."""
    if voices is None:
        return {(item["path"], None): item["output_path"] for item in items}
    return {
        (item["path"], voice): output
        for item in items
        for voice, output in zip(voices, json.loads(item["voice_outputs"]))
    }


def _lost_row(path: str, voice: str | None, output: str | None) -> dict[str, Any]:
    """The ``error`` row of a planned input (and voice) for which no row came back."""
    which = f" (voice {voice!r})" if voice is not None else ""
    row: dict[str, Any] = {"path": path}
    if voice is not None:
        row["voice"] = voice
    row.update(
        output_path=output, status="error",
        error=(
            f"{path}: no result came back from the cluster for this file{which}: its row was lost on the way; "
            "run the job again to convert it (skip_existing=True resumes with the files not done)"
        ),
        seconds=0.0, audio_seconds=0.0, node=None, host=None, warnings="",
    )
    row.update({f"{s}_s": 0.0 for s in STAGES})
    return row


def one_per_input(items: list[dict[str, str]], rows: list[dict[str, Any]], voices: list[str] | None = None) -> list[dict[str, Any]]:
    """Exactly one row per planned input (per voice: ``voices``, the job's voice names), in the
    plan's order: a missing one is an ``error`` row, of two for one input the one that got
    furthest is kept. Rows given back twice, or for no planned input, are dropped with a warning."""
    planned = _planned(items, voices)
    kept: dict[tuple[str, str | None], dict[str, Any]] = {}
    dropped = 0
    for row in rows:
        key = (row.get("path"), row.get("voice") if voices is not None else None)
        if key not in planned:
            dropped += 1
            continue
        other = kept.get(key)
        if other is not None:
            dropped += 1
            if _rank(row) >= _rank(other):
                continue
        kept[key] = row
    if dropped:
        warnings.warn(
            f"the cluster gave back {dropped} row(s) twice or for no planned file; the job's rows keep one per file",
            RuntimeWarning, stacklevel=3,
        )
    return [kept.get(key) or _lost_row(key[0], key[1], output) for key, output in planned.items()]

"""Progress inside :meth:`Engine.run <rvcfast.Engine.run>` and :meth:`Engine.stream <rvcfast.Engine.stream>`.

``on_progress(k, fraction)`` reports how far input ``k`` is, from 0 to 1. The work counted
is the model batches (content encoder, index, synthesizer) and, for an input whose F0 track
the engine computes block by block (an extractor with ``extract_blocks``: RMVPE, CREPE,
FCPE, hybrids; and an input of more than one block: over 82 s with RMVPE's defaults, see
``docs/f0.md``), its F0 blocks too:
they are the first :data:`F0_PROGRESS_SHARE` of its fraction, the model batches the rest.
For every other input (a short one, F0 given by the caller, a tracker without blocks:
harvest, dio, pm, most plugins) the fraction is the share of its segments through the
models, and F0 comes before the first call. The fraction never goes down and reaches 1.0
exactly once, after the input's last model batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from .errors import RvcfastError

__all__ = ["F0_PROGRESS_SHARE", "RunProgress", "stream_f0"]

#: The share of an input's progress given to its F0 track when that is computed block by
#: block (RMVPE on a CPU takes about a fifth of a conversion's time; the ETA a progress bar
#: draws from the fraction is about right during F0 when this share is).
F0_PROGRESS_SHARE = 0.2

Steps = list[Callable[[], Any]]
OnProgress = Callable[[int, float], None]


def _blocks(ext: Any, audio: np.ndarray) -> Steps | None:
    """The extractor's F0 blocks for ``audio``, or ``None`` when it has none (or cannot say)."""
    blocks = getattr(ext, "extract_blocks", None) if ext is not None else None
    if blocks is None:
        return None
    try:
        return list(blocks(audio))
    except (Exception, SystemExit):  # noqa: BLE001 - the whole-track call reports the failure
        return None


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class RunProgress:
    """``on_progress`` of one :meth:`Engine.run`: its inputs' F0 blocks, then model batches.

    ``items`` are the run's items (inputs first, then their further channels; each has
    ``prep``, ``owner``, ``channels``, ``error``, ``buffer``, ``synthesized``, ``timings``).
    ``on_progress=None`` (a run given only ``cancel``) still tracks long inputs' F0 block by
    block, so that the run can stop between blocks, and reports nothing.
    """

    def __init__(self, items: list[Any], on_progress: OnProgress | None) -> None:
        self.items = items
        self.on_progress = on_progress
        self.steps: dict[int, Steps] = {}  # item position -> its F0 blocks (only inputs of several)
        self.done: dict[int, int] = {}  # item position -> blocks computed
        self.failed: set[int] = set()  # owners whose F0 failed: no further calls

    def split(self, ext: Any, members: list[int]) -> list[int]:
        """The ``members`` whose F0 goes in the extractor's one batched call (inputs of one
        block, or an extractor without blocks); the others are kept for :meth:`track`."""
        batched = []
        for i in members:
            steps = _blocks(ext, self.items[i].prep.padded)
            if steps is not None and len(steps) > 1:
                self.steps[i] = steps
                self.done[i] = 0
            else:
                batched.append(i)
        return batched

    def stepped(self) -> list[int]:
        return list(self.steps)

    def track(self, i: int, name: str, cancel: Callable[[], None]) -> np.ndarray | BaseException:
        """Item ``i``'s F0 track, block by block, reporting its owner after each block (or the
        exception a block raised); ``cancel()`` is called before each block."""
        item, parts = self.items[i], []
        for step in self.steps[i]:
            cancel()  # raises Cancelled: the run stops (not this input's failure)
            t0 = time.perf_counter()
            try:
                parts.append(np.asarray(step()))
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - this input's failure
                self.failed.add(item.owner)
                if isinstance(exc, SystemExit):  # must not end the command or the server
                    exc = RvcfastError(f"F0 backend {name!r} called sys.exit({exc.code!r})")
                return exc
            finally:
                item.timings["f0"] = item.timings.get("f0", 0.0) + time.perf_counter() - t0
            self.done[i] += 1
            self._report_f0(item.owner)
        return _join(parts)

    def _group(self, owner: int) -> list[int]:
        """Positions of input ``owner``'s items (the input, then its further channels)."""
        return [i for i, it in enumerate(self.items) if it.owner == owner]

    def _share(self, owner: int) -> float:
        return F0_PROGRESS_SHARE if any(self.items[i].owner == owner for i in self.steps) else 0.0

    def _report_f0(self, owner: int) -> None:
        if owner in self.failed or self.on_progress is None:
            return
        weights = done = 0.0
        for i in self._group(owner):
            n = float(self.items[i].prep.padded.shape[0])
            weights += n
            done += n * (self.done[i] / len(self.steps[i]) if i in self.steps else 1.0)
        self.on_progress(owner, self._share(owner) * min(done / weights, 1.0) if weights else 0.0)

    def report(self, owners: set[int]) -> None:
        """After a model batch: each input in ``owners`` that has not failed (all its channels)."""
        if self.on_progress is None:
            return
        for k in sorted(owners):
            group = [self.items[k], *self.items[k].channels]
            if any(g.error is not None or g.buffer is None for g in group):
                continue
            total = sum(g.buffer.shape[0] for g in group)
            done = sum(g.synthesized for g in group)
            if not total or done >= total:
                self.on_progress(k, 1.0)  # exactly once: a later batch has none of its segments
                continue
            share = self._share(k)
            self.on_progress(k, share + (1.0 - share) * done / total)


def stream_f0(
    ext: Any, audio: np.ndarray, pauses: bool, on_progress: OnProgress | None
) -> Generator[None, None, tuple[np.ndarray | None, float]]:
    """:meth:`Engine.stream`'s F0 block by block: ``(track, share)``, a ``None`` yielded between
    blocks when ``pauses``, ``on_progress(0, ...)`` after each block when the track has several.

    The track is ``None`` (the engine computes it whole) when the extractor has no blocks, or
    when only ``on_progress`` asked for blocks and there is one; ``share`` is the F0's share of
    the fraction (0 unless there are several blocks)."""
    steps = _blocks(ext, audio)
    if not steps or (not pauses and len(steps) < 2):
        return None, 0.0
    share = F0_PROGRESS_SHARE if len(steps) > 1 else 0.0
    parts: list[np.ndarray] = []
    for k, step in enumerate(steps):
        if k and pauses:
            yield None
        try:
            parts.append(np.asarray(step()))
        except SystemExit as exc:  # a plugin's: must not end the command or the server
            raise RvcfastError(f"F0 backend {getattr(ext, 'name', '?')!r} called sys.exit({exc.code!r})") from None
        if share and on_progress is not None:
            on_progress(0, share * (k + 1) / len(steps))
    return _join(parts), share

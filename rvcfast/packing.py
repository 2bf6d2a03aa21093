"""Length-budget batching: one packer for every stage that pads items into shared passes.

A padded pass over ``count`` items costs about ``count x longest`` (every item is padded
to the longest one). :func:`pack` groups consecutive items so that this cost stays within
a budget; the decoder windows of the synthesizer, FCPE's padded passes and RMVPE's
equal-length batches all use it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pack"]


def pack(
    lengths: Sequence[int],
    budget: int | None,
    *,
    max_items: int | None = None,
    floor: int = 0,
) -> list[list[int]]:
    """Group consecutive items into passes whose padded size fits ``budget``.

    Items are taken in the order given (sort them first to pack, e.g., longest first) and
    added greedily to the current group while

    * ``max(longest length in the group, floor) * count <= budget`` and
    * ``count <= max_items``;

    otherwise the item starts a new group. An item that is alone over the budget forms a
    group of its own, and ``budget == 0`` puts every item alone. ``budget=None`` means no
    size limit (only ``max_items`` splits).

    Args:
        lengths: the length (frames, samples, ...) of each item, all ``>= 0``.
        budget: the most padded elements one group may cover, or ``None`` for no limit.
        max_items: the most items per group (``None``: no limit).
        floor: a group is never counted shorter than this (a minimum pass length).

    Returns:
        The groups as lists of indices into ``lengths``; concatenated, they are
        ``0 .. len(lengths) - 1`` in order.

    Raises:
        ValueError: a negative length, budget or floor, or ``max_items < 1``.
    """
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0 or None, got {budget}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    groups: list[list[int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        if n < 0:
            raise ValueError(f"lengths must be >= 0, got {n} at position {i}")
        if groups and _fits(len(groups[-1]) + 1, max(longest, n, floor), budget, max_items):
            groups[-1].append(i)
            longest = max(longest, n)
        else:
            groups.append([i])
            longest = n
    return groups


def _fits(count: int, padded_length: int, budget: int | None, max_items: int | None) -> bool:
    """Whether a group of ``count`` items padded to ``padded_length`` is allowed."""
    if max_items is not None and count > max_items:
        return False
    if budget is None:
        return True
    return budget > 0 and padded_length * count <= budget

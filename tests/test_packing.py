"""Tests of rvcfast.packing.pack: the length-budget packer shared by the batching stages."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rvcfast.packing import pack


def _cost(lengths: list[int], group: list[int], floor: int) -> int:
    return max(max(lengths[i] for i in group), floor) * len(group)


def _allowed(lengths: list[int], group: list[int], budget: int | None, max_items: int | None, floor: int) -> bool:
    """Whether ``group`` may be one pass, straight from the rules (independent of pack's code)."""
    if len(group) == 1:
        return True  # an item alone is always a pass, even over the budget
    if max_items is not None and len(group) > max_items:
        return False
    if budget is None:
        return True
    return budget > 0 and _cost(lengths, group, floor) <= budget


def _check(lengths: list[int], budget: int | None, max_items: int | None, floor: int) -> None:
    groups = pack(lengths, budget, max_items=max_items, floor=floor)
    # consecutive, every item exactly once, in order
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    assert all(g for g in groups)
    for g, nxt in zip(groups, groups[1:] + [None]):
        assert _allowed(lengths, g, budget, max_items, floor), (lengths, budget, max_items, floor, groups)
        # greedy: the next item could not have joined this group
        if nxt is not None:
            assert not _allowed(lengths, g + [nxt[0]], budget, max_items, floor), (lengths, groups)


@given(
    st.lists(st.integers(0, 50), max_size=30),
    st.one_of(st.none(), st.integers(0, 400)),
    st.one_of(st.none(), st.integers(1, 6)),
    st.integers(0, 40),
)
@settings(max_examples=400, deadline=None)
def test_pack_invariants(lengths: list[int], budget: int | None, max_items: int | None, floor: int) -> None:
    _check(lengths, budget, max_items, floor)


def test_pack_exhaustive_small_cases() -> None:
    for n in range(5):
        for lengths in itertools.product((0, 1, 3, 7), repeat=n):
            for budget in (None, 0, 1, 6, 7, 14, 21, 100):
                for max_items in (None, 1, 2, 3):
                    for floor in (0, 2, 5):
                        _check(list(lengths), budget, max_items, floor)


def test_pack_examples() -> None:
    spans = [544, 544, 136, 900]
    assert pack(spans, 0) == [[0], [1], [2], [3]]
    assert pack(spans, 1700) == [[0, 1, 2], [3]]  # 3 x 544 = 1632; 4 x 900 would not fit
    assert pack(spans, 10**6) == [[0, 1, 2, 3]]
    assert pack([2000, 10, 10], 100) == [[0], [1, 2]]  # the long one is alone over budget
    assert pack([5] * 7, None, max_items=3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert pack([10, 10, 10], 128, floor=64) == [[0, 1], [2]]  # counted as 64 frames each
    assert pack([], 10) == []


@pytest.mark.parametrize(
    "kwargs",
    [dict(lengths=[1, -1], budget=5), dict(lengths=[1], budget=-1), dict(lengths=[1], budget=5, max_items=0),
     dict(lengths=[1], budget=5, floor=-2)],
)
def test_pack_rejects_bad_arguments(kwargs: dict) -> None:
    lengths, budget = kwargs.pop("lengths"), kwargs.pop("budget")
    with pytest.raises(ValueError):
        pack(lengths, budget, **kwargs)

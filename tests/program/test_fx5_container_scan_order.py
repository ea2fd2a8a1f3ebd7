"""The container scan looks at a dict's entries in insertion order and charges each object once
against the tree's budget of ``_SCAN_CAP`` objects (checking for a Field and then for one the walk
does not reach reads the same objects twice)."""

from __future__ import annotations

import warnings

import pytest

from canvas_core import Field, compile_schema
from canvas_core.program._tree import _SCAN_CAP
from tests.program.test_fx2_container_scan import Robot


def _warned(robot) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compile_schema(robot, T=1).layout.region_names == ("cam",)
    return sorted(p for p in ("a", "b") if any(f"{p} is a dict holding Fields" in str(w.message) for w in caught))


def test_a_field_first_in_a_big_dict_is_warned_about():
    n = _SCAN_CAP * 6 // 10
    assert _warned(Robot(a={"grip": Field(1, 1), **{f"k{i}": i for i in range(n)}})) == ["a"]


def _middle(n: int) -> dict:
    half = {f"k{i}": i for i in range(n // 2)}
    return {**half, "grip": Field(1, 1), **{f"m{i}": i for i in range(n // 2)}}


def test_each_object_is_charged_once():
    # the scan stops at the Field in the middle either way round: 3/10 of the budget per dict,
    # twice that (6/10) per dict if each object were charged once per pass
    n = _SCAN_CAP * 6 // 10
    assert _warned(Robot(a=_middle(n), b=_middle(n))) == ["a", "b"]


def test_an_earlier_big_container_uses_up_the_budget():
    # documented in docs/limits.md: the budget is shared, so a Field past it goes unwarned
    a = {f"k{i}": i for i in range(_SCAN_CAP)}
    assert _warned(Robot(a=a, b={"grip": Field(1, 1)})) == []


@pytest.mark.parametrize("at", [0, 1, _SCAN_CAP - 2])
def test_every_entry_within_the_budget_is_looked_at(at):
    a = {f"k{i}": i for i in range(_SCAN_CAP - 1)}
    items = list(a.items())
    items.insert(at, ("grip", Field(1, 1)))
    assert _warned(Robot(a=dict(items))) == ["a"]


def test_a_field_nested_in_the_first_entry_is_found_before_later_entries():
    # depth first, in order: the first entry's contents come before the next entries
    assert _warned(Robot(a={"x": [[Field(1, 1)]], "d": list(range(2 * _SCAN_CAP))})) == ["a"]


def test_a_big_data_buffer_is_not_queued_whole():
    # breadth first queued every element of every list before the budget ran out (82 MB here)
    import tracemalloc

    buffer = {f"ep{i}": [0.0] * 2_000 for i in range(500)}  # a million references
    tracemalloc.start()
    try:
        _warned(Robot(a=buffer))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000

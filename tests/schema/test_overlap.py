"""Overlapping regions are accepted as canvas-engineering accepts them, with a warning naming both
(silenced by allow_overlap=True); the check is O(n log n) (`schema/overlap.py`) and agrees with the
obvious pairwise reference, on both of its paths."""

from __future__ import annotations

import itertools
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import canvas_core.schema.overlap as overlap
from canvas_core.compiler.lowering import lower
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
from canvas_core.schema.overlap import first_overlap


def _share(a, b):
    return all(max(a[k], b[k]) < min(a[k + 1], b[k + 1]) for k in range(0, len(a), 2))


def reference(boxes):
    """Every overlapping pair (the obvious O(n^2) check)."""
    return {(i, j) for i, j in itertools.combinations(range(len(boxes)), 2) if _share(boxes[i], boxes[j])}


@st.composite
def box_lists(draw):
    dims = draw(st.integers(1, 3))
    size = draw(st.integers(1, 6))
    n = draw(st.integers(0, 12))
    boxes = []
    for _ in range(n):
        b = []
        for _ in range(dims):
            lo = draw(st.integers(0, size))
            b += [lo, draw(st.integers(lo, size))]  # empty boxes included
        boxes.append(tuple(b))
    return boxes


@settings(max_examples=300, deadline=None)
@given(box_lists(), st.booleans())
def test_first_overlap_matches_the_pairwise_reference(boxes, sweep):
    saved = overlap.MAX_CELLS
    overlap.MAX_CELLS = 0 if sweep else saved  # 0: always the sweep path
    try:
        got = first_overlap(boxes)
    finally:
        overlap.MAX_CELLS = saved
    pairs = reference(boxes)
    if not pairs:
        assert got is None
    else:
        assert got in pairs


def test_an_overlap_is_accepted_with_a_warning_naming_both_regions():
    regions = {"a": (0, 5, 0, 4, 0, 4), "b": (2, 3, 3, 6, 3, 6)}
    with pytest.warns(UserWarning, match=r"'a'.*'b'.*overlap.*allow_overlap=True"):
        lay = CanvasLayout(T=5, H=8, W=8, d_model=16, regions=regions)
    assert lay.region_at(lay.flat_index(2, 3, 3)) == ["a", "b"]
    plan = lower(CanvasTopology(connections=[Connection("a", "b")]), lay)  # the layout is usable
    assert plan.n == lay.num_positions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CanvasLayout(T=5, H=8, W=8, d_model=16, regions=regions, allow_overlap=True)
        CanvasLayout(T=5, H=8, W=8, d_model=16, regions={"a": (0, 5, 0, 4, 0, 4), "b": (0, 5, 4, 8, 0, 4)})


def test_twenty_thousand_regions_validate():
    # one region per spatial cell, all frames: the pairwise check made 2 * 10^8 comparisons here
    regions = {f"r{i}": (0, 4, i // 200, i // 200 + 1, i % 200, i % 200 + 1) for i in range(20000)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lay = CanvasLayout(T=4, spatial_shape=(100, 200), d_model=8, regions=regions)
    assert len(lay.regions) == 20000
    regions["late"] = (3, 4, 99, 100, 150, 200)
    with pytest.warns(UserWarning, match="'late'"):
        CanvasLayout(T=4, spatial_shape=(100, 200), d_model=8, regions=regions)
    boxes = [tuple(b) for b in regions.values()]
    saved = overlap.MAX_CELLS
    overlap.MAX_CELLS = 0
    try:
        i, j = first_overlap(boxes)
    finally:
        overlap.MAX_CELLS = saved
    assert j == 20000 and _share(boxes[i], boxes[j])

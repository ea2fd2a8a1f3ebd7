"""``rect_cover`` and the tile pairs of a tile mask are computed a row / a dim at a time with
numpy, and give exactly what the per-cell and per-tile loops they replaced gave (same boxes,
same order: plans depend on it).  The references below are those loops, kept here."""

import itertools
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from canvas_core import CanvasLayout, MaskSpec, rect_cover
from canvas_core.schema import mask_pairs, rects
from canvas_core.schema.mask_pairs import mask_index_arrays


def _reference_cover(mask):
    """The greedy as it was written first: per true cell in row-major order, grow a box."""
    arr = np.asarray(mask, dtype=bool)
    todo = arr.copy()
    out = []
    for flat in np.flatnonzero(todo.ravel()):
        start = np.unravel_index(int(flat), arr.shape)
        if not todo[start]:
            continue
        lo = [int(v) for v in start]
        hi = [v + 1 for v in lo]
        for d in range(arr.ndim - 1, -1, -1):
            while hi[d] < arr.shape[d]:
                sl = tuple(slice(lo[k], hi[k]) if k != d else slice(hi[d], hi[d] + 1) for k in range(arr.ndim))
                if todo[sl].all():
                    hi[d] += 1
                else:
                    break
        todo[tuple(slice(a, b) for a, b in zip(lo, hi))] = False
        out.append(tuple(zip(lo, hi)))
    return out


def _reference_tile_pairs(spec, layout, src, dst):
    """The tile pairs as the per-tile loop made them."""
    sbox, dbox = mask_pairs._region_box(layout, src), mask_pairs._region_box(layout, dst)
    tile = spec.tile_for(len(sbox) - 1)
    origin = [lo for lo, _ in sbox[1:]]
    pairs = []
    for key in itertools.product(*[range(-(-(hi - lo) // t)) for (lo, hi), t in zip(sbox[1:], tile)]):
        sb = (sbox[0],) + tuple((o + k * t, min(o + (k + 1) * t, hi))
                                for k, t, o, (_, hi) in zip(key, tile, origin, sbox[1:]))
        db = (dbox[0],) + tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(dbox[1:], sb[1:]))
        if any(a >= b for a, b in db[1:]):
            db = dbox
        pairs.append((sb, db))
    return pairs


@st.composite
def _patterns(draw, max_dims=2):
    """Bool arrays of 1..``max_dims`` dims (sides 1..40 for 1-d and 2-d, smaller above), random
    at a drawn density, or one of the shapes the greedy treats specially."""
    nd = draw(st.integers(1, max_dims))
    side = 40 if nd <= 2 else 6
    shape = tuple(draw(st.integers(1, side)) for _ in range(nd))
    kind = draw(st.sampled_from(["random", "full", "empty", "cell", "row_stripes", "col_stripes",
                                 "checker", "blocks"]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    if kind == "random":
        return rng.random(shape) < draw(st.sampled_from([0.05, 0.3, 0.5, 0.8, 0.97]))
    if kind in ("full", "empty"):
        return np.full(shape, kind == "full")
    if kind == "cell":
        m = np.zeros(shape, dtype=bool)
        m[tuple(int(rng.integers(0, n)) for n in shape)] = True
        return m
    if kind == "row_stripes":
        return grid[0] % draw(st.integers(2, 4)) == 0
    if kind == "col_stripes":
        return grid[-1] % draw(st.integers(2, 4)) != 0
    if kind == "checker":
        return grid.sum(axis=0) % 2 == 0
    cells = tuple(max(1, n // 3) for n in shape)  # big blocks, a few cells flipped
    coarse = rng.random(tuple(-(-n // c) for n, c in zip(shape, cells))) < 0.5
    m = np.kron(coarse, np.ones(cells, dtype=bool))[tuple(slice(0, n) for n in shape)]
    return m ^ (rng.random(shape) < 0.02)


def _cover_ranges(mask):
    return [r.ranges for r in rect_cover(mask, min_area=1)]


@pytest.mark.parametrize("wide_runs", [None, 0, 10 ** 9], ids=["auto", "numpy_rows", "python_runs"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(mask=_patterns())
def test_cover_is_the_per_cell_greedy(mask, wide_runs, monkeypatch):
    """Both scans (whole rows with numpy, or run by run) give the reference's boxes in order."""
    if wide_runs is not None:
        monkeypatch.setattr(rects, "_WIDE_RUNS", wide_runs)
    assert _cover_ranges(mask) == _reference_cover(mask)


@settings(max_examples=80, deadline=None)
@given(mask=_patterns(max_dims=4))
def test_cover_of_higher_dims_is_the_per_cell_greedy(mask):
    assert _cover_ranges(mask) == _reference_cover(mask)


@pytest.mark.parametrize("mask", [
    np.zeros((0, 3), dtype=bool), np.zeros((3, 0), dtype=bool), np.zeros(0, dtype=bool),
    np.ones(1, dtype=bool), np.array([[0, 1], [1, 1]]), np.tril(np.ones((6, 6), dtype=bool)),
    np.triu(np.ones((6, 6), dtype=bool)), np.eye(5, 7, k=1, dtype=bool),
    np.array([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool), np.array([[1, 1, 1, 1], [1, 0, 1, 1]], dtype=bool)])
def test_cover_of_edge_shapes(mask):
    """Empty sides, growth that stops at a hole, a run that grows under one opened above."""
    assert _cover_ranges(mask) == _reference_cover(mask)


def _python_calls(fn):
    """Python and builtin function calls made by ``fn()`` (a count of work, not a time)."""
    calls = [0]

    def count(frame, event, arg):
        calls[0] += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        out = fn()
    finally:
        sys.setprofile(None)
    return calls[0], out


@pytest.mark.parametrize("wide_runs", [None, 0, 10 ** 9], ids=["auto", "numpy_rows", "python_runs"])
def test_cover_calls_stay_few_per_rectangle(wide_runs, monkeypatch):
    """A checkerboard (one rectangle per true cell, the 1024 x 1024 one took seconds to minutes):
    about 3 (numpy rows) or 10 (list appends of the run-by-run scan) calls per rectangle, where
    the per-cell loop made about 40 (an index conversion, slices and a numpy reduction per growth
    step, the checks of ``Rect``)."""
    if wide_runs is not None:
        monkeypatch.setattr(rects, "_WIDE_RUNS", wide_runs)
    mask = np.indices((64, 64)).sum(axis=0) % 2 == 0
    rect_cover(mask[:4, :4])  # imports out of the count
    calls, out = _python_calls(lambda: rect_cover(mask, min_area=1))
    assert len(out) == 64 * 32
    assert calls < 16 * len(out), calls


def test_cover_calls_do_not_grow_with_the_height():
    """Vertical stripes: the rectangles span every row; the per-cell loop tested each row of
    each one, the scan skips rows equal to the row above."""
    def calls(n):
        mask = np.tile(np.arange(32) % 2 == 0, (n, 1))
        count, out = _python_calls(lambda: rect_cover(mask, min_area=1))
        assert [r.ranges for r in out] == [((0, n), (c, c + 1)) for c in range(0, 32, 2)]
        return count

    calls(2)
    assert calls(512) - calls(16) < 50


@st.composite
def _tile_cases(draw):
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 7)) for _ in range(nd))
    T = draw(st.integers(1, 3))

    def box():
        t0 = draw(st.integers(0, T - 1))
        b = [t0, draw(st.integers(t0 + 1, T))]
        for n in shape:
            lo = draw(st.integers(0, n - 1))
            b += [lo, draw(st.integers(lo + 1, n))]
        return tuple(b)

    layout = CanvasLayout(T=T, d_model=8, spatial_shape=shape, allow_overlap=True,
                          regions={"a": box(), "b": box()})
    tile = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    return layout, MaskSpec(kind="tile", tile_shape=tile)


@settings(max_examples=150, deadline=None)
@given(case=_tile_cases())
def test_tile_pairs_are_the_per_tile_loop(case):
    """Random shapes, regions (overlapping, disjoint, nested) and tiles; both directions."""
    layout, spec = case
    for src, dst in (("a", "b"), ("b", "a"), ("a", "a")):
        want = _reference_tile_pairs(spec, layout, src, dst)
        assert mask_pairs._tile_pairs(spec, layout, src, dst) == want
        got = mask_index_arrays(spec, layout, src, dst)  # all tiles at once, not a box at a time
        assert len(got) == len(want)
        for (s, d), (sb, db) in zip(got, want):
            for arr, box in ((s, sb), (d, db)):
                assert arr.dtype == np.int64
                assert np.array_equal(arr, mask_pairs._indices_of_box(layout, box)), box


def test_tile_pair_calls_do_not_grow_per_tile():
    """One-cell tiles of a 64 x 64 region (4096 tiles; 65,536 took seconds): no calls per tile
    for the boxes, where the loop made a dozen (generators, zips, min / max per dim), nor for
    their index arrays (only a copy of the whole dst region for a tile without dst positions)."""
    layout = CanvasLayout(T=1, d_model=8, spatial_shape=(64, 64), allow_overlap=True,
                          regions={"a": (0, 1, 0, 64, 0, 64), "b": (0, 1, 8, 40, 0, 30)})
    spec = MaskSpec(kind="tile", tile_h=1, tile_w=1)
    mask_pairs._tile_pairs(spec, layout, "a", "b")  # imports out of the count
    calls, pairs = _python_calls(lambda: mask_pairs._tile_pairs(spec, layout, "a", "b"))
    assert len(pairs) == 64 * 64
    assert calls < len(pairs) / 4, calls
    calls, arrays = _python_calls(lambda: mask_index_arrays(spec, layout, "a", "b"))
    assert len(arrays) == 64 * 64
    assert calls < 2 * len(arrays), calls  # a box at a time took ~40 calls a tile

"""Lowering of tile and sparse masks is vectorised (compiler/mask_lowering.py) and makes exactly
the plan of the plain nested loops it replaced: the reference below is that loop, kept here."""

import dataclasses
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import canvas_core.compiler.lowering as lowering
from canvas_core import MaskSpec
from canvas_core.compiler.lowering import lower, runs_of
from canvas_core.compiler.mask_lowering import merged_runs
from canvas_core.compiler.temporal import link_ranges
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
from canvas_core.schema.masks import mask_to_index_pairs
import canvas_ref_dense_reference as ref  # registered by tests/conftest.py
import canvas_ref_strategies as gen  # registered by tests/conftest.py


def _loop_mask_rects(conn, layout, pk, links):
    """The reference: per mask pair, per link, per query run, per key run, one rectangle."""
    rects = []
    for src_idx, dst_idx in mask_to_index_pairs(conn.mask, layout, conn.src, conn.dst):
        s, d = np.asarray(src_idx, dtype=np.int64), np.asarray(dst_idx, dtype=np.int64)
        if s.size == 0 or d.size == 0:
            continue
        for lo, hi, dst_frame, w in links:
            q = s[(s // pk.vol >= lo) & (s // pk.vol < hi)]
            k = d[d // pk.vol == dst_frame]
            for a, b in (runs_of(np.sort(pk.inv[q])) if q.size and k.size else []):
                for c, e in runs_of(np.sort(pk.inv[k])):
                    rects.append((a, b, c, e, w))
    return rects


def _reference_groups(topology, layout):
    """fn -> rows ``(q0, q1, k0, k1, w, conn)`` and fn -> ``(N,)`` query weights, as the loops
    made them (the query weights from the merged query ranges of each connection)."""
    pk = lowering._Packing(layout)
    rows, qw = {}, {}
    for ci, conn in enumerate(topology.connections):
        fn = topology.resolve_fn(conn, layout)
        links = link_ranges(conn, layout)
        if lowering._mask_is_full(conn.mask):
            rects = lowering._full_rects(conn, pk, links)
        else:
            rects = _loop_mask_rects(conn, layout, pk, links)
        rows.setdefault(fn, []).extend((a, b, c, d, w, ci) for a, b, c, d, w in rects)
        diff, count = qw.setdefault(fn, (np.zeros(pk.n + 1), np.zeros(pk.n + 1, dtype=np.int64)))
        for a, b in lowering._merge([(a, b) for a, b, *_ in rects]):
            diff[a] += conn.weight
            diff[b] -= conn.weight
            count[a] += 1
            count[b] -= 1
    return rows, {fn: np.where(np.cumsum(c)[:-1] > 0, np.cumsum(d)[:-1], 0.0) for fn, (d, c) in qw.items()}


def _region_area(layout, name):
    b = layout.region_spec(name).bounds
    return int(np.prod([b[k + 1] - b[k] for k in range(2, len(b), 2)]))


@st.composite
def _masked_topologies(draw, layout):
    topology = draw(gen.topologies(layout, fns=("cross_attention", "linear_attention")))
    conns = []
    for conn in topology.connections:
        kind = draw(st.sampled_from(["tile", "sparse", "full", "none"]))
        if kind == "tile":
            mask = MaskSpec(kind="tile", tile_shape=tuple(draw(st.integers(1, 3)) for _ in layout.spatial_shape))
        elif kind == "sparse":
            rows, cols = _region_area(layout, conn.src), _region_area(layout, conn.dst)
            cells = draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
            mask = MaskSpec(kind="sparse", pattern=np.array(cells, dtype=int).reshape(rows, cols))
        else:
            mask = MaskSpec() if kind == "full" else None
        conns.append(dataclasses.replace(conn, mask=mask))
    return CanvasTopology(connections=conns)


def _assert_plan_is_reference(topology, layout):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # connections that link nothing
        plan = lower(topology, layout)
    rows, qw = _reference_groups(topology, layout)
    assert set(plan.groups) == set(rows)
    for fn, want in rows.items():
        g, want = plan.groups[fn], np.asarray(want, dtype=np.float64).reshape(-1, 6)
        for j, field in enumerate(("q0", "q1", "k0", "k1", "weight", "conn")):
            got = getattr(g, field)
            assert got.dtype == (np.float64 if field == "weight" else np.int64), field
            assert np.array_equal(got, want[:, j]), (fn, field)  # same rectangles, same order
        assert np.array_equal(plan.query_weight[fn], qw[fn])
    return plan


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_masked_lowering_makes_the_loop_plan(data):
    """Random layouts (overlapping regions, periods), offsets, fills and tile / sparse masks."""
    layout = data.draw(gen.layouts(max_T=6))
    topology = data.draw(_masked_topologies(layout))
    plan = _assert_plan_is_reference(topology, layout)
    assert torch.equal(plan.to_dense().float(), ref.reference_mask(topology, layout).float())


@pytest.mark.parametrize("kw", [{}, {"t_src": 0, "t_dst": -1}, {"t_src": 1}, {"t_dst": -2}])
def test_one_cell_tiles_over_many_frames(kw):
    """The reviewer's shape, smaller: one-cell tiles of a region on itself (many key runs per
    query run), every kind of offset."""
    layout = CanvasLayout(T=12, d_model=8, spatial_shape=(4, 5), regions={"a": (0, 12, 0, 4, 0, 5)})
    mask = MaskSpec(kind="tile", tile_h=1, tile_w=1)
    topology = CanvasTopology(connections=[Connection(src="a", dst="a", mask=mask, **kw)])
    plan = _assert_plan_is_reference(topology, layout)
    assert sum(g.n_rects for g in plan.groups.values()) >= 20 * 11  # a rectangle per cell and frame link


def test_runs_merge_across_frames_and_overlapping_regions():
    """A tile spanning the whole box: the query runs of all frames merge into one; an
    overlapping region splits them again."""
    layout = CanvasLayout(T=4, d_model=8, spatial_shape=(2, 4), allow_overlap=True,
                          regions={"a": (0, 4, 0, 2, 0, 4), "b": (1, 3, 0, 2, 1, 3)})
    topology = CanvasTopology(connections=[
        Connection(src="a", dst="a", mask=MaskSpec(kind="tile", tile_h=2, tile_w=4)),
        Connection(src="b", dst="a", mask=MaskSpec(kind="tile", tile_h=1, tile_w=2), t_dst=0),
        Connection(src="a", dst="b", mask=MaskSpec(kind="sparse", pattern=np.eye(8, 4, dtype=int)))])
    _assert_plan_is_reference(topology, layout)


def _python_calls(lower_it):
    """Python and builtin function calls made by ``lower_it()`` (a count of work, not a time)."""
    calls = [0]

    def count(frame, event, arg):
        calls[0] += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        plan = lower_it()
    finally:
        sys.setprofile(None)
    return calls[0], sum(g.n_rects for g in plan.groups.values())


@pytest.mark.parametrize("kind, kw", [("tile", {}), ("tile", {"t_src": 0, "t_dst": -1}), ("sparse", {})])
def test_python_work_does_not_grow_with_the_rectangles(kind, kw):
    """The reviewer's 106 s: the key runs were recomputed (several numpy calls) for every query
    run of every link of every mask pair.  Now the calls do not grow with the rectangles: 8x the
    frames gives up to 64x the rectangles and far fewer new calls than new rectangles.  (A sparse
    pattern's index lists are numpy arrays, a few calls per rectangle of the pattern's cover
    whatever the frames, in schema/mask_pairs.py; its case here uses all-frame links.)"""
    cells = (np.add.outer(np.arange(16), np.arange(16)) % 2).astype(int)
    mask = MaskSpec(kind="tile", tile_h=1, tile_w=1) if kind == "tile" else MaskSpec(kind="sparse", pattern=cells)

    def lower_on(T):
        layout = CanvasLayout(T=T, d_model=8, spatial_shape=(4, 4), regions={"a": (0, T, 0, 4, 0, 4)})
        return lambda: lower(CanvasTopology(connections=[Connection(src="a", dst="a", mask=mask, **kw)]), layout)

    lower_on(2)()  # imports and caches out of the count
    small, large = _python_calls(lower_on(4)), _python_calls(lower_on(32))
    assert large[1] >= 5 * small[1]
    assert large[0] - small[0] < (large[1] - small[1]) / 2, (small, large)


@pytest.mark.parametrize("ranges", [[], [(3, 5)], [(0, 2), (2, 4)], [(5, 9), (0, 3), (1, 2), (8, 10)],
                                    [(0, 4), (1, 2), (6, 7), (7, 7)]])
def test_merged_runs_is_the_union(ranges):
    a = np.array([r[0] for r in ranges], dtype=np.int64)
    b = np.array([r[1] for r in ranges], dtype=np.int64)
    starts, stops = merged_runs(a, b)
    assert list(zip(starts.tolist(), stops.tolist())) == lowering._merge(ranges)

"""Lowering keyed by frame ranges: the same plans as the frame-tuple lowering it replaced, and a
refusal (not gigabytes of Python objects) when the per-frame work cannot fit the byte limit."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.compiler import lowering
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.temporal import connection_links, fill_frames, link_ranges, region_frames
from canvas_core.errors import SizeLimitError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec, TemporalFill
from canvas_core.schema.masks import MaskSpec, mask_to_index_pairs


# --- the reference: the lowering as it was before frame ranges (copied, frame tuples as keys) ---

def _old_connection_links(conn: Any, layout: Any) -> List[Tuple[Tuple[int, ...], int, float]]:
    s0, s1, ps = region_frames(layout, conn.src)
    d0, d1, pd = region_frames(layout, conn.dst)
    w = float(conn.weight)
    if s1 <= s0 or d1 <= d0 or w == 0.0:
        return []
    all_src = tuple(range(s0, s1))
    t_src, t_dst = conn.t_src, conn.t_dst
    if t_src is None and t_dst is None:
        return [(all_src, t, w) for t in range(d0, d1)]
    fill, order = conn.temporal_fill, conn.interpolation_order
    if t_dst is None:
        src = tuple(f for f in (ref + int(t_src) for ref in range(int(layout.T))) if s0 <= f < s1)
        return [(src, t, w) for t in range(d0, d1)] if src else []
    p_src = ps if t_src is not None else 1
    best: Dict[Tuple[Tuple[int, ...], int], float] = {}
    for ref in range(int(layout.T)):
        if t_src is None:
            src = all_src
        else:
            f = ref + int(t_src)
            if not (s0 <= f < s1):
                continue
            src = (f,)
        for t, fw in fill_frames((ref + int(t_dst)) * p_src, d0, d1, pd, fill, order):
            key, val = (src, t), w * fw
            if val != 0.0 and (key not in best or val > best[key]):
                best[key] = val
    return [(src, t, val) for (src, t), val in best.items()]


def _old_blocks(pk: Any) -> Dict[str, Dict[int, List[Tuple[int, int]]]]:
    out: Dict[str, Dict[int, List[Tuple[int, int]]]] = {}
    for name in pk.names:
        idx, fr = pk.idx[name], {}
        if idx.size:
            packed = np.sort(pk.inv[idx], axis=1)
            for i in range(packed.shape[0]):
                fr[pk.t0[name] + i] = lowering.runs_of(packed[i])
        out[name] = fr
    return out


def _old_full_rects(conn: Any, pk: Any, links: Any) -> List[Tuple[int, int, int, int, float]]:
    by_q: Dict[Any, List[Tuple[int, int]]] = {}
    q_cache: Dict[Tuple[int, ...], Tuple[Tuple[int, int], ...]] = {}
    for src_frames, dst_frame, w in links:
        q = q_cache.get(src_frames)
        if q is None:
            q = q_cache[src_frames] = tuple(pk.frames_runs(conn.src, src_frames))
        k = pk.frame_runs(conn.dst, dst_frame)
        if q and k:
            by_q.setdefault((q, w), []).extend(k)
    return [(a, b, c, d, w) for (q, w), ks in by_q.items() for (a, b) in q for (c, d) in lowering._merge(ks)]


def _old_mask_rects(conn: Any, layout: Any, pk: Any, links: Any) -> List[Tuple[int, int, int, int, float]]:
    rects = []
    for src_idx, dst_idx in mask_to_index_pairs(conn.mask, layout, conn.src, conn.dst):
        s, d = np.asarray(list(src_idx), dtype=np.int64), np.asarray(list(dst_idx), dtype=np.int64)
        if s.size == 0 or d.size == 0:
            continue
        for src_frames, dst_frame, w in links:
            q = s[np.isin(s // pk.vol, np.asarray(src_frames, dtype=np.int64))]
            k = d[d // pk.vol == dst_frame]
            if q.size and k.size:
                rects += [(a, b, c, e, w) for a, b in lowering.runs_of(np.sort(pk.inv[q]))
                          for c, e in lowering.runs_of(np.sort(pk.inv[k]))]
    return rects


def _old_plan(topology: Any, layout: Any, monkeypatch: Any) -> Any:
    with monkeypatch.context() as m:
        m.setattr(lowering, "link_ranges", _old_connection_links)
        m.setattr(lowering, "_full_rects", _old_full_rects)
        m.setattr(lowering, "_mask_rects", _old_mask_rects)
        plan = lower(topology, layout, warn_unlinked=False)
    return plan


def _assert_same(new: Any, old: Any, pk_blocks: Any) -> None:
    assert new.n == old.n and new.n_covered == old.n_covered
    np.testing.assert_array_equal(new.perm, old.perm)
    assert new.region_blocks == pk_blocks
    assert new.fn_of_connection == old.fn_of_connection
    assert list(new.groups) == list(old.groups)
    for fn, g in new.groups.items():
        o = old.groups[fn]
        for f in ("q0", "q1", "k0", "k1", "weight", "conn"):
            np.testing.assert_array_equal(getattr(g, f), getattr(o, f), err_msg=f"{fn}.{f}")
        assert g.connections == o.connections
        np.testing.assert_array_equal(new.query_weight[fn], old.query_weight[fn])


# --- random layouts: longer T than the shared strategies, offsets past both borders, periods ---

@st.composite
def _cases(draw: Any) -> Tuple[CanvasLayout, CanvasTopology]:
    T = draw(st.integers(1, 14))
    shape = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
    overlap = draw(st.booleans())
    regions = {}
    for i in range(draw(st.integers(1, 3))):
        bounds: List[int] = []
        for size in (T, *shape):
            lo = draw(st.integers(0, size - 1))
            bounds += [lo, draw(st.integers(lo + 1, size))]
        if not overlap and i:  # keep the regions disjoint: stack them on the first spatial axis
            break
        regions[f"r{i}"] = RegionSpec(bounds=tuple(bounds), period=draw(st.integers(1, 3)))
    layout = CanvasLayout(T=T, d_model=8, spatial_shape=shape, regions=regions, allow_overlap=overlap)
    names = list(regions)
    conns = []
    for _ in range(draw(st.integers(1, 5))):
        tile = bool(shape) and draw(st.booleans())
        conns.append(Connection(
            src=draw(st.sampled_from(names)), dst=draw(st.sampled_from(names)),
            weight=draw(st.sampled_from([1.0, 0.5, 2.0])),
            t_src=draw(st.one_of(st.none(), st.integers(-4, 4))),
            t_dst=draw(st.one_of(st.none(), st.integers(-5, 4))),
            temporal_fill=draw(st.sampled_from(list(TemporalFill))),
            interpolation_order=draw(st.integers(1, 3)),
            mask=MaskSpec(kind="tile", tile_shape=(2,) * len(shape)) if tile else None,
        ))
    return layout, CanvasTopology(conns)


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_t16_lower_same_plan_as_frame_tuple_lowering(case: Any) -> None:
    layout, topology = case
    mp = pytest.MonkeyPatch()
    try:
        old = _old_plan(topology, layout, mp)
    finally:
        mp.undo()
    new = lower(topology, layout, warn_unlinked=False)
    _assert_same(new, old, _old_blocks(lowering._Packing(layout)))


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_t16_lower_link_ranges_are_the_links(case: Any) -> None:
    layout, topology = case
    for c in topology.connections:
        old = _old_connection_links(c, layout)
        assert connection_links(c, layout) == old
        assert [(tuple(range(lo, hi)), t, w) for lo, hi, t, w in link_ranges(c, layout)] == old


@pytest.mark.parametrize("kw", [{}, {"t_src": 0, "t_dst": -1}, {"t_dst": -1}, {"t_src": 1},
                                {"t_src": -2, "t_dst": 3, "temporal_fill": "interpolate", "interpolation_order": 2},
                                {"t_src": 0, "t_dst": 5, "temporal_fill": "drop"}])
def test_t16_lower_one_region_over_many_frames_matches(kw: Dict[str, Any], monkeypatch: Any) -> None:
    # the auditor's shape: a 1-d canvas, one self connection, frames at both borders
    layout = CanvasLayout(T=300, spatial_shape=(), d_model=8, regions={"a": RegionSpec(bounds=(0, 300))})
    topology = CanvasTopology([Connection("a", "a", **kw)])
    old = _old_plan(topology, layout, monkeypatch)
    _assert_same(lower(topology, layout, warn_unlinked=False), old, _old_blocks(lowering._Packing(layout)))


def test_t16_lower_refuses_frame_work_over_the_byte_limit(monkeypatch: Any) -> None:
    # one connection with an offset over 4096 frames: ~4 MiB of per-frame Python objects
    layout = CanvasLayout(T=4096, spatial_shape=(), d_model=8, regions={"a": RegionSpec(bounds=(0, 4096))})
    topology = CanvasTopology([Connection("a", "a"), Connection("a", "a", t_src=0, t_dst=-1)])
    assert lower(topology, layout).groups  # fits the default limit
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(1 << 20))
    with pytest.raises(SizeLimitError) as err:
        lower(topology, layout)
    msg = str(err.value)
    assert "T=4,096" in msg and "connection #" in msg and "'a' -> 'a'" in msg
    assert "CANVAS_MAX_BYTES" in msg and "smaller T" in msg


def test_t16_lower_refuses_huge_T_before_building(monkeypatch: Any) -> None:
    # the auditor's 9.8 GB case: T = 2**24 with an offset; refused at once, before any frame loop
    T = 1 << 24
    layout = CanvasLayout(T=T, spatial_shape=(), d_model=8, regions={"a": RegionSpec(bounds=(0, T))})
    topology = CanvasTopology([Connection("a", "a", t_src=0, t_dst=-1)])
    monkeypatch.setattr(lowering, "_Packing", None)  # nothing may be built before the refusal
    with pytest.raises(SizeLimitError, match="up to 16,777,216 frame pairs"):
        lower(topology, layout)


def test_t16_lower_many_full_connections_are_not_charged_as_kept() -> None:
    # a reviewer's case: 100 regions densely connected over 1,024 frames lower in ~35 MiB, yet the
    # first estimate summed every connection's transient links (10.5 GiB) and refused them
    R, T = 100, 1024
    layout = CanvasLayout(T=T, d_model=8, spatial_shape=(R,),
                          regions={f"r{i}": RegionSpec(bounds=(0, T, i, i + 1)) for i in range(R)})
    lowering._check_frame_work(CanvasTopology.dense([f"r{i}" for i in range(R)]), layout)  # no refusal


class _Boom(Exception):
    pass


def _boom(*args: Any, **kwargs: Any) -> None:
    assert lowering._GC_STATE["depth"] == 1  # raised inside the paused section
    raise _Boom


def test_t16_lower_leaves_the_callers_gc_state(monkeypatch: Any) -> None:
    import gc

    layout = CanvasLayout(T=64, spatial_shape=(), d_model=8, regions={"a": RegionSpec(bounds=(0, 64))})
    topology = CanvasTopology([Connection("a", "a", t_src=0, t_dst=-1)])
    was = gc.isenabled()
    try:
        gc.disable()
        lower(topology, layout)
        assert not gc.isenabled()  # a caller that had it off keeps it off
        gc.enable()
        lower(topology, layout)
        assert gc.isenabled()
        with monkeypatch.context() as mp, pytest.raises(_Boom):
            mp.setattr(lowering, "_Packing", _boom)
            lower(topology, layout)
        assert gc.isenabled() and lowering._GC_STATE["depth"] == 0
    finally:
        (gc.enable if was else gc.disable)()

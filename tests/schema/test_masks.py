"""MaskSpec, Rect, rect_cover (property tests), mask_to_index_pairs / mask_rectangles."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from canvas_core import CanvasError, CanvasLayout, MaskSpec, Rect, rect_cover
from canvas_core.schema.masks import mask_rectangles, mask_to_index_pairs


@settings(max_examples=50, deadline=None)
@given(arrays(bool, st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)), st.integers(1, 8))
def test_rect_cover_exact_disjoint(mask, min_area):
    rects = rect_cover(mask, min_area=min_area)
    count = np.zeros(mask.shape, dtype=int)
    for r in rects:
        assert r.volume >= 1 and r.ndim == mask.ndim
        count[r.slices()] += 1
    assert (count <= 1).all()  # pairwise disjoint
    assert ((count == 1) == mask).all()  # union equals the mask


def test_rect_cover_torch_and_lists():
    import torch
    m = [[1, 1, 0], [1, 1, 0]]
    assert rect_cover(torch.tensor(m, dtype=torch.bool)) == rect_cover(m) == [Rect(0, 2, 0, 2)]
    with pytest.raises(CanvasError):
        rect_cover([[1, 0], [1]])
    with pytest.raises(CanvasError):
        rect_cover([[1]], min_area=0)


def test_rect_api():
    r = Rect(0, 2, 1, 3, 0, 4)
    assert r == Rect(ranges=((0, 2), (1, 3), (0, 4))) and r.volume == 16
    assert (r.t0, r.t1, r.h0, r.h1, r.w0, r.w1) == (0, 2, 1, 3, 0, 4)


def test_maskspec_dict_round_trip_and_errors():
    for m in [MaskSpec(), MaskSpec(kind="tile", tile_h=2, tile_w=3), MaskSpec(kind="tile", tile_shape=(2, 2, 1)),
              MaskSpec(kind="sparse", pattern=[[1, 0], [0, 1]])]:
        assert MaskSpec.from_dict(m.to_dict()) == m
        hash(m)
    for bad in [dict(kind="boxy"), dict(kind="tile", tile_h=0), dict(kind="sparse"),
                dict(kind="tile", tile_h=2, tile_shape=(2, 2)), dict(kind="sparse", pattern=[[1, 2]]),
                dict(kind="full", pattern=[[1]])]:
        with pytest.raises(CanvasError):
            MaskSpec(**bad)
    with pytest.raises(CanvasError):
        MaskSpec.from_dict({"kind": "tile", "tilesize": 3})


def _layout():
    return CanvasLayout(T=2, d_model=8, spatial_shape=(4, 6), regions={
        "a": (0, 2, 0, 4, 0, 3), "b": (0, 2, 0, 3, 3, 6), "c": (1, 2, 3, 4, 3, 6)})


def _coords(layout, name):
    b = layout.region_spec(name).bounds
    return [(t, y, x) for t in range(b[0], b[1]) for y in range(b[2], b[3]) for x in range(b[4], b[5])]


def _flat(layout, p):
    return (p[0] * layout.spatial_shape[0] + p[1]) * layout.spatial_shape[1] + p[2]


def _pairs_set(pairs):
    out = [(q, k) for qs, ks in pairs for q in qs for k in ks]
    assert len(out) == len(set(out))  # pairs do not overlap
    return set(out)


def _rect_set(layout, rects):
    out = []
    for s, d in rects:
        sp = itertools.product(*[range(a, b) for a, b in s.ranges])
        dp = list(itertools.product(*[range(a, b) for a, b in d.ranges]))
        out += [(_flat(layout, p), _flat(layout, q)) for p in sp for q in dp]
    assert len(out) == len(set(out))
    return set(out)


def _tile_reference(lay, spec_tile, src, dst):
    """Brute force of the documented tile rule: grid anchored at the src corner, the src tile's
    cell clipped to the src box; dst positions inside that clipped cell, or all of dst if none."""
    sb = lay.region_spec(src).bounds
    dst_pts = _coords(lay, dst)
    want = set()
    for p in _coords(lay, src):
        cell = []
        for k, t in enumerate(spec_tile):
            lo, hi = sb[2 + 2 * k], sb[3 + 2 * k]
            start = lo + (p[1 + k] - lo) // t * t
            cell.append((start, min(start + t, hi)))
        inside = [q for q in dst_pts if all(a <= q[1 + k] < b for k, (a, b) in enumerate(cell))]
        for q in inside or dst_pts:
            want.add((_flat(lay, p), _flat(lay, q)))
    return want


@pytest.mark.parametrize("tile", [(2, 2), (1, 3), (4, 6), (3, 1)])
def test_tile_pairs_match_brute_force(tile):
    lay = CanvasLayout(T=2, d_model=8, spatial_shape=(4, 6), allow_overlap=True, regions={
        "a": (0, 2, 0, 4, 0, 3), "b": (0, 2, 0, 3, 3, 6), "c": (1, 2, 3, 4, 3, 6), "d": (0, 1, 1, 4, 1, 6)})
    spec = MaskSpec(kind="tile", tile_shape=tile)
    for src, dst in [("a", "b"), ("b", "a"), ("a", "c"), ("a", "a"), ("a", "d"), ("d", "a"), ("d", "b")]:
        want = _tile_reference(lay, tile, src, dst)
        assert _pairs_set(mask_to_index_pairs(spec, lay, src, dst)) == want
        assert _rect_set(lay, mask_rectangles(spec, lay, src, dst)) == want


def test_tile_restricts_same_box_regions():
    # same spatial box at different frames: tile (1, 6) = row-to-same-row only
    lay = CanvasLayout(T=3, d_model=8, spatial_shape=(4, 6), regions={"x": (0, 2, 0, 4, 0, 6), "y": (2, 3, 0, 4, 0, 6)})
    got = _pairs_set(mask_to_index_pairs(MaskSpec(kind="tile", tile_h=1, tile_w=6), lay, "x", "y"))
    want = {(_flat(lay, p), _flat(lay, q)) for p in _coords(lay, "x") for q in _coords(lay, "y") if p[1] == q[1]}
    assert got == want


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_tile_pairs_match_canvas_engineering(data):
    ce = pytest.importorskip("canvas_engineering")
    from canvas_engineering.masks import MaskSpec as CeMask, mask_to_index_pairs as ce_pairs
    nd = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(1, 5)) for _ in range(nd))
    T = data.draw(st.integers(1, 2))

    def box():
        t0 = data.draw(st.integers(0, T - 1))
        b = [t0, data.draw(st.integers(t0 + 1, T))]
        for n in shape:
            lo = data.draw(st.integers(0, n - 1))
            b += [lo, data.draw(st.integers(lo + 1, n))]
        return tuple(b)

    regions = {"a": box(), "b": box()}
    tile = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    ours = CanvasLayout(T=T, d_model=4, spatial_shape=shape, regions=regions, allow_overlap=True)
    theirs = ce.CanvasLayout(T=T, d_model=4, spatial_shape=shape, regions=regions)
    norm = lambda ps: sorted((tuple(sorted(s)), tuple(sorted(d))) for s, d in ps if s and d)  # noqa: E731
    assert norm(mask_to_index_pairs(MaskSpec(kind="tile", tile_shape=tile), ours, "a", "b")) == \
        norm(ce_pairs(CeMask(kind="tile", tile_shape=tile), theirs, "a", "b"))


mask_specs = st.one_of(
    st.just(MaskSpec()),
    st.builds(lambda h, w: MaskSpec(kind="tile", tile_h=h, tile_w=w), st.integers(1, 5), st.integers(1, 5)),
    st.builds(lambda ts: MaskSpec(kind="tile", tile_shape=tuple(ts)), st.lists(st.integers(1, 4), min_size=1, max_size=3)),
    st.builds(lambda p: MaskSpec(kind="sparse", pattern=p),
              arrays(bool, st.tuples(st.integers(1, 4), st.integers(1, 4)))),
)


@settings(max_examples=40, deadline=None)
@given(mask_specs)
def test_maskspec_round_trips_through_schema_json(mask):
    from canvas_core import CanvasSchema, CanvasTopology, Connection
    lay = CanvasLayout(T=1, d_model=4, spatial_shape=(2, 2), regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})
    schema = CanvasSchema(lay, CanvasTopology(connections=[Connection("a", "b", mask=mask), Connection("b", "a")]))
    back = CanvasSchema.from_json(schema.to_json())
    assert back.topology.connections[0].mask == mask
    assert back.topology.connections[1].mask is None
    assert MaskSpec.from_dict(mask.to_dict()) == mask


def test_maskspec_bad_dict_in_schema_names_connection():
    from canvas_core import CanvasSchema, CanvasTopology, Connection
    lay = CanvasLayout(T=1, d_model=4, spatial_shape=(2,), regions={"a": (0, 1, 0, 1), "b": (0, 1, 1, 2)})
    d = CanvasSchema(lay, CanvasTopology(connections=[Connection("a", "b", mask=MaskSpec(kind="tile", tile_shape=(2,)))])).to_dict()
    conn = d["topology"][0] if isinstance(d["topology"], list) else d["topology"]["connections"][0]
    conn["mask"] = {"kind": "tile", "tile_h": 0}
    with pytest.raises(CanvasError, match="tile_h"):
        CanvasSchema.from_dict(d)


def test_sparse_pairs_match_pattern():
    lay = _layout()
    rng = np.random.default_rng(0)
    pat = rng.random((12, 9)) < 0.3
    spec = MaskSpec(kind="sparse", pattern=pat)
    sa, sb = _coords(lay, "a"), _coords(lay, "b")
    local = lambda p, b: (p[1] - b[2]) * (b[5] - b[4]) + (p[2] - b[4])
    ba, bb = lay.region_spec("a").bounds, lay.region_spec("b").bounds
    want = {(_flat(lay, p), _flat(lay, q)) for p in sa for q in sb if pat[local(p, ba), local(q, bb)]}
    assert _pairs_set(mask_to_index_pairs(spec, lay, "a", "b")) == want
    assert _rect_set(lay, mask_rectangles(spec, lay, "a", "b")) == want
    with pytest.raises(CanvasError, match="12x9|9"):
        mask_to_index_pairs(spec, lay, "b", "a")


def test_full_mask():
    lay = _layout()
    full = {(i, j) for i in lay.region_indices("a") for j in lay.region_indices("c")}
    assert _pairs_set(mask_to_index_pairs(MaskSpec(), lay, "a", "c")) == full
    assert _rect_set(lay, mask_rectangles(None, lay, "a", "c")) == full


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_rect_cover_empty_and_full(shape):
    assert rect_cover(np.zeros(shape, dtype=bool)) == []
    full = rect_cover(np.ones(shape, dtype=bool))
    assert full == [Rect(ranges=tuple((0, n) for n in shape))]


def test_bad_inputs_are_canvas_errors():
    lay = _layout()
    with pytest.raises(CanvasError, match="nowhere"):
        mask_to_index_pairs(MaskSpec(kind="tile", tile_h=2, tile_w=2), lay, "a", "nowhere")
    with pytest.raises(CanvasError, match="MaskSpec"):
        mask_rectangles("tile", lay, "a", "b")
    with pytest.raises(CanvasError, match="tile_shape"):
        mask_to_index_pairs(MaskSpec(kind="tile", tile_shape=(2,)), lay, "a", "b")
    with pytest.raises(CanvasError, match="dimension"):
        rect_cover(np.bool_(True))

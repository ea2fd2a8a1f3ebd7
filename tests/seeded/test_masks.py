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


@pytest.mark.parametrize("tile", [(2, 2), (1, 3), (4, 6), (3, 1)])
def test_tile_pairs_match_brute_force(tile):
    lay = _layout()
    spec = MaskSpec(kind="tile", tile_shape=tile)
    for src, dst in [("a", "b"), ("b", "a"), ("a", "c"), ("a", "a")]:
        want = {(_flat(lay, p), _flat(lay, q)) for p in _coords(lay, src) for q in _coords(lay, dst)
                if p[1] // tile[0] == q[1] // tile[0] and p[2] // tile[1] == q[2] // tile[1]}
        assert _pairs_set(mask_to_index_pairs(spec, lay, src, dst)) == want
        assert _rect_set(lay, mask_rectangles(spec, lay, src, dst)) == want


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

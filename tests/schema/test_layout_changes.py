"""A CanvasLayout changed after construction: every query answers from the same, checked regions.

``layout.regions`` is a mutable dict (as in canvas-engineering). The flat-index runs the layout
caches once went stale after ``layout.regions[name] = RegionSpec(...)``: ``region_indices`` and
``SpatiotemporalCanvas.place`` kept the old positions while ``region_at`` and the attention mask
used the new ones, and the new bounds were never checked.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvas_core.errors import CanvasTypeError, RegionError, SchemaError, UnknownRegionError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection, RegionSpec

from .strategies import layouts

torch.set_num_threads(1)


def _brute(layout: CanvasLayout, bounds) -> list:
    """Flat indices inside ``bounds``, by enumerating the whole grid (t-major)."""
    dims = (layout.T, *layout.spatial_shape)
    return [flat for flat, coords in enumerate(itertools.product(*(range(d) for d in dims)))
            if all(bounds[2 * k] <= c < bounds[2 * k + 1] for k, c in enumerate(coords))]


@st.composite
def _box(draw, layout: CanvasLayout):
    bounds = []
    for size in (layout.T, *layout.spatial_shape):
        lo = draw(st.integers(0, size - 1))
        bounds += [lo, draw(st.integers(lo + 1, size))]
    return tuple(bounds)


def _small() -> CanvasLayout:
    return CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 1, 0, 2)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_query_sees_a_region_moved_in_place(data):
    layout = data.draw(layouts(max_regions=3, max_dims=2, allow_overlap=True))
    for name in layout.regions:  # fill the runs cache with the old positions
        layout.region_indices(name)
    name = data.draw(st.sampled_from(sorted(layout.regions)))
    box = data.draw(_box(layout))
    layout.regions[name] = RegionSpec(bounds=box, period=data.draw(st.integers(1, 3)))
    want = _brute(layout, box)
    assert layout.region_indices(name) == want
    assert [i for t in range(box[0], box[1]) for i in layout.region_indices_at_t(name, t)] == want
    assert all(name in layout.region_at(i) for i in want)
    outside = set(range(layout.num_positions)) - set(want)
    assert not any(name in layout.region_at(i) for i in outside)
    mask = CanvasTopology([Connection(name, name)]).to_attention_mask(layout)
    assert sorted(set(torch.nonzero(mask)[:, 0].tolist())) == want


def test_place_and_mask_agree_after_a_move():
    from canvas_core.runtime.canvas import SpatiotemporalCanvas

    layout = _small()
    assert layout.region_indices("a") == [0, 1, 4, 5]
    layout.regions["a"] = RegionSpec((0, 2, 1, 2, 0, 2))  # the second row
    canvas = SpatiotemporalCanvas(layout)
    empty = canvas.create_empty(1)
    written = canvas.place(empty, torch.ones(1, 4, 4), "a") - canvas.place(empty, torch.zeros(1, 4, 4), "a")
    rows = torch.nonzero(written[0].abs().sum(-1) > 0).flatten().tolist()
    mask = CanvasTopology([Connection("a", "a")]).to_attention_mask(layout)
    assert rows == [2, 3, 6, 7] == sorted(set(torch.nonzero(mask)[:, 0].tolist()))
    assert layout.region_at(2) == ["a"] and layout.region_at(0) == []


@pytest.mark.parametrize("change", [
    lambda L: L.regions.__setitem__("b", RegionSpec((0, 1, 1, 2, 0, 2))),
    lambda L: L.regions.update({"b": RegionSpec((0, 1, 1, 2, 0, 2))}),
    lambda L: L.regions.update(b=RegionSpec((0, 1, 1, 2, 0, 2))),
    lambda L: L.regions.setdefault("b", RegionSpec((0, 1, 1, 2, 0, 2))),
    lambda L: L.regions.__ior__({"b": RegionSpec((0, 1, 1, 2, 0, 2))}),
    lambda L: setattr(L, "regions", {"a": L.regions["a"], "b": RegionSpec((0, 1, 1, 2, 0, 2))}),
], ids=["setitem", "update", "update-kw", "setdefault", "ior", "replace-dict"])
def test_every_way_of_adding_a_region_is_seen(change):
    layout = _small()
    assert layout.region_names == ("a",) and layout.region_indices("a") == [0, 1, 4, 5]
    change(layout)
    assert layout.region_names == ("a", "b")
    assert layout.region_indices("b") == [2, 3]
    layout.regions["b"] = RegionSpec((0, 1, 1, 2, 1, 2))  # tracked after a replaced dict too
    assert layout.region_indices("b") == [3]


@pytest.mark.parametrize("change", [
    lambda L: L.regions.__delitem__("a"), lambda L: L.regions.pop("a"), lambda L: L.regions.popitem(),
    lambda L: L.regions.clear(),
], ids=["del", "pop", "popitem", "clear"])
def test_a_removed_region_is_unknown(change):
    layout = _small()
    layout.region_indices("a")
    change(layout)
    with pytest.raises(UnknownRegionError, match="unknown region 'a'"):
        layout.region_indices("a")
    assert layout.region_at(0) == [] and layout.region_names == ()


@pytest.mark.parametrize("query", [
    lambda L: L.region_indices("a"), lambda L: L.region_runs("a", 0), lambda L: L.region_at(0),
    lambda L: L.region_names, lambda L: L.summary(), lambda L: L.loss_weight_mask(),
    lambda L: CanvasTopology([Connection("a", "a")]).to_attention_mask(L),
    lambda L: CanvasTopology([Connection("a", "a")]).validate(L), lambda L: CanvasSchema(L).to_json(),
], ids=["indices", "runs", "at", "names", "summary", "loss-mask", "attention-mask", "validate", "to-json"])
def test_new_bounds_are_checked_by_every_query(query):
    layout = _small()
    layout.region_indices("a")
    layout.regions["a"] = RegionSpec((0, 2, 0, 3, 0, 2))  # three rows on a two-row canvas
    with pytest.raises(RegionError, match=r"region 'a'.*leave the canvas.*changed after the CanvasLayout was built"):
        query(layout)
    layout.regions["a"] = RegionSpec((0, 2, 1, 2, 0, 2))  # fixed in place: usable again
    assert layout.region_indices("a") == [2, 3, 6, 7]


def test_a_moved_region_is_saved_where_it_now_is():
    layout = _small()
    layout.region_indices("a")
    layout.regions["a"] = RegionSpec((0, 2, 1, 2, 0, 2))
    loaded = CanvasSchema.from_json(CanvasSchema(layout).to_json())
    assert loaded.layout.region_indices("a") == layout.region_indices("a") == [2, 3, 6, 7]


def test_a_region_with_other_spatial_dims_is_named():
    layout = _small()
    layout.regions["a"] = RegionSpec((0, 2, 0, 1))
    with pytest.raises(RegionError, match=r"region 'a'.*spatial dimension"):
        layout.region_at(0)


def test_a_raw_tuple_is_refused_as_the_lowering_refuses_it():
    layout = _small()
    layout.regions["c"] = (0, 1, 1, 2, 0, 2)
    with pytest.raises(CanvasTypeError, match=r"region 'c' is a tuple .*build a new CanvasLayout"):
        layout.region_indices("a")


def test_an_overlap_added_later_is_warned_about():
    layout = _small()
    layout.regions["b"] = RegionSpec((0, 1, 0, 1, 1, 2))
    with pytest.warns(UserWarning, match=r"'a'.*'b'.*overlap"):
        assert layout.region_at(1) == ["a", "b"]


def test_changed_geometry_is_checked_and_used():
    layout = _small()
    layout.region_indices("a")
    layout.spatial_shape = (4, 2)
    assert layout.region_indices("a") == [0, 1, 8, 9] and (layout.H, layout.W) == (4, 2)
    layout.T = 1
    with pytest.raises(RegionError, match=r"region 'a'.*axis t"):
        layout.region_indices("a")
    layout.T = 0
    with pytest.raises(SchemaError, match="T was changed to 0"):
        layout.region_names


def test_copies_follow_their_own_regions():
    layout = _small()
    layout.region_indices("a")
    for other in (copy.deepcopy(layout), pickle.loads(pickle.dumps(layout))):
        other.regions["a"] = RegionSpec((0, 2, 1, 2, 0, 2))
        assert other.region_indices("a") == [2, 3, 6, 7]
    assert layout.region_indices("a") == [0, 1, 4, 5]
    shallow = copy.copy(layout)  # shares the regions dict: both see the change
    shallow.regions["a"] = RegionSpec((0, 1, 1, 2, 0, 2))
    assert shallow.region_indices("a") == layout.region_indices("a") == [2, 3]


def test_an_unchanged_layout_is_not_checked_again():
    layout = _small()
    layout.regions["b"] = RegionSpec((0, 1, 0, 1, 1, 2))  # overlaps 'a': warned once, on the next query
    with pytest.warns(UserWarning):
        layout.region_names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            layout.region_indices("a")
            layout.region_at(0)
    with pytest.warns(UserWarning):
        same = CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 1, 0, 1, 1, 2)})
    assert layout == same and layout.regions == dict(same.regions)

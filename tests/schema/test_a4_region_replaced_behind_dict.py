"""A region replaced with ``dict.__setitem__`` on ``layout.regions`` (bypassing the counting dict):
the next query of that region and the next module build see it, check it and count it; the
stamps modules record are the layout's own checked content; ``_validated`` is read by name."""

from __future__ import annotations

import pickle

import pytest

from canvas_core import CanvasLayout, RegionSpec
from canvas_core.errors import CanvasTypeError, RegionError, SchemaError
from canvas_core.schema.staleness import check_unchanged, layout_stamp


def _layout() -> CanvasLayout:
    return CanvasLayout(T=2, H=4, W=4, d_model=8,
                        regions={"a": (0, 2, 0, 2, 0, 2), "b": (0, 2, 2, 4, 2, 4)})


def test_region_indices_follow_a_region_replaced_behind_the_dict():
    layout = _layout()
    assert layout.region_indices("a") == [0, 1, 4, 5, 16, 17, 20, 21]  # fills the runs cache
    before = layout.revision
    dict.__setitem__(layout.regions, "a", RegionSpec((0, 1, 0, 1, 0, 4)))
    assert layout.region_indices("a") == [0, 1, 2, 3]  # not the cached runs of the old box
    assert layout.region_runs("a", 0) == [(0, 4)]
    assert layout.revision == before + 1


def test_a_bad_region_replaced_behind_the_dict_is_refused_by_name():
    layout = _layout()
    layout.region_indices("a")
    dict.__setitem__(layout.regions, "a", (0, 1, 0, 1, 0, 1))  # a raw tuple: never checked
    with pytest.raises(CanvasTypeError, match="region 'a' is a tuple .*not a RegionSpec"):
        layout.region_spec("a")
    dict.__setitem__(layout.regions, "a", RegionSpec((0, 2, 0, 9, 0, 1)))  # leaves the canvas
    with pytest.raises(RegionError, match="region 'a'.*leave the canvas on axis h"):
        layout.region_indices("a")


def test_a_module_built_after_the_replacement_makes_earlier_ones_stale():
    layout = _layout()
    old = layout_stamp(layout)
    check_unchanged(layout, old, "SpatiotemporalCanvas")
    dict.__setitem__(layout.regions, "b", RegionSpec((1, 2, 2, 4, 2, 4)))
    new = layout_stamp(layout)  # a build compares every region once
    assert new[0] == old[0] + 1
    check_unchanged(layout, new, "SpatiotemporalCanvas")
    with pytest.raises(SchemaError, match="SpatiotemporalCanvas was built from this CanvasLayout"):
        check_unchanged(layout, old, "SpatiotemporalCanvas")


def test_the_stamp_is_the_checked_content_and_a_change_undone_is_accepted():
    layout = _layout()
    stamp = layout_stamp(layout)
    assert stamp == (layout.revision, layout._content)
    layout.T = 3
    layout.region_names  # checked: revision grows
    layout.T = 2
    check_unchanged(layout, stamp, "CanvasAttention")  # same geometry again: still valid
    assert layout.revision == stamp[0] + 2


def test_h_alone_changed_is_refused_and_an_old_pickled_state_is_checked_again():
    layout = _layout()
    layout.spatial_shape = (4, 6)  # H / W follow spatial_shape
    assert layout.region_names == ("a", "b") and (layout.H, layout.W) == (4, 6)
    layout.H = 5
    with pytest.raises(SchemaError, match="H=5 disagrees with spatial_shape"):
        layout.region_names
    older = _layout()
    older.__dict__["_validated"] = tuple(older.__dict__["_validated"])  # as an older version pickled it
    again = pickle.loads(pickle.dumps(older))
    assert again.region_indices("b")[:2] == [10, 11] and again.revision == older.revision

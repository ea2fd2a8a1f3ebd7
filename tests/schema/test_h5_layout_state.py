"""Layout changes after construction: d_model / H / W checked on assignment, entries put in with
dict.__setitem__, dicts assigned as regions, the revision that modules compare, and the layout
without a spatial grid."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, RegionSpec
from canvas_core.errors import CanvasTypeError, RegionError, SchemaError, SizeLimitError


def _small() -> CanvasLayout:
    return CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 1, 0, 2)})


@pytest.mark.parametrize("value, error, text", [
    (0, SchemaError, "d_model was set to 0; it must be >= 1"),
    (-3, SchemaError, "d_model was set to -3"),
    ("64", CanvasTypeError, "d_model must be an integer"),
    (1 << 40, SizeLimitError, "d_model"),
])
def test_a_bad_d_model_assigned_later_is_refused(value, error, text):
    layout = _small()
    with pytest.raises(error, match=text):
        layout.d_model = value
    assert layout.d_model == 4


def test_a_good_d_model_assigned_later_is_kept():
    layout = _small()
    layout.d_model = 8
    assert layout.d_model == 8


@pytest.mark.parametrize("axis, value", [("H", 3), ("W", 5), ("H", None)])
def test_h_or_w_disagreeing_with_spatial_shape_is_refused_at_the_next_query(axis, value):
    layout = _small()
    setattr(layout, axis, value)  # accepted for now: spatial_shape may follow (canvas-engineering code does)
    with pytest.raises(SchemaError, match=rf"{axis}={value} disagrees with spatial_shape=\(2, 2\).*"
                                          r"assign layout.spatial_shape"):
        layout.region_indices("a")
    setattr(layout, axis, 2)
    layout.spatial_shape = (4, 2)  # only spatial_shape: H is read back from it
    assert layout.region_indices("a") == [0, 1, 8, 9] and layout.H == 4


def test_h_and_w_set_before_spatial_shape_are_accepted():
    layout = _small()
    layout.H, layout.W = 4, 4
    layout.spatial_shape = (4, 4)
    assert layout.num_positions == 2 * 16 and (layout.H, layout.W) == (4, 4)


def test_an_entry_added_with_dict_setitem_is_seen_and_checked():
    layout = _small()
    assert layout.region_names == ("a",)
    dict.__setitem__(layout.regions, "b", RegionSpec((0, 1, 1, 2, 0, 9)))  # bypasses the counting dict
    with pytest.raises(RegionError, match=r"region 'b'.*leave the canvas.*changed after the CanvasLayout"):
        layout.region_names
    dict.__setitem__(layout.regions, "b", RegionSpec((0, 1, 1, 2, 0, 2)))
    dict.__delitem__(layout.regions, "a")
    dict.__setitem__(layout.regions, "c", RegionSpec((1, 2, 0, 1, 0, 1)))
    assert layout.region_names == ("b", "c") and layout.region_indices("c") == [4]


def test_a_dict_assigned_as_regions_is_copied_at_once():
    layout = _small()
    mine = {"b": RegionSpec((0, 1, 1, 2, 0, 2))}
    layout.regions = mine
    mine["late"] = RegionSpec((1, 2, 0, 1, 0, 1))  # the layout holds its own copy, as after construction
    assert layout.region_names == ("b",)
    layout.regions["c"] = RegionSpec((1, 2, 0, 1, 0, 1))
    assert layout.region_names == ("b", "c") and "c" not in mine


def test_revision_follows_checked_changes():
    layout = _small()
    r0 = layout.revision
    layout.regions["a"] = RegionSpec((0, 2, 0, 1, 0, 2))  # the same bounds again: no change
    assert layout.revision == r0
    layout.regions["a"] = RegionSpec((0, 2, 1, 2, 0, 2))
    r1 = layout.revision
    assert r1 > r0
    layout.d_model = 8
    assert layout.revision > r1
    r2 = layout.revision
    layout.t_current = 1  # moves no module's indices (the output mask only): no new revision
    assert layout.revision == r2


def test_check_unchanged_names_the_module_and_the_fix():
    from canvas_core.schema.staleness import check_unchanged

    layout = _small()
    built = layout.revision
    check_unchanged(layout, built, "SpatiotemporalCanvas")  # unchanged: nothing to say
    layout.regions["a"] = RegionSpec((0, 2, 1, 2, 0, 2))
    with pytest.raises(SchemaError, match=r"SpatiotemporalCanvas was built from this CanvasLayout before it "
                                          r"was changed.*build the SpatiotemporalCanvas again"):
        check_unchanged(layout, built, "SpatiotemporalCanvas")
    check_unchanged(object(), 3, "X")  # not a CanvasLayout (canvas-engineering's): nothing to compare


def test_a_layout_without_spatial_grid_is_a_consistent_zero_d_layout():
    for layout in (CanvasLayout(T=3, d_model=8), CanvasLayout(T=3, d_model=8, regions={})):
        assert layout.spatial_shape == () and (layout.H, layout.W) == (None, None)
        assert layout.num_positions == 3 and layout.region_names == () and layout.region_at(2) == []
        loaded = CanvasSchema.from_json(CanvasSchema(layout, CanvasTopology([])).to_json()).layout
        assert loaded == layout


def test_two_d_bounds_on_a_layout_without_spatial_grid_say_how_to_give_one():
    with pytest.raises(RegionError, match=r"canvas has 0 .*give the CanvasLayout spatial_shape=\(\.\.\.\) or H= and W="):
        CanvasLayout(T=5, d_model=16, regions={"visual": (0, 5, 0, 6, 0, 6)})

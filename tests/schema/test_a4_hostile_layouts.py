"""Layouts changed after construction through their public attributes, and region names that
only look distinct: every size query checks the types of T and spatial_shape, another layout's
regions are copied, the Kelvin sign is no second 'K'."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, RegionSpec
from canvas_core.errors import CanvasTypeError, RegionError


def _layout() -> CanvasLayout:
    return CanvasLayout(T=2, H=4, W=4, d_model=8, regions={"a": (0, 2, 0, 2, 0, 2)})


@pytest.mark.parametrize("attribute, value", [("spatial_shape", None), ("spatial_shape", "44"), ("T", "2")])
@pytest.mark.parametrize("size", ["num_positions", "spatial_volume", "n_spatial_dims"])
def test_sizes_of_a_layout_given_a_bad_shape_or_t_name_it(attribute, value, size):
    layout = _layout()
    setattr(layout, attribute, value)
    with pytest.raises(CanvasTypeError, match=f"CanvasLayout {attribute}"):
        getattr(layout, size)


def test_sizes_follow_a_changed_shape():
    layout = _layout()
    layout.spatial_shape = [4, 6]  # a list: checked and made a tuple by the first query
    assert (layout.num_positions, layout.spatial_volume, layout.n_spatial_dims) == (48, 24, 2)


def test_regions_taken_from_another_layout_are_copied_not_shared():
    first, second = _layout(), CanvasLayout(T=2, H=4, W=4, d_model=8, regions={"b": (0, 1, 3, 4, 3, 4)})
    second.regions = first.regions
    first.regions["c"] = RegionSpec((0, 1, 3, 4, 0, 1))
    assert second.region_names == ("a",) and first.region_names == ("a", "c")
    regions = first.regions
    first.regions |= {"d": RegionSpec((1, 2, 3, 4, 0, 1))}  # in place: the same dict stays
    assert first.regions is regions and first.region_names == ("a", "c", "d")


@pytest.mark.parametrize("twin", ["\u212a", "e\u0301"])
def test_names_that_print_alike_are_refused_also_against_an_ascii_one(twin):
    plain = "K" if twin == "\u212a" else "\u00e9"
    with pytest.raises(RegionError, match="look the same but are spelt with other Unicode code points"):
        CanvasLayout(T=1, spatial_shape=(2,), d_model=4, regions={plain: (0, 1, 0, 1), twin: (0, 1, 1, 2)})
    layout = CanvasLayout(T=1, spatial_shape=(2,), d_model=4, regions={plain: (0, 1, 0, 1)})
    layout.regions[twin] = RegionSpec((0, 1, 1, 2))
    with pytest.raises(RegionError, match="changed after it was built"):
        layout.region_names

"""Region names that print alike but differ in Unicode normalization ('é' as one code point or
as 'e' + a combining accent): refused in one layout, and named as such when one is looked up."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection, RegionSpec
from canvas_core.errors import RegionError, TopologyError, UnknownRegionError

NFC, NFD = "caf\u00e9", "cafe\u0301"


def _layout() -> CanvasLayout:
    return CanvasLayout(T=1, d_model=4, spatial_shape=(2,), regions={NFC: (0, 1, 0, 1)})


def test_two_names_alike_after_normalization_are_refused():
    with pytest.raises(RegionError, match=r"look the same but are spelt with other Unicode code points "
                                          r"\('caf\\xe9' and 'cafe\\u0301'\)"):
        CanvasLayout(T=1, d_model=4, spatial_shape=(2,), regions={NFC: (0, 1, 0, 1), NFD: (0, 1, 1, 2)})


def test_such_a_name_added_later_is_refused_at_the_next_query():
    layout = _layout()
    layout.regions[NFD] = RegionSpec((0, 1, 1, 2))
    with pytest.raises(RegionError, match=r"changed after it was built.*look the same"):
        layout.region_names


def test_looking_up_the_other_spelling_says_why_it_is_unknown():
    layout = _layout()
    with pytest.raises(UnknownRegionError, match=r"looks the same but is spelt with other Unicode code points "
                                                  r"\('caf\\xe9' there, 'cafe\\u0301' here\)"):
        layout.region_spec(NFD)
    with pytest.raises(TopologyError, match=r"src region .* looks the same but is spelt"):
        CanvasSchema(layout, CanvasTopology([Connection(NFD, NFC)]))


def test_distinct_unicode_names_are_fine_and_round_trip():
    layout = CanvasLayout(T=1, d_model=4, spatial_shape=(3,),
                          regions={NFC: (0, 1, 0, 1), "カメラ": (0, 1, 1, 2), "🤖.arm[0]": (0, 1, 2, 3)})
    schema = CanvasSchema(layout, CanvasTopology([Connection("カメラ", NFC)]))
    assert CanvasSchema.from_json(schema.to_json()) == schema

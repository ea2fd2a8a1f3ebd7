"""A region replaced with ``dict.__setitem__`` on ``layout.regions`` (bypassing the counting dict):
the next query of that region and the next module build see it, check it and count it; the
stamps modules record are the layout's own checked content; ``_validated`` is read by name."""

from __future__ import annotations

import base64
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


def test_h_alone_changed_is_refused():
    layout = _layout()
    layout.spatial_shape = (4, 6)  # H / W follow spatial_shape
    assert layout.region_names == ("a", "b") and (layout.H, layout.W) == (4, 6)
    layout.H = 5
    with pytest.raises(SchemaError, match="H=5 disagrees with spatial_shape"):
        layout.region_names


# ``(layout, layout_stamp(layout))`` pickled (protocol 4) by canvas-core e1b95eb, the version before
# regions replaced behind the dict were checked: the layout of ``_layout()`` after
# ``region_indices("a")``. Its state has no ``_specs``, ``_content`` ordered (T, spatial_shape,
# d_model, regions) and ``_validated`` a plain 9-tuple.
_OLD_PICKLE = base64.b64decode(
    "gASV2AIAAAAAAACMGWNhbnZhc19jb3JlLnNjaGVtYS5sYXlvdXSUjAxDYW52YXNMYXlvdXSUk5QpgZR9lCiMAVSUSwKMB2RfbW9k"
    "ZWyUSwiMDXNwYXRpYWxfc2hhcGWUSwRLBIaUjAdyZWdpb25zlIwfY2FudmFzX2NvcmUuc2NoZW1hLl9yZWdpb25fZGljdJSMClJl"
    "Z2lvbkRpY3SUk5QpgZQojAFhlIwZY2FudmFzX2NvcmUuc2NoZW1hLnJlZ2lvbpSMClJlZ2lvblNwZWOUk5QpgZR9lCiMBmJvdW5k"
    "c5QoSwBLAksASwJLAEsCdJSMBnBlcmlvZJRLAYwJaXNfb3V0cHV0lIiMC2xvc3Nfd2VpZ2h0lEc/8AAAAAAAAIwNc2VtYW50aWNf"
    "dHlwZZROjBJzZW1hbnRpY19lbWJlZGRpbmeUTowPZW1iZWRkaW5nX21vZGVslIwdb3BlbmFpL3RleHQtZW1iZWRkaW5nLTMtc21h"
    "bGyUjAxkZWZhdWx0X2F0dG6UjA9jcm9zc19hdHRlbnRpb26UjAdjYXJyaWVylIwNZGV0ZXJtaW5pc3RpY5SMBmZhbWlseZROdWKM"
    "AWKUaBEpgZR9lChoFChLAEsCSwJLBEsCSwR0lGgWSwFoF4hoGEc/8AAAAAAAAGgZTmgaTmgbaBxoHWgeaB9oIGghTnVidYwJdF9j"
    "dXJyZW50lEsAjAFIlEsEjAFXlEsEjA1hbGxvd19vdmVybGFwlImMC19ydW5zX2NhY2hllH2UKGgOSwCGlF2UKEsASwKGlEsESwaG"
    "lGVoDksBhpRdlChLEEsShpRLFEsWhpRldYwIX2NvbnRlbnSUKEsCaAhLCGgOaBKGlGgiaCOGlIaUdJSMCl92YWxpZGF0ZWSUKGgN"
    "SwBLAksCaAiJSwhLBEsEdJSMCl90X2NoZWNrZWSUSwB1YksAKEsCaAhoDmgShpRoImgjhpSGlEsIdJSGlIaULg=="
)


def test_a_layout_pickled_by_the_previous_version_loads_and_is_checked():
    layout, stamp = pickle.loads(_OLD_PICKLE)
    state = layout.__dict__
    assert "_specs" not in state and type(state["_validated"]) is tuple and state["_content"][2] == 8
    check_unchanged(layout, stamp, "SpatiotemporalCanvas")
    assert layout.region_indices("b")[:2] == [10, 11] and layout.region_names == ("a", "b")
    check_unchanged(layout, stamp, "SpatiotemporalCanvas")  # re-checked, and still the geometry of its build
    dict.__setitem__(layout.regions, "a", RegionSpec((0, 1, 0, 1, 0, 4)))  # seen, as in a new layout
    assert layout.region_indices("a") == [0, 1, 2, 3]
    with pytest.raises(SchemaError, match="SpatiotemporalCanvas was built from this CanvasLayout"):
        check_unchanged(layout, stamp, "SpatiotemporalCanvas")
    layout.T = 3
    assert layout.num_positions == 48 and layout.region_indices("b")[:2] == [10, 11]

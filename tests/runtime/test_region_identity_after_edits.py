"""A canvas asked for a region's identity after the region was removed from the layout behind the
region dict's back says which region is unknown (it raised a bare KeyError)."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, SpatiotemporalCanvas
from canvas_core.errors import UnknownRegionError


def test_a_region_removed_behind_the_dict_is_named() -> None:
    layout = CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})
    canvas = SpatiotemporalCanvas(layout)
    assert canvas.region_identity("b").shape == (8,)
    spec = layout.regions["b"]
    dict.__delitem__(layout.regions, "b")
    dict.__setitem__(layout.regions, "c", spec)
    with pytest.raises(UnknownRegionError, match=r"unknown region 'b'"):
        canvas.region_identity("b")

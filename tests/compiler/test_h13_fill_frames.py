"""``fill_frames`` (the temporal fill of one target frame) refuses a period or an interpolation
order it cannot use: period 0 raised a bare ZeroDivisionError and an order below 1 was quietly
taken as order 1, while ``Connection`` refuses the same order."""

from __future__ import annotations

import numpy as np
import pytest

from canvas_core.compiler.temporal import fill_frames
from canvas_core.errors import TopologyError


@pytest.mark.parametrize("period", [0, -2, 1.5, True])
def test_a_period_below_one_is_refused(period) -> None:
    with pytest.raises(TopologyError, match="period must be an int >= 1"):
        fill_frames(5, 0, 3, period, "hold")


@pytest.mark.parametrize("order", [0, -3, 2.5])
def test_an_interpolation_order_below_one_is_refused(order) -> None:
    with pytest.raises(TopologyError, match="interpolation order must be an int >= 1"):
        fill_frames(5, 0, 3, 2, "interpolate", order)


def test_valid_arguments_still_fill() -> None:
    assert fill_frames(5, 0, 3, 2, "hold") == [(2, 1.0)]
    assert fill_frames(4, 0, 3, 2, "drop") == [(2, 1.0)]  # an exact match
    assert fill_frames(np.int64(3), 0, 3, np.int64(2), "interpolate", np.int64(1)) == [(1, 0.5), (2, 0.5)]
    assert fill_frames(3, 0, 3, 2, "interpolate", None) == [(1, 0.5), (2, 0.5)]


@pytest.mark.parametrize("target", [10**400, -10**400], ids=["+1e400", "-1e400"])
def test_a_far_target_interpolates_without_overflow(target: int) -> None:
    # order > 1 turned the distances into floats: OverflowError for offsets like 10**400
    out = fill_frames(target, 0, 3, 2, "interpolate", 2)
    assert [f for f, _ in out] == [0, 1, 2]
    assert sum(w for _, w in out) == pytest.approx(1.0)
    assert all(w == pytest.approx(1 / 3) for _, w in out)  # all three frames equally (in)finitely far


def test_a_connection_with_a_huge_offset_lowers() -> None:
    from canvas_core.compiler.lowering import lower
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec

    layout = CanvasLayout(T=3, d_model=4, spatial_shape=(2,),
                          regions={"a": (0, 3, 0, 1), "b": RegionSpec((0, 3, 1, 2), period=2)})
    conn = Connection("a", "b", t_src=0, t_dst=10**400, temporal_fill="interpolate", interpolation_order=2)
    plan = lower(CanvasTopology([conn]), layout)
    assert plan.groups["cross_attention"].n_rects > 0

"""A warning naming an absurd offset abbreviates it (``1e+30``) instead of printing every digit."""

import warnings

import pytest

from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.compiler.lowering import lower
from canvas_core.errors import brief_number

LAYOUT = CanvasLayout(T=2, spatial_shape=(2, 2), d_model=8,
                      regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})


@pytest.mark.parametrize("t_src, shown", [(10 ** 30, "t_src=1e+30,"), (-(10 ** 30), "t_src=-1e+30,"),
                                          (10 ** 5000, "t_src=~1e+")], ids=["1e30", "-1e30", "1e5000"])
def test_links_nothing_warning_abbreviates_huge_offset(t_src, shown):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lower(CanvasTopology(connections=[Connection("a", "b", t_src=t_src)]), LAYOUT)
    msgs = [str(w.message) for w in caught if "links nothing" in str(w.message)]
    assert len(msgs) == 1 and shown in msgs[0]
    assert len(msgs[0]) < 400


def test_brief_number_keeps_ordinary_values():
    assert [brief_number(v) for v in (None, 0, -3, 999_999_999_999, 2.5, True)] == \
        ["None", "0", "-3", "999999999999", "2.5", "True"]
    assert brief_number(123_456_789_012_345_678) == "1.23e+17"

"""``build_identity_binders``' head count (found by a hostile sweep: n_heads=0 was accepted and
n_heads=3 with d_model=32 became 4 heads, more than asked)."""

from __future__ import annotations

import pytest

from canvas_core.errors import CanvasTypeError
from canvas_core.identity import _heads_for


@pytest.mark.parametrize("d_model, wanted, heads", [(32, 4, 4), (32, 3, 2), (12, 8, 6), (64, 64, 64), (7, 4, 1),
                                                    (8, 100, 8)])
def test_the_heads_are_the_largest_divisor_of_the_width_not_above_the_request(d_model, wanted, heads):
    assert _heads_for(d_model, wanted) == heads


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None, "4"])
def test_a_head_count_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(CanvasTypeError, match="n_heads must be an integer >= 1"):
        _heads_for(32, bad)

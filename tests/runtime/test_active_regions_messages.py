"""active_regions given tensors or other non-names is refused with a short message: the offending
items by type (a tensor by its shape), never a printed tensor or a megabyte-long string."""

from __future__ import annotations

import pytest
import torch

import canvas_core as cc
from canvas_core.errors import CanvasTypeError

LAYOUT = cc.CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})


@pytest.fixture(scope="module")
def layer():
    return cc.CanvasAttention(cc.CanvasTopology(connections=[cc.Connection("a", "b")]), LAYOUT, n_heads=2)


@pytest.mark.parametrize("bad, expected", [
    ((torch.zeros(3, 100), torch.ones(2)), r"must hold region names \(strings\), got a tensor of shape \((3, 100|2,)\)"),
    (torch.zeros(5, 5), r"must be a set or list of region names, got a tensor of shape \(5, 5\)$"),
    ([1, 2, 3, 4, 5], r"must hold region names \(strings\), got int \d, int \d, int \d and 2 more$"),
    ("a" * 100_000, r"got the string 'a+\.\.\.a+'"),
])
def test_bad_active_regions_are_named_briefly(layer, bad, expected) -> None:
    with pytest.raises(CanvasTypeError, match=expected) as info:
        layer(torch.randn(1, 4, 8), active_regions=bad)
    assert len(str(info.value)) < 400 and "tensor([" not in str(info.value)

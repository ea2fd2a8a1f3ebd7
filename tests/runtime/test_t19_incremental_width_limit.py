"""``incremental(width=...)`` is held to the width limit (``CANVAS_MAX_WIDTH``) like every other
width, at build, with a ``SizeLimitError`` naming the width and how to fix it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import CanvasError, SizeLimitError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, spatial_shape=(2,), d_model=8, regions={"a": (0, 2, 0, 2)})
TOPO = CanvasTopology([Connection("a", "a", t_src=0, t_dst=0)])


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), CanvasAttention(TOPO, LAYOUT, n_heads=2)).eval()


@pytest.mark.parametrize("width", [10**9, np.int64(2**40), (1 << 16) + 1])
def test_a_width_over_the_limit_is_refused_at_build(width):
    with pytest.raises(SizeLimitError, match=r"incremental width = .* exceeds the limit .*CANVAS_MAX_WIDTH") as err:
        canvas_core.incremental(_model(), LAYOUT, width=width)
    assert isinstance(err.value, CanvasError) and "layout.d_model (8)" in str(err.value)


def test_the_limit_follows_its_setting(monkeypatch):
    model = _model()
    monkeypatch.setenv("CANVAS_MAX_WIDTH", "3")
    with pytest.raises(SizeLimitError, match="CANVAS_MAX_WIDTH"):
        canvas_core.incremental(model, LAYOUT, width=4)
    monkeypatch.setenv("CANVAS_MAX_WIDTH", str(1 << 16))
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT, width=4) as roll:
        assert roll.step(torch.randn(1, 2, 4)).shape == (1, 2, 8)

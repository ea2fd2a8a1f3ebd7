"""Tiny connection weights keep their log in the flex kernel's bias (1e-300 is -690.8, and
2e-300 weighs twice 1e-300), as the CPU kernels and ``to_additive_mask`` have them."""

from __future__ import annotations

import math

import pytest

from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.extend import lower

pytest.importorskip("torch.nn.attention.flex_attention")
from canvas_backend_flex.kernel import FlexKernel  # noqa: E402


def test_tiny_weights_keep_their_log():
    layout = CanvasLayout(T=1, H=1, W=3, d_model=4,
                          regions={"q": (0, 1, 0, 1, 0, 1), "a": (0, 1, 0, 1, 1, 2), "b": (0, 1, 0, 1, 2, 3)})
    topology = CanvasTopology(connections=[Connection("q", "a", weight=1e-300), Connection("q", "b", weight=2e-300)])
    plan = lower(topology, layout)
    kern = FlexKernel(plan.groups["cross_attention"], plan, compile=False)
    logw = kern.logw[kern.row_seg[0]]  # the query's row, one entry per key segment
    got = sorted(float(v) for v, ok in zip(logw, kern.linked[kern.row_seg[0]]) if ok)
    assert got == pytest.approx([math.log(1e-300), math.log(2e-300)], rel=1e-6)

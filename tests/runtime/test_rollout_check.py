"""``incremental(..., check=...)``: every cached step compared with the full forward.

A module that mixes positions outside the canvas layers (``x - x.mean(1)``, a cumulative sum
over positions) runs on one frame in a step and on the whole canvas in a full forward: the rollout
is wrong without any error.  The check finds it at the first frame that differs; a position-wise
model passes it at every frame.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import CanvasTypeError

T, V, D = 4, 4, 16
LAYOUT = CanvasLayout(T=T, H=2, W=2, d_model=D, regions={"cam": (0, T, 0, 1, 0, 2), "act": (0, T, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[Connection("cam", "cam", t_src=0, t_dst=0), Connection("cam", "cam", t_src=0, t_dst=-1),
                                   Connection("act", "cam", t_src=0, t_dst=0)])


class _Mixing(nn.Module):
    def __init__(self, mix):
        super().__init__()
        self.attn, self.mix = CanvasAttention(TOPO, LAYOUT, n_heads=2), mix

    def forward(self, x):
        return self.mix(x + self.attn(x))


def _roll(model, check, frames=T):
    x = torch.randn(2, T * V, D)
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT, check=check) as roll:
        return [roll.step(x[:, t * V:(t + 1) * V]) for t in range(frames)], model(x), roll.frame


@pytest.mark.parametrize("mix", [lambda h: h - h.mean(1, keepdim=True), lambda h: h.cumsum(1)],
                         ids=["minus_mean_over_positions", "cumsum_over_positions"])
def test_a_model_mixing_positions_outside_its_layers_is_caught(mix):
    torch.manual_seed(0)
    model = _Mixing(mix).eval()
    _, _, _ = _roll(model, False)  # unchecked: runs, silently wrong
    with pytest.raises(canvas_core.RolloutError, match=r"frame [01] of the rollout differs from the full forward"):
        _roll(model, True)


def test_a_position_wise_model_passes_the_check_at_every_frame():
    torch.manual_seed(0)
    model = nn.Sequential(CanvasAttention(TOPO, LAYOUT, n_heads=2), nn.LayerNorm(D), nn.Linear(D, D),
                          CanvasAttention(TOPO, LAYOUT, n_heads=2)).eval()
    steps, full, frame = _roll(model, 1e-5)
    assert frame == T
    for t, y in enumerate(steps):
        torch.testing.assert_close(y, full[:, t * V:(t + 1) * V], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "yes"])
def test_a_bad_tolerance_is_refused(bad):
    with pytest.raises(CanvasTypeError, match="check="):
        canvas_core.incremental(nn.Sequential(CanvasAttention(TOPO, LAYOUT, n_heads=2)), LAYOUT, check=bad)

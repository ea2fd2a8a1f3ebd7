"""A rollout of a grafted canvas model with adaptive exit on is refused at the step (found in the
audit: the steps silently differed from the full forward by up to 1e-1, since the exit test saw one
frame, not the whole canvas); at a fixed depth the rollout equals the full forward."""

from __future__ import annotations

import pytest
import torch

import canvas_core
from canvas_core.errors import CanvasError
from canvas_core.looping import graft_looped_blocks
from canvas_core.looping.scopes import loop_parts_of

from tests.looping.test_audit_delta_blocks import LAYOUT, DeltaStack

V = 6  # positions per frame of LAYOUT (2 x 3)


def _grafted(scope):
    m = DeltaStack().eval()
    graft_looped_blocks(m, max_loops=4, scope=scope)
    with torch.no_grad():
        loop_parts_of(m)[0].loop_gate.fill_(0.5)
    return m


@pytest.mark.parametrize("scope", ["stack", (1, 3)])
def test_adaptive_exit_is_refused_and_fixed_depth_rolls_out_exactly(scope):
    torch.manual_seed(3)
    x = torch.randn(4, LAYOUT.num_positions, 8)
    m = _grafted(scope)
    canvas_core.set_loops(m, 4, exit_tol=0.05)
    with torch.no_grad(), canvas_core.incremental(m, LAYOUT) as roll:
        with pytest.raises(CanvasError, match=r"adaptive exit on \(exit_tol=0.05\).*set_loops\(model, n\)"):
            roll.step(x[:, :V])
        assert roll.frame == 0
        canvas_core.set_loops(m, 4)  # fixed depth: the same rollout now runs
        full = m(x)
        for t in range(2):
            assert torch.allclose(roll.step(x[:, t * V:(t + 1) * V]), full[:, t * V:(t + 1) * V], atol=1e-5)

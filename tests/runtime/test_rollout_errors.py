"""A module that fails inside a rollout step with any exception (IndexError from a head that
indexes all N positions, AssertionError, ValueError ...) is reported as a RolloutError naming the
frame, with the original chained; errors that already say what is wrong (CanvasError), running out
of memory and KeyboardInterrupt pass through unchanged.  The failed step changes nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import CanvasError, ShapeError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

T, V = 3, 8
LAYOUT = CanvasLayout(T=T, H=2, W=4, d_model=8, regions={"cam": (0, T, 0, 1, 0, 4), "act": (0, T, 1, 2, 0, 4)})
TOPO = CanvasTopology(connections=[Connection("cam", "cam", t_src=0, t_dst=0),
                                   Connection("act", "cam", t_src=0, t_dst=-1)])


class Raise(nn.Module):
    """Raises ``error`` while ``on``, else the identity."""

    def __init__(self):
        super().__init__()
        self.on, self.error = False, None

    def forward(self, x):
        if self.on:
            raise self.error
        return x


class RegionHead(nn.Module):
    """Reads the positions of region 'act' of the whole canvas (fails on one frame)."""

    def forward(self, x):
        return x[:, torch.as_tensor(LAYOUT.region_indices("act"))]


def _model(extra):
    torch.manual_seed(0)
    return nn.Sequential(canvas_core.CanvasAttention(TOPO, LAYOUT, n_heads=2), extra).double().eval()


def test_an_index_error_of_a_whole_canvas_head_names_the_frame():
    x = torch.randn(1, V, 8, dtype=torch.float64)
    with torch.no_grad(), canvas_core.incremental(_model(RegionHead()), LAYOUT) as roll:
        with pytest.raises(canvas_core.RolloutError, match="failed on frame 0.*IndexError.*position by position") as err:
            roll.step(x)
        assert isinstance(err.value.__cause__, IndexError)
        assert roll.frame == 0


@pytest.mark.parametrize("error", [AssertionError("expects the whole canvas"), ValueError("bad value"),
                                   KeyError("k"), TypeError("odd"), ZeroDivisionError("zero")])
def test_any_exception_of_a_step_becomes_a_rollout_error_and_the_step_is_not_taken(error):
    layer = Raise()
    model = _model(layer)
    x = torch.randn(1, T * V, 8, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        with canvas_core.incremental(model, LAYOUT) as roll:
            for t in range(T):
                layer.on, layer.error = True, error
                with pytest.raises(canvas_core.RolloutError, match=f"failed on frame {t}.*{type(error).__name__}") as err:
                    roll.step(x[:, t * V:(t + 1) * V] + 5.0)
                assert err.value.__cause__ is error
                assert roll.frame == t
                layer.on = False
                torch.testing.assert_close(roll.step(x[:, t * V:(t + 1) * V]), full[:, t * V:(t + 1) * V])


@pytest.mark.parametrize("error", [ShapeError("already says it"), MemoryError(), KeyboardInterrupt(),
                                   torch.OutOfMemoryError("out of memory")])
def test_errors_that_name_their_cause_or_stop_the_run_pass_unchanged(error):
    layer = Raise()
    x = torch.randn(1, V, 8, dtype=torch.float64)
    with torch.no_grad(), canvas_core.incremental(_model(layer), LAYOUT) as roll:
        layer.on, layer.error = True, error
        with pytest.raises(type(error)) as err:
            roll.step(x)
        assert err.value is error and not isinstance(err.value, canvas_core.RolloutError)
        layer.on = False
        roll.step(x)
        assert roll.frame == 1


@pytest.mark.parametrize("error", [IndexError("index 12 is out of bounds"), AssertionError("whole canvas")])
def test_slide_recompute_names_the_step_of_a_failing_window(error):
    layer = Raise()
    x = torch.randn(1, V, 8, dtype=torch.float64)
    with torch.no_grad(), canvas_core.incremental(_model(layer), LAYOUT, slide="recompute") as roll:
        for _ in range(T):
            roll.step(x)
        layer.on, layer.error = True, error
        with pytest.raises(canvas_core.RolloutError, match=f"slide='recompute'.*step {T}.*{type(error).__name__}") as err:
            roll.step(x)
        assert err.value.__cause__ is error and isinstance(err.value, CanvasError)
        layer.on = False
        roll.step(x)

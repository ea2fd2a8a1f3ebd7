"""``incremental(check=True)`` on half-precision models and non-finite input frames.

The check compares each step with the full forward of the same model: in float16 the two round
differently by a unit of the dtype (above the float32 default ``1e-4``), and a NaN input frame
gives NaN at the same places in both; neither is a difference.  A NaN the full forward does not
have still is.
"""

from __future__ import annotations

import pytest
import torch

import canvas_core
from canvas_core.runtime.incremental import RolloutError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
from tests.runtime._rollout_models import build_model, frames

torch.set_num_threads(1)


def _model(fns=("self_attention", "rwkv", "linear_attention"), dtype=torch.float64, seed=0):
    layout = CanvasLayout(T=3, H=2, W=2, d_model=4, regions={"a": (0, 3, 0, 1, 0, 2), "b": (0, 3, 1, 2, 0, 2)})
    C = Connection
    topo = CanvasTopology(connections=[
        C(src="a", dst="a", t_src=0, t_dst=0, fn=fns[0]), C(src="a", dst="b", t_src=0, t_dst=-1, fn=fns[1]),
        C(src="b", dst="b", t_src=0, t_dst=0, fn=fns[2])])
    return layout, build_model(topo, layout, depth=2, seed=seed).to(dtype)


def _roll(model, layout, x, check=True):
    with torch.no_grad(), canvas_core.incremental(model, layout, check=check) as roll:
        return torch.cat([roll.step(x_t) for x_t in frames(x, 4)], dim=1)


@pytest.mark.parametrize("fns", [("self_attention",) * 3, ("self_attention", "rwkv", "linear_attention")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_check_true_passes_a_correct_rollout_in_every_float_dtype(dtype, fns):
    for seed in range(3):
        layout, model = _model(fns=fns, dtype=dtype, seed=seed)
        x = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(seed)).to(dtype)
        got = _roll(model, layout, x)
        assert got.dtype == dtype
        with torch.no_grad():
            full = model(x)
        assert torch.allclose(got.double(), full.double(), atol=64 * torch.finfo(dtype).eps, rtol=0)


def test_an_explicit_tolerance_is_kept_in_float16():
    layout, model = _model(fns=("self_attention",) * 3, dtype=torch.float16, seed=1)
    x = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(1)).half()
    _roll(model, layout, x, check=1.0)  # loose: passes
    with torch.no_grad():
        full = model(x)
    with torch.no_grad(), canvas_core.incremental(model, layout) as roll:
        got = torch.cat([roll.step(x_t) for x_t in frames(x, 4)], dim=1)
    assert not torch.equal(got, full)  # float16 steps round differently from the full forward
    with pytest.raises(RolloutError, match="differs from the full forward"):
        _roll(model, layout, x, check=1e-9)  # an explicit tolerance is not widened to the dtype's


def test_check_true_accepts_a_nan_input_frame_that_the_full_forward_shares():
    layout, model = _model()
    x = torch.randn(2, 12, 4, dtype=torch.float64)
    x[0, 4 + 1] = float("nan")  # one position of frame 1, sample 0
    got = _roll(model, layout, x)
    with torch.no_grad():
        full = model(x)
    assert torch.equal(got.isnan(), full.isnan())
    assert got[1].isfinite().all() and got[0, :4].isfinite().all()  # sample 1 and frame 0 untouched
    assert torch.allclose(got.nan_to_num(), full.nan_to_num(), atol=1e-7, rtol=0)


def test_check_still_refuses_a_nan_the_full_forward_does_not_have():
    layout, model = _model()

    class PoisonFrame1(torch.nn.Module):  # NaN only when it sees one frame (a rollout step)
        def forward(self, x):
            return x * float("nan") if x.shape[1] == 4 else x

    poisoned = torch.nn.Sequential(model, PoisonFrame1())
    with pytest.raises(RolloutError, match="frame 0 of the rollout differs"):
        _roll(poisoned, layout, torch.randn(1, 12, 4, dtype=torch.float64))

"""A recorded step past ``T`` frames with ``slide="recompute"`` measures the window's last frame for
every type: the same numbers as the step of that frame in a rollout of the window."""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch

import canvas_core
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.runtime.telemetry import record_telemetry
from tests.runtime._rollout_models import build_model

torch.set_num_threads(1)

T, V = 4, 8
LAYOUT = CanvasLayout(T=T, H=2, W=4, d_model=8, regions={"a": (0, T, 0, 1, 0, 4), "b": (0, T, 1, 2, 0, 4)})


def _model(fn: str):
    C = Connection
    topo = CanvasTopology(connections=[C(src="a", dst="a", t_src=0, t_dst=0), C(src="b", dst="a", t_src=0, t_dst=-1),
                                       C(src="a", dst="b", t_src=0, t_dst=0, fn=fn),
                                       C(src="b", dst="b", t_src=0, t_dst=-1, fn=fn)])
    return build_model(topo, LAYOUT, depth=2)


def _frames(n: int, seed: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, V, 8, dtype=torch.float64, generator=g) for _ in range(n)]


def _recorded(model, fs: List[torch.Tensor], measured: int, slide: bool) -> Dict[str, float]:
    """Step ``fs``, recording the steps from index ``measured`` on."""
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT, slide="recompute" if slide else None) as roll:
        for f in fs[:measured]:
            roll.step(f)
        with record_telemetry(model) as tel:
            for f in fs[measured:]:
                roll.step(f)
    return tel.values()


@pytest.mark.parametrize("fn", ["pooling", "mamba", "linear_attention"])
def test_a_slide_step_measures_the_last_frame_of_every_type(fn):
    """It added nothing to the out_norm of the types outside the softmax family (their module rows
    in the window's forward were not measured), though it added the softmax types' last frame."""
    model = _model(fn)
    fs = _frames(T + 1, seed=1)
    got = _recorded(model, fs, measured=T, slide=True)  # one step past T: the window fs[1:]
    want = _recorded(model, fs[1:], measured=T - 1, slide=False)  # the window's frame T - 1, stepped
    assert set(got) == set(want) and any(f"[{fn}]/out_norm" in k for k in got)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


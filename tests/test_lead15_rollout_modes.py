"""A rollout may switch between autograd, ``no_grad`` and ``inference_mode`` from episode to episode
(docs/world_models.md): a frame whose index tensors were first built inside inference mode must not
hand inference tensors to a later step that records a graph."""

import itertools

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection

_MODES = {"grad": torch.enable_grad, "nograd": torch.no_grad, "inf": torch.inference_mode}


def _model(fn: str):
    lay = CanvasLayout(T=3, H=1, W=2, d_model=8, regions={"a": (0, 3, 0, 1, 0, 2)})
    top = CanvasTopology(connections=[Connection(src="a", dst="a", t_src=0, t_dst=-1, fn=fn),
                                      Connection(src="a", dst="a", t_src=0, t_dst=0, fn=fn)])
    torch.manual_seed(0)
    return nn.Sequential(CanvasAttention(top, lay, n_heads=2)).eval(), lay


@pytest.mark.parametrize("fn", ["cross_attention", "rwkv", "pooling"])
def test_short_training_episode_then_inference_then_training(fn):
    m, lay = _model(fn)
    x = torch.randn(1, 6, 8)
    full = m(x)
    with canvas_core.incremental(m, lay) as roll:
        roll.step(x[:, 0:2]).sum().backward()
        roll.reset()
        with torch.inference_mode():
            for t in range(3):
                roll.step(x[:, 2 * t:2 * t + 2])
        roll.reset()
        outs = [roll.step(x[:, 2 * t:2 * t + 2]) for t in range(3)]
    out = torch.cat(outs, dim=1)
    assert out.requires_grad
    torch.testing.assert_close(out, full)
    out.sum().backward()


@pytest.mark.parametrize("order", list(itertools.product(_MODES, repeat=3)))
def test_any_order_of_modes_over_three_episodes(order):
    m, lay = _model("cross_attention")
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        full = m(x)
    with canvas_core.incremental(m, lay) as roll:
        for episode, mode in enumerate(order):
            frames = 1 + episode % 3
            with _MODES[mode]():
                outs = [roll.step(x[:, 2 * t:2 * t + 2]) for t in range(frames)]
            if mode == "grad":
                torch.cat(outs, dim=1).sum().backward()
            torch.testing.assert_close(torch.cat(outs, dim=1).detach().clone(), full[:, :2 * frames])
            roll.reset()

"""Rollouts from a cache, used in hostile ways: reset after parameters changed mid-episode, frames of
another dtype, training around a rollout, NaN frames, no_grad / inference_mode, and the per-key-set types
frame by frame against the full forward."""

from __future__ import annotations

import pytest
import torch

import canvas_core
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.runtime.incremental import RolloutError
from tests.runtime._rollout_models import build_model, causal_only, frames

torch.set_num_threads(1)

T, V = 4, 8
LAYOUT = CanvasLayout(T=T, H=2, W=4, d_model=8, regions={"a": (0, T, 0, 1, 0, 4), "b": (0, T, 1, 2, 0, 4)})


def _model(fn: str = "cross_attention", depth: int = 2, seed: int = 0):
    C = Connection
    topo = CanvasTopology(connections=causal_only([
        C(src="a", dst="a", t_src=0, t_dst=0), C(src="b", dst="a", t_src=0, t_dst=-1, fn=fn),
        C(src="a", dst="b", t_src=0, t_dst=0, fn=fn), C(src="b", dst="b", t_src=0, t_dst=-1, fn=fn, weight=2.0),
        C(src="a", dst="a", t_src=0, t_dst=-1, fn=fn)], LAYOUT))
    return build_model(topo, LAYOUT, depth=depth, seed=seed)


def _x(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, LAYOUT.num_positions, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _canvas(fs, t):
    """The frames stepped so far and zeros after them."""
    return torch.cat(list(fs[:t + 1]) + [torch.zeros_like(fs[0])] * (T - t - 1), dim=1)


@pytest.mark.parametrize("change", ["optimizer", "load_state_dict", "to"])
def test_reset_after_parameters_changed_mid_episode_starts_over_with_the_new_ones(change):
    """The documented contract: the cache holds the old parameters' frames, so after a change
    mid-episode ``roll.reset()`` and the episode stepped again match the new model."""
    model = _model()
    fs = frames(_x(), V)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    other = _model(seed=7).state_dict()
    with canvas_core.incremental(model, LAYOUT) as roll:
        roll.step(fs[0]).pow(2).sum().backward()
        with torch.no_grad():
            if change == "optimizer":
                opt.step()
            elif change == "load_state_dict":
                model.load_state_dict(other)
            else:
                model.to(torch.float32).to(torch.float64)
        roll.reset()
        with torch.no_grad():
            got = [roll.step(f) for f in fs]
            full = model(torch.cat(fs, 1))
    for t, y in enumerate(got):
        assert torch.allclose(y, full[:, t * V:(t + 1) * V], atol=1e-9, rtol=1e-12), t


def test_training_between_episodes_and_on_whole_canvases_inside_a_rollout():
    """The second episode with gradients failed in backward with a bare RuntimeError ("backward
    through the graph a second time"): its frames were written into the buffers that still held
    the first episode's freed graph."""
    model = _model("mamba")
    x = _x()
    fs = frames(x, V)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    with canvas_core.incremental(model, LAYOUT) as roll:
        for _ in range(2):  # an episode with gradients, an update, the next episode
            roll.reset()
            loss = sum(roll.step(f).pow(2).mean() for f in fs)
            loss.backward()
            opt.step()
            opt.zero_grad()
        model(x).pow(2).mean().backward()  # a whole-canvas training step inside the rollout
        grads = [p.grad.clone() for p in model.parameters()]
        opt.zero_grad()
        roll.reset()
        with torch.no_grad():
            got = torch.cat([roll.step(f) for f in fs], 1)
    assert got.isfinite().all()
    model(x).pow(2).mean().backward()
    assert all(torch.allclose(g, p.grad, atol=1e-12) for g, p in zip(grads, model.parameters()))
    with torch.no_grad():
        assert torch.allclose(got, model(x), atol=1e-10, rtol=0)


def test_a_first_frame_of_another_dtype_names_both_dtypes():
    """A float32 frame into a float64 model failed in its first norm with a RuntimeError wrapped as
    "a module that expects the whole canvas"; the message names the frame's and the model's dtype."""
    model = _model()
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        with pytest.raises(RolloutError, match=r"frame is torch\.float32 on cpu, the model's parameters torch\.float64"):
            roll.step(frames(_x(), V)[0].float())
        assert roll.frame == 0
        roll.step(frames(_x(), V)[0])


@pytest.mark.parametrize("fn", ["mamba", "hyena", "rwkv", "linear_attention", "perceiver"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_per_key_set_types_frame_by_frame_equal_the_full_forward(fn, mode):
    model = _model(fn, depth=3)
    x = _x(b=3, seed=1)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with ctx():
        full = model(x)
        with canvas_core.incremental(model, LAYOUT) as roll:
            for _ in range(2):  # a second episode on the same cache
                roll.reset()
                fs = frames(x, V)
                for t, f in enumerate(fs):
                    y = roll.step(f)
                    assert torch.allclose(y, full[:, t * V:(t + 1) * V], atol=1e-10, rtol=0), (t, fn)
                    part = model(_canvas(fs, t))[:, t * V:(t + 1) * V]  # the prefix alone
                    assert torch.allclose(y, part, atol=1e-10, rtol=0), (t, fn)


@pytest.mark.parametrize("fn", ["cross_attention", "mamba", "pooling"])
def test_a_nan_frame_reaches_what_the_full_forward_reaches(fn):
    model = _model(fn)
    x = _x()
    x[1, V + 3] = float("nan")
    with torch.no_grad():
        full = model(x)
        with canvas_core.incremental(model, LAYOUT, check=True) as roll:
            got = torch.cat([roll.step(f) for f in frames(x, V)], 1)
    assert torch.equal(got.isnan(), full.isnan()) and full[0].isfinite().all()
    fin = full.isfinite()
    assert torch.allclose(got[fin], full[fin], atol=1e-10, rtol=0)

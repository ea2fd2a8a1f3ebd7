"""Hostile rollouts: one buffer refilled frame after frame, outputs that are tuples or dicts, a
frame of the wrong dtype for the layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import ShapeError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.incremental import RolloutError
from tests.runtime._rollout_models import build_model, frames

torch.set_num_threads(1)

T, V = 3, 4
LAYOUT = CanvasLayout(T=T, H=2, W=2, d_model=8, regions={"a": (0, T, 0, 1, 0, 2), "b": (0, T, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[
    Connection(src="a", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="a", t_src=0, t_dst=-1),
    Connection(src="b", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="b", t_src=0, t_dst=0, fn="pooling")])


def _frames(n_canvases: int = 2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, n_canvases * LAYOUT.num_positions, 8, generator=g, dtype=torch.float64)
    return frames(x, V)


def _steps(model, fs, reuse: bool, **kw):
    buf = torch.empty_like(fs[0])
    outs = []
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT, **kw) as roll:
        for f in fs:
            if reuse:
                buf.copy_(f)
            outs.append(roll.step(buf if reuse else f.clone()))
    return outs


@pytest.mark.parametrize("kw", [{"slide": "recompute"}, {"check": True}, {"slide": "recompute", "check": True}])
def test_one_buffer_refilled_for_every_frame(kw):
    """The window of ``slide="recompute"`` and the canvas of ``check=`` are the frames given, not
    what the caller's buffer holds later."""
    model = build_model(TOPO, LAYOUT, depth=2)
    fs = _frames() if "slide" in kw else _frames()[:T]
    want, got = _steps(model, fs, reuse=False, **kw), _steps(model, fs, reuse=True, **kw)
    for a, b in zip(want, got):
        assert torch.equal(a, b)


class _Pair(nn.Module):
    """The model's output twice: as a tuple, or as a dict with a per-sample value."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.net = kind, build_model(TOPO, LAYOUT, depth=1)

    def forward(self, x):
        y = self.net(x)
        if self.kind == "tuple":
            return y, 2 * y
        return {"y": y, "z": [y + 1], "tag": "out"}


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_structured_outputs_slide_and_check(kind):
    model = _Pair(kind).eval()
    fs = _frames()
    outs = _steps(model, fs, reuse=False, slide="recompute", check=True)
    window = torch.cat(fs[-T:], 1)
    with torch.no_grad():
        full = model(window)
    last = slice((T - 1) * V, T * V)
    if kind == "tuple":
        assert isinstance(outs[-1], tuple)
        assert torch.equal(outs[-1][0], full[0][:, last]) and torch.equal(outs[-1][1], full[1][:, last])
    else:
        assert outs[-1]["tag"] == "out"
        assert torch.equal(outs[-1]["y"], full["y"][:, last]) and torch.equal(outs[-1]["z"][0], full["z"][0][:, last])


def test_the_check_looks_at_every_output():
    class Mixes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model(TOPO, LAYOUT, depth=1)

        def forward(self, x):
            y = self.net(x)
            return y, y - y.mean(1, keepdim=True)  # the second one mixes positions

    fs = _frames()[:T]
    with pytest.raises(RolloutError, match="frame 0 of the rollout differs"):
        _steps(Mixes().eval(), fs, reuse=False, check=True)


def test_an_output_without_positions_is_refused_by_a_slide():
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model(TOPO, LAYOUT, depth=1)

        def forward(self, x):
            y = self.net(x)
            return y, y.sum()

    fs = _frames()
    with torch.no_grad(), canvas_core.incremental(Pooled().eval(), LAYOUT, slide="recompute") as roll:
        for f in fs[:T]:
            roll.step(f)
        with pytest.raises(RolloutError, match=r"shape \(\) .*N = 12 positions on dimension 1"):
            roll.step(fs[T])
        assert roll.steps == T  # the failed step changed nothing


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.bool])
def test_a_frame_the_layer_cannot_take_gets_the_layers_own_error(dtype):
    """A bare canvas layer given a frame of another dtype than its parameters: the ShapeError of a
    whole-canvas call, naming the layer, not a torch error from inside the step."""
    torch.manual_seed(0)
    model = nn.Sequential(CanvasAttention(TOPO, LAYOUT, n_heads=2)).eval()
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        with pytest.raises(ShapeError, match=r"CanvasAttention '0' in a rollout step: x "):
            roll.step(torch.ones(2, V, 8, dtype=dtype))
        assert roll.frame == 0
        assert roll.step(torch.ones(2, V, 8)).shape == (2, V, 8)  # the rollout goes on


def test_a_frame_of_another_width_is_told_about_width():
    model = nn.Sequential(nn.Linear(5, 8), CanvasAttention(TOPO, LAYOUT, n_heads=2)).eval()
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        with pytest.raises(ShapeError, match=r"got \(2, 4, 5\); .* incremental\(\.\.\., width=5\)"):
            roll.step(torch.randn(2, V, 5))
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT, width=5) as roll:
        assert roll.step(torch.randn(2, V, 5)).shape == (2, V, 8)


def test_an_output_object_a_frame_cannot_be_cut_from_is_refused_by_a_slide():
    class Out:
        def __init__(self, y):
            self.y = y

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_model(TOPO, LAYOUT, depth=1)

        def forward(self, x):
            return Out(self.net(x))

    fs = _frames()
    with torch.no_grad(), canvas_core.incremental(Wrapped().eval(), LAYOUT, slide="recompute") as roll:
        for f in fs[:T]:
            roll.step(f)
        with pytest.raises(RolloutError, match="returned a Out, which a frame cannot be cut from"):
            roll.step(fs[T])


class _Flags(nn.Module):
    """Per-position bool flags, or large integer indices that count positions (they mix them)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.net = kind, build_model(TOPO, LAYOUT, depth=1)

    def forward(self, x):
        y = self.net(x)
        if self.kind == "bool":
            return y > 0
        return 10 ** 6 + torch.arange(x.shape[1]).expand(x.shape[0], -1)


def test_the_check_takes_bool_outputs_and_holds_integers_to_equality():
    fs = _frames()[:T]
    outs = _steps(_Flags("bool").eval(), fs, reuse=False, check=True)
    assert all(o.dtype == torch.bool for o in outs)
    # a difference of 4 in 10**6 would pass a relative tolerance: an index must be equal
    with pytest.raises(RolloutError, match="frame 1 of the rollout differs"):
        _steps(_Flags("index").eval(), fs, reuse=False, check=True)

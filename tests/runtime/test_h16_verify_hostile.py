"""verify_structure on inputs it cannot use: bad seeds and plans, models that do not take the
canvas alone, and canvases with more (region, frame) cells than ``samples``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core import verify_structure
from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError, ShapeError


def _layout(T: int = 2) -> cc.CanvasLayout:
    return cc.CanvasLayout(T=T, H=2, W=4, d_model=16, regions={"a": (0, T, 0, 1, 0, 4), "b": (0, T, 1, 2, 0, 4)})


def _topology() -> cc.CanvasTopology:
    return cc.CanvasTopology(connections=[cc.Connection("a", "b", t_src=0, t_dst=0), cc.Connection("b", "b")])


def _layer() -> cc.CanvasAttention:
    torch.manual_seed(0)
    return cc.CanvasAttention(_topology(), _layout(), 16, 2)


@pytest.mark.parametrize("seed", ["x", 1.5, -1, 2 ** 64, None])
def test_a_bad_seed_is_refused_naming_it(seed):
    with pytest.raises(SchemaError, match="seed must be an integer") as info:
        verify_structure(_layer(), seed=seed)
    assert isinstance(info.value, ValueError)


def test_a_plan_that_is_not_an_execution_plan_is_refused():
    with pytest.raises(CanvasTypeError, match="plan must be an ExecutionPlan.*got str"):
        verify_structure(nn.Sequential(_layer()), plan="causal")


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _layer()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.attn(x) + cond


def test_a_model_taking_more_than_the_canvas_is_refused_naming_it_and_the_fix():
    with pytest.raises(CanvasTypeError) as info:
        verify_structure(_TwoInputs())
    msg = str(info.value)
    assert "_TwoInputs(x) raised TypeError" in msg and "wrap it in an nn.Module" in msg, msg
    assert isinstance(info.value.__cause__, TypeError)


def test_a_model_of_another_width_is_refused_pointing_at_d_model():
    with pytest.raises(ShapeError) as info:
        verify_structure(nn.Linear(8, 8), _layout(), _topology())
    msg = str(info.value)
    assert "Linear(x) raised RuntimeError" in msg and "d_model=" in msg, msg
    assert isinstance(info.value, CanvasError)
    assert verify_structure(nn.Linear(8, 8), _layout(), _topology(), d_model=8).ok  # position-wise: reads itself


class _Fails(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("an assert inside the model")


def test_a_models_own_error_on_the_users_input_is_not_rewritten():
    """With make_input= given, the input is the user's: the model's RuntimeError is its own, not a
    probe-input mismatch, and passes through (no advice to pass d_model= / make_input=)."""
    make = lambda b, gen: torch.randn(b, 16, 16, generator=gen)  # noqa: E731
    with pytest.raises(RuntimeError, match="an assert inside the model") as info:
        verify_structure(_Fails(), make_input=make)
    assert not isinstance(info.value, CanvasError)


def test_samples_bounds_the_probed_queries_when_there_are_more_cells():
    torch.set_num_threads(1)
    T, R = 16, 16  # 256 (region, frame) cells of 2 positions
    regions = {f"r{i}": (0, T, 0, 1, 2 * i, 2 * i + 2) for i in range(R)}
    layout = cc.CanvasLayout(T=T, H=1, W=2 * R, d_model=8, regions=regions)
    topology = cc.CanvasTopology(connections=[cc.Connection(f"r{i}", f"r{i}", t_src=0, t_dst=0) for i in range(R)])
    torch.manual_seed(0)
    layer = cc.CanvasAttention(topology, layout, 8, 1)
    seen = []
    report = verify_structure(layer, max_exact=64, samples=8, probes=1,
                              progress=lambda part, done, total: seen.append(total))
    assert report.ok and not report.exact
    assert max(seen) == 8, seen  # before: one query per cell, 256, whatever samples said
    assert "8 of the 256 (region, frame) cells" in report.sampling and "samples=256" in report.sampling
    again = verify_structure(layer, max_exact=64, samples=8, probes=1)
    assert again.sampling == report.sampling  # reproducible from the seed


def test_a_backbone_whose_topology_links_every_pair_verifies():
    # its runner runs plain SDPA and builds no kernel: the probe raised KeyError 'k0'
    from canvas_core.looping import get_adapter, graft_looped_blocks
    from tests.looping._backbone_setup import inputs, make, user_layout

    torch.set_num_threads(1)
    m = make("cogvideox")
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, inputs("cogvideox")), 1)
    names = list(tokens.layout.regions)
    ad.install_topology(m, cc.CanvasTopology(connections=[cc.Connection(a, b) for a in names for b in names]), tokens)
    report = verify_structure(m)
    assert report.ok and report.exact and report.parts == ["backbone attention"], str(report)
    assert not report.undeclared and not report.dead


def test_a_model_on_the_meta_device_is_refused_naming_the_tensor():
    layer = _layer().to("meta")  # before: a bare RuntimeError from Tensor.item() deep in the probe
    with pytest.raises(CanvasTypeError, match="'qkv.weight' is on the meta device.*to_empty"):
        verify_structure(layer)
    with pytest.raises(CanvasTypeError, match="meta device"):
        verify_structure(nn.Sequential(layer))

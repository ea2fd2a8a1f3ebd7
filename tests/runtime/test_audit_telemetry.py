"""Telemetry on calls it cannot measure (found in the audit): a bad input gets the layer's own
error, a forward restricted to some regions is not reported as if the whole topology ran (a
one-frame rollout step is measured at its own frame's queries), and nothing is reported before a
forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import ShapeError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.telemetry import record_telemetry, telemetry

LAYOUT = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[
    Connection(src="a", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="b", t_src=0, t_dst=-1),
    Connection(src="b", dst="a", t_src=0, t_dst=0, fn="pooling")])


def _layer():
    torch.manual_seed(0)
    return CanvasAttention(TOPO, LAYOUT, n_heads=2)


def test_bad_input_gets_the_layers_own_error():
    layer = _layer()
    with pytest.raises(ShapeError, match=r"expects x of shape \(B, 8, 8\)"):
        telemetry(layer, torch.randn(2, 5, 8))


def test_nothing_is_reported_before_a_forward():
    with record_telemetry(_layer()) as tel:
        pass
    assert tel.values() == {}
    assert tel.summary().splitlines() == ["telemetry over 0 forward(s): share of output by connection (top 8)"]


@pytest.mark.parametrize("as_kwarg", [False, True])
def test_a_forward_restricted_to_some_regions_is_not_reported(as_kwarg):
    layer = _layer()
    x = torch.randn(1, LAYOUT.num_positions, 8)
    args, kw = ((x,), {"active_regions": ["b"]}) if as_kwarg else ((x, ["b"]), {})
    assert telemetry(layer, *args, **kw) == {}
    full = telemetry(layer, x)
    assert {k.split("/")[1] for k in full} == {"#0 a->a [cross_attention]", "#1 a->b [cross_attention]",
                                               "#2 b->a [pooling]"}


def test_rollout_steps_are_measured_and_do_not_fail():
    layer = _layer()
    model = nn.Sequential(layer).eval()
    x = torch.randn(1, LAYOUT.num_positions, 8)
    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        for t in range(2):
            roll.step(x[:, t * 4:(t + 1) * 4])
    assert tel.forwards == 2 and any(k.endswith("/mass_share") for k in tel.values())

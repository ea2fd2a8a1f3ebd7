"""Telemetry averages only what it measured: an empty batch or a restricted call adds nothing to
any value (softmax shares, module norms), a rollout step nothing to the module norms, and
``forwards`` counts the model calls that were measured, which is what the values average over."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import canvas_core
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import CanvasTypeError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.telemetry import record_telemetry, telemetry

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[  # causal: a rollout can step it
    Connection(src="a", dst="a", t_src=0, t_dst=0), Connection(src="b", dst="a", t_src=0, t_dst=0),
    Connection(src="a", dst="b", t_src=0, t_dst=0, fn="pooling")])


def _model():
    torch.manual_seed(0)
    return nn.Sequential(CanvasAttention(TOPO, LAYOUT, n_heads=2)).eval()


def _x(b=2, scale=1.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(b, LAYOUT.num_positions, 8, generator=g)


def test_an_empty_batch_adds_nothing_and_poisons_nothing():
    model = _model()
    with record_telemetry(model) as tel, torch.no_grad():
        model(_x())
        want = tel.values()
        model(_x(b=0))  # the layer accepts B = 0
        got = tel.values()
    assert want and got == want
    assert not any(math.isnan(v) for v in got.values())
    assert tel.forwards == 1


def test_an_empty_batch_alone_reports_no_shares():
    vals = telemetry(_model(), _x(b=0))
    assert not any(k.endswith(("/mass_share", "/out_norm")) for k in vals)


def test_the_mean_goes_on_after_an_empty_batch():
    model = _model()
    with record_telemetry(model) as ref, torch.no_grad():
        model(_x(seed=1))
        model(_x(seed=2))
    with record_telemetry(model) as tel, torch.no_grad():
        model(_x(seed=1))
        model(_x(b=0))
        model(_x(seed=2))
    assert tel.forwards == ref.forwards == 2
    for k, v in ref.values().items():
        assert tel.values()[k] == pytest.approx(v, rel=1e-6), k


def test_rollout_steps_count_in_module_norms_and_restricted_calls_are_not_counted():
    """The pooling connection's ``out_norm`` counts the rows of rollout steps (inputs scaled by
    100, so they show) but not those of a restricted call, which must not enter it.  The steps
    are measured and counted; the restricted call adds nothing."""
    model = _model()
    key = "0/#2 a->b [pooling]/out_norm"
    with record_telemetry(model) as tel, torch.no_grad():
        model(_x())
        want = tel.values()
        with canvas_core.incremental(model, LAYOUT) as roll:
            big = _x(scale=100.0)
            for t in range(2):
                roll.step(big[:, t * 4:(t + 1) * 4])
        after_steps = tel.values()
        model[0](_x(scale=100.0), active_regions=["a"])
        got = tel.values()
    assert tel.forwards == 3
    assert key in want and after_steps[key] > 10 * want[key]  # the steps' rows (inputs x100) count
    assert got == after_steps


def test_a_model_without_canvas_layers_counts_every_call():
    model = nn.Linear(3, 3)
    with record_telemetry(model) as tel, torch.no_grad():
        model(torch.randn(2, 3))
        model(torch.randn(0, 3))
    assert tel.forwards == 2


def test_a_failing_forward_leaves_the_count_consistent():
    model = _model()
    with record_telemetry(model) as tel, torch.no_grad():
        with pytest.raises(canvas_core.CanvasError):
            model(torch.randn(2, 5, 8))
        model(_x())
    assert tel.forwards == 1
    assert tel.summary().startswith("telemetry over 1 forward(s)")


def test_max_queries_takes_numpy_integers_and_refuses_bool():
    vals = telemetry(_model(), _x(), max_queries=np.int64(2))
    assert any(k.endswith("/mass_share") for k in vals)
    with pytest.raises(CanvasTypeError, match="max_queries"):
        telemetry(_model(), _x(), max_queries=True)

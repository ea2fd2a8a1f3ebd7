"""verify_structure's bounds: ``layers`` and ``probes`` stop where ``canvas verify`` stops (one shared
constant), ``d_model`` is checked, the multi-hop closure stops once it no longer grows (same rows),
and ``layers`` / ``d_model`` given to a lone canvas layer, where they do not apply, are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core import verify_structure
from canvas_core.compiler.lowering import lower
from canvas_core.errors import CanvasTypeError, SchemaError
from canvas_core.runtime import verify_probe
from canvas_core.runtime.verify_limits import MAX_VERIFY_D_MODEL, MAX_VERIFY_LAYERS, MAX_VERIFY_PROBES

torch.set_num_threads(1)
LAYOUT = cc.CanvasLayout(T=3, H=2, W=2, d_model=8, regions={"a": (0, 3, 0, 1, 0, 2), "b": (0, 3, 1, 2, 0, 2)})
CAUSAL = cc.CanvasTopology(connections=[cc.Connection("a", "b", t_src=0, t_dst=-1), cc.Connection("b", "a")])


def _layer() -> cc.CanvasAttention:
    torch.manual_seed(0)
    return cc.CanvasAttention(CAUSAL, LAYOUT, n_heads=2)


def test_the_cli_and_the_api_share_one_bound():
    from canvas_core.commands import verify as cli

    assert (cli.MAX_VERIFY_LAYERS, cli.MAX_VERIFY_PROBES) == (MAX_VERIFY_LAYERS, MAX_VERIFY_PROBES) == (256, 256)


@pytest.mark.parametrize("model", [_layer, lambda: nn.Sequential(_layer())])
def test_too_many_layers_is_refused_naming_the_argument_the_limit_and_the_fix(model):
    with pytest.raises(SchemaError) as info:
        verify_structure(model(), layers=10 ** 6)
    msg = str(info.value)
    assert "layers=1000000 is over the limit of 256" in msg and "pass layers=K with 1 <= K <= 256" in msg, msg


def test_too_many_probes_is_refused():
    with pytest.raises(SchemaError, match=r"probes=257 is over the limit of 256 .* pass probes=K with 1 <= K <= 256"):
        verify_structure(_layer(), probes=MAX_VERIFY_PROBES + 1)


@pytest.mark.parametrize("d_model, match", [(0, "d_model must be an integer >= 1"), (8.0, "d_model must be an integer"),
                                            (MAX_VERIFY_D_MODEL + 1, "over the limit of 65536")])
def test_a_bad_d_model_is_refused_before_any_probe_input_is_drawn(d_model, match):
    with pytest.raises(SchemaError, match=match):
        verify_structure(nn.Sequential(_layer()), d_model=d_model)


def test_the_deepest_stack_allowed_still_verifies():
    report = verify_structure(nn.Sequential(_layer()), layers=MAX_VERIFY_LAYERS, probes=1)
    assert report.ok and report.hops == MAX_VERIFY_LAYERS


def _naive_closure(plans, queries):
    """R <- R | R M_l over every layer, no early stop (what declared_rows computed before)."""
    R = np.zeros((len(queries), int(plans[0].n)), dtype=bool)
    R[np.arange(len(queries)), queries] = True
    for plan in reversed(plans):
        R = R | verify_probe._step(R, plan, None)
    return R


@pytest.mark.parametrize("mixed", [False, True])
def test_the_closure_stops_at_its_fixed_point_with_the_same_rows(monkeypatch, mixed):
    plan = lower(CAUSAL, LAYOUT)
    other = lower(cc.CanvasTopology(connections=[cc.Connection("b", "b", t_src=0, t_dst=-1)]), LAYOUT)
    plans = [plan, other] * 60 if mixed else [plan] * 120
    queries = np.arange(int(plan.n))
    want = _naive_closure(plans, queries)
    calls = []
    step = verify_probe._step
    monkeypatch.setattr(verify_probe, "_step", lambda *a: calls.append(1) or step(*a))
    got = verify_probe.declared_rows(plans, queries)
    assert np.array_equal(got, want)
    assert len(calls) < 12, len(calls)  # 3 frames: the closure stops growing after a few layers


def test_layers_and_another_width_on_a_lone_canvas_layer_are_refused_not_ignored():
    layer = _layer()
    with pytest.raises(CanvasTypeError, match=r"layers=3 does not apply to CanvasAttention, a single canvas layer.*"
                                              r"plan=layer.plan, layers=L"):
        verify_structure(layer, layers=3)
    with pytest.raises(CanvasTypeError, match=r"d_model=32 does not apply to CanvasAttention.*its width is 8"):
        verify_structure(layer, d_model=32)


def test_a_lone_layer_takes_one_layer_and_its_own_width_as_canvas_verify_passes_them():
    report = verify_structure(_layer(), layers=1, d_model=8, probes=1)
    assert report.ok and report.hops == 1 and report.parts == ["layer"]


@pytest.mark.parametrize("kw", [dict(layers=2), dict(d_model=8)])
def test_layers_and_d_model_on_a_backbone_with_an_installed_topology_are_refused(kw):
    from canvas_core.looping import get_adapter, graft_looped_blocks
    from tests.looping._backbone_setup import causal_temporal, inputs, make, user_layout

    m = make("cogvideox")
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    ad.install_topology(m, causal_temporal(["top", "bottom", "extra"]), user_layout(ad.token_layout(m, inputs("cogvideox")), 1))
    name = next(iter(kw))
    with pytest.raises(CanvasTypeError, match=rf"{name}=\d+ does not apply to .*a backbone with an installed topology"):
        verify_structure(m, **kw)

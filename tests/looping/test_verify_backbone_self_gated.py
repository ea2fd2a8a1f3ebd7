"""`verify_structure` on a grafted backbone whose topology uses a type that gates itself (`gated`:
no block gate, `GatedTypeModule.gate` is None): it is probed with its own closed gate opened, so
its structure is checked at initialisation and a leak behind that gate is found."""

from __future__ import annotations

import pytest
import torch

import canvas_core
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.plugins import register_attention, unregister_attention
from canvas_core.schema import CanvasTopology, Connection
from canvas_ref_toy_types import SelfGatedLeak  # registered by tests/conftest.py
from tests.looping._backbone_setup import causal_temporal, inputs, make, user_layout

pytestmark = pytest.mark.filterwarnings("ignore:connection #.* links nothing")


def _installed(kind, extra_fn):
    m = make(kind)
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, inputs(kind)), 1)
    topo = causal_temporal(["top", "bottom", "extra"])
    topo = CanvasTopology(connections=list(topo.connections) + [Connection("top", "bottom", t_src=0, t_dst=0, fn=extra_fn)])
    ad.install_topology(m, topo, tokens)
    return m


def _own_gates(model):
    return [p for n, p in model.named_parameters() if n.endswith("gate_alpha") or n.endswith(".alpha")]


@pytest.mark.parametrize("kind", ["cogvideox", "mochi"])
def test_a_self_gated_type_is_probed_with_its_own_gate_opened(kind):
    model = _installed(kind, "gated")
    gates = _own_gates(model)
    assert gates and all(not g.any() for g in gates)
    report = canvas_core.verify_structure(model)  # was: AttributeError on GatedTypeModule.gate
    assert report.ok, str(report)
    assert report.parts == ["backbone attention", "block 0", "block 1"]
    assert any("'gated' gates itself" in n and "gate_alpha" in n for n in report.notes), report.notes
    # measured, not skipped as a type whose output is always 0
    assert not any("'gated' outputs 0 whatever its input" in n for n in report.notes)
    assert all(not g.any() for g in gates)  # the model's gates are closed again afterwards


def test_a_leak_behind_a_self_gated_types_closed_gate_is_flagged(monkeypatch):
    monkeypatch.setattr("canvas_core.runtime.type_probe.probe_runtime_shapes", lambda *a, **k: None)  # a cheat the build sample missed
    register_attention("self_gated_chunk_leak", SelfGatedLeak)
    try:
        torch.manual_seed(0)
        model = _installed("cogvideox", "self_gated_chunk_leak")
        report = canvas_core.verify_structure(model)
    finally:
        unregister_attention("self_gated_chunk_leak")
    assert not report.ok
    assert {d.fn for d in report.undeclared} == {"self_gated_chunk_leak"}
    assert {d.where for d in report.undeclared} == {"block 0", "block 1"}
    assert "region top frame 0 reads region bottom frame 1 (future)" in str(report)
    assert all(not g.any() for g in _own_gates(model))

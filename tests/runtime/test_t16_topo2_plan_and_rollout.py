"""Plans and rollouts refuse a topology (or layout) changed after the plan was lowered.

A plan lowered by ``lower(topology, layout)``, then its topology or layout changed, then given to
``CanvasAttention(plan)`` used to run the old plan silently: the layer recorded the changed
topology as the one it was built from.  A rollout step (and ``incremental``'s build) checked only
the layout, so a topology changed after the layer's build was rolled out on the old connections.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import canvas_core
from canvas_core import AttentionDispatcher, CanvasAttention, CanvasLayout, CanvasTopology, Connection, RegionSpec
from canvas_core.compiler.lowering import lower, restrict
from canvas_core.compiler.resolution import resolve_plan
from canvas_core.errors import CanvasError, SchemaError
from canvas_core.testing import one_thread_fixture

_one_thread = one_thread_fixture()
TOPO = "before its connections were changed"
LAYOUT = "before it was changed"


def _parts():
    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    topo = CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=0), Connection("b", "b", t_src=0, t_dst=0)])
    return layout, topo


def _x() -> torch.Tensor:
    return torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(1))


def _build(cls, plan):
    torch.manual_seed(0)
    return (cls(plan, n_heads=2) if cls is CanvasAttention else cls(plan, None, 8, n_heads=2)).eval()


def _change(what: str, layout, topo) -> None:
    if what == "topology":
        topo.connections.append(Connection("a", "a", t_src=0, t_dst=0))
    else:
        layout.regions["a"] = RegionSpec((0, 2, 0, 1, 0, 2))


@pytest.mark.parametrize("what", ["topology", "layout"])
@pytest.mark.parametrize("cls", [CanvasAttention, AttentionDispatcher])
def test_a_plan_whose_topology_or_layout_changed_after_lowering_is_refused(cls, what):
    layout, topo = _parts()
    plan = lower(topo, layout)
    _change(what, layout, topo)
    with pytest.raises(SchemaError, match=f"ExecutionPlan given to {cls.__name__} was built from this "
                                          f"Canvas{what.title()} {TOPO if what == 'topology' else LAYOUT}") as err:
        _build(cls, plan)
    assert isinstance(err.value, CanvasError)
    if what == "topology":
        assert "lower the plan again (lower(topology, layout))" in str(err.value)


def test_the_plan_records_what_it_was_lowered_from_and_keeps_it_through_resolution_and_copies():
    layout, topo = _parts()
    plan = lower(topo, layout)
    assert plan.topology_stamp is not None and plan.layout_stamp is not None
    resolved = resolve_plan(plan)
    assert resolved.topology_stamp == plan.topology_stamp and resolved.layout_stamp == plan.layout_stamp
    y = _build(CanvasAttention, resolved)(_x())
    for twin in (copy.deepcopy(resolved), pickle.loads(pickle.dumps(resolved))):
        assert torch.equal(_build(CanvasAttention, twin)(_x()), y)
    _change("topology", layout, topo)
    with pytest.raises(SchemaError, match=TOPO):
        _build(CanvasAttention, resolved)


def test_a_change_undone_before_the_build_is_accepted_with_the_same_output():
    layout, topo = _parts()
    plan = lower(topo, layout)
    y = _build(CanvasAttention, plan)(_x())
    _change("topology", layout, topo)
    topo.connections.pop()
    layer = _build(CanvasAttention, plan)
    assert torch.equal(layer(_x()), y)
    _change("topology", layout, topo)  # the layer still refuses a later change
    with pytest.raises(SchemaError, match=f"CanvasAttention was built from this CanvasTopology {TOPO}"):
        layer(_x())


def test_restrict_refuses_a_plan_whose_topology_changed():
    layout, topo = _parts()
    plan = resolve_plan(lower(topo, layout))
    assert restrict(plan, {"b"}).topology.connections == [topo.connections[1]]
    topo.connections.insert(0, Connection("b", "a", fn="rwkv"))  # fn_of_connection would be misaligned
    with pytest.raises(SchemaError, match=f"ExecutionPlan was built from this CanvasTopology {TOPO}.*restrict that"):
        restrict(plan, {"b"})


def test_a_rollout_step_refuses_a_topology_changed_after_the_layer_was_built():
    layout, topo = _parts()
    torch.manual_seed(0)
    layer = CanvasAttention(topo, layout, n_heads=2).eval()
    x = _x()
    with torch.no_grad(), canvas_core.incremental(layer, layout) as roll:
        roll.step(x[:, :8])
        _change("topology", layout, topo)
        with pytest.raises(SchemaError, match=f"CanvasAttention was built from this CanvasTopology {TOPO}"):
            roll.step(x[:, 8:])


def test_a_rollout_of_a_layer_whose_topology_changed_is_refused_when_it_starts():
    layout, topo = _parts()
    layer = CanvasAttention(topo, layout, n_heads=2).eval()
    _change("topology", layout, topo)
    with pytest.raises(SchemaError, match=f"CanvasAttention was built from this CanvasTopology {TOPO}"):
        with torch.no_grad(), canvas_core.incremental(layer, layout):
            pass

"""``AttentionDispatcher(plan, layout, skip_temporal=True)`` drops the offsets as it does for a
topology (canvas-engineering's flag: every connection dense in time), keeping the plan's fn types
and resolutions; it used to run the plan's offsets silently."""

import numpy as np
import pytest
import torch

from canvas_core import AttentionDispatcher, MaskSpec
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.resolution import resolve_plan
from canvas_core.errors import CanvasError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec


def _layout():
    return CanvasLayout(T=4, d_model=8, spatial_shape=(2, 3), regions={
        "a": (0, 4, 0, 2, 0, 2), "b": RegionSpec((0, 4, 0, 2, 2, 3), period=2)})


def _topology():
    return CanvasTopology(connections=[
        *CanvasTopology.causal_temporal(["a", "b"]).connections,
        Connection(src="a", dst="a", t_src=0, t_dst=-1, mask=MaskSpec(kind="tile", tile_h=1, tile_w=1)),
        Connection(src="b", dst="a", t_dst=0, weight=0.5)])


def _layer(what, layout, **kw):
    torch.manual_seed(0)
    return AttentionDispatcher(what, layout, 8, 2, skip_temporal=True, **kw).double()


def test_plan_runs_like_its_topology_without_offsets():
    layout, topology = _layout(), _topology()
    from_topology = _layer(topology, layout)
    from_plan = _layer(lower(topology, layout), layout)
    assert all(c.t_src is None and c.t_dst is None for c in from_plan.plan.topology.connections)
    assert torch.equal(from_plan.plan.to_dense(), from_topology.plan.to_dense())
    assert not torch.equal(from_plan.plan.to_dense(), lower(topology, layout).to_dense())  # offsets mattered
    x = torch.randn(2, layout.num_positions, 8, dtype=torch.float64)
    torch.testing.assert_close(from_plan(x), from_topology(x), atol=0, rtol=0)
    torch.testing.assert_close(from_plan(x, active_regions={"a"}), from_topology(x, active_regions={"a"}),
                               atol=0, rtol=0)


def test_plan_keeps_its_fn_types_and_resolutions():
    """The fn types the plan was lowered with (not the topology's defaults) and the kernel its
    resolution chose stay; only the offsets go."""
    layout, topology = _layout(), _topology()
    fns = ["cross_attention", "linear_attention"] * (len(topology.connections) // 2)
    plan = resolve_plan(lower(topology, layout, resolve_fn=fns))
    layer = _layer(plan, layout)
    assert layer.plan.fn_of_connection == fns
    for fn, group in plan.groups.items():
        assert group.resolved is not None and layer.plan.groups[fn].resolved is group.resolved
    bare = lower(CanvasTopology(connections=[
        Connection(src=c.src, dst=c.dst, weight=c.weight, mask=c.mask) for c in topology.connections]),
        layout, resolve_fn=fns)
    for fn, group in bare.groups.items():
        for field in ("q0", "q1", "k0", "k1", "weight", "conn"):
            assert np.array_equal(getattr(layer.plan.groups[fn], field), getattr(group, field)), (fn, field)


def test_plan_without_offsets_and_skip_false_are_unchanged():
    layout, topology = _layout(), _topology()
    plan = lower(topology, layout)
    torch.manual_seed(0)
    kept = AttentionDispatcher(plan, layout, 8, 2, skip_temporal=False)
    assert torch.equal(kept.plan.to_dense(), plan.to_dense())
    dense = lower(CanvasTopology(connections=[Connection(src="a", dst="b"), Connection(src="b", dst="a")]), layout)
    assert torch.equal(_layer(dense, layout).plan.to_dense(), dense.to_dense().double())


def test_stale_plan_is_refused_before_relowering():
    layout, topology = _layout(), _topology()
    plan = lower(topology, layout)
    topology.connections.append(Connection(src="b", dst="b"))
    with pytest.raises(CanvasError, match="lower the plan again"):
        _layer(plan, layout)

"""Query blocks: a type that scans or compresses is called once per (query block, key set), so
what one query reads never depends on which other queries share its keys (DESIGN.md, "Semantics of
a canvas attention layer"; ``canvas_core/runtime/key_sets.py``).  The layer is compared with the
dense reference's obvious per-block calls on random layouts and topologies, and the two cases
that motivated the rule are checked directly: a second region reading the same keys, and frames
that a ``hold`` fill points at one key frame."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import canvas_ref_dense_reference as ref  # noqa: E402
import canvas_ref_strategies as gen  # noqa: E402
import canvas_ref_toy_types as toy  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402
from canvas_core.runtime.incremental import incremental  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec  # noqa: E402


def _layer(topo, layout, with_query=True, seed=0):
    torch.manual_seed(seed)
    def factory(fn, d_model, n_heads, dropout):
        return toy.RunningMeanScan(d_model, with_query=with_query)

    return CanvasAttention(topo, layout, d_model=layout.d_model, n_heads=1, attention_factory=factory).double()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_layer_equals_the_per_block_reference(data):
    layout = data.draw(gen.layouts(max_T=4, max_side=3))
    topo = data.draw(gen.topologies(layout, fns=("cross_attention", "scan"), max_conns=5))
    B = data.draw(st.sampled_from([1, 2]))
    layer = _layer(topo, layout)
    x = torch.randn(B, layout.num_positions, layout.d_model, dtype=torch.float64)
    y = layer(x)
    sp = (layer.qkv.weight, layer.qkv.bias, layer.out_proj.weight, layer.out_proj.bias) if layer.qkv is not None else None
    with torch.no_grad():
        want = ref.reference_layer(x, topo, layout, softmax_params=sp, n_heads=1, per_block_types={"scan"},
                                   other_modules=dict(layer.fn_modules))
    torch.testing.assert_close(y, want, atol=1e-7, rtol=1e-7)  # log w is carried in float32


def _two_regions():
    return CanvasLayout(T=3, spatial_shape=(3, 4), d_model=4, regions={
        "v": RegionSpec((0, 3, 0, 2, 0, 4)), "a": RegionSpec((0, 3, 2, 3, 0, 2)),
        "b": RegionSpec((0, 3, 2, 3, 2, 4))})


def _rows(layout, name):
    return torch.tensor(layout.region_indices(name))


def test_a_second_region_reading_the_same_keys_changes_nothing_for_the_first():
    layout = _two_regions()
    one = CanvasTopology(connections=[Connection("a", "v", t_src=0, t_dst=0, fn="scan")])
    two = CanvasTopology(connections=[*one.connections, Connection("b", "v", t_src=0, t_dst=0, fn="scan")])
    first, second = _layer(one, layout), _layer(two, layout)
    second.load_state_dict(first.state_dict())
    x = torch.randn(2, layout.num_positions, 4, dtype=torch.float64)
    a = _rows(layout, "a")
    torch.testing.assert_close(second(x)[:, a], first(x)[:, a], atol=0, rtol=0)


def test_frames_that_hold_one_key_frame_read_it_alike():
    # 'a' runs every frame, 'v' every other one: a hold fill points frames 0 and 1 of 'a' at v's
    # frame 0, 2 and 3 at its frame 1; with a query-free scan, held frames give equal rows
    layout = CanvasLayout(T=4, spatial_shape=(2, 3), d_model=4, regions={
        "v": RegionSpec((0, 2, 0, 1, 0, 3), period=2), "a": RegionSpec((0, 4, 1, 2, 0, 3))})
    topo = CanvasTopology(connections=[Connection("a", "v", t_src=0, t_dst=0, fn="scan", temporal_fill="hold")])
    layer = _layer(topo, layout, with_query=False)
    x = torch.randn(1, layout.num_positions, 4, dtype=torch.float64)
    y = layer(x)
    per_frame = [y[0, t * 6 + 3: t * 6 + 6] for t in range(4)]
    torch.testing.assert_close(per_frame[1], per_frame[0], atol=0, rtol=0)
    torch.testing.assert_close(per_frame[3], per_frame[2], atol=0, rtol=0)
    assert not torch.allclose(per_frame[0], per_frame[2])


def test_a_link_without_frames_is_one_block_across_the_frames():
    # t_src = t_dst = None: every query of 'a' reads all of 'v', spread over it in canonical order
    # (one block), so the first frame's queries read an earlier prefix than the last frame's
    layout = _two_regions()
    topo = CanvasTopology(connections=[Connection("a", "v", fn="scan")])
    layer = _layer(topo, layout, with_query=False)
    x = torch.randn(1, layout.num_positions, 4, dtype=torch.float64, requires_grad=True)
    a = _rows(layout, "a")
    layer(x)[0, a[0]].sum().backward()
    v = _rows(layout, "v")
    read = x.grad[0, v].abs().sum(-1) > 0
    assert bool(read[0]) and not bool(read[-1])


@pytest.mark.parametrize("fill", ["hold", "interpolate"])
def test_shared_key_frames_roll_out_as_the_full_forward(fill):
    layout = CanvasLayout(T=4, spatial_shape=(2, 3), d_model=4, regions={
        "v": RegionSpec((0, 2, 0, 1, 0, 3), period=2), "a": RegionSpec((0, 4, 1, 2, 0, 3))})
    topo = CanvasTopology(connections=[
        Connection("a", "v", t_src=0, t_dst=-1, fn="scan", temporal_fill=fill),
        Connection("v", "v", t_src=0, t_dst=0), Connection("a", "a", t_src=0, t_dst=0)])
    layer = _layer(topo, layout)
    x = torch.randn(2, layout.num_positions, 4, dtype=torch.float64)
    full = layer(x)
    V = 6
    with torch.no_grad(), incremental(layer, layout) as roll:
        frames = [roll.step(x[:, t * V:(t + 1) * V]) for t in range(4)]
    torch.testing.assert_close(torch.cat(frames, dim=1), full.detach(), atol=1e-10, rtol=1e-10)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_backbone_token_order_keeps_the_query_blocks(data):
    # a backbone hands its tokens in its own order (compact_plan): the blocks must not move
    import numpy as np

    from canvas_core.compiler.lowering import lower
    from canvas_core.compiler.plan import segment_grid
    from canvas_core.runtime.key_sets import query_block_ids
    from canvas_core.runtime.plan_runner import compact_plan

    layout = data.draw(gen.layouts(max_T=5, max_side=3))
    topo = data.draw(gen.topologies(layout, fns=("scan",), max_conns=6))
    plan = lower(topo, layout, warn_unlinked=False)
    if "scan" not in plan.groups:
        return
    n = int(plan.n)
    order = np.array(data.draw(st.permutations(range(n))), dtype=np.int64)  # token j sits at position order[j]
    tok = compact_plan(plan, order)

    def blocks_by_position(p):
        g = p.groups["scan"]
        ids = query_block_ids(p, g, segment_grid(int(p.n), g.q0, g.q1, g.k0, g.k1, g.weight).row_bounds)
        return ids[p.inv_perm]  # by canonical position (full plan) or token number (compact plan)

    full = blocks_by_position(plan)
    mine = blocks_by_position(tok)[np.argsort(order)]  # back to canonical positions
    linked = plan.query_weight["scan"][plan.inv_perm] > 0
    a, b = full[linked], mine[linked]
    assert np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :])

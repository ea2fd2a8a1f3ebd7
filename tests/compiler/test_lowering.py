"""Lowering and masks: against the brute-force reference, canvas-engineering and the block form."""

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from canvas_core.compiler.lowering import lower
from canvas_core.compiler.masks import block_mask
from canvas_core.runtime.plan_tensors import attention_mask
from canvas_core.errors import CanvasError, TopologyError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
import canvas_ref_dense_reference as ref  # registered by tests/conftest.py
import canvas_ref_strategies as gen  # registered by tests/conftest.py


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_mask_equals_bruteforce_reference(data):
    layout = data.draw(gen.layouts())
    topo = data.draw(gen.topologies(layout))
    got = attention_mask(topo, layout)
    want = ref.reference_mask(topo, layout).float()
    assert got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(topo.to_attention_mask(layout), want)


@settings(max_examples=25, deadline=None)
@given(st.data(), st.integers(1, 9))
def test_block_layout_matches_dense(data, bs):
    layout = data.draw(gen.layouts())
    topo = data.draw(gen.topologies(layout))
    plan = lower(topo, layout)
    dense = plan.to_dense(canonical=False).numpy()  # packed order
    bm = block_mask(topo, layout, block_size=bs)
    n = plan.n
    for qb in range(bm.layout.n_q_blocks):
        for kb in range(bm.layout.n_k_blocks):
            tile = dense[qb * bs:(qb + 1) * bs, kb * bs:(kb + 1) * bs]
            state = bm.layout.state[qb, kb]
            if not (tile > 0).any():
                assert state == 0
            elif (tile > 0).all() and tile.max() == tile.min():
                assert state == 2
            else:
                assert state == 1
        listed = set(bm.kv_indices[qb, : bm.kv_num_blocks[qb]].tolist())
        assert listed == set(np.flatnonzero(bm.layout.state[qb] > 0).tolist())
        # FlexAttention's split: partial and full tiles, disjoint, together the non-empty ones
        partial = set(bm.partial_kv_indices[qb, : bm.partial_kv_num_blocks[qb]].tolist())
        full = set(bm.full_kv_indices[qb, : bm.full_kv_num_blocks[qb]].tolist())
        assert partial == set(np.flatnonzero(bm.layout.state[qb] == 1).tolist())
        assert full == set(np.flatnonzero(bm.layout.state[qb] == 2).tolist())
        assert not partial & full and partial | full == listed
    # packed dense is the canonical one permuted
    canon = plan.to_dense().numpy()
    assert np.array_equal(canon, dense[np.ix_(plan.inv_perm, plan.inv_perm)])
    assert sorted(plan.perm.tolist()) == list(range(n))


def _ce_pair(layout_kwargs, conns):
    ce = pytest.importorskip("canvas_engineering")
    ours = CanvasLayout(**layout_kwargs)
    theirs = ce.CanvasLayout(**layout_kwargs)
    t_ours = CanvasTopology(connections=[Connection(**c) for c in conns])
    t_theirs = ce.CanvasTopology(connections=[ce.Connection(**c) for c in conns])
    return ours, theirs, t_ours, t_theirs


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_mask_matches_canvas_engineering(data):
    """Period 1 everywhere, full-extent regions in time, offsets kept inside the canvas: no fill
    subtleties, so both packages must agree exactly."""
    T = data.draw(st.integers(2, 4))
    W = data.draw(st.integers(2, 4))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, W - 1), max_size=2))))
    edges = [0, *cuts, W]
    regions = {f"r{i}": (0, T, 0, 1, a, b) for i, (a, b) in enumerate(zip(edges, edges[1:]))}
    names = list(regions)
    conns = []
    for _ in range(data.draw(st.integers(1, 4))):
        same = data.draw(st.booleans())
        conns.append(dict(src=data.draw(st.sampled_from(names)), dst=data.draw(st.sampled_from(names)),
                          weight=data.draw(st.sampled_from([0.5, 1.0])),
                          t_src=0 if same else None, t_dst=data.draw(st.sampled_from([0, -1])) if same else None))
    ours, theirs, t_o, t_t = _ce_pair(dict(T=T, H=1, W=W, d_model=4, regions=regions), conns)
    assert torch.equal(attention_mask(t_o, ours), t_t.to_attention_mask(theirs).float())


def test_named_topologies_match_canvas_engineering():
    regions = {"video": (0, 4, 0, 3, 0, 4), "action": (0, 4, 3, 4, 0, 2), "reward": (0, 4, 3, 4, 2, 4)}
    ce = pytest.importorskip("canvas_engineering")
    ours = CanvasLayout(T=4, H=4, W=4, d_model=8, regions=regions)
    theirs = ce.CanvasLayout(T=4, H=4, W=4, d_model=8, regions=regions)
    names = list(regions)
    for make in ("dense", "isolated", "causal_chain", "causal_temporal"):
        a = getattr(CanvasTopology, make)(names).to_attention_mask(ours)
        b = getattr(ce.CanvasTopology, make)(names).to_attention_mask(theirs)
        assert torch.equal(a, b.float()), make
    a = CanvasTopology.hub_spoke("video", names[1:]).to_attention_mask(ours)
    b = ce.CanvasTopology.hub_spoke("video", names[1:]).to_attention_mask(theirs)
    assert torch.equal(a, b.float())


def test_large_canvas_plan_is_rectangles_not_pairs():
    layout = CanvasLayout(T=13, H=30, W=46, d_model=8, regions={
        "video": (0, 13, 0, 30, 0, 45), "action": (0, 13, 0, 1, 45, 46), "reward": (0, 13, 1, 2, 45, 46)})
    plan = lower(CanvasTopology.causal_temporal(["video", "action", "reward"]), layout)
    assert plan.n == 17940
    rects = sum(g.n_rects for g in plan.groups.values())
    assert rects <= len(plan.topology.connections) * layout.T  # one rectangle per frame link
    assert plan.n_covered == 13 * (30 * 45 + 2)
    assert "ExecutionPlan" in plan.summary()


def test_overlap_and_uncovered_positions():
    layout = CanvasLayout(T=2, H=3, W=3, d_model=4, allow_overlap=True, regions={
        "a": (0, 2, 0, 2, 0, 2), "b": (0, 2, 1, 3, 1, 3)})
    topo = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0), Connection("a", "b")])
    plan = lower(topo, layout)
    assert plan.n - plan.n_covered == 2 * 2  # (0,2) and (2,0) at each frame
    assert any(len(r) > 1 for r in plan.region_blocks["b"].values())  # b shares a's position (1,1)
    assert torch.equal(attention_mask(topo, layout), ref.reference_mask(topo, layout).float())
    assert not plan.updated()[plan.inv_perm[layout.flat_index(0, 0, 2)]]


def test_errors_are_canvas_errors():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 2, 0, 2)})
    with pytest.raises(TopologyError, match="'nope'"):
        lower(CanvasTopology(connections=[Connection("a", "nope")]), layout)
    plan = lower(CanvasTopology(connections=[Connection("a", "a")]), layout)
    with pytest.raises(CanvasError):
        plan.block_layout(0)
    with pytest.raises(CanvasError):
        plan.to_dense(fn="mamba")
    with pytest.raises(CanvasError):
        lower("not a topology", layout)


def test_lowering_does_not_import_torch():
    import subprocess

    code = ("import sys; from canvas_core.compiler.lowering import lower; "
            "from canvas_core.compiler import temporal, plan, masks; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_mask_spec_connections(data):
    import canvas_core.schema.masks as masks
    layout = data.draw(gen.layouts(max_T=3))
    base = data.draw(gen.topologies(layout, max_conns=3))
    nd = len(layout.spatial_shape)
    tile = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    spec = masks.MaskSpec(kind="tile", tile_shape=tile)
    import dataclasses

    topo = CanvasTopology(connections=[dataclasses.replace(c, mask=spec) if i % 2 == 0 else c
                                       for i, c in enumerate(base.connections)])
    assert torch.equal(attention_mask(topo, layout), ref.reference_mask(topo, layout).float())


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_random_layouts_match_canvas_engineering(data):
    """Random periods, offsets past the borders and fills: same mask as canvas-engineering 0.5.0
    (up to float rounding of interpolation weights)."""
    ce = pytest.importorskip("canvas_engineering")
    lo = data.draw(gen.layouts())
    top = data.draw(gen.topologies(lo))
    lc = ce.CanvasLayout(T=lo.T, spatial_shape=lo.spatial_shape, d_model=4, regions={
        k: ce.RegionSpec(v.bounds, period=v.period) for k, v in lo.regions.items()})
    tc = ce.CanvasTopology(connections=[ce.Connection(
        src=c.src, dst=c.dst, weight=c.weight, t_src=c.t_src, t_dst=c.t_dst,
        temporal_fill=ce.TemporalFill(c.temporal_fill.value), interpolation_order=c.interpolation_order)
        for c in top.connections])
    torch.testing.assert_close(attention_mask(top, lo), tc.to_attention_mask(lc).float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("w", [1e-13, 1e-45, 1e-300])
def test_a_tiny_weight_still_links_and_a_lone_connection_ignores_its_scale(w):
    """Query weights of unlinked positions are exactly 0 by the count of linking connections, not
    by a threshold: a connection of weight 1e-13 (accepted: finite and > 0) used to be dropped
    as round-off.  Alone on its queries its weight normalises out: the same output as weight 1."""
    from canvas_core.runtime.canvas_attention import CanvasAttention
    from canvas_core.runtime.plan_runner import plan_query_weights

    layout = CanvasLayout(T=3, H=2, W=2, d_model=8, regions={"a": (0, 3, 0, 1, 0, 2), "b": (0, 3, 1, 2, 0, 2)})
    b = layout.region_indices("b")
    x = torch.randn(1, 12, 8)
    outs = []
    for weight in (w, 1.0):
        topo = CanvasTopology(connections=[Connection("b", "a", fn="pooling", weight=weight)])
        plan = lower(topo, layout)
        qw = plan.query_weight["pooling"][plan.inv_perm]
        assert (qw[b] == weight).all() and (np.delete(qw, b) == 0).all()
        np.testing.assert_array_equal(plan_query_weights(plan, [weight])["pooling"], plan.query_weight["pooling"])
        torch.manual_seed(0)
        outs.append(CanvasAttention(topo, layout, d_model=8, n_heads=2)(x))
    assert not torch.equal(outs[0][:, b], x[:, b])
    torch.testing.assert_close(outs[0], outs[1])

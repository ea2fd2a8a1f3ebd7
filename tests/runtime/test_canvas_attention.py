"""CanvasAttention / AttentionDispatcher against the dense reference of DESIGN.md's layer."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from canvas_core.errors import CanvasError, ShapeError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.dispatch import AttentionDispatcher
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec
import canvas_ref_dense_reference as ref  # registered by tests/conftest.py
import canvas_ref_strategies as gen  # registered by tests/conftest.py


class GateMix(nn.Module):
    """A non-softmax test type: per query, sigmoid-gated sum over its allowed keys (row-independent)."""

    def __init__(self, d_model, n_heads=1, dropout=0.0):
        super().__init__()
        self.q = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        s = torch.sigmoid(self.q(queries) @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1]))
        if key_mask is not None:
            s = s * key_mask.to(s.dtype)
        return s @ self.v(values)


def factory(fn, d_model, n_heads, dropout):
    assert fn == "gatemix"
    return GateMix(d_model)


def _run(layout, topo, kernel, B=2, D=8, H=2, beta=1.0, seed=0, block_size=4):
    torch.manual_seed(seed)
    mod = CanvasAttention(topo, layout, d_model=D, n_heads=H, kernel=kernel, attention_factory=factory,
                          beta=beta, kernel_options={"block_size": block_size}).double()
    x = torch.randn(B, layout.num_positions, D, dtype=torch.float64)
    y = mod(x)
    sp = (mod.qkv.weight, mod.qkv.bias, mod.out_proj.weight, mod.out_proj.bias) if mod.qkv is not None else None
    others = {f: mod.fn_modules[f] for f in mod.fn_modules}
    want = ref.reference_layer(x, topo, layout, softmax_params=sp, n_heads=H, beta=beta, other_modules=others)
    return x, y, want


@settings(max_examples=30, deadline=None)
@given(st.data(), st.sampled_from(["dense", "segments", "sparse"]))
def test_layer_equals_reference(data, kernel):
    layout = data.draw(gen.layouts(max_T=4))
    topo = data.draw(gen.topologies(layout, fns=("cross_attention", "self_attention", "gatemix")))
    beta = data.draw(st.sampled_from([1.0, 2.5]))
    x, y, want = _run(layout, topo, kernel, beta=beta, block_size=data.draw(st.integers(1, 6)))
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6)


def test_passthrough_single_position_and_empty_neighbourhood():
    layout = CanvasLayout(T=3, spatial_shape=(3,), d_model=8, regions={
        "a": RegionSpec((0, 3, 0, 1)), "b": RegionSpec((2, 3, 1, 2), period=3)})
    # b at frame 2 = real 6; a -> b with t_dst=-1, drop: only ref where target == 6 links
    topo = CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=0, temporal_fill="drop"),
                                       Connection("b", "b")])
    for kernel in ("dense", "segments", "sparse"):
        x, y, want = _run(layout, topo, kernel)
        torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6)
        # column 2 is in no region: passes through unchanged
        idx = [layout.flat_index(t, 2) for t in range(3)]
        assert torch.equal(y[:, idx], x[:, idx])
        # a at frames 0, 1 links nothing (drop): unchanged too
        idx = [layout.flat_index(t, 0) for t in range(2)]
        assert torch.equal(y[:, idx], x[:, idx])


def test_auto_modes_agree_and_gradients_flow():
    layout = CanvasLayout(T=4, H=6, W=6, d_model=16, regions={
        "video": (0, 4, 0, 5, 0, 6), "action": (0, 4, 5, 6, 0, 3), "reward": RegionSpec((0, 4, 5, 6, 3, 6), period=2)})
    topo = CanvasTopology.causal_temporal(["video", "action", "reward"])
    torch.manual_seed(1)
    a = CanvasAttention(topo, layout, n_heads=4, kernel="dense")
    b = CanvasAttention(topo, layout, n_heads=4, kernel="sparse", kernel_options={"block_size": 16})
    b.load_state_dict(a.state_dict())
    c = CanvasAttention(topo, layout, n_heads=4, kernel="segments")
    c.load_state_dict(a.state_dict())
    x = torch.randn(2, layout.num_positions, 16, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ya, c(x), atol=1e-5, rtol=1e-5)
    yb.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in b.parameters())


def test_active_regions_restricts_sources():
    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 2, 0, 2), "b": (0, 2, 0, 2, 2, 4)})
    topo = CanvasTopology.dense(["a", "b"])
    torch.manual_seed(0)
    mod = AttentionDispatcher(topo, layout, d_model=8, n_heads=2).double()
    x = torch.randn(1, layout.num_positions, 8, dtype=torch.float64)
    y = mod(x, active_regions={"a"})
    sub = CanvasTopology(connections=[c for c in topo.connections if c.src == "a"])
    want = ref.reference_layer(x, sub, layout, n_heads=2, softmax_params=(
        mod.qkv.weight, mod.qkv.bias, mod.out_proj.weight, mod.out_proj.bias))
    torch.testing.assert_close(y, want, atol=1e-9, rtol=1e-9)
    b_idx = layout.region_indices("b")
    assert torch.equal(y[:, b_idx], x[:, b_idx])
    with pytest.raises(CanvasError, match="zzz"):
        mod(x, active_regions={"zzz"})


def test_dispatcher_constructor_and_skip_temporal():
    layout = CanvasLayout(T=3, H=2, W=2, d_model=8, regions={"a": (0, 3, 0, 1, 0, 2), "b": (0, 3, 1, 2, 0, 2)})
    topo = CanvasTopology.causal_temporal(["a", "b"])
    d = AttentionDispatcher(topo, layout, 8, 2, 0.0, skip_temporal=True)
    assert all(c.t_src is None and c.t_dst is None for c in d.plan.topology.connections)
    assert d.summaries is None
    out = d(torch.randn(2, 12, 8))
    assert out.shape == (2, 12, 8)
    with pytest.raises(ShapeError):
        d(torch.randn(2, 11, 8))


def test_torch_compile_fullgraph():
    layout = CanvasLayout(T=3, H=3, W=3, d_model=8, regions={
        "v": (0, 3, 0, 2, 0, 3), "a": RegionSpec((0, 3, 2, 3, 0, 3), period=2)})
    topo = CanvasTopology(connections=[*CanvasTopology.causal_temporal(["v", "a"]).connections,
                                       Connection("a", "v", fn="gatemix")])
    for kernel in ("dense", "segments", "sparse"):
        torch.manual_seed(0)
        mod = CanvasAttention(topo, layout, n_heads=2, kernel=kernel, attention_factory=factory,
                              kernel_options={"block_size": 4})
        x = torch.randn(2, layout.num_positions, 8)
        torch._dynamo.reset()
        compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), mod(x), atol=1e-5, rtol=1e-5)


def test_active_regions_compile_after_a_graph_break_or_prepare():
    """A new set of active regions lowers its plan in Python: without fullgraph that is a graph
    break and the result equals eager; with fullgraph, prepare() builds the sets first."""
    layout = CanvasLayout(T=3, H=2, W=4, d_model=16, regions={"v": (0, 3, 0, 1, 0, 4), "a": (0, 3, 1, 2, 0, 4)})
    topo = CanvasTopology([Connection("v", "v"), Connection("a", "v", fn="pooling"), Connection("a", "a")])
    sets = ({"v"}, {"a"}, {"v", "a"})
    x = torch.randn(2, 24, 16)
    for fullgraph in (False, True):
        torch.manual_seed(0)
        mod = CanvasAttention(topo, layout, n_heads=2)
        if fullgraph:
            assert mod.prepare(*sets) is mod and len(mod._restricted) == 3
        torch._dynamo.reset()
        compiled = torch.compile(lambda h, r, mod=mod: mod(h, active_regions=r), backend="eager", fullgraph=fullgraph)
        for regions in (*sets, None, sets[0]):
            torch.testing.assert_close(compiled(x, regions), mod(x, active_regions=regions))


def test_auto_picks_segments_for_frame_structured_topologies_and_falls_back_otherwise():
    layout = CanvasLayout(T=4, H=6, W=6, d_model=16, regions={
        "video": (0, 4, 0, 5, 0, 6), "action": (0, 4, 5, 6, 0, 3), "reward": (0, 4, 5, 6, 3, 6)})
    topo = CanvasTopology.causal_temporal(["video", "action", "reward"])
    (kern,) = CanvasAttention(topo, layout, n_heads=2).executor.kernels.values()
    assert kern.mode == "dense"  # 144 positions: one masked call beats a few gathers
    mod = CanvasAttention(topo, layout, n_heads=2, kernel_options={"small_n": 0})
    (kern,) = mod.executor.kernels.values()
    assert kern.mode == "segments"
    # 14 regions of 14 different sizes, each attending to itself: 14 distinct (keys, queries)
    # shapes are more than max_buckets=12 batched calls, so auto leaves the segments mode
    regions = {f"r{i}": (0, 1, i, i + 1, 0, i + 1) for i in range(14)}
    lay2 = CanvasLayout(T=1, H=14, W=14, d_model=8, regions=regions)
    topo2 = CanvasTopology(connections=[Connection(r, r) for r in regions])
    mod2 = CanvasAttention(topo2, lay2, n_heads=2, kernel_options={"small_n": 0})
    (kern2,) = mod2.executor.kernels.values()
    assert kern2.mode in ("dense", "sparse")
    forced = CanvasAttention(topo2, lay2, n_heads=2, kernel="segments")
    forced.load_state_dict(mod2.state_dict())
    x = torch.randn(2, lay2.num_positions, 8)
    torch.testing.assert_close(forced(x), mod2(x), atol=1e-5, rtol=1e-5)
    want = ref.reference_layer(x.double(), topo2, lay2, n_heads=2, softmax_params=tuple(
        p.double() for p in (forced.qkv.weight, forced.qkv.bias, forced.out_proj.weight, forced.out_proj.bias)))
    torch.testing.assert_close(forced(x).double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["segments", "dense", "sparse"])
def test_every_mode_is_exact_in_float64_with_weights(kernel):
    # interpolation and connection weights become log-w biases: exact in float64 in every mode
    # (dense and sparse keep float32 buffers and rebuild float64 ones for float64 calls)
    layout = CanvasLayout(T=5, H=2, W=3, d_model=8, regions={
        "a": (0, 5, 0, 1, 0, 3), "b": RegionSpec((0, 5, 1, 2, 0, 3), period=2)})
    topo = CanvasTopology(connections=[
        Connection("a", "b", t_src=0, t_dst=-1, temporal_fill="interpolate", weight=0.5),
        Connection("b", "a", weight=2.0), Connection("a", "a")])
    x, y, want = _run(layout, topo, kernel)
    torch.testing.assert_close(y, want, atol=1e-12, rtol=1e-12)

"""Fast paths against the dense reference on layouts / topologies wider than the shared strategies.

Beyond ``tests/_reference/strategies.py``: up to 12 frames, periods 1-4, offsets up to +-5 (so
targets fall before the first / after the last destination frame), interpolation orders 1-3,
3-d grids, regions not starting at frame 0, single-position regions, overlapping regions,
non-softmax types mixed in, ``active_regions`` subsets, ``beta != 1`` and batch > 1.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec
import canvas_ref_dense_reference as ref  # registered by tests/conftest.py


NON_SOFTMAX = ("pooling", "gated", "linear_attention")


@st.composite
def wide_layouts(draw, max_T=12, max_positions=120):
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 4 if nd < 3 else 2)) for _ in range(nd))
    vol = int(np.prod(shape))
    T = draw(st.integers(1, max(1, min(max_T, max_positions // vol))))
    regions = {}
    for r in range(draw(st.integers(1, 4))):
        t0 = draw(st.integers(0, T - 1))
        b = [t0, draw(st.integers(t0 + 1, T))]
        for s in shape:
            lo = draw(st.integers(0, s - 1))
            single = draw(st.booleans())
            b += [lo, lo + 1 if single else draw(st.integers(lo + 1, s))]
        regions[f"r{r}"] = RegionSpec(tuple(b), period=draw(st.integers(1, 4)))
    return CanvasLayout(T=T, d_model=8, spatial_shape=shape, regions=regions, allow_overlap=True)


@st.composite
def wide_topologies(draw, layout, fns=("cross_attention",)):
    names = list(layout.regions)
    off = st.none() | st.integers(-5, 5)
    conns = [Connection(src=draw(st.sampled_from(names)), dst=draw(st.sampled_from(names)),
                        weight=draw(st.sampled_from([0.1, 0.5, 1.0, 3.0])), t_src=draw(off), t_dst=draw(off),
                        fn=draw(st.sampled_from(fns)),
                        temporal_fill=draw(st.sampled_from(["drop", "hold", "interpolate"])),
                        interpolation_order=draw(st.integers(1, 3)))
             for _ in range(draw(st.integers(1, 6)))]
    return CanvasTopology(connections=conns)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_masks_equal_reference_and_block_mask_matches_tiles(data):
    layout = data.draw(wide_layouts())
    topo = data.draw(wide_topologies(layout))
    mask = topo.to_attention_mask(layout).double()
    torch.testing.assert_close(mask, ref.reference_mask(topo, layout), atol=1e-6, rtol=1e-6)
    bs = data.draw(st.sampled_from([1, 2, 3, 7, 16, 130]))
    bm = topo.to_block_mask(layout, block_size=bs)
    perm = torch.as_tensor(bm.perm)
    packed = mask[perm][:, perm].numpy()
    n = packed.shape[0]
    nb = -(-n // bs)
    for a in range(nb):
        for b in range(nb):
            tile = packed[a * bs:(a + 1) * bs, b * bs:(b + 1) * bs]
            nonempty = bool((tile > 0).any())
            assert (bm.layout.state[a, b] > 0) == nonempty
            if bm.layout.state[a, b] == bm.layout.FULL:  # one weight on every pair inside N
                assert (tile > 0).all() and np.all(tile == tile.flat[0])
    np.testing.assert_array_equal(bm.kv_num_blocks, (bm.layout.state > 0).sum(axis=1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["dense", "segments", "sparse", "auto"]))
def test_layer_equals_reference_wide(data, kernel):
    layout = data.draw(wide_layouts())
    mixed = data.draw(st.booleans())
    topo = data.draw(wide_topologies(layout, fns=("cross_attention", *NON_SOFTMAX) if mixed
                                     else ("cross_attention", "self_attention")))
    beta = data.draw(st.sampled_from([1.0, 0.5, 3.0]))
    B, H = data.draw(st.sampled_from([1, 3])), data.draw(st.sampled_from([1, 2, 4]))
    bs = data.draw(st.sampled_from([1, 2, 5, 16, 64, 130]))
    active = None
    if data.draw(st.booleans()):
        active = set(data.draw(st.lists(st.sampled_from(list(layout.regions)), unique=True)))
    torch.manual_seed(0)
    opts = {} if kernel == "segments" else {"block_size": bs}
    mod = CanvasAttention(topo, layout, d_model=8, n_heads=H, kernel=kernel, beta=beta,
                          kernel_options=opts).double()
    x = torch.randn(B, layout.num_positions, 8, dtype=torch.float64)
    y = mod(x) if active is None else mod(x, active_regions=active)
    sp = (mod.qkv.weight, mod.qkv.bias, mod.out_proj.weight, mod.out_proj.bias) if mod.qkv is not None else None
    sub = topo if active is None else CanvasTopology(connections=[c for c in topo.connections if c.src in active])
    with torch.no_grad():
        want = ref.reference_layer(x, sub, layout, softmax_params=sp, n_heads=H, beta=beta,
                                   other_modules={f: mod.fn_modules[f] for f in mod.fn_modules})
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kernel", ["dense", "segments", "sparse"])
def test_bfloat16_matches_reference_within_tolerance(kernel):
    layout = CanvasLayout(T=6, spatial_shape=(2, 3), d_model=8, allow_overlap=True, regions={
        "v": RegionSpec((0, 6, 0, 2, 0, 2)), "a": RegionSpec((1, 6, 1, 2, 2, 3), period=2),
        "s": RegionSpec((2, 5, 0, 1, 1, 3), period=3)})
    topo = CanvasTopology(connections=[
        Connection("v", "a", t_src=0, t_dst=-5, temporal_fill="interpolate", interpolation_order=2, weight=0.5),
        Connection("a", "v", t_src=1, t_dst=5, temporal_fill="hold"),
        Connection("s", "v", t_dst=0, temporal_fill="interpolate"),
        Connection("v", "s", fn="pooling"), Connection("s", "s", t_src=0, t_dst=0, temporal_fill="drop")])
    torch.manual_seed(0)
    mod = CanvasAttention(topo, layout, d_model=8, n_heads=2, kernel=kernel,
                          kernel_options={} if kernel == "segments" else {"block_size": 3}).to(torch.bfloat16)
    x = torch.randn(2, layout.num_positions, 8).to(torch.bfloat16)
    y = mod(x)
    sp = tuple(p.double() for p in (mod.qkv.weight, mod.qkv.bias, mod.out_proj.weight, mod.out_proj.bias))
    with torch.no_grad():
        want = ref.reference_layer(x.double(), topo, layout, softmax_params=sp, n_heads=2,
                                   other_modules={f: mod.fn_modules[f].double() for f in mod.fn_modules})
    assert y.dtype == torch.bfloat16 and not torch.isnan(y).any()
    torch.testing.assert_close(y.double(), want, atol=5e-2, rtol=5e-2)

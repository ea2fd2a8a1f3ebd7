"""A NaN (or inf) in one position reaches only the positions that read it, in every kernel mode.

Property test over random layouts and topologies: after one ``CanvasAttention`` forward with one
poisoned input position ``j``, the non-finite outputs are a subset of ``{j} + {i : W[i, j] > 0}``
(``W`` from the dense reference in ``tests/_reference``), and every other output equals the
output of the same layer on the clean input.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import canvas_core as cc
from canvas_core import CanvasAttention
from tests._reference.dense_reference import weight_matrices
from tests._reference.strategies import layouts, topologies

MODES = ("dense", "segments", "sparse", "auto")


def _readers(topology, layout, j):
    W, _ = weight_matrices(topology, layout)
    reads = torch.zeros(layout.num_positions, dtype=torch.bool)
    for Wf in W.values():
        reads |= Wf[:, j] > 0
    reads[j] = True
    return reads


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.filterwarnings("ignore:.*links nothing")
@pytest.mark.filterwarnings("ignore:.*flex_attention")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_non_finite_stays_with_its_readers(mode, bad, data):
    _check(mode, bad, data)


@pytest.mark.filterwarnings("ignore:.*links nothing")
@pytest.mark.filterwarnings("ignore:.*flex_attention")
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_flex_kernel_keeps_non_finite_with_its_readers(bad, data):
    """The FlexAttention backend (canvas-backend-flex, eager on CPU, so slow: fewer examples)."""
    _check("flex_cpu", bad, data)


def _check(mode, bad, data):
    layout = data.draw(layouts(max_T=4, max_side=3, max_regions=3))
    topology = data.draw(topologies(layout, fns=("cross_attention", "self_attention"), max_conns=4))
    torch.manual_seed(0)
    opts = {"block_size": data.draw(st.sampled_from([1, 2, 4]))} if mode == "sparse" else {}
    if mode == "flex_cpu":
        opts = {"compile": False, "block_size": data.draw(st.sampled_from([2, 4, 128]))}
    layer = CanvasAttention(topology, layout, n_heads=2, kernel=mode, kernel_options=opts).eval()
    _poison_one_and_compare(layer, topology, layout, bad, data, mode)


def _poison_one_and_compare(layer, topology, layout, bad, data, label):
    """One input entry set to ``bad``: the non-finite outputs lie within its readers, and every
    other output equals the clean one."""
    n = layout.num_positions
    x = torch.randn(2, n, layout.d_model)
    j = data.draw(st.integers(0, n - 1))
    poisoned = x.clone()
    poisoned[data.draw(st.integers(0, 1)), j, data.draw(st.integers(0, layout.d_model - 1))] = bad
    with torch.no_grad():
        clean, out = layer(x), layer(poisoned)
    reads = _readers(topology, layout, j)
    leaked = (~torch.isfinite(out)).any(dim=2).any(dim=0) & ~reads
    assert not leaked.any(), f"{label}: positions {leaked.nonzero().flatten().tolist()} do not read {j} but went non-finite"
    torch.testing.assert_close(out[:, ~reads], clean[:, ~reads])


def test_xformers_kernel_keeps_non_finite_with_its_readers(monkeypatch):
    """The xformers backend's logic, with xformers' attention stood in by SDPA (no GPU here)."""
    import sys
    import types

    import torch.nn.functional as F

    def mea(q, k, v, attn_bias=None, p=0.0, scale=None):  # (B, N, H, d), like xformers
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_bias, scale=scale)
        return out.transpose(1, 2)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = mea
    pkg = types.ModuleType("xformers")
    pkg.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    from canvas_backend_xformers.kernel import XFormersKernel

    layout = cc.CanvasLayout(T=2, H=4, W=4, d_model=8, regions={
        "a": (0, 1, 0, 4, 0, 2), "b": (0, 1, 0, 4, 2, 4), "c": (1, 2, 0, 4, 0, 4)})
    topology = cc.CanvasTopology([cc.Connection("a", "a"), cc.Connection("c", "b"), cc.Connection("b", "b")])
    torch.manual_seed(0)
    layer = CanvasAttention(topology, layout, n_heads=2, kernel=XFormersKernel)
    x = torch.randn(1, 32, 8)
    for j in (0, 2, 20):
        poisoned = x.clone()
        poisoned[0, j, 1] = math.nan
        with torch.no_grad():
            clean, out = layer(x), layer(poisoned)
        reads = _readers(topology, layout, j)
        assert not ((~torch.isfinite(out)).any(dim=2)[0] & ~reads).any()
        torch.testing.assert_close(out[:, ~reads], clean[:, ~reads])


def _module_types():
    from canvas_core.errors import CanvasError
    from canvas_core.plugins import create_attention, list_attention_types

    names = []
    for name in list_attention_types():
        if name in ("cross_attention", "self_attention"):
            continue  # the kernels' property test above
        try:
            create_attention(name, d_model=8, n_heads=2)
        except CanvasError:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("fn", _module_types())
@pytest.mark.filterwarnings("ignore:.*links nothing")
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), bad=st.sampled_from([math.nan, math.inf]))
def test_every_type_keeps_non_finite_with_its_readers(fn, bad, data):
    """Every registered type, mixed with softmax links: whichever call the runtime makes (per key
    set, or one masked call over the union of a type's keys, which pooling and the cosine,
    sigmoid and sparse softmax types get when their key sets overlap), a poisoned position reaches
    only the positions linked to it."""
    layout = data.draw(layouts(max_T=4, max_side=3, max_regions=3))
    topology = data.draw(topologies(layout, fns=(fn, fn, "cross_attention"), max_conns=5))
    torch.manual_seed(0)
    layer = CanvasAttention(topology, layout, n_heads=2).eval()
    _poison_one_and_compare(layer, topology, layout, bad, data, fn)


@pytest.mark.parametrize("fn", ["pooling", "cosine_attention", "sigmoid_attention", "sparse_attention", "gated"])
def test_masked_call_over_a_causal_union_keeps_a_future_nan_out_of_the_past(fn):
    """``b`` reads ``a`` at its own frame and every earlier one (six connections): the key sets
    overlap, so these types get one masked call over all of ``a``.  A NaN in ``a`` at frame 3
    reaches ``b`` at frames 3-5 only, never frames 0-2."""
    T = 6
    layout = cc.CanvasLayout(T=T, H=1, W=2, d_model=8, regions={"a": (0, T, 0, 1, 0, 1), "b": (0, T, 0, 1, 1, 2)})
    topology = cc.CanvasTopology([cc.Connection("b", "a", fn=fn, t_src=0, t_dst=-d, temporal_fill="drop")
                                  for d in range(T)])
    torch.manual_seed(0)
    layer = CanvasAttention(topology, layout, d_model=8, n_heads=2).eval()
    x = torch.randn(1, layout.num_positions, 8)
    a, b = layout.region_indices("a"), layout.region_indices("b")
    x[0, a[3], 2] = math.nan
    with torch.no_grad():
        out = layer(x)[0]
    nan_b = [t for t in range(T) if bool(out[b[t]].isnan().any())]
    assert nan_b == [3, 4, 5]

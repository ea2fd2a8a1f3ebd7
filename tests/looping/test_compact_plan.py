"""compact_plan (runtime/plan_runner.py): the plan restricted to the token positions, in
token order, equals the dense weight matrix gathered to the tokens; W_f matches its definition."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.compiler.lowering import lower
from canvas_core.runtime.plan_runner import compact_plan
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec, TemporalFill

OFFSET = st.one_of(st.none(), st.integers(-2, 2))


@st.composite
def cases(draw):
    T = draw(st.integers(1, 4))
    H, W = draw(st.integers(2, 4)), draw(st.integers(1, 4))
    cut = draw(st.integers(1, H - 1))
    regions = {"a": RegionSpec((0, T, 0, cut, 0, W), period=draw(st.sampled_from([1, 2]))),
               "b": (0, T, cut, H, 0, W)}
    lay = CanvasLayout(T=T, spatial_shape=(H, W), d_model=8, regions=regions)
    conns = [Connection(draw(st.sampled_from("ab")), draw(st.sampled_from("ab")),
                        weight=draw(st.sampled_from([0.5, 1.0, 3.0])), t_src=draw(OFFSET), t_dst=draw(OFFSET),
                        fn=draw(st.sampled_from(["cross_attention", "pooling"])),
                        temporal_fill=draw(st.sampled_from(list(TemporalFill))))
             for _ in range(draw(st.integers(0, 5)))]
    n = lay.num_positions
    # tokens: a random subset of the positions (possibly empty), in a random order
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    tokens = [i for i in range(n) if keep[i]]
    tokens = draw(st.permutations(tokens))
    return lay, CanvasTopology(connections=conns), list(tokens)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_compact_plan_is_the_dense_plan_gathered_to_the_tokens(case):
    lay, top, tokens = case
    plan = lower(top, lay)
    sub = compact_plan(plan, tokens)
    assert sub.n == len(tokens)
    assert sorted(sub.perm.tolist()) == list(range(len(tokens)))
    assert np.array_equal(sub.perm[sub.inv_perm], np.arange(len(tokens)))
    idx = torch.tensor(tokens, dtype=torch.long)
    for fn in plan.groups:
        full = plan.to_dense(fn=fn, dtype=torch.float64)
        want = full[idx][:, idx] if len(tokens) else torch.zeros(0, 0, dtype=torch.float64)
        got = sub.to_dense(fn=fn, dtype=torch.float64) if sub.groups[fn].n_rects else torch.zeros_like(want)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # W_f(p): the weights of f's connections that link token p to at least one token
        wf = np.zeros(len(tokens))
        for ci, c in enumerate(top.connections):
            if plan.fn_of_connection[ci] != fn:
                continue
            m = CanvasTopology(connections=[c]).to_attention_mask(lay).double()
            if len(tokens):
                wf += c.weight * (m[idx][:, idx] > 0).any(1).numpy()
        np.testing.assert_allclose(sub.query_weight[fn][sub.inv_perm], wf, rtol=1e-12, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(cases(), st.integers(0, 2 ** 16))
def test_flex_kernel_on_a_compacted_plan_equals_the_reference_kernel(case, seed):
    """The CUDA path's kernel (FlexAttention, run eagerly on CPU for inference) on a plan
    restricted to tokens: same outputs as the reference kernel, in the tokens' order."""
    flex = __import__("pytest").importorskip("canvas_backend_flex.kernel")
    from canvas_core.runtime.plan_runner import PlanRunner, mix_softmax_groups

    lay, top, tokens = case
    sub = compact_plan(lower(top, lay), tokens)
    if "cross_attention" not in sub.groups or not sub.groups["cross_attention"].n_rects:
        return
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, len(tokens), 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref = PlanRunner(sub, ["cross_attention"], {"cross_attention": "segments"}, n_heads=2, head_dim=4)
    fx = PlanRunner(sub, ["cross_attention"], {"cross_attention": flex.FlexKernel}, n_heads=2, head_dim=4,
                    kernel_options={"compile": False, "block_size": 16})
    want, _ = mix_softmax_groups(ref, q, k, v, scale=0.5)
    got, _ = mix_softmax_groups(fx, q, k, v, scale=0.5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

"""``runtime/block_views.py``: a per-key-set type's inputs taken by slices when a bucket's
positions are strided blocks equal the index gathers they replace (values and gradients, bit for
bit), on random strided and non-strided buckets, batch 1-3; and the layers / backbone runners that
use them give exactly what the gathers give, on random layouts (periods, offsets, fills: key sets
that are not strided, empty sets, single positions), batch 1 and 2."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import canvas_core.plugins as P  # noqa: E402
import canvas_ref_strategies as gen  # noqa: E402
import canvas_ref_toy_types as toy  # noqa: E402
from canvas_core.compiler.lowering import lower  # noqa: E402
from canvas_core.runtime.block_views import block_inputs, strided_blocks  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402
from canvas_core.runtime.plan_runner import PlanRunner, compact_plan, run_module_groups  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection  # noqa: E402


Scan = toy.RunningMeanScan  # a plugin-style scan (no key_mask: run per key set)


@pytest.fixture(scope="module", autouse=True)
def _scan_type():
    P.register_attention("t_block_scan", Scan)
    yield
    P.unregister_attention("t_block_scan")


def _gathers(x, Q, K):
    B, _, D = x.shape
    G, nq = Q.shape
    q = x.index_select(1, torch.from_numpy(Q.reshape(-1))).reshape(B * G, nq, D)
    k = x.index_select(1, torch.from_numpy(K.reshape(-1))).reshape(B * G, K.shape[1], D)
    return q, k


def _same_values_and_gradients(Q, K, n, spec, B, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, 3, generator=g, dtype=torch.float64)
    G, nq, nk = Q.shape[0], Q.shape[1], K.shape[1]
    dq, dk = torch.randn(B * G, nq, 3, generator=g, dtype=torch.float64), torch.randn(B * G, nk, 3, generator=g,
                                                                                       dtype=torch.float64)
    grads = []
    for fast in (True, False):
        xi = x.clone().requires_grad_(True)
        q, k = block_inputs(xi, spec, G, nq, nk) if fast else _gathers(xi, Q, K)
        assert q.is_contiguous() and k.is_contiguous()
        ((q * dq).sum() + (k * dk).sum()).backward()
        grads.append((q.detach(), k.detach(), xi.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@st.composite
def strided_buckets(draw):
    G = draw(st.integers(1, 4))
    S = draw(st.integers(1, 7))
    nq, nk = draw(st.integers(1, S)), draw(st.integers(1, S))
    q_off, k_off = draw(st.integers(0, S - nq)), draw(st.integers(0, S - nk))
    lo, tail = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    step = np.arange(G)[:, None] * S
    Q = lo + q_off + step + np.arange(nq)
    K = lo + k_off + step + np.arange(nk)
    if draw(st.booleans()):  # stacked in decreasing order
        Q, K = Q[::-1], K[::-1]
    return Q.astype(np.int64), K.astype(np.int64), lo + G * S + tail


@settings(max_examples=120, deadline=None)
@given(case=strided_buckets(), B=st.integers(1, 3), seed=st.integers(0, 1000))
def test_strided_buckets_are_found_and_their_slices_equal_the_gathers(case, B, seed):
    Q, K, n = case
    spec = strided_blocks(Q, K, n)
    assert spec is not None, (Q, K, n)
    _same_values_and_gradients(Q, K, n, spec, B, seed)


@settings(max_examples=120, deadline=None)
@given(n=st.integers(1, 14), G=st.integers(1, 3), nq=st.integers(1, 4), nk=st.integers(1, 4),
       B=st.integers(1, 2), seed=st.integers(0, 10_000))
def test_any_bucket_found_strided_is_read_exactly(n, G, nq, nk, B, seed):
    """Random index sets (sorted runs, gaps, repeats across rows, a negative period): a layout is
    only claimed when it rebuilds the indices, and then the slices equal the gathers."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, n, size=(G, 1))
    Q = np.sort(start + rng.integers(0, 2, size=(G, nq)).cumsum(1), axis=1) % n
    K = (rng.integers(0, n, size=(G, 1)) + np.arange(nk)) % n if seed % 2 else rng.integers(0, n, size=(G, nk))
    spec = strided_blocks(Q, K, n)
    if spec is None:
        return
    lo, S, q_off, k_off, reverse = spec
    step = np.arange(G)[:, None] * S
    order = slice(None, None, -1) if reverse else slice(None)
    assert np.array_equal(Q[order], lo + q_off + step + np.arange(nq))
    assert np.array_equal(K[order], lo + k_off + step + np.arange(nk))
    assert 0 <= lo and lo + G * S <= n and max(q_off + nq, k_off + nk) <= S
    _same_values_and_gradients(Q, K, n, spec, B, seed)


def test_the_issue_layer_reads_its_frames_by_slices():
    """The layer of issue 23 (a 2-row region reading the rest of its frame): one bucket of the T
    frames, read by slices; the same runs stacked in a shuffled order are not claimed."""
    T, H, W = 4, 4, 3
    lay = CanvasLayout(T=T, H=H, W=W, d_model=8, regions={"video": (0, T, 0, H - 2, 0, W), "a": (0, T, H - 2, H, 0, W)})
    top = CanvasTopology(connections=[Connection("a", "video", fn="t_block_scan", t_src=0, t_dst=0)])
    layer = CanvasAttention(top, lay, d_model=8, n_heads=2)
    (Q, K, _), = layer.executor.key_set_buckets(0)
    assert sorted(Q[:, 0].tolist()) == [t * H * W + (H - 2) * W for t in range(T)]
    (*_, blocks), = layer.executor.flat_buckets(0)
    assert blocks[:4] == (0, H * W, (H - 2) * W, 0)
    shuffled = [1, 0, 2, 3]
    assert strided_blocks(Q.numpy()[shuffled], K.numpy()[shuffled], lay.num_positions) is None


def _without_slices(runner):
    flat = runner.flat_buckets
    runner.flat_buckets = lambda i: [b[:-1] + (None,) for b in flat(i)]
    return flat


@st.composite
def framed(draw, fns):
    """The shape of the issue's layer, small: T frames of H x W rows split into two regions, links
    between and within them (same- or previous-frame, any fill): key sets that are frame runs."""
    T, H, W = draw(st.integers(2, 4)), draw(st.integers(2, 4)), draw(st.integers(1, 3))
    cut = draw(st.integers(1, H - 1))
    layout = CanvasLayout(T=T, H=H, W=W, d_model=8, regions={"v": (0, T, 0, cut, 0, W), "a": (0, T, cut, H, 0, W)})
    conns = [Connection(draw(st.sampled_from("av")), draw(st.sampled_from("av")), fn=draw(st.sampled_from(fns)),
                        weight=draw(st.sampled_from([0.5, 1.0, 2.0])), t_src=draw(st.sampled_from([0, 0, None])),
                        t_dst=draw(st.sampled_from([0, -1, None])), temporal_fill=draw(st.sampled_from(gen.FILLS)))
             for _ in range(draw(st.integers(1, 3)))]
    return layout, CanvasTopology(connections=conns)


@st.composite
def layer_cases(draw):
    fns = ("t_block_scan", "cross_attention", "linear_attention")
    if draw(st.booleans()):
        return draw(framed(fns))
    layout = draw(gen.layouts(max_T=4, max_side=3, max_regions=3))
    topo = draw(gen.topologies(layout, fns=fns, max_conns=3))
    extra = draw(st.sampled_from([None, 0, -1]))
    if extra is not None:  # a same- or previous-frame link of a per-key-set type
        names = list(layout.regions)
        c = Connection(draw(st.sampled_from(names)), draw(st.sampled_from(names)), fn=draw(st.sampled_from(fns[::2])),
                       t_src=0, t_dst=extra, temporal_fill=draw(st.sampled_from(gen.FILLS)))
        topo = CanvasTopology(connections=list(topo.connections) + [c])
    return layout, topo


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=layer_cases(), B=st.integers(1, 2), seed=st.integers(0, 1000))
def test_canvas_layer_with_slices_equals_the_gathers(case, B, seed):
    layout, topo = case
    torch.manual_seed(seed)
    layer = CanvasAttention(topo, layout, d_model=8, n_heads=2).double()
    x = torch.randn(B, layout.num_positions, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = []
    for fast in (True, False):
        if not fast:
            _without_slices(layer.executor)
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        params = [p for p in layer.parameters()]
        grads = torch.autograd.grad((out * out.detach().cos()).sum(), [xi] + params, allow_unused=True)
        got.append([out.detach()] + [g for g in grads])
    for a, b in zip(*got):
        assert (a is None and b is None) or torch.equal(a, b)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=layer_cases(), seed=st.integers(0, 1000), data=st.data())
def test_backbone_runner_with_slices_equals_the_gathers(case, seed, data):
    """The backbone path: the plan compacted to a random subset of the positions in a random token
    order (``compact_plan``), a ``PlanRunner`` over it, ``run_module_groups`` with gates."""
    layout, topo = case
    n = layout.num_positions
    if data.draw(st.booleans()):  # every position, in canvas order (a video backbone's usual layout)
        tokens = list(range(n))
    else:
        keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        tokens = data.draw(st.permutations([i for i in range(n) if keep[i]]))
    plan = compact_plan(lower(topo, layout), tokens)
    runner = PlanRunner(plan, ["cross_attention"], n_heads=2, head_dim=4, normalize="softmax").double()
    if not runner.other_names:
        return
    torch.manual_seed(seed)
    mods = {f: (Scan(8) if f == "t_block_scan" else P.create_attention(f, 8, 2)).double() for f in runner.other_names}
    gates = {f: torch.tensor(0.5 + i, dtype=torch.float64) for i, f in enumerate(runner.other_names)}
    x = torch.randn(2, len(tokens), 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = []
    for fast in (True, False):
        if not fast:
            _without_slices(runner)
        xi = x.clone().requires_grad_(True)
        out = run_module_groups(runner, xi, mods, gates)
        got.append((out.detach(), torch.autograd.grad(out.square().sum(), xi)[0]))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])

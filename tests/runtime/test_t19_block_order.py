"""A per-key-set type's strided buckets, as the runner reads them (issue 23, what a canvas layer
spends around the type's call): key sets found stacked in decreasing order are restacked in
increasing order when the runner is built, so the slices need no flip forward nor backward, and
results stay those of the decreasing stack (up to the order of a parameter gradient's sum); one of
canvas-core's own modules declaring ``takes_strided_inputs`` gets the strided views uncopied,
with the same values and gradients; a plugin never does."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import canvas_core.plugins as P  # noqa: E402
import canvas_core.runtime.plan_runner as PR  # noqa: E402
import canvas_ref_toy_types as toy  # noqa: E402
from canvas_core.runtime.block_views import block_inputs  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection  # noqa: E402
from tests._autograd import graph_node_names  # noqa: E402

PER_SET = ("linear_attention", "rwkv", "hyena", "perceiver", "mixture", "local_attention", "copy",
           "random_fixed", "cosine_attention", "pooling", "gated", "t19_scan")


@pytest.fixture(scope="module", autouse=True)
def _scan_type():
    P.register_attention("t19_scan", toy.RunningMeanScan)
    yield
    P.unregister_attention("t19_scan")


def _layer(fn, gap=False, self_link=False, T=4, H=5, W=3):
    """Issue 23's layer, small: region ``a`` (the last rows of each frame) reads ``video`` (the
    first rows) of its own frame with ``fn``; ``gap``: one row between them belongs to neither;
    ``self_link``: ``a`` also reads itself with ``fn`` (overlapping query and key runs)."""
    top_v = H - 2 - (1 if gap else 0)
    lay = CanvasLayout(T=T, H=H, W=W, d_model=8, regions={"video": (0, T, 0, top_v, 0, W), "a": (0, T, H - 2, H, 0, W)})
    conns = [Connection("video", "video", t_src=0, t_dst=0), Connection("a", "video", fn=fn, t_src=0, t_dst=0)]
    if self_link:
        conns.append(Connection("a", "a", fn=fn, t_src=0, t_dst=0))
    torch.manual_seed(0)
    return CanvasAttention(CanvasTopology(connections=conns), lay, d_model=8, n_heads=2).double()


def _run(layer, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, layer.plan.n, 8, dtype=torch.float64, generator=g).requires_grad_(True)
    out = layer(x)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * out.detach().cos()).sum(), [x] + params, allow_unused=True)
    return out, [out.detach()] + list(grads)


@pytest.mark.parametrize("fn", ["hyena", "t19_scan"])
def test_decreasing_strided_stacks_are_read_increasing_without_a_flip(fn):
    layer = _layer(fn)
    (qf, _, G, nq, nk, _, blocks), = layer.executor.flat_buckets(0)
    firsts = qf.reshape(G, nq)[:, 0].tolist()
    assert firsts == sorted(firsts) and blocks is not None and blocks[4] is False
    out, _ = _run(layer, 1)
    assert not any("Flip" in name for name in graph_node_names(out))


@pytest.mark.parametrize("fn", PER_SET)
@pytest.mark.parametrize("B,gap,self_link", [(1, False, False), (2, False, False), (1, True, False),
                                             (1, False, True), (2, False, True)])
def test_restacked_buckets_give_what_the_decreasing_stacks_gave(fn, B, gap, self_link, monkeypatch):
    got = _run(_layer(fn, gap, self_link), B)[1]
    with monkeypatch.context() as m:  # the stacks as shape_buckets makes them (decreasing here)
        m.setattr(PR, "_ascending", lambda bucket, n: bucket)
        old_layer = _layer(fn, gap, self_link)
    flat = old_layer.executor.flat_buckets(old_layer.executor.other_names.index(fn))
    assert any(b[-1] is not None and b[-1][4] for b in flat)  # the case this is about
    want = _run(old_layer, B)[1]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # output and x's gradient
    for a, b in zip(got[2:], want[2:]):  # a parameter's gradient sums the rows in another order
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def _contiguity(module):
    seen = []
    module.register_forward_pre_hook(lambda mod, args: seen.append(tuple(a.is_contiguous() for a in args[:3])))
    return seen


@pytest.mark.parametrize("fn", ["hyena", "linear_attention", "rwkv", "perceiver", "copy"])
@pytest.mark.parametrize("B", [1, 2])
def test_a_builtin_type_declaring_strided_inputs_gets_views_with_the_same_results(fn, B):
    plain, strided = _layer(fn), _layer(fn)
    mod = strided.fn_modules[fn]
    if fn != "hyena":  # hyena declares it itself (while its projections are plain nn.Linear)
        mod.takes_strided_inputs = True
    seen = _contiguity(mod)
    got, want = _run(strided, B)[1], _run(plain, B)[1]
    if B == 1:
        assert seen and not seen[0][1]  # the keys: a strided view of x, not a copy
    for a, b in zip(got, want):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_plugin_declaring_strided_inputs_still_gets_contiguous_copies():
    layer = _layer("t19_scan")
    mod = layer.fn_modules["t19_scan"]
    mod.takes_strided_inputs = True
    seen = _contiguity(mod)
    _run(layer, 1)
    assert seen == [(True, True, True)]


def test_block_inputs_views_equal_the_copies():
    x = torch.randn(2, 24, 3, dtype=torch.float64)
    blocks = (0, 6, 4, 0, False)
    for B in (1, 2):
        views = block_inputs(x[:B], blocks, 4, 2, 4, contiguous=False)
        copies = block_inputs(x[:B], blocks, 4, 2, 4)
        assert all(torch.equal(v, c) for v, c in zip(views, copies))
        assert copies[0].is_contiguous() and copies[1].is_contiguous()
    assert not block_inputs(x[:1], blocks, 4, 2, 4, contiguous=False)[1].is_contiguous()


class _ViewingLinear(torch.nn.Linear):
    """A projection that flattens its input with ``.view`` (needs it contiguous)."""

    def forward(self, x):
        return super().forward(x.view(-1, x.shape[-1])).view(*x.shape[:-1], self.out_features)


def test_hyena_with_a_replaced_projection_gets_contiguous_inputs():
    layer = _layer("hyena")
    mod = layer.fn_modules["hyena"]
    assert mod.takes_strided_inputs
    viewing = _ViewingLinear(8, 8).double()
    viewing.load_state_dict(mod.q_proj.state_dict())
    mod.q_proj = viewing
    assert not mod.takes_strided_inputs
    seen = _contiguity(mod)
    _run(layer, 1)  # a strided view reaching .view would raise
    assert seen == [(True, True, True)]

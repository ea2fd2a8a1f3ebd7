"""Types whose backward is written by hand (rwkv, hyena, linear_attention) and records no graph:
a gradient taken with ``create_graph=True`` (to be differentiated again) stops with an
UnavailableError naming the type, never with torch's ``out=`` message and never by quietly
leaving out the hand-written part's terms; ordinary gradients are unchanged."""

from __future__ import annotations

import pytest
import torch

from canvas_core.attention import HyenaAttention, LinearAttention, RWKVAttention
from canvas_core.attention.first_order import first_order_backward, first_order_only
from canvas_core.errors import UnavailableError
from canvas_core.runtime.dispatch import AttentionDispatcher
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

TYPES = {"rwkv": RWKVAttention, "hyena": HyenaAttention, "linear_attention": LinearAttention}


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("Nq", [4, 5, 12])  # reads at equal strides, unequal, one per key
@pytest.mark.parametrize("loss", ["square", "linear"])  # incoming gradients that need grad, or constants
def test_module_create_graph_names_the_type(name, Nq, loss):
    torch.manual_seed(0)
    m = TYPES[name](8, 2)
    q = torch.randn(2, Nq, 8, requires_grad=True)
    kv = torch.randn(2, 12, 8, requires_grad=True)
    out = m(q, kv, kv)
    total = out.square().sum() if loss == "square" else out.sum()
    with pytest.raises(UnavailableError, match=rf"{name}'s .* has no second derivative.*create_graph=True.*detach"):
        torch.autograd.grad(total, (q, kv), create_graph=True)
    # the ordinary gradient is unaffected, and equals a finite-difference check in float64
    m64 = TYPES[name](8, 2).double()
    q64, kv64 = (t.detach().double().requires_grad_(True) for t in (q, kv))
    assert torch.autograd.gradcheck(lambda a, b: m64(a, b, b), (q64, kv64))


@pytest.mark.parametrize("name", sorted(TYPES))
def test_gradient_penalty_through_a_canvas_layer_names_the_type(name):
    """The layer around the type: a penalty on the input gradient (WGAN-GP style)."""
    lay = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"v": (0, 2, 0, 3, 0, 4), "a": (0, 2, 3, 4, 0, 4)})
    # the type's link alone: torch's CPU flash attention (the softmax links) has no double backward
    top = CanvasTopology(connections=[Connection("a", "v", t_src=0, t_dst=0, fn=name)])
    torch.manual_seed(0)
    layer = AttentionDispatcher(top, lay, 16, 2)
    x = torch.randn(1, 32, 16, requires_grad=True)
    with pytest.raises(UnavailableError, match=f"{name}'s"):
        torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    g, = torch.autograd.grad(layer(x).square().sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_decorated_backward_runs_as_written_without_create_graph():
    """Without ``create_graph`` the decorated backward's own result comes back; with it, the
    error, before the backward runs."""
    calls = []

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @first_order_backward("a test function")
        def backward(ctx, g):
            calls.append(g)
            return 2 * ctx.saved_tensors[0] * g

    x = torch.randn(3, requires_grad=True)
    Square.apply(x).sum().backward()
    assert torch.equal(x.grad, 2 * x.detach()) and len(calls) == 1
    with pytest.raises(UnavailableError, match="a test function has no second derivative"):
        torch.autograd.grad(Square.apply(x).sum(), x, create_graph=True)
    assert len(calls) == 1


def test_first_order_only_passes_none_and_lists_through():
    """The identity form (for operators whose backward is an operator): values unchanged, the
    error only when the result is differentiated."""
    g = torch.randn(2, requires_grad=True)
    with torch.enable_grad():
        out = first_order_only("x", (None, [g, None], g))
    assert out[0] is None and out[1][1] is None
    assert torch.equal(out[1][0], g) and torch.equal(out[2], g)
    with pytest.raises(UnavailableError, match="x has no second derivative"):
        out[2].sum().backward()
    with torch.no_grad():
        assert first_order_only("x", (g,))[0] is g


@pytest.mark.parametrize("name", ["cosine_attention", "sigmoid_attention", "pooling", "local_attention",
                                  "sparse_attention", "cross_attention", "perceiver", "gated"])
def test_types_with_torch_backwards_have_exact_second_derivatives_in_a_layer(name):
    """What docs/limits.md promises: these types pass gradgradcheck in a canvas layer; the softmax
    ones under torch's math attention backend (its CPU flash kernel has no double backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    lay = CanvasLayout(T=2, H=3, W=2, d_model=8, regions={"v": (0, 2, 0, 2, 0, 2), "a": (0, 2, 2, 3, 0, 2)})
    top = CanvasTopology(connections=[Connection("v", "v", t_src=0, t_dst=0),
                                      Connection("a", "v", t_src=0, t_dst=-1, fn=name)])
    torch.manual_seed(0)
    layer = AttentionDispatcher(top, lay, 8, 2).double()
    x = torch.randn(1, 12, 8, dtype=torch.float64, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):
        assert torch.autograd.gradgradcheck(layer, (x,))

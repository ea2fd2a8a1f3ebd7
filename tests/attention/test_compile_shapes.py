"""Every registered type compiles with ``fullgraph=True`` and keeps compiling when the shapes
change between calls.

After a second shape, dynamo recompiles with symbolic sizes ("automatic dynamic"); size
arithmetic that it cannot trace (``math.isqrt`` of a size) or whose guards it cannot replay (a
float power of one) then stops the compile.  The shapes below follow each other as a rollout or
a canvas of another size would: strided reads (``Nk = 3 Nq``), one key per query, and key counts
that are not multiples of the query count.
"""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasError
from canvas_core.plugins import create_attention, list_attention_types

SHAPES = ((4, 12), (12, 12), (4, 5), (3, 7), (1, 9))


def _available():
    names = []
    for name in list_attention_types():
        try:
            create_attention(name, d_model=8, n_heads=2)
        except CanvasError:  # not available here (missing package, device)
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("name", _available())
def test_type_compiles_fullgraph_across_changing_shapes(name):
    torch._dynamo.reset()  # no automatic-dynamic state left by other tests
    torch.manual_seed(0)
    m = create_attention(name, d_model=8, n_heads=2)
    c = torch.compile(m, backend="eager", fullgraph=True)
    for nq, nk in SHAPES:
        q, k = torch.randn(2, nq, 8, requires_grad=True), torch.randn(2, nk, 8, requires_grad=True)
        a, b = c(q, k, k), m(q, k, k)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{name} at Nq={nq}, Nk={nk}")
        if a.requires_grad:
            grads = [torch.autograd.grad(o.square().sum(), (q, k), allow_unused=True) for o in (a, b)]
            for x, y in zip(*grads):  # None: an input the type does not read (copy, pooling: q)
                assert (x is None) == (y is None)
                if x is not None:
                    torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["cross_attention", "gated", "perceiver"])
def test_a_changing_sharpening_beta_recompiles_once_and_no_more(name):
    """A sharpening schedule sets ``beta`` on the softmax types while looping; as SDPA's ``scale``
    (a python float) every new value recompiled the graph. Under compile beta now multiplies the
    queries (for the fused gated / perceiver operators: their query projections): after the
    first change the graph is dynamic in it."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = create_attention(name, d_model=8, n_heads=2)
    counter = CompileCounter()
    c = torch.compile(m, backend=counter, fullgraph=True)
    q, k = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    for beta in (None, 1.5, 2.0, 2.5, 3.0, 4.0):
        for part in m.modules():  # as a schedule does: every attention exposing beta (perceiver's two)
            if hasattr(part, "beta"):
                part.beta = beta
        torch.testing.assert_close(c(q, k, k), m(q, k, k), atol=1e-5, rtol=1e-5)
    assert counter.frame_count <= 3  # the first graph, the first change, then dynamic
    # beta folded into the query projection keeps every gradient (the last beta, 4.0)
    grads = [torch.autograd.grad(f(q, k, k).square().sum(), list(m.parameters()), allow_unused=True) for f in (c, m)]
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

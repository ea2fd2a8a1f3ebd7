"""Mamba's causal depthwise convolution operator (``canvas_plugin_mamba.conv_op``) against
``F.conv1d``, forward and gradients, and torch's checks of its ``torch.library`` registration."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from canvas_plugin_mamba import conv_op
from hypothesis import given, settings
from hypothesis import strategies as st


def _reference(x, w, b):
    """``F.conv1d`` with ``groups=E`` and ``K - 1`` zeros in front, on ``(B, L, E)``."""
    L, K = x.shape[1], w.shape[1]
    return F.conv1d(x.transpose(1, 2), w.unsqueeze(1), b, padding=K - 1, groups=x.shape[2])[..., :L].transpose(1, 2)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 9), E=st.integers(1, 4), K=st.integers(1, 6),
       transposed=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_conv_op_equals_conv1d_with_gradients(B, L, E, K, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, E, generator=g, dtype=torch.float64)
    if transposed:  # a non-contiguous input (the op takes a contiguous copy)
        x = torch.randn(B, E, L, generator=g, dtype=torch.float64).transpose(1, 2)
    x.requires_grad_()
    w = torch.randn(E, K, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(E, generator=g, dtype=torch.float64, requires_grad=True)
    out, ref = conv_op.causal_depthwise_conv(x, w, b), _reference(x, w, b)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    gy = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), gy), torch.autograd.grad(ref, (x, w, b), gy)):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


def test_conv_custom_ops_pass_torch_opcheck():
    """Fake shapes and strides, autograd registration and schema agree with the eager code."""
    g = torch.Generator().manual_seed(0)
    for L, K in ((7, 4), (2, 4), (5, 1)):  # K - 1 > L: some taps read only the zero padding
        x = torch.randn(2, L, 3, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, K, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(conv_op._conv_op, (x, w, b))
        gy = torch.randn(2, L, 3, generator=g, dtype=torch.float64)
        torch.library.opcheck(conv_op._conv_backward_op, (gy, x.detach(), w.detach()))


def test_conv_is_one_call_each_way_under_compile():
    """Traced for torch.compile, forward and backward hold one call of the operator each and
    no multiply-add of the taps (what made the conv costly to compile)."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_function

    seen = {}

    def keep(name):
        def compiler(gm, _):
            seen[name] = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
            return make_boxed_func(gm.forward)

        return compiler

    f = aot_function(conv_op.causal_depthwise_conv, fw_compiler=keep("fw"), bw_compiler=keep("bw"))
    x, w, b = (torch.randn(s, requires_grad=True) for s in ((2, 6, 3), (3, 4), (3,)))
    f(x, w, b).sum().backward()
    assert seen["fw"].count("canvas_mamba.depthwise_conv.default") == 1
    assert seen["bw"].count("canvas_mamba.depthwise_conv_backward.default") == 1
    assert not any("addcmul" in t for t in seen["fw"] + seen["bw"])

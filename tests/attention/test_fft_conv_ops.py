"""hyena's convolutions as ``torch.library`` operators (what runs under ``torch.compile``,
``canvas_core.attention.fft_conv``): torch's checks of the four registrations pass, the operators
give the eager autograd functions' values and gradients, and a compiled hyena module runs them
(one node each way) and matches eager."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from canvas_core.attention import fft_conv  # noqa: E402
from canvas_core.attention.hyena import HyenaAttention  # noqa: E402
from canvas_core.testing import recording_backend  # noqa: E402


def _t(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_operators_pass_torch_opcheck(dtype):
    B, C, Q, s = 2, 3, 5, 3
    z, gate, h = _t(B, C, Q * s, dtype=dtype), _t(B, C, Q * s, seed=1, dtype=dtype), _t(C, Q * s, seed=2, dtype=dtype)
    for t in (z, gate, h):
        t.requires_grad_()
    torch.library.opcheck(fft_conv._read_op, (z, h, s))
    torch.library.opcheck(fft_conv._gated_op, (z, gate, h))
    _, Zc, Hc = (t.detach() for t in fft_conv._read_op(z, h, s))
    _, conv, Gz, Gh = (t.detach() for t in fft_conv._gated_op(z, gate, h))
    g = _t(B, C, Q, seed=3, dtype=dtype)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(fft_conv._read_backward_op, (g, Zc, Hc, s, *need))
    gg = _t(B, C, Q * s, seed=4, dtype=dtype)
    for need in ((True, True, True), (False, True, False), (True, False, True), (False, False, True)):
        torch.library.opcheck(fft_conv._gated_backward_op, (gg, gate.detach(), conv, Gz, Gh, *need))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(1, 4), Q=st.integers(1, 9), s=st.integers(2, 5),
       needs=st.sampled_from([(True, True, True), (True, False, False), (False, True, True), (False, False, True)]),
       seed=st.integers(0, 2**31 - 1))
def test_the_operators_equal_the_eager_functions_with_gradients(B, C, Q, s, needs, seed):
    L = Q * s
    base = [_t(B, C, L, seed=seed % 1000), _t(B, C, L, seed=seed % 1000 + 1), _t(C, L, seed=seed % 1000 + 2)]
    w_gated, w_read = _t(B, C, L, seed=7), _t(B, C, Q, seed=8)

    def grads(gated, read):
        z, gate, h = (t.clone().requires_grad_(need) for t, need in zip(base, needs))
        y = gated(z, gate, h)
        out = read(y, h, s)
        loss = (y * w_gated).sum() + (out * w_read).sum()
        leaves = [t for t in (z, gate, h) if t.requires_grad]
        return [y.detach(), out.detach(), *torch.autograd.grad(loss, leaves)]

    eager = grads(fft_conv._GatedConv.apply, fft_conv._ReadConv.apply)
    ops = grads(lambda z, g, h: fft_conv._gated_op(z, g, h)[0], lambda z, h, s: fft_conv._read_op(z, h, s)[0])
    assert len(eager) == len(ops)
    for a, b in zip(ops, eager):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("Nq", [4, 12])  # strided reads: the read operator; one per key: the causal conv
def test_a_compiled_hyena_runs_the_operators_and_matches_eager(Nq):
    torch.manual_seed(0)
    m = HyenaAttention(8, 2, order=3)  # two gated stages
    q, k = torch.randn(2, Nq, 8, requires_grad=True), torch.randn(2, 12, 8, requires_grad=True)
    seen = []
    torch._dynamo.reset()
    out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(q, k, k)
    ref = m(q, k, k)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), (q, k, *m.parameters())),
                    torch.autograd.grad(ref.sum(), (q, k, *m.parameters()))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert seen.count("canvas_core.hyena_gated_conv.default") == 2
    assert seen.count("canvas_core.hyena_gated_conv_backward.default") == 2
    reads = ("canvas_core.hyena_read_conv.default", "canvas_core.hyena_read_conv_backward.default")
    assert all((name in seen) == (Nq < 12) for name in reads)

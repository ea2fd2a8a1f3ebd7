"""The builtin types' ``torch.library`` operators (what runs under ``torch.compile``): hyena's
convolutions (``canvas_core.attention.fft_conv``) and linear attention's key summary
(``canvas_core.attention.linear_sums``). torch's checks of the registrations pass, the operators
give the eager autograd functions' values and gradients, and a compiled module runs them (one node
each way) and matches eager."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from canvas_core.attention import fft_conv, linear_sums  # noqa: E402
from canvas_core.attention.hyena import HyenaAttention  # noqa: E402
from canvas_core.attention.simple import LinearAttention  # noqa: E402
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
    Hc = fft_conv._read_op(z, h, s)[1].detach()
    _, conv, Gz, Gh = (t.detach() for t in fft_conv._gated_op(z, gate, h))
    g = _t(B, C, Q, seed=3, dtype=dtype)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(fft_conv._read_backward_op, (g, z.detach(), Hc, s, *need))
    gg = _t(B, C, Q * s, seed=4, dtype=dtype)
    for need in ((True, True, True), (False, True, False), (True, False, True), (False, False, True)):
        torch.library.opcheck(fft_conv._gated_backward_op, (gg, gate.detach(), conv, Gz, Gh, *need))


def _compiled_matches_eager(m, q, k):
    """Compile ``m`` (recording its ATen graphs), check output and gradients against eager on
    ``(q, k, k)``; returns the recorded call targets."""
    seen = []
    torch._dynamo.reset()
    out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(q, k, k)
    ref = m(q, k, k)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), (q, k, *m.parameters())),
                    torch.autograd.grad(ref.sum(), (q, k, *m.parameters()))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return seen


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
    seen = _compiled_matches_eager(m, q, k)
    assert seen.count("canvas_core.hyena_gated_conv.default") == 2
    assert seen.count("canvas_core.hyena_gated_conv_backward.default") == 2
    reads = ("canvas_core.hyena_read_conv.default", "canvas_core.hyena_read_conv_backward.default")
    assert all((name in seen) == (Nq < 12) for name in reads)


# ---------------------------------------------------------------- linear attention's key summary
@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_the_key_summary_operators_pass_torch_opcheck(same, bias):
    B, N, Din, D = 2, 5, 4, 3
    keys, weight = _t(B, N, Din).requires_grad_(), _t(D, Din, seed=1).requires_grad_()
    values = None if same else _t(B, N, 6, seed=2).requires_grad_()
    b = _t(D, seed=3).requires_grad_() if bias else None
    torch.library.opcheck(linear_sums._summary_op, (keys, values, weight, b))
    P, s, phi = (t.detach() for t in linear_sums._summary_op(keys, values, weight, b))
    vd = None if values is None else values.detach()
    for need in ((True, True, True, bias), (False, not same, True, False), (True, False, False, bias)):
        torch.library.opcheck(linear_sums._summary_backward_op,
                              (torch.randn_like(P), torch.randn_like(s), keys.detach(), vd, weight.detach(), phi, *need))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 9), same=st.booleans(), bias=st.booleans(),
       free=st.sampled_from(["all", "keys", "weights"]), seed=st.integers(0, 2**31 - 1))
def test_the_key_summary_operator_equals_the_eager_function_with_gradients(B, N, same, bias, free, seed):
    keys, weight = _t(B, N, 4, seed=seed % 1000), _t(3, 4, seed=seed % 1000 + 1)
    values = None if same else _t(B, N, 5, seed=seed % 1000 + 2)
    b = _t(3, seed=seed % 1000 + 3) if bias else None
    wP, ws = _t(B, 3, 4 if same else 5, seed=9), _t(B, 3, seed=10)

    def run(f):
        leaves = [t.clone().requires_grad_(free != "weights" if i < 2 else free != "keys")
                  if t is not None else None for i, t in enumerate((keys, values, weight, b))]
        P, s = f(*leaves)[:2]
        got = [t for t in leaves if t is not None and t.requires_grad]
        return [P.detach(), s.detach(), *torch.autograd.grad((P * wP).sum() + (s * ws).sum(), got)]

    eager, op = run(linear_sums._KeySummary.apply), run(linear_sums._summary_op)
    assert len(eager) == len(op)
    for a, b_ in zip(op, eager):
        torch.testing.assert_close(a, b_, atol=1e-12, rtol=1e-10)


def test_a_compiled_linear_attention_runs_the_key_summary_operator_and_matches_eager():
    torch.manual_seed(0)
    m = LinearAttention(8, 2)
    q, k = torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 12, 8, requires_grad=True)
    seen = _compiled_matches_eager(m, q, k)
    assert "canvas_core.linear_key_summary.default" in seen
    assert "canvas_core.linear_key_summary_backward.default" in seen

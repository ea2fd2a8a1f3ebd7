"""The mamba module's fused inner operator (``canvas_plugin_mamba.inner_op``, what the module runs
under ``torch.compile``): the module's output and every gradient equal those of its eager path
(the same operations one by one), it is what a compiled module traces, and torch's checks of the
``torch.library`` registration pass."""

from __future__ import annotations

import pytest
import torch
from canvas_plugin_mamba import inner_op, module
from canvas_plugin_mamba.module import MambaAttention
from hypothesis import given, settings
from hypothesis import strategies as st


def _run(m, q, k, v, fused, monkeypatch, proj=False):
    with monkeypatch.context() as mp:
        mp.setattr(module, "_FUSE_EAGER", fused)  # eager runs the operator only when asked to
        mp.setattr(module, "_FUSE_PROJECTIONS", proj)  # these tests: the projections outside it
        out = m(q, k, v)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    params = [p for p in m.parameters()]
    return out, torch.autograd.grad(out, [q, k, v, *params], g, allow_unused=True)


@settings(max_examples=25, deadline=None)
@given(Bt=st.integers(1, 3), Nk=st.integers(1, 12), shape=st.sampled_from(["aligned", "fewer", "more", "one"]),
       d_conv=st.integers(1, 4), expand=st.integers(1, 2), dtype=st.sampled_from([torch.float64, torch.float32]),
       seed=st.integers(0, 2**31 - 1))
def test_fused_inner_equals_unfused_path(Bt, Nk, shape, d_conv, expand, dtype, seed):
    with pytest.MonkeyPatch.context() as monkeypatch:
        torch.manual_seed(seed % 10_000)
        m = MambaAttention(8, 2, d_conv=d_conv, expand=expand, kernel="mamba_torch").to(dtype)
        with torch.no_grad():
            m.A_log.add_(torch.randn_like(m.A_log) * 0.3)
            m.D.add_(torch.randn_like(m.D))
        Nq = {"aligned": Nk, "fewer": max(1, Nk // 2), "more": Nk + 3, "one": 1}[shape]
        q = torch.randn(Bt, Nq, 8, dtype=dtype, requires_grad=True)
        k = torch.randn(Bt, Nk, 8, dtype=dtype, requires_grad=True)
        v = torch.randn(Bt, Nk, 8, dtype=dtype, requires_grad=True)
        out, grads = _run(m, q, k, v, True, monkeypatch)
        ref, ref_grads = _run(m, q, k, v, False, monkeypatch)
        tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
        torch.testing.assert_close(out, ref, **tol)
        for a, r in zip(grads, ref_grads):
            assert (a is None) == (r is None)
            if a is not None:
                torch.testing.assert_close(a, r, **tol)


def test_fused_forward_is_bitwise_the_unfused_one(monkeypatch):
    """float32, aligned reads: the operator runs the module's own operations in the same order."""
    torch.manual_seed(3)
    m = MambaAttention(16, 2, kernel="mamba_torch")
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        unfused = m(x, x, x)
        monkeypatch.setattr(module, "_FUSE_EAGER", True)
        for proj in (False, True):  # the projections outside the operator, then inside (proj_op.py)
            monkeypatch.setattr(module, "_FUSE_PROJECTIONS", proj)
            assert torch.equal(m(x, x, x), unfused)


def test_fused_path_is_taken_only_where_it_applies():
    m = MambaAttention(8, 2, kernel="mamba_torch")
    x = torch.randn(1, 5, 8)
    assert m._one_dtype(x)
    assert not m._one_dtype(x.double())  # parameters float32, inputs float64: the unfused path's casts
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not m._one_dtype(x)
    m.double()
    assert m._one_dtype(x.double())


@pytest.mark.parametrize("kernel", ["torch", "cpu"])
def test_inner_custom_ops_pass_torch_opcheck(kernel, scan_kernel_ok):
    scan_kernel_ok(kernel)
    g = torch.Generator().manual_seed(0)
    Bt, L, E, N, K = 2, 9, 3, 4, 4

    def r(*s, neg=False):
        t = torch.randn(*s, generator=g, dtype=torch.float64)
        return (-t.abs() if neg else t).requires_grad_()

    for read in (None, torch.tensor([-1, 0, 3, 8])):
        Q = L if read is None else read.shape[0]
        sel = r(Bt, L, N + 2)
        args = [r(Bt, L, E), r(E, K), r(E), r(Bt, L, E), sel[..., 2:], r(Bt, Q, N), r(Bt, Q, E), r(E, N), r(E)]
        args[4] = args[4].detach().requires_grad_()  # a non-contiguous B, as from a split projection
        T = 3
        torch.library.opcheck(inner_op._inner_op, (*args, read, T, -1, kernel))
        y, hin, y_pre, conv, delta = (t.detach() for t in inner_op._inner_op(*args, read, T, -1, kernel))
        x, w, _, dt, Bm, C, z, A_log, D = (a.detach() for a in args)
        torch.library.opcheck(inner_op._inner_backward_op, (torch.randn_like(y), x, w, conv, delta, dt, Bm, C, z,
                                                            A_log, D, read, hin, y_pre, T, -1, kernel))


def test_compiled_module_traces_the_operator_and_matches_eager(monkeypatch):
    monkeypatch.setattr(module, "_FUSE_PROJECTIONS", False)  # as with active dropout
    from canvas_core.testing import recording_backend

    seen = []
    backend = recording_backend(seen)

    torch.manual_seed(0)
    m = MambaAttention(8, 2, kernel="mamba_torch")
    x = torch.randn(2, 7, 8, requires_grad=True)
    q = torch.randn(2, 3, 8, requires_grad=True)
    for queries in (x, q):  # aligned reads and reads at other positions
        seen.clear()
        torch._dynamo.reset()
        out = torch.compile(m, backend=backend, fullgraph=True)(queries, x, x)
        g = torch.autograd.grad(out.sum(), [x, *m.parameters()])
        ref = m(queries, x, x)
        torch.testing.assert_close(out, ref)
        for a, r in zip(g, torch.autograd.grad(ref.sum(), [x, *m.parameters()])):
            torch.testing.assert_close(a, r)
        assert "canvas_mamba.inner_v2.default" in seen and "canvas_mamba.inner_backward_v2.default" in seen
        assert not any("silu" in t or "depthwise_conv" in t for t in seen)

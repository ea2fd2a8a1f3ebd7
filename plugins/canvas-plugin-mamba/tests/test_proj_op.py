"""The mamba module's projected operators (``canvas_plugin_mamba.proj_op``: projections, inner part
and ``out_proj`` as one operator each way, what the module runs under ``torch.compile``; on the
compiled CPU scan ``proj_cpu``'s, the conv inside the scan): output and every gradient equal the
eager path's, also when one tensor is passed as two of queries / keys / values; torch's checks of
the registrations pass; compiled modules match eager."""

from __future__ import annotations

import pytest
import torch
from canvas_core.testing import recording_backend
from canvas_plugin_mamba import cpu_kernel, module, proj_cpu, proj_op
from canvas_plugin_mamba.module import MambaAttention
from hypothesis import given, settings
from hypothesis import strategies as st

SHARES = ["none", "k_is_v", "q_is_k", "q_is_k_is_v", "q_is_v"]


def _inputs(Bt, Nq, Nk, share, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(Bt, n, 8, generator=g, dtype=dtype).requires_grad_() for n in (Nq, Nk, Nk))
    if share == "k_is_v":
        return [q, k], (q, k, k)
    if share == "q_is_k":
        return [q, v], (q, q, v)
    if share == "q_is_k_is_v":
        return [q], (q, q, q)
    if share == "q_is_v":
        return [q, k], (q, k, q)
    return [q, k, v], (q, k, v)


def _run(m, args, leaves, fused, monkeypatch, seed=7, op=(proj_op, "_projected_op")):
    with monkeypatch.context() as mp:
        mp.setattr(module, "_FUSE_EAGER", fused)  # eager runs the operator only when asked to
        calls = []
        real = getattr(*op)
        mp.setattr(*op, lambda *a: calls.append(1) or real(*a))
        torch.manual_seed(seed)  # the same dropout draws on both paths
        out = m(*args)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return out, torch.autograd.grad(out, [*leaves, *m.parameters()], g, allow_unused=True), bool(calls)


def _module(dtype, seed, kernel="mamba_torch", **kw):
    torch.manual_seed(seed)
    m = MambaAttention(8, 2, kernel=kernel, **kw).to(dtype)
    with torch.no_grad():
        m.A_log.add_(torch.randn_like(m.A_log) * 0.3)
        m.D.add_(torch.randn_like(m.D))
    return m


@settings(max_examples=30, deadline=None)
@given(Bt=st.integers(1, 3), Nk=st.integers(1, 12), shape=st.sampled_from(["aligned", "fewer", "more", "one"]),
       share=st.sampled_from(SHARES), d_conv=st.integers(1, 4), expand=st.integers(1, 2),
       dtype=st.sampled_from([torch.float64, torch.float64, torch.float32]), seed=st.integers(0, 2**31 - 1))
def test_projected_operator_equals_eager_path(Bt, Nk, shape, share, d_conv, expand, dtype, seed):
    Nq = {"aligned": Nk, "fewer": max(1, Nk // 2), "more": Nk + 3, "one": 1}[shape]
    if share in ("q_is_k", "q_is_k_is_v", "q_is_v"):
        Nq = Nk  # the same tensor: the same length
    with pytest.MonkeyPatch.context() as monkeypatch:
        m = _module(dtype, seed % 10_000, d_conv=d_conv, expand=expand)
        leaves, args = _inputs(Bt, Nq, Nk, share, dtype, seed % 997)
        out, grads, used = _run(m, args, leaves, True, monkeypatch)
        ref, ref_grads, _ = _run(m, args, leaves, False, monkeypatch)
        assert used
        tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
        torch.testing.assert_close(out, ref, **tol)
        assert len(grads) == len(leaves) + len(list(m.parameters()))
        for a, r in zip(grads, ref_grads):
            assert a is not None and r is not None  # every input and parameter gets a gradient
            torch.testing.assert_close(a, r, **tol)


@pytest.mark.parametrize("training", [False, True])
def test_dropout_keeps_out_proj_outside_while_active(training, monkeypatch):
    """Active dropout (training, p > 0) sits between the read and ``out_proj``: the projected
    operator is not used then (the inner operator is); in eval mode it is."""
    m = _module(torch.float64, 1, dropout=0.3).train(training)
    leaves, args = _inputs(2, 6, 6, "k_is_v", torch.float64, 3)
    out, grads, used = _run(m, args, leaves, True, monkeypatch)
    ref, ref_grads, _ = _run(m, args, leaves, False, monkeypatch)
    assert used is not training
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


def test_a_hooked_projection_keeps_the_projections_outside(monkeypatch):
    """A forward hook on a projection (weight norm, an adapter, a probe) would be bypassed inside
    the operator: the projections then run as modules, and the hook sees its call."""
    m = _module(torch.float64, 2)
    seen = []
    m.in_proj.register_forward_hook(lambda mod, inp, out: seen.append(out.shape) or out * 2.0)
    leaves, args = _inputs(2, 6, 6, "k_is_v", torch.float64, 4)
    out, grads, used = _run(m, args, leaves, True, monkeypatch)
    ref, ref_grads, _ = _run(m, args, leaves, False, monkeypatch)
    assert not used and len(seen) == 2  # the fused (inner operator) and the eager call each ran the hook
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_a_hooked_conv_keeps_the_projections_outside(monkeypatch):
    """A hooked ``conv1d`` (pre-hook) or a subclass of ``nn.Conv1d`` is not plain either: the
    projected operator is not used.  (Both paths read the conv's weights directly, so the hook
    itself does not run on either.)"""
    m = _module(torch.float64, 2)
    m.conv1d.register_forward_pre_hook(lambda mod, args: (args[0] * 2.0,))
    leaves, args = _inputs(2, 6, 6, "k_is_v", torch.float64, 4)
    out, grads, used = _run(m, args, leaves, True, monkeypatch)
    ref, ref_grads, _ = _run(m, args, leaves, False, monkeypatch)
    assert not used
    m2 = _module(torch.float64, 2)
    m2.conv1d.__class__ = type("MyConv", (torch.nn.Conv1d,), {})
    assert not m2._plain_projections() and _module(torch.float64, 2)._plain_projections()
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_a_projection_with_another_bias_keeps_the_projections_outside(monkeypatch):
    """The operator takes x_proj and c_proj without bias (as built): one given a bias runs as a
    module instead, so the bias is not dropped under compile."""
    m = _module(torch.float64, 3)
    m.x_proj = torch.nn.Linear(8, m.x_proj.out_features, bias=True).double()
    leaves, args = _inputs(2, 6, 6, "k_is_v", torch.float64, 5)
    out, grads, used = _run(m, args, leaves, True, monkeypatch)
    ref, ref_grads, _ = _run(m, args, leaves, False, monkeypatch)
    assert not used
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kernel", ["torch", "cpu"])
def test_projected_custom_ops_pass_torch_opcheck(kernel, scan_kernel_ok):
    scan_kernel_ok(kernel)
    g = torch.Generator().manual_seed(0)
    Bt, L, D, E, N, R, K = 2, 9, 5, 3, 4, 2, 4

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()

    def params():
        return [r(E, D), r(E), r(E, K), r(E), r(R + N, D), r(E, R), r(E), r(N, D), r(E, D), r(E), r(D, E), r(D),
                r(E, N), r(E)]

    T = 3
    for read, share in ((None, "none"), (None, "k_is_v"), (None, "q_is_k_is_v"), (torch.tensor([-1, 0, 3, 8]), "none"),
                        (torch.tensor([2, 8]), "k_is_v")):
        Q = L if read is None else read.shape[0]
        q, k, v = r(Bt, Q, D), r(Bt, L, D), r(Bt, L, D)
        k = None if share == "q_is_k_is_v" else k
        v = None if share != "none" else v
        ps = params()
        torch.library.opcheck(proj_op._projected_op, (q, k, v, ps, read, T, -1, kernel))
        out, *saved = (t.detach() for t in proj_op._projected_op(q, k, v, ps, read, T, -1, kernel))
        d = [None if t is None else t.detach() for t in (q, k, v)]
        torch.library.opcheck(proj_op._projected_backward_op, (torch.randn_like(out), *d, [p.detach() for p in ps],
                                                               read, saved, T, -1, kernel))


def _compiled_matches_eager(m, args, leaves):
    """Compile ``m`` (recording its ATen graphs), check output and gradients against eager;
    returns the recorded call targets."""
    seen = []
    torch._dynamo.reset()
    out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(*args)
    g = torch.autograd.grad(out.sum(), [*leaves, *m.parameters()])
    ref = m(*args)
    torch.testing.assert_close(out, ref)
    for a, r in zip(g, torch.autograd.grad(ref.sum(), [*leaves, *m.parameters()])):
        torch.testing.assert_close(a, r)
    return seen


@pytest.mark.parametrize("share", SHARES)
def test_compiled_module_traces_one_operator_each_way_and_matches_eager(share):
    torch.manual_seed(0)
    m = MambaAttention(8, 2, kernel="mamba_torch")
    for Nq in (7, 3):  # aligned reads and reads at other positions
        if Nq != 7 and share != "none" and share != "k_is_v":
            continue
        leaves, args = _inputs(2, Nq, 7, share, torch.float32, Nq)
        seen = _compiled_matches_eager(m, args, leaves)
        assert "canvas_mamba.projected_v2.default" in seen and "canvas_mamba.projected_backward_v2.default" in seen
        # no projection left to the compiler, nor (aligned reads: no index arithmetic) the
        # gradient sum of a tensor passed in two slots (values that are the queries, but not the
        # keys, are passed twice: autograd adds their two gradients)
        banned = ("mm", "addmm", "bmm", "linear", "t", "sum") + (("add",) if Nq == 7 and share != "q_is_v" else ())
        assert not any(t.split(".")[1] in banned for t in seen if t.startswith("aten.")), seen


def test_inductor_compiled_module_matches_eager():
    torch.manual_seed(0)
    m = MambaAttention(8, 2, kernel="mamba_torch")
    leaves, args = _inputs(2, 7, 7, "k_is_v", torch.float32, 0)
    torch._dynamo.reset()
    out = torch.compile(m, backend="inductor", fullgraph=True)(*args)
    g = torch.autograd.grad(out.sum(), [*leaves, *m.parameters()])
    ref = m(*args)
    torch.testing.assert_close(out, ref)
    for a, r in zip(g, torch.autograd.grad(ref.sum(), [*leaves, *m.parameters()])):
        torch.testing.assert_close(a, r)


def test_trace_types_setting_keeps_mamba_traced(monkeypatch):
    """``operators_under_compile()`` False (``CANVAS_COMPILE_TRACE_TYPES=1``): the compiled graph
    holds the module's own operations and none of its operators; the same values."""
    monkeypatch.setattr(module, "operators_under_compile", lambda: False)
    torch.manual_seed(0)
    m = MambaAttention(8, 2, kernel="mamba_torch")
    leaves, args = _inputs(2, 7, 7, "k_is_v", torch.float32, 1)
    seen = []
    torch._dynamo.reset()
    out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(*args)
    torch._dynamo.reset()
    torch.testing.assert_close(out, m(*args))
    assert seen and not any(t.startswith("canvas_mamba.projected") or t.startswith("canvas_mamba.inner")
                            for t in seen), seen


# ---------------------------------------------------------------- on the compiled CPU scan (proj_cpu)


def _cpu_scan_or_skip() -> None:
    if not cpu_kernel.available():
        pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")


@settings(max_examples=30, deadline=None)
@given(Bt=st.integers(1, 3), Nk=st.integers(1, 12), shape=st.sampled_from(["aligned", "fewer", "more", "one"]),
       share=st.sampled_from(SHARES), d_conv=st.sampled_from([1, 2, 4, 8, 9]), expand=st.integers(1, 2),
       dtype=st.sampled_from([torch.float64, torch.float64, torch.float32]), seed=st.integers(0, 2**31 - 1))
def test_cpu_projected_operator_equals_eager_path(Bt, Nk, shape, share, d_conv, expand, dtype, seed):
    """What the module runs under ``torch.compile`` on the compiled scan equals what it runs
    eagerly there; convs wider than ``MAX_CONV`` (9) take the general operator instead."""
    _cpu_scan_or_skip()
    Nq = {"aligned": Nk, "fewer": max(1, Nk // 2), "more": Nk + 3, "one": 1}[shape]
    if share in ("q_is_k", "q_is_k_is_v", "q_is_v"):
        Nq = Nk
    with pytest.MonkeyPatch.context() as monkeypatch:
        m = _module(dtype, seed % 10_000, kernel="mamba_cpu", d_conv=d_conv, expand=expand)
        leaves, args = _inputs(Bt, Nq, Nk, share, dtype, seed % 997)
        out, grads, used = _run(m, args, leaves, True, monkeypatch, op=(proj_cpu, "_op"))
        ref, ref_grads, _ = _run(m, args, leaves, False, monkeypatch)
        assert m.kernel_used == "mamba_cpu"
        assert used == (d_conv <= cpu_kernel.MAX_CONV)
        tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
        torch.testing.assert_close(out, ref, **tol)
        assert len(grads) == len(leaves) + len(list(m.parameters()))
        for a, r in zip(grads, ref_grads):
            assert a is not None and r is not None
            torch.testing.assert_close(a, r, **tol)


def test_cpu_projected_custom_ops_pass_torch_opcheck():
    _cpu_scan_or_skip()
    g = torch.Generator().manual_seed(1)
    Bt, L, D, E, N, R, K, T = 2, 9, 5, 3, 4, 2, 4, 3

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()

    for read, share in ((None, "none"), (None, "k_is_v"), (None, "q_is_k_is_v"), (torch.tensor([-1, 0, 3, 8]), "none"),
                        (torch.tensor([2, 8]), "k_is_v"), (torch.tensor([8, 8, -1]), "q_is_k")):
        Q = L if read is None or share == "q_is_k" else read.shape[0]
        q, k, v = r(Bt, Q, D), r(Bt, L, D), r(Bt, L, D)
        k = None if share in ("q_is_k_is_v", "q_is_k") else k
        v = None if share in ("k_is_v", "q_is_k_is_v") else v
        if share == "q_is_k":
            read = torch.tensor([8, 3, -1, 0, 5, 5, 2, 7, 1])  # the queries are the keys: Q == L
        ps = [r(E, D), r(E), r(E, K), r(E), r(R + N, D), r(E, R), r(E), r(N, D), r(E, D), r(E), r(D, E), r(D),
              r(E, N), r(E)]
        torch.library.opcheck(proj_cpu._op, (q, k, v, ps, read, T))
        out, *saved = (t.detach() for t in proj_cpu._op(q, k, v, ps, read, T))
        d = [None if t is None else t.detach() for t in (q, k, v)]
        torch.library.opcheck(proj_cpu._backward_op, (torch.randn_like(out), *d, [p.detach() for p in ps], read,
                                                      saved, T))


@pytest.mark.parametrize("share", ["k_is_v", "none"])
def test_compiled_module_on_the_cpu_scan_traces_its_operator_each_way_and_matches_eager(share):
    _cpu_scan_or_skip()
    torch.manual_seed(0)
    m = MambaAttention(8, 2, kernel="mamba_cpu")
    for Nq in (7, 3):
        leaves, args = _inputs(2, Nq, 7, share, torch.float32, Nq)
        seen = _compiled_matches_eager(m, args, leaves)
        assert "canvas_mamba.cpu_projected.default" in seen and "canvas_mamba.cpu_projected_backward.default" in seen
        assert not any(t.split(".")[1] in ("mm", "addmm", "linear", "conv1d", "convolution") for t in seen
                       if t.startswith("aten.")), seen

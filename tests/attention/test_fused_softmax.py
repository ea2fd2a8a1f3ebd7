"""``gated`` and ``perceiver`` as fused operators (``canvas_core.attention.fused_softmax``, what the
modules run under ``torch.compile``): outputs and every gradient equal the eager path's (the same
modules run op by op), the compiled modules trace the operators and match eager, the eager path is
kept wherever the operator would differ, and torch's checks of the registrations pass."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.attention import fused_softmax
from canvas_core.attention import softmax as softmax_mod
from canvas_core.attention.softmax import GatedAttention, PerceiverAttention
from canvas_core.testing import recording_backend

D, H = 8, 2


def _make(kind: str, seed: int, dtype=torch.float64, n_latents: int = 3):
    torch.manual_seed(seed)
    m = GatedAttention(D, H) if kind == "gated" else PerceiverAttention(D, H, n_latents=n_latents)
    m = m.to(dtype)
    if kind == "gated":
        with torch.no_grad():
            m.gate_alpha.normal_()  # zero at init: the attention's gradients would all vanish
    return m


def _run(m, q, k, v, mask, fused, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr(softmax_mod, "_FUSE_EAGER", fused)
        out = m(q, k, v, key_mask=mask)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    inputs = [t for t in (q, k, v) if t.requires_grad]
    return out, torch.autograd.grad(out, [*dict.fromkeys(inputs), *m.parameters()], g, allow_unused=True)


def _mask(draw_kind: str, B: int, Nq: int, Nk: int, gen: torch.Generator, dtype):
    """Random masks of every shape the modules accept, with rows that allow no key."""
    if draw_kind == "none":
        return None
    shape = {"per_query": (B, Nq, Nk), "batch_bcast": (Nq, Nk), "one_row": (B, 1, Nk), "keys": (Nk,),
             "float": (1, Nq, Nk)}[draw_kind]
    allowed = torch.rand(shape, generator=gen) > 0.4
    if len(shape) >= 2 and shape[-2] > 1:
        allowed[..., 0, :] = False  # a query without any key: outputs 0, never NaN
    if draw_kind != "float":
        return allowed
    vals = torch.randn(shape, generator=gen, dtype=dtype)
    return torch.where(allowed, vals, torch.full_like(vals, float("-inf")))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["gated", "perceiver"]), B=st.integers(1, 3), Nq=st.integers(1, 6), Nk=st.integers(1, 7),
       mask=st.sampled_from(["none", "per_query", "batch_bcast", "one_row", "keys", "float"]),
       beta=st.sampled_from([None, 0.0, 0.5, 2.0]), shared_kv=st.booleans(), generic=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_fused_path_equals_eager_path(kind, B, Nq, Nk, mask, beta, shared_kv, generic, seed):
    """``generic``: the device-agnostic attention maths (what other devices run) instead of the CPU kernel."""
    m = _make(kind, seed % 10_000, n_latents=1 + seed % 4)
    if beta is not None:
        for mod in m.modules():
            if hasattr(mod, "q_proj"):
                mod.beta = beta
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, D, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Nk, D, generator=gen, dtype=torch.float64, requires_grad=True)
    v = k if shared_kv else torch.randn(B, Nk, D, generator=gen, dtype=torch.float64, requires_grad=True)
    key_mask = _mask(mask, B, Nq, Nk, gen, torch.float64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused_softmax, "_GENERIC", generic)
        out, grads = _run(m, q, k, v, key_mask, True, mp)
        ref, ref_grads = _run(m, q, k, v, key_mask, False, mp)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    assert len(grads) == len(ref_grads)
    for a, r in zip(grads, ref_grads):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("kind", ["gated", "perceiver"])
def test_fused_forward_matches_eager_in_float32(kind, monkeypatch):
    m = _make(kind, 1, torch.float32)
    x = torch.randn(2, 9, D)
    mask = torch.rand(9, 9) > 0.5
    mask[4] = False
    with torch.no_grad():
        ref = m(x, x, x, key_mask=mask)
        monkeypatch.setattr(softmax_mod, "_FUSE_EAGER", True)
        out = m(x, x, x, key_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(out[:, 4], torch.zeros_like(out[:, 4]))


@pytest.mark.parametrize("kind", ["gated", "perceiver"])
def test_eager_path_is_kept_where_the_operator_would_differ(kind, monkeypatch):
    monkeypatch.setattr(softmax_mod, "_FUSE_EAGER", True)
    m = _make(kind, 2, torch.float32)
    x = torch.randn(2, 4, D)
    w = next(m.parameters())
    assert softmax_mod._fusable(m, x, 4, w)
    assert not softmax_mod._fusable(m, x, 0, w)  # no keys: the masked-softmax path's zeros
    assert not softmax_mod._fusable(m, x.double(), 4, w)  # inputs in another dtype than the parameters
    assert not softmax_mod._fusable(m, x.to("meta"), 4, w)  # off the CPU: inductor's own SDPA kernels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not softmax_mod._fusable(m, x, 4, w)
    d = (GatedAttention if kind == "gated" else PerceiverAttention)(D, H, dropout=0.1)
    parts = () if kind == "gated" else (d.encode, d.decode)
    assert not softmax_mod._fusable(d.train(), x, 4, w, parts=parts)  # active dropout
    assert softmax_mod._fusable(d.eval(), x, 4, w, parts=parts)
    if kind == "perceiver":  # dropout in the inner cross-attentions only
        d.dropout_p = 0.0
        assert not softmax_mod._fusable(d.train(), x, 4, w, parts=parts)
    bias = torch.zeros(4, 4, requires_grad=True)
    assert not softmax_mod._fusable(m, x, 4, w, bias)  # a float mask that wants its gradient
    empty = torch.zeros(2, 0, D)
    out = m(x, empty, empty)  # Nk = 0: zeros, as eager
    assert torch.equal(out, torch.zeros_like(out))


def test_bfloat16_fused_path_is_close_to_eager(monkeypatch):
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(2)) > 0.3
    for kind in ("gated", "perceiver"):
        m = _make(kind, 3, torch.bfloat16)
        x = torch.randn(2, 6, D, dtype=torch.bfloat16, requires_grad=True)
        out, grads = _run(m, x, x, x, mask, True, monkeypatch)
        ref, ref_grads = _run(m, x, x, x, mask, False, monkeypatch)
        assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
        torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a, r, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("generic", [False, True])
def test_custom_ops_pass_torch_opcheck(generic, monkeypatch):
    monkeypatch.setattr(fused_softmax, "_GENERIC", generic)
    g = torch.Generator().manual_seed(0)
    B, Nq, Nk = 2, 5, 4

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()

    q, k, v = r(B, Nq, D), r(B, Nk, D), r(B, Nk, D)
    allowed = torch.rand(B, Nq, Nk, generator=g) > 0.5
    allowed[0, 0] = False
    bias = torch.randn(1, Nq, Nk, generator=g, dtype=torch.float64)
    m = _make("gated", 0)
    gated = [*fused_softmax._params(m), m.gate_proj.weight, m.gate_proj.bias, m.gate_alpha]
    gated = [t.detach().requires_grad_() for t in gated]
    p = _make("perceiver", 0)
    perc = [p.latents, *fused_softmax._params(p.encode), *fused_softmax._params(p.decode)]
    perc = [t.detach().requires_grad_() for t in perc]

    def plain(ts):
        return [t.detach() for t in ts]

    for (allowed_, b), vals in itertools.product(((None, None), (allowed, None), (allowed[:1], bias)), (v, None)):
        mask, none = fused_softmax._sdpa_mask(allowed_, b, torch.float64)
        torch.library.opcheck(fused_softmax._gated_op, (q, k, vals, gated, mask, none, 0.7, H))
        outs = plain(fused_softmax._gated_op(q, k, vals, gated, mask, none, 0.7, H))
        vp = None if vals is None else vals.detach()
        torch.library.opcheck(fused_softmax._gated_backward_op,
                              (torch.randn_like(outs[0]), q.detach(), k.detach(), vp, plain(gated), mask, none,
                               outs[1:], 0.7, H))
        union = None if allowed_ is None else allowed_.any(dim=1, keepdim=True)
        e_mask, e_none = fused_softmax._sdpa_mask(union, None, torch.float64)
        q_none = None if allowed_ is None else ~allowed_.any(dim=-1, keepdim=True)
        args = (perc, e_mask, e_none, q_none)
        torch.library.opcheck(fused_softmax._perceiver_op, (q, k, vals, *args, 0.5, 0.4, H))
        outs = plain(fused_softmax._perceiver_op(q, k, vals, *args, 0.5, 0.4, H))
        torch.library.opcheck(fused_softmax._perceiver_backward_op,
                              (torch.randn_like(outs[0]), q.detach(), k.detach(), vp, plain(perc), *args[1:],
                               outs[1:], 0.5, 0.4, H))


@pytest.mark.parametrize("kind", ["gated", "perceiver"])
def test_compiled_module_traces_the_operators_and_matches_eager(kind):
    m = _make(kind, 4, torch.float32)
    x = torch.randn(2, 7, D, requires_grad=True)
    mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.5
    mask[2] = False
    for beta in (1.0, 0.5):  # sharpening changes between steps: the compiled module follows it
        for mod in m.modules():
            if hasattr(mod, "q_proj"):
                mod.beta = beta
        seen = []
        torch._dynamo.reset()
        out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(x, x, x, key_mask=mask)
        grads = torch.autograd.grad(out.sum(), [x, *m.parameters()])
        ref = m(x, x, x, key_mask=mask)
        torch.testing.assert_close(out, ref)
        for a, r in zip(grads, torch.autograd.grad(ref.sum(), [x, *m.parameters()])):
            torch.testing.assert_close(a, r)
        name = "gated_attention" if kind == "gated" else "perceiver_attention"
        assert f"canvas_core.{name}_v2.default" in seen and f"canvas_core.{name}_backward_v2.default" in seen
        assert not any("softmax" in t or "addmm" in t or "bmm" in t for t in seen)


def test_inductor_compiled_modules_match_eager():
    torch._dynamo.reset()
    gated, perceiver = _make("gated", 5, torch.float32), _make("perceiver", 5, torch.float32)

    def f(x):
        return perceiver(gated(x, x, x), x, x)

    x = torch.randn(2, 6, D, requires_grad=True)
    out = torch.compile(f, backend="inductor", fullgraph=True)(x)
    params = [x, *gated.parameters(), *perceiver.parameters()]
    grads = torch.autograd.grad(out.pow(2).sum(), params)
    ref = f(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for a, r in zip(grads, torch.autograd.grad(ref.pow(2).sum(), params)):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gated", "perceiver"])
@pytest.mark.parametrize("shared", [True, False])
def test_values_that_are_the_keys_reach_the_compiled_operator_as_none(kind, shared):
    """The canvas runtime passes one tensor as keys and values: the operator then projects it
    twice and returns one gradient for it (``values`` None); distinct values keep their own."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    name = "gated_attention" if kind == "gated" else "perceiver_attention"
    values_args = []

    def backend(gm, example):
        def keep(graph, _):
            target = f"canvas_core.{name}_v2.default"
            values_args.extend(n.args[2] for n in graph.graph.nodes if str(n.target) == target)
            return make_boxed_func(graph.forward)

        return aot_module_simplified(gm, example, fw_compiler=keep, bw_compiler=keep)

    torch._dynamo.reset()
    m = _make(kind, 6, torch.float32)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 5, D, generator=gen, requires_grad=True)
    k = torch.randn(2, 4, D, generator=gen, requires_grad=True)
    v = k if shared else torch.randn(2, 4, D, generator=gen, requires_grad=True)
    inputs = [q, k] if shared else [q, k, v]
    out = torch.compile(m, backend=backend, fullgraph=True)(q, k, v)
    grads = torch.autograd.grad(out.pow(2).sum(), [*inputs, *m.parameters()])
    ref = m(q, k, v)
    torch.testing.assert_close(out, ref)
    for a, r in zip(grads, torch.autograd.grad(ref.pow(2).sum(), [*inputs, *m.parameters()])):
        torch.testing.assert_close(a, r)
    assert len(values_args) == 1 and (values_args[0] is None) == shared


@pytest.mark.parametrize("kind", ["gated", "perceiver"])
def test_a_hooked_projection_keeps_the_eager_path(kind, monkeypatch):
    """A forward hook on a projection (a weight norm, an adapter, a probe) would be bypassed by the
    operator: the module then runs op by op, and the hook changes the output as it does in eager."""
    m = _make(kind, 5)
    proj = m.v_proj if kind == "gated" else m.encode.v_proj
    calls = []
    proj.register_forward_hook(lambda mod, inp, out: calls.append(1) or out * 2.0)
    q, k = torch.randn(2, 4, D, dtype=torch.float64), torch.randn(2, 5, D, dtype=torch.float64)
    used = []
    real = fused_softmax.gated_attention if kind == "gated" else fused_softmax.perceiver_attention
    name = "gated_attention" if kind == "gated" else "perceiver_attention"
    monkeypatch.setattr(fused_softmax, name, lambda *a, **kw: used.append(1) or real(*a, **kw))
    out, _ = _run(m, q, k, k, None, True, monkeypatch)
    ref, _ = _run(m, q, k, k, None, False, monkeypatch)
    assert not used and len(calls) == 2
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


def test_trace_types_setting_keeps_the_modules_traced(monkeypatch):
    """``CANVAS_COMPILE_TRACE_TYPES=1`` (``operators_under_compile()`` False): the compiled graph
    holds the modules' own operations, no operator, and the values are the same."""
    from canvas_core.attention import _base

    monkeypatch.setattr(_base, "_TRACE_TYPES", True)
    m = _make("gated", 4, torch.float32)
    x = torch.randn(2, 5, D)
    seen = []
    torch._dynamo.reset()
    out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(x, x, x)
    torch._dynamo.reset()
    torch.testing.assert_close(out, m(x, x, x))
    assert seen and not any("canvas_core." in t for t in seen)


def test_trace_types_setting_is_read_from_the_environment():
    import os
    import subprocess
    import sys

    code = "import canvas_core.extend as e; print(e.operators_under_compile())"
    for value, expected in (("1", "False"), ("0", "True"), ("", "True")):
        env = dict(os.environ, CANVAS_COMPILE_TRACE_TYPES=value)
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert run.stdout.strip() == expected, run.stderr
    env = dict(os.environ, CANVAS_COMPILE_TRACE_TYPES="maybe")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "CANVAS_COMPILE_TRACE_TYPES='maybe' is not a boolean" in run.stderr
    assert "canvas_core.errors.SettingError: " in run.stderr  # a setting's error, not a plugin's


def test_a_projection_without_bias_keeps_the_eager_path(monkeypatch):
    """The operators take every projection's bias as an input: a gated module whose gate has no
    bias runs op by op, with eager's values."""
    m = _make("gated", 6)
    m.gate_proj = torch.nn.Linear(D, D, bias=False).double()
    x = torch.randn(2, 4, D, dtype=torch.float64)
    used = []
    real = fused_softmax.gated_attention
    monkeypatch.setattr(fused_softmax, "gated_attention", lambda *a, **kw: used.append(1) or real(*a, **kw))
    out, _ = _run(m, x, x, x, None, True, monkeypatch)
    ref, _ = _run(m, x, x, x, None, False, monkeypatch)
    assert not used
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)

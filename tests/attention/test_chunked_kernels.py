"""The fast kernels of the linear-time types against obvious references, forward and gradients.

* ``wkv_read`` (RWKV's chunked WKV, read at given positions) against the step-by-step
  recurrence of ``wkv_scan(chunk=1)`` and against a per-position sum written from the formula;
* ``causal_conv_last`` (Hyena's FFT convolution with its FFT adjoint) and ``gated_causal_conv``
  (the gated stages, one batch row at a time) against the direct sum;
* ``key_summary`` / ``elu_plus_one`` (linear attention's fused key side) against ``F.elu`` and
  plain products;
* the types' unmasked forward (the per-key-set path the runtime uses) against the same module
  called with an all-true mask, and float32 against float64.

Hypothesis draws the lengths (1, empty, not a multiple of the chunk), the chunk, the read
positions (``-1``, repeats, unsorted) and masked keys.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.attention import HyenaAttention, LinearAttention, RWKVAttention
from canvas_core.attention.hyena import causal_conv_last, gated_causal_conv, read_conv_last
from canvas_core.attention.linear_sums import elu_plus_one, key_summary
from canvas_core.attention.rwkv import wkv_read, wkv_scan

DT = torch.float64
C = 5


def _wkv_formula(k, v, w, u, p, ok):
    """``wkv_p`` of one row by its definition: weighted mean of the allowed values up to ``p``."""
    num = torch.zeros(k.shape[-1], dtype=k.dtype)
    den = torch.zeros(k.shape[-1], dtype=k.dtype)
    for j in range(p + 1):
        if ok is not None and not ok[j]:
            continue
        e = torch.exp(u + k[j]) if j == p else torch.exp(k[j] - (p - 1 - j) * w)
        num, den = num + e * v[j], den + e
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    L=st.integers(0, 17),
    Q=st.integers(0, 8),
    chunk=st.sampled_from([None, 1, 2, 3, 4, 7, 32]),
    masked=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_wkv_read_equals_the_formula_with_gradients(B, L, Q, chunk, masked, seed):
    g = torch.Generator().manual_seed(seed)
    k = (torch.randn(B, L, C, generator=g, dtype=DT) * 3).requires_grad_()
    v = torch.randn(B, L, C, generator=g, dtype=DT, requires_grad=True)
    w = (torch.rand(C, generator=g, dtype=DT) * 2 + 0.01).requires_grad_()
    u = torch.randn(C, generator=g, dtype=DT, requires_grad=True)
    read = torch.randint(-1, max(L, 1), (Q,), generator=g) if L else torch.full((Q,), -1)
    ok = (torch.rand(B, L, generator=g) > 0.3) if masked else None
    out = wkv_read(k, v, w, u, read, ok, chunk=chunk)
    assert out.shape == (B, Q, C)
    rows = [
        torch.stack([_wkv_formula(k[b], v[b], w, u, p, None if ok is None else ok[b]) if p >= 0
                     else torch.zeros(C, dtype=DT) for p in read.tolist()]) if Q else torch.zeros(0, C, dtype=DT)
        for b in range(B)
    ]
    ref = torch.stack(rows)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    gy = torch.randn(B, Q, C, generator=g, dtype=DT)
    got = torch.autograd.grad(out, (k, v, w, u), gy, allow_unused=True)
    want = torch.autograd.grad(ref, (k, v, w, u), gy, allow_unused=True) if ref.requires_grad else (None,) * 4
    for a, b in zip(got, want):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


@settings(max_examples=20, deadline=None)
@given(L=st.integers(1, 60), chunk=st.sampled_from([None, 1, 5, 16]), seed=st.integers(0, 2**31 - 1))
def test_wkv_scan_chunked_equals_step_recurrence_and_is_stable_in_float32(L, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, L, C, generator=g, dtype=DT) * 30  # exp(k) overflows float32 without care
    v = torch.randn(2, L, C, generator=g, dtype=DT)
    w, u = torch.rand(C, generator=g, dtype=DT) * 5, torch.randn(C, generator=g, dtype=DT)
    ref = wkv_scan(k, v, w, u, chunk=1)
    torch.testing.assert_close(wkv_scan(k, v, w, u, chunk=chunk), ref, atol=1e-10, rtol=1e-8)
    kf, vf, wf, uf = (x.float().requires_grad_() for x in (k, v, w, u))
    out = wkv_scan(kf, vf, wf, uf, chunk=chunk)
    out.square().sum().backward()
    assert all(x.grad is None or torch.isfinite(x.grad).all() for x in (kf, vf, wf, uf))
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), L=st.integers(0, 13), seed=st.integers(0, 2**31 - 1))
def test_fft_causal_conv_and_its_adjoint_equal_the_direct_sum(B, L, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, L, generator=g, dtype=DT, requires_grad=True)
    h = torch.randn(C, L, generator=g, dtype=DT, requires_grad=True)
    y = causal_conv_last(z, h)
    ref = torch.zeros(B, C, L, dtype=DT)
    for t in range(L):
        for s in range(t + 1):
            ref[..., t] = ref[..., t] + h[:, t - s] * z[..., s]
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-8)
    if L:
        gy = torch.randn(B, C, L, generator=g, dtype=DT)
        for a, b in zip(torch.autograd.grad(y, (z, h), gy), torch.autograd.grad(ref, (z, h), gy)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 3), L=st.integers(0, 13), grads=st.sampled_from(["all", "z", "gate", "h", "z,h"]),
       seed=st.integers(0, 2**31 - 1))
def test_gated_causal_conv_and_its_adjoint_equal_the_direct_sum(B, L, grads, seed):
    g = torch.Generator().manual_seed(seed)
    want = {"z", "gate", "h"} if grads == "all" else set(grads.split(","))
    z = torch.randn(B, C, L, generator=g, dtype=DT, requires_grad="z" in want)
    gate = torch.randn(B, C, L, generator=g, dtype=DT, requires_grad="gate" in want)
    h = torch.randn(C, L, generator=g, dtype=DT, requires_grad="h" in want)
    y = gated_causal_conv(z, gate, h)
    ref = torch.zeros(B, C, L, dtype=DT)
    for t in range(L):
        for s in range(t + 1):
            ref[..., t] = ref[..., t] + h[:, t - s] * z[..., s]
    ref = gate * ref
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-8)
    if y.numel():
        leaves = [t for t in (z, gate, h) if t.requires_grad]
        gy = torch.randn(B, C, L, generator=g, dtype=DT)
        for a, b in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@settings(max_examples=12, deadline=None)
@given(
    cls=st.sampled_from([RWKVAttention, HyenaAttention, LinearAttention]),
    B=st.integers(1, 3),
    Nq=st.integers(1, 9),
    Nk=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_unmasked_forward_equals_all_true_mask_and_float32_is_close(cls, B, Nq, Nk, seed):
    torch.manual_seed(seed % 1000)
    m = cls(8, 2).double()
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, 8, generator=g, dtype=DT) for n in (Nq, Nk, Nk))
    out = m(q, k, v)
    allow = torch.ones(Nq, Nk, dtype=torch.bool)  # the masked form must agree with the fast one
    torch.testing.assert_close(m(q, k, v, key_mask=allow), out, atol=1e-10, rtol=1e-8)
    out32 = m.float()(q.float(), k.float(), v.float())
    torch.testing.assert_close(out32.double(), out, atol=2e-4, rtol=2e-4)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 3),
    N=st.integers(0, 12),
    D=st.sampled_from([1, 4, 6]),
    same=st.booleans(),
    bias=st.booleans(),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_key_summary_and_feature_map_equal_the_composite_form_with_gradients(B, N, D, same, bias, scale, seed):
    g = torch.Generator().manual_seed(seed)
    keys = (torch.randn(B, N, D, generator=g, dtype=DT) * scale).requires_grad_()
    values = keys if same else torch.randn(B, N, D, generator=g, dtype=DT, requires_grad=True)
    w = torch.randn(D, D, generator=g, dtype=DT, requires_grad=True)
    b = torch.randn(D, generator=g, dtype=DT, requires_grad=True) if bias else None
    P, s = key_summary(keys, None if same else values, w, b)
    phi = torch.nn.functional.elu(torch.nn.functional.linear(keys, w, b)) + 1
    P_ref, s_ref = phi.transpose(1, 2) @ values, phi.sum(dim=1)
    torch.testing.assert_close(P, P_ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=1e-8)
    gP, gs = torch.randn(B, D, D, generator=g, dtype=DT), torch.randn(B, D, generator=g, dtype=DT)
    ins = tuple(t for t in (keys, None if same else values, w, b) if t is not None)
    got = torch.autograd.grad((P, s), ins, (gP, gs), allow_unused=True)
    want = torch.autograd.grad((P_ref, s_ref), ins, (gP, gs), allow_unused=True)
    for a, r in zip(got, want):
        a = torch.zeros(()) if a is None else a
        r = torch.zeros_like(a) if r is None else r
        torch.testing.assert_close(a, r, atol=1e-9, rtol=1e-7)
    x = (torch.randn(B, N, D, generator=g, dtype=DT) * scale).requires_grad_()
    y = elu_plus_one(x)
    y_ref = torch.nn.functional.elu(x) + 1
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    gy = torch.randn(B, N, D, generator=g, dtype=DT)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(y_ref, x, gy)[0],
                               atol=1e-12, rtol=1e-10)


def _direct_conv(z, h):
    """``y_t = sum_{s<=t} h_{t-s} z_s`` along dim 1 of ``z (B, L, C)``, ``h (L, C)``: a Toeplitz sum."""
    L = z.shape[1]
    t = torch.arange(L)
    lag = t[:, None] - t[None, :]
    taps = h[lag.clamp(min=0)] * (lag >= 0)[..., None].to(h.dtype)  # (L, L, C)
    return torch.einsum("tsc,bsc->btc", taps, z)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(0, 2),
    Q=st.integers(0, 6),
    stride=st.integers(1, 9),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_read_conv_last_and_its_adjoint_equal_the_direct_sum_at_the_reads(B, Q, stride, channels_last, seed):
    """The strided read of Hyena's last convolution (``stride`` phases of ``Q`` keys, short FFTs
    summed in the frequency domain, one batch row at a time; the adjoint in the same phases)
    against the direct sum read at ``stride (i + 1) - 1``; strides that are not 5-smooth, one
    read, an empty batch, a transposed (non-contiguous) input."""
    g = torch.Generator().manual_seed(seed)
    L = Q * stride
    leaf = torch.randn(*((B, L, C) if channels_last else (B, C, L)), generator=g, dtype=DT, requires_grad=True)
    z = leaf.transpose(1, 2) if channels_last else leaf
    h = torch.randn(C, L, generator=g, dtype=DT, requires_grad=True)
    y = read_conv_last(z, h, stride)
    ref = _direct_conv(z.transpose(1, 2), h.t()).transpose(1, 2)[..., stride - 1 :: stride]
    assert y.shape == (B, C, Q)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-8)
    if y.numel():
        gy = torch.randn(B, C, Q, generator=g, dtype=DT)
        for a, b in zip(torch.autograd.grad(y, (leaf, h), gy), torch.autograd.grad(ref, (leaf, h), gy)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@settings(max_examples=15, deadline=None)
@given(
    Nq=st.integers(1, 5),
    stride=st.sampled_from([1, 2, 3, 5, 6, 7]),
    order=st.integers(1, 3),
    masked=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_hyena_with_strided_reads_equals_the_direct_form(Nq, stride, order, masked, seed):
    """``Nk = stride * Nq`` (the runtime's key sets: the last stage is read at the read positions
    only) against the definition: direct convolutions, masked keys zeroed in every stage, the
    output read at ``p(i)`` and zero where no allowed key is at or before it; with gradients."""
    torch.manual_seed(seed % 1000)
    m = HyenaAttention(8, 2, order=order, max_len=16).double()
    g = torch.Generator().manual_seed(seed)
    Nk = stride * Nq
    q, k, v = (torch.randn(2, n, 8, generator=g, dtype=DT, requires_grad=True) for n in (Nq, Nk, Nk))
    ok = torch.rand(2, Nk, generator=g) > 0.4 if masked else torch.ones(2, Nk, dtype=torch.bool)
    out = m(q, k, v, key_mask=ok[:, None, :].expand(2, Nq, Nk)) if masked else m(q, k, v)
    keep = ok[..., None].to(DT)
    h, d = m.filters(Nk, DT), m.skip
    z = m.v_proj(v) * keep
    gates = m.gate_proj(k).chunk(order - 1, -1) if order > 1 else ()
    for n in range(order - 1):
        z = gates[n] * (_direct_conv(z, h[n]) + d[n] * z) * keep
    y = _direct_conv(z, h[-1]) + d[-1] * z
    read = [-(-(i + 1) * Nk // Nq) - 1 for i in range(Nq)]
    has = torch.stack([ok[:, : p + 1].any(1) for p in read], 1)[..., None]
    ref = m.out_proj(m.q_proj(q) * y[:, read]) * has
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)
    gout = torch.randn(out.shape, generator=g, dtype=DT)
    ins = (q, k, v, *m.parameters())
    got = torch.autograd.grad(out, ins, gout, allow_unused=True)
    want = torch.autograd.grad(ref, ins, gout, allow_unused=True)
    for a, r in zip(got, want):
        if a is None or r is None:
            assert (a is None or not a.any()) and (r is None or not r.any())
            continue
        torch.testing.assert_close(a, r, atol=1e-9, rtol=1e-7)


def _one_tensor_matches_two(m, Nq, stride, seed):
    """``m(q, x, x)`` (keys and values one tensor: the runtime's key sets, where a type may take a
    shared path) against ``m(q, k, v)`` with two equal tensors (the general path): same output,
    the input gradient equal to the sum of the two, the same parameter gradients."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, Nq, 8, generator=g, dtype=DT)
    x = torch.randn(2, stride * Nq, 8, generator=g, dtype=DT, requires_grad=True)
    out = m(q, x, x)
    k, v = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ref = m(q, k, v)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    gout = torch.randn(out.shape, generator=g, dtype=DT)
    got = torch.autograd.grad(out, (x, *m.parameters()), gout, allow_unused=True)
    want = torch.autograd.grad(ref, (k, v, *m.parameters()), gout, allow_unused=True)
    both = sum(w for w in want[:2] if w is not None)  # hyena of order 1 reads no gate from the keys
    torch.testing.assert_close(got[0], both, atol=1e-12, rtol=1e-10)
    for a, r in zip(got[1:], want[2:]):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


@settings(max_examples=10, deadline=None)
@given(Nq=st.integers(1, 4), stride=st.sampled_from([1, 3, 4]), order=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_hyena_keys_that_are_the_values_give_what_separate_tensors_give(Nq, stride, order, seed):
    """hyena's value and gate projections as one product when keys are the values."""
    torch.manual_seed(seed % 1000)
    _one_tensor_matches_two(HyenaAttention(8, 2, order=order, max_len=16).double(), Nq, stride, seed)


@settings(max_examples=10, deadline=None)
@given(Nq=st.integers(1, 4), stride=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2**31 - 1))
def test_rwkv_keys_that_are_the_values_give_what_separate_tensors_give(Nq, stride, seed):
    """rwkv's key and value projections in one autograd function (one input gradient formed in
    its backward) when keys are the values."""
    torch.manual_seed(seed % 1000)
    _one_tensor_matches_two(RWKVAttention(8, 2).double(), Nq, stride, seed)


@pytest.mark.parametrize("cls", [HyenaAttention, RWKVAttention, LinearAttention])
@pytest.mark.parametrize("Nq", [4, 12])  # strided reads (Nk = 3 Nq: hyena's phases, rwkv's chunk ends), one per key
def test_linear_time_types_compile_in_one_graph(cls, Nq):
    """The per-key-set fast paths trace without a graph break, forward and gradients (their
    hand-written backwards included: no ``out=`` into a strided view, which dynamo refuses)."""
    torch.manual_seed(0)
    m = cls(8, 2)
    c = torch.compile(m, backend="eager", fullgraph=True)
    q, k = torch.randn(2, Nq, 8, requires_grad=True), torch.randn(2, 12, 8, requires_grad=True)
    a, b = c(q, k, k), m(q, k, k)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for x, y in zip(torch.autograd.grad(a.sum(), (q, k)), torch.autograd.grad(b.sum(), (q, k))):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_hyena_compiled_with_dynamic_shapes_traces_once_for_every_batch_size():
    """The per-row loop of the gated stage runs inside an operator under compile: a traced one
    would specialise the graph on the batch size (the runtime stacks key sets along it) and
    recompile per size."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    m = HyenaAttention(8, 2)
    c = torch.compile(m, backend=counter, fullgraph=True, dynamic=True)
    for B in (2, 3, 5):
        q, k = torch.randn(B, 4, 8), torch.randn(B, 12, 8)
        torch.testing.assert_close(c(q, k, k), m(q, k, k), atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(64, 200),
    chunk=st.sampled_from([1, 2, 3]),
    Q=st.integers(1, 6),
    keep=st.sampled_from([1.0, 0.7, 0.05]),
    scale=st.sampled_from([1.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_wkv_read_with_two_level_chunk_states_equals_the_step_recurrence(L, chunk, Q, keep, scale, seed):
    """64 chunks or more (one per read when the runtime's reads end chunks): the chunk states in
    groups, then across groups; against the key-by-key recurrence, reads at -1, 0 and L - 1
    included, masked keys (down to almost all), large keys; gradients against the recurrence's."""
    g = torch.Generator().manual_seed(seed)
    k = (torch.randn(2, L, C, generator=g, dtype=DT) * scale).requires_grad_()
    v = torch.randn(2, L, C, generator=g, dtype=DT, requires_grad=True)
    w = (torch.rand(C, generator=g, dtype=DT) * 2 + 0.01).requires_grad_()
    u = torch.randn(C, generator=g, dtype=DT, requires_grad=True)
    read = torch.cat([torch.tensor([-1, 0, L - 1]), torch.randint(-1, L, (Q,), generator=g)])
    ok = torch.rand(2, L, generator=g) < keep
    out = wkv_read(k, v, w, u, read, ok, chunk=chunk)
    seq = wkv_scan(k, v, w, u, ok, chunk=1)
    ref = seq[:, read.clamp(min=0)] * (read >= 0).view(1, -1, 1).to(DT)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    gy = torch.randn(out.shape, generator=g, dtype=DT)
    got = torch.autograd.grad(out, (k, v, w, u), gy)
    want = torch.autograd.grad(ref, (k, v, w, u), gy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


@settings(max_examples=12, deadline=None)
@given(Nq=st.sampled_from([1, 2, 7, 64, 70, 96]), stride=st.sampled_from([1, 2, 3, 5]), masked=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_rwkv_with_reads_ending_chunks_equals_the_step_recurrence(Nq, stride, masked, seed):
    """``Nk = stride * Nq`` (the runtime's key sets: chunks of ``stride`` keys, each read at the
    end of one) against the module's definition over the step recurrence."""
    torch.manual_seed(seed % 1000)
    m = RWKVAttention(C, 1).double()
    g = torch.Generator().manual_seed(seed)
    Nk = stride * Nq
    q, kv = torch.randn(2, Nq, C, generator=g, dtype=DT), torch.randn(2, Nk, C, generator=g, dtype=DT)
    ok = torch.rand(2, Nk, generator=g) > 0.4 if masked else torch.ones(2, Nk, dtype=torch.bool)
    out = m(q, kv, kv, key_mask=ok[:, None, :].expand(2, Nq, Nk)) if masked else m(q, kv, kv)
    seq = wkv_scan(m.key(kv), m.value(kv), torch.exp(m.time_decay), m.time_first, ok, chunk=1)
    read = [-(-(i + 1) * Nk // Nq) - 1 for i in range(Nq)]
    has = torch.stack([ok[:, : p + 1].any(1) for p in read], 1)[..., None]
    ref = m.output(torch.sigmoid(m.receptance(q)) * seq[:, read]) * has
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    gy = torch.randn(out.shape, generator=g, dtype=DT)
    ins = tuple(m.parameters())
    for a, b in zip(torch.autograd.grad(out, ins, gy, allow_unused=True), torch.autograd.grad(ref, ins, gy, allow_unused=True)):
        a = torch.zeros(()) if a is None else a
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, atol=1e-9, rtol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    Q=st.sampled_from([1, 2, 5, 64, 80]),
    chunk=st.integers(1, 4),
    keep=st.sampled_from([1.0, 0.6, 0.05]),
    seed=st.integers(0, 2**31 - 1),
)
def test_wkv_read_with_reads_ending_their_chunks_equals_the_step_recurrence(Q, chunk, keep, seed):
    """``ends_chunks``: read ``i`` at ``(i + 1) chunk - 1`` (no gather of the chunks, gradients
    written directly) against the recurrence, length 1 and masked keys included; any other read
    pattern is refused."""
    g = torch.Generator().manual_seed(seed)
    L = Q * chunk
    k = (torch.randn(2, L, C, generator=g, dtype=DT) * 3).requires_grad_()
    v = torch.randn(2, L, C, generator=g, dtype=DT, requires_grad=True)
    w = (torch.rand(C, generator=g, dtype=DT) * 2 + 0.01).requires_grad_()
    u = torch.randn(C, generator=g, dtype=DT, requires_grad=True)
    ok = torch.rand(2, L, generator=g) < keep
    read = torch.arange(1, Q + 1) * chunk - 1
    out = wkv_read(k, v, w, u, read, ok, chunk=chunk, ends_chunks=True)
    ref = wkv_scan(k, v, w, u, ok, chunk=1)[:, read]
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    gy = torch.randn(out.shape, generator=g, dtype=DT)
    got = torch.autograd.grad(out, (k, v, w, u), gy, allow_unused=True)
    want = torch.autograd.grad(ref, (k, v, w, u), gy, allow_unused=True)
    for a, b in zip(got, want):
        a = torch.zeros(()) if a is None else a
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, atol=1e-9, rtol=1e-7)
    if Q > 1:
        with pytest.raises(ValueError, match="ends_chunks"):
            wkv_read(k, v, w, u, read.flip(0), ok, chunk=chunk, ends_chunks=True)


@settings(max_examples=10, deadline=None)
@given(masked=st.booleans(), scale=st.sampled_from([30.0, 100.0]), seed=st.integers(0, 2**31 - 1))
def test_wkv_read_ending_chunks_is_stable_in_float32(masked, scale, seed):
    """Keys far apart (``exp(k)`` overflows float32) and masked last keys above every allowed one:
    finite values and gradients, close to float64."""
    g = torch.Generator().manual_seed(seed)
    L, Q = 600, 40
    k = torch.randn(2, L, C, generator=g, dtype=DT) * scale
    v = torch.randn(2, L, C, generator=g, dtype=DT)
    w, u = torch.rand(C, generator=g, dtype=DT) * 5, torch.randn(C, generator=g, dtype=DT)
    ok = torch.rand(2, L, generator=g) > 0.5 if masked else None
    read = torch.arange(1, Q + 1) * (L // Q) - 1
    ref = wkv_scan(k, v, w, u, ok, chunk=1)[:, read]
    kf, vf, wf, uf = (x.float().requires_grad_() for x in (k, v, w, u))
    out = wkv_read(kf, vf, wf, uf, read, ok, chunk=L // Q, ends_chunks=True)
    out.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (kf, vf, wf, uf))
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_release_scratch_gives_back_the_buffers_and_later_calls_still_agree():
    """A type's call leaves its per-thread scratch buffers allocated; ``release_scratch`` drops
    them (returning their bytes), a second release finds nothing, and the next call makes new
    buffers and gives the same output as before."""
    from canvas_core.extend import release_scratch, scratch

    release_scratch()
    torch.manual_seed(0)
    m = RWKVAttention(16, 2)
    q, x = torch.randn(1, 8, 16), torch.randn(1, 64, 16)
    before = m(q, x, x)
    buf = scratch("test.release", (1000,), x)
    held = release_scratch()
    assert held >= buf.numel() * buf.element_size()
    assert release_scratch() == 0
    again = scratch("test.release", (1000,), x)
    assert again.data_ptr() != buf.data_ptr()  # a new buffer, not the released one
    torch.testing.assert_close(m(q, x, x), before, atol=0, rtol=0)

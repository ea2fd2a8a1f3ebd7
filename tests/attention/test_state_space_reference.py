"""Property tests: ``rwkv`` and ``hyena`` equal an obvious step-by-step reference on random inputs.

The references below use no log-space tricks, no FFT and no vectorisation: a plain Python loop
over time per batch element and query, written from the operators' definitions
(``canvas_core.attention.recurrent``).  Hypothesis draws the sizes (a single position, no keys,
more or fewer queries than keys), the key mask (none, shared, per batch, per query, fully
masked rows) and, for Hyena, the order.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.attention import HyenaAttention, RWKVAttention
from canvas_core.attention.recurrent import fft_causal_conv, wkv_scan

DT = torch.float64
D = 6


def _read(i: int, Nq: int, Nk: int) -> int:
    return -(-(i + 1) * Nk // Nq) - 1


def _draw_mask(kind: str, B: int, Nq: int, Nk: int, g: torch.Generator):
    if kind == "none":
        return None, torch.ones(B, Nq, Nk, dtype=torch.bool)
    if kind == "shared":
        m = torch.rand(Nk, generator=g) > 0.35
        return m, m.expand(B, Nq, Nk)
    if kind == "batch":
        m = torch.rand(B, 1, Nk, generator=g) > 0.35
        return m, m.expand(B, Nq, Nk)
    if kind == "per_query":
        m = torch.rand(B, Nq, Nk, generator=g) > 0.4
        if Nq > 1:
            m[:, 0] = False  # a query with no allowed key at all
        return m, m
    if kind == "float":
        allow = torch.rand(Nq, Nk, generator=g) > 0.4
        m = torch.where(allow, torch.zeros(()), torch.full((), float("-inf"))).to(DT)
        return m, allow.expand(B, Nq, Nk)
    raise AssertionError(kind)


def _inputs(B, Nq, Nk, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, D, generator=g, dtype=DT)
    k = torch.randn(B, Nk, D, generator=g, dtype=DT)
    v = torch.randn(B, Nk, D, generator=g, dtype=DT)
    return g, q, k, v


# ------------------------------------------------------------------------------- RWKV
def _rwkv_reference(m: RWKVAttention, q, k, v, allow):
    """Per batch element and query: the RWKV-4 WKV sums over the query's allowed keys up to its
    read position, with the current key's bonus ``u``, then receptance gate and output proj."""
    B, Nq, _ = q.shape
    Nk = k.shape[1]
    kk, vv = m.key(k), m.value(v)
    w, u = torch.exp(m.time_decay), m.time_first
    out = torch.zeros(B, Nq, D, dtype=DT)
    for b in range(B):
        for i in range(Nq):
            p = _read(i, Nq, Nk)
            # exponents of the allowed keys, taken relative to their largest (a strong decay
            # underflows every plain exp to 0 even in float64, and 0 / 0 is not the answer)
            js = [j for j in range(p + 1) if allow[b, i, j]]
            if js:
                x = torch.stack([u + kk[b, j] if j == p else kk[b, j] - (p - 1 - j) * w for j in js])
                e = torch.exp(x - x.max(dim=0).values)
                wkv = (e * vv[b, js]).sum(dim=0) / e.sum(dim=0)
                out[b, i] = m.output(torch.sigmoid(m.receptance(q[b, i])) * wkv)
    return out


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    Nq=st.integers(1, 7),
    Nk=st.integers(0, 7),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["none", "shared", "batch", "per_query", "float"]),
)
def test_rwkv_equals_step_by_step_reference(B, Nq, Nk, seed, kind):
    torch.manual_seed(seed % 1000)
    m = RWKVAttention(D, 2).to(DT)
    with torch.no_grad():  # spread the decays and bonuses beyond the init
        m.time_decay.add_(torch.randn(D, dtype=DT))
        m.time_first.add_(torch.randn(D, dtype=DT))
    g, q, k, v = _inputs(B, Nq, Nk, seed)
    mask, allow = _draw_mask(kind, B, Nq, Nk, g)
    out = m(q, k, v, key_mask=mask)
    ref = _rwkv_reference(m, q, k, v, allow)
    assert out.shape == (B, Nq, D)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2),
    L=st.integers(0, 9),
    chunk=st.sampled_from([1, 2, 3, 4, 8, 16]),
    seed=st.integers(0, 2**31 - 1),
    masked=st.booleans(),
)
def test_wkv_scan_chunks_equal_plain_recurrence(B, L, chunk, seed, masked):
    """The chunked scan (the GPU path) equals the step recurrence, also with masked keys and
    keys large enough to overflow ``exp`` without the log-space form."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, L, D, generator=g, dtype=DT) * 4
    v = torch.randn(B, L, D, generator=g, dtype=DT)
    w, u = torch.rand(D, generator=g, dtype=DT) + 0.01, torch.randn(D, generator=g, dtype=DT)
    key_ok = (torch.rand(B, L, generator=g) > 0.3) if masked else None
    ref = wkv_scan(k, v, w, u, key_ok, chunk=1)
    out = wkv_scan(k, v, w, u, key_ok, chunk=chunk)
    assert out.shape == (B, L, D)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)
    big = wkv_scan((k * 100).float(), v.float(), w.float(), u.float(), None, chunk=chunk)
    assert torch.isfinite(big).all()


# ------------------------------------------------------------------------------- Hyena
def _conv_step(z, h, t, allow_row=None):
    """``sum_{s <= t} h[t - s] z[s]`` by a loop (only allowed ``s`` when ``allow_row`` is given)."""
    acc = torch.zeros(z.shape[-1], dtype=DT)
    for s in range(t + 1):
        if allow_row is None or allow_row[s]:
            acc = acc + h[t - s] * z[s]
    return acc


def _hyena_reference(m: HyenaAttention, q, k, v, allow):
    """Hyena by its definition: masked keys are zeroed in every stage; the inner stages see the
    keys any query may see; the last convolution (and skip) sums only the query's own keys."""
    B, Nq, _ = q.shape
    Nk = k.shape[1]
    out = torch.zeros(B, Nq, D, dtype=DT)
    if Nk == 0:
        return out
    h = m.filters(Nk, DT)
    d = m.skip
    for b in range(B):
        union = allow[b].any(dim=0)  # (Nk,)
        keep = union.to(DT)[:, None]
        z = m.v_proj(v[b]) * keep
        gates = m.gate_proj(k[b]).chunk(m.order - 1, dim=-1) if m.order > 1 else ()
        for n in range(m.order - 1):
            z = torch.stack([gates[n][t] * (_conv_step(z, h[n], t) + d[n] * z[t]) for t in range(Nk)]) * keep
        for i in range(Nq):
            p = _read(i, Nq, Nk)
            if p < 0 or not allow[b, i, : p + 1].any():
                continue
            row = allow[b, i]
            y = _conv_step(z, h[-1], p, row) + (d[-1] * z[p] if row[p] else 0.0)
            out[b, i] = m.out_proj(m.q_proj(q[b, i]) * y)
    return out


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 2),
    Nq=st.integers(1, 6),
    Nk=st.integers(0, 6),
    order=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["none", "shared", "batch", "per_query", "float"]),
)
def test_hyena_equals_step_by_step_reference(B, Nq, Nk, order, seed, kind):
    torch.manual_seed(seed % 1000)
    m = HyenaAttention(D, 2, order=order, filter_dim=8, n_bands=2, max_len=8).to(DT)
    with torch.no_grad():
        m.skip.normal_()
    g, q, k, v = _inputs(B, Nq, Nk, seed)
    mask, allow = _draw_mask(kind, B, Nq, Nk, g)
    out = m(q, k, v, key_mask=mask)
    ref = _hyena_reference(m, q, k, v, allow)
    assert out.shape == (B, Nq, D)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), L=st.integers(0, 12), seed=st.integers(0, 2**31 - 1))
def test_fft_causal_conv_equals_direct_sum(B, L, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, L, D, generator=g, dtype=DT)
    h = torch.randn(L, D, generator=g, dtype=DT)
    out = fft_causal_conv(z, h)
    assert out.shape == (B, L, D)
    ref = torch.stack([torch.stack([_conv_step(z[b], h, t) for t in range(L)]) if L else z[b]
                       for b in range(B)])
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", ["hyena", "rwkv", "linear_attention"])
def test_empty_batch_gives_empty_output_and_gradient(name):
    """A batch of 0 rows runs (MKL's FFT used to refuse it inside hyena) and backpropagates."""
    from canvas_core import create_attention

    torch.manual_seed(0)
    module = create_attention(name, 8, 2)
    q = torch.zeros(0, 3, 8, requires_grad=True)
    kv = torch.zeros(0, 5, 8)
    out = module(q, kv, kv)
    assert out.shape == (0, 3, 8)
    out.sum().backward()
    assert q.grad is not None and q.grad.shape == (0, 3, 8)

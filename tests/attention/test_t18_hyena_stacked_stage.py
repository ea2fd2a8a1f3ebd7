"""Hyena's channels-first path with its hand-written backwards, against plain float64 sums.

* ``gated_causal_conv_stacked`` (the first gated stage taking ``z`` over its gate in one tensor,
  the projection's output) and its gradient, against the direct causal sum;
* the module when keys and values are one tensor (the runtime's key sets: one projection
  ``b + W x^T`` with its own backward, the stacked first stage, the read in phases), values and
  gradients against the same formula written with direct sums, for 1 to 3 stages, with and
  without a key mask shared by the queries;
* the gradient the module hands back to the key set is in the key set's layout ``(B, N, D)``
  (before: a transposed view, which autograd then copied).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.attention import HyenaAttention
from canvas_core.attention.causal_read import causal_read
from canvas_core.attention.fft_conv import gated_causal_conv_stacked
from canvas_core.errors import ShapeError

DT = torch.float64


def _direct(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``y_t = sum_{s <= t} h_{t - s} z_s`` along the last dim of ``z (B, C, L)``, ``h (C, L)``."""
    L = z.shape[-1]
    t = torch.arange(L)
    lag = t[:, None] - t[None, :]
    taps = h[:, lag.clamp(min=0)] * (lag >= 0).to(h.dtype)  # (C, L, L)
    return torch.einsum("cts,bcs->bct", taps, z)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 3), C=st.integers(1, 4), L=st.integers(0, 13),
       grads=st.sampled_from(["zg", "h", "zg,h"]), seed=st.integers(0, 2**31 - 1))
def test_stacked_gated_conv_and_its_adjoint_equal_the_direct_sum(B, C, L, grads, seed):
    g = torch.Generator().manual_seed(seed)
    zg = torch.randn(B, 2 * C, L, generator=g, dtype=DT, requires_grad="zg" in grads)
    h = torch.randn(C, L, generator=g, dtype=DT, requires_grad="h" in grads)
    y = gated_causal_conv_stacked(zg, h)
    ref = zg[:, C:] * _direct(zg[:, :C], h)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-8)
    if y.numel():
        leaves = [t for t in (zg, h) if t.requires_grad]
        gy = torch.randn(B, C, L, generator=g, dtype=DT)
        for a, b in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def _reference(m: HyenaAttention, q, x, mask):
    """The module's formula with direct sums, keys = values = ``x``; ``mask (B, Nk)`` or None."""
    B, Nk, D = x.shape
    Nq = q.shape[1]
    h = m.filters(Nk, dtype=DT).transpose(1, 2)  # (order, D, Nk)
    keep = torch.ones(B, 1, Nk, dtype=DT) if mask is None else mask[:, None, :].to(DT)
    z = m.v_proj(x).transpose(1, 2) * keep
    gates = m.gate_proj(x).transpose(1, 2).chunk(m.order - 1, dim=1) if m.order > 1 else ()
    for n in range(m.order - 1):
        z = gates[n] * (_direct(z, h[n]) + m.skip[n, :, None] * z) * keep
    y = _direct(z, h[-1]) + m.skip[-1, :, None] * z  # (B, D, Nk)
    read, has = causal_read(Nq, Nk, None if mask is None else mask[:, None, :], x.device)
    y = y.index_select(2, read.clamp(min=0)).transpose(1, 2)
    return m.out_proj(m.q_proj(q) * y).masked_fill(~has, 0.0)


@settings(max_examples=15, deadline=None)
@given(order=st.integers(1, 3), B=st.integers(1, 2), Nq=st.integers(1, 5), s=st.integers(1, 4),
       extra=st.integers(0, 2), masked=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_module_on_one_key_set_equals_the_direct_formula_with_gradients(order, B, Nq, s, extra, masked, seed):
    torch.manual_seed(seed % 1000)
    m = HyenaAttention(8, 2, order=order).double()
    g = torch.Generator().manual_seed(seed)
    Nk = s * Nq + extra  # extra = 0: the read in phases; otherwise the whole last convolution
    q = torch.randn(B, Nq, 8, generator=g, dtype=DT, requires_grad=True)
    x = torch.randn(B, Nk, 8, generator=g, dtype=DT, requires_grad=True)
    mask = (torch.rand(B, Nk, generator=g) > 0.3) if masked else None
    key_mask = None if mask is None else mask[:, None, :].expand(B, Nq, Nk)  # the same keys for every query
    out, ref = m(q, x, x, key_mask=key_mask), _reference(m, q, x, mask)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    leaves = [q, x, *m.parameters()]
    gy = torch.randn(out.shape, generator=g, dtype=DT)
    got = torch.autograd.grad(out, leaves, gy, allow_unused=True)
    want = torch.autograd.grad(ref, leaves, gy, allow_unused=True)
    for a, b in zip(got, want):
        if a is None or b is None:  # a parameter the formula does not use (none expected but the skip of unused stages)
            assert (a is None or not a.any()) and (b is None or not b.any())
            continue
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_key_set_gradient_comes_back_in_the_key_layout():
    torch.manual_seed(0)
    m = HyenaAttention(8, 2)
    leaf = torch.randn(2, 12, 8, requires_grad=True)
    x = leaf * 1.0  # a key set computed upstream (the runtime gathers them)
    seen = []
    x.register_hook(lambda grad: seen.append((grad.shape, grad.is_contiguous())))
    m(torch.randn(2, 4, 8), x, x).square().sum().backward()
    assert seen == [(torch.Size([2, 12, 8]), True)]


def test_stacked_gated_conv_refuses_an_odd_channel_count():
    with pytest.raises(ShapeError, match=r"\(2, 5, 4\).*gated_causal_conv"):
        gated_causal_conv_stacked(torch.randn(2, 5, 4), torch.randn(2, 4))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("same", [True, False])
def test_backward_under_cpu_bfloat16_autocast(order, same):
    """The projection's own backward receives the autocast dtype's gradient while its inputs were
    saved in float32: it must return float32 gradients close to the float32 run's."""
    torch.manual_seed(0)
    m = HyenaAttention(16, 4, order=order)
    q, k = torch.randn(2, 8, 16), torch.randn(2, 32, 16)
    v = k if same else torch.randn(2, 32, 16)

    def grads(autocast):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = m(q, k, v)
        out.float().square().sum().backward()
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    ref, amp = grads(False), grads(True)
    assert ref.keys() == amp.keys() and ref
    for n, g in amp.items():
        assert g.dtype == torch.float32, n
        assert torch.isfinite(g).all(), n
        assert (g - ref[n]).norm() <= 0.1 * ref[n].norm() + 1e-3, n

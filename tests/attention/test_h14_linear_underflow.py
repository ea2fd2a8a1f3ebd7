"""linear_attention with inputs far below 0: a head's features must not underflow to 0.

``phi(x) = elu(x) + 1`` is ``exp(x)`` below 0, which is 0 in float32 below about -104.  A head
whose query (or, over a batch row, whose key) pre-activations all lie there used to give 0 / 0,
read as 0: a silent wrong row instead of a weighted mean of the values.  The ratio does not
change when one head's features are scaled by a constant, which is what the fix uses.
"""

from __future__ import annotations

import pytest
import torch

from canvas_core.attention import LinearAttention
from tests.attention._linear_layers import identity_linear_attention

D, H = 16, 2


def _identity_layer(dtype: torch.dtype = torch.float32) -> LinearAttention:
    return identity_linear_attention(D, H, dtype)


def _phi(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` without the cancellation of ``(exp(x) - 1) + 1`` far below 0."""
    return x.clamp(max=0).exp() + x.clamp(min=0)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The operator in float64 from its definition (identity projections): per head,
    ``sum_j w_ij v_j / sum_j w_ij`` with ``w_ij = phi(q_i) . phi(k_j)`` over allowed keys."""
    q, k, v = (t.double() for t in (q, k, v))
    B, Nq, _ = q.shape
    d = D // H
    out = torch.zeros(B, Nq, D, dtype=torch.float64)
    for h in range(H):
        s = slice(h * d, (h + 1) * d)
        w = torch.einsum("bid,bjd->bij", _phi(q[..., s]), _phi(k[..., s])) * allowed.double()
        out[..., s] = torch.einsum("bij,bjd->bid", w, v[..., s]) / w.sum(-1, keepdim=True)
    return out


def _inputs(low_queries: bool, low_keys: bool, Nq: int = 6, Nk: int = 9):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, Nq, D, generator=g)
    k = torch.randn(2, Nk, D, generator=g)
    v = torch.randn(2, Nk, D, generator=g)
    if low_queries:  # head 1 of every query: all pre-activations in [-150, -120]
        q[..., D // H:] = -150.0 + 30.0 * torch.rand(2, Nq, D // H, generator=g)
    if low_keys:  # head 0 of every key: all pre-activations in [-210, -200]
        k[..., : D // H] = -210.0 + 10.0 * torch.rand(2, Nk, D // H, generator=g)
    return q, k, v


CASES = [(True, False), (False, True), (True, True)]


@pytest.mark.parametrize("low_queries,low_keys", CASES)
def test_unmasked_rows_are_the_weighted_mean(low_queries: bool, low_keys: bool) -> None:
    q, k, v = _inputs(low_queries, low_keys)
    out = _identity_layer()(q, k, v)
    ref = _reference(q, k, v, torch.ones(2, q.shape[1], k.shape[1], dtype=torch.bool))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("low_queries,low_keys", CASES)
def test_masked_calls_are_the_weighted_mean(low_queries: bool, low_keys: bool) -> None:
    q, k, v = _inputs(low_queries, low_keys)
    m = _identity_layer()
    Nq, Nk = q.shape[1], k.shape[1]
    per_key = torch.ones(2, Nk, dtype=torch.bool)
    per_key[:, 2] = False
    per_query = torch.rand(2, Nq, Nk, generator=torch.Generator().manual_seed(5)) > 0.4
    per_query[..., 0] = True  # every query keeps one key
    for mask, allowed in ((per_key, per_key[:, None].expand(2, Nq, Nk)), (per_query, per_query)):
        out = m(q, k, v, key_mask=mask)
        torch.testing.assert_close(out.double(), _reference(q, k, v, allowed), rtol=1e-4, atol=1e-4)


def test_autocast_and_compiled_key_summary() -> None:
    q, k, v = _inputs(True, True)
    m = _identity_layer()
    ref = _reference(q, k, v, torch.ones(2, q.shape[1], k.shape[1], dtype=torch.bool))
    with torch.autocast("cpu", torch.bfloat16):
        out = m(q, k, v)
    # the projections run in bfloat16 (identity weights: they round the inputs), the sums do not
    rounded = _reference(*(t.bfloat16() for t in (q, k, v)), torch.ones(2, q.shape[1], k.shape[1], dtype=torch.bool))
    torch.testing.assert_close(out.double(), rounded, rtol=0.02, atol=0.02)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(compiled(q, k, v).double(), ref, rtol=1e-4, atol=1e-4)


def test_gradients_are_exact_with_the_shift() -> None:
    # float64, heads whose inputs are all below 0 (the shift is not 0): the hand-written
    # backwards (feature map and key summary) must still give the true derivative
    g = torch.Generator().manual_seed(7)
    m = _identity_layer(torch.float64)
    with torch.no_grad():  # projections that mix, so every input reaches every feature
        m.q_proj.weight.add_(0.1 * torch.randn(D, D, generator=g, dtype=torch.float64))
        m.k_proj.weight.add_(0.1 * torch.randn(D, D, generator=g, dtype=torch.float64))
    q = (torch.randn(1, 3, D, generator=g, dtype=torch.float64) - 6.0).requires_grad_()
    k = (torch.randn(1, 4, D, generator=g, dtype=torch.float64) - 6.0).requires_grad_()
    v = torch.randn(1, 4, D, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c), (q, k, v))
    mask = torch.tensor([[[True, False, True, True], [True, True, False, False], [False, True, True, True]]])
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c, key_mask=mask), (q, k, v))


def test_no_keys_still_gives_zeros() -> None:
    q = torch.randn(2, 3, D)
    out = _identity_layer()(q, torch.zeros(2, 0, D), torch.zeros(2, 0, D))
    assert out.shape == q.shape and bool((out == 0).all())

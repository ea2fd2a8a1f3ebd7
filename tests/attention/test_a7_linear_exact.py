"""linear_attention's ratio against a float64 log-domain reference where features underflow.

Two ways a weight that matters used to vanish:

* a per-query mask: the keys' features were scaled by one shift per head over the keys *any*
  query links, so a query whose own keys lie far below those of another query got weights
  ``e^{-200}`` -> 0 and returned 0;
* large inputs (``|x| ~ 1e3``) whose large dimensions miss each other: ``phi(q) . phi(k)`` is a
  sum of products ``e^{-1000}``, 0 even in float64, so the denominator of a query was 0.

The reference computes ``log w_ij = logsumexp_d(log phi(q_id) + log phi(k_jd))`` in float64 and
normalises over the allowed keys, so it holds where the plain float64 form does not.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch

from canvas_core.attention import LinearAttention
from tests.attention._linear_layers import identity_linear_attention

D, H = 16, 2


def _layer(dtype: torch.dtype = torch.float32) -> LinearAttention:
    return identity_linear_attention(D, H, dtype)


def _log_phi(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(max=0) + torch.log1p(x.clamp(min=0))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per head, ``softmax_j(log w_ij)`` over the allowed keys times the values (float64, log
    domain); 0 for a query without keys."""
    q, k, v = (t.double() for t in (q, k, v))
    B, Nq, _ = q.shape
    d = D // H
    out = torch.zeros(B, Nq, D, dtype=torch.float64)
    for h in range(H):
        s = slice(h * d, (h + 1) * d)
        lw = torch.logsumexp(_log_phi(q[..., s])[:, :, None] + _log_phi(k[..., s])[:, None], dim=-1)
        p = torch.softmax(lw.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
        out[..., s] = p @ v[..., s]
    return out


def _check(q, k, v, key_mask: Optional[torch.Tensor], allowed: torch.Tensor, dtype=torch.float32) -> None:
    out = _layer(dtype)(q.to(dtype), k.to(dtype), v.to(dtype), key_mask=key_mask)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(out.double(), _reference(q, k, v, allowed), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("drop", [40.0, 120.0, 900.0])
def test_a_query_whose_keys_lie_far_below_another_querys_keys(dtype, drop):
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 3, D, generator=g), torch.randn(2, 5, D, generator=g), torch.randn(2, 5, D, generator=g)
    k[:, :2] -= drop  # the keys of query 0 only; query 1 links every key, query 2 the high ones
    mask = torch.tensor([[True, True, False, False, False], [True] * 5, [False, False, True, True, True]])
    mask = mask.expand(2, 3, 5)
    _check(q, k, v, mask, mask, dtype)


@pytest.mark.parametrize("mask_kind", ["none", "keys", "per_query"])
@pytest.mark.parametrize("seed", range(40))
def test_one_key_at_1e3_scale_gives_its_value(mask_kind, seed):
    # with one key every query's output is that key's value, however small phi(q) . phi(k) is
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 3, D, generator=g) * 1e3, torch.randn(1, 1, D, generator=g) * 1e3,
               torch.randn(1, 1, D, generator=g))
    allowed = torch.ones(1, 3, 1, dtype=torch.bool)
    key_mask = {"none": None, "keys": torch.ones(1, 1, 1, dtype=torch.bool), "per_query": allowed.clone()}[mask_kind]
    if mask_kind == "per_query":
        key_mask[0, 1] = allowed[0, 1] = False  # a query without keys: 0
    _check(q, k, v, key_mask, allowed)


@pytest.mark.parametrize("mask_kind", ["none", "keys", "per_query"])
@pytest.mark.parametrize("seed", range(12))
def test_many_keys_at_large_scales_match_the_log_domain_reference(mask_kind, seed):
    g = torch.Generator().manual_seed(100 + seed)
    scale = (30.0, 300.0, 3e3)[seed % 3]
    Nq, Nk = 4, 7
    q, k, v = (torch.randn(2, Nq, D, generator=g) * scale, torch.randn(2, Nk, D, generator=g) * scale,
               torch.randn(2, Nk, D, generator=g))
    k[:, :3] -= 3 * scale
    allowed = torch.rand(2, Nq, Nk, generator=g) > 0.4
    allowed[..., 0] = True
    if mask_kind == "none":
        allowed, key_mask = torch.ones_like(allowed), None
    elif mask_kind == "keys":
        key_mask = allowed[:, :1]
        allowed = key_mask.expand(2, Nq, Nk)
    else:
        key_mask = allowed
    _check(q, k, v, key_mask, allowed)


def test_gradients_are_exact_where_rows_are_recomputed_in_the_log_domain():
    # float64, keys far apart and dimensions that miss the queries': the per-key scaling, the
    # per-query rescale and the log-domain rows must all give the true derivative
    g = torch.Generator().manual_seed(3)
    m = _layer(torch.float64)
    q = torch.randn(1, 3, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, 4, D, generator=g, dtype=torch.float64)
    q[0, 0, :4], q[0, 0, 4:8] = 800.0, -800.0  # head 0 of query 0: large where key 1 is low
    k[0, 1, :4], k[0, 1, 4:8] = -800.0, 800.0
    k[0, 2:] -= 300.0
    v = torch.randn(1, 4, D, generator=g, dtype=torch.float64)
    mask = torch.tensor([[[False, True, False, False], [True, False, True, True], [True, True, True, False]]])
    out = m(q, k, v, key_mask=mask)
    torch.testing.assert_close(out, _reference(q, k, v, mask), rtol=1e-9, atol=1e-9)
    ins = tuple(t.clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c, key_mask=mask), ins)
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c), ins)


@pytest.mark.parametrize("mask_kind", ["none", "keys", "per_query"])
def test_compiled_calls_match_the_reference(mask_kind):
    scale = 1e3
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 3, D, generator=g) * scale, torch.randn(1, 2, D, generator=g) * scale,
               torch.randn(1, 2, D, generator=g))
    allowed = torch.tensor([[[True, False], [True, True], [False, True]]])
    key_mask = {"none": None, "keys": torch.ones(1, 1, 2, dtype=torch.bool), "per_query": allowed}[mask_kind]
    if mask_kind != "per_query":
        allowed = torch.ones_like(allowed)
    torch._dynamo.reset()
    c = torch.compile(_layer(), backend="eager", fullgraph=True)
    torch.testing.assert_close(c(q, k, v, key_mask=key_mask).double(), _reference(q, k, v, allowed),
                               rtol=1e-4, atol=1e-4)


def test_the_compiled_per_query_form_is_one_graph_for_every_length():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    c = torch.compile(_layer(), backend=counter, fullgraph=True)
    g = torch.Generator().manual_seed(6)
    for n in (16, 20, 24, 28, 32):
        q, k = torch.randn(1, n, D, generator=g), torch.randn(1, n, D, generator=g)
        c(q, k, k, key_mask=torch.rand(1, n, n, generator=g) < 0.5)
    assert counter.frame_count <= 2  # the first length, then one dynamic graph
    assert counter.op_count < 200 * counter.frame_count

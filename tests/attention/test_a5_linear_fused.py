"""linear_attention's feature maps and per-query path, made cheaper without changing results.

* the key side's shift is taken from the clamped temporary the feature map needs anyway, and the
  subtraction is skipped on a CPU when no feature is shifted: the same bits as shifting the
  pre-activations first (far-negative inputs included);
* the query feature map's backward makes two query-sized results instead of four;
* the exact-rows operator computes ``log phi`` of the queries and keys once per call, not once
  per piece;
* the per-query path reads the host first (which weighing holds) and builds only that weighing,
  then once more (whether any row is recomputed): two reads per call (test_fx3_per_query_order).
"""

from __future__ import annotations

from typing import List, Optional

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import canvas_core.attention.linear_rows as linear_rows
from canvas_core.attention.linear_sums import scaled_features, shifted_key_summary
from tests.attention._linear_layers import identity_linear_attention

_VIEWS = {"view", "slice", "transpose", "t", "new_empty", "empty", "detach", "ones_like", "expand", "unsqueeze",
          "squeeze", "select", "as_strided", "_unsafe_view", "alias", "reshape", "permute"}


class _Writes(TorchDispatchMode):
    """The aten operations (views left out) whose result has ``numel`` elements."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        name = func.__name__.split(".")[0]
        if name not in _VIEWS and any(isinstance(o, torch.Tensor) and o.numel() == self.numel for o in outs):
            self.ops.append(func.__name__)
        return out


def _shift_then_map(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                    bias: Optional[torch.Tensor]):
    """The key summary as it was computed before: shift the pre-activations, then the map."""
    B, N, Din = keys.shape
    flat = keys.reshape(B * N, Din)
    pre = (torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())).view(B, N, -1)
    c = pre.detach().amax(dim=1, keepdim=True).clamp(max=0)  # no gradient, as in the summary
    y = pre - c
    up = y > 0  # (torch's clamp has derivative 0 at its bound; the summary's phi has 1 at y = 0)
    phi = torch.where(up, y + 1, y.masked_fill(up, 0.0).exp())
    return torch.bmm(phi.transpose(1, 2), keys if values is None else values), phi.sum(dim=1), c


def _inputs(kind: str, dtype: torch.dtype, seed: int):
    """Keys, weight and bias; input 0 of every key is a constant whose weight column moves each
    feature's pre-activations (with or without the bias)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(3, 50, 16, generator=g, dtype=dtype)
    weight = torch.randn(16, 16, generator=g, dtype=dtype) / 4
    bias = torch.randn(16, generator=g, dtype=dtype)
    keys[..., 0] = 1.0
    if kind == "far_negative":  # every feature far below 0: underflowed to 0 without the shift
        weight[:, 0] = -150.0 if dtype == torch.float32 else -1000.0
    elif kind == "some_features":
        weight[::3, 0] = -300.0
    elif kind == "some_rows":  # one batch row far below, the others far above
        keys[1, :, 0] = -1.0
        weight[:, 0] = 80.0
    return keys, weight, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["plain", "far_negative", "some_features", "some_rows"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("own_values", [True, False])
def test_key_summary_is_bitwise_the_shift_then_map_form(dtype, kind, with_bias, own_values):
    for seed in range(3):
        keys, weight, bias = _inputs(kind, dtype, seed)
        bias = bias if with_bias else None
        values = torch.randn(3, 50, 8, dtype=dtype, generator=torch.Generator().manual_seed(seed)) if own_values else None
        got = shifted_key_summary(keys, values, weight, bias)
        want = _shift_then_map(keys, values, weight, bias)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        if kind != "plain":
            assert (got[2] < 0).any() and got[1].min() >= 1  # shifted: no feature's sum underflows

        # gradients against autograd through the same composite form
        ins = [t.clone().requires_grad_() for t in (keys, weight)]
        ref = [t.clone().requires_grad_() for t in (keys, weight)]
        gP = torch.randn_like(got[0])
        gs = torch.randn_like(got[1])
        for (k, w), fn in ((ins, shifted_key_summary), (ref, _shift_then_map)):
            P, s, _ = fn(k, values, w, bias)
            torch.autograd.backward([P, s], [gP, gs])
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        for a, b in zip(ins, ref):
            torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol * float(b.grad.abs().max()))


def test_unshifted_key_features_take_no_subtraction_pass():
    # typical keys: every feature has a positive pre-activation, so c = 0 and the subtraction of
    # the shift over the (B, N, D) features is skipped
    keys = torch.randn(2, 200, 8, generator=torch.Generator().manual_seed(0))
    weight, bias = torch.eye(8), torch.zeros(8)
    with torch.no_grad(), _Writes(keys.numel()) as w:
        c = shifted_key_summary(keys, None, weight, bias)[2]
    assert torch.equal(c, torch.zeros_like(c))
    assert w.ops == ["addmm.out", "clamp.out", "clamp_.default", "exp_.default", "add_.Tensor"], w.ops
    low = keys - 200.0
    with torch.no_grad(), _Writes(keys.numel()) as w:  # shifted: one subtraction more
        c = shifted_key_summary(low, None, weight, bias)[2]
    assert (c < -100).all() and w.ops.count("sub_.Tensor") == 1 and len(w.ops) == 6, w.ops


def test_query_feature_map_backward_makes_two_query_sized_results():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 5, 8, generator=g) * 3).requires_grad_()
    c = -torch.rand(2, 1, 8, generator=g) * 50
    grad = torch.randn(2, 5, 8, generator=g)
    y = scaled_features(x, 4, c)[0]
    with _Writes(x.numel()) as w:
        y.backward(grad)
    fresh = [op for op in w.ops if not op.split(".")[0].endswith("_")]
    assert len(fresh) <= 2, w.ops
    assert torch.equal(x.grad, grad * y.detach() / (1.0 + x.detach().clamp(min=0)))


def _per_query_case(dtype: torch.dtype = torch.float64):
    """Inputs whose per-query weighing leaves rows to the exact recomputation (a7's case)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 3, 16, generator=g, dtype=dtype)
    k = torch.randn(1, 4, 16, generator=g, dtype=dtype)
    q[0, 0, :4], q[0, 0, 4:8] = 800.0, -800.0
    k[0, 1, :4], k[0, 1, 4:8] = -800.0, 800.0
    k[0, 2:] -= 300.0
    v = torch.randn(1, 4, 16, generator=g, dtype=dtype)
    mask = torch.tensor([[[False, True, False, False], [True, False, True, True], [True, True, True, False]]])
    return q, k, v, mask


def _call(m, q, k, v, mask):
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = m(*ins, key_mask=mask)
    out.backward(torch.ones_like(out))
    return [out.detach()] + [t.grad for t in ins]


def test_exact_rows_compute_log_phi_once_per_call(monkeypatch):
    m = identity_linear_attention(16, 2, torch.float64)
    q, k, v, mask = _per_query_case()
    q, mask = torch.cat([q, q[:, :1], -q[:, :1]], dim=1), torch.cat([mask, mask[:, :1], mask[:, :1]], dim=1)
    whole = _call(m, q, k, v, mask)
    calls: List[int] = []
    real = linear_rows.log_phi

    def counted(x):
        calls.append(x.shape[1])
        return real(x)

    monkeypatch.setattr(linear_rows, "log_phi", counted)
    monkeypatch.setattr(linear_rows, "CHUNK_ELEMS", 1)  # one row per piece
    split = _call(m, q, k, v, mask)
    assert sorted(calls) == [4, 4, 5, 5]  # queries and keys, once in each direction
    assert torch.equal(split[0], whole[0])
    for a, b in zip(split[1:], whole[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ins = tuple(t.clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c, key_mask=mask), ins)


class _HostReads:
    """Counts ``item``, ``bool``, ``tolist`` and ``nonzero`` on tensors while active."""

    NAMES = ("item", "__bool__", "tolist", "nonzero")

    def __init__(self, monkeypatch) -> None:
        self.reads: List[str] = []
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)

            def counted(t, *a, _real=real, _name=name, **kw):
                self.reads.append(_name)
                return _real(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_per_query_call_reads_the_host_twice(monkeypatch, dtype):
    g = torch.Generator().manual_seed(4)
    m = identity_linear_attention(16, 4, dtype)
    q, k, v = (torch.randn(2, 9, 16, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.rand(2, 9, 9, generator=g) > 0.5
    want = _call(m, q, k, v, mask)
    reads = _HostReads(monkeypatch)
    got = _call(m, q, k, v, mask)
    # forward and backward together: which weighing holds, then whether a row is recomputed
    assert reads.reads == ["__bool__", "__bool__"], reads.reads
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_query_paths_still_agree_with_the_log_domain_where_reads_choose_them(monkeypatch, dtype):
    # rows left to the exact recomputation, keys 300 apart: beyond half of float32's exponent
    # range (the per-query weighing), within float64's (the first weighing holds)
    from tests.attention.test_a7_linear_exact import _reference

    m = identity_linear_attention(16, 2, dtype)
    q, k, v, mask = _per_query_case(dtype)
    reads = _HostReads(monkeypatch)
    out = m(q, k, v, key_mask=mask)
    want = ["__bool__", "__bool__", "nonzero"]
    assert reads.reads == want
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask), rtol=tol, atol=tol)

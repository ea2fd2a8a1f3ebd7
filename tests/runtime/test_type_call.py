"""``canvas_core.runtime.type_call``: calling a type without ``key_mask`` once per key set equals
the obvious reference (each query alone with exactly its keys; zeros without keys), on random
masks including empty rows, empty key sets, single queries and all-true masks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from canvas_core.errors import AttentionContractError  # noqa: E402
from canvas_core.runtime.type_call import (MASKED, UNMASKED, call_attention_type,  # noqa: E402
                                           calling_convention, check_attention_module, key_set_groups)


class NoMask(torch.nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.p = torch.nn.Linear(d, d)

    def forward(self, queries, keys, values):
        w = torch.softmax(queries @ keys.transpose(1, 2), -1)
        return self.p(w @ values)


class WithMask(NoMask):
    def forward(self, queries, keys, values, key_mask=None):
        s = queries @ keys.transpose(1, 2)
        if key_mask is not None:
            s = s.masked_fill(~key_mask, float("-inf"))
        w = torch.nan_to_num(torch.softmax(s, -1))
        return self.p(w @ values) * (w.sum(-1, keepdim=True) > 0)


def _reference(module, q, k, v, mask):
    out = torch.zeros_like(q)
    for i in range(q.shape[1]):
        keys = torch.nonzero(mask[i]).flatten() if mask is not None else torch.arange(k.shape[1])
        if keys.numel():
            out[:, i] = module(q[:, i:i + 1], k[:, keys], v[:, keys])[:, 0]
    return out


@settings(max_examples=60, deadline=None)
@given(nq=st.integers(0, 6), nk=st.integers(0, 6), seed=st.integers(0, 10_000),
       density=st.sampled_from([0.0, 0.3, 0.7, 1.0]), masked=st.booleans())
def test_per_key_set_calls_equal_per_query_reference(nq, nk, seed, density, masked):
    g = torch.Generator().manual_seed(seed)
    module = NoMask()
    q, k, v = (torch.randn(2, n, 6, generator=g) for n in (nq, nk, nk))
    mask = (torch.rand(nq, nk, generator=g) < density) if masked else None
    got = call_attention_type(module, q, k, v, mask)
    torch.testing.assert_close(got, _reference(module, q, k, v, mask), rtol=1e-5, atol=1e-6)
    if mask is not None:
        groups = key_set_groups(mask)
        covered = sorted(int(i) for qi, _ in groups for i in qi)
        assert covered == [i for i in range(nq) if bool(mask[i].any())]  # each query once, none without keys
        # a per-sample mask equal across the batch is the same call
        torch.testing.assert_close(call_attention_type(module, q, k, v, mask.expand(2, nq, nk)), got)


def test_conventions_and_refusals():
    assert calling_convention(NoMask()) == UNMASKED
    assert calling_convention(WithMask()) == MASKED
    m = WithMask()
    q = torch.randn(1, 3, 6)
    mask = torch.tensor([[True, False], [False, False], [True, True]])
    torch.testing.assert_close(call_attention_type(m, q, q[:, :2], q[:, :2], mask),
                               m(q, q[:, :2], q[:, :2], key_mask=mask))

    class TwoArgs(torch.nn.Module):
        def forward(self, x, y):
            return x

    with pytest.raises(AttentionContractError, match="'twoargs' from test: TwoArgs.forward\\(x, y\\)"):
        check_attention_module(TwoArgs(), "twoargs", provider="test")
    with pytest.raises(AttentionContractError, match="not a torch nn.Module"):
        check_attention_module(lambda q, k, v: q, "fn", provider="test")

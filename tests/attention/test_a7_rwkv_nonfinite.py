"""rwkv's chunked WKV on non-finite input agrees with the step recurrence (``chunk=1``).

In the step recurrence a NaN or ``+inf`` key, or a non-finite value, makes every later output of
its channel non-finite and no earlier one.  The chunked form multiplied the weights of a chunk,
and of the chunk states, with later keys and values (weight 0 times NaN is NaN), so the NaN also
reached every earlier position of the sequence.
"""

from __future__ import annotations

import pytest
import torch

from canvas_core.attention.rwkv import RWKVAttention, wkv_masked, wkv_read, wkv_scan

B, L, C = 2, 24, 3
BAD = {"nan_key": ("k", float("nan")), "inf_key": ("k", float("inf")), "nan_value": ("v", float("nan")),
       "inf_value": ("v", float("inf")), "minus_inf_key": ("k", float("-inf"))}


def _inputs(which: str, at: int = 13):
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(B, L, C, generator=g, dtype=torch.float64), torch.randn(B, L, C, generator=g, dtype=torch.float64)
    w, u = torch.rand(C, generator=g, dtype=torch.float64) + 0.05, torch.randn(C, generator=g, dtype=torch.float64)
    name, val = BAD[which]
    (k if name == "k" else v)[0, at, 1] = val
    return k, v, w, u


def _same_as_steps(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(got.isfinite(), want.isfinite())
    torch.testing.assert_close(got[want.isfinite()], want[want.isfinite()], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("which", list(BAD))
@pytest.mark.parametrize("chunk", [None, 2, 4, 5, 24])
def test_chunked_scan_keeps_the_positions_before_a_non_finite_input(which, chunk):
    k, v, w, u = _inputs(which)
    steps = wkv_scan(k, v, w, u, chunk=1)
    got = wkv_scan(k, v, w, u, chunk=chunk)
    _same_as_steps(got, steps)
    if which != "minus_inf_key":
        assert got[0, :13].isfinite().all() and not got[0, 13:, 1].isfinite().any()
        assert got[1].isfinite().all() and got[0, :, [0, 2]].isfinite().all()


@pytest.mark.parametrize("which", ["nan_key", "nan_value"])
def test_reads_at_chunk_ends_and_masked_keys(which):
    k, v, w, u = _inputs(which)
    key_ok = torch.ones(1, L, dtype=torch.bool)
    key_ok[0, 5] = False
    steps = wkv_scan(k, v, w, u, key_ok=key_ok, chunk=1)
    read = torch.arange(3, L, 4)  # every read ends a chunk of 4 (the fused path)
    _same_as_steps(wkv_read(k, v, w, u, read, key_ok, chunk=4, ends_chunks=True), steps[:, read])
    # a masked non-finite key or value is not read, in either mode
    key_ok[0, 13] = False
    steps = wkv_scan(k, v, w, u, key_ok=key_ok, chunk=1)
    assert steps.isfinite().all()
    _same_as_steps(wkv_scan(k, v, w, u, key_ok=key_ok, chunk=4), steps)


def test_per_query_masks_read_a_nan_value_only_where_linked():
    k, v, w, u = _inputs("nan_value")
    read = torch.tensor([5, 20, 20])
    allowed = torch.ones(1, 3, L, dtype=torch.bool)
    allowed[0, 2, 13] = False  # query 2 reads past the NaN but does not link it
    out = wkv_masked(k, v, w, u, read, allowed)
    assert out[0, 0].isfinite().all() and out[0, 1, 1].isnan() and out[0, 2].isfinite().all()


def test_the_layer_keeps_earlier_rows_finite_with_gradients():
    torch.manual_seed(0)
    m = RWKVAttention(8, 2).double()
    x = torch.randn(1, 40, 8, dtype=torch.float64)
    x[0, 30, 2] = float("nan")
    xs = x.clone().requires_grad_()
    out = m(xs, xs, xs)
    assert out[0, :30].isfinite().all() and out[0, 30:].isnan().all()
    out[0, :30].sum().backward()
    assert xs.grad[0, :30].isfinite().all()
    clean = x.clone()
    clean[0, 30:] = 0.0  # a causal read: the rows before 30 do not see what comes after
    torch.testing.assert_close(out[:, :30], m(clean, clean, clean)[:, :30], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk", [2, 3, 5])
@pytest.mark.parametrize("lead", [1, 2, 4])
def test_leading_minus_inf_keys_weigh_nothing_in_every_mode(chunk, lead):
    """Keys at -inf weigh 0 as masked keys do: the positions before the first key that weighs
    anything read nothing (0), in the step mode, the chunked mode and the per-query form (the
    chunked sums' max-relative weights made them the mean of the values)."""
    g = torch.Generator().manual_seed(lead * 10 + chunk)
    k, v = torch.randn(1, 8, 3, generator=g, dtype=torch.float64), torch.randn(1, 8, 3, generator=g, dtype=torch.float64)
    w, u = torch.rand(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    k[0, :lead, 1] = float("-inf")
    want = wkv_scan(k, v, w, u, chunk=1)
    assert torch.equal(want[0, :lead, 1], torch.zeros(lead, dtype=torch.float64))
    torch.testing.assert_close(wkv_scan(k, v, w, u, chunk=chunk), want)
    allowed = torch.tril(torch.ones(8, 8, dtype=torch.bool))[None]
    torch.testing.assert_close(wkv_masked(k, v, w, u, torch.arange(8), allowed), want)

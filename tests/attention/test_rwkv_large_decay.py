"""``rwkv`` with a very large learned decay (``w = exp(time_decay)`` near or past float32's
range): the chunked WKV forgets every earlier key, as the step recurrence does, instead of
forming ``inf - inf`` (NaN) in its ``lag * w`` products."""

from __future__ import annotations

import pytest
import torch

from canvas_core.attention.rwkv import wkv_masked, wkv_read, wkv_scan

torch.set_num_threads(1)


@pytest.mark.parametrize("time_decay", [5.0, 50.0, 88.0, 89.0, 100.0])
@pytest.mark.parametrize("L, chunk", [(6, 3), (6, None), (64, None), (300, 7)])
def test_chunked_equals_the_step_recurrence_for_large_decays(time_decay, L, chunk):
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, L, 4, generator=g), torch.randn(2, L, 4, generator=g)
    w, u = torch.full((4,), time_decay).exp(), torch.randn(4, generator=g)
    ref = wkv_scan(k, v, w, u, chunk=1)
    got = wkv_read(k, v, w, u, torch.arange(L), chunk=chunk)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_masked_form_and_module_gradients_stay_finite_for_large_decays():
    from canvas_core import create_attention

    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(1, 8, 4, generator=g), torch.randn(1, 8, 4, generator=g)
    allowed = torch.rand(1, 8, 8, generator=g) > 0.3
    ref = wkv_masked(k, v, torch.full((4,), 1e4), torch.zeros(4), torch.arange(8), allowed)
    got = wkv_masked(k, v, torch.full((4,), 100.0).exp(), torch.zeros(4), torch.arange(8), allowed)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref)  # w = inf forgets what w = 1e4 forgets
    module = create_attention("rwkv", 8, 2)
    with torch.no_grad():
        module.time_decay.fill_(100.0)  # exp(100) is inf in float32
    q, kv = torch.randn(2, 3, 8, generator=g), torch.randn(2, 6, 8, generator=g, requires_grad=True)
    for mask in (None, torch.rand(2, 3, 6, generator=g) > 0.3):
        out = module(q, kv, kv, key_mask=mask)
        out.square().sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(kv.grad).all()
        assert torch.isfinite(module.time_decay.grad).all()

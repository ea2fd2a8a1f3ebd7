"""Reliability: bad tensors given to attention types raise ShapeError / CanvasTypeError (regressions);
low-precision inputs and autocast run as in float32."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasError, ShapeError
from canvas_core.plugins import create_attention, list_attention_types

D = 8
B, NQ, NK = 2, 3, 4


def _types():
    out = []
    for name in list_attention_types():
        try:
            create_attention(name, d_model=D, n_heads=2)
        except CanvasError:  # unavailable here (missing package, device)
            continue
        out.append(name)
    return out


TYPES = _types()


def _qkv():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, NQ, D, generator=g), torch.randn(B, NK, D, generator=g),
            torch.randn(B, NK, D, generator=g))


def _has_params(m) -> bool:
    return any(p.is_floating_point() for p in m.parameters())


@pytest.mark.parametrize("name", TYPES)
def test_dtype_mismatches_are_shape_errors(name):
    m = create_attention(name, d_model=D, n_heads=2)
    q, k, v = _qkv()
    with pytest.raises(ShapeError, match="dtype|floating"):
        m(q, k.half(), v)
    with pytest.raises(ShapeError, match="floating"):
        m(torch.ones(B, NQ, D, dtype=torch.long), k, v)
    if _has_params(m):
        with pytest.raises(ShapeError, match="module's parameters are torch.float32") as ei:
            m(q.double(), k.double(), v.double())
        assert getattr(m, "type_name", name) in str(ei.value)


@pytest.mark.parametrize("name", TYPES)
def test_key_mask_on_another_device_is_a_shape_error(name):
    m = create_attention(name, d_model=D, n_heads=2)
    q, k, v = _qkv()
    mask = torch.ones(B, NQ, NK, dtype=torch.bool, device="meta")
    if name in ("none",):  # ignores its inputs entirely
        return
    with pytest.raises(ShapeError, match="key_mask is on meta"):
        m(q, k, v, key_mask=mask)


@pytest.mark.parametrize("name", TYPES)
def test_valid_inputs_still_work(name):
    m = create_attention(name, d_model=D, n_heads=2)
    q, k, v = _qkv()
    out = m(q, k, v, key_mask=torch.ones(B, NQ, NK, dtype=torch.bool))
    assert out.shape == (B, NQ, D) and torch.isfinite(out).all()


def test_autocast_allows_low_precision_inputs():
    m = create_attention("cross_attention", d_model=D, n_heads=2)
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.shape == (B, NQ, D)


def test_double_module_with_double_inputs_works():
    m = create_attention("cross_attention", d_model=D, n_heads=2).double()
    q, k, v = _qkv()
    assert m(q.double(), k.double(), v.double()).dtype == torch.float64


@pytest.mark.parametrize("fn", ["wkv_scan", "wkv_read", "wkv_masked"])
def test_public_wkv_functions_run_and_differentiate_under_autocast(fn):
    """Called directly under CPU bf16 autocast (not through the module, which guards itself),
    the WKV functions compute in float32 as without autocast, gradients included."""
    from canvas_core.attention.rwkv import wkv_masked, wkv_read, wkv_scan

    g = torch.Generator().manual_seed(3)
    L = 9
    leaves = [torch.randn(2, L, 5, generator=g), torch.randn(2, L, 5, generator=g),
              torch.rand(5, generator=g) + 0.1, torch.randn(5, generator=g)]
    allowed = torch.rand(1, L, L, generator=g) > 0.4
    call = {
        "wkv_scan": lambda k, v, w, u: wkv_scan(k, v, w, u),
        "wkv_read": lambda k, v, w, u: wkv_read(k, v, w, u, torch.tensor([-1, 0, 4, 8])),
        "wkv_masked": lambda k, v, w, u: wkv_masked(k, v, w, u, torch.arange(L), allowed),
    }[fn]
    results = []
    for amp in (False, True):
        xs = [t.clone().requires_grad_() for t in leaves]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = call(*xs)
        assert out.dtype == torch.float32
        out.pow(2).sum().backward()
        results.append([out.detach()] + [x.grad for x in xs])
    for plain, amp in zip(*results):
        torch.testing.assert_close(amp, plain)

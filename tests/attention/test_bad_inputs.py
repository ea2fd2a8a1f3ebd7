"""Reliability: bad tensors given to attention types raise ShapeError / CanvasTypeError (regressions)."""

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

"""canvas_read / canvas_write: float64 exactness, refused sizes and non-finite arguments,
``dropout=1.0`` (hostile-sweep regressions)."""

from __future__ import annotations

import math

import pytest
import torch

from canvas_core.errors import CanvasTypeError, SizeLimitError
from canvas_core.plugins import create_attention
from canvas_plugin_canvit.attention import CanvasReadAttention, CanvasWriteAttention


@pytest.mark.parametrize("cls, kw", [(CanvasReadAttention, {"canvas_dim": 12}),
                                     (CanvasWriteAttention, {"local_dim": 12, "gate": True})])
def test_float64_modules_pass_gradcheck(cls, kw):
    """A float64 module keeps its softmax in float64 (float16 / bfloat16 logits are the ones upcast)."""
    torch.manual_seed(0)
    m = cls(8, 2, **kw).double()
    dk = kw.get("canvas_dim", kw.get("local_dim"))
    q = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 4, dk, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(lambda q, k: m(q, k, k, key_mask=mask), (q, k))


@pytest.mark.parametrize("fn, kw, name", [
    ("canvas_read", {"canvas_dim": 10**9}, "canvas_dim"),
    ("canvas_write", {"local_dim": 10**9}, "local_dim"),
])
def test_runaway_widths_are_refused_before_allocating(fn, kw, name):
    with pytest.raises(SizeLimitError, match=f"'{fn}' {name} = 1,000,000,000.*CANVAS_MAX_WIDTH"):
        create_attention(fn, d_model=8, n_heads=2, **kw)


def test_widths_follow_the_limit_variables(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_WIDTH", "8")
    with pytest.raises(SizeLimitError, match="d_model = 16"):
        CanvasWriteAttention(16, 2, local_dim=8)
    monkeypatch.delenv("CANVAS_MAX_WIDTH")
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "100")
    with pytest.raises(SizeLimitError, match="k_proj / v_proj weight"):
        CanvasWriteAttention(8, 2, local_dim=16)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 10**400, "1", True])
def test_gate_init_must_be_a_finite_number(bad):
    with pytest.raises(CanvasTypeError, match="gate_init must be a finite number"):
        CanvasWriteAttention(8, 2, gate=True, gate_init=bad)


@pytest.mark.parametrize("cls", [CanvasReadAttention, CanvasWriteAttention])
def test_dropout_one_is_accepted_and_stays_finite(cls):
    m = cls(8, 2, dropout=1.0).train()
    q = torch.randn(1, 4, 8)
    assert m(q, q, q).isfinite().all()
    with pytest.raises(CanvasTypeError, match=r"\[0, 1\]"):
        cls(8, 2, dropout=1.5)

"""Sizes of a mamba module that cannot fit are refused (SizeLimitError) before any weight is
allocated; ``dropout=1.0`` is accepted as by every type (hostile-sweep regressions)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasTypeError, SizeLimitError
from canvas_core.plugins import create_attention
from canvas_plugin_mamba.module import MambaAttention


@pytest.mark.parametrize("kw, shown", [
    ({"state_size": 10**9}, "state_size = 1,000,000,000"),
    ({"d_state": 10**9}, "d_state = 1,000,000,000"),
    ({"d_conv": 10**9}, "d_conv = 1,000,000,000"),
    ({"dt_rank": 10**9}, "dt_rank = 1,000,000,000"),
    ({"expand": 10**9}, r"expand \* d_model \(expand=1000000000, d_model=8\) = 8,000,000,000"),
])
def test_runaway_sizes_are_refused_before_allocating(kw, shown):
    with pytest.raises(SizeLimitError, match=f"'mamba' .*{shown}.*CANVAS_MAX_WIDTH"):
        create_attention("mamba", d_model=8, n_heads=2, **kw)


def test_sizes_follow_the_limit_variables(monkeypatch):
    MambaAttention(8, 2, expand=4, d_state=8)
    monkeypatch.setenv("CANVAS_MAX_WIDTH", "16")
    with pytest.raises(SizeLimitError, match="inner width"):
        MambaAttention(8, 2, expand=4)
    monkeypatch.delenv("CANVAS_MAX_WIDTH")
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "200")
    with pytest.raises(SizeLimitError, match="largest weight"):
        MambaAttention(8, 2, expand=4, d_state=8)


def test_dropout_one_is_accepted():
    m = MambaAttention(8, 2, dropout=1.0, kernel="mamba_torch").train()
    q = torch.randn(1, 5, 8)
    assert m(q, q, q).isfinite().all()
    with pytest.raises(CanvasTypeError, match=r"\[0, 1\]"):
        MambaAttention(8, 2, dropout=float("nan"))

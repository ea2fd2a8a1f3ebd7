"""RWKV accepts a registered kernel by name; names that can't compute it are refused clearly."""

from __future__ import annotations

import pytest
import torch

import canvas_core as cc
from canvas_core.errors import CanvasTypeError, UnavailableError, UnknownNameError


def test_named_kernel_that_cannot_run_here_says_why():
    m = cc.create_attention("rwkv", 16, 2, kernel="fla_rwkv")
    x = torch.randn(1, 4, 16)
    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError) as info:
            m(x, x, x)
        assert "fla_rwkv" in str(info.value)


def test_kernel_for_another_type_is_refused():
    with pytest.raises(CanvasTypeError, match="does not compute rwkv"):
        cc.create_attention("rwkv", 16, 2, kernel="reference")


def test_unknown_kernel_lists_known_ones():
    with pytest.raises(UnknownNameError, match="reference"):
        cc.create_attention("rwkv", 16, 2, kernel="nope")


def test_torch_kernel_is_recorded():
    m = cc.create_attention("rwkv", 16, 2, kernel="torch")
    x = torch.randn(2, 5, 16)
    assert m(x, x, x).shape == (2, 5, 16) and m.kernel_used == "torch"

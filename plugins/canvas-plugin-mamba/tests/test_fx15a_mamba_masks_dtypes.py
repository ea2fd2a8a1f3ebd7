"""Regressions of mamba: parameters in the default dtype, additive masks with NaN / +inf refused,
masks with a last dimension of 1 broadcast along the keys."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from canvas_core.errors import ShapeError
from canvas_plugin_mamba.module import MambaAttention

D, B, NQ, NK = 16, 2, 5, 7


@pytest.fixture
def default_float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, NQ, D, generator=g), torch.randn(B, NK, D, generator=g),
            torch.randn(B, NK, D, generator=g))


def _module() -> MambaAttention:
    torch.manual_seed(0)
    return MambaAttention(D, 2, kernel="mamba_torch").eval()


def test_parameters_follow_the_default_dtype(default_float64: None) -> None:
    m = MambaAttention(D, 2)
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    x = torch.randn(2, 5, D)
    assert m(x, x, x).dtype == torch.float64


def test_layer_with_mamba_builds_under_float64_default(default_float64: None) -> None:
    from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection

    lay = CanvasLayout(T=1, H=1, W=4, d_model=D, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 0, 1, 2, 4)})
    layer = CanvasAttention(CanvasTopology(connections=[Connection("a", "b", fn="mamba")]), lay, d_model=D, n_heads=2)
    assert layer(torch.randn(2, 4, D)).dtype == torch.float64


def test_float32_a_log_init_unchanged() -> None:
    m = MambaAttention(D, 2, d_state=8)
    want = torch.log(torch.arange(1, 9, dtype=torch.float32)).repeat(m.d_inner, 1)
    assert m.A_log.dtype == torch.float32 and torch.equal(m.A_log.detach(), want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_additive_mask_with_nan_or_posinf_is_refused(bad: float) -> None:
    q, k, v = _inputs()
    mask = torch.zeros(NQ, NK)
    mask[:, 3] = bad
    with pytest.raises(ShapeError, match=r"^mamba: the additive float key_mask of shape \(5, 7\) holds NaN or \+inf"):
        _module()(q, k, v, key_mask=mask)


def _full() -> torch.Tensor:
    return torch.rand(B, NQ, 1, generator=torch.Generator().manual_seed(3)) > 0.4


SHAPES = {
    "(Nq, 1)": lambda f: f[0],
    "(B, Nq, 1)": lambda f: f,
    "(B, 1, 1)": lambda f: f[:, :1],
    "(1, 1)": lambda f: torch.zeros(1, 1, dtype=torch.bool),
    "0-d": lambda f: torch.tensor(True),
    "float (Nq, 1)": lambda f: torch.zeros(NQ, 1).masked_fill(~f[0], float("-inf")),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_last_dim_one_mask_equals_expanded_mask(shape: str) -> None:
    q, k, v = _inputs()
    mask = SHAPES[shape](_full())
    expanded = (mask if mask.dtype == torch.bool else mask != float("-inf")).expand(B, NQ, NK).clone()
    m = _module()
    torch.testing.assert_close(m(q, k, v, key_mask=mask), m(q, k, v, key_mask=expanded))


def test_mask_that_does_not_broadcast_still_refused() -> None:
    q, k, v = _inputs()
    with pytest.raises(ShapeError, match=r"mamba: key_mask of shape \(5, 2\) does not broadcast"):
        _module()(q, k, v, key_mask=torch.ones(NQ, 2, dtype=torch.bool))

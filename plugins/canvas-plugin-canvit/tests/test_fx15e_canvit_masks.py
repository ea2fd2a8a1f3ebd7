"""The canvas attention types read key masks as the core types do: a last dimension of 1 (or a
0-d mask) holds for every key, and a float mask holding NaN or +inf is refused."""

from __future__ import annotations

import pytest
import torch

from canvas_core import extend
from canvas_core.errors import ShapeError
from canvas_core.plugins import create_attention

B, NQ, NK, D = 2, 5, 7, 16


def _inputs():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(B, NQ, D, generator=g), torch.randn(B, NK, D, generator=g),
            torch.rand(B, NQ, NK, generator=g) > 0.3)


def _type(name: str):
    torch.manual_seed(0)
    return create_attention(name, d_model=D, n_heads=2).eval()


@pytest.mark.parametrize("name", ["canvas_read", "canvas_write"])
@pytest.mark.parametrize("case", ["(Nq,1)", "(B,Nq,1)", "(B,1,1)", "(1,1)", "0-d", "float (Nq,1)"])
def test_last_dim_one_mask_equals_the_expanded_mask(name: str, case: str) -> None:
    m = _type(name)
    q, kv, full = _inputs()
    mask = {"(Nq,1)": full[0, :, :1], "(B,Nq,1)": full[:, :, :1], "(B,1,1)": full[:, :1, :1],
            "(1,1)": torch.zeros(1, 1, dtype=torch.bool), "0-d": torch.tensor(True),
            "float (Nq,1)": torch.zeros(NQ, 1).masked_fill(~full[0, :, :1], float("-inf"))}[case]
    linked = mask if mask.dtype == torch.bool else mask != float("-inf")
    expanded = linked.expand(B, NQ, NK).clone()
    torch.testing.assert_close(m(q, kv, kv, key_mask=mask), m(q, kv, kv, key_mask=expanded))


@pytest.mark.parametrize("name", ["canvas_read", "canvas_write"])
def test_mask_that_does_not_broadcast_is_still_refused(name: str) -> None:
    q, kv, _ = _inputs()
    with pytest.raises(ShapeError, match=rf"^{name}: key_mask of shape \(5, 3\) does not broadcast"):
        _type(name)(q, kv, kv, key_mask=torch.ones(NQ, 3, dtype=torch.bool))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["canvas_read", "canvas_write"])
def test_nan_or_posinf_additive_mask_is_refused(name: str, bad: float) -> None:
    q, kv, _ = _inputs()
    mask = torch.zeros(NQ, NK)
    mask[2, 4] = bad
    with pytest.raises(ShapeError, match=rf"^{name}: the additive float key_mask of shape \(5, 7\) holds NaN or \+inf"):
        _type(name)(q, kv, kv, key_mask=mask)


def test_canvit_uses_the_published_check() -> None:
    import canvas_plugin_canvit.attention as att

    assert att.normalize_key_mask is extend.normalize_key_mask

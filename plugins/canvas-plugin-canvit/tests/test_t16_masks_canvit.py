"""The canvas types read ``key_mask`` with the core's published reader: ``normalize_key_mask`` stays
importable from ``canvas_plugin_canvit.attention`` (an alias), and masks it used to misread or crash
on are refused with errors naming the type and the fix."""

from __future__ import annotations

import pytest
import torch

from canvas_core import extend
from canvas_core.errors import CanvasTypeError
from canvas_core.plugins import create_attention

B, NQ, NK, D = 2, 4, 5, 16


def _call(name: str, mask):
    torch.manual_seed(0)
    m = create_attention(name, d_model=D, n_heads=2).eval()
    g = torch.Generator().manual_seed(3)
    q, kv = torch.randn(B, NQ, D, generator=g), torch.randn(B, NK, D, generator=g)
    return m(q, kv, kv, key_mask=mask)


def test_normalize_key_mask_is_the_core_one() -> None:
    import canvas_plugin_canvit.attention as att

    assert att.normalize_key_mask is extend.normalize_key_mask
    assert "normalize_key_mask" in att.__all__
    allowed, bias = att.normalize_key_mask("canvas_read", torch.tensor([0.0, float("-inf")]), 1, 3, 2)
    assert allowed.tolist() == [[[True, False]]] and bias.tolist() == [[[0.0, 0.0]]]


@pytest.mark.parametrize("name", ["canvas_read", "canvas_write"])
def test_complex_mask_is_refused_not_read_as_nonzero(name: str) -> None:
    # it was read as `mask != 0`, without a bias: its -inf entries (meant as blocked) counted as linked
    mask = torch.zeros(NK, dtype=torch.complex64)
    mask[1] = complex(float("-inf"), 0)
    with pytest.raises(CanvasTypeError, match=rf"^{name}: key_mask has dtype torch.complex64; .*key_mask\.real"):
        _call(name, mask)


@pytest.mark.parametrize("name", ["canvas_read", "canvas_write"])
def test_sparse_mask_is_a_canvas_type_error(name: str) -> None:
    # it raised torch's NotImplementedError from inside the attention
    with pytest.raises(CanvasTypeError, match=rf"^{name}: key_mask must be a dense tensor.*key_mask\.to_dense\(\)"):
        _call(name, torch.ones(NQ, NK, dtype=torch.bool).to_sparse())


@pytest.mark.parametrize("name", ["canvas_read", "canvas_write"])
def test_non_tensor_mask_message_names_the_fix(name: str) -> None:
    with pytest.raises(CanvasTypeError, match=rf"^{name}: key_mask must be a torch.Tensor or None, got list; "
                                              r"pass a bool tensor \(True = may attend\)"):
        _call(name, [True] * NK)

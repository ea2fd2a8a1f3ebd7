"""mamba reads ``key_mask`` with the core's published reader (``canvas_core.extend.normalize_key_mask``):
masks it used to misread or crash on are refused with errors naming the type and the fix."""

from __future__ import annotations

import pytest
import torch

from canvas_core import extend
from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_plugin_mamba.module import MambaAttention

D, B, NQ, NK = 16, 2, 3, 5


def _call(mask, cls=MambaAttention):
    torch.manual_seed(0)
    m = cls(D, 2, kernel="mamba_torch").eval()
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(B, NQ, D, generator=g), torch.randn(B, NK, D, generator=g)
    return m(q, k, k, key_mask=mask)


def test_complex_mask_is_refused_not_read_as_nonzero() -> None:
    # it was read as `mask != 0`: its -inf entries (meant as blocked) counted as linked
    mask = torch.zeros(NK, dtype=torch.complex64).masked_fill(torch.tensor([0, 1, 0, 1, 0], dtype=torch.bool),
                                                               complex(float("-inf"), 0))
    with pytest.raises(CanvasTypeError, match=r"^mamba: key_mask has dtype torch.complex64; .*key_mask\.real"):
        _call(mask)


def test_sparse_mask_is_a_canvas_type_error() -> None:
    # it raised torch's NotImplementedError from deep inside the scan
    with pytest.raises(CanvasTypeError, match=r"^mamba: key_mask must be a dense tensor.*key_mask\.to_dense\(\)"):
        _call(torch.ones(NQ, NK, dtype=torch.bool).to_sparse())
    dense = _call(torch.tensor([True, False, True, True, False]).expand(NQ, NK).clone())
    torch.testing.assert_close(_call(torch.tensor([True, False, True, True, False])), dense)


def test_mask_messages_name_the_type_of_a_subclass() -> None:
    class Renamed(MambaAttention):
        type_name = "my_scan"

    with pytest.raises(ShapeError, match=r"^my_scan: key_mask of shape \(4,\) does not broadcast"):
        _call(torch.ones(4, dtype=torch.bool), Renamed)
    with pytest.raises(ShapeError, match=r"^my_scan: key_mask of shape \(1, 2, 3, 5\) must broadcast"):
        _call(torch.ones(1, B, NQ, NK, dtype=torch.bool), Renamed)


def test_mamba_uses_the_published_reader() -> None:
    import canvas_plugin_mamba.module as module

    assert module.normalize_key_mask is extend.normalize_key_mask
    assert not hasattr(module, "_normalize_mask")

"""Two edges of every attention type: float16 logits that would overflow, and the meta device.

* The explicit-logits softmax types (``local_attention``, ``sparse_attention``, ``random_fixed``)
  form ``q k^T`` in float32 for float16 / bfloat16 inputs: in float16 it passes 65,504 for inputs
  of a few hundred and the softmax of ``inf - inf`` is NaN.
* Every type runs on ``meta`` tensors (shape inference) instead of failing inside torch's
  autocast query, which has no answer for ``meta``.
"""

from __future__ import annotations

import pytest
import torch

from canvas_core import create_attention, list_attention_types

torch.set_num_threads(1)

_OPTIONS = {"sparse_attention": {"top_k": 2}, "local_attention": {"window": 1}, "random_fixed": {"n_random": 2}}


@pytest.mark.parametrize("type_name", ["cross_attention", "local_attention", "sparse_attention", "random_fixed"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_inputs_in_half_precision_stay_finite_and_close(type_name, dtype):
    torch.manual_seed(0)
    m32 = create_attention(type_name, 16, 2, **_OPTIONS.get(type_name, {}))
    low = create_attention(type_name, 16, 2, **_OPTIONS.get(type_name, {}))
    low.load_state_dict(m32.state_dict())
    low = low.to(dtype)
    q, k, v = (torch.randn(1, 4, 16) for _ in range(3))
    for scale in (10.0, 300.0, 1000.0):
        want = m32(q * scale, k * scale, v)
        got = low((q * scale).to(dtype), (k * scale).to(dtype), v.to(dtype))
        assert got.dtype == dtype and torch.isfinite(got).all(), (scale, got)
        assert (got.float() - want).abs().max() < (0.05 if dtype is torch.bfloat16 else 0.01)


@pytest.mark.parametrize("type_name", list_attention_types())
def test_every_type_infers_shapes_on_meta(type_name):
    module = create_attention(type_name, 8, 2).to("meta")
    q, kv = torch.empty(2, 3, 8, device="meta"), torch.empty(2, 5, 8, device="meta")
    out = module(q, kv, kv)
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 8)
    for mask in (torch.ones(3, 5, dtype=torch.bool, device="meta"),  # per query: nothing to read on meta
                 torch.ones(2, 5, dtype=torch.bool, device="meta")):  # per key
        out = module(q, kv, kv, mask)
        assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 8)


@pytest.mark.parametrize("type_name", ["local_attention", "sparse_attention", "random_fixed"])
def test_large_inputs_under_float16_autocast_stay_finite(type_name):
    torch.manual_seed(0)
    module = create_attention(type_name, 16, 2, **_OPTIONS.get(type_name, {}))
    q, k, v = (torch.randn(1, 4, 16) * 300 for _ in range(3))
    want = module(q, k, v)
    with torch.autocast("cpu", dtype=torch.float16):  # autocast would cast q k^T back to float16
        got = module(q, k, v)
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()

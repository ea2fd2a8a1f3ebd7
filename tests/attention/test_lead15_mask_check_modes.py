"""The NaN / +inf check of float masks reads a value: where there is none to read (``vmap``, meta
and fake tensors) the mask is used as given instead of failing; and init values of ``rwkv`` are
computed in float32 at least under a half-precision default dtype."""

import math

import pytest
import torch

import canvas_core


@pytest.mark.parametrize("name", ["cross_attention", "pooling", "gated"])
def test_float_mask_under_vmap(name):
    m = canvas_core.create_attention(name, 16, 2)
    q, k = torch.randn(3, 2, 5, 16), torch.randn(3, 2, 7, 16)
    mask = torch.zeros(3, 5, 7)
    mask[:, :, 0] = float("-inf")
    got = torch.func.vmap(lambda a, b, mm: m(a, b, b, key_mask=mm))(q, k, mask)
    want = torch.stack([m(q[i], k[i], k[i], key_mask=mask[i]) for i in range(3)])
    torch.testing.assert_close(got, want)


def test_float_mask_on_meta_and_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for mode in (torch.device("meta"), FakeTensorMode()):
        with mode:
            m = canvas_core.create_attention("cross_attention", 16, 2)
            out = m(torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16), key_mask=torch.zeros(5, 7))
        assert tuple(out.shape) == (2, 5, 16)


def test_rwkv_init_under_bfloat16_default_is_float32_accurate():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        m = canvas_core.create_attention("rwkv", 1024, 4)
    finally:
        torch.set_default_dtype(old)
    ratio = torch.arange(1024, dtype=torch.float32) / 1023
    want = (-5.0 + 8.0 * ratio ** (0.7 + 1.3 * ratio)).to(torch.bfloat16)
    assert m.time_decay.dtype == torch.bfloat16
    assert torch.equal(m.time_decay.detach(), want)
    first = (math.log(0.3) + ((torch.arange(1024) + 1) % 3 - 1).float() * 0.5).to(torch.bfloat16)
    assert torch.equal(m.time_first.detach(), first)

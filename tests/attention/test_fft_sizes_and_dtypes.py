"""hyena's FFT lengths (``fft_size``) and the public convolutions' dtypes and inference path.

The convolutions' values and adjoints against direct sums are in ``test_chunked_kernels.py``.
"""

from __future__ import annotations

import pytest
import torch

from canvas_core.attention.hyena import causal_conv_last, fft_size, gated_causal_conv, read_conv_last


def test_fft_size_is_five_smooth_and_not_smaller():
    for n in (1, 7, 959, 3967, 4001):
        m = fft_size(n)
        assert m >= n and m < 2 * n + 2
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1


def _smooth(m: int) -> bool:
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def test_fft_size_prefers_a_power_of_two_at_most_a_quarter_longer():
    # the layer's key sets: 2 * 1,920 - 1 -> 4,096 (not 3,840), 2 * 448 - 1 -> 1,024 (not 900)
    assert fft_size(3839) == 4096 and fft_size(895) == 1024
    assert fft_size(3071) == 3072 and fft_size(1599) == 1600  # 4,096 / 2,048 would be > 1.25x
    for n in range(1, 5000, 7):
        smooth = next(m for m in range(n, 2 * n + 2) if _smooth(m))
        pow2 = next(1 << k for k in range(20) if 1 << k >= n)
        assert fft_size(n) == (pow2 if pow2 <= 1.25 * smooth else smooth), n


def test_gated_causal_conv_without_a_backward_keeps_nothing_and_gives_the_same_values():
    g = torch.Generator().manual_seed(3)
    z, gate, h = (torch.randn(*s, generator=g, requires_grad=True) for s in ((2, 4, 37), (2, 4, 37), (4, 37)))
    with_graph = gated_causal_conv(z, gate, h)
    with torch.no_grad():
        lean = gated_causal_conv(z, gate, h)
    assert with_graph.grad_fn is not None and lean.grad_fn is None
    assert torch.equal(lean, with_graph.detach())
    with torch.inference_mode():
        assert torch.equal(gated_causal_conv(z.detach(), gate.detach(), h.detach()), with_graph.detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_public_convolutions_take_half_precision_and_compute_in_float32(dtype):
    g = torch.Generator().manual_seed(5)
    z32, h32 = torch.randn(2, 3, 12, generator=g), torch.randn(3, 12, generator=g)
    z, h = z32.to(dtype).requires_grad_(), h32.to(dtype)
    for out, ref in ((read_conv_last(z, h, 3), read_conv_last(z.float(), h.float(), 3)),
                     (causal_conv_last(z, h), causal_conv_last(z.float(), h.float())),
                     (gated_causal_conv(z, z, h), gated_causal_conv(z.float(), z.float(), h.float()))):
        assert out.dtype == dtype
        torch.testing.assert_close(out, ref.to(dtype))  # one rounding of the float32 result
    read_conv_last(z, h, 3).sum().backward()
    assert z.grad is not None and z.grad.dtype == dtype

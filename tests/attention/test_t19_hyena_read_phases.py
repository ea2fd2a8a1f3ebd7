"""hyena's strided read (``read_conv_last``): the refusal of a stride that does not divide the
length, and its phase spectra kept from the forward (or, above the memory bound, transformed
again in the backward) giving the same values and gradients as the direct sum, eagerly and as
the ``torch.library`` operators."""

from __future__ import annotations

import pytest
import torch

from canvas_core.attention import fft_conv, fft_rows
from canvas_core.attention.hyena import HyenaAttention, read_conv_last
from canvas_core.errors import CanvasError, ShapeError


def _t(*shape, seed=0, dtype=torch.float64, grad=False):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_(grad)


def _direct(z, h, s):
    """``causal_conv_last(z, h)`` by its sum, read at ``s (i + 1) - 1``: ``(B, C, L) -> (B, C, L / s)``."""
    L = z.shape[-1]
    lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]  # (t, j)
    taps = torch.where(lag >= 0, h[:, lag.clamp(min=0)], h.new_zeros(()))  # (C, t, j)
    return torch.einsum("ctj,bcj->bct", taps, z)[..., s - 1 :: s]


def test_a_stride_that_does_not_divide_the_length_is_a_shape_error_naming_the_fix():
    z, h = _t(2, 3, 10), _t(3, 10, seed=1)
    with pytest.raises(ShapeError) as err:
        read_conv_last(z, h, 3)
    assert isinstance(err.value, CanvasError)
    msg = str(err.value)
    assert "stride 3" in msg and "length 10" in msg and "divides" in msg and "causal_conv_last" in msg


@pytest.mark.parametrize("stride", [0, -2, 2.0, True])
def test_a_stride_that_is_not_a_positive_int_is_a_shape_error(stride):
    with pytest.raises(ShapeError, match="positive int"):
        read_conv_last(_t(2, 3, 10), _t(3, 10, seed=1), stride)


@pytest.mark.parametrize("keep_bytes", [fft_rows.KEEP_PHASES_BYTES, 0])  # kept; over the bound: recomputed
@pytest.mark.parametrize("need", [(True, True), (False, True), (True, False)])
def test_kept_or_recomputed_phase_spectra_give_the_direct_gradients(monkeypatch, keep_bytes, need):
    monkeypatch.setattr(fft_rows, "KEEP_PHASES_BYTES", keep_bytes)
    B, C, Q, s = 3, 4, 5, 3
    z, h = _t(B, C, Q * s, grad=need[0]), _t(C, Q * s, seed=1, grad=need[1])
    assert fft_rows.keeps_phases(z, s) == (keep_bytes > 0)
    gy = _t(B, C, Q, seed=2)
    y = read_conv_last(z, h, s)
    ref = _direct(z, h, s)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-8)
    leaves = [t for t in (z, h) if t.requires_grad]
    for a, b in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_the_read_operator_with_kept_spectra_passes_opcheck_and_equals_the_recomputing_one():
    B, C, Q, s = 2, 3, 4, 3
    z, h = _t(B, C, Q * s, grad=True), _t(C, Q * s, seed=1, grad=True)
    torch.library.opcheck(fft_conv._read_op, (z, h, s, True))
    y, Hc, P = (t.detach() for t in fft_conv._read_op(z, h, s, True))
    y0, Hc0, P0 = fft_conv._read_op(z, h, s, False)
    assert P.shape == (B, C, s, fft_rows.fft_size(2 * Q - 1) // 2 + 1) and P0.numel() == 0
    torch.testing.assert_close(y, y0.detach(), atol=0, rtol=0)
    g = _t(B, C, Q, seed=3)
    for need in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(fft_conv._read_backward_op, (g, z.detach().new_empty(0), Hc, s, *need, P))
        kept = fft_conv._read_backward_op(g, z.detach().new_empty(0), Hc, s, *need, P)
        again = fft_conv._read_backward_op(g, z.detach(), Hc, s, *need)
        for a, b in zip(kept, again):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_hyena_without_a_filter_gradient_keeps_no_spectra_and_gives_the_same_input_gradient():
    """With the filter MLP frozen the read stage needs no phase spectra (nor ``z``) for its
    backward; the queries' and keys' gradients are those of the trained module."""
    torch.manual_seed(0)
    m = HyenaAttention(8, 2).double()
    q, k = _t(2, 4, 8, grad=True), _t(2, 12, 8, seed=1, grad=True)
    ref = torch.autograd.grad(m(q, k, k).sum(), (q, k))
    for p in m.filter_mlp.parameters():
        p.requires_grad_(False)
    m.skip.requires_grad_(False)
    for a, b in zip(torch.autograd.grad(m(q, k, k).sum(), (q, k)), ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_filters_channels_first_honour_a_hook_on_the_filter_mlp():
    """The filters are built channels-first from the MLP's weights only for a plain MLP; a hook
    on its last layer is run (it gives what doubling that layer's weight gives)."""
    torch.manual_seed(0)
    m = HyenaAttention(8, 2, order=2).double()
    q, k = _t(2, 4, 8), _t(2, 12, 8, seed=1)
    twice = HyenaAttention(8, 2, order=2).double()
    twice.load_state_dict(m.state_dict())
    with torch.no_grad():
        twice.filter_mlp[-1].weight.mul_(2)
    m.filter_mlp[-1].register_forward_hook(lambda mod, args, out: out * 2)
    torch.testing.assert_close(m.filters(12), twice.filters(12), atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(m(q, k, k), twice(q, k, k), atol=1e-12, rtol=1e-10)


def test_a_numpy_stride_is_taken_and_an_empty_batch_is_still_checked():
    import numpy as np

    z, h = _t(2, 3, 12), _t(3, 12, seed=1)
    assert torch.equal(read_conv_last(z, h, np.int64(3)), read_conv_last(z, h, 3))
    with pytest.raises(ShapeError, match="does not divide"):
        read_conv_last(_t(0, 3, 10), h[:, :10], 3)

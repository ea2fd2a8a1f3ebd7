"""hyena's convolutions as ``torch.library`` operators, what :mod:`canvas_core.attention.fft_conv`
runs under ``torch.compile``: ``canvas_core::hyena_read_conv``, ``canvas_core::hyena_gated_conv``
and their backwards.  The traced graph holds one node for each and is not specialised on the
batch size by the loop over the rows; at run time the operators run the eager per-row kernels of
:mod:`canvas_core.attention.fft_rows` (the per-thread scratch buffers included).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from canvas_core.attention.first_order import first_order_only
from canvas_core.attention.fft_rows import fft_size, gated_backward, gated_forward, read_backward, read_forward

__all__ = ["read_op", "read_backward_op", "gated_op", "gated_backward_op"]

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    """An operator returns tensors only: a gradient not asked for is an empty one."""
    return like.new_empty(0) if t is None else t.contiguous()


@torch.library.custom_op("canvas_core::hyena_read_conv", mutates_args=())
def read_op(z: Tensor, h: Tensor, s: int, keep: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """``(y, conj(H), phases)``: the phase spectra ``(B, C, s, m / 2 + 1)`` with ``keep``, else empty."""
    y, Hc, kept = read_forward(z, h, s, keep)
    P = torch.stack(kept) if keep else Hc.new_empty(0)
    return y.contiguous(), Hc, P


@read_op.register_fake
def _(z, h, s, keep=False):
    B, C, L = z.shape
    Q = L // s
    bins = fft_size(2 * Q - 1) // 2 + 1
    cd = _COMPLEX[z.dtype]
    P = z.new_empty(B, C, s, bins, dtype=cd) if keep else z.new_empty(0, dtype=cd)
    return z.new_empty(B, C, Q), z.new_empty(C, s, bins, dtype=cd), P


@torch.library.custom_op("canvas_core::hyena_read_conv_backward", mutates_args=())
def read_backward_op(g: Tensor, z: Tensor, Hc: Tensor, s: int, need_z: bool, need_h: bool,
                     phases: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The gradients of ``z`` and ``h`` (empty where not asked for); ``phases`` from :func:`read_op`
    (``z`` is then not read)."""
    dz, dh = read_backward(g, z, Hc, s, need_z, need_h, phases)
    return _or_empty(dz, g), _or_empty(dh, g)


@read_backward_op.register_fake
def _(g, z, Hc, s, need_z, need_h, phases=None):
    B, C, Q = g.shape
    return (g.new_empty(B, C, Q * s) if need_z else g.new_empty(0)), (g.new_empty(C, Q * s) if need_h else g.new_empty(0))


def _read_setup(ctx, inputs, output):
    kept = output[2].numel() > 0
    # with the phase spectra kept the backward does not read z
    ctx.save_for_backward(inputs[0].new_empty(0) if kept else inputs[0], output[1], output[2])
    ctx.s, ctx.kept = inputs[2], kept
    ctx.mark_non_differentiable(output[1], output[2])  # the spectra reach the backward only


def _read_autograd(ctx, gy, *_unused):
    need_z, need_h = ctx.needs_input_grad[:2]
    z, Hc, P = ctx.saved_tensors
    dz, dh = read_backward_op(gy.contiguous(), z, Hc, ctx.s, need_z, need_h, P if ctx.kept else None)
    return first_order_only("hyena's read convolution", (dz if need_z else None, dh if need_h else None, None, None))


read_op.register_autograd(_read_autograd, setup_context=_read_setup)


@torch.library.custom_op("canvas_core::hyena_gated_conv", mutates_args=())
def gated_op(z: Tensor, gate: Tensor, h: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(gate * conv, conv, conj(Z), conj(H))``."""
    return gated_forward(z, gate, h)


@gated_op.register_fake
def _(z, gate, h):
    B, C, L = z.shape
    bins = fft_size(2 * L - 1) // 2 + 1
    cd = _COMPLEX[z.dtype]
    return torch.empty_like(z), torch.empty_like(z), z.new_empty(B, C, bins, dtype=cd), z.new_empty(C, bins, dtype=cd)


@torch.library.custom_op("canvas_core::hyena_gated_conv_backward", mutates_args=())
def gated_backward_op(g: Tensor, gate: Tensor, conv: Tensor, Zc: Tensor, Hc: Tensor, need_z: bool,
                      need_gate: bool, need_h: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradients of ``z``, the gate and ``h`` (empty where not asked for)."""
    grads = gated_backward(g, gate, conv, Zc, Hc, need_z, need_gate, need_h)
    return tuple(_or_empty(t, g) for t in grads)


@gated_backward_op.register_fake
def _(g, gate, conv, Zc, Hc, need_z, need_gate, need_h):
    B, C, L = gate.shape
    return (torch.empty_like(gate) if need_z else g.new_empty(0), torch.empty_like(gate) if need_gate else g.new_empty(0),
            g.new_empty(C, L) if need_h else g.new_empty(0))


def _gated_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], *output[1:])  # gate, conv, conj(Z), conj(H)
    ctx.mark_non_differentiable(*output[1:])


def _gated_autograd(ctx, g, *_unused):
    needs = ctx.needs_input_grad[:3]
    grads = gated_backward_op(g.contiguous(), *ctx.saved_tensors, *needs)
    return first_order_only("hyena's gated convolution", tuple(t if need else None for t, need in zip(grads, needs)))


gated_op.register_autograd(_gated_autograd, setup_context=_gated_setup)

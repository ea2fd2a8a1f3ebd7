"""The compiled CPU kernels as ``torch.library`` operators with their backwards (the eager
mamba module's CPU path when :func:`cpu_kernel.available`).

* :func:`conv_silu`: ``silu(causal_depthwise_conv(x, w, b))`` in one pass each way (the conv
  output is recomputed in the backward, not kept).
* :func:`scan_read_softplus`: the selective scan read at ``read`` with ``delta = softplus(dt)``
  and the skip term ``D u`` at the reads computed inside the kernel (no ``delta`` tensor, no
  gather or scatter of ``u`` for the skip).
* :func:`conv_scan_read_softplus`: both in one kernel each way, ``u`` computed from ``x`` as the
  scan steps (no ``u`` tensor, no separate conv pass).

As operators they are opaque to ``torch.compile`` (the reads' index lists are built inside, with
data-dependent sizes); shapes for tracing come from the fake implementations.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from canvas_core.extend import first_order_only
from canvas_plugin_mamba import cpu_kernel

__all__ = ["conv_silu", "scan_read_softplus", "conv_scan_read_softplus"]


@torch.library.custom_op("canvas_mamba::cpu_conv_silu", mutates_args=())
def _conv_silu_op(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.ops.canvas_mamba_cpu.conv_silu_fwd(x, w, b)


@_conv_silu_op.register_fake
def _(x, w, b):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("canvas_mamba::cpu_conv_silu_backward", mutates_args=())
def _conv_silu_backward_op(gu: Tensor, x: Tensor, w: Tensor, b: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    gx, gw, gb = torch.ops.canvas_mamba_cpu.conv_silu_bwd(gu.contiguous(), x, w, b)
    return gx, gw, gb


@_conv_silu_backward_op.register_fake
def _(gu, x, w, b):
    c = torch.contiguous_format
    return torch.empty_like(x, memory_format=c), torch.empty_like(w, memory_format=c), torch.empty_like(b)


def _conv_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _conv_backward(ctx, gu):
    return first_order_only("mamba's compiled conv", _conv_silu_backward_op(gu, *ctx.saved_tensors))


_conv_silu_op.register_autograd(_conv_backward, setup_context=_conv_setup)


def conv_silu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``silu(causal_depthwise_conv(x, weight, bias))`` of ``x (Bt, L, E)`` with ``weight (E, K)``,
    ``bias (E,)`` (as :func:`canvas_plugin_mamba.conv_op.causal_depthwise_conv` then ``F.silu``, to
    float rounding), differentiable; one dtype, the compiled kernels available."""
    return _conv_silu_op(x.contiguous(), weight.contiguous(), bias.contiguous())


def _states_shape(u: Tensor, A: Tensor, T: int):
    return (u.shape[0], -(-u.shape[1] // T), A.shape[1], A.shape[0])


@torch.library.custom_op("canvas_mamba::cpu_scan_softplus", mutates_args=())
def _scan_op(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, D: Tensor, read: Tensor,
             T: int) -> Tuple[Tensor, Tensor]:
    hs = u.new_empty(_states_shape(u, A, T))
    return cpu_kernel.forward(u, dt, A, Bm, C, read, T, hs, True, D), hs


@_scan_op.register_fake
def _(u, dt, A, Bm, C, D, read, T):
    return u.new_empty(u.shape[0], C.shape[1], u.shape[2]), u.new_empty(_states_shape(u, A, T))


@torch.library.custom_op("canvas_mamba::cpu_scan_softplus_backward", mutates_args=())
def _scan_backward_op(gy: Tensor, u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, D: Tensor, read: Tensor,
                      hs: Tensor, T: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return cpu_kernel.backward(gy.contiguous(), u, dt, A, Bm, C, read, T, hs, True, D)


@_scan_backward_op.register_fake
def _(gy, u, dt, A, Bm, C, D, read, hs, T):
    c = torch.contiguous_format
    return tuple(torch.empty_like(t, memory_format=c) for t in (u, dt, A, Bm, C, D))


def _register_scan_autograd(op, backward_op) -> None:
    """Autograd of a scan operator ``op(*tensors, read, T) -> (y, states)`` whose backward operator
    takes ``(gy, *tensors, read, states, T)`` and returns the gradients of ``tensors``."""

    def setup(ctx, inputs, output):
        *tensors, T = inputs
        ctx.save_for_backward(*tensors, output[1])
        ctx.T = T
        ctx.mark_non_differentiable(output[1])  # the saved states reach the backward only
        ctx.set_materialize_grads(False)

    def backward(ctx, gy, _unused):
        if gy is None:
            return (None,) * len(ctx.saved_tensors)  # one per input: the tensors, read and T
        grads = backward_op(gy, *ctx.saved_tensors, ctx.T)
        return first_order_only("mamba's compiled scan", (*grads, None, None))

    op.register_autograd(backward, setup_context=setup)


_register_scan_autograd(_scan_op, _scan_backward_op)


def scan_read_softplus(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, D: Tensor, read: Tensor,
                       T: int) -> Tensor:
    """``y_q = C_q . h_{read_q} + D u_{read_q}`` with ``delta = softplus(dt)``, ``(Bt, Q, E)``.

    ``u, dt (Bt, L, E)``, ``A (E, N)`` (``<= 0``), ``Bm (Bt, L, N)``, ``C (Bt, Q, N)``, ``D (E,)``,
    ``read (Q,)`` long (``-1``: reads nothing, ``y_q = 0``); ``T``: positions between the states
    kept for the backward.  Differentiable in every tensor but ``read``; one dtype, the compiled
    kernels available."""
    args = [x.contiguous() for x in (u, dt, A, Bm, C, D)]
    return _scan_op(*args, read, T)[0]


@torch.library.custom_op("canvas_mamba::cpu_conv_scan_softplus", mutates_args=())
def _conv_scan_op(x: Tensor, w: Tensor, cb: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor, D: Tensor,
                  read: Tensor, T: int) -> Tuple[Tensor, Tensor]:
    hs = x.new_empty(_states_shape(x, A, T))
    return cpu_kernel.conv_forward(x, w, cb, dt, A, Bm, C, read, T, hs, True, D), hs


@_conv_scan_op.register_fake
def _(x, w, cb, dt, A, Bm, C, D, read, T):
    return x.new_empty(x.shape[0], C.shape[1], x.shape[2]), x.new_empty(_states_shape(x, A, T))


@torch.library.custom_op("canvas_mamba::cpu_conv_scan_softplus_backward", mutates_args=())
def _conv_scan_backward_op(gy: Tensor, x: Tensor, w: Tensor, cb: Tensor, dt: Tensor, A: Tensor, Bm: Tensor,
                           C: Tensor, D: Tensor, read: Tensor, hs: Tensor, T: int) -> Tuple[
        Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return cpu_kernel.conv_backward(gy.contiguous(), x, w, cb, dt, A, Bm, C, read, T, hs, True, D)


@_conv_scan_backward_op.register_fake
def _(gy, x, w, cb, dt, A, Bm, C, D, read, hs, T):
    c = torch.contiguous_format
    return (x.new_empty(x.shape), *(torch.empty_like(t, memory_format=c) for t in (w, cb, dt, A, Bm, C, D)))


_register_scan_autograd(_conv_scan_op, _conv_scan_backward_op)


def conv_scan_read_softplus(x: Tensor, weight: Tensor, bias: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, C: Tensor,
                            D: Tensor, read: Tensor, T: int) -> Tensor:
    """:func:`scan_read_softplus` of ``u = conv_silu(x, weight, bias)``, the conv computed inside
    the scan (``weight (E, K)`` with ``K <= cpu_kernel.MAX_CONV``); the same values to float
    rounding, differentiable in every tensor but ``read``."""
    if x.dim() != 3 or (x.stride(-1) != 1 and x.shape[-1] > 1):
        x = x.contiguous()  # the kernel takes any row and batch strides: a slice of a wider projection as it is
    args = [t.contiguous() for t in (weight, bias, dt, A, Bm, C, D)]
    return _conv_scan_op(x, *args, read, T)[0]

"""What a mamba module computes between its projections, as one ``torch.library`` operator each way.

From the projections (``x = W_in values``, ``dt = W_dt (W_x keys)_dt + b_dt``, ``B``, ``C``, ``z``)
to the gated read ``y`` (before ``W_out``)::

    u = silu(causal_depthwise_conv(x)),  delta = softplus(dt),  A = -exp(A_log)
    y = (scan_read(u, delta, A, B, C) + D * u_read) * silu(z)

Traced by ``torch.compile`` as separate tensor operations, this part of a mamba module came to
about two thirds of its graph nodes (the convolution, the activations, the skip term and every
backward formula), each lowered and compiled by inductor; as one operator (the same idea as
mamba-ssm's fused ``mamba_inner_fn``) it is one call forward and one backward, around the scan's
own operator.  The forward runs the module's own operations in the same order (same values); the
backward writes out their chain rule with the same per-operation gradient formulas autograd uses
(``aten.silu_backward``, ``aten.softplus_backward``), from the conv output and ``delta`` that the
forward keeps, as autograd would.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from canvas_core.extend import first_order_only, scratch
from canvas_plugin_mamba import chunked, conv_op

__all__ = ["mamba_inner"]

_LOG2E, _LN2 = 1.0 / math.log(2.0), math.log(2.0)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """The module's softplus: ``relu(x) + log(1 + e^-|x|)`` for float32 on CPU, written as
    ``relu(x) + ln 2 * log2(1 + 2^(-|x| log2 e))`` (``exp2`` / ``log2`` cost about a third of
    ``exp`` / ``log`` on this CPU build; ``F.softplus``'s ``log1p`` is not vectorised at all), with
    the temporary in a scratch buffer (the result is the one new tensor); else ``F.softplus``."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        t = torch.abs(x, out=scratch("mamba.softplus", x.shape, x))
        t.mul_(-_LOG2E).exp2_().add_(1.0).log2_()
        return torch.clamp(x, min=0.0).add_(t, alpha=_LN2)
    return F.softplus(x)


def _softplus_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.sigmoid(x).mul_(g)
    return torch.ops.aten.softplus_backward(g, x, 1.0, 20.0)


def _reads(read: Optional[torch.Tensor], L: int, device) -> torch.Tensor:
    return torch.arange(L, device=device) if read is None else read


def _forward(x, w, b, dt, Bm, C, z, A_log, D, read, T: int, block: int, kernel: str):
    conv = conv_op._forward(x, w, b)
    u, delta, A = F.silu(conv), _softplus(dt), -torch.exp(A_log)
    y, hin = torch.ops.canvas_mamba.scan_read_v2(u, delta, A, Bm.contiguous(), C,
                                                 _reads(read, x.shape[1], x.device), T, block, kernel)
    if read is None:  # query i reads position i: u at each query's own position, every read valid
        y = y + D * u
    else:
        ok = (read >= 0).view(1, -1, 1).to(y.dtype)
        y = y + D * u.index_select(1, read.clamp(min=0)) * ok
    return y * F.silu(z), hin, y, conv, delta


@torch.library.custom_op("canvas_mamba::inner_v2", mutates_args=())
def _inner_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dt: torch.Tensor, Bm: torch.Tensor, C: torch.Tensor,
              z: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor, read: Optional[torch.Tensor], T: int,
              block: int, kernel: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, w, b, dt, Bm, C, z, A_log, D, read, T, block, kernel)


@_inner_op.register_fake
def _(x, w, b, dt, Bm, C, z, A_log, D, read, T, block, kernel):
    Bt, L, E = x.shape
    Q = C.shape[1]
    hin = x.new_empty(chunked._saved_shape(x, A_log, C, T, kernel))
    return x.new_empty(Bt, Q, E), hin, x.new_empty(Bt, Q, E), torch.empty_like(x), torch.empty_like(x)


def _inner_backward(gy, x, w, conv, delta, dt, Bm, C, z, A_log, D, read, hin, y_pre, T: int, block: int,
                    kernel: str):
    """Gradients of :func:`_forward`'s ``y`` for ``x, w, b, dt, Bm, C, z, A_log, D`` (contiguous)."""
    u, A = F.silu(conv), -torch.exp(A_log)
    gz = torch.ops.aten.silu_backward(gy * y_pre, z)
    g = gy * F.silu(z)  # the gradient reaching y before the gate
    if read is None:
        gD = (g * u).sum(dim=(0, 1))
        gu_skip = g * D
    else:
        ok = (read >= 0).view(1, -1, 1).to(g.dtype)
        rc = read.clamp(min=0)
        gD = (g * u.index_select(1, rc) * ok).sum(dim=(0, 1))
        gu_skip = torch.zeros_like(u).index_add_(1, rc, g * D * ok)
    gu, gdelta, gA, gB, gC = torch.ops.canvas_mamba.scan_read_backward_v2(
        g, u, delta, A, Bm.contiguous(), C, _reads(read, x.shape[1], x.device), hin, T, block, kernel)
    gx, gw, gb = conv_op._backward(torch.ops.aten.silu_backward(gu + gu_skip, conv), x, w)
    return (gx, gw, gb, _softplus_grad(gdelta, dt).contiguous(), gB.contiguous(), gC.contiguous(),
            gz.contiguous(), (gA * A).contiguous(), gD)


@torch.library.custom_op("canvas_mamba::inner_backward_v2", mutates_args=())
def _inner_backward_op(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, conv: torch.Tensor, delta: torch.Tensor,
                       dt: torch.Tensor, Bm: torch.Tensor, C: torch.Tensor, z: torch.Tensor, A_log: torch.Tensor,
                       D: torch.Tensor, read: Optional[torch.Tensor], hin: torch.Tensor, y_pre: torch.Tensor, T: int,
                       block: int, kernel: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
    return _inner_backward(gy, x, w, conv, delta, dt, Bm, C, z, A_log, D, read, hin, y_pre, T, block, kernel)


@_inner_backward_op.register_fake
def _(gy, x, w, conv, delta, dt, Bm, C, z, A_log, D, read, hin, y_pre, T, block, kernel):
    c = torch.contiguous_format
    return (torch.empty_like(x, memory_format=c), torch.empty_like(w, memory_format=c), w.new_empty(w.shape[0]),
            torch.empty_like(dt, memory_format=c), torch.empty_like(Bm, memory_format=c),
            torch.empty_like(C, memory_format=c), torch.empty_like(z, memory_format=c),
            torch.empty_like(A_log, memory_format=c), torch.empty_like(D, memory_format=c))


def _setup_context(ctx, inputs, output):
    x, w, b, dt, Bm, C, z, A_log, D, read, T, block, kernel = inputs
    ctx.save_for_backward(x, w, dt, Bm, C, z, A_log, D, read, *output[1:])
    ctx.T, ctx.block, ctx.kernel = T, block, kernel
    # the scan's saved states, the ungated read, the conv output and delta are outputs only to
    # reach the backward (kept, as autograd would keep them: softplus is costly to recompute)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _backward(ctx, gy, *_unused):
    if gy is None:
        return (None,) * 13
    x, w, dt, Bm, C, z, A_log, D, read, hin, y_pre, conv, delta = ctx.saved_tensors
    grads = _inner_backward_op(gy.contiguous(), x, w, conv, delta, dt, Bm, C, z, A_log, D, read, hin, y_pre, ctx.T,
                               ctx.block, ctx.kernel)
    return first_order_only("mamba's fused operator", (*grads, None, None, None, None))


_inner_op.register_autograd(_backward, setup_context=_setup_context)


def mamba_inner(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, dt: torch.Tensor,
                Bm: torch.Tensor, C: torch.Tensor, z: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor,
                read: Optional[torch.Tensor], kernel: str = "torch") -> torch.Tensor:
    """``(silu(conv(x)) scanned and read at ``read``, plus the skip ``D u``) * silu(z)``, ``(Bt, Q, E)``.

    Args:
        x, dt: ``(Bt, L, E)``, the conv input and the step sizes before ``softplus``.
        conv_weight ``(E, K)``, conv_bias ``(E,)``; A_log ``(E, N)``; D ``(E,)``.
        Bm: ``(Bt, L, N)``; C: ``(Bt, Q, N)``; z: ``(Bt, Q, E)``, the gate before ``silu``.
        read: ``(Q,)`` long, the position each query reads (``-1``: nothing), or None: query
            ``i`` reads position ``i`` (``Q == L``).
        kernel: the scan, ``"torch"`` or ``"cpu"`` (as :func:`~canvas_plugin_mamba.chunked.scan_kernel`
            returns).

    Every tensor in one floating dtype, ``Bt, L, Q >= 1``.  Differentiable in every tensor but
    ``read``.
    """
    T = chunked.chunk_size(x.shape[1])
    # B may be a view (a split of one projection): the operator copies it for the scan itself
    x, w, b, dt, C, z, A_log, D = (t.contiguous() for t in (x, conv_weight, conv_bias, dt, C, z, A_log, D))
    return _inner_op(x, w, b, dt, Bm, C, z, A_log, D, read, T, -1, kernel)[0]

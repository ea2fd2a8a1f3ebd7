"""Linear attention's key side: the feature map ``phi(x) = elu(x) + 1`` and the key summary
``P = phi(X W^T + b)^T V``, ``s = sum_j phi(k_j)``, with hand-written backwards.

On a CPU the key side is what a linear attention call costs (the queries are few): one
projection of every key, its feature map, and one ``(D, D)`` product per batch row.  Written as
autograd functions they keep one fresh key-sized tensor per direction (the features in the
forward, the input gradient in the backward) and put every other key-sized temporary in per-thread
scratch (:func:`canvas_core.attention.causal_read.scratch`): a fresh multi-megabyte tensor costs
more in page faults than the arithmetic on it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from canvas_core.attention.causal_read import scratch
from canvas_core.attention.first_order import first_order_backward

__all__ = ["elu_plus_one", "key_summary"]


class _EluPlusOne(torch.autograd.Function):
    """``phi(x) = elu(x) + 1``, computed as ``exp(min(x, 0)) + max(x, 0)`` (torch's CPU ``elu``
    and its backward are several times slower than ``exp``); its derivative is ``min(phi, 1)``
    (1 where ``x > 0``, ``exp(x)`` elsewhere), so only ``phi`` is kept for the backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401 - autograd signature
        y = x.clamp(max=0).exp_().add_(x.clamp(min=0))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @first_order_backward("linear_attention's feature map")
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y.clamp(max=1.0)


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``F.elu(x) + 1`` (linear attention's feature map), with a cheaper forward and backward."""
    return _EluPlusOne.apply(x)


def _phi_(x: torch.Tensor) -> torch.Tensor:
    """``x`` replaced by ``elu(x) + 1`` in place (one scratch temporary)."""
    t = torch.clamp(x, max=0, out=scratch("lin_phi", x.shape, x)).exp_()
    return x.clamp_(min=0).add_(t)


class _KeySummary(torch.autograd.Function):
    """``(P, s)`` with ``phi = elu(keys W^T + b) + 1`` ``(B, N, D)``, ``P = phi^T values``
    ``(B, D, D)`` and ``s = sum_j phi_j`` ``(B, D)``; ``values`` None means ``values = keys``
    (one input gradient, summed here instead of by autograd)."""

    @staticmethod
    def forward(ctx, keys, values, weight, bias):  # noqa: D401 - autograd signature
        phi = _phi_(torch.nn.functional.linear(keys, weight, bias))
        vals = keys if values is None else values
        P = torch.bmm(phi.transpose(1, 2), vals)
        s = phi.sum(dim=1)
        ctx.same = values is None
        ctx.has_bias = bias is not None
        ctx.save_for_backward(keys, vals, weight, phi)
        return P, s

    @staticmethod
    @first_order_backward("linear_attention's key summary")
    def backward(ctx, gP, gs):
        keys, vals, weight, phi = ctx.saved_tensors
        need_k, need_v, need_w, need_b = ctx.needs_input_grad
        B, N, D = phi.shape
        gP = gP.contiguous()
        # d phi = values gP^T + gs; d(pre-activation) = d phi * min(phi, 1)
        dk = torch.bmm(vals, gP.transpose(1, 2), out=scratch("lin_dphi", phi.shape, phi))
        dk.add_(gs.unsqueeze(1))
        dk.mul_(torch.clamp(phi, max=1.0, out=scratch("lin_phi", phi.shape, phi)))
        d_keys = d_vals = d_w = d_b = None
        if need_k or (ctx.same and need_v):
            d_keys = torch.matmul(dk, weight)
            if ctx.same:
                d_keys.baddbmm_(phi, gP)
        if need_v and not ctx.same:
            d_vals = torch.bmm(phi, gP)
        if need_w:
            d_w = torch.mm(dk.reshape(B * N, D).t(), keys.reshape(B * N, keys.shape[-1]))
        if need_b and ctx.has_bias:
            d_b = dk.sum(dim=(0, 1))
        return d_keys, d_vals, d_w, d_b


def key_summary(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Linear attention's key side in one call: ``phi = elu(keys W^T + b) + 1``, returns
    ``(phi^T values (B, D, D), sum_j phi_j (B, D))``.

    ``keys`` ``(B, N, Din)`` (contiguous), ``values`` ``(B, N, Dv)`` or None for ``values = keys``;
    ``weight`` ``(D, Din)``, ``bias`` ``(D,)`` or None; all one floating dtype, outside autocast
    (the caller falls back to the composite form otherwise).
    """
    return _KeySummary.apply(keys.contiguous(), None if values is None else values.contiguous(), weight, bias)

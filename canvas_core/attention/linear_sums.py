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

from canvas_core.attention.causal_read import outside_autocast, scratch, scratch_out
from canvas_core.attention.first_order import first_order_backward, first_order_only

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
    t = torch.clamp(x, max=0, out=scratch_out("lin_phi", x.shape, x)).exp_()
    return x.clamp_(min=0).add_(t)


@outside_autocast
def _summary_forward(keys, values, weight, bias):
    """``(P, s, phi)``: ``phi = elu(keys W^T + b) + 1`` ``(B, N, D)``, ``P = phi^T values``
    ``(B, D, Dv)``, ``s = sum_j phi_j`` ``(B, D)``; ``values`` None means ``values = keys``.
    Computed in the inputs' dtype, autocast or not (it would cast the products, and the sum over
    keys, to float16 or bfloat16)."""
    phi = _phi_(torch.nn.functional.linear(keys, weight, bias))
    P = torch.bmm(phi.transpose(1, 2), keys if values is None else values)
    return P, phi.sum(dim=1), phi


@outside_autocast
def _summary_backward(gP, gs, keys, values, weight, phi, need_k: bool, need_v: bool, need_w: bool, need_b: bool):
    """Gradients ``(keys, values, weight, bias)`` (None where not asked for; with ``values`` None
    the values' gradient is in the keys'), in the dtype of the forward, autocast or not."""
    B, N, D = phi.shape
    same = values is None
    vals = keys if same else values
    gP = gP.contiguous()
    # d phi = values gP^T + gs; d(pre-activation) = d phi * min(phi, 1)
    dk = torch.bmm(vals, gP.transpose(1, 2), out=scratch("lin_dphi", phi.shape, phi))
    dk.add_(gs.unsqueeze(1))
    dk.mul_(torch.clamp(phi, max=1.0, out=scratch("lin_phi", phi.shape, phi)))
    d_keys = d_vals = d_w = d_b = None
    if need_k or (same and need_v):
        d_keys = torch.matmul(dk, weight)
        if same:
            d_keys.baddbmm_(phi, gP)
    if need_v and not same:
        d_vals = torch.bmm(phi, gP)
    if need_w:
        d_w = torch.mm(dk.reshape(B * N, D).t(), keys.reshape(B * N, keys.shape[-1]))
    if need_b:
        d_b = dk.sum(dim=(0, 1))
    return d_keys, d_vals, d_w, d_b


class _KeySummary(torch.autograd.Function):
    """:func:`_summary_forward` with :func:`_summary_backward` (the eager path): keeps the keys,
    the values and the features."""

    @staticmethod
    def forward(ctx, keys, values, weight, bias):  # noqa: D401 - autograd signature
        P, s, phi = _summary_forward(keys, values, weight, bias)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(keys, values, weight, phi)
        return P, s

    @staticmethod
    @first_order_backward("linear_attention's key summary")
    def backward(ctx, gP, gs):
        keys, values, weight, phi = ctx.saved_tensors
        need_k, need_v, need_w, need_b = ctx.needs_input_grad
        return _summary_backward(gP, gs, keys, values, weight, phi, need_k, need_v, need_w, need_b and ctx.has_bias)


# --- as an operator, for torch.compile: one node each way, the eager code at run time ----------
@torch.library.custom_op("canvas_core::linear_key_summary", mutates_args=())
def _summary_op(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _summary_forward(keys, values, weight, bias)


@_summary_op.register_fake
def _(keys, values, weight, bias):
    B, N, _ = keys.shape
    D, Dv = weight.shape[0], (keys if values is None else values).shape[-1]
    return keys.new_empty(B, D, Dv), keys.new_empty(B, D), keys.new_empty(B, N, D)


@torch.library.custom_op("canvas_core::linear_key_summary_backward", mutates_args=())
def _summary_backward_op(gP: torch.Tensor, gs: torch.Tensor, keys: torch.Tensor, values: Optional[torch.Tensor],
                         weight: torch.Tensor, phi: torch.Tensor, need_k: bool, need_v: bool, need_w: bool,
                         need_b: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _summary_backward(gP, gs, keys, values, weight, phi, need_k, need_v, need_w, need_b)
    return tuple(keys.new_empty(0) if g is None else g for g in grads)


@_summary_backward_op.register_fake
def _(gP, gs, keys, values, weight, phi, need_k, need_v, need_w, need_b):
    same = values is None
    return (torch.empty_like(keys) if need_k or (same and need_v) else keys.new_empty(0),
            torch.empty_like(values) if need_v and not same else keys.new_empty(0),
            torch.empty_like(weight) if need_w else keys.new_empty(0),
            keys.new_empty(weight.shape[0]) if need_b else keys.new_empty(0))


def _summary_setup(ctx, inputs, output):
    keys, values, weight, bias = inputs
    ctx.save_for_backward(keys, values, weight, output[2])
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[2])  # the features reach the backward only


def _summary_autograd(ctx, gP, gs, _gphi):
    keys, values, weight, phi = ctx.saved_tensors
    need_k, need_v, need_w, need_b = ctx.needs_input_grad
    need_b = need_b and ctx.has_bias
    gP = torch.zeros(phi.shape[0], phi.shape[2], (keys if values is None else values).shape[-1], dtype=phi.dtype,
                     device=phi.device) if gP is None else gP
    gs = phi.new_zeros(phi.shape[0], phi.shape[2]) if gs is None else gs
    d = _summary_backward_op(gP.contiguous(), gs.contiguous(), keys, values, weight, phi, need_k, need_v, need_w, need_b)
    needs = (need_k or (values is None and need_v), need_v and values is not None, need_w, need_b)
    return first_order_only("linear_attention's key summary", tuple(t if n else None for t, n in zip(d, needs)))


_summary_op.register_autograd(_summary_autograd, setup_context=_summary_setup)


def key_summary(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Linear attention's key side in one call: ``phi = elu(keys W^T + b) + 1``, returns
    ``(phi^T values (B, D, D), sum_j phi_j (B, D))``.

    ``keys`` ``(B, N, Din)`` (contiguous), ``values`` ``(B, N, Dv)`` or None for ``values = keys``;
    ``weight`` ``(D, Din)``, ``bias`` ``(D,)`` or None; all one floating dtype, which is the dtype
    of the work and the results under autocast too (linear attention itself takes its composite
    form under autocast, so that the projections follow it).
    """
    keys, values = keys.contiguous(), None if values is None else values.contiguous()
    if torch.compiler.is_compiling():
        P, s, _ = _summary_op(keys, values, weight.contiguous(), None if bias is None else bias.contiguous())
        return P, s
    return _KeySummary.apply(keys, values, weight, bias)

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

__all__ = ["elu_plus_one", "key_summary", "head_shift"]


class _EluPlusOne(torch.autograd.Function):
    """``phi(x - m) = elu(x - m) + 1``, computed as ``exp(min(y, 0)) + max(y, 0)`` with
    ``y = x - m`` (torch's CPU ``elu`` and its backward are several times slower than ``exp``);
    its derivative is ``min(phi, 1)`` (1 where ``y > 0``, ``exp(y)`` elsewhere), so only ``phi`` is
    kept for the backward.  ``m`` (None or a shift from :func:`head_shift`) gets no gradient."""

    @staticmethod
    def forward(ctx, x, m):  # noqa: D401 - autograd signature
        if m is None:
            y = x.clamp(max=0).exp_().add_(x.clamp(min=0))
        else:  # m (B, N|1, H, 1): one shift per head, applied through a (..., H, head_dim) view
            t = (x.reshape(*x.shape[:-1], m.shape[-2], x.shape[-1] // m.shape[-2]) - m).reshape(x.shape)
            y = t.clamp(max=0).exp_().add_(t.clamp_(min=0))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @first_order_backward("linear_attention's feature map")
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y.clamp(max=1.0), None


def elu_plus_one(x: torch.Tensor, shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.elu(x - shift) + 1`` (linear attention's feature map), with a cheaper forward and
    backward; ``shift`` (broadcast to ``x``, no gradient) defaults to 0."""
    return _EluPlusOne.apply(x, shift)


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """``x.amax(-1)`` for a short last dimension, by halving (torch's reduction over a short
    contiguous dimension is several times slower on a CPU)."""
    w = x.shape[-1]
    while w > 1:
        h = w // 2
        top = torch.maximum(x[..., :h], x[..., h:2 * h])
        x = torch.cat([top, x[..., 2 * h:w]], dim=-1) if w % 2 else top
        w = x.shape[-1]
    return x[..., 0]


def head_shift(x: torch.Tensor, head_dim: int, keep: Optional[torch.Tensor] = None,
               over_rows: bool = True) -> torch.Tensor:
    """How far to lower the pre-activations ``x`` ``(B, N, D)`` of one side so that
    ``phi(x - m) = phi(x) / exp(m)`` keeps them from underflowing (``m <= 0``, detached).

    Linear attention's ratio ``phi(q)^T S / phi(q)^T s`` does not change when one head's query
    features, or one head's key features of a batch row, are scaled by a positive constant; with
    every pre-activation of a head at most ``m <= 0`` (``phi = exp``) that constant is ``exp(-m)``.
    Without it a head whose inputs all lie below about -87 (float32) has ``phi = 0``, and its
    queries got 0 instead of a weighted mean of the values.  ``over_rows``: one ``m`` per batch row
    and head, over the ``N`` rows ``keep`` ``(B|1, N)`` allows (keys); else one per row and head
    (queries).  Returns ``(B, 1|N, H, 1)``: it broadcasts to ``x`` viewed as ``(B, N, H, head_dim)``
    (no ``(B, N, D)`` copy of it is made)."""
    B, N, D = x.shape
    if N == 0 or D == 0:
        return x.new_zeros(B, 1 if over_rows else N, max(1, D // max(1, head_dim)), 1)
    h = x.detach()
    if keep is not None:
        h = h.masked_fill(~keep.reshape(keep.shape[0], N, 1), float("-inf"))
    if over_rows:
        m = h.amax(dim=1, keepdim=True).reshape(B, 1, D // head_dim, head_dim).amax(dim=3, keepdim=True)
    else:
        m = _row_max(h.reshape(B, N, D // head_dim, head_dim)).unsqueeze(-1)
    m = m.clamp(max=0)
    m = m.masked_fill(m == float("-inf"), 0.0)  # no row allowed: nothing to scale
    return m


def _phi_(x: torch.Tensor) -> torch.Tensor:
    """``x`` replaced by ``elu(x) + 1`` in place (one scratch temporary)."""
    t = torch.clamp(x, max=0, out=scratch_out("lin_phi", x.shape, x)).exp_()
    return x.clamp_(min=0).add_(t)


@outside_autocast
def _summary_forward(keys, values, weight, bias, head_dim: int = 0):
    """``(P, s, phi)``: ``phi = elu(keys W^T + b) + 1`` ``(B, N, D)``, ``P = phi^T values``
    ``(B, D, Dv)``, ``s = sum_j phi_j`` ``(B, D)``; ``values`` None means ``values = keys``.
    With ``head_dim`` > 0 each head's features are scaled by :func:`head_shift` (the backward's
    ``min(phi, 1)`` is the derivative at the shifted point, so it stays exact).
    Computed in the inputs' dtype, autocast or not (it would cast the products, and the sum over
    keys, to float16 or bfloat16)."""
    pre = torch.nn.functional.linear(keys, weight, bias)
    if head_dim > 0:
        B, N, D = pre.shape
        pre.view(B, N, D // head_dim, head_dim).sub_(head_shift(pre, head_dim))
    phi = _phi_(pre)
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
    def forward(ctx, keys, values, weight, bias, head_dim=0):  # noqa: D401 - autograd signature
        P, s, phi = _summary_forward(keys, values, weight, bias, head_dim)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(keys, values, weight, phi)
        return P, s

    @staticmethod
    @first_order_backward("linear_attention's key summary")
    def backward(ctx, gP, gs):
        keys, values, weight, phi = ctx.saved_tensors
        need_k, need_v, need_w, need_b = ctx.needs_input_grad[:4]
        return _summary_backward(gP, gs, keys, values, weight, phi, need_k, need_v, need_w,
                                 need_b and ctx.has_bias) + (None,)


# --- as an operator, for torch.compile: one node each way, the eager code at run time ----------
@torch.library.custom_op("canvas_core::linear_key_summary", mutates_args=())
def _summary_op(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], head_dim: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _summary_forward(keys, values, weight, bias, head_dim)


@_summary_op.register_fake
def _(keys, values, weight, bias, head_dim=0):
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
    keys, values, weight, bias = inputs[:4]
    ctx.save_for_backward(keys, values, weight, output[2])
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[2])  # the features reach the backward only


def _summary_autograd(ctx, gP, gs, _gphi):
    keys, values, weight, phi = ctx.saved_tensors
    need_k, need_v, need_w, need_b = ctx.needs_input_grad[:4]
    need_b = need_b and ctx.has_bias
    gP = torch.zeros(phi.shape[0], phi.shape[2], (keys if values is None else values).shape[-1], dtype=phi.dtype,
                     device=phi.device) if gP is None else gP
    gs = phi.new_zeros(phi.shape[0], phi.shape[2]) if gs is None else gs
    d = _summary_backward_op(gP.contiguous(), gs.contiguous(), keys, values, weight, phi, need_k, need_v, need_w, need_b)
    needs = (need_k or (values is None and need_v), need_v and values is not None, need_w, need_b)
    return first_order_only("linear_attention's key summary",
                            tuple(t if n else None for t, n in zip(d, needs))) + (None,)


_summary_op.register_autograd(_summary_autograd, setup_context=_summary_setup)


def key_summary(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], head_dim: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Linear attention's key side in one call: ``phi = elu(keys W^T + b) + 1``, returns
    ``(phi^T values (B, D, D), sum_j phi_j (B, D))``.

    ``keys`` ``(B, N, Din)`` (contiguous), ``values`` ``(B, N, Dv)`` or None for ``values = keys``;
    ``weight`` ``(D, Din)``, ``bias`` ``(D,)`` or None; all one floating dtype, which is the dtype
    of the work and the results under autocast too (linear attention itself takes its composite
    form under autocast, so that the projections follow it).  ``head_dim`` > 0 scales each head's
    features against underflow (:func:`head_shift`); the summaries then hold ``exp(-m_h)`` times
    the plain sums, which linear attention's ratio does not see.
    """
    keys, values = keys.contiguous(), None if values is None else values.contiguous()
    if torch.compiler.is_compiling():
        P, s, _ = _summary_op(keys, values, weight.contiguous(), None if bias is None else bias.contiguous(),
                              head_dim)
        return P, s
    return _KeySummary.apply(keys, values, weight, bias, head_dim)

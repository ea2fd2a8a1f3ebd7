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

import math
from typing import Optional, Tuple

import torch

from canvas_core.attention.causal_read import outside_autocast, scratch, scratch_out
from canvas_core.attention.first_order import first_order_backward, first_order_only

__all__ = ["elu_plus_one", "key_summary", "shifted_key_summary", "dim_shift", "scaled_features", "log_phi"]


class _EluPlusOne(torch.autograd.Function):
    """``phi(x - m) = elu(x - m) + 1``, computed as ``exp(min(y, 0)) + max(y, 0)`` with
    ``y = x - m`` (torch's CPU ``elu`` and its backward are several times slower than ``exp``);
    its derivative is ``min(phi, 1)`` (1 where ``y > 0``, ``exp(y)`` elsewhere), so only ``phi`` is
    kept for the backward.  ``m`` (None or a shift from :func:`dim_shift`) gets no gradient."""

    @staticmethod
    def forward(ctx, x, m):  # noqa: D401 - autograd signature
        t = x if m is None else x - m
        y = t.clamp(max=0).exp_().add_(t.clamp(min=0))
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


def dim_shift(x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per batch row and feature, the largest key pre-activation ``x`` ``(B, N, D)`` over the
    rows ``keep`` ``(B|1, N)`` allows, capped at 0 (0 where no row is allowed): ``c`` ``(B, 1, D)``,
    detached.

    Every allowed ``x_jd <= c_d <= 0`` or ``c_d = 0``, so ``phi(x_jd - c_d) = phi(x_jd) e^{-c_d}``:
    the sums over keys of feature ``d`` hold ``e^{-c_d}`` times the plain ones, and their largest
    term is at least 1 (none of them underflows to 0 next to it).  :func:`scaled_features` gives
    the queries the ``e^{c_d}`` back."""
    B, N, D = x.shape
    if N == 0:
        return x.new_zeros(B, 1, D)
    h = x.detach()
    if keep is not None:
        h = h.masked_fill(~keep.reshape(keep.shape[0], N, 1), float("-inf"))
    c = h.amax(dim=1, keepdim=True).clamp(max=0)
    return c.masked_fill(c == float("-inf"), 0.0)


def log_phi(x: torch.Tensor) -> torch.Tensor:
    """``log(elu(x) + 1)``: ``x`` up to 0, ``log1p(x)`` above (composite, differentiable)."""
    return torch.where(x > 0, torch.log1p(x.clamp(min=0)), x)


class _ScaledFeatures(torch.autograd.Function):
    """``y = phi(x) e^{c - n}`` as ``exp(log phi(x) + c - n)``, ``n`` the largest
    ``log phi(x) + c`` of each (row, head) (returned ``(B, N, H, 1)``, no gradient; ``c`` gets none
    either).  ``dy/dx = y / (1 + max(x, 0))``: ``x`` and ``y`` are kept for the backward."""

    @staticmethod
    def forward(ctx, x, c, head_dim):  # noqa: D401 - autograd signature
        B, N, D = x.shape
        lp = x.clamp(min=0).add_(1.0).log_().add_(x.clamp(max=0))  # log1p is ~10x slower on CPUs
        if c is not None:
            lp.add_(c)
        heads = lp.view(B, N, D // head_dim, head_dim)
        # a row of -inf inputs: features 0 (NaN and +inf stay)
        n = _row_max(heads).unsqueeze(-1).nan_to_num(nan=math.nan, posinf=math.inf, neginf=0.0)
        y = heads.sub_(n).exp_().view(B, N, D)
        ctx.save_for_backward(x, y)
        ctx.mark_non_differentiable(n)
        return y, n

    @staticmethod
    @first_order_backward("linear_attention's feature map")
    def backward(ctx, g, _gn):
        x, y = ctx.saved_tensors
        return torch.mul(g, y).div_(x.clamp(min=0).add_(1.0)), None, None


def scaled_features(x: torch.Tensor, head_dim: int,
                    c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(phi(x) e^{c - n}, n)`` for pre-activations ``x`` ``(B, N, D)`` (heads of ``head_dim``):
    each head's features of a row scaled so that the largest ``phi(x_d) e^{c_d}`` is 1 (``c``
    ``(B|1, 1, D)`` or None for 0, a key side's :func:`dim_shift`).  Linear attention's ratio does
    not see a positive factor per (row, head), so nothing that weighs in it underflows."""
    return _ScaledFeatures.apply(x, c, head_dim)


def _phi_(x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` ``(B, N, D)`` replaced by ``elu(x - c) + 1`` in place (one scratch temporary), ``c``
    None for 0 or a ``(B, 1, D)`` tensor that receives :func:`dim_shift` of ``x``.

    With ``c_d = max_j min(x_jd, 0)``, ``phi(x - c) = exp(min(x, 0) - c) + max(x, 0)`` (where
    ``c_d < 0`` every ``x_jd <= c_d < 0``), so the shift takes one reduction of the clamped
    temporary and one subtraction on it, skipped on a CPU when no feature is shifted."""
    t = torch.clamp(x, max=0, out=scratch_out("lin_phi", x.shape, x))
    if c is not None:
        torch.amax(t, dim=1, keepdim=True, out=c)
        # a host read is free on a CPU; elsewhere, and while tracing, always subtract
        if x.device.type != "cpu" or torch.compiler.is_compiling() or bool(c.any()):
            t.sub_(c)
    return x.clamp_(min=0).add_(t.exp_())


def _split_features(buf: torch.Tensor, keys: torch.Tensor, D: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The features ``(B, N, D)`` and the shift ``(B, 1, D)`` that :func:`_summary_forward` keeps
    in one flat buffer (one output of the operator, whose three outputs stay as they were)."""
    B, N = keys.shape[0], keys.shape[1]
    return buf[:B * N * D].view(B, N, D), buf[B * N * D:].view(B, 1, D)


@outside_autocast
def _summary_forward(keys, values, weight, bias, shift: bool = False):
    """``(P, s, buf)``: ``phi = elu(keys W^T + b - c) + 1`` ``(B, N, D)``, ``P = phi^T values``
    ``(B, D, Dv)``, ``s = sum_j phi_j`` ``(B, D)``; ``values`` None means ``values = keys``; ``buf``
    holds ``phi`` and ``c`` (:func:`_split_features`).  ``c`` is :func:`dim_shift` of the
    pre-activations with ``shift``, else 0 (the backward's ``min(phi, 1)`` is the derivative at the
    shifted point, so it stays exact).  Computed in the inputs' dtype, autocast or not (it would
    cast the products, and the sum over keys, to float16 or bfloat16)."""
    B, N, Din = keys.shape
    D = weight.shape[0]
    buf = keys.new_empty(B * N * D + B * D)
    pre, c = _split_features(buf, keys, D)
    flat, wt = keys.reshape(B * N, Din), weight.t()
    if bias is None:
        torch.mm(flat, wt, out=pre.view(B * N, D))
    else:
        torch.addmm(bias, flat, wt, out=pre.view(B * N, D))
    if not (shift and N > 0):
        c.zero_()
    phi = _phi_(pre, c if shift and N > 0 else None)
    P = torch.bmm(phi.transpose(1, 2), keys if values is None else values)
    return P, phi.sum(dim=1), buf


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
    the values and the features; returns ``(P, s, c)``, ``c`` without gradient."""

    @staticmethod
    def forward(ctx, keys, values, weight, bias, shift=False):  # noqa: D401 - autograd signature
        P, s, buf = _summary_forward(keys, values, weight, bias, shift)
        phi, c = _split_features(buf, keys, weight.shape[0])
        ctx.has_bias = bias is not None
        ctx.save_for_backward(keys, values, weight, phi)
        c = c.clone()
        ctx.mark_non_differentiable(c)
        return P, s, c

    @staticmethod
    @first_order_backward("linear_attention's key summary")
    def backward(ctx, gP, gs, _gc):
        keys, values, weight, phi = ctx.saved_tensors
        need_k, need_v, need_w, need_b = ctx.needs_input_grad[:4]
        return _summary_backward(gP, gs, keys, values, weight, phi, need_k, need_v, need_w,
                                 need_b and ctx.has_bias) + (None,)


# --- as an operator, for torch.compile: one node each way, the eager code at run time ----------
@torch.library.custom_op("canvas_core::linear_key_summary", mutates_args=())
def _summary_op(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], shift: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _summary_forward(keys, values, weight, bias, shift)


@_summary_op.register_fake
def _(keys, values, weight, bias, shift=False):
    B, N, _ = keys.shape
    D, Dv = weight.shape[0], (keys if values is None else values).shape[-1]
    return keys.new_empty(B, D, Dv), keys.new_empty(B, D), keys.new_empty(B * N * D + B * D)


@torch.library.custom_op("canvas_core::linear_key_summary_backward", mutates_args=())
def _summary_backward_op(gP: torch.Tensor, gs: torch.Tensor, keys: torch.Tensor, values: Optional[torch.Tensor],
                         weight: torch.Tensor, buf: torch.Tensor, need_k: bool, need_v: bool, need_w: bool,
                         need_b: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    phi = _split_features(buf, keys, weight.shape[0])[0]
    grads = _summary_backward(gP, gs, keys, values, weight, phi, need_k, need_v, need_w, need_b)
    return tuple(keys.new_empty(0) if g is None else g for g in grads)


@_summary_backward_op.register_fake
def _(gP, gs, keys, values, weight, buf, need_k, need_v, need_w, need_b):
    same = values is None
    return (torch.empty_like(keys) if need_k or (same and need_v) else keys.new_empty(0),
            torch.empty_like(values) if need_v and not same else keys.new_empty(0),
            torch.empty_like(weight) if need_w else keys.new_empty(0),
            keys.new_empty(weight.shape[0]) if need_b else keys.new_empty(0))


def _summary_setup(ctx, inputs, output):
    keys, values, weight, bias = inputs[:4]
    ctx.save_for_backward(keys, values, weight, output[2])
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[2])  # the features (and shift) reach the backward only


def _summary_autograd(ctx, gP, gs, _gbuf):
    keys, values, weight, buf = ctx.saved_tensors
    need_k, need_v, need_w, need_b = ctx.needs_input_grad[:4]
    need_b = need_b and ctx.has_bias
    B, D = keys.shape[0], weight.shape[0]
    gP = torch.zeros(B, D, (keys if values is None else values).shape[-1], dtype=buf.dtype,
                     device=buf.device) if gP is None else gP
    gs = buf.new_zeros(B, D) if gs is None else gs
    d = _summary_backward_op(gP.contiguous(), gs.contiguous(), keys, values, weight, buf, need_k, need_v, need_w, need_b)
    needs = (need_k or (values is None and need_v), need_v and values is not None, need_w, need_b)
    return first_order_only("linear_attention's key summary",
                            tuple(t if n else None for t, n in zip(d, needs))) + (None,)


_summary_op.register_autograd(_summary_autograd, setup_context=_summary_setup)


def shifted_key_summary(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                        bias: Optional[torch.Tensor], shift: bool = True
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear attention's key side in one call: ``phi = elu(keys W^T + b - c) + 1``, returns
    ``(phi^T values (B, D, Dv), sum_j phi_j (B, D), c (B, 1, D))``.

    ``keys`` ``(B, N, Din)`` (contiguous), ``values`` ``(B, N, Dv)`` or None for ``values = keys``;
    ``weight`` ``(D, Din)``, ``bias`` ``(D,)`` or None; all one floating dtype, which is the dtype
    of the work and the results under autocast too (linear attention itself takes its composite
    form under autocast, so that the projections follow it).  ``c`` is :func:`dim_shift` of the
    pre-activations with ``shift`` (else 0): the sums hold ``e^{-c_d}`` times the plain ones in
    feature ``d``, which :func:`scaled_features` of the queries gives back.
    """
    keys, values = keys.contiguous(), None if values is None else values.contiguous()
    if torch.compiler.is_compiling():
        P, s, buf = _summary_op(keys, values, weight.contiguous(), None if bias is None else bias.contiguous(),
                                shift)
        return P, s, _split_features(buf, keys, weight.shape[0])[1]
    return _KeySummary.apply(keys, values, weight, bias, shift)


def key_summary(keys: torch.Tensor, values: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`shifted_key_summary` without the shift: ``(phi^T values, sum_j phi_j)``."""
    return shifted_key_summary(keys, values, weight, bias, False)[:2]

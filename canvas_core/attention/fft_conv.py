"""Causal long convolutions by FFT, with hand-written adjoints: what ``hyena`` runs along its keys.

* :func:`causal_conv_last`: ``y_t = sum_{s <= t} h_{t - s} z_s`` along the last dim.
* :func:`gated_causal_conv`: ``gate * causal_conv_last(z, h)``, one batch row at a time
  (:func:`gated_causal_conv_stacked`: the same of ``z`` and the gate stacked in one tensor).
* :func:`read_conv_last`: :func:`causal_conv_last` read at every ``stride``-th position only,
  computed in ``stride`` phases of shorter transforms.

Run eagerly, the last two are autograd functions; under ``torch.compile`` they are the
``torch.library`` operators of :mod:`canvas_core.attention.fft_conv_ops`.  Both run the per-row
kernels of :mod:`canvas_core.attention.fft_rows`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from canvas_core.attention.causal_read import scratch, scratch_out, work_dtype
from canvas_core.attention.fft_conv_ops import gated_backward_op as _gated_backward_op  # noqa: F401
from canvas_core.attention.fft_conv_ops import gated_op as _gated_op
from canvas_core.attention.fft_conv_ops import read_backward_op as _read_backward_op  # noqa: F401
from canvas_core.attention.fft_conv_ops import read_op as _read_op
from canvas_core.attention.fft_rows import fft_size, gated_backward, gated_forward, keeps_phases, read_backward, read_forward
from canvas_core.attention.first_order import first_order_backward
from canvas_core.errors import ShapeError
from canvas_core.schema._validate import is_int

__all__ = ["fft_size", "causal_conv_last", "gated_causal_conv", "gated_causal_conv_stacked", "read_conv_last",
           "fft_causal_conv"]

# the operators are imported above under their former names: tests and callers reach them through this module


def _zero_padded(x: Tensor, n: int, slot: str) -> Tensor:
    """``x (..., L)`` zero-padded to ``(..., n)`` in the per-thread scratch buffer ``slot``."""
    xp = scratch(slot, x.shape[:-1] + (n,), x)
    L = x.shape[-1]
    xp[..., :L].copy_(x)
    xp[..., L:].zero_()
    return xp


class _CausalConv(torch.autograd.Function):
    """``y = causal_conv(z, h)`` along the last dim by FFT, with its adjoint by FFT too:
    ``dz_s = sum_{t >= s} g_t h_{t-s}``, ``dh_k = sum_b sum_t g_t z_{t-k}`` (correlations, as
    products with the conjugate spectra; the zero padding to ``n >= 2L - 1`` keeps them exact).

    The padded signals and the spectra that are not saved live in per-thread scratch (each is
    ``B x C x n``: fresh ones cost more in page faults than the arithmetic on them).  The
    transforms themselves are not given ``out=`` (torch computes a fresh result and copies it
    there) and the results are the first ``L`` points of the inverse transforms, as views.
    The spectra are saved already conjugated (what the backward multiplies by)."""

    @staticmethod
    def forward(ctx, z, h):  # z (B, C, L), h (C, L)
        L = z.shape[-1]
        n = fft_size(2 * L - 1)
        Z = torch.fft.rfft(_zero_padded(z, n, "hy_pad"))
        H = torch.fft.rfft(h, n=n)
        y = torch.fft.irfft(torch.mul(Z, H, out=scratch_out("hy_spec", Z.shape, Z)), n=n)[..., :L]
        ctx.save_for_backward(Z.conj_physical_(), H.conj_physical_())
        ctx.L, ctx.n = L, n
        return y

    @staticmethod
    @first_order_backward("hyena's causal convolution")
    def backward(ctx, g):
        Zc, Hc = ctx.saved_tensors
        L, n = ctx.L, ctx.n
        G = torch.fft.rfft(_zero_padded(g, n, "hy_pad"))
        dz = dh = None
        if ctx.needs_input_grad[1]:
            dh = torch.fft.irfft(torch.mul(G, Zc, out=scratch("hy_spec", G.shape, G)).sum(dim=0), n=n)
            dh = dh[..., :L]
        if ctx.needs_input_grad[0]:
            dz = torch.fft.irfft(torch.mul(G, Hc, out=scratch("hy_spec", G.shape, G)), n=n)[..., :L]
        return dz, dh


# --- the eager autograd functions ---------------------------------------------------------------
class _ReadConv(torch.autograd.Function):
    """:func:`~canvas_core.attention.fft_rows.read_forward` with its adjoint (the eager path).

    When the filter's gradient is asked for and they fit :func:`keeps_phases`, the rows' phase
    spectra are kept from the forward (the backward then neither reads ``z`` nor transforms its
    phases again); otherwise ``z`` is saved and they are recomputed."""

    @staticmethod
    def forward(ctx, z, h, s):  # z (B, C, L), h (C, L) -> (B, C, L / s)
        need_h = ctx.needs_input_grad[1]
        keep = need_h and keeps_phases(z, s)
        y, Hc, kept = read_forward(z, h, s, keep)
        ctx.save_for_backward(Hc, *kept) if keep else ctx.save_for_backward(Hc, z if need_h else None)
        ctx.s, ctx.keep = s, keep
        return y

    @staticmethod
    @first_order_backward("hyena's read convolution")
    def backward(ctx, g):
        Hc, *rest = ctx.saved_tensors
        z, phases = (None, rest) if ctx.keep else (rest[0], None)
        dz, dh = read_backward(g.contiguous(), z, Hc, ctx.s, *ctx.needs_input_grad[:2], phases)
        return dz, dh, None


class _GatedConv(torch.autograd.Function):
    """:func:`~canvas_core.attention.fft_rows.gated_forward` with its adjoint (the eager path):
    saves the gate, the convolution (the gate's gradient) and the conjugated spectra."""

    @staticmethod
    def forward(ctx, z, gate, h):  # z, gate (B, C, L); h (C, L)
        out, conv, Zc, Hc = gated_forward(z, gate, h)
        ctx.save_for_backward(gate, conv, Zc, Hc)
        return out

    @staticmethod
    @first_order_backward("hyena's gated convolution")
    def backward(ctx, g):
        return gated_backward(g, *ctx.saved_tensors, *ctx.needs_input_grad)


class _StackedGatedConv(torch.autograd.Function):
    """:class:`_GatedConv` of ``zg (B, 2C, L)``, ``z`` over the gate along the channels (the
    output of one projection): its gradient is one ``(B, 2C, L)`` tensor, written in place by
    the adjoint, where the separate gradients of ``z`` and of the gate cost the projection's
    backward a concatenation (a fresh tensor twice their size and a pass over it)."""

    @staticmethod
    def forward(ctx, zg, h):  # zg (B, 2C, L); h (C, L)
        C = zg.shape[1] // 2
        out, conv, Zc, Hc = gated_forward(zg[:, :C], zg[:, C:], h)
        ctx.save_for_backward(zg, conv, Zc, Hc)
        return out

    @staticmethod
    @first_order_backward("hyena's gated convolution")
    def backward(ctx, g):
        zg, conv, Zc, Hc = ctx.saved_tensors
        need_zg, need_h = ctx.needs_input_grad
        dzg = zg.new_empty(zg.shape) if need_zg else None
        dh = gated_backward(g, zg[:, zg.shape[1] // 2 :], conv, Zc, Hc, need_zg, need_zg, need_h, dzg)[2]
        return dzg, dh


# --- the public functions ----------------------------------------------------------------------
def _in_work_dtype(fn):
    """Run ``fn(z, ...)`` in float32 when ``z`` is float16 / bfloat16 (the FFTs need float32 or
    float64) and give the result back in ``z``'s dtype."""

    def run(z: Tensor, *args: Any) -> Tensor:
        wd = work_dtype(z.dtype)
        if z.dtype == wd:
            return fn(z, *args)
        cast = [a.to(wd) if isinstance(a, Tensor) else a for a in args]
        return fn(z.to(wd), *cast).to(z.dtype)

    return functools.wraps(fn)(run)


@_in_work_dtype
def gated_causal_conv(z: Tensor, gate: Tensor, h: Tensor) -> Tensor:
    """``gate * causal_conv_last(z, h)``: ``z, gate (B, C, L)``, ``h (C, L)`` -> ``(B, C, L)``, in
    one pass over each batch row (same dtype as ``z``; float16 / bfloat16 computed in float32)."""
    if z.numel() == 0:
        return gate * z
    gate, h = gate.to(z.dtype), h.to(z.dtype)
    if torch.compiler.is_compiling():  # one opaque node: the loop over the rows is not traced
        return _gated_op(z.contiguous(), gate.contiguous(), h.contiguous())[0]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (z, gate, h))):
        return gated_forward(z, gate, h, keep=False)[0]  # inference: nothing kept for a backward
    return _GatedConv.apply(z, gate, h)


@_in_work_dtype
def gated_causal_conv_stacked(zg: Tensor, h: Tensor) -> Tensor:
    """:func:`gated_causal_conv` of ``z = zg[:, :C]`` and ``gate = zg[:, C:]``: ``zg (B, 2C, L)``,
    ``h (C, L)`` -> ``(B, C, L)``; the gradient of ``zg`` is one tensor (no concatenation)."""
    if zg.dim() != 3 or zg.shape[1] % 2:
        raise ShapeError(f"gated_causal_conv_stacked: zg of shape {tuple(zg.shape)} is not (B, 2C, L) with z over its "
                         "gate along dim 1; pass z and the gate separately to gated_causal_conv")
    C = zg.shape[1] // 2
    recorded = torch.is_grad_enabled() and (zg.requires_grad or h.requires_grad)
    if zg.numel() == 0 or torch.compiler.is_compiling() or not recorded:
        return gated_causal_conv(zg[:, :C], zg[:, C:], h)
    return _StackedGatedConv.apply(zg, h.to(zg.dtype))


@_in_work_dtype
def read_conv_last(z: Tensor, h: Tensor, stride: int) -> Tensor:
    """:func:`causal_conv_last` read at ``stride (i + 1) - 1`` only: ``(B, C, L)`` ->
    ``(B, C, L / stride)`` (``stride`` divides ``L``; ``stride == 1`` is the whole output)."""
    if not is_int(stride) or stride < 1:
        raise ShapeError(f"read_conv_last: stride must be a positive int, got {stride!r}; pass the spacing of the "
                         "positions to read (1 reads every position)")
    stride = int(stride)
    if z.shape[-1] % stride:
        raise ShapeError(f"read_conv_last: stride {stride} does not divide the length {z.shape[-1]} of z "
                         f"{tuple(z.shape)}; pass a stride that divides it, or read causal_conv_last(z, h) at the "
                         "positions wanted")
    if z.numel() == 0 or stride == 1:
        return causal_conv_last(z, h)[..., stride - 1 :: stride]
    h = h.to(z.dtype)
    recorded = torch.is_grad_enabled() and (z.requires_grad or h.requires_grad)
    if torch.compiler.is_compiling():
        keep = recorded and h.requires_grad and keeps_phases(z, stride)
        return _read_op(z.contiguous(), h.contiguous(), stride, keep)[0]
    if not recorded:  # inference: nothing kept for a backward
        return read_forward(z, h, stride)[0]
    return _ReadConv.apply(z, h, stride)


@_in_work_dtype
def causal_conv_last(z: Tensor, h: Tensor) -> Tensor:
    """Causal long convolution along the last dim: ``z (B, C, L)``, ``h (C, L)`` -> ``(B, C, L)``,
    ``y_t = sum_{s<=t} h_{t-s} z_s``, by FFT (``O(L log L)``; same dtype as ``z``; float16 /
    bfloat16 computed in float32)."""
    if z.numel() == 0:  # no positions or an empty batch (MKL's FFT refuses a batch of 0)
        return z.clone()
    return _CausalConv.apply(z, h.to(z.dtype))


def fft_causal_conv(z: Tensor, h: Tensor) -> Tensor:
    """Causal long convolution by FFT: ``y_t = sum_{s<=t} h_{t-s} z_s``.

    z: ``(B, L, C)``; h: ``(L, C)``. ``O(L log L)``; computed in float32 (float64 kept).
    """
    B, L, C = z.shape
    if L == 0:
        return z.clone()
    wd = work_dtype(z.dtype)
    y = causal_conv_last(z.to(wd).transpose(1, 2).contiguous(), h.to(wd).t().contiguous())
    return y.transpose(1, 2)

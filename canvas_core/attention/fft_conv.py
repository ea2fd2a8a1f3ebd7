"""Causal long convolutions by FFT, with hand-written adjoints: what ``hyena`` runs along its keys.

* :func:`causal_conv_last`: ``y_t = sum_{s <= t} h_{t - s} z_s`` along the last dim.
* :func:`gated_causal_conv`: ``gate * causal_conv_last(z, h)``, one batch row at a time
  (:func:`gated_causal_conv_stacked`: the same of ``z`` and the gate stacked in one tensor).
* :func:`read_conv_last`: :func:`causal_conv_last` read at every ``stride``-th position only,
  computed in ``stride`` phases of shorter transforms.

Run eagerly, the last two are autograd functions; under ``torch.compile`` they are
``torch.library`` operators (``canvas_core::hyena_gated_conv``, ``canvas_core::hyena_read_conv``
and their backwards), so the traced graph holds one node for each and is not specialised on the
batch size by the loop over the rows, and the operators run the eager code (per-row passes, the
per-thread scratch buffers) at run time.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from canvas_core.attention.causal_read import scratch, scratch_out, work_dtype
from canvas_core.attention.first_order import first_order_backward, first_order_only
from canvas_core.errors import ShapeError

__all__ = ["fft_size", "causal_conv_last", "gated_causal_conv", "gated_causal_conv_stacked", "read_conv_last",
           "fft_causal_conv"]

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _smallest_smooth(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5."""
    m = max(1, n)
    while True:
        x = m
        for p in (2, 3, 5):
            while x % p == 0:
                x //= p
        if x == 1:
            return m
        m += 1


def fft_size(n: int) -> int:
    """A fast FFT length ``m >= n``: the smallest one whose prime factors are 2, 3 and 5, or the
    next power of two when that is at most 1.25x longer.

    Power-of-two transforms cost about 20-25% less per point than mixed-radix ones of similar
    length (MKL on this project's CPUs: 3,840 points 1.9 ns per point and row, 4,096 points 1.6;
    900 points 2.2, 1,024 points 1.4; cuFFT favours them too), so 3,839 -> 4,096, but 3,071 ->
    3,072 (4,096 would be a third longer)."""
    m = _smallest_smooth(n)
    p = 1 << (max(1, n) - 1).bit_length()
    return p if 4 * p <= 5 * m else m


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


# --- the last stage read at every s-th position -----------------------------------------------
def _phase_pad(z: Tensor, s: int, m: int) -> Tensor:
    """The per-thread scratch ``(C, s, m)`` for :func:`_phases` of the rows of ``z (B, C, L)``,
    its padding (the points from ``L / s`` on) zeroed once for all of them."""
    pad = scratch("hy_ph", (z.shape[1], s, m), z)
    pad[..., z.shape[-1] // s :].zero_()
    return pad


def _phases(z: Tensor, s: int, pad: Tensor) -> Tensor:
    """The spectra ``(C, s, m / 2 + 1)`` of one row ``z (C, L)`` cut in ``s`` phases
    ``z^b_a = z_{s a + b}``, each zero-padded to ``m`` points in ``pad`` (:func:`_phase_pad`)."""
    C, L = z.shape
    Q = L // s
    pad[..., :Q].copy_(z.reshape(C, Q, s).transpose(-1, -2))
    return torch.fft.rfft(pad)


def _read_forward(z: Tensor, h: Tensor, s: int) -> Tuple[Tensor, Tensor]:
    """:func:`causal_conv_last` read only at ``p_i = s (i + 1) - 1`` (``i < Q = L / s``), in ``s``
    phases: with ``z^b_a = z_{s a + b}`` and ``h^b_k = h_{s k + s - 1 - b}`` (``b < s``),
    ``y_{p_i} = sum_b sum_{a <= i} h^b_{i - a} z^b_a``: ``s`` causal convolutions of length ``Q``,
    summed in the frequency domain, so the transforms are ``m = fft_size(2 Q - 1)`` points (the
    ``s`` forward ones per row, one inverse) instead of ``2 L``.

    One batch row at a time: a row's phase spectra (``C x s x m / 2 + 1``, about a megabyte at
    64 channels) stay in cache from their transform to their sum, where the whole batch's (eight
    times that) went through memory twice; they are not kept (the backward recomputes them).
    ``z (B, C, L)``, ``h (C, L)`` -> ``(y (B, C, Q), conj(H) (C, s, m / 2 + 1))``."""
    B, C, L = z.shape
    Q = L // s
    m = fft_size(2 * Q - 1)
    H = torch.fft.rfft(h.view(C, Q, s).flip(-1).transpose(-1, -2), n=m)
    acc = torch.empty((B, C, m // 2 + 1), dtype=H.dtype, device=z.device)
    spec = scratch("hy_phs", H.shape, H)
    pad = _phase_pad(z, s, m)
    for b in range(B):
        torch.sum(torch.mul(_phases(z[b], s, pad), H, out=spec), dim=1, out=acc[b])
    y = torch.fft.irfft(acc, n=m)
    return y[..., :Q], H.conj_physical_()


def _read_backward(g: Tensor, z: Tensor, Hc: Tensor, s: int, need_z: bool,
                   need_h: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The adjoint of :func:`_read_forward` in the same phases, one row at a time:
    ``dz^b = corr(g, h^b)``, ``dh^b = sum_rows corr(g, z^b)`` (products with conjugated
    spectra; each row's phase spectra are recomputed from ``z``).  The filter's gradient is
    summed conjugated, ``conj(G) Z^b`` (``G`` conjugated once, not each row's phase spectra)."""
    B, C, Q = g.shape
    m = fft_size(2 * Q - 1)
    G = torch.fft.rfft(g, n=m).unsqueeze(2)  # (B, C, 1, m / 2 + 1)
    dz = torch.empty((B, C, Q * s), dtype=g.dtype, device=g.device) if need_z else None
    dHc = torch.zeros_like(Hc) if need_h else None
    Gc = G.conj_physical() if need_h else None
    spec = scratch("hy_phs", Hc.shape, Hc)
    pad = _phase_pad(z, s, m) if need_h else None
    for b in range(B):
        if need_z:
            dzp = torch.fft.irfft(torch.mul(G[b], Hc, out=spec), n=m)  # (C, s, m)
            dz[b].view(C, Q, s).copy_(dzp[..., :Q].transpose(-1, -2))
        if need_h:
            dHc.addcmul_(Gc[b], _phases(z[b], s, pad))
    dh = None
    if need_h:
        dh = torch.fft.irfft(dHc.conj_physical_(), n=m)[..., :Q].flip(1).transpose(-1, -2).reshape(C, Q * s)
    return dz, dh


class _ReadConv(torch.autograd.Function):
    """:func:`_read_forward` with :func:`_read_backward` (the eager path): saves ``z`` and the
    filter's conjugated phase spectra."""

    @staticmethod
    def forward(ctx, z, h, s):  # z (B, C, L), h (C, L) -> (B, C, L / s)
        y, Hc = _read_forward(z, h, s)
        ctx.save_for_backward(z, Hc)
        ctx.s = s
        return y

    @staticmethod
    @first_order_backward("hyena's read convolution")
    def backward(ctx, g):
        dz, dh = _read_backward(g.contiguous(), *ctx.saved_tensors, ctx.s, *ctx.needs_input_grad[:2])
        return dz, dh, None


# --- the gated stages before the last ---------------------------------------------------------
def _gated_forward(z: Tensor, gate: Tensor, h: Tensor, keep: bool = True) -> Tuple[Tensor, ...]:
    """``gate * causal_conv(z, h)``, one batch row at a time: its padded signal, spectrum product
    and inverse transform (``C x n`` each, a megabyte at 64 channels of 4,096 points) stay in
    cache between the transforms and the gate's product, where :class:`_CausalConv` over the
    whole batch goes through memory between each step.  ``z, gate (B, C, L)``, ``h (C, L)`` ->
    ``(out, conv (B, C, L), conj(Z) (B, C, n / 2 + 1), conj(H) (C, n / 2 + 1))``; with
    ``keep=False`` (no backward will run) only ``(out,)``: nothing is kept for a backward."""
    B, C, L = z.shape
    n = fft_size(2 * L - 1)
    H = torch.fft.rfft(h, n=n)
    out = z.new_empty(z.shape)  # contiguous also when z is a view into a stacked input
    conv = z.new_empty(z.shape) if keep else None
    Zc = torch.empty((B, C, n // 2 + 1), dtype=H.dtype, device=z.device) if keep else None
    pad = scratch("hy_gpad", (C, n), z)
    pad[:, L:].zero_()
    spec = scratch("hy_gspec", (C, n // 2 + 1), H)
    for b in range(B):
        pad[:, :L].copy_(z[b])
        Z = torch.fft.rfft(pad)
        c = torch.fft.irfft(torch.mul(Z, H, out=spec), n=n)[:, :L]
        if keep:
            torch.conj_physical(Z, out=Zc[b])
            c = conv[b].copy_(c)
        torch.mul(gate[b], c, out=out[b])
    return (out, conv, Zc, H.conj_physical_()) if keep else (out,)


def _gated_backward(g: Tensor, gate: Tensor, conv: Tensor, Zc: Tensor, Hc: Tensor, need_z: bool, need_gate: bool,
                    need_h: bool, stacked: Optional[Tensor] = None
                    ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The adjoint of :func:`_gated_forward`, one row at a time, the filter's gradient summed over
    the rows in the frequency domain.  ``stacked (B, 2C, L)``, when given, receives the gradients
    of ``z`` and of the gate (channels ``:C`` and ``C:``), which are then views of it."""
    B, C, L = gate.shape
    n = fft_size(2 * L - 1)
    dgate = None
    if need_gate:
        dgate = torch.mul(g, conv) if stacked is None else torch.mul(g, conv, out=stacked[:, C:])
    if not (need_z or need_h):
        return None, dgate, None
    dz = None
    if need_z:
        dz = gate.new_empty(gate.shape) if stacked is None else stacked[:, :C]
    dH = torch.zeros_like(Hc) if need_h else None
    pad = scratch("hy_gpad", (C, n), gate)
    pad[:, L:].zero_()
    spec = scratch("hy_gspec", (C, n // 2 + 1), Hc)
    for b in range(B):
        torch.mul(g[b], gate[b], out=pad[:, :L])
        G = torch.fft.rfft(pad)
        if need_z:
            dz[b].copy_(torch.fft.irfft(torch.mul(G, Hc, out=spec), n=n)[:, :L])
        if need_h:
            dH.addcmul_(G, Zc[b])
    dh = torch.fft.irfft(dH, n=n)[:, :L] if need_h else None
    return dz, dgate, dh


class _GatedConv(torch.autograd.Function):
    """:func:`_gated_forward` with :func:`_gated_backward` (the eager path): saves the gate, the
    convolution (the gate's gradient) and the conjugated spectra."""

    @staticmethod
    def forward(ctx, z, gate, h):  # z, gate (B, C, L); h (C, L)
        out, conv, Zc, Hc = _gated_forward(z, gate, h)
        ctx.save_for_backward(gate, conv, Zc, Hc)
        return out

    @staticmethod
    @first_order_backward("hyena's gated convolution")
    def backward(ctx, g):
        return _gated_backward(g, *ctx.saved_tensors, *ctx.needs_input_grad)


class _StackedGatedConv(torch.autograd.Function):
    """:class:`_GatedConv` of ``zg (B, 2C, L)``, ``z`` over the gate along the channels (the
    output of one projection): its gradient is one ``(B, 2C, L)`` tensor, written in place by
    :func:`_gated_backward`, where the separate gradients of ``z`` and of the gate cost the
    projection's backward a concatenation (a fresh tensor twice their size and a pass over it)."""

    @staticmethod
    def forward(ctx, zg, h):  # zg (B, 2C, L); h (C, L)
        C = zg.shape[1] // 2
        out, conv, Zc, Hc = _gated_forward(zg[:, :C], zg[:, C:], h)
        ctx.save_for_backward(zg, conv, Zc, Hc)
        return out

    @staticmethod
    @first_order_backward("hyena's gated convolution")
    def backward(ctx, g):
        zg, conv, Zc, Hc = ctx.saved_tensors
        need_zg, need_h = ctx.needs_input_grad
        dzg = zg.new_empty(zg.shape) if need_zg else None
        dh = _gated_backward(g, zg[:, zg.shape[1] // 2 :], conv, Zc, Hc, need_zg, need_zg, need_h, dzg)[2]
        return dzg, dh


# --- the same as operators, for torch.compile -------------------------------------------------
def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    """An operator returns tensors only: a gradient not asked for is an empty one."""
    return like.new_empty(0) if t is None else t.contiguous()


@torch.library.custom_op("canvas_core::hyena_read_conv", mutates_args=())
def _read_op(z: Tensor, h: Tensor, s: int) -> Tuple[Tensor, Tensor]:
    y, Hc = _read_forward(z, h, s)
    return y.contiguous(), Hc


@_read_op.register_fake
def _(z, h, s):
    B, C, L = z.shape
    Q = L // s
    bins = fft_size(2 * Q - 1) // 2 + 1
    return z.new_empty(B, C, Q), z.new_empty(C, s, bins, dtype=_COMPLEX[z.dtype])


@torch.library.custom_op("canvas_core::hyena_read_conv_backward", mutates_args=())
def _read_backward_op(g: Tensor, z: Tensor, Hc: Tensor, s: int, need_z: bool,
                      need_h: bool) -> Tuple[Tensor, Tensor]:
    dz, dh = _read_backward(g, z, Hc, s, need_z, need_h)
    return _or_empty(dz, g), _or_empty(dh, g)


@_read_backward_op.register_fake
def _(g, z, Hc, s, need_z, need_h):
    B, C, Q = g.shape
    return (g.new_empty(B, C, Q * s) if need_z else g.new_empty(0)), (g.new_empty(C, Q * s) if need_h else g.new_empty(0))


def _read_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])  # z and conj(H)
    ctx.s = inputs[2]
    ctx.mark_non_differentiable(output[1])  # the spectra reach the backward only


def _read_autograd(ctx, gy, *_unused):
    need_z, need_h = ctx.needs_input_grad[:2]
    dz, dh = _read_backward_op(gy.contiguous(), *ctx.saved_tensors, ctx.s, need_z, need_h)
    return first_order_only("hyena's read convolution", (dz if need_z else None, dh if need_h else None, None))


_read_op.register_autograd(_read_autograd, setup_context=_read_setup)


@torch.library.custom_op("canvas_core::hyena_gated_conv", mutates_args=())
def _gated_op(z: Tensor, gate: Tensor, h: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _gated_forward(z, gate, h)


@_gated_op.register_fake
def _(z, gate, h):
    B, C, L = z.shape
    bins = fft_size(2 * L - 1) // 2 + 1
    cd = _COMPLEX[z.dtype]
    return torch.empty_like(z), torch.empty_like(z), z.new_empty(B, C, bins, dtype=cd), z.new_empty(C, bins, dtype=cd)


@torch.library.custom_op("canvas_core::hyena_gated_conv_backward", mutates_args=())
def _gated_backward_op(g: Tensor, gate: Tensor, conv: Tensor, Zc: Tensor, Hc: Tensor, need_z: bool,
                       need_gate: bool, need_h: bool) -> Tuple[Tensor, Tensor, Tensor]:
    grads = _gated_backward(g, gate, conv, Zc, Hc, need_z, need_gate, need_h)
    return tuple(_or_empty(t, g) for t in grads)


@_gated_backward_op.register_fake
def _(g, gate, conv, Zc, Hc, need_z, need_gate, need_h):
    B, C, L = gate.shape
    return (torch.empty_like(gate) if need_z else g.new_empty(0), torch.empty_like(gate) if need_gate else g.new_empty(0),
            g.new_empty(C, L) if need_h else g.new_empty(0))


def _gated_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], *output[1:])  # gate, conv, conj(Z), conj(H)
    ctx.mark_non_differentiable(*output[1:])


def _gated_autograd(ctx, g, *_unused):
    needs = ctx.needs_input_grad[:3]
    grads = _gated_backward_op(g.contiguous(), *ctx.saved_tensors, *needs)
    return first_order_only("hyena's gated convolution", tuple(t if need else None for t, need in zip(grads, needs)))


_gated_op.register_autograd(_gated_autograd, setup_context=_gated_setup)


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
        return _gated_forward(z, gate, h, keep=False)[0]  # inference: nothing kept for a backward
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
    if z.numel() == 0 or stride == 1:
        return causal_conv_last(z, h)[..., stride - 1 :: stride]
    if z.shape[-1] % stride:
        raise ValueError(f"read_conv_last: stride {stride} does not divide the length {z.shape[-1]}")
    h = h.to(z.dtype)
    if torch.compiler.is_compiling():
        return _read_op(z.contiguous(), h.contiguous(), stride)[0]
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

"""The per-row FFT kernels behind :mod:`canvas_core.attention.fft_conv`: hyena's gated stages and
its last stage read at every ``s``-th position, forward and adjoint, one batch row at a time.

Both the eager autograd functions (:mod:`canvas_core.attention.fft_conv`) and the
``torch.library`` operators (:mod:`canvas_core.attention.fft_conv_ops`) run this code.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from canvas_core.attention.causal_read import scratch

__all__ = ["fft_size", "keeps_phases", "KEEP_PHASES_BYTES", "read_forward", "read_backward", "gated_forward",
           "gated_backward"]

#: the read stage keeps its phase spectra for the backward up to this many bytes (above it the
#: backward transforms the phases again from the saved input)
KEEP_PHASES_BYTES = 1 << 26


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


def keeps_phases(z: Tensor, s: int) -> bool:
    """Whether :func:`read_forward` of ``z (B, C, L)`` keeps its phase spectra for the backward:
    ``B C s (m / 2 + 1)`` complex numbers (about twice ``z``) within :data:`KEEP_PHASES_BYTES`."""
    B, C, L = z.shape
    bins = fft_size(2 * (L // s) - 1) // 2 + 1
    return B * C * s * bins * 2 * z.element_size() <= KEEP_PHASES_BYTES


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


def read_forward(z: Tensor, h: Tensor, s: int, keep: bool = False) -> Tuple[Tensor, Tensor, list]:
    """``causal_conv_last`` read only at ``p_i = s (i + 1) - 1`` (``i < Q = L / s``), in ``s``
    phases: with ``z^b_a = z_{s a + b}`` and ``h^b_k = h_{s k + s - 1 - b}`` (``b < s``),
    ``y_{p_i} = sum_b sum_{a <= i} h^b_{i - a} z^b_a``: ``s`` causal convolutions of length ``Q``,
    summed in the frequency domain, so the transforms are ``m = fft_size(2 Q - 1)`` points (the
    ``s`` forward ones per row, one inverse) instead of ``2 L``.

    One batch row at a time: a row's phase spectra (``C x s x m / 2 + 1``, about a megabyte at
    64 channels) stay in cache from their transform to their sum.  With ``keep`` each row's
    spectra (the transform's own result, no copy) are returned for the backward, which then
    needs neither ``z`` nor their transforms again.
    ``z (B, C, L)``, ``h (C, L)`` -> ``(y (B, C, Q), conj(H) (C, s, m / 2 + 1), [phases of row b])``."""
    B, C, L = z.shape
    Q = L // s
    m = fft_size(2 * Q - 1)
    H = torch.fft.rfft(h.view(C, Q, s).flip(-1).transpose(-1, -2), n=m)
    acc = torch.empty((B, C, m // 2 + 1), dtype=H.dtype, device=z.device)
    spec = scratch("hy_phs", H.shape, H)
    pad = _phase_pad(z, s, m)
    kept = []
    for b in range(B):
        P = _phases(z[b], s, pad)
        torch.sum(torch.mul(P, H, out=spec), dim=1, out=acc[b])
        if keep:
            kept.append(P)
    y = torch.fft.irfft(acc, n=m)
    return y[..., :Q], H.conj_physical_(), kept


def read_backward(g: Tensor, z: Optional[Tensor], Hc: Tensor, s: int, need_z: bool, need_h: bool,
                  phases: Union[Sequence[Tensor], Tensor, None] = None) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The adjoint of :func:`read_forward` in the same phases, one row at a time:
    ``dz^b = corr(g, h^b)``, ``dh^b = sum_rows corr(g, z^b)`` (products with conjugated
    spectra).  The rows' phase spectra are ``phases`` (kept by the forward; a sequence or a
    ``(B, C, s, m / 2 + 1)`` tensor) or, when None, transformed again from ``z``.  The filter's
    gradient is summed conjugated, ``conj(G) Z^b`` (``G`` conjugated once, not each row's phase
    spectra), starting from the first row's product (no zero fill)."""
    B, C, Q = g.shape
    m = fft_size(2 * Q - 1)
    G = torch.fft.rfft(g, n=m).unsqueeze(2)  # (B, C, 1, m / 2 + 1)
    dz = torch.empty((B, C, Q * s), dtype=g.dtype, device=g.device) if need_z else None
    dHc = Gc = pad = None
    if need_h:
        Gc = G.conj_physical_() if not need_z else G.conj_physical()
        dHc = torch.empty_like(Hc)
        if phases is None:
            pad = _phase_pad(z, s, m)
    spec = scratch("hy_phs", Hc.shape, Hc)
    for b in range(B):
        if need_z:
            dzp = torch.fft.irfft(torch.mul(G[b], Hc, out=spec), n=m)  # (C, s, m)
            dz[b].view(C, Q, s).copy_(dzp[..., :Q].transpose(-1, -2))
        if need_h:
            P = _phases(z[b], s, pad) if phases is None else phases[b]
            if b == 0:
                torch.mul(Gc[0], P, out=dHc)
            else:
                dHc.addcmul_(Gc[b], P)
    dh = None
    if need_h:
        dh = torch.fft.irfft(dHc.conj_physical_(), n=m)[..., :Q].flip(1).transpose(-1, -2).reshape(C, Q * s)
    return dz, dh


# --- the gated stages before the last ---------------------------------------------------------
def gated_forward(z: Tensor, gate: Tensor, h: Tensor, keep: bool = True) -> Tuple[Tensor, ...]:
    """``gate * causal_conv(z, h)``, one batch row at a time: its padded signal, spectrum product
    and inverse transform (``C x n`` each, a megabyte at 64 channels of 4,096 points) stay in
    cache between the transforms and the gate's product.  The spectrum is multiplied by the
    filter's in place (after its conjugate is saved): no further ``C x n`` buffer.
    ``z, gate (B, C, L)``, ``h (C, L)`` -> ``(out, conv (B, C, L), conj(Z) (B, C, n / 2 + 1),
    conj(H) (C, n / 2 + 1))``; with ``keep=False`` (no backward will run) only ``(out,)``."""
    B, C, L = z.shape
    n = fft_size(2 * L - 1)
    H = torch.fft.rfft(h, n=n)
    out = z.new_empty(z.shape)  # contiguous also when z is a view into a stacked input
    conv = z.new_empty(z.shape) if keep else None
    Zc = torch.empty((B, C, n // 2 + 1), dtype=H.dtype, device=z.device) if keep else None
    pad = scratch("hy_gpad", (C, n), z)
    pad[:, L:].zero_()
    for b in range(B):
        pad[:, :L].copy_(z[b])
        Z = torch.fft.rfft(pad)
        if keep:
            torch.conj_physical(Z, out=Zc[b])
        c = torch.fft.irfft(Z.mul_(H), n=n)[:, :L]
        if keep:
            c = conv[b].copy_(c)
        torch.mul(gate[b], c, out=out[b])
    return (out, conv, Zc, H.conj_physical_()) if keep else (out,)


def gated_backward(g: Tensor, gate: Tensor, conv: Tensor, Zc: Tensor, Hc: Tensor, need_z: bool, need_gate: bool,
                   need_h: bool, stacked: Optional[Tensor] = None
                   ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The adjoint of :func:`gated_forward`, one row at a time (the gate's gradient too, while
    the row of ``g`` is in cache), the filter's gradient summed over the rows in the frequency
    domain from the first row's product (no zero fill).  ``stacked (B, 2C, L)``, when given,
    receives the gradients of ``z`` and of the gate (channels ``:C`` and ``C:``), which are then
    views of it."""
    B, C, L = gate.shape
    n = fft_size(2 * L - 1)
    dgate = dz = dH = None
    if need_gate:
        dgate = gate.new_empty(gate.shape) if stacked is None else stacked[:, C:]
    if not (need_z or need_h):
        return None, (torch.mul(g, conv, out=dgate) if need_gate else None), None
    if need_z:
        dz = gate.new_empty(gate.shape) if stacked is None else stacked[:, :C]
    if need_h:
        dH = torch.empty_like(Hc)
    pad = scratch("hy_gpad", (C, n), gate)
    pad[:, L:].zero_()
    for b in range(B):
        torch.mul(g[b], gate[b], out=pad[:, :L])
        if need_gate:
            torch.mul(g[b], conv[b], out=dgate[b])
        G = torch.fft.rfft(pad)
        if need_h:
            if b == 0:
                torch.mul(G, Zc[0], out=dH)
            else:
                dH.addcmul_(G, Zc[b])
        if need_z:
            dz[b].copy_(torch.fft.irfft(G.mul_(Hc), n=n)[:, :L])
    dh = torch.fft.irfft(dH, n=n)[:, :L] if need_h else None
    return dz, dgate, dh

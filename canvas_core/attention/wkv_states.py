"""The state of RWKV's WKV after every chunk of keys, all chunks at once (one level, or two for
many short chunks), for :func:`canvas_core.attention.rwkv.wkv_read`."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from canvas_core.attention.causal_read import NEG_INF, exp_floor, finite_or_zero, scratch, scratch_out
from canvas_core.attention.first_order import first_order_backward

__all__: list = []


class _ChunkStates(torch.autograd.Function):
    """The state after every chunk of :func:`wkv_read`, all chunks at once:
    ``(A_x, B_x) = sum_{y <= x} e^{m_y - (x - y) T w - M_x} (a_y, b_y)`` with ``M_x`` the largest of
    those exponents (returned, not differentiated; ``m`` is a constant too; ``-inf`` marks an
    empty chunk in ``m`` and an empty state in ``M``: a 0 there would outweigh every real
    exponent below it and clamp them all to the same floor weight).  The ``(nC, nC)``
    weights of every (row, channel) live in per-thread scratch, laid out ``(B, C, nC, nC)`` so that
    both sums are one batched product; the backward recomputes them."""

    @staticmethod
    def _weights(mt, w, T):
        B, C, n = mt.shape
        cc = torch.arange(n, device=mt.device)
        lag = (cc[:, None] - cc[None, :]).to(mt.dtype)  # x - y
        ahead = lag < 0
        lw = torch.sub(mt.unsqueeze(2), (T * w).view(1, C, 1, 1) * lag, out=scratch_out("wkv_lw", (B, C, n, n), mt))
        lw.masked_fill_(ahead, NEG_INF)
        Ms = lw.amax(dim=3)  # (B, C, n); -inf for a state with no key yet
        lw.sub_(finite_or_zero(Ms).unsqueeze(3)).clamp_(min=exp_floor(lw.dtype)).exp_().masked_fill_(ahead, 0.0)
        return lw, Ms, lag

    @staticmethod
    def forward(ctx, a, b, m, w, T):  # noqa: D401 - autograd signature
        B, n, C = a.shape
        mt = m.transpose(1, 2).contiguous()
        ew, Ms, _ = _ChunkStates._weights(mt, w, T)
        ab = torch.stack([a.transpose(1, 2), b.transpose(1, 2)], dim=-1).reshape(B * C, n, 2)
        out = torch.bmm(ew.view(B * C, n, n), ab).view(B, C, n, 2).permute(3, 0, 2, 1)  # (2, B, n, C)
        ctx.T = T
        ctx.save_for_backward(ab, mt, w)
        Ms = Ms.transpose(1, 2).contiguous()
        ctx.mark_non_differentiable(Ms)
        return out[0].contiguous(), out[1].contiguous(), Ms

    @staticmethod
    @first_order_backward("rwkv's chunk states")
    def backward(ctx, gA, gB, _gM):
        ab, mt, w = ctx.saved_tensors
        B, C, n = mt.shape
        ew, _, lag = _ChunkStates._weights(mt, w, ctx.T)
        ew = ew.view(B * C, n, n)
        gA = torch.zeros(B, n, C, dtype=ab.dtype, device=ab.device) if gA is None else gA
        gB = torch.zeros_like(gA) if gB is None else gB
        g = torch.stack([gA.transpose(1, 2), gB.transpose(1, 2)], dim=-1).reshape(B * C, n, 2)
        gab = torch.bmm(ew.transpose(1, 2), g).view(B, C, n, 2).permute(3, 0, 2, 1)  # (2, B, n, C)
        dw = None
        if ctx.needs_input_grad[3]:
            dlw = torch.bmm(g, ab.transpose(1, 2), out=scratch("wkv_dew", (B * C, n, n), ew)).mul_(ew)
            dw = -ctx.T * torch.mv(dlw.view(B * C, n * n), lag.reshape(n * n)).view(B, C).sum(dim=0)
        return gab[0], gab[1], None, dw, None


def _group_for(nC: int) -> Optional[int]:
    """Chunks per group for the two-level chunk states: a divisor of ``nC`` near ``(2 nC)^(1/3)``
    (balances the ``nC G`` in-group and ``(nC / G)^2`` group-state weights), or None below 64
    chunks (one level: ``nC^2`` weights are cheap there)."""
    if nC < 64:
        return None
    t = (2 * nC) ** (1 / 3)
    best, gap = None, None
    for g in range(2, nC // 2 + 1):  # a loop, not min(): torch.compile traces it
        if nC % g == 0 and (gap is None or abs(math.log(g / t)) < gap):  # ties: the smaller group
            best, gap = g, abs(math.log(g / t))
    return best


def _chunk_states(a, b, m, w, T):
    """The state after every chunk, ``(A, B, M)`` as :class:`_ChunkStates` returns it.  Many
    chunks (short chunks, e.g. one per read): two levels, the states inside groups of ``G``
    chunks, then the states after every group (each group summarised by its own last state),
    combined as ``A_x = A^in_x e^{M^in_x - M_x} + A^grp_{g-1} e^{M^grp_{g-1} - (x' + 1) T w - M_x}``
    (``x'`` the chunk's place in group ``g``, ``M_x`` the larger exponent, ``-inf`` when both
    are): ``O(nC G + (nC/G)^2)`` weights per channel instead of ``nC^2``."""
    Bn, nC, C = a.shape
    G = _group_for(nC)
    if G is None:
        return _ChunkStates.apply(a, b, m, w, T)
    nG = nC // G
    Ai, Bi, Mi = _ChunkStates.apply(a.reshape(Bn * nG, G, C), b.reshape(Bn * nG, G, C), m.reshape(Bn * nG, G, C), w, T)
    Ai, Bi, Mi = (x.view(Bn, nG, G, C) for x in (Ai, Bi, Mi))
    Ag, Bg, Mg = _ChunkStates.apply(Ai[:, :, -1], Bi[:, :, -1], Mi[:, :, -1], w, T * G)
    # the state entering each group (after the one before), decayed to each chunk's end
    lag = torch.arange(1, G + 1, device=a.device).to(a.dtype).view(1, 1, G, 1) * T  # (x' + 1) T
    Me = torch.cat([torch.full_like(Mg[:, :1], NEG_INF), Mg[:, :-1]], dim=1).unsqueeze(2) - lag * w.detach()
    M = torch.maximum(Mi, Me)  # -inf while no key so far: never the maximum of a later read
    Mf = finite_or_zero(M)
    ei = _exp_rel(Mi - Mf, None)
    ee = torch.cat([torch.zeros_like(Mg[:, :1]), Mg[:, :-1]], dim=1).unsqueeze(2) - lag * w - Mf
    ee = _exp_rel(ee, torch.arange(nG, device=a.device).view(1, nG, 1, 1) == 0)
    Ap = torch.cat([torch.zeros_like(Ag[:, :1]), Ag[:, :-1]], dim=1).unsqueeze(2)
    Bp = torch.cat([torch.zeros_like(Bg[:, :1]), Bg[:, :-1]], dim=1).unsqueeze(2)
    A = (Ai * ei + Ap * ee).view(Bn, nC, C)
    B_ = (Bi * ei + Bp * ee).view(Bn, nC, C)
    return A, B_, M.view(Bn, nC, C)


def _exp_rel(x: torch.Tensor, blocked: Optional[torch.Tensor]) -> torch.Tensor:
    """``exp(x)`` for max-relative exponents ``x <= 0``: clamped at :func:`exp_floor` (no slow
    subnormal path), exactly 0 where ``blocked`` (bool, broadcastable) is True."""
    e = torch.exp(x.clamp(min=exp_floor(x.dtype)))
    return e if blocked is None else e.masked_fill(blocked, 0.0)


def finite_prefix(k: torch.Tensor, v: torch.Tensor, key_ok: Optional[torch.Tensor]):
    """``(k, v, marks)``: keys and values with their NaN / ``+inf`` keys and non-finite values set
    to 0, and ``marks = (first, weighed)``, per (row, channel) ``(B, C)``: the first allowed
    position whose key is NaN or ``+inf`` or whose value is not finite, and the first allowed
    position whose key weighs anything (finite); ``L`` where there is none.  ``marks`` is None
    (inputs unchanged) when all are finite.

    In the step recurrence such a key makes every later output of its channel non-finite and no
    earlier one; the chunked sums would also spread it backwards (``0 x NaN`` in the products of
    a chunk's or the states' weights with later keys), so they run on the zeroed inputs and the
    caller marks the outputs from ``first`` on.  A ``-inf`` key with a finite value weighs 0, as
    a masked key does: the outputs before ``weighed`` (every key they read weighs 0) are 0, where
    the chunked sums' max-relative weights would make them the mean of the values.  Eagerly, two
    sums tell whether anything needs doing."""
    if k.is_meta:  # shapes only: nothing to check
        return k, v, None
    if not torch.compiler.is_compiling():
        with torch.no_grad():
            if bool(torch.isfinite(k.sum() + v.sum())):
                return k, v, None
    bad_v = ~torch.isfinite(v)
    bad_k = torch.isnan(k) | (k == float("inf"))
    bad = bad_k | bad_v
    used = bad if key_ok is None else bad & key_ok.to(torch.bool).unsqueeze(-1)
    L = k.shape[1]
    pos = torch.arange(L, device=k.device).view(1, L, 1)
    first = torch.where(used, pos, torch.full_like(pos, L)).amin(dim=1)
    weighs = (k != float("-inf")) & ~bad_k
    weighs = weighs if key_ok is None else weighs & key_ok.to(torch.bool).unsqueeze(-1)
    weighed = torch.where(weighs, pos, torch.full_like(pos, L)).amin(dim=1)
    return k.masked_fill(bad_k, 0.0), v.masked_fill(bad_v, 0.0), (first, weighed)


def nan_from(out: torch.Tensor, read: torch.Tensor, marks: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``out`` ``(B, Q, C)`` with NaN at the reads at or after :func:`finite_prefix`'s ``first``
    and 0 at the reads before its ``weighed`` (read ``-1``: no read, left as it is)."""
    if marks is None:
        return out
    first, weighed = marks
    r = read.view(1, -1, 1)
    return out.masked_fill((r >= 0) & (r < weighed.unsqueeze(1)), 0.0).masked_fill(r >= first.unsqueeze(1), float("nan"))


def finite_values(v: torch.Tensor):
    """``(v, bad)``: values with non-finite entries set to 0 and where they were (None, ``v``
    unchanged, when all are finite; checked by one sum eagerly)."""
    if v.is_meta or (not torch.compiler.is_compiling() and bool(torch.isfinite(v.detach().sum()))):
        return v, None
    bad = ~torch.isfinite(v)
    return v.masked_fill(bad, 0.0), bad


def nan_where_read(out: torch.Tensor, ok: torch.Tensor, bad: Optional[torch.Tensor]) -> torch.Tensor:
    """``out`` ``(B, Qc, C)`` of :func:`~canvas_core.attention.rwkv.wkv_masked` with NaN where a
    query's keys ``ok`` ``(B|1, Qc, L)`` include a value ``bad`` ``(B, L, C)`` marks."""
    return out if bad is None else out.masked_fill((ok.unsqueeze(-1) & bad[:, None]).any(dim=2), float("nan"))

"""The chunk-level pieces of :func:`canvas_core.attention.rwkv.wkv_read`, each an autograd Function
with a hand-written backward: every chunk summarised at its end (:class:`_ChunkSums`) and a read
combined with the keys of its own chunk up to its position (:class:`_ChunkRead`).  Their large
temporaries live in per-thread scratch and are recomputed for the backward."""

from __future__ import annotations

import torch

from canvas_core.attention.causal_read import NEG_INF, exp_floor, finite_or_zero, scratch, scratch_out
from canvas_core.attention.first_order import first_order_backward


class _ChunkRead(torch.autograd.Function):
    """The part of :func:`~canvas_core.attention.rwkv.wkv_read` inside a read's own chunk: for read ``q`` at offset ``p`` of
    chunk ``cr_q``, ``num_q = sum_{j <= p} e^{l_j - m_q} v_j`` and ``den_q = sum_{j <= p}
    e^{l_j - m_q}`` with ``l_j = k_j - (p - 1 - j) w`` (``u + k_p`` at ``j = p``) and ``m_q`` the
    largest exponent (also over ``Mr``, the state's).  ``(B, Q, T, C)`` temporaries live in
    per-thread scratch and are recomputed for the backward (no fresh tensor of that size); the
    exponents are clamped at :func:`exp_floor` and the blocked entries zeroed after ``exp``."""

    @staticmethod
    def _exps(kc, w, u, okq, cr, rel):
        """``l`` ``(B, Q, T, C)`` in scratch, ``-inf`` where blocked (``j > p`` or a masked key)."""
        B, _, T, C = kc.shape
        Q = rel.shape[0]
        relc = rel.unsqueeze(-1)
        bias = torch.where(relc < 0, (relc + 1).to(kc.dtype) * w, u.expand(Q, T, C))
        bias = bias.masked_fill(relc > 0, NEG_INF)
        if cr is None:  # read q ends chunk q: no gather
            e = torch.add(kc, bias, out=scratch_out("wkv_e", (B, Q, T, C), kc))
        else:
            e = torch.index_select(kc, 1, cr, out=scratch_out("wkv_e", (B, Q, T, C), kc)).add_(bias)
        if okq is not None:
            e.masked_fill_(~okq, NEG_INF)
        return e

    @staticmethod
    def _weights_(e, mx, rel, okq):
        """``e`` replaced by ``exp(e - mx)``, exactly 0 where blocked."""
        e.sub_(mx.unsqueeze(2)).clamp_(min=exp_floor(e.dtype)).exp_()
        e.masked_fill_((rel > 0).unsqueeze(-1), 0.0)
        if okq is not None:
            e.masked_fill_(~okq, 0.0)
        return e

    @staticmethod
    def forward(ctx, kc, vc, w, u, okc, cr, rel, Mr):  # noqa: D401 - autograd signature
        okq = okc if okc is None or cr is None else okc.index_select(1, cr)  # (B|1, Q, T, 1)
        e = _ChunkRead._exps(kc, w, u, okq, cr, rel)
        mx = finite_or_zero(torch.maximum(e.amax(dim=2), Mr))
        _ChunkRead._weights_(e, mx, rel, okq)
        vq = vc if cr is None else torch.index_select(vc, 1, cr, out=scratch_out("wkv_v", e.shape, vc))
        den = e.sum(dim=2)
        num = torch.mul(vq, e, out=scratch_out("wkv_v", e.shape, vc)).sum(dim=2)
        ctx.save_for_backward(kc, vc, w, u, cr, rel, mx, *(() if okq is None else (okq,)))
        ctx.mark_non_differentiable(mx)
        return num, den, mx

    @staticmethod
    @first_order_backward("rwkv's chunked read")
    def backward(ctx, g_num, g_den, _g_mx):
        kc, vc, w, u, cr, rel, mx, *rest = ctx.saved_tensors
        okq = rest[0] if rest else None
        e = _ChunkRead._weights_(_ChunkRead._exps(kc, w, u, okq, cr, rel), mx, rel, okq)
        gn, gd = g_num.unsqueeze(2), g_den.unsqueeze(2)
        if cr is None:  # fresh gradients directly, no scatter
            dv = torch.mul(e, gn)
            dk = dl = torch.mul(vc, gn).add_(gd).mul_(e)  # d/d(exponent): e * (v g_num + g_den)
        else:
            vq = torch.index_select(vc, 1, cr, out=scratch("wkv_v", e.shape, vc))
            dv = torch.zeros_like(vc).index_add_(1, cr, torch.mul(e, gn, out=scratch("wkv_dv", e.shape, e)))
            dl = vq.mul_(gn).add_(gd).mul_(e)
            dk = torch.zeros_like(kc).index_add_(1, cr, dl)
        db = dl.sum(dim=0)  # (Q, T, C): through the bias
        relc = rel.unsqueeze(-1)
        dw = (db * torch.where(relc < 0, (relc + 1).to(db.dtype), torch.zeros((), dtype=db.dtype))).sum(dim=(0, 1))
        du = (db * (relc == 0).to(db.dtype)).sum(dim=(0, 1))
        return dk, dv, dw, du, None, None, None, None


class _ChunkSums(torch.autograd.Function):
    """Every chunk summarised at its end: ``(a, b) = sum_j e^{l_j - m} (v_j, 1)`` with
    ``l_j = k_j - (T - 1 - j) w`` over the chunk's allowed keys and ``m`` their largest exponent
    (returned, not differentiated; ``-inf`` for a chunk with no key that weighs anything, so that
    it never becomes the maximum the states are taken relative to).  The ``(B, nC, T, C)``
    exponents live in per-thread scratch and are recomputed for the backward."""

    @staticmethod
    def _exps(kc, w, okc, shift: int = 0):
        T = kc.shape[2]
        lag = torch.arange(T - 1 - shift, -1 - shift, -1, device=kc.device).to(kc.dtype)  # T - 1 - shift - j
        ls = torch.sub(kc, lag.view(T, 1) * w, out=scratch_out("wkv_ls", kc.shape, kc))
        if okc is not None:
            ls.masked_fill_(~okc, NEG_INF)
        return ls, lag

    @staticmethod
    def _weights_(ls, m, okc):
        ls.sub_(m.unsqueeze(2)).clamp_(min=exp_floor(ls.dtype)).exp_()
        return ls if okc is None else ls.masked_fill_(~okc, 0.0)

    @staticmethod
    def forward(ctx, kc, vc, w, okc, split_last=False):  # noqa: D401 - autograd signature
        # split_last: sum each chunk's first T - 1 keys and return its last key and value as
        # well, so their gradients come back here and are joined once (no zero-filled
        # gradients of the slices and of the selected last column, no additions of them)
        ks, vs, oks = (kc[:, :, :-1], vc[:, :, :-1], None if okc is None else okc[:, :, :-1]) if split_last else (kc, vc, okc)
        ls, _ = _ChunkSums._exps(ks, w, oks)
        m_top = ls.amax(dim=2)  # (B, nC, C); -inf for an empty chunk
        m = finite_or_zero(m_top)  # what the weights are taken relative to (no -inf - -inf)
        e = _ChunkSums._weights_(ls, m, oks)
        b = e.sum(dim=2)
        a = torch.mul(e, vs, out=scratch_out("wkv_ev", e.shape, e)).sum(dim=2)
        ctx.save_for_backward(kc, vc, w, m, *(() if okc is None else (okc,)))
        ctx.mark_non_differentiable(m_top)
        ctx.split_last = split_last
        if split_last:
            return a, b, m_top, kc[:, :, -1].clone(), vc[:, :, -1].clone()
        return a, b, m_top

    @staticmethod
    @first_order_backward("rwkv's chunk sums")
    def backward(ctx, ga, gb, _gm, *g_last):
        kc, vc, w, m, *rest = ctx.saved_tensors
        okc = rest[0] if rest else None
        shift = 0
        if ctx.split_last:
            # every column, the last one's weight 0 and the lags one shorter (the sums ended a
            # key earlier): gradients of the whole chunk in place, the last key's added there
            # (no concatenation, and no out= into a strided slice, which torch.compile refuses)
            shift, T = 1, kc.shape[2]
            rest_cols = (torch.arange(T, device=kc.device) < T - 1).view(1, 1, T, 1)
            okc = rest_cols if okc is None else okc & rest_cols
        ls, lag = _ChunkSums._exps(kc, w, okc, shift)
        e = _ChunkSums._weights_(ls, m, okc)
        ga = torch.zeros_like(m).unsqueeze(2) if ga is None else ga.unsqueeze(2)
        gb = torch.zeros_like(m).unsqueeze(2) if gb is None else gb.unsqueeze(2)
        dv = e * ga
        dk = torch.mul(vc, ga).add_(gb).mul_(e)  # d/d(exponent): e * (v g_a + g_b)
        dw = -(dk.sum(dim=(0, 1)) * lag.view(-1, 1)).sum(dim=0) if ctx.needs_input_grad[2] else None
        if ctx.split_last:
            for d, g in zip((dk, dv), g_last):
                if g is not None:
                    d.select(2, -1).add_(g)
        return dk, dv, dw, None, None

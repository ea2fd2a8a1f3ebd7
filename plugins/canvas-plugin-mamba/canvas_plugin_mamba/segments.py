"""The selective scan read at few positions, in closed form per segment (S6 on the CPU).

When the queries read the state at few positions (a ``mamba`` connection with fewer queries
than keys), the keys are cut into **segments** that end at the read positions and on a grid of
``T`` positions (so none is longer than ``T``).  With ``S`` the running sum of ``delta``, the
state that segment ``k`` (ending at ``r_k``) adds is, per channel ``e`` and state ``n``::

    Z_k = sum_{t in k} exp(A (S_{r_k} - S_t)) delta_t u_t B_t

one exponential and a few products per (position, channel, state), with no loop over positions
and every exponent ``<= 0`` (nothing overflows in float32).  The states at the segment ends are
chained, ``H_k = exp(A (S_{r_k} - S_{r_{k-1}})) H_{k-1} + Z_k`` (a loop over segments on
``(N, E)`` states), and query ``q`` reads ``C_q . H_{k(q)}``.  The backward is the same closed
form: the adjoint of the state at position ``t`` of segment ``k`` is ``exp(A (S_{r_k} - S_t)) G_k``,
with ``G_k`` the chained adjoint at the segment's end, so no state inside a segment is ever
formed.  Work blocks of segments stay in cache and reuse per-thread scratch buffers.

Dense reads (every position read, ``Nq == Nk``) would make the chain a loop over positions;
:func:`plan` returns None for them and :mod:`canvas_plugin_mamba.chunked` scans instead.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from canvas_core.extend import scratch

__all__ = ["SegmentPlan", "plan", "forward", "backward"]

#: exp(x) = exp2(x * LOG2E); exp2 is the cheaper one on CPUs
LOG2E = 1.0 / math.log(2.0)
#: elements of one work block (segments x T x N x E)
BLOCK_ELEMS = 1 << 19


def _ws(slot: str, shape, like: torch.Tensor) -> torch.Tensor:
    return scratch("mamba.seg." + slot, shape, like)


class SegmentPlan:
    """Segments of one call (index tensors only; ``K`` segments padded to ``Tm`` slots).

    Slot ``j`` of segment ``k`` holds position ``end_k - (Tm - 1 - j)`` (segments are
    right-aligned, so every segment ends in its last slot); ``mask`` is 1 on the slots inside the
    segment and 0 on padding (no step, no input).  ``slot_of``: the slot of each position up to
    the last read one; ``kq``: the segment each query reads at the end of (0 for ``read < 0``),
    ``ok``: ``read >= 0``.  Two common layouts skip index work: ``dense`` (every segment is
    ``Tm`` long and they cover all ``L`` positions: the slots are the positions in order, so the
    slot tensors are views of the inputs) and ``direct`` (query ``q`` reads the end of segment
    ``q``: the read states are the segment-end states themselves).  The runtime's key sets, ``Nk
    = s Nq`` with ``s <= T``, are both.
    """

    def __init__(self, ends: torch.Tensor, read: torch.Tensor, Tm: int, L: int):
        K = self.K = ends.shape[0]
        self.Tm = Tm
        starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
        j = torch.arange(Tm, device=ends.device)
        idx = ends[:, None] - (Tm - 1 - j)[None, :]
        valid = idx >= starts[:, None]  # (K, Tm)
        self.flat = idx.clamp(min=0).reshape(-1)  # (K * Tm,) the position of each slot
        self.mask = valid.reshape(1, -1, 1)
        self.slot_of = valid.reshape(-1).nonzero().squeeze(1)  # positions 0..last, in order
        self.ok = read >= 0
        self.kq = torch.searchsorted(ends, read.clamp(min=0)).clamp(max=K - 1)
        self.all_ok = bool(self.ok.all())
        self.dense = K * Tm == L and bool(valid.all())
        self.direct = read.shape[0] == K and torch.equal(read, ends)


def plan(read: torch.Tensor, L: int, T: int) -> Optional[SegmentPlan]:
    """The segments for reads ``read`` of a length-``L`` scan with grid ``T``, or None when the
    reads are too dense for segments to pay (more than one distinct read per 4 positions, beyond
    two per chunk of ``T``) or padding to the longest segment would double the work."""
    pos = read[read >= 0]
    if pos.numel() == 0:
        return None
    last = int(pos.max())
    ends = torch.unique(pos)  # sorted
    if ends.shape[0] > max(2 * (last // T + 1), (last + 1) // 4):
        return None  # about one read per 4 keys or more: the chain would loop over positions
    grid = torch.arange(T - 1, max(last, T - 1), T, device=read.device)
    lens = torch.diff(ends, prepend=ends.new_full((1,), -1))
    grid = grid[lens[torch.searchsorted(ends, grid)] > T]  # cut only the segments longer than T
    if grid.numel():
        ends = torch.unique(torch.cat([ends, grid]))
    K = ends.shape[0]
    lens = torch.diff(ends, prepend=ends.new_full((1,), -1))
    Tm = int(lens.max())
    if K * Tm > 2 * (last + 1) + T:
        return None
    return SegmentPlan(ends, read, Tm, L)


def _slots(x: torch.Tensor, P: SegmentPlan, slot: str) -> torch.Tensor:
    """``x (Bt, L, F)`` gathered into slots ``(Bt * K, Tm, F)``, in a reused buffer."""
    Bt, F = x.shape[0], x.shape[-1]
    out = _ws(slot, (Bt, P.K * P.Tm, F), x)
    torch.index_select(x, 1, P.flat, out=out)
    return out.view(Bt * P.K, P.Tm, F)


def _block_rows(P: SegmentPlan, N: int, E: int, block: Optional[int]) -> int:
    return max(1, (BLOCK_ELEMS if block is None else block) // (P.Tm * N * E))


def _blocks(P: SegmentPlan, rows: int, N: int, E: int, block: Optional[int]):
    sb = min(rows, _block_rows(P, N, E, block))
    for s0 in range(0, rows, sb):
        yield slice(s0, min(rows, s0 + sb))


def _weights(P: SegmentPlan, D: torch.Tensor, A2: torch.Tensor, sl: slice, slot: str) -> torch.Tensor:
    """``W = exp(A D)`` of the segments ``sl``, ``(s, Tm, N, E)``, in a reused buffer."""
    n = sl.stop - sl.start
    N, E = A2.shape
    W = _ws(slot, (n, P.Tm, N, E), D)
    torch.mul(D[sl].unsqueeze(-2), A2, out=W)
    return W.exp2_()


def _common(u, delta, A, Bm, P: SegmentPlan):
    """Slot inputs (reused buffers): ``dp, us, dup (R, Tm, E)`` (``delta``, ``u``, their
    product; ``dp`` and ``dup`` zero on padding), ``Bp (R, Tm, N)``, ``D`` (the sum of
    ``delta`` after each slot inside its segment), ``tot (R, E)``, ``A2 (N, E)``, and the decay
    over each whole segment ``Rk = exp(A tot) (R, N, E)``."""
    Bt, L, E = u.shape
    R, N = Bt * P.K, A.shape[1]
    if P.dense:  # views of the inputs: read only
        dp, us, Bp = delta.reshape(R, P.Tm, E), u.reshape(R, P.Tm, E), Bm.reshape(R, P.Tm, N)
    else:
        dp = _slots(delta, P, "dp")
        dp.view(Bt, -1, E).mul_(P.mask.to(dp.dtype))
        us = _slots(u, P, "us")
        Bp = _slots(Bm, P, "Bp")
    dup = torch.mul(dp, us, out=_ws("dup", dp.shape, dp))
    D = _suffix(dp, _ws("D", dp.shape, dp))
    tot = torch.add(D[:, 0], dp[:, 0], out=_ws("tot", (R, E), dp))  # the whole segment's sum
    A2 = A.t().contiguous() * LOG2E
    Rk = torch.mul(tot.unsqueeze(-2), A2, out=_ws("Rk", (R, N, E), dp)).exp2_()
    return dp, us, dup, Bp, D, tot, A2, Rk


def forward(u, delta, A, Bm, C, P: SegmentPlan, block: Optional[int] = None,
            out: Optional[torch.Tensor] = None):
    """``(y (Bt, Q, E), H (Bt, K, N, E))``: the reads and the state at each segment's end,
    written into ``out`` (``Bt * K * N * E`` contiguous elements; a new tensor when None)."""
    Bt, L, E = u.shape
    N = A.shape[1]
    dp, us, dup, Bp, D, tot, A2, Rk = _common(u, delta, A, Bm, P)
    rows = Bt * P.K
    Z = (u.new_empty(rows * N * E) if out is None else out).view(rows, N, E)
    # state-major blocks (s, N, Tm, E): the sum over the slots weighted by B is then one batched
    # product per (segment, state) instead of a multiply and a sum over a middle dimension
    BT = Bp.transpose(1, 2).contiguous().unsqueeze(2)  # (R, N, 1, Tm)
    A2s = A2.unsqueeze(1)  # (N, 1, E)
    for sl in _blocks(P, rows, N, E, block):
        W = _ws("w0", (sl.stop - sl.start, N, P.Tm, E), u)
        torch.mul(D[sl].unsqueeze(1), A2s, out=W).exp2_().mul_(dup[sl].unsqueeze(1))
        torch.matmul(BT[sl], W, out=Z[sl].unsqueeze(2))
    H = Z.view(Bt, P.K, N, E)
    Rv = Rk.view(Bt, P.K, N, E)
    for k in range(1, P.K):
        H[:, k].addcmul_(Rv[:, k], H[:, k - 1])
    hr = H if P.direct else torch.index_select(H, 1, P.kq, out=_ws("hr", (Bt, P.kq.shape[0], N, E), u))
    y = torch.matmul(C.unsqueeze(-2), hr).squeeze(-2)
    return (y if P.all_ok else y * P.ok.view(1, -1, 1).to(y.dtype)), H


def backward(gy, u, delta, A, Bm, C, H, P: SegmentPlan, block: Optional[int] = None):
    """Gradients of ``u, delta, A, Bm, C`` from ``gy (Bt, Q, E)`` and the saved ``H``."""
    Bt, L, E = u.shape
    N, K, Tm = A.shape[1], P.K, P.Tm
    if not P.all_ok:
        gy = gy * P.ok.view(1, -1, 1).to(gy.dtype)
    Q = P.kq.shape[0]
    hr = H if P.direct else torch.index_select(H, 1, P.kq, out=_ws("hr", (Bt, Q, N, E), u))
    prod = _ws("prod", (Bt, Q, N, E), u)
    gC = torch.mul(hr, gy.unsqueeze(-2), out=prod).sum(-1)  # (Bt, Q, N); a batched matvec is slower
    G = _ws("G", (Bt, K, N, E), u)
    if P.direct:
        torch.mul(C.unsqueeze(-1), gy.unsqueeze(-2), out=G)
    else:
        G.zero_().index_add_(1, P.kq, torch.mul(C.unsqueeze(-1), gy.unsqueeze(-2), out=prod))
    dp, us, dup, Bp, D, tot, A2, Rk = _common(u, delta, A, Bm, P)
    Rv = Rk.view(Bt, K, N, E)
    for k in range(K - 2, -1, -1):  # adjoint at each segment's end, chained from the last
        G[:, k].addcmul_(Rv[:, k + 1], G[:, k + 1])
    # segment decays R_k = exp(A tot_k) multiply H_{k-1}: their exponent's gradient
    gl = _ws("gl", (Bt, K, N, E), u)
    gl[:, 0].zero_()
    torch.mul(G[:, 1:], H[:, :-1], out=gl[:, 1:]).mul_(Rv[:, 1:])
    gl = gl.view(-1, N, E)
    At = A2 / LOG2E  # (N, E)
    tmp = _ws("gl2", gl.shape, u)  # (fresh multi-megabyte temporaries cost their page faults)
    gA = torch.mul(gl, tot.unsqueeze(-2), out=tmp).sum(0)
    gtot = torch.mul(gl, At, out=tmp).sum(-2)  # (R, E)
    rows = Bt * K
    Gf = G.view(rows, N, E)
    g_dup = _ws("g_dup", (rows, Tm, E), u)
    # dense: the slot gradients are the position gradients (returned, so not in scratch)
    gBp = u.new_empty(rows, Tm, N) if P.dense else _ws("gBp", (rows, Tm, N), u)
    gD = _ws("gD", (rows, Tm, E), u)
    X = torch.mul(dup, D, out=_ws("X", dup.shape, u))
    gAf = gA.view(-1)
    ones = u.new_ones(min(rows, _block_rows(P, N, E, block)) * Tm)
    for sl in _blocks(P, rows, N, E, block):
        V = _weights(P, D, A2, sl, "w0").mul_(Gf[sl].unsqueeze(1))  # dL/dh at every slot
        tmp = _ws("w1", V.shape, V)
        torch.sum(torch.mul(V, dup[sl].unsqueeze(-2), out=tmp), -1, out=gBp[sl])
        V.mul_(Bp[sl].unsqueeze(-1))
        torch.sum(V, -2, out=g_dup[sl])
        torch.sum(torch.mul(V, At, out=tmp), -2, out=gD[sl])
        n = (sl.stop - sl.start) * Tm  # the sum over (segments, slots) as a matrix-vector
        gAf.addmv_(V.mul_(X[sl].unsqueeze(-2)).view(n, N * E).t(), ones[:n])  # product: faster
    gD.mul_(dup)
    # D_j = sum of dp after j, tot = sum of dp: back to the slots' delta
    g_dp = _prefix(gD, u.new_empty(gD.shape) if P.dense else X).add_(gtot.unsqueeze(1))
    g_delta_s = g_dp.addcmul_(g_dup, us)
    g_u_s = torch.mul(g_dup, dp) if P.dense else g_dup.mul_(dp)
    return (
        _unslot(g_u_s, P, Bt, L), _unslot(g_delta_s, P, Bt, L), gA.t().contiguous(),
        _unslot(gBp, P, Bt, L), gC,
    )


def _suffix(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[:, j] = sum_{j' > j} x[:, j']`` along dim 1 (a few slice adds: faster than a
    batched triangular matmul or a cumsum over a middle dimension)."""
    out[:, -1].zero_()
    for j in range(x.shape[1] - 2, -1, -1):
        torch.add(out[:, j + 1], x[:, j + 1], out=out[:, j])
    return out


def _prefix(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[:, j] = sum_{j' < j} x[:, j']`` along dim 1 (the adjoint of :func:`_suffix`)."""
    out[:, 0].zero_()
    for j in range(1, x.shape[1]):
        torch.add(out[:, j - 1], x[:, j - 1], out=out[:, j])
    return out


def _unslot(g: torch.Tensor, P: SegmentPlan, Bt: int, L: int) -> torch.Tensor:
    """Slot gradients ``(Bt * K, Tm, F)`` back to positions ``(Bt, L, F)`` (zero after the last
    read position)."""
    F = g.shape[-1]
    g = g.view(Bt, -1, F)
    if P.dense:  # g is a new tensor with the positions in order
        return g
    n = P.slot_of.shape[0]
    if n == L:
        return g.index_select(1, P.slot_of)
    out = g.new_zeros(Bt, L, F)
    out[:, :n] = g.index_select(1, P.slot_of)
    return out

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
    ``ok``: ``read >= 0``.
    """

    def __init__(self, ends: torch.Tensor, read: torch.Tensor, Tm: int):
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
    return SegmentPlan(ends, read, Tm)


def _slots(x: torch.Tensor, P: SegmentPlan, slot: str) -> torch.Tensor:
    """``x (Bt, L, F)`` gathered into slots ``(Bt * K, Tm, F)``, in a reused buffer."""
    Bt, F = x.shape[0], x.shape[-1]
    out = _ws(slot, (Bt, P.K * P.Tm, F), x)
    torch.index_select(x, 1, P.flat, out=out)
    return out.view(Bt * P.K, P.Tm, F)


def _blocks(P: SegmentPlan, rows: int, N: int, E: int, block: Optional[int]):
    per = P.Tm * N * E
    sb = max(1, min(rows, (BLOCK_ELEMS if block is None else block) // per))
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
    dp = _slots(delta, P, "dp")
    dp.view(Bt, -1, E).mul_(P.mask.to(dp.dtype))
    us = _slots(u, P, "us")
    dup = torch.mul(dp, us, out=_ws("dup", dp.shape, dp))
    Bp = _slots(Bm, P, "Bp")
    D = _suffix(dp, _ws("D", dp.shape, dp))
    tot = dp.sum(1)
    A2 = A.t().contiguous() * LOG2E
    Rk = torch.mul(tot.unsqueeze(-2), A2, out=_ws("Rk", (R, N, E), dp)).exp2_()
    return dp, us, dup, Bp, D, tot, A2, Rk


def forward(u, delta, A, Bm, C, P: SegmentPlan, block: Optional[int] = None):
    """``(y (Bt, Q, E), H (Bt, K, N, E))``: the reads and the state at each segment's end
    (``H`` lives in a reused buffer: copy it to keep it)."""
    Bt, L, E = u.shape
    N = A.shape[1]
    dp, us, dup, Bp, D, tot, A2, Rk = _common(u, delta, A, Bm, P)
    rows = Bt * P.K
    Z = _ws("Z", (rows, N, E), u)
    for sl in _blocks(P, rows, N, E, block):
        W = _weights(P, D, A2, sl, "w0")
        W.mul_(dup[sl].unsqueeze(-2)).mul_(Bp[sl].unsqueeze(-1))
        torch.sum(W, 1, out=Z[sl])
    H = Z.view(Bt, P.K, N, E)
    Rv = Rk.view(Bt, P.K, N, E)
    for k in range(1, P.K):
        H[:, k].addcmul_(Rv[:, k], H[:, k - 1])
    hr = torch.index_select(H, 1, P.kq, out=_ws("hr", (Bt, P.kq.shape[0], N, E), u))
    y = torch.matmul(C.unsqueeze(-2), hr).squeeze(-2)
    return y * P.ok.view(1, -1, 1).to(y.dtype), H


def backward(gy, u, delta, A, Bm, C, H, P: SegmentPlan, block: Optional[int] = None):
    """Gradients of ``u, delta, A, Bm, C`` from ``gy (Bt, Q, E)`` and the saved ``H``."""
    Bt, L, E = u.shape
    N, K, Tm = A.shape[1], P.K, P.Tm
    gy = gy * P.ok.view(1, -1, 1).to(gy.dtype)
    hr = torch.index_select(H, 1, P.kq, out=_ws("hr", (Bt, P.kq.shape[0], N, E), u))
    gC = torch.matmul(hr, gy.unsqueeze(-1)).squeeze(-1)  # (Bt, Q, N)
    G = _ws("G", (Bt, K, N, E), u).zero_()
    G.index_add_(1, P.kq, torch.mul(C.unsqueeze(-1), gy.unsqueeze(-2), out=hr))
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
    gA = (gl * tot.unsqueeze(-2)).sum(0)
    gtot = (gl * At).sum(-2)  # (R, E)
    rows = Bt * K
    Gf = G.view(rows, N, E)
    g_dup = _ws("g_dup", (rows, Tm, E), u)
    gBp = _ws("gBp", (rows, Tm, N), u)
    gD = _ws("gD", (rows, Tm, E), u)
    X = torch.mul(dup, D, out=_ws("X", dup.shape, u))
    for sl in _blocks(P, rows, N, E, block):
        V = _weights(P, D, A2, sl, "w0").mul_(Gf[sl].unsqueeze(1))  # dL/dh at every slot
        tmp = _ws("w1", V.shape, V)
        torch.sum(torch.mul(V, dup[sl].unsqueeze(-2), out=tmp), -1, out=gBp[sl])
        V.mul_(Bp[sl].unsqueeze(-1))
        torch.sum(V, -2, out=g_dup[sl])
        torch.sum(torch.mul(V, At, out=tmp), -2, out=gD[sl])
        gA += V.mul_(X[sl].unsqueeze(-2)).sum((0, 1))
    gD.mul_(dup)
    # D_j = sum of dp after j, tot = sum of dp: back to the slots' delta
    g_dp = _prefix(gD, X).add_(gtot.unsqueeze(1))
    g_delta_s = g_dp.addcmul_(g_dup, us)
    g_u_s = g_dup.mul_(dp)
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
    n = P.slot_of.shape[0]
    if n == L:
        return g.index_select(1, P.slot_of)
    out = g.new_zeros(Bt, L, F)
    out[:, :n] = g.index_select(1, P.slot_of)
    return out

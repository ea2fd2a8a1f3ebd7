"""Per-key-set inputs as slices instead of gathers, when a bucket's positions are strided blocks.

A bucket of key sets (:func:`~canvas_core.runtime.key_sets.shape_buckets`) stacks ``G`` key sets
of one shape: query positions ``Q (G, nq)`` and key positions ``K (G, nk)``.  In a canvas layer
these are usually one region's run of positions in every frame, so that for one period ``S``
(the frame's size)::

    Q[g, j] = lo + q_off + g S + j        K[g, j] = lo + k_off + g S + j

with both runs inside the window ``[lo, lo + S)`` of every period (``g`` counting up, or down).  Then the stacked inputs
``(B*G, nq, D)`` / ``(B*G, nk, D)`` are slices of ``x[:, lo:lo + G S].view(B, G, S, D)``: the
runtime takes them with ``split`` (or ``narrow`` when the two runs overlap) and one contiguous
copy each, the very tensors an ``index_select`` would have made.  What changes is the backward:
a ``split``'s gradient is one concatenation of its pieces (zeros only for the gaps between them),
where an ``index_select``'s is a zero-filled ``(B, N, D)`` tensor plus an ``index_add``.

:func:`strided_blocks` decides this once, when the plan runner is built (numpy), which then
restacks a decreasing stack in increasing order (no flip forward or backward; the key sets of a
bucket are independent rows); :func:`block_inputs` is what runs.  Anything else keeps the gathers of
:func:`~canvas_core.runtime.type_call.run_flat_buckets`.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

__all__ = ["strided_blocks", "block_inputs"]


def strided_blocks(Q: np.ndarray, K: np.ndarray, n: int) -> Optional[Tuple[int, int, int, int, bool]]:
    """``(lo, S, q_off, k_off, reverse)`` when the bucket's ``Q (G, nq)`` / ``K (G, nk)`` are the
    strided blocks of the module docstring inside ``[0, n)``, stacked in increasing order of
    position or, with ``reverse``, in decreasing order (how the distinct key sets of a layer's
    frames usually come out of ``np.unique``); None otherwise (the gathers are used)."""
    Q, K = np.asarray(Q, dtype=np.int64), np.asarray(K, dtype=np.int64)
    if Q.ndim != 2 or K.ndim != 2 or Q.shape[0] != K.shape[0] or Q.size == 0 or K.size == 0:
        return None
    G, nq = Q.shape
    nk = K.shape[1]
    reverse = G > 1 and Q[1, 0] < Q[0, 0]
    if reverse:
        Q, K = Q[::-1], K[::-1]
    q0, k0 = int(Q[0, 0]), int(K[0, 0])
    start, end = min(q0, k0), max(q0 + nq, k0 + nk)
    if G == 1:
        S = end - start
    else:
        S = int(Q[1, 0] - Q[0, 0])
        if S != int(K[1, 0] - K[0, 0]) or S <= 0:
            return None
    if end - start > S or G * S > n:
        return None
    lo = min(start, n - G * S)  # the window may start before the first run, so the last fits in n
    if lo < 0 or lo < end - S:
        return None
    step = np.arange(G, dtype=np.int64)[:, None] * S
    if not (np.array_equal(Q, q0 + step + np.arange(nq)) and np.array_equal(K, k0 + step + np.arange(nk))):
        return None
    return lo, S, q0 - lo, k0 - lo, bool(reverse)


def _pieces(x, lo: int, S: int, G: int, runs: List[Tuple[int, int]]):
    """``x[:, lo:lo + G S]`` viewed ``(B, G, S, D)`` and cut along the period by ONE ``split`` into
    the given disjoint runs ``(offset, length)`` (and the gaps between them): one view per run."""
    B, N, D = x.shape
    span = G * S
    xs = x if lo == 0 and span == N else x.split([lo, span, N - lo - span], dim=1)[1]
    xs = xs.view(B, G, S, D)
    cuts: List[int] = []
    index = {}
    at = 0
    for off, ln in sorted(set(runs)):
        if off > at:
            cuts.append(off - at)
        index[(off, ln)] = len(cuts)
        cuts.append(ln)
        at = off + ln
    if at < S:
        cuts.append(S - at)
    parts = xs.split(cuts, dim=2) if len(cuts) > 1 else (xs,)
    return [parts[index[r]] for r in runs]


def block_inputs(x, blocks: Tuple[int, int, int, int, bool], G: int, nq: int, nk: int, contiguous: bool = True):
    """``(q (B*G, nq, D), k (B*G, nk, D))`` of one bucket read from ``x`` ``(B, N, D)`` by slices
    (``blocks`` from :func:`strided_blocks`); equal to the gathers, contiguous as they are.  With
    ``contiguous=False`` they may stay strided views of ``x`` (no copy; same values and
    gradients), for a module that reads strided inputs without copying them itself.

    The gradient reaching ``x`` is the gathers' too, bit for bit: disjoint runs come from one
    ``split`` (one gradient, each position written once); overlapping runs (a self link) are cut
    from their union, so the two gradients are summed before they reach ``x``, as the one
    ``index_add`` of a batch-1 gather sums them; with a larger batch the gathers are two, and so
    are the slices.  A stack in decreasing order is flipped (the copy the gather would make); the
    plan runner restacks such buckets in increasing order when it is built (``plan_runner``), so
    it no longer sends one."""
    lo, S, q_off, k_off, reverse = blocks
    B, _, D = x.shape
    if q_off + nq <= k_off or k_off + nk <= q_off:
        q, k = _pieces(x, lo, S, G, [(q_off, nq), (k_off, nk)])
    elif B == 1:
        u0 = min(q_off, k_off)
        union, = _pieces(x, lo, S, G, [(u0, max(q_off + nq, k_off + nk) - u0)])
        q, k = union.narrow(2, q_off - u0, nq), union.narrow(2, k_off - u0, nk)
    else:
        q, = _pieces(x, lo, S, G, [(q_off, nq)])
        k, = _pieces(x, lo, S, G, [(k_off, nk)])
    if reverse:
        q, k = q.flip(1), k.flip(1)
    q, k = q.reshape(B * G, nq, D), k.reshape(B * G, nk, D)
    return (q.contiguous(), k.contiguous()) if contiguous else (q, k)

"""Index arithmetic of the reference kernel (numpy only, run once when a kernel is built).

* :func:`segment_buckets`: the ``segments`` mode's classes of queries that read the same keys
  with the same weights, packed into a few equally shaped batches;
* :func:`slot_layout`: the ``sparse`` mode's padded slot coordinates, where no block of
  ``block_size`` positions spans two region-frames;
* :func:`bucket_counts`: how many key blocks each query block is padded to.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from canvas_core.compiler.plan import ExecutionPlan, RectGroup, SegmentGrid

__all__ = ["Segments", "segment_buckets", "slot_layout", "bucket_counts", "is_arange"]


def bucket_counts(counts: np.ndarray, limit: int, ratio: float = 1.25) -> np.ndarray:
    """Padded key-block count of each query block: exact when there are few distinct counts,
    else rounded up to a geometric ladder (waste <= ratio - 1), to keep a handful of buckets."""
    distinct = np.unique(counts[counts > 0])
    if len(distinct) <= 8:
        return counts.copy()
    ladder, v = [], 1
    while v < limit:
        ladder.append(v)
        v = max(v + 1, int(math.ceil(v * ratio)))
    ladder.append(limit)
    lad = np.asarray(ladder)
    idx = np.searchsorted(lad, np.maximum(counts, 1))
    return np.where(counts > 0, lad[np.minimum(idx, len(lad) - 1)], 0)




def is_arange(a: np.ndarray, n: int) -> bool:
    return len(a) == n and bool(np.all(a == np.arange(n)))


class Segments:
    """Buckets of the ``segments`` mode (see :func:`segment_buckets`)."""

    def __init__(self, buckets, out_index, work):
        self.buckets = buckets      # [(nb, nq, nk, q_index (nb*nq,), k_index (nb*nk,), bias|None)]
        self.out_index = out_index  # (N,) canonical position -> row of the concatenated outputs
        self.work = work            # gathered (query, key) pairs, padding included


def segment_buckets(plan: ExecutionPlan, sg: SegmentGrid, max_buckets: Optional[int]):
    """Group the queries of one fn type into classes with identical weight rows and bucket them.

    ``sg``: the type's :class:`SegmentGrid` over the ``plan.n`` packed positions.

    A class is a set of query positions (canonical) sharing the key set ``K`` and the per-key
    weights; a bucket holds classes with the same ``(|K|, |Q|)`` (or the same ``|K|`` with the
    query lists padded by repeating a position whose output is discarded), so one batched SDPA
    computes it with no padded key.  Returns None when more than ``max_buckets`` buckets (None:
    no limit) would be needed or padding would waste more than a quarter of the work.
    """
    n = int(plan.n)
    grid = sg.grid
    rows_with_keys = np.flatnonzero((grid > 0).any(axis=1))
    out_index = np.full(n, -1, dtype=np.int64)
    if len(rows_with_keys) == 0:
        return Segments([], np.zeros(n, dtype=np.int64), 0.0)
    patterns, cls = np.unique(grid[rows_with_keys], axis=0, return_inverse=True)
    cls = np.asarray(cls).reshape(-1)
    if max_buckets is not None and len(patterns) > 64 * max_buckets:
        return None
    rb, cb = sg.row_bounds, sg.col_bounds
    perm = plan.perm
    classes = []  # (q canonical, k canonical, k weight)
    for c in range(len(patterns)):
        segs = rows_with_keys[cls == c]
        q_packed = np.concatenate([np.arange(rb[a], rb[a + 1]) for a in segs])
        cols = np.flatnonzero(patterns[c] > 0)
        k_packed = np.concatenate([np.arange(cb[b], cb[b + 1]) for b in cols])
        k_w = np.repeat(patterns[c][cols], np.diff(cb)[cols])
        # canonical order inside a class: contiguous reads, and a class covering every
        # position becomes the identity (no gather at all)
        q_can = np.sort(perm[q_packed])
        k_can = perm[k_packed]
        order = np.argsort(k_can, kind="stable")
        classes.append((q_can, k_can[order], k_w[order]))
    exact = {}
    for c, (qc, kc, _) in enumerate(classes):
        exact.setdefault((len(kc), len(qc)), []).append(c)
    groups = list(exact.values())
    if max_buckets is not None and len(groups) > max_buckets:
        by_k = {}
        for c, (_, kc, _) in enumerate(classes):
            by_k.setdefault(len(kc), []).append(c)
        groups = list(by_k.values())
        if len(groups) > max_buckets:
            return None
    buckets, work, real, offset = [], 0.0, 0.0, 0
    for members in groups:
        nq = max(len(classes[c][0]) for c in members)
        nk = len(classes[members[0]][1])
        qi = np.zeros((len(members), nq), dtype=np.int64)
        ki = np.zeros((len(members), nk), dtype=np.int64)
        w = np.ones((len(members), nk))
        for r, c in enumerate(members):
            qc, kc, kw = classes[c]
            qi[r, : len(qc)] = qc
            qi[r, len(qc):] = qc[0]  # padding rows: any real query, output discarded
            ki[r], w[r] = kc, kw
            out_index[qc] = offset + r * nq + np.arange(len(qc))
            real += len(qc) * nk
        bias = None if np.all(w == 1.0) else np.log(w)
        buckets.append((len(members), nq, nk, qi.reshape(-1), ki.reshape(-1), bias))
        work += len(members) * nq * nk
        offset += len(members) * nq
    if max_buckets is not None and work > 1.25 * real:
        return None
    out_index[out_index < 0] = offset  # the zero row appended after the buckets
    return Segments(buckets, out_index, work)


def slot_layout(plan: ExecutionPlan, group: RectGroup, bs: int):
    """Pad every packed piece (cut at region-frame run boundaries) to a multiple of ``bs``.

    Returns ``slot_packed`` (``(n_slots,)`` packed index of each slot, -1 for padding) and the
    group's rectangles mapped to slot coordinates (a rectangle crossing pieces is split).
    Falls back to one piece (no padding inside) when padding would more than double N.
    """
    n = plan.n
    cuts = {0, n, int(plan.n_covered)}
    for frames in plan.region_blocks.values():
        for runs in frames.values():
            for a, b in runs:
                cuts.update((a, b))
    cuts = np.asarray(sorted(cuts), dtype=np.int64)
    lens = np.diff(cuts)
    plen = -(-lens // bs) * bs
    if plen.sum() > 2 * n + bs:
        cuts = np.asarray([0, n], dtype=np.int64)
        lens = np.diff(cuts)
        plen = -(-lens // bs) * bs
    slot_start = np.concatenate([[0], np.cumsum(plen)[:-1]]).astype(np.int64)
    n_slots = int(plen.sum())
    slot_packed = np.full(n_slots, -1, dtype=np.int64)
    for a, L, s0 in zip(cuts[:-1], lens, slot_start):
        slot_packed[s0:s0 + L] = np.arange(a, a + L)

    def split(lo, hi):
        """Split ranges [lo, hi) at the cuts; return (owner, slot_lo, slot_hi)."""
        pa = np.searchsorted(cuts, lo, side="right") - 1
        pz = np.searchsorted(cuts, hi, side="left")
        owner = np.repeat(np.arange(len(lo)), np.maximum(pz - pa, 0))
        piece = np.concatenate([np.arange(x, y) for x, y in zip(pa, pz)]) if len(lo) else np.zeros(0, np.int64)
        piece = piece.astype(np.int64)
        a = np.maximum(lo[owner], cuts[piece])
        b = np.minimum(hi[owner], cuts[piece + 1])
        keep = b > a
        owner, piece, a, b = owner[keep], piece[keep], a[keep], b[keep]
        return owner, slot_start[piece] + (a - cuts[piece]), slot_start[piece] + (b - cuts[piece])

    qo, qa, qz = split(group.q0, group.q1)
    ko, ka, kz = split(group.k0, group.k1)
    # cross product of the query pieces and key pieces of each rectangle
    R = group.n_rects
    cq = np.bincount(qo, minlength=R)
    ck = np.bincount(ko, minlength=R)
    oq = np.cumsum(cq) - cq  # owner arrays are sorted, so each rectangle's pieces are contiguous
    ok = np.cumsum(ck) - ck
    npairs = cq * ck
    owner = np.repeat(np.arange(R), npairs)
    idx = np.arange(int(npairs.sum())) - np.repeat(np.cumsum(npairs) - npairs, npairs)
    ckr = np.maximum(ck[owner], 1)
    qi = (oq[owner] + idx // ckr).astype(np.int64)
    ki = (ok[owner] + idx % ckr).astype(np.int64)
    w = group.weight[qo[qi]] if len(qi) else np.zeros(0)
    return slot_packed, qa[qi], qz[qi], ka[ki], kz[ki], w



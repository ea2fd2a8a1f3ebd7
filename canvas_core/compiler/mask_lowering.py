"""Rectangles of a connection with a tile or sparse mask, built with numpy over all its mask
pairs and temporal links at once (used by :func:`canvas_core.compiler.lowering.lower`).

The rectangles are those of the plain nested loops (pairs, then links, then query runs, then
key runs), in that order: for mask pair ``(S, D)`` and link ``(lo, hi, t, w)``, the query runs
are the maximal runs of the sorted packed positions of ``S`` on frames ``lo <= f < hi``, the key
runs those of ``D`` on frame ``t``, and every (query run, key run) is one rectangle of weight ``w``.

Runs only depend on (pair, frame) for keys and on (pair, frame range) for queries, so each is
computed once, as a table sorted by its key; a (pair, link) looks its runs up by binary search.
"""

from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = ["RectArrays", "mask_pair_rects", "merged_runs"]

Links = Sequence[Tuple[int, int, int, float]]
_I64 = np.int64


class RectArrays(NamedTuple):
    """Rectangles as parallel ``(R,)`` arrays: int64 packed bounds ``q0, q1, k0, k1`` (half-open)
    and float64 weights ``w``."""

    q0: np.ndarray
    q1: np.ndarray
    k0: np.ndarray
    k1: np.ndarray
    w: np.ndarray

    @classmethod
    def empty(cls) -> "RectArrays":
        z = np.zeros(0, dtype=_I64)
        return cls(z, z.copy(), z.copy(), z.copy(), np.zeros(0, dtype=np.float64))

    @classmethod
    def from_tuples(cls, rects: Sequence[Tuple[int, int, int, int, float]]) -> "RectArrays":
        """From a list of ``(q0, q1, k0, k1, w)`` tuples, in order."""
        if not rects:
            return cls.empty()
        ints = np.array([r[:4] for r in rects], dtype=_I64)
        w = np.fromiter((r[4] for r in rects), dtype=np.float64, count=len(rects))
        return cls(ints[:, 0].copy(), ints[:, 1].copy(), ints[:, 2].copy(), ints[:, 3].copy(), w)

    @property
    def n(self) -> int:
        """How many rectangles."""
        return int(self.q0.shape[0])


def _flatten(lists: Sequence[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
    """``(values, owner)``: the lists (int64 arrays, or sequences of ints) concatenated as int64
    and, per value, its list's index."""
    arrays = [np.asarray(x, dtype=_I64).reshape(-1) for x in lists]
    lens = np.fromiter((a.size for a in arrays), dtype=_I64, count=len(arrays))
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=_I64)
    return values, np.repeat(np.arange(len(arrays), dtype=_I64), lens)


def _runs(group: np.ndarray, packed: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of consecutive values within each group; inputs ``(n,)`` sorted by
    ``(group, packed)``.  Returns ``(group, start, stop)`` per run, in that order."""
    if packed.size == 0:
        return np.zeros(0, _I64), np.zeros(0, _I64), np.zeros(0, _I64)
    cut = np.flatnonzero((np.diff(packed) != 1) | (np.diff(group) != 0)) + 1
    first = np.concatenate(([0], cut))
    last = np.concatenate((cut, [packed.size])) - 1
    return group[first], packed[first], packed[last] + 1


def _sorted_runs(group: np.ndarray, packed: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((packed, group))
    return _runs(group[order], packed[order])


class _RunTable:
    """Runs stored back to back; a lookup gives each (pair, link) its span ``[begin, end)``."""

    def __init__(self) -> None:
        self.starts: List[np.ndarray] = []
        self.stops: List[np.ndarray] = []
        self.size = 0

    def add(self, key: np.ndarray, start: np.ndarray, stop: np.ndarray, want: np.ndarray
            ) -> Tuple[np.ndarray, np.ndarray]:
        """Append runs (sorted by ``key``); return the spans of the runs whose key is ``want``."""
        begin = np.searchsorted(key, want, side="left") + self.size
        end = np.searchsorted(key, want, side="right") + self.size
        self.starts.append(start)
        self.stops.append(stop)
        self.size += int(start.size)
        return begin, end

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        if not self.starts:
            return np.zeros(0, _I64), np.zeros(0, _I64)
        return np.concatenate(self.starts), np.concatenate(self.stops)


def _query_spans(owner: np.ndarray, canon: np.ndarray, packed: np.ndarray, frame: np.ndarray, n_frames: int,
                 pair: np.ndarray, lo: np.ndarray, hi: np.ndarray, table: _RunTable
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Spans of the query runs of each (pair, link): one-frame links share a per-(pair, frame)
    table; each other frame range (few: one per connection in practice) gets its own."""
    begin = np.zeros(pair.size, dtype=_I64)
    end = np.zeros(pair.size, dtype=_I64)
    one = (hi - lo) == 1
    if one.any():
        key, start, stop = _sorted_runs(owner * n_frames + frame, packed)
        begin[one], end[one] = table.add(key, start, stop, pair[one] * n_frames + lo[one])
    ranges = np.unique(np.stack([lo[~one], hi[~one]], axis=1), axis=0) if (~one).any() else ()
    for a, b in ranges:
        sel = (frame >= a) & (frame < b)
        key, start, stop = _sorted_runs(owner[sel], packed[sel])
        use = ~one & (lo == a) & (hi == b)
        begin[use], end[use] = table.add(key, start, stop, pair[use])
    return begin, end


def mask_pair_rects(pairs: Sequence[Tuple[Sequence[int], Sequence[int]]], inv: np.ndarray, vol: int,
                    links: Links) -> Tuple[RectArrays, Tuple[np.ndarray, np.ndarray]]:
    """Rectangles of the mask pairs ``[(src canonical indices, dst canonical indices), ...]`` (int64
    ``(n,)`` arrays, as :func:`~canvas_core.schema.mask_pairs.mask_index_arrays` gives, or lists) x the
    temporal ``links`` (``(src_lo, src_hi, dst_frame, w)``), in the order of the module docstring,
    and the query runs they use ``(starts, stops)`` (their union is that of the rectangles' query
    ranges, from far fewer ranges).

    ``inv``: ``(N,)`` packed position of each canonical position; ``vol``: positions per frame.
    """
    none = np.zeros(0, dtype=_I64)
    if not pairs or not links:
        return RectArrays.empty(), (none, none)
    src, s_owner = _flatten([s for s, _ in pairs])
    dst, d_owner = _flatten([d for _, d in pairs])
    n_frames = max(1, inv.size // max(1, vol))
    lo, hi, t = (np.fromiter((link[j] for link in links), dtype=_I64, count=len(links)) for j in range(3))
    w = np.fromiter((link[3] for link in links), dtype=np.float64, count=len(links))
    n_pairs, n_links = len(pairs), len(links)
    pair = np.repeat(np.arange(n_pairs, dtype=_I64), n_links)  # (pair, link) pair-major
    link = np.tile(np.arange(n_links, dtype=_I64), n_pairs)
    keys, queries = _RunTable(), _RunTable()
    key, start, stop = _sorted_runs(d_owner * n_frames + dst // vol, inv[dst])
    kb, ke = keys.add(key, start, stop, pair * n_frames + t[link])
    qb, qe = _query_spans(s_owner, src, inv[src], src // vol, n_frames, pair, lo[link], hi[link], queries)
    live = (qe > qb) & (ke > kb)
    qb, qe, kb, nk, link = qb[live], qe[live], kb[live], (ke - kb)[live], link[live]
    q_start, q_stop = queries.arrays()
    k_start, k_stop = keys.arrays()
    # one row per (pair-link, query run), then each row repeated once per key run of its pair-link
    nq = qe - qb
    row = np.repeat(np.arange(nq.size, dtype=_I64), nq)
    qi = np.arange(row.size, dtype=_I64) - np.repeat(np.cumsum(nq) - nq - qb, nq)
    per_row = nk[row]
    first = np.cumsum(per_row) - per_row  # the row's first rectangle
    ki = np.arange(int(per_row.sum()), dtype=_I64) + np.repeat(kb[row] - first, per_row)
    rects = RectArrays(np.repeat(q_start[qi], per_row), np.repeat(q_stop[qi], per_row),
                       k_start[ki], k_stop[ki], np.repeat(w[link[row]], per_row))
    used = np.cumsum(np.bincount(qb, minlength=queries.size + 1)
                     - np.bincount(qe, minlength=queries.size + 1))[: queries.size] > 0
    return rects, (q_start[used], q_stop[used])


def merged_runs(q0: np.ndarray, q1: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The union of the ranges ``[q0, q1)`` as disjoint, non-touching ``(starts, stops)``,
    ascending (ranges that overlap or touch are merged)."""
    if q0.size == 0:
        return q0[:0], q1[:0]
    order = np.lexsort((q1, q0))
    a, b = q0[order], np.maximum.accumulate(q1[order])
    new = np.flatnonzero(a[1:] > b[:-1]) + 1  # a range that starts past every earlier stop
    first = np.concatenate(([0], new))
    last = np.concatenate((new, [a.size])) - 1
    return a[first], b[last]

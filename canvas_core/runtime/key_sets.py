"""Key sets of a non-softmax group, computed once when a plan runner is built (numpy, no ``(N, N)``).

A fn group g links each of its queries p to a key set ``D_g(p)``.  Queries in the same row segment
of the group's :class:`~canvas_core.compiler.plan.SegmentGrid` share their key set, so the distinct
key sets are found among the (few) distinct row segments, never among all queries.

**Query blocks.**  A type that scans or compresses places its queries' reads along its key set
(``p(i) = ceil((i + 1) Nk / Nq) - 1`` for the builtin scans), so which queries share one call
decides what each reads.  The runtime never lets one query block's reads depend on another's:
a *query block* is the set of queries that the same connections of the type link, at one canvas
frame when one of those connections is tied to a source frame (``t_src`` set), across all frames
when none is.  Two blocks with equal key sets (two regions reading the same keys, or two frames
that a ``hold`` / ``interpolate`` fill points at one key frame) are two calls, stacked along the
batch: a held frame reads its key set exactly as the frame it holds does.
:func:`query_block_ids` tells the blocks apart.

* :func:`group_key_sets` gives, for the queries and keys of the group (packed order, as the runner
  lists them), the key-set id of every query ``(Nq,)`` and the distinct sets ``(U, Nk)`` bool.
  ``sets[set_of_query]`` is the ``(Nq, Nk)`` ``key_mask`` an exact-mask type is given.
* :func:`shape_buckets` stacks the key sets of equal shape ``(nq, nk)``: one ``(Q (G, nq),
  K (G, nk))`` pair of index arrays per distinct shape, queries and keys sorted by the index they
  are given (canonical position order in a canvas layer, token order in a backbone), which is
  the order a per-key-set type (a scan) reads them in.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["group_key_sets", "shape_buckets", "query_block_ids", "frame_of_packed", "merge_cover"]


def merge_cover(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: positions covered by at least one range ``[lo_i, hi_i)``."""
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    return np.cumsum(diff)[:n] > 0


def frame_of_packed(plan: Any) -> np.ndarray:
    """``(n,)`` int64 canvas frame of each packed position of ``plan`` (-1: no region covers it);
    read from ``plan.region_blocks``, so it also holds for a plan compacted to a backbone's tokens."""
    out = np.full(int(plan.n), -1, dtype=np.int64)
    for frames in plan.region_blocks.values():
        for t, runs in frames.items():
            for a, b in runs:
                out[a:b] = t
    return out


def query_block_ids(plan: Any, group: Any, row_bounds: np.ndarray) -> np.ndarray:
    """``(n,)`` int64: an id per packed position of ``plan`` such that two queries of ``group`` (a
    :class:`~canvas_core.compiler.plan.RectGroup`) share an id exactly when they are in one query
    block (module docstring, "Query blocks"): the same connections of the group link them and,
    when one of those has ``t_src`` set, they lie in the same canvas frame.  ``row_bounds``: the
    group's segment grid rows.  (A rectangle may span several frames: the lowering merges the
    query runs of adjacent frames that read the same keys, so frames are told apart here.)"""
    n = int(plan.n)
    S = len(row_bounds) - 1
    conns = np.unique(group.conn)
    cover = np.zeros((S + 1, len(conns)), dtype=np.int64)
    if group.n_rects:
        col = np.searchsorted(conns, group.conn)
        np.add.at(cover, (np.searchsorted(row_bounds, group.q0), col), 1)
        np.add.at(cover, (np.searchsorted(row_bounds, group.q1), col), -1)
    cover = np.cumsum(cover, axis=0)[:S] > 0  # (S, C): which connections link each row segment
    tied = np.array([plan.topology.connections[int(c)].t_src is not None for c in conns], dtype=bool)
    _, cover_id = np.unique(cover, axis=0, return_inverse=True)
    seg_tied = (cover & tied[None, :]).any(axis=1)
    seg = np.repeat(np.arange(S), np.diff(row_bounds))[:n]
    frame = frame_of_packed(plan)
    return cover_id.reshape(-1)[seg] * (int(plan.layout.T) + 2) + np.where(seg_tied[seg], frame + 1, 0)


def group_key_sets(grid: np.ndarray, row_seg: np.ndarray, col_seg: np.ndarray,
                   q_packed: np.ndarray, k_packed: np.ndarray,
                   blocks: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(set_of_query (Nq,) int64, sets (U, Nk) bool)`` for a group's segment grid.

    Args:
        grid: ``(R, C)`` weights of the group's segment grid (0 = no link).
        row_seg, col_seg: ``(n,)`` segment id of each packed row / column.
        q_packed, k_packed: the group's query / key positions (packed), ``(Nq,)`` / ``(Nk,)``.
        blocks: ``(n,)`` query block id of each packed position (:func:`query_block_ids`):
            queries with equal key sets in different blocks get different set ids (rows of
            ``sets`` then repeat).  None: one id per distinct key set.
    """
    nk = len(k_packed)
    if len(q_packed) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, nk), dtype=bool)
    if nk == 0:
        return np.zeros(len(q_packed), dtype=np.int64), np.zeros((1, 0), dtype=bool)
    tag = np.zeros(len(q_packed), dtype=np.int64) if blocks is None else blocks[q_packed]
    pairs, pair_of_q = np.unique(np.stack([row_seg[q_packed], tag], axis=1), axis=0, return_inverse=True)
    # compared on the column segments that hold keys (equal there = equal key sets), expanded once
    cols, col_of_key = np.unique(col_seg[k_packed], return_inverse=True)
    linked = grid[pairs[:, 0]][:, cols] > 0  # (P, C'): one row per (row segment, block)
    uniq, set_of_pair = np.unique(linked, axis=0, return_inverse=True)
    if blocks is not None:  # a set per (key set, block): the same keys may repeat
        combos, set_of_pair = np.unique(np.stack([set_of_pair.reshape(-1), pairs[:, 1]], axis=1), axis=0,
                                        return_inverse=True)
        uniq = uniq[combos[:, 0]]
    sets = uniq[:, col_of_key.reshape(-1)]
    return set_of_pair.reshape(-1)[pair_of_q.reshape(-1)].astype(np.int64), sets


def shape_buckets(set_of_query: np.ndarray, sets: np.ndarray, q_index: np.ndarray, k_index: np.ndarray,
                  coef: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Key sets of equal shape stacked: ``[(Q (G, nq), K (G, nk), C (G * nq,)), ...]``.

    ``q_index`` ``(Nq,)`` / ``k_index`` ``(Nk,)``: the index each query / key has in the tensors
    the runner is given; ``coef`` ``(Nq,)``: each query's mixing coefficient, returned in the
    flattened order of ``Q``.  Queries whose key set is empty are left out (they get 0)."""
    by: Dict[Tuple[int, int], List[Tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    order = np.argsort(set_of_query, kind="stable")
    bounds = np.flatnonzero(np.diff(set_of_query[order])) + 1
    for members in np.split(order, bounds) if len(order) else []:
        keys = np.flatnonzero(sets[set_of_query[members[0]]])
        if len(keys) == 0:
            continue
        qs = members[np.argsort(q_index[members], kind="stable")]
        ks = keys[np.argsort(k_index[keys], kind="stable")]
        by.setdefault((len(qs), len(ks)), []).append((q_index[qs], k_index[ks], coef[qs]))
    out = []
    for items in by.values():
        out.append((np.stack([q for q, _, _ in items]).astype(np.int64),
                    np.stack([k for _, k, _ in items]).astype(np.int64),
                    np.concatenate([c for _, _, c in items])))
    return out

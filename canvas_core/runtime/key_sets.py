"""Key sets of a non-softmax group, computed once when a plan runner is built (numpy, no ``(N, N)``).

A fn group g links each of its queries p to a key set ``D_g(p)``.  Queries in the same row segment
of the group's :class:`~canvas_core.compiler.plan.SegmentGrid` share their key set, so the distinct
key sets are found among the (few) distinct row segments, never among all queries.

* :func:`group_key_sets` gives, for the queries and keys of the group (packed order, as the runner
  lists them), the key-set id of every query ``(Nq,)`` and the distinct sets ``(U, Nk)`` bool.
  ``sets[set_of_query]`` is the ``(Nq, Nk)`` ``key_mask`` an exact-mask type is given.
* :func:`shape_buckets` stacks the key sets of equal shape ``(nq, nk)``: one ``(Q (G, nq),
  K (G, nk))`` pair of index arrays per distinct shape, queries and keys sorted by the index they
  are given (canonical position order in a canvas layer, token order in a backbone), which is
  the order a per-key-set type (a scan) reads them in.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["group_key_sets", "shape_buckets"]


def group_key_sets(grid: np.ndarray, row_seg: np.ndarray, col_seg: np.ndarray,
                   q_packed: np.ndarray, k_packed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(set_of_query (Nq,) int64, sets (U, Nk) bool)`` for a group's segment grid.

    Args:
        grid: ``(R, C)`` weights of the group's segment grid (0 = no link).
        row_seg, col_seg: ``(n,)`` segment id of each packed row / column.
        q_packed, k_packed: the group's query / key positions (packed), ``(Nq,)`` / ``(Nk,)``.
    """
    nk = len(k_packed)
    if len(q_packed) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, nk), dtype=bool)
    segs, seg_of_q = np.unique(row_seg[q_packed], return_inverse=True)
    rows = grid[segs][:, col_seg[k_packed]] > 0  # (S, Nk): one row per distinct row segment
    if nk == 0:
        return np.zeros(len(q_packed), dtype=np.int64), np.zeros((1, 0), dtype=bool)
    sets, set_of_seg = np.unique(rows, axis=0, return_inverse=True)
    return set_of_seg.reshape(-1)[seg_of_q.reshape(-1)].astype(np.int64), sets


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

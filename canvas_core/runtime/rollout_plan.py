"""What a frame-by-frame rollout needs to know about one plan (numpy; used by ``incremental.py``).

Canonical position ``p`` lies in canvas frame ``p // V`` (``V`` positions per frame), so frame
``t`` is the canonical slice ``[t V, (t + 1) V)``.  A rollout computes frame ``t`` of a layer from
the layer's inputs at frames ``<= t``; that is exact when no linked pair ``(query, key)`` has the
key in a later frame than the query (:func:`check_causal`).

Per frame, :class:`FramePlan` answers, once and lazily:

* for each softmax-family type: the canonical keys the frame's queries read and the ``(V, K_t)``
  weights, kept compressed as a small grid of row and column segments;
* for every other type: the calls that reproduce the rows of the frame exactly under the
  calling contract of :mod:`canvas_core.runtime.type_call` (one call with a key mask for types
  whose ``key_mask`` is exact, one call per key set for the others).  A type whose rows do not
  depend on where the query or keys sit in the call (``position_free``) is called with the
  frame's rows only; any other type is called with every query of each call the frame's rows
  belong to, the queries of later frames given as zeros (their rows are thrown away).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from canvas_core.compiler.plan import ExecutionPlan, segment_grid
from canvas_core.errors import TopologyError, brief_number
from canvas_core.runtime.key_sets import group_key_sets, merge_cover, query_block_ids
from canvas_core.schema.staleness import check_topology_unchanged, check_unchanged

__all__ = ["check_causal", "FramePlan", "SoftFrame", "TypeCall", "frame_size", "linked_pairs", "sampled_links", "CLASS_LIMIT"]

#: a frame whose queries have more distinct weight rows than this runs one masked attention
CLASS_LIMIT = 32


def frame_size(plan: ExecutionPlan) -> int:
    """Positions per canvas frame ``V`` (``N = T * V``)."""
    T = int(plan.layout.T)
    return int(plan.n) // T if T else 0


def linked_pairs(plan: ExecutionPlan, f: str, rect_rows: Tuple[np.ndarray, np.ndarray], n_sample: int,
                 rows_all: np.ndarray, cols: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weight (S, K), owner (S, K), keys (K,))`` of type ``f`` between some sampled queries and
    the packed keys ``cols`` (sorted): ``rect_rows`` the rows of a sorted sample of ``n_sample``
    packed queries each plan rectangle of ``f`` covers, ``rows_all`` (sorted) the rows wanted;
    ``keys`` the canonical positions of the keys some query links, ``weight`` the largest weight
    linking a pair and ``owner`` the connection it comes from (-1: not linked).  Only the
    rectangles that touch both are visited (in plan order, so ties go to the first), and only the
    columns they cover are laid out: a rollout frame costs its linked keys, not the whole prefix.
    Telemetry uses it."""
    g = plan.groups[f]
    r_lo, r_hi = rect_rows
    k0, k1 = np.asarray(g.k0), np.asarray(g.k1)
    touch = np.searchsorted(rows_all, r_hi) > np.searchsorted(rows_all, r_lo)
    cover = np.zeros(int(plan.n) + 1, dtype=np.int64)  # the packed keys the touching rectangles span
    np.add.at(cover, k0[touch], 1)
    np.add.at(cover, k1[touch], -1)
    cols = cols[np.cumsum(cover)[cols] > 0]
    touch &= np.searchsorted(cols, k1) > np.searchsorted(cols, k0)
    row_at = np.full(n_sample, -1, dtype=np.int64)
    row_at[rows_all] = np.arange(len(rows_all))
    canon = np.sort(plan.perm[cols])  # the columns' canonical positions: keys in canonical order
    col_at = np.full(int(plan.n), -1, dtype=np.int64)
    col_at[cols] = np.searchsorted(canon, plan.perm[cols])
    weight = np.zeros((len(rows_all), len(cols)))
    owner = np.full((len(rows_all), len(cols)), -1, dtype=np.int64)
    for r in np.flatnonzero(touch):
        rows, cs = row_at[r_lo[r]:r_hi[r]], col_at[k0[r]:k1[r]]
        block = np.ix_(rows[rows >= 0], cs[cs >= 0])
        better = g.weight[r] > weight[block]
        weight[block] = np.where(better, g.weight[r], weight[block])
        owner[block] = np.where(better, g.conn[r], owner[block])
    at = np.flatnonzero((weight > 0).any(0))
    if len(at) == len(cols):
        return weight, owner, canon
    return weight[:, at], owner[:, at], canon[at]


def sampled_links(plan: ExecutionPlan, f: str, rect_rows: Tuple[np.ndarray, np.ndarray], n_sample: int,
                  rows_all: np.ndarray, n: int, c_f: np.ndarray, chunk_elements: int) -> Optional[Tuple[Any, ...]]:
    """What telemetry's softmax probe needs of type ``f`` at some sampled queries and the keys of
    canonical positions ``0 .. n - 1``: ``(conns (C,), keys (K,) or None for all n, chunks,
    size)`` or None when no pair is linked; :func:`linked_pairs` describes the arguments, ``c_f``
    is the type's mixing share at ``rows_all``.  Per chunk of at most ``chunk_elements / (K C)``
    queries: ``(rows slice, unlinked (s, 1), log-weight bias (s, K) float32, mine (s, C, K) bool:
    the keys of each connection, links (s, C, 1), c_f (s, 1, 1) float32)``; ``size`` counts the
    bytes of the bias and mine arrays."""
    cols = np.flatnonzero(plan.perm < n)  # packed keys on frames 0 .. n / V - 1
    weight, owner, keys = linked_pairs(plan, f, rect_rows, n_sample, rows_all, cols)
    conns = np.unique(owner[owner >= 0])  # the connections these pairs come from
    if not len(conns):
        return None
    S = len(rows_all)
    chunk = max(1, chunk_elements // max(1, len(keys) * len(conns)))
    chunks, size = [], 0
    for c0 in range(0, S, chunk):
        rows = slice(c0, min(S, c0 + chunk))
        w = weight[rows]
        linked = (w > 0).any(-1)
        if not linked.any():
            continue
        bias = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), -np.inf).astype(np.float32)
        mine = owner[rows][:, None] == conns[:, None]
        size += bias.nbytes + mine.nbytes
        chunks.append((rows, ~linked[:, None], bias, mine, mine.any(-1)[..., None], c_f[rows, None, None].astype(np.float32)))
    return conns, (None if len(keys) == n else keys), chunks, size


def _range_extreme(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, fn) -> np.ndarray:
    """``fn`` (np.minimum / np.maximum) of ``values[lo_i:hi_i]`` for every non-empty range, by a
    sparse table (``O(n log n + R)``)."""
    table = [values]
    span = 1
    while 2 * span <= len(values):
        prev = table[-1]
        table.append(fn(prev[:-span], prev[span:]))
        span *= 2
    length = hi - lo
    level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    out = np.empty(len(lo), dtype=values.dtype)
    for k in np.unique(level):
        sel = level == k
        t = table[int(k)]
        out[sel] = fn(t[lo[sel]], t[hi[sel] - (1 << int(k))])
    return out


def _describe(conn: Any, index: int, fn: str) -> str:
    fill = getattr(conn, "temporal_fill", "hold")
    fill = getattr(fill, "value", fill)
    return (f"connection #{index} ({conn.src!r} -> {conn.dst!r}, fn {fn!r}, t_src={brief_number(conn.t_src)}, "
            f"t_dst={brief_number(conn.t_dst)}, temporal_fill={fill!r})")


def check_layer_layout(layer: Any) -> None:
    """Refuse a layer whose layout or topology changed since it was built (the check its own
    forward makes, which a rollout step bypasses: the step runs the layer's plan directly)."""
    owner = type(layer).__name__
    check_unchanged(layer.plan.layout, layer.__dict__.get("_layout_stamp"), owner)
    check_topology_unchanged(layer.plan.topology, layer.__dict__.get("_topology_stamp"), owner)


def check_rollout_layer(layer: Any, where: str = "") -> None:
    """What a layer must satisfy to be rolled out: its layout and topology unchanged since it was built and no
    connection reading a later frame (:func:`check_causal`)."""
    check_layer_layout(layer)
    check_causal(layer.plan, where)


def check_causal(plan: ExecutionPlan, where: str = "") -> None:
    """Raise :class:`TopologyError` naming the first connection that links a query to a key of a
    later canvas frame (the key region is the connection's ``dst``)."""
    V = frame_size(plan)
    if not V:
        return
    frame_of_packed = (plan.perm // V).astype(np.int64)
    for fn, g in plan.groups.items():
        if not g.n_rects:
            continue
        q_first = _range_extreme(frame_of_packed, g.q0, g.q1, np.minimum)
        k_last = _range_extreme(frame_of_packed, g.k0, g.k1, np.maximum)
        bad = np.flatnonzero(k_last > q_first)
        if bad.size:
            r = int(bad[0])
            ci = int(g.conn[r])
            conn = plan.topology.connections[ci]
            raise TopologyError(
                f"{where}{_describe(conn, ci, fn)} lets queries of canvas frame {int(q_first[r])} read "
                f"keys of the later frame {int(k_last[r])}, so frame {int(q_first[r])} cannot be computed "
                "before that frame exists and this topology cannot be rolled out frame by frame. "
                "Make the connection read the same or earlier frames (t_dst <= t_src with equal "
                "periods; temporal_fill 'hold' or 'drop' rather than 'interpolate'; a slower region "
                "reads real frame t * period), or run the full model on the whole canvas instead.")


@dataclass
class SoftFrame:
    """One softmax-family type at one frame: queries are the frame's ``V`` positions.

    Attributes:
        keys: ``(K_t,)`` canonical key positions (ascending, all in frames ``<= t``).
        row: ``(V,)`` row of ``grid`` of each query.  col: ``(K_t,)`` column of ``grid`` per key.
        grid: ``(R, C)`` float64 link weights (0: not linked).
        has_key: ``(V,)`` bool, the query reads at least one key.
    """

    keys: np.ndarray
    row: np.ndarray
    col: np.ndarray
    grid: np.ndarray
    has_key: np.ndarray

    def classes(self, limit: Optional[int] = None) -> Optional[List[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]]:
        """The queries grouped by identical weight rows: ``[(queries (m,) frame-local, keys (k,)
        canonical, log w (k,) or None when every weight of the row is equal), ...]`` (a constant
        weight cancels in the softmax); None when there are more than ``limit`` such groups."""
        rows = np.unique(self.row)
        if len(rows) > (CLASS_LIMIT if limit is None else limit):
            return None
        out = []
        for r in rows:
            w = self.grid[int(r)][self.col]
            sel = w > 0
            if not sel.any():
                continue
            ws = w[sel]
            logw = None if np.all(ws == ws[0]) else np.log(ws)
            out.append((np.flatnonzero(self.row == r), self.keys[sel], logw))
        return out


@dataclass
class TypeCall:
    """One call of a non-softmax type that produces some rows of frame ``t``.

    Attributes:
        queries: ``(Nq,)`` canonical query positions, ``-1`` for one of a later frame (a zero row).
        keys: ``(Nk,)`` canonical key positions, ``-1`` for one of a later frame (a zero row;
            no query of frame ``t`` reads it).
        mask: ``(Nq, Nk)`` bool key mask, or None for a per-key-set call (no mask).
        rows: ``(R,)`` rows of the call's output that belong to frame ``t``.
        local: ``(R,)`` their positions inside the frame (``0 .. V-1``).
    """

    queries: np.ndarray
    keys: np.ndarray
    mask: Optional[np.ndarray]
    rows: np.ndarray
    local: np.ndarray


class _TypeSets:
    """The key sets of one non-softmax type: which queries share which keys (packed order)."""

    def __init__(self, plan: ExecutionPlan, fn: str, V: int) -> None:
        g = plan.groups[fn]
        n = int(plan.n)
        sg = segment_grid(n, g.q0, g.q1, g.k0, g.k1, g.weight)
        rs, cs = sg.row_segment_of(n), sg.col_segment_of(n)
        q_packed = np.flatnonzero(plan.query_weight[fn] > 0)
        self.perm, self.V = plan.perm, V
        # one set per query block and key set (key_sets.py, "Query blocks"), as the layer calls them
        k_group = np.flatnonzero(merge_cover(n, g.k0, g.k1))  # the keys some rectangle of the type links
        set_of_q, sets = group_key_sets(sg.grid, rs, cs, q_packed, k_group, query_block_ids(plan, g, sg.row_bounds))
        used = np.unique(set_of_q)
        self.q_packed = q_packed  # the masked call's query order: packed ascending
        self.set_of_q = set_of_q
        self.keys_of: Dict[int, np.ndarray] = {}  # set -> packed keys (ascending)
        for s in used:
            self.keys_of[int(s)] = k_group[sets[int(s)]]
        k_all = [self.keys_of[int(s)] for s in used]
        self.k_packed = np.unique(np.concatenate(k_all)) if k_all else np.zeros(0, np.int64)
        self._mask: Optional[np.ndarray] = None

    def full_mask(self) -> np.ndarray:
        """``(Nq, Nk)`` bool key mask of the type's one masked call (built once, shared by frames)."""
        if self._mask is None:
            col = np.searchsorted(self.k_packed, np.arange(len(self.perm)))
            mask = np.zeros((self.q_packed.size, self.k_packed.size), dtype=bool)
            for s in np.unique(self.set_of_q):
                mask[np.ix_(self.set_of_q == s, col[self.keys_of[int(s)]])] = True
            self._mask = mask
        return self._mask

    def ordered(self, packed: np.ndarray) -> np.ndarray:
        """Packed positions in the order a per-key-set call receives them: canonical order
        (``runtime/key_sets.py``: a scan reads its keys in canonical position order)."""
        return packed[np.argsort(self.perm[packed], kind="stable")]


def _frame_calls(ts: _TypeSets, t: int, masked: bool, position_free: bool) -> List[TypeCall]:
    perm, V = ts.perm, ts.V
    q_can = perm[ts.q_packed]
    in_t = (q_can // V) == t
    if not in_t.any():
        return []
    if masked:
        if position_free:  # the frame's rows, against the keys they read
            qp = ts.q_packed[in_t]
            sets = ts.set_of_q[in_t]
            kp = np.unique(np.concatenate([ts.keys_of[int(s)] for s in np.unique(sets)]))
            mask = np.zeros((qp.size, kp.size), dtype=bool)
            for s in np.unique(sets):
                mask[np.ix_(sets == s, np.isin(kp, ts.keys_of[int(s)]))] = True
            q = perm[qp]
            return [TypeCall(q, perm[kp], mask, np.arange(q.size), q - t * V)]
        # the whole call as the layer makes it; later frames' queries as zero rows
        kp, mask = ts.k_packed, ts.full_mask()
        q = np.where(q_can // V > t, -1, q_can)
        k_can = perm[kp]
        rows = np.flatnonzero(in_t)
        return [TypeCall(q, np.where(k_can // V > t, -1, k_can), mask, rows, q_can[rows] - t * V)]
    calls = []
    for s in np.unique(ts.set_of_q[in_t]):
        members = ts.ordered(ts.q_packed[ts.set_of_q == s])
        keys = perm[ts.ordered(ts.keys_of[int(s)])]
        m_can = perm[members]
        if position_free:
            m_can = m_can[m_can // V == t]
        q = np.where(m_can // V > t, -1, m_can)
        rows = np.flatnonzero(m_can // V == t)
        calls.append(TypeCall(q, keys, None, rows, m_can[rows] - t * V))
    return calls


class FramePlan:
    """Per-frame structures of one plan, built on first use of each frame (see module docstring).

    Args:
        plan: the layer's plan (resolved or not).
        softmax_fns: the softmax-family types, in the layer's order.
        other: fn type -> (masked, position_free) for every other type, in the layer's order.
    """

    def __init__(self, plan: ExecutionPlan, softmax_fns: List[str],
                 other: Dict[str, Tuple[bool, bool]]) -> None:
        self.plan = plan
        self.V = frame_size(plan)
        self.T = int(plan.layout.T)
        n = int(plan.n)
        self.softmax_fns, self.other = list(softmax_fns), dict(other)
        qw = {f: plan.query_weight[f][plan.inv_perm] for f in self.softmax_fns + list(self.other)}
        den = np.zeros(n)
        for w in qw.values():
            den += w
        safe = np.where(den > 0, den, 1.0)
        #: fn -> (N,) canonical mixing coefficient W_f(p) / sum_g W_g(p)
        self.coef = {f: w / safe for f, w in qw.items()}
        self.updated = den > 0
        self._grids = {}
        for f in self.softmax_fns:
            g = plan.groups[f]
            sg = segment_grid(n, g.q0, g.q1, g.k0, g.k1, g.weight)
            self._grids[f] = (sg.grid, sg.row_segment_of(n), sg.col_segment_of(n))
        self._sets = {f: _TypeSets(plan, f, self.V) for f in self.other if plan.groups[f].n_rects}
        self._soft_cache: Dict[Tuple[str, int], Optional[SoftFrame]] = {}
        self._call_cache: Dict[Tuple[str, int], List[TypeCall]] = {}

    def frame_slice(self, t: int) -> slice:
        return slice(t * self.V, (t + 1) * self.V)

    def soft(self, fn: str, t: int) -> Optional[SoftFrame]:
        """The softmax type ``fn`` at frame ``t`` (None: no query of the frame reads a key)."""
        key = (fn, t)
        if key not in self._soft_cache:
            self._soft_cache[key] = self._build_soft(fn, t)
        return self._soft_cache[key]

    def _build_soft(self, fn: str, t: int) -> Optional[SoftFrame]:
        grid, rs, cs = self._grids[fn]
        inv, V = self.plan.inv_perm, self.V
        r = rs[inv[t * V:(t + 1) * V]]
        ur, ri = np.unique(r, return_inverse=True)
        c = cs[inv[:(t + 1) * V]]
        uc, ci = np.unique(c, return_inverse=True)
        sub = grid[ur][:, uc]
        keep_c = (sub > 0).any(axis=0)
        if not keep_c.any():
            return None
        kept = keep_c[ci]
        remap = np.cumsum(keep_c) - 1
        sub = sub[:, keep_c]
        return SoftFrame(keys=np.flatnonzero(kept).astype(np.int64), row=np.asarray(ri).reshape(-1),
                         col=remap[np.asarray(ci).reshape(-1)[kept]], grid=sub,
                         has_key=(sub > 0).any(axis=1)[np.asarray(ri).reshape(-1)])

    def calls(self, fn: str, t: int) -> List[TypeCall]:
        """The calls of the non-softmax type ``fn`` that give its rows at frame ``t``."""
        key = (fn, t)
        if key not in self._call_cache:
            ts = self._sets.get(fn)
            masked, free = self.other[fn]
            self._call_cache[key] = [] if ts is None else _frame_calls(ts, t, masked, free)
        return self._call_cache[key]

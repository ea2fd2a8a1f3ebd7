"""`ExecutionPlan`: a topology lowered to weighted rectangles over region-major packed positions.

Numpy only.  :meth:`ExecutionPlan.to_dense`, which hands out a torch tensor, delegates to
:mod:`canvas_core.runtime.plan_tensors`.

Coordinates
-----------
``perm[packed] = canonical`` and ``inv_perm[canonical] = packed`` (both ``(N,)`` int64).
Positions are packed region by region in declaration order, each region frame by frame
(t-major, row-major inside a frame).  Each canonical position is packed exactly once: a position
shared by overlapping regions is packed with the first region that declares it, so a later region
that overlaps an earlier one is represented, at each frame, by *several* packed ranges (see
``region_blocks``).  Positions that no region covers are packed last and pass through the layer.

Rectangles
----------
Every link of every connection is one or more rectangles ``(q0, q1, k0, k1, weight)`` in packed
coordinates (half-open): every query in ``[q0, q1)`` may attend to every key in ``[k0, k1)`` with
``weight``.  Rectangles are grouped by resolved fn type (:class:`RectGroup`).  Where rectangles of
one type overlap, the pair's weight is the *largest* one (the same rule as the dense mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from canvas_core.compiler.resolved import ResolvedGroup

__all__ = ["RectGroup", "BlockLayout", "ExecutionPlan", "SegmentGrid", "segment_grid"]


@dataclass
class RectGroup:
    """All rectangles of one fn type, as parallel arrays (packed coordinates, half-open).

    Attributes:
        fn: resolved attention function type.
        q0, q1, k0, k1: ``(R,)`` int64 rectangle bounds.
        weight: ``(R,)`` float64 (connection weight x fill weight, > 0).
        conn: ``(R,)`` int64 index of the connection in ``topology.connections``.
        connections: indices of the connections of this type (even those that link nothing).
        resolved: the group's :class:`~canvas_core.compiler.resolved.ResolvedGroup` (the
            attention entry and kernel chosen for the target), set by the resolution pass;
            None on a plan that was only lowered.
    """

    fn: str
    q0: np.ndarray
    q1: np.ndarray
    k0: np.ndarray
    k1: np.ndarray
    weight: np.ndarray
    conn: np.ndarray
    connections: Tuple[int, ...] = ()
    resolved: Optional["ResolvedGroup"] = None

    @property
    def n_rects(self) -> int:
        return int(self.q0.shape[0])

    def area(self) -> int:
        """Sum of rectangle areas (pairs counted once per rectangle, overlaps counted twice)."""
        return int(((self.q1 - self.q0) * (self.k1 - self.k0)).sum())

    def select(self, keep: np.ndarray) -> "RectGroup":
        """The sub-group of rectangles where ``keep`` (bool ``(R,)``) is True."""
        return RectGroup(self.fn, self.q0[keep], self.q1[keep], self.k0[keep], self.k1[keep],
                         self.weight[keep], self.conn[keep], self.connections, self.resolved)


@dataclass
class SegmentGrid:
    """Compressed weight matrix of a set of rectangles.

    The packed rows are cut into segments at every rectangle boundary (likewise the columns), so
    that inside one (row segment, column segment) cell the weight is constant.  ``grid[a, b]`` is
    the largest weight of a rectangle covering cell ``(a, b)`` (0 where none).

    Attributes:
        row_bounds: ``(n_rs + 1,)`` packed row boundaries (0 ... N).
        col_bounds: ``(n_cs + 1,)`` packed column boundaries.
        grid: ``(n_rs, n_cs)`` float64.
    """

    row_bounds: np.ndarray
    col_bounds: np.ndarray
    grid: np.ndarray

    def row_segment_of(self, n: int) -> np.ndarray:
        """``(n,)`` segment id of each packed row."""
        return np.repeat(np.arange(len(self.row_bounds) - 1), np.diff(self.row_bounds))[:n]

    def col_segment_of(self, n: int) -> np.ndarray:
        return np.repeat(np.arange(len(self.col_bounds) - 1), np.diff(self.col_bounds))[:n]


def _expand_ranges(start: np.ndarray, stop: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For ranges ``[start_i, stop_i)`` return (owner index, value) of every element, vectorised."""
    lens = np.maximum(stop - start, 0)
    total = int(lens.sum())
    owner = np.repeat(np.arange(len(start)), lens)
    offs = np.cumsum(lens) - lens
    vals = np.arange(total) - np.repeat(offs, lens) + np.repeat(start, lens)
    return owner, vals


def segment_grid(n: int, q0, q1, k0, k1, weight) -> SegmentGrid:
    """Build the :class:`SegmentGrid` of rectangles over an ``n x n`` packed matrix (vectorised)."""
    q0, q1, k0, k1 = (np.asarray(a, dtype=np.int64) for a in (q0, q1, k0, k1))
    weight = np.asarray(weight, dtype=np.float64)
    rb = np.unique(np.concatenate([[0, n], q0, q1]))
    cb = np.unique(np.concatenate([[0, n], k0, k1]))
    grid = np.zeros((len(rb) - 1, len(cb) - 1), dtype=np.float64)
    if len(q0):
        ra, rz = np.searchsorted(rb, q0), np.searchsorted(rb, q1)
        ca, cz = np.searchsorted(cb, k0), np.searchsorted(cb, k1)
        # every (row segment, rect) then every column segment of that rect
        owner, rows = _expand_ranges(ra, rz)
        owner2, cols = _expand_ranges(ca[owner], cz[owner])
        rows = rows[owner2]
        w = weight[owner][owner2]
        flat = rows * grid.shape[1] + cols
        np.maximum.at(grid.reshape(-1), flat, w)
    return SegmentGrid(rb, cb, grid)


@dataclass
class BlockLayout:
    """Tile structure of a weight matrix in packed order.

    Attributes:
        block_size: tile edge.
        n: matrix size (N).
        state: ``(n_q_blocks, n_k_blocks)`` int8: 0 empty, 1 partial (some pairs linked or weights
            vary), 2 full (every pair linked).
        count: ``(n_q_blocks, n_k_blocks)`` int64 number of linked pairs in the tile.
    """

    block_size: int
    n: int
    state: np.ndarray
    count: np.ndarray

    EMPTY, PARTIAL, FULL = 0, 1, 2

    @property
    def n_q_blocks(self) -> int:
        return int(self.state.shape[0])

    @property
    def n_k_blocks(self) -> int:
        return int(self.state.shape[1])

    def kv_indices(self) -> List[np.ndarray]:
        """Per query block, the ascending indices of its non-empty key blocks."""
        return [np.flatnonzero(row) for row in self.state]

    @property
    def density(self) -> float:
        """Fraction of tiles that are not empty."""
        return float((self.state > 0).mean()) if self.state.size else 0.0

    def __repr__(self) -> str:
        s = self.state
        return (f"BlockLayout(block_size={self.block_size}, n={self.n}, tiles={s.shape}, "
                f"full={int((s == 2).sum())}, partial={int((s == 1).sum())}, empty={int((s == 0).sum())})")


def _overlap_matrix(bounds: np.ndarray, block_size: int, n_blocks: int) -> np.ndarray:
    """``(n_blocks, n_segments)`` overlap length of each block with each segment."""
    b_lo = np.arange(n_blocks)[:, None] * block_size
    b_hi = b_lo + block_size
    lo = np.maximum(b_lo, bounds[None, :-1])
    hi = np.minimum(b_hi, bounds[None, 1:])
    return np.maximum(hi - lo, 0).astype(np.float64)


def block_layout_of(grid: SegmentGrid, n: int, block_size: int) -> BlockLayout:
    """Tile states of a segment grid (counts by ``R @ A @ C^T``, no N x N work)."""
    nb = max(1, -(-n // block_size))
    R = _overlap_matrix(grid.row_bounds, block_size, nb)
    C = _overlap_matrix(grid.col_bounds, block_size, nb)
    linked = (grid.grid > 0).astype(np.float64)
    count = np.rint(R @ linked @ C.T).astype(np.int64)
    rows = np.minimum(block_size, n - np.arange(nb) * block_size)
    area = rows[:, None] * rows[None, :]
    state = np.where(count == 0, 0, np.where(count == area, 2, 1)).astype(np.int8)
    # a "full" tile whose weights vary still needs a per-pair bias: mark it partial
    if state.size and (state == 2).any():
        s1 = R @ grid.grid @ C.T
        s2 = R @ (grid.grid ** 2) @ C.T
        var = s2 * area - s1 ** 2  # area^2 * variance of the tile's weights
        vary = var > 1e-9 * np.maximum(s1 ** 2, 1e-300)
        state[(state == 2) & vary] = 1
    return BlockLayout(block_size, n, state, count)


@dataclass
class ExecutionPlan:
    """A topology lowered onto a layout.  Built by :func:`canvas_core.compiler.lowering.lower`.

    Attributes:
        layout, topology: the objects it was lowered from.
        n: number of canvas positions N.
        perm: ``(N,)`` int64, ``perm[packed] = canonical``.
        inv_perm: ``(N,)`` int64, ``inv_perm[canonical] = packed``.
        n_covered: positions ``[0, n_covered)`` (packed) belong to some region, the rest to none.
        region_blocks: region -> ``{frame: [(start, stop), ...]}`` packed ranges.
        groups: fn type -> :class:`RectGroup`.
        fn_of_connection: resolved fn type of every connection (index = connection index).
        query_weight: fn type -> ``(N,)`` float64 packed ``W_f(p)``: the total weight of the
            connections of type f that link query p to at least one key.

    The resolution of the plan lives on its groups (``groups[fn].resolved``, one frozen
    :class:`~canvas_core.compiler.resolved.ResolvedGroup` per fn type, set on the new plan that
    :func:`~canvas_core.compiler.resolution.resolve_plan` returns); :attr:`resolutions` derives the
    per-connection report rows from them.
    """

    layout: Any
    topology: Any
    n: int
    perm: np.ndarray
    inv_perm: np.ndarray
    n_covered: int
    region_blocks: Dict[str, Dict[int, List[Tuple[int, int]]]]
    groups: Dict[str, RectGroup]
    fn_of_connection: List[str]
    query_weight: Dict[str, np.ndarray]
    build_seconds: float = 0.0

    # --- derived sets ---------------------------------------------------------------------------
    @property
    def fn_types(self) -> Tuple[str, ...]:
        return tuple(self.groups)

    @property
    def resolutions(self) -> Dict[int, Any]:
        """Connection index -> :class:`~canvas_core.compiler.resolved.ConnectionResolution`: the
        report row of every connection whose group is resolved, computed from ``groups[fn].resolved``
        (empty on a plan that was only lowered)."""
        from canvas_core.compiler.resolved import ConnectionResolution

        connections = list(getattr(self.topology, "connections", ()) or ())
        out: Dict[int, Any] = {}
        for i, fn in enumerate(self.fn_of_connection):
            g = self.groups.get(fn)
            if g is not None and g.resolved is not None and i < len(connections):
                out[i] = ConnectionResolution.of(g.resolved, i, connections[i])
        return out

    @property
    def is_resolved(self) -> bool:
        """Whether every group carries its resolution (``groups[fn].resolved``)."""
        return all(g.resolved is not None for g in self.groups.values())

    def updated(self, fn: Optional[str] = None) -> np.ndarray:
        """``(N,)`` bool, packed: positions updated by type ``fn`` (any type when None)."""
        if fn is not None:
            return self.query_weight[fn] > 0
        out = np.zeros(self.n, dtype=bool)
        for w in self.query_weight.values():
            out |= w > 0
        return out

    def all_rects(self) -> RectGroup:
        """Every rectangle of every type, concatenated (fn ``"*"``)."""
        gs = list(self.groups.values())
        if not gs:
            z = np.zeros(0, dtype=np.int64)
            return RectGroup("*", z, z, z, z, np.zeros(0), z)
        cat = lambda a: np.concatenate([getattr(g, a) for g in gs])  # noqa: E731
        return RectGroup("*", cat("q0"), cat("q1"), cat("k0"), cat("k1"), cat("weight"), cat("conn"))

    def group_or_all(self, fn: Optional[str]) -> RectGroup:
        if fn is None:
            return self.all_rects()
        if fn not in self.groups:
            from canvas_core.errors import CompileError

            raise CompileError(f"ExecutionPlan has no fn type {fn!r}; types: {sorted(self.groups)}")
        return self.groups[fn]

    def segment_grid(self, fn: Optional[str] = None) -> SegmentGrid:
        """Compressed packed weight matrix of type ``fn`` (all types, max weight, when None)."""
        g = self.group_or_all(fn)
        return segment_grid(self.n, g.q0, g.q1, g.k0, g.k1, g.weight)

    # --- dense and block forms ------------------------------------------------------------------
    def to_dense(self, device: Any = "cpu", fn: Optional[str] = None, canonical: bool = True,
                 dtype: Any = None):
        """``(N, N)`` torch weight matrix of type ``fn`` (all types when None); see
        :func:`canvas_core.runtime.plan_tensors.dense_weights`, which this delegates to."""
        from canvas_core.runtime.plan_tensors import dense_weights  # listed in ALLOWED_UPWARD (import-graph test)

        return dense_weights(self, device=device, fn=fn, canonical=canonical, dtype=dtype)

    def block_layout(self, block_size: int = 128, fn: Optional[str] = None) -> BlockLayout:
        """Which ``(q_block, k_block)`` tiles (packed order) are full / partial / empty."""
        if int(block_size) < 1:
            from canvas_core.errors import CompileError

            raise CompileError(f"block_size must be >= 1, got {block_size!r}")
        return block_layout_of(self.segment_grid(fn), self.n, int(block_size))

    # --- report ---------------------------------------------------------------------------------
    def summary(self) -> str:
        """Human-readable description of the plan."""
        n = self.n
        lines = [f"ExecutionPlan: N={n} positions, {n - self.n_covered} uncovered (pass through), "
                 f"{len(self.fn_of_connection)} connections, built in {self.build_seconds * 1e3:.1f} ms"]
        for r, frames in self.region_blocks.items():
            ranges = [rg for fr in frames.values() for rg in fr]
            if ranges:
                lo, hi = min(a for a, _ in ranges), max(b for _, b in ranges)
                lines.append(f"  region {r!r}: {len(frames)} frames, packed [{lo}, {hi})"
                             + (f" in {len(ranges)} ranges" if len(ranges) > len(frames) else ""))
            else:
                lines.append(f"  region {r!r}: empty")
        for fn, g in self.groups.items():
            upd = int((self.query_weight[fn] > 0).sum())
            dens = g.area() / float(n * n) if n else 0.0
            lines.append(f"  fn {fn!r}: {len(g.connections)} connections, {g.n_rects} rectangles, "
                         f"{upd} queries updated, rect density {dens:.3f}")
        for i, res in sorted(self.resolutions.items()):
            lines.append(f"  connection #{i}: {res}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ExecutionPlan(N={self.n}, fn_types={list(self.groups)}, "
                f"rects={sum(g.n_rects for g in self.groups.values())})")

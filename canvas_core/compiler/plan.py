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

import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from canvas_core.schema.limits import check_bytes, check_elements

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
    cells = (len(rb) - 1) * (len(cb) - 1)
    what = (f"the segment grid of {len(q0):,} rectangles over N={n:,} positions ({len(rb) - 1:,} x {len(cb) - 1:,} "
            f"segments: the rectangles' distinct edges)")
    check_elements((len(rb) - 1, len(cb) - 1), what, itemsize=8)
    # the whole byte limit: long causal_temporal canvases (T = 4,096 frames of 3 regions: 1.1 GiB)
    # build and run; 20,000 one-position connections at N = 32,768 (4.3 GB, 13-24 s) still do too
    check_bytes(cells * 8, what,
                "Use fewer connections, fewer and larger regions, fewer frame offsets or fewer frames (every "
                "distinct rectangle edge cuts the grid: a causal_temporal topology cuts it at every frame)")
    grid = np.zeros((len(rb) - 1, len(cb) - 1), dtype=np.float64)
    if len(q0):
        ra, rz = np.searchsorted(rb, q0), np.searchsorted(rb, q1)
        ca, cz = np.searchsorted(cb, k0), np.searchsorted(cb, k1)
        _fill_max(grid, ra, rz, ca, cz, weight)
    return SegmentGrid(rb, cb, grid)


#: rectangles of at least this many cells are written as slices; the rest cell by cell, in chunks of
#: at most this many cells (so the temporaries stay ~40 bytes x this, whatever the rectangles cover)
_SLICE_CELLS = 1 << 12
_CHUNK_CELLS = 1 << 22


def _fill_max(grid: np.ndarray, ra: np.ndarray, rz: np.ndarray, ca: np.ndarray, cz: np.ndarray,
              weight: np.ndarray) -> None:
    """``grid[ra:rz, ca:cz] = max(grid, weight)`` for every rectangle (segment coordinates).

    Big rectangles are written as slices, the others cell by cell in bounded chunks, the largest
    weight per cell found by sorting the cells: expanding every rectangle at once took 183 MiB for
    one rectangle over a 30 MiB grid.  Max is exact, so the order does not change the result."""
    area = (rz - ra) * (cz - ca)
    for i in np.flatnonzero(area >= _SLICE_CELLS):
        cell = grid[ra[i]:rz[i], ca[i]:cz[i]]
        np.maximum(cell, weight[i], out=cell)
    small = np.flatnonzero((area > 0) & (area < _SLICE_CELLS))
    ends = np.cumsum(area[small])
    start, flat_grid, width = 0, grid.reshape(-1), grid.shape[1]
    while start < len(small):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - area[small[start]] + _CHUNK_CELLS, side="right")))
        idx = small[start:stop]
        # every (row segment, rect) then every column segment of that rect
        owner, rows = _expand_ranges(ra[idx], rz[idx])
        owner2, cols = _expand_ranges(ca[idx][owner], cz[idx][owner])
        flat = rows[owner2] * width + cols
        w = weight[idx][owner][owner2]
        order = np.argsort(flat, kind="stable")
        flat, w = flat[order], w[order]
        first = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
        cells = flat[first]
        flat_grid[cells] = np.maximum(flat_grid[cells], np.maximum.reduceat(w, first))
        start = stop


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


def block_layout_of(grid: SegmentGrid, n: int, block_size: int) -> BlockLayout:
    """Tile states of a segment grid, one query block at a time.  Memory: the two ``(n_blocks,
    n_blocks)`` outputs (9 bytes a tile) and one block row of the grid; time: ``O((n_rs + n_blocks) *
    n_cs + n_blocks**2)``, so a small ``block_size`` on a large canvas costs ``n_blocks**2`` whatever
    the grid (the tiles count against the element limit)."""
    bs = int(block_size)
    nb = max(1, -(-n // bs))
    what = f"the tiles of block_size={bs} over N={n} positions (raise block_size)"
    check_elements((nb, nb), what, itemsize=9)
    check_bytes(9 * nb * nb, what, "Use a larger block_size")  # 4.3e9 tiles pass the element limit
    count = np.zeros((nb, nb), dtype=np.int64)
    state = np.zeros((nb, nb), dtype=np.int8)
    if n <= 0 or grid.grid.size == 0:
        return BlockLayout(bs, n, state, count)
    rb, g = grid.row_bounds, grid.grid
    cseg, cfirst, clen = _block_pieces(grid.col_bounds, bs, nb)
    sizes = np.minimum(bs, n - np.arange(nb) * bs)
    for qb in range(nb):
        a, z = qb * bs, min(n, (qb + 1) * bs)
        lo, hi = int(np.searchsorted(rb, a, side="right")) - 1, int(np.searchsorted(rb, z, side="left"))
        sub = g[lo:hi]  # the row segments meeting this block (a view)
        overlap = (np.minimum(rb[lo + 1:hi + 1], z) - np.maximum(rb[lo:hi], a)).astype(np.float64)
        linked_rows = overlap @ (sub > 0)  # per column segment: linked rows of the block
        cnt = np.rint(np.add.reduceat(linked_rows[cseg] * clen, cfirst)).astype(np.int64)
        st = np.where(cnt == 0, 0, np.where(cnt == sizes[qb] * sizes, 2, 1)).astype(np.int8)
        if (st == 2).any():
            # a "full" tile whose weights vary still needs a per-pair bias: mark it partial.  Exact
            # min / max (sums of squares overflow or underflow for weights like 1e300 / 1e-300)
            w_hi = np.maximum.reduceat(sub.max(axis=0)[cseg], cfirst)
            w_lo = np.minimum.reduceat(sub.min(axis=0)[cseg], cfirst)  # > 0 on full tiles
            st[(st == 2) & ((w_hi - w_lo) > 1e-9 * w_hi)] = 1
        count[qb], state[qb] = cnt, st
    return BlockLayout(bs, n, state, count)


def _block_pieces(bounds: np.ndarray, block_size: int, nb: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the segments at the block edges: ``(segment of each piece, first piece of each block,
    length of each piece)``; every piece lies inside one segment and one block."""
    edges = np.minimum(np.arange(nb + 1, dtype=np.int64) * block_size, bounds[-1])
    cuts = np.union1d(bounds, edges)
    starts = cuts[:-1]
    seg = np.searchsorted(bounds, starts, side="right") - 1
    blk = starts // block_size
    first = np.flatnonzero(np.concatenate([[True], blk[1:] != blk[:-1]]))
    return seg, first, np.diff(cuts).astype(np.float64)


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
        layout_stamp, topology_stamp: the layout and topology as they were when the plan was
            lowered (``canvas_core.schema.staleness``); a module built from the plan records these,
            not the current ones, so a layout or topology changed in between is refused.  None:
            not known (a plan built by hand), the module stamps what it sees.

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
    layout_stamp: Any = field(default=None, repr=False, compare=False)
    topology_stamp: Any = field(default=None, repr=False, compare=False)

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

        return dense_weights(self, device=device, fn=fn, canonical=canonical, dtype=dtype, where="ExecutionPlan.to_dense")

    def block_layout(self, block_size: int = 128, fn: Optional[str] = None) -> BlockLayout:
        """Which ``(q_block, k_block)`` tiles (packed order) are full / partial / empty."""
        from canvas_core.errors import CanvasTypeError, CompileError

        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
            raise CanvasTypeError(f"block_size must be an int (positions per tile edge), got {block_size!r:.80}")
        if int(block_size) < 1:
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

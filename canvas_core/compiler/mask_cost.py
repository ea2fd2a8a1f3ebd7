"""What lowering a connection with a tile or sparse ``MaskSpec`` will hold in memory, estimated
from the mask's declared size (tile counts, pattern shape) before any index list is built.

Lowering such a connection (``lowering._mask_rects``) first lists the canonical indices of every
mask pair over all frames of both regions (int64 arrays, all pairs at once), then emits, per pair
and per temporal link, one rectangle per (query run, key run), as arrays over all pairs and links
(``mask_lowering``).  Both grow with the frames, the links and the number of mask pairs, so a
small declaration can ask for gigabytes.

Counts here are upper bounds for regions that do not overlap (the packing then keeps each region
frame contiguous and in row-major order); overlapping regions can split runs further.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

from canvas_core.compiler.temporal import link_count_bound, region_frames
from canvas_core.schema.limits import check_bytes, limit
from canvas_core.schema.rects import rect_cover

__all__ = ["MaskCost", "mask_cost"]

# Measured with tracemalloc (numpy buffers included), one thread, tile and sparse masks from 10^4 to
# 1.7 * 10^7 rectangles: the estimate of lowering.py with these is 1.2x to 1.8x the real peak.
#: bytes per rectangle of a masked connection: its five int64/float64 entries, the arrays the
#: vectorised lowering builds them from, and its copy when the fn type's rectangles are joined
#: (~90 measured for one connection, ~96 for several of one fn type)
_MASK_RECT_BYTES = 140
#: bytes per canonical index listed for a mask pair: its int64 entry, the flattened copy and the
#: sorted keys of the run tables (~75 measured for keys, ~100 with one-frame links)
_MASK_INDEX_BYTES = 100
#: bytes per mask pair (its boxes or cover rectangle, its two small arrays and their per-pair
#: entries in the run tables; ~550 to ~1000 measured before tile index lists were built for all
#: tiles at once, less since: 700 keeps the estimate between the peak and twice it)
_MASK_PAIR_BYTES = 700
#: bytes per rectangle of ``rect_cover`` on a sparse pattern (~220 measured), and per pattern cell
#: and per true cell (its boolean copies, the list of true cells)
_COVER_RECT_BYTES = 250
_COVER_CELL_BYTES = 2
_COVER_TRUE_BYTES = 8

Box = Sequence[Tuple[int, int]]


class MaskCost(Tuple[int, int, int]):
    """``(rects, indices, pairs)``: upper bounds on the rectangles, the listed canonical indices
    and the mask pairs of one connection."""

    def __new__(cls, rects: int, indices: int, pairs: int) -> "MaskCost":
        return super().__new__(cls, (int(rects), int(indices), int(pairs)))

    @property
    def rects(self) -> int:
        return self[0]

    @property
    def indices(self) -> int:
        return self[1]

    @property
    def transient_bytes(self) -> int:
        """Bytes of the index lists and pairs, alive while this connection is lowered."""
        return _MASK_INDEX_BYTES * self[1] + _MASK_PAIR_BYTES * self[2]

    @property
    def kept_bytes(self) -> int:
        """Bytes of the rectangles, kept until the plan is built."""
        return _MASK_RECT_BYTES * self[0]


def _box(layout: Any, name: str) -> List[Tuple[int, int]]:
    """Spatial ``(lo, hi)`` per dim of a region (as the mask code reads its bounds)."""
    b = tuple(int(v) for v in layout.region_spec(name).bounds)
    return [(b[k], b[k + 1]) for k in range(2, len(b), 2)]


def _frame_work(conn: Any, layout: Any) -> Tuple[int, int, int]:
    """``(F_src, F_dst, L)``: frames of both regions and an upper bound on the source frames
    summed over the temporal links (each link takes one source frame when both offsets are
    set, else up to all of them)."""
    s0, s1, _ = region_frames(layout, conn.src)
    d0, d1, _ = region_frames(layout, conn.dst)
    f_src, f_dst = max(0, s1 - s0), max(0, d1 - d0)
    per_link = 1 if conn.t_src is not None and conn.t_dst is not None else f_src
    return f_src, f_dst, link_count_bound(conn, layout) * per_link


def _runs_factors(lens: np.ndarray, split: bool) -> np.ndarray:
    """Per tile of one dim, its factor in the runs per frame: its length where the dim splits
    rows (it lies before the last dim the box does not span fully), else 1."""
    return lens if split else np.ones_like(lens)


def _tile_cost(spec: Any, layout: Any, conn: Any) -> MaskCost:
    """Tile masks, counted per dim over the tile grid (the sums factor: tiles are a product).

    Per tile: the source box has ``prod(len_j, j < m)`` runs per frame (``m`` the last dim the
    tiles do not span); its destination box (the tile cell clipped to the destination region) as
    many over its own dims, or the whole destination region (one run) where the clip is empty.
    """
    sbox, dbox = _box(layout, conn.src), _box(layout, conn.dst)
    f_src, f_dst, link_frames = _frame_work(conn, layout)
    tile = spec.tile_for(len(sbox))
    if not sbox:
        return MaskCost(link_frames, f_src + f_dst, 1)
    src_len, dst_len = [], []
    for (lo, hi), (c, d), t in zip(sbox, dbox, tile):
        starts = np.arange(lo, max(lo, hi), t, dtype=np.int64)
        stops = np.minimum(starts + t, hi)
        src_len.append(stops - starts)
        dst_len.append(np.maximum(0, np.minimum(stops, d) - np.maximum(starts, c)))
    n_dims = len(sbox)
    m_src = max((j for j in range(n_dims) if src_len[j].size > 1), default=-1)
    m_dst = max((j for j in range(n_dims) if np.any((dst_len[j] > 0) & (dst_len[j] < dbox[j][1] - dbox[j][0]))),
                default=-1)
    all_runs, ne_runs, ne_pair_runs, ne_tiles, ne_volume, tiles = 1, 1, 1, 1, 1, 1
    for j in range(n_dims):
        ne = dst_len[j] > 0
        fs = _runs_factors(src_len[j], j < m_src)
        fd = _runs_factors(dst_len[j], j < m_dst)
        all_runs *= int(fs.sum())
        ne_runs *= int(fs[ne].sum())
        ne_pair_runs *= int((fs * fd)[ne].sum())
        ne_tiles *= int(ne.sum())
        ne_volume *= int(dst_len[j].sum())
        tiles *= int(src_len[j].size)
    d_area = int(np.prod([d - c for c, d in dbox]))
    s_area = int(np.prod([hi - lo for lo, hi in sbox]))
    rects = (ne_pair_runs + all_runs - ne_runs) * link_frames
    indices = f_src * s_area + f_dst * (ne_volume + (tiles - ne_tiles) * d_area)
    return MaskCost(rects, indices, tiles)


def _pattern_stats(pattern: Any) -> Tuple[int, int, int, int, int]:
    """``(rows, cols, cells, true cells, corners)`` of a pattern; corners are the true cells whose
    left or upper neighbour is not true (an upper bound on the rectangles of its greedy cover,
    checked exhaustively on small patterns)."""
    p = np.asarray(pattern, dtype=bool)
    left = np.zeros_like(p)
    left[:, 1:] = p[:, :-1]
    up = np.zeros_like(p)
    up[1:] = p[:-1]
    return p.shape[0], p.shape[1], int(p.size), int(p.sum()), int((p & ~(left & up)).sum())


def _sparse_cost(spec: Any, layout: Any, conn: Any, where: str, exact: bool) -> MaskCost:
    """Sparse masks: each rectangle of the pattern's cover is a row-major range of both regions,
    one run per frame on each side.  A cheap bound from the pattern's counts; with ``exact``, the
    cover itself is counted instead (after checking the cover fits) when the cheap bound is over
    the byte limit."""
    sbox, dbox = _box(layout, conn.src), _box(layout, conn.dst)
    f_src, f_dst, link_frames = _frame_work(conn, layout)
    rows, cols, cells, nnz, corners = _pattern_stats(spec.pattern)
    if rows != int(np.prod([b - a for a, b in sbox])) or cols != int(np.prod([b - a for a, b in dbox])):
        return MaskCost(0, 0, 0)  # a pattern of the wrong shape: lowering names the error
    n = min(nnz, corners)
    cheap = MaskCost(n * link_frames, f_src * min(nnz, n * rows) + f_dst * min(nnz, n * cols), n)
    if not exact or cheap.transient_bytes + cheap.kept_bytes <= limit("bytes"):
        return cheap
    check_bytes(_COVER_RECT_BYTES * n + _COVER_CELL_BYTES * cells + _COVER_TRUE_BYTES * nnz,
                f"covering the {rows}x{cols} sparse mask pattern of {where} ({nnz:,} true cells) by rectangles",
                "Use a pattern made of fewer, larger blocks (or a tile mask)")
    cover = rect_cover(spec.pattern, min_area=1)
    heights = sum(r.ranges[0][1] - r.ranges[0][0] for r in cover)
    widths = sum(r.ranges[1][1] - r.ranges[1][0] for r in cover)
    return MaskCost(len(cover) * link_frames, f_src * heights + f_dst * widths, len(cover))


def mask_cost(conn: Any, layout: Any, where: str, exact: bool = False) -> MaskCost:
    """Upper bounds on what lowering the connection ``conn`` (named ``where`` in messages) will
    build for its mask; zero for a connection without a tile or sparse mask.  ``exact``: count a
    sparse pattern's cover where the cheap bound alone is over the byte limit (costs a cover)."""
    spec = getattr(conn, "mask", None)
    kind = str(getattr(spec, "kind", "full")) if spec is not None else "full"
    if kind == "tile":
        return _tile_cost(spec, layout, conn)
    if kind == "sparse":
        return _sparse_cost(spec, layout, conn, where, exact)
    return MaskCost(0, 0, 0)

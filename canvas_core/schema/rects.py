"""Axis-aligned boxes of a grid (:class:`Rect`) and the exact cover of a boolean mask by such
boxes (:func:`rect_cover`).  Pure Python at import; numpy is imported inside the functions.
"""

from __future__ import annotations

import operator
from typing import Any, List, Optional, Tuple

from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError

__all__ = ["Rect", "rect_cover"]


class Rect:
    """Axis-aligned half-open hyperrectangle; ``ranges`` is one ``(lo, hi)`` per dim.

    ``Rect(t0, t1, h0, h1, w0, w1)`` (flat pairs), ``Rect(((t0, t1), (h0, h1), ...))`` (one tuple
    of pairs) and ``Rect(ranges=((t0, t1), ...))`` all work, as in canvas-engineering.  Bounds are
    integers with ``lo <= hi``; anything else raises a ``CanvasError`` naming the bad value.
    ``t0 .. w1`` read dims 0..2; a dim the rectangle does not have reads as 0 (canvas-engineering's
    convention for lower-dimensional rectangles).
    """

    __slots__ = ("ranges",)

    def __init__(self, *args: Any, ranges: Optional[Tuple[Tuple[int, int], ...]] = None):
        if ranges is not None and args:
            raise CanvasTypeError("Rect: give either flat (lo, hi, ...) arguments or ranges=, not both")
        if ranges is None:
            if len(args) == 1 and isinstance(args[0], (tuple, list)) and args[0] \
                    and all(isinstance(p, (tuple, list)) for p in args[0]):
                ranges = args[0]  # Rect(((t0, t1), (h0, h1), ...))
            elif not args or len(args) % 2:
                raise CanvasTypeError(
                    f"Rect: needs an even number of bounds Rect(lo0, hi0, lo1, hi1, ...), a tuple of "
                    f"(lo, hi) pairs, or ranges=((lo, hi), ...); got {args!r} (Rect() requires even "
                    "number of positional args)")
            else:
                ranges = tuple((args[k], args[k + 1]) for k in range(0, len(args), 2))
        if not isinstance(ranges, (tuple, list)) or not ranges:
            raise CanvasTypeError(f"Rect: ranges must be a non-empty tuple of (lo, hi) pairs, got {ranges!r}")
        rs = []
        for pair in ranges:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise CanvasTypeError(f"Rect: each range must be a (lo, hi) pair of ints, got {pair!r}")
            lo_hi = []
            for v in pair:
                # ints and integer-like objects (numpy / torch integer scalars, via __index__)
                try:
                    if isinstance(v, bool):
                        raise TypeError
                    lo_hi.append(operator.index(v))
                except TypeError:
                    raise CanvasTypeError(
                        f"Rect: bounds must be integers, got {v!r} in range {tuple(pair)!r}") from None
            a, b = lo_hi
            if b < a:
                raise SchemaError(f"Rect: range ({a}, {b}) has hi < lo; give (lo, hi) with lo <= hi")
            rs.append((a, b))
        self.ranges: Tuple[Tuple[int, int], ...] = tuple(rs)

    @property
    def ndim(self) -> int:
        return len(self.ranges)

    @property
    def volume(self) -> int:
        """How many grid cells lie inside (the product of the range lengths)."""
        v = 1
        for a, b in self.ranges:
            v *= b - a
        return v

    def _r(self, k: int, j: int) -> int:
        return self.ranges[k][j] if k < len(self.ranges) else 0

    t0 = property(lambda self: self._r(0, 0))
    t1 = property(lambda self: self._r(0, 1))
    h0 = property(lambda self: self._r(1, 0))
    h1 = property(lambda self: self._r(1, 1))
    w0 = property(lambda self: self._r(2, 0))
    w1 = property(lambda self: self._r(2, 1))

    def slices(self) -> Tuple[slice, ...]:
        """Index slices selecting this rectangle from an array."""
        return tuple(slice(a, b) for a, b in self.ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rect) and other.ranges == self.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __repr__(self) -> str:
        return f"Rect(ranges={self.ranges})"


def _to_bool_array(mask: Any):
    import numpy as np

    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    if isinstance(mask, (str, bytes)) or mask is None:
        raise ShapeError(f"rect_cover: mask must be an N-d binary array (0/1 or bool), got {type(mask).__name__}")
    try:
        arr = np.asarray(mask)
    except Exception as exc:  # ragged lists etc.
        raise ShapeError(f"rect_cover: mask must be a rectangular N-d boolean array ({exc})") from None
    if arr.dtype == object:
        raise ShapeError("rect_cover: mask must be a rectangular N-d boolean array (got ragged input)")
    if arr.ndim == 0:
        raise ShapeError("rect_cover: mask must have at least one dimension")
    if arr.dtype != bool:
        if arr.dtype.kind not in "biuf":
            raise ShapeError(f"rect_cover: mask must hold 0/1 or bool values, got dtype {arr.dtype}")
        bad = ~((arr == 0) | (arr == 1))
        if bad.any():
            where = tuple(int(v) for v in np.argwhere(bad)[0])
            raise SchemaError(
                f"rect_cover: mask must be binary (0/1 or bool); found {arr[where].item()!r} at index {where}. "
                "Threshold it first, e.g. rect_cover(mask > 0.5)")
    return arr.astype(bool)


def rect_cover(mask: Any, min_area: int = 4) -> List[Rect]:
    """Exact cover of the true cells of an N-d boolean mask by disjoint hyperrectangles.

    Greedy, in row-major order: at the first uncovered true cell, grow along the last dim, then
    along each earlier dim while the whole slab stays true and uncovered.  The union of the
    returned rectangles equals the mask, they are pairwise disjoint, each has volume >= 1.

    Args:
        mask: N-d binary torch tensor, numpy array or nested lists (e.g. ``(T, H, W)``): bool,
            or numbers that are all 0 or 1.  Any other value (2, 0.5, NaN) raises ``SchemaError``
            (threshold first); ragged or 0-d input raises ``ShapeError``.
        min_area: kept for canvas-engineering compatibility: a *preference*, never at the cost
            of exactness.  Exactness wins, so rectangles smaller than ``min_area`` appear
            wherever the mask forces them (an isolated true cell is a volume-1 rectangle).

    Returns:
        List of :class:`Rect`, in row-major order of their first corner.
    """
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise SchemaError(f"rect_cover: min_area must be an integer >= 1, got {min_area!r}")
    arr = _to_bool_array(mask)
    if arr.ndim <= 2:
        r0, r1, c0, c1 = _cover_2d(arr.reshape((1,) * (2 - arr.ndim) + arr.shape))
        if arr.ndim == 1:
            return [_rect(((a, b),)) for a, b in zip(c0, c1)]
        return [_rect(((a, b), (c, d))) for a, b, c, d in zip(r0, r1, c0, c1)]
    return [_rect(ranges) for ranges in _cover_nd(arr)]


def _rect(ranges: Tuple[Tuple[int, int], ...]) -> Rect:
    """A :class:`Rect` of bounds already known to be valid ints (skips the checks of ``__init__``)."""
    r = Rect.__new__(Rect)
    r.ranges = ranges
    return r


#: the ints that :func:`_shared` hands out (a table, not a per-call one, so its memory is fixed)
_SMALL_INTS = list(range(4096))
#: cells of the mask whose runs the narrow scan lists at once (bounds its memory)
_CHUNK_CELLS = 1 << 22
#: above this many runs per changed row, the scan works on whole rows with numpy, not per run
_WIDE_RUNS = 48


def _cover_2d(arr: Any) -> Tuple[List[int], List[int], List[int], List[int]]:
    """The greedy cover of a ``(R, C)`` bool array as lists ``(r0, r1, c0, c1)``, row-major.

    The greedy's rectangles that start in row ``r`` are the maximal runs of its still uncovered
    cells, and each grows down while the *mask* (not only the uncovered cells) is true under its
    whole width: a rectangle from an earlier row that covered any of those cells further down
    would cover them in row ``r`` too.  So one pass over the rows suffices, and only rows that
    differ from the row above can end a rectangle or start one.
    """
    import numpy as np

    if not arr.any():
        return [], [], [], []
    changed = np.ones(arr.shape[0], dtype=bool)
    changed[1:] = (arr[1:] != arr[:-1]).any(axis=1)
    rows = np.flatnonzero(changed)
    runs = np.count_nonzero(arr[:, 1:] > arr[:, :-1], axis=1) + arr[:, 0]  # per row
    if int(runs[rows].sum()) > _WIDE_RUNS * rows.size:
        return _scan_wide(arr, rows)
    return _scan_narrow(arr, rows)


def _row_runs(rows: Any) -> Tuple[List[int], List[int], List[int]]:
    """``(offsets, starts, stops)`` of the maximal true runs of each row of a ``(n, C)`` bool
    array: row ``i`` has runs ``starts[offsets[i]:offsets[i + 1]]`` (and ``stops``), left to right."""
    import numpy as np

    padded = np.zeros((rows.shape[0], rows.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = rows
    r_idx, c_idx = np.nonzero(np.diff(padded, axis=1))
    offsets = np.searchsorted(r_idx[0::2], np.arange(rows.shape[0] + 1))
    return offsets.tolist(), _shared(c_idx[0::2]), _shared(c_idx[1::2])


def _shared(values: Any) -> List[int]:
    """``values.tolist()`` with one int object per distinct value up to 4096, so that the
    rectangles' bounds (often far more numerous than distinct values) do not each hold their own."""
    if values.size and values.max() < len(_SMALL_INTS):
        return list(map(_SMALL_INTS.__getitem__, values.tolist()))
    return values.tolist()


def _scan_narrow(arr: Any, rows: Any) -> Tuple[List[int], List[int], List[int], List[int]]:
    """:func:`_cover_2d` one run at a time (fast when rows hold few runs): the rectangles open in
    the row above, sorted by column, are matched against the row's runs in one merge."""
    r0: List[int] = []
    r1: List[int] = []
    c0: List[int] = []
    c1: List[int] = []
    active: List[Tuple[int, int, int]] = []  # (c0, c1, id) of the rectangles covering the row above
    n_rows = arr.shape[0]
    step = max(1, _CHUNK_CELLS // max(1, arr.shape[1]))
    for at in range(0, rows.size, step):
        chunk = rows[at:at + step]
        offsets, starts, stops = _row_runs(arr[chunk])
        for i, r in enumerate(chunk.tolist()):
            kept: List[Tuple[int, int, int]] = []
            k = 0
            for j in range(offsets[i], offsets[i + 1]):
                lo, hi = starts[j], stops[j]
                cursor = lo
                while k < len(active) and active[k][0] < hi:
                    a, b, rid = active[k]
                    k += 1
                    if a < lo or b > hi:  # a false cell under it: it ends above this row
                        r1[rid] = r
                        continue
                    if a > cursor:
                        kept.append((cursor, a, len(r0)))
                        r0.append(r), r1.append(n_rows), c0.append(cursor), c1.append(a)
                    kept.append(active[k - 1])
                    cursor = b
                if cursor < hi:
                    kept.append((cursor, hi, len(r0)))
                    r0.append(r), r1.append(n_rows), c0.append(cursor), c1.append(hi)
            for _, _, rid in active[k:]:
                r1[rid] = r
            active = kept
    return r0, r1, c0, c1


def _scan_wide(arr: Any, rows: Any) -> Tuple[List[int], List[int], List[int], List[int]]:
    """:func:`_cover_2d` one row at a time with numpy (fast when rows hold many runs)."""
    import numpy as np

    n_rows, n_cols = arr.shape
    r0: List[Any] = []
    c0: List[Any] = []
    c1: List[Any] = []
    r1 = np.full(int(np.count_nonzero(arr[rows])), n_rows, dtype=np.int64)  # by id; <= 1 per true cell
    n = 0
    act_id = act_lo = act_hi = np.zeros(0, dtype=np.int64)  # rectangles covering the row above
    for r in rows.tolist():
        row = arr[r]
        zeros = np.concatenate(([0], np.cumsum(~row)))
        keep = zeros[act_hi] == zeros[act_lo]  # no false cell under the rectangle
        r1[act_id[~keep]] = r
        act_id, act_lo, act_hi = act_id[keep], act_lo[keep], act_hi[keep]
        cover = np.cumsum(np.bincount(act_lo, minlength=n_cols + 1) - np.bincount(act_hi, minlength=n_cols + 1))
        edges = np.flatnonzero(np.diff(np.concatenate(([0], (row & (cover[:-1] == 0)).view(np.int8), [0]))))
        lo, hi = edges[0::2], edges[1::2]
        if lo.size:
            r0.append(np.full(lo.size, r, dtype=np.int64))
            c0.append(lo)
            c1.append(hi)
            act_id = np.concatenate((act_id, np.arange(n, n + lo.size, dtype=np.int64)))
            act_lo, act_hi = np.concatenate((act_lo, lo)), np.concatenate((act_hi, hi))
            n += lo.size
    return _shared(np.concatenate(r0)), _shared(r1[:n]), _shared(np.concatenate(c0)), _shared(np.concatenate(c1))


def _cover_nd(arr: Any) -> List[Tuple[Tuple[int, int], ...]]:
    """The greedy cover of an N-d (N >= 3) bool array, as ranges per rectangle, row-major.

    As in :func:`_cover_2d`, one dim down: the rectangles that start in slice ``t`` of dim 0 are
    the greedy cover of its uncovered cells, each grown along dim 0 while the mask stays true.
    """
    import numpy as np

    n_t = arr.shape[0]
    covered_until = np.zeros(arr.shape[1:], dtype=np.int64)
    out: List[Tuple[Tuple[int, int], ...]] = []
    for t in range(n_t):
        todo = arr[t] & (covered_until <= t)
        if not todo.any():
            continue
        if todo.ndim == 2:
            r0, r1, c0, c1 = _cover_2d(todo)
            sub = [((a, b), (c, d)) for a, b, c, d in zip(r0, r1, c0, c1)]
        else:
            sub = _cover_nd(todo)
        for ranges in sub:
            box = tuple(slice(a, b) for a, b in ranges)
            end = t + 1
            while end < n_t and arr[end][box].all():
                end += 1
            covered_until[box] = end
            out.append(((t, end),) + ranges)
    return out

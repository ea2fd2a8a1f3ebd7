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
    import numpy as np

    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise SchemaError(f"rect_cover: min_area must be an integer >= 1, got {min_area!r}")
    arr = _to_bool_array(mask)
    todo = arr.copy()
    nd = arr.ndim
    out: List[Rect] = []
    for flat in np.flatnonzero(todo.ravel()):
        start = np.unravel_index(int(flat), arr.shape)
        if not todo[start]:
            continue
        lo = [int(v) for v in start]
        hi = [v + 1 for v in lo]
        for d in range(nd - 1, -1, -1):  # last dim first
            while hi[d] < arr.shape[d]:
                sl = tuple(slice(lo[k], hi[k]) if k != d else slice(hi[d], hi[d] + 1) for k in range(nd))
                if todo[sl].all():
                    hi[d] += 1
                else:
                    break
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        todo[box] = False
        out.append(Rect(ranges=tuple(zip(lo, hi))))
    return out

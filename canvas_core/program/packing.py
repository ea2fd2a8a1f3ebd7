"""Placing boxes onto an N-d grid (pure Python; the layouts of ``compile_schema``).

Two auto layouts: canvas-engineering's (:func:`padded_canvas_shape` and, on 3 or more axes,
:func:`stack_pack`; the default, so layouts and checkpoints move between the two packages) and the
tight one (:func:`auto_canvas_width` + :func:`shelf_pack`, trimmed to what is used). On one or
two axes both place boxes with the same shelf rule described next.

Boxes are placed in the given order. The last axis is filled left to right; a box that no longer
fits opens a new shelf on the axis before it (offset by the tallest box of the closed shelf),
and so on outwards, like text wrapping into lines, lines into pages. Placed boxes never overlap.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

__all__ = ["auto_canvas_width", "shelf_pack", "padded_canvas_shape", "stack_pack", "PADDING"]


def _iroot_ceil(value: int, n: int) -> int:
    """Smallest integer s with s**n >= value."""
    s = max(1, int(round(value ** (1.0 / n))))
    while s ** n < value:
        s += 1
    while s > 1 and (s - 1) ** n >= value:
        s -= 1
    return s


def auto_canvas_width(extents: Sequence[Tuple[int, ...]]) -> Tuple[int, ...]:
    """Bounds of the inner axes (all but the first) for an auto-sized canvas: each the larger of
    the widest box on that axis and ``ceil(total_volume ** (1/n))`` (a roughly square canvas)."""
    n = len(extents[0])
    side = _iroot_ceil(sum(math.prod(e) for e in extents), n)
    return tuple(max(side, max(e[k] for e in extents)) for k in range(1, n))


def shelf_pack(
    extents: Sequence[Tuple[int, ...]], size: Sequence[Optional[int]]
) -> Optional[Tuple[List[Tuple[int, ...]], Tuple[int, ...]]]:
    """Place boxes of the given extents in order on a grid of ``size`` (None = unbounded axis).

    Returns ``(offsets, used)``: the low corner of each box and the used extent per axis
    (``max(offset + extent)``), or None when the boxes do not fit. Every box must individually fit.
    """
    n = len(size)
    inf = float("inf")
    lim = [inf if s is None else s for s in size]
    pos = [0] * n            # current low corner of the next shelf on each axis
    thick = [0] * n          # thickness of the open shelf on each outer axis
    offsets: List[Tuple[int, ...]] = []
    used = [0] * n
    for e in extents:
        placed = False
        for level in range(n - 1, -1, -1):
            if level < n - 1:  # close the open shelf on axis `level`, reset the inner axes
                pos[level] += thick[level]
                thick[level] = 0
                for j in range(level + 1, n):
                    pos[j] = 0
                    thick[j] = 0
            if all(pos[k] + e[k] <= lim[k] for k in range(n)):
                offsets.append(tuple(pos))
                for k in range(n):
                    used[k] = max(used[k], pos[k] + e[k])
                for k in range(n - 1):
                    thick[k] = max(thick[k], e[k])
                pos[n - 1] += e[n - 1]
                placed = True
                break
        if not placed:
            return None
    return offsets, tuple(used)


# --- canvas-engineering's auto size and 3-d+ placement (the default, for layout parity) --------
#: slack canvas-engineering adds to an auto-sized canvas (15%)
PADDING = 1.15


def padded_canvas_shape(extents: Sequence[Tuple[int, ...]], pad: float = PADDING) -> Tuple[int, ...]:
    """canvas-engineering 0.5.0's auto-sized ``spatial_shape`` for boxes of these extents (all of
    one rank, in region order), so that auto-sized layouts -- and the checkpoints trained on them
    -- are the same in both packages.

    * 1-d: the summed length times ``pad``, rounded up;
    * 2-d: width ``max(ceil(sqrt(area * pad)), widest box)``; the boxes are wrapped into rows of
      that width in order, and the height is ``max(ceil(rows' height * pad), tallest box)``;
    * n-d: every axis ``max(ceil(volume ** (1/n) * pad ** (1/n)), largest box on that axis)``.
    """
    if not extents:
        return (4,)
    n = len(extents[0])
    if n == 1:
        return (int(math.ceil(sum(e[0] for e in extents) * pad)),)
    if n == 2:
        width = max(int(math.ceil(math.sqrt(sum(e[0] * e[1] for e in extents) * pad))),
                    max(e[1] for e in extents))
        return (max(int(math.ceil(_rows_height(extents, width) * pad)), max(e[0] for e in extents)), width)
    side = int(math.ceil(sum(math.prod(e) for e in extents) ** (1.0 / n) * pad ** (1.0 / n)))
    return tuple(max(side, max(e[k] for e in extents)) for k in range(n))


def _rows_height(extents: Sequence[Tuple[int, ...]], width: int) -> int:
    """Height of 2-d boxes wrapped, in order, into rows of ``width`` (a box that does not fit in
    the current row starts a new one below the tallest box of that row)."""
    top = row_w = row_h = 0
    for h, w in extents:
        if row_w + w > width:
            top, row_w, row_h = top + row_h, 0, 0
        row_w += w
        row_h = max(row_h, h)
    return top + row_h


def stack_pack(
    extents: Sequence[Tuple[int, ...]], size: Sequence[int]
) -> Optional[Tuple[List[Tuple[int, ...]], Tuple[int, ...]]]:
    """canvas-engineering's placement on a canvas of 3 or more axes: boxes one after the other
    along the first axis, each at the origin of the others.  Same return as :func:`shelf_pack`;
    None when they do not fit that way (they may still fit shelf-packed)."""
    n = len(size)
    offsets: List[Tuple[int, ...]] = []
    used = [0] * n
    at = 0
    for e in extents:
        if at + e[0] > size[0] or any(e[k] > size[k] for k in range(1, n)):
            return None
        offsets.append((at,) + (0,) * (n - 1))
        at += e[0]
        for k in range(n):
            used[k] = max(used[k], (offsets[-1][k] if k == 0 else 0) + e[k])
    return offsets, tuple(used)

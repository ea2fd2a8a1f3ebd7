"""Shelf packing of boxes onto an N-d grid (pure Python; the auto layout of ``compile_schema``).

Boxes are placed in the given order. The last axis is filled left to right; a box that no longer
fits opens a new shelf on the axis before it (offset by the tallest box of the closed shelf),
and so on outwards, like text wrapping into lines, lines into pages. Placed boxes never overlap.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

__all__ = ["auto_canvas_width", "shelf_pack"]


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

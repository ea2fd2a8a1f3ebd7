"""Finding regions that share positions, in O(n log n) for n regions (numpy, imported lazily).

Each region is a box ``(lo_0, hi_0, lo_1, hi_1, ...)`` (half-open) of the ``(T, *spatial)`` grid.
The bounds of every box are compressed per axis (sorted unique coordinates, ``searchsorted``), so
every box covers whole cells of the compressed grid; a difference array with the ``2^d`` corners of
each box, summed along every axis, counts how many boxes cover each cell, and two boxes overlap
exactly where a count exceeds one.  That is O(n log n + cells) with ``cells`` at most the product of
the distinct bounds per axis (a few times n for the usual layouts: regions side by side, all
frames).  When that product would be large (more than :data:`MAX_CELLS`), a sweep along the axis
with the most distinct bounds compares each box only with the boxes still open there.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

__all__ = ["first_overlap", "MAX_CELLS"]

#: largest compressed grid (cells) counted with the difference array; larger ones are swept
MAX_CELLS = 1 << 22


def first_overlap(boxes: Sequence[Sequence[int]]) -> Optional[Tuple[int, int]]:
    """``(i, j)`` with ``i < j``: two boxes that share at least one position, or None when all
    are disjoint.  Empty boxes (``lo == hi`` on some axis) share nothing."""
    import numpy as np

    if len(boxes) < 2:
        return None
    b = np.asarray([tuple(x) for x in boxes], dtype=np.int64)
    lo, hi = b[:, 0::2], b[:, 1::2]
    keep = np.flatnonzero((hi > lo).all(axis=1))
    if len(keep) < 2:
        return None
    lo, hi = lo[keep], hi[keep]
    coords = [np.unique(np.concatenate([lo[:, k], hi[:, k]])) for k in range(lo.shape[1])]
    cells = 1
    for c in coords:
        cells *= max(len(c) - 1, 1)
    if cells <= MAX_CELLS:
        hit = _counted(lo, hi, coords)
    else:
        hit = _swept(lo, hi, coords)
    if hit is None:
        return None
    i, j = hit
    return int(keep[i]), int(keep[j])


def _counted(lo, hi, coords) -> Optional[Tuple[int, int]]:
    """Coverage counts on the compressed grid; the pair covering the first doubly covered cell."""
    import itertools

    import numpy as np

    d = lo.shape[1]
    clo = np.stack([np.searchsorted(coords[k], lo[:, k]) for k in range(d)], axis=1)
    chi = np.stack([np.searchsorted(coords[k], hi[:, k]) for k in range(d)], axis=1)
    shape = tuple(len(c) for c in coords)  # one more than the cells per axis: room for the hi corner
    diff = np.zeros(shape, dtype=np.int32)
    for corner in itertools.product((0, 1), repeat=d):
        idx = tuple(np.where(np.array(corner)[None, :] == 1, chi, clo).T)
        np.add.at(diff, idx, (-1) ** sum(corner))
    for k in range(d):
        np.cumsum(diff, axis=k, out=diff)
    over = np.argwhere(diff > 1)
    if len(over) == 0:
        return None
    cell = over[0]
    inside = np.flatnonzero(((clo <= cell) & (cell < chi)).all(axis=1))
    return int(inside[0]), int(inside[1])


def _swept(lo, hi, coords) -> Optional[Tuple[int, int]]:
    """Sweep along the axis with the most distinct bounds: each box is compared (vectorised) with
    the boxes whose interval on that axis is still open when it starts."""
    import numpy as np

    axis = int(np.argmax([len(c) for c in coords]))
    order = np.lexsort((np.arange(len(lo)), lo[:, axis]))
    active: List[int] = []
    for j in order.tolist():
        start = lo[j, axis]
        active = [i for i in active if hi[i, axis] > start]
        if active:
            a = np.asarray(active)
            hit = a[((lo[a] < hi[j]) & (lo[j] < hi[a])).all(axis=1)]
            if len(hit):
                return tuple(sorted((int(hit.min()), j)))
        active.append(j)
    return None

"""`RegionDict`: the ``dict`` that holds a layout's regions and counts its own changes.

``CanvasLayout.regions`` stays an ordinary, mutable mapping (canvas-engineering code writes into
it), but the layout caches what it derives from the regions (the flat-index runs of every
region frame).  To know cheaply whether that cache still describes the regions, the dict bumps
:attr:`RegionDict.version` on every change made through its methods; the layout compares the
version it last validated with the current one (O(1) per query) and re-validates on a change.
Also here: :func:`box_runs`, the flat-index runs of a region frame that the layout caches.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

__all__ = ["RegionDict", "box_runs", "change_counts"]

_MISSING = object()


class RegionDict(dict):
    """A ``dict`` of region name -> ``RegionSpec`` whose :attr:`version` grows on every change.

    Behaves like a plain dict everywhere (equality, JSON, ``repr``, pickling); only writes
    through ``dict.__setitem__`` called on it directly go unnoticed.
    """

    #: number of changes so far (a class default, so a copy made without ``__init__`` works too)
    version = 0

    def __reduce__(self) -> Any:
        # the items through dict's constructor, then the count: copy.deepcopy would otherwise set
        # the count first and then each item through __setitem__, counting every one again
        return type(self), (dict(self),), dict(vars(self))

    def _changed(self) -> None:
        self.version = self.version + 1

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._changed()

    def __ior__(self, other: Any) -> "RegionDict":
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self._changed()
        return super().setdefault(key, default)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        if key in self:
            self._changed()
        return super().pop(key) if default is _MISSING else super().pop(key, default)

    def popitem(self) -> Any:
        item = super().popitem()
        self._changed()
        return item

    def clear(self) -> None:
        super().clear()
        self._changed()


def change_counts(regions: Any) -> Optional[dict]:
    """The ``__dict__`` of a :class:`RegionDict` with its :attr:`~RegionDict.version` written into
    it (not left as the class default), which the traced staleness check reads; None for another
    mapping (e.g. in an old pickle)."""
    if not isinstance(regions, RegionDict):
        return None
    regions.version = regions.version
    return vars(regions)


def box_runs(spatial_bounds, spatial_shape, base: int) -> List[Tuple[int, int]]:
    """Maximal row-major runs of a spatial box, offset by ``base``."""
    if not spatial_shape:
        return [(base, base + 1)]
    # Trailing dims that the box spans completely merge into the run.
    k = len(spatial_shape) - 1
    while k > 0 and spatial_bounds[k] == (0, spatial_shape[k]):
        k -= 1
    lo, hi = spatial_bounds[k]
    inner = math.prod(spatial_shape[k + 1:])
    run = (hi - lo) * inner
    strides = [math.prod(spatial_shape[i + 1:]) for i in range(len(spatial_shape))]
    starts = [base + lo * strides[k]]
    for d in range(k - 1, -1, -1):
        dlo, dhi = spatial_bounds[d]
        starts = [s + c * strides[d] for c in range(dlo, dhi) for s in starts]
    starts.sort()
    runs: List[Tuple[int, int]] = []
    for s in starts:
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + run)
        else:
            runs.append((s, s + run))
    return runs

"""`RegionDict`: the ``dict`` that holds a layout's regions and counts its own changes.

``CanvasLayout.regions`` stays an ordinary, mutable mapping (canvas-engineering code writes into
it), but the layout caches what it derives from the regions (the flat-index runs of every
region frame).  To know cheaply whether that cache still describes the regions, the dict bumps
:attr:`RegionDict.version` on every change made through its methods; the layout compares the
version it last validated with the current one (O(1) per query) and re-validates on a change.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RegionDict"]

_MISSING = object()


class RegionDict(dict):
    """A ``dict`` of region name -> ``RegionSpec`` whose :attr:`version` grows on every change.

    Behaves like a plain dict everywhere (equality, JSON, ``repr``, pickling); only writes
    through ``dict.__setitem__`` called on it directly go unnoticed.
    """

    #: number of changes so far (a class default, so a copy made without ``__init__`` works too)
    version = 0

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

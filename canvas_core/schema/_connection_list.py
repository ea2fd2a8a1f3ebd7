"""`ConnectionList`: the ``list`` that holds a topology's connections and counts its own changes.

``CanvasTopology.connections`` stays an ordinary, mutable list (canvas-engineering code appends
to it), but a layer lowers the connections into a plan once, when it is built.  To tell cheaply,
before every use, whether the list still holds what the layer was built from, every change made
through the list's methods gives it a new :attr:`ConnectionList.version`, unique in the process
(:mod:`canvas_core.schema.staleness` compares it with the one recorded at the build: O(1)).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

__all__ = ["ConnectionList"]

# unique versions; a random start, so a list unpickled from another process is unlikely to share
# one with a list of this process that holds other connections
_VERSIONS = itertools.count(random.SystemRandom().getrandbits(48) << 8)


class ConnectionList(list):
    """A ``list`` of ``Connection`` whose :attr:`version` changes on every change.

    Behaves like a plain list everywhere (equality with lists, JSON, ``repr``, pickling, copies);
    only writes through ``list`` methods called on it directly (``list.append(conns, c)``) go
    unnoticed.  A copy keeps the version: it holds the same connections.
    """

    #: the version of the current contents (a class default for a copy made without ``__init__``)
    version = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.version = next(_VERSIONS)

    def __reduce__(self) -> Any:
        # the items through the constructor, then the version (see the class docstring)
        return type(self), (list(self),), dict(vars(self))

    def _changed(self) -> None:
        self.version = next(_VERSIONS)

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    def __iadd__(self, other: Any) -> "ConnectionList":
        super().__iadd__(other)
        self._changed()
        return self

    def __imul__(self, n: Any) -> "ConnectionList":
        super().__imul__(n)
        self._changed()
        return self

    def append(self, item: Any) -> None:
        super().append(item)
        self._changed()

    def extend(self, items: Any) -> None:
        super().extend(items)
        self._changed()

    def insert(self, index: Any, item: Any) -> None:
        super().insert(index, item)
        self._changed()

    def pop(self, index: Any = -1) -> Any:
        item = super().pop(index)
        self._changed()
        return item

    def remove(self, item: Any) -> None:
        super().remove(item)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:  # the order is the plan's order
        super().sort(*args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        super().reverse()
        self._changed()

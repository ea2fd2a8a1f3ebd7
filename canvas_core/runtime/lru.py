"""A bounded least-recently-used cache that tolerates threads evicting each other's entries."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class LRUCache(OrderedDict):
    """An ``OrderedDict`` kept in use order: :meth:`touch` after a hit, :meth:`trim` after an
    insert.  Both are single dict operations, so an entry another thread evicted in between is
    simply gone (no ``KeyError``), and the size never stays above the bound for long."""

    def __reduce__(self) -> Any:  # pickled as a plain OrderedDict: older canvas-core loads it
        return (OrderedDict, (list(self.items()),))

    def touch(self, key: Any) -> None:
        """Mark ``key`` as the most recently used (nothing when it was evicted meanwhile)."""
        try:
            self.move_to_end(key)
        except KeyError:
            pass

    def trim(self, size: int) -> None:
        """Drop the least recently used entries until at most ``size`` are left."""
        try:
            while len(self) > size:
                self.popitem(last=False)
        except KeyError:  # emptied by another thread meanwhile
            pass

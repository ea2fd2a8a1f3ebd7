"""Observer tables of a canvas layer that compiled code sees change.

``CanvasAttention.observe_updates`` (telemetry, ``verify_structure``, a user's own) and
:func:`observe_steps` (a rollout's steps; published by ``canvas_core.runtime.incremental``) keep
their observers in a table in the layer's ``__dict__``.  The
table used to be made by the first observer: code that ``torch.compile`` traced before then read
an absent entry, on which dynamo keeps no guard, so observers added later were never called (and
the sequence-parallel refusal of an observed layer never ran), without a word.

Every canvas layer now holds both tables from its construction (or its unpickling) on, empty
while nothing observes it.  Dynamo guards on the keys of a dict it reads, per layer, so adding or
removing an observer recompiles the code that read that layer's table at its next call; with none,
the traced code iterates an empty table and holds no observer call (``fullgraph=True`` traces as
before, no graph break), and once the last observer is removed the graph traced then serves again.
Nothing here reads a tensor (no host sync).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Tuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["UPDATE_OBSERVERS", "STEP_OBSERVERS", "add_tables", "add_observer", "observers", "observe_steps"]

UPDATE_OBSERVERS = "_update_observers"  #: ``observe_updates``'s table in a layer's ``__dict__``
STEP_OBSERVERS = "_step_observers"  #: ``observe_steps``'s table
_TABLES = (UPDATE_OBSERVERS, STEP_OBSERVERS)


def add_tables(layer: Any) -> None:
    """Give ``layer`` its (empty) observer tables where it has none: at construction and unpickling."""
    for name in _TABLES:
        if not isinstance(layer.__dict__.get(name), OrderedDict):
            layer.__dict__[name] = OrderedDict(layer.__dict__.get(name) or ())


def add_observer(layer: Any, table_name: str, entry: Any) -> RemovableHandle:
    """Put ``entry`` into ``layer``'s observer table ``table_name``; the handle's ``remove()`` takes it out."""
    add_tables(layer)  # (a module that skipped both, e.g. made with __new__)
    table = layer.__dict__[table_name]
    handle = RemovableHandle(table)  # what torch's own hooks return; keeps a weak reference to the table
    table[handle.id] = entry
    return handle


def observers(layer: Any, table_name: str) -> Tuple[Any, ...]:
    """The entries of ``layer``'s observer table ``table_name``, in the order they were added (``()``
    for none).  Outside a trace a layer without tables gets them, so that code traced later reads a
    table that is there (and guarded) rather than an absent entry."""
    table = layer.__dict__.get(table_name)
    if table is None:
        if torch.compiler.is_compiling():
            return ()
        add_tables(layer)
        return ()
    return tuple(table.values())


def observe_steps(layer: nn.Module, fn: Callable[..., None], *, cache: bool = False,
                  rows: bool = False, finite: bool = False) -> RemovableHandle:
    """Call ``fn(layer, h, t)`` after each one-frame step of ``layer`` in a rollout, ``h`` ``(B,
    (t + 1) V, D)`` the layer's inputs of frames ``0 .. t`` in canonical order (read only; the
    step computed the queries of frame ``t``).  With ``cache=True`` it is ``fn(layer, h, t, kv)``,
    ``kv`` the step's cached ``(keys, values)`` ``(B, H, (t + 1) V, head_dim)`` of frames ``0 ..
    t`` in the layer's dtype (read only), or None when the layer has no softmax-family type.
    With ``rows=True`` it also gets ``rows=``: ``{type: (B, R, D)}``, the output rows of frame
    ``t`` of each other type's module, before the mixing weights (read only).  With ``finite=True``
    it gets ``bad=``: ``(B, H, (t + 1) V)`` bool, the cached keys whose key or value holds a NaN /
    inf (kept per episode: a step examines its own frame only), or None when the layer caches no
    keys.  Telemetry uses it.  Returns a handle with ``remove()``."""
    return add_observer(layer, STEP_OBSERVERS, (fn, bool(cache), bool(rows), bool(finite)))

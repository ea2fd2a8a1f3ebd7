"""Observer tables of a canvas layer that compiled code sees change.

``CanvasAttention.observe_updates`` (telemetry, ``verify_structure``, a user's own) and
:func:`observe_steps` (a rollout's steps; published by ``canvas_core.runtime.incremental``) keep
their observers in a table in the layer's ``__dict__``, keyed by the id of the handle that removes
them (torch's :class:`~torch.utils.hooks.RemovableHandle`).

Code that ``torch.compile`` traces does not read that table: it reads the layer's *calls*, a tuple
of the table's entries that the table rebuilds whenever an entry is added or removed.  Every canvas
layer holds both (empty) from its construction or unpickling on, so code traced before the first
observer reads an empty tuple, on which dynamo keeps a guard, rather than an absent entry (on which
it keeps none: observers added later were never called, silently).  Dynamo guards on the tuple's
length and on the identity of each observer, not on the handle ids (a global counter): adding an
observer recompiles the code that read that layer's tuple once, and adding the same function again
after removing it serves the graph traced for it then, so add/remove cycles (a ``with`` around each
step, ``verify_structure`` of a compiled model) do not exhaust dynamo's recompile limit.  With no
observer the traced code holds no observer call (``fullgraph=True`` traces as before).

A table belongs to one layer: a copy (``copy.copy``, ``copy.deepcopy``) starts with empty tables of
its own, so an observer added to the copy is not called by the original, nor one of the original's
by the copy.  Nothing here reads a tensor (no host sync).

What a tool puts on a module for a while (a rollout's step function in a layer's ``__dict__``,
the hooks of a telemetry recording) belongs to that module too: :func:`keep_out_of_copies` leaves
it out of what ``copy.copy``, ``copy.deepcopy`` and ``pickle`` / ``torch.save`` take of the module
(an EMA copy taken inside ``incremental(...)`` computes with its own parameters; a model saved
inside ``record_telemetry(...)`` loads without the recording's hooks).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, FrozenSet, Iterable, Optional, Tuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["UPDATE_OBSERVERS", "STEP_OBSERVERS", "add_tables", "add_observer", "observers", "observe_steps",
           "keep_out_of_copies"]

UPDATE_OBSERVERS = "_update_observers"  #: ``observe_updates``'s table in a layer's ``__dict__``
STEP_OBSERVERS = "_step_observers"  #: ``observe_steps``'s table
_TABLES = (UPDATE_OBSERVERS, STEP_OBSERVERS)
_CALLS = "_calls"  # suffix: the tuple of a table's entries that traced code reads


class _Table(OrderedDict):
    """An observer table that keeps its layer's tuple of entries (``<table name>_calls``) in step
    with it, whoever adds or removes an entry (``RemovableHandle.remove`` deletes by key).  It
    pickles and copies as a plain ``OrderedDict``; :func:`add_tables` makes that a table again."""

    def __init__(self, layer: Any, name: str) -> None:
        super().__init__()
        self._owner: Optional["weakref.ref[Any]"] = weakref.ref(layer)
        self._name = name

    def owned_by(self, layer: Any) -> bool:
        return self._owner is not None and self._owner() is layer

    def _sync(self) -> None:
        layer = self._owner() if self._owner is not None else None
        if layer is not None and layer.__dict__.get(self._name) is self:
            layer.__dict__[self._name + _CALLS] = tuple(self.values())

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._sync()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._sync()

    def pop(self, *args: Any) -> Any:
        out = super().pop(*args)
        self._sync()
        return out

    def popitem(self, last: bool = True) -> Any:
        out = super().popitem(last)
        self._sync()
        return out

    def clear(self) -> None:
        super().clear()
        self._sync()

    def __reduce__(self) -> Any:
        return OrderedDict, (), None, None, iter(self.items())

    def __copy__(self) -> "OrderedDict[Any, Any]":
        return OrderedDict(self)


def add_tables(layer: Any) -> None:
    """Give ``layer`` empty observer tables (and their tuples) where it has none of its own: at
    construction, unpickling and copying (a shallow copy would share the original's)."""
    for name in _TABLES:
        table = layer.__dict__.get(name)
        if not (isinstance(table, _Table) and table.owned_by(layer)):
            layer.__dict__[name] = _Table(layer, name)
            layer.__dict__[name + _CALLS] = ()


def add_observer(layer: Any, table_name: str, entry: Any) -> RemovableHandle:
    """Put ``entry`` into ``layer``'s observer table ``table_name``; the handle's ``remove()`` takes it out."""
    add_tables(layer)  # (a module that skipped both, e.g. made with __new__ or copied without __setstate__)
    table = layer.__dict__[table_name]
    handle = RemovableHandle(table)  # what torch's own hooks return; keeps a weak reference to the table
    table[handle.id] = entry
    return handle


def observers(layer: Any, table_name: str) -> Tuple[Any, ...]:
    """The entries of ``layer``'s observer table ``table_name``, in the order they were added (``()``
    for none).  Outside a trace a layer without tables gets them, so that code traced later reads a
    tuple that is there (and guarded) rather than an absent entry."""
    calls = layer.__dict__.get(table_name + _CALLS)
    if calls is None:
        if torch.compiler.is_compiling():
            return ()
        add_tables(layer)
        return ()
    return calls


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


_GETSTATE = "__getstate__"  # looked up on the instance first by copy and pickle (object.__reduce_ex__)
_HOOK_DICTS = ("_forward", "_backward")  # the prefixes of torch's hook tables in a module's __dict__


class _LeftOut:
    """A module's own ``__getstate__`` (in its ``__dict__``) while tools hold entries on it: the
    state its class gives, without those entries (torch hooks by handle id, attributes by name)."""

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)
        self.held: Dict[int, Tuple[FrozenSet[int], FrozenSet[str]]] = {}

    def __call__(self) -> Any:
        module = self._module()
        state = type(module).__getstate__(module)  # nn.Module's: a copy of its __dict__
        if not isinstance(state, dict):
            return state
        ids = frozenset().union(*(h for h, _ in self.held.values()))
        names = frozenset().union(*(a for _, a in self.held.values())) | {_GETSTATE}
        out = {}
        for key, value in state.items():
            if key in names:
                continue
            if key.startswith(_HOOK_DICTS) and isinstance(value, dict) and not ids.isdisjoint(value):
                value = type(value)((k, v) for k, v in value.items() if k not in ids)
            out[key] = value
        return out


class _Kept:
    """What :func:`keep_out_of_copies` returns: ``remove()`` lets copies take the entries again."""

    def __init__(self, filt: _LeftOut, token: int) -> None:
        self._filt, self._token = filt, token

    def remove(self) -> None:
        filt = self._filt
        filt.held.pop(self._token, None)
        module = filt._module()
        if not filt.held and module is not None and module.__dict__.get(_GETSTATE) is filt:
            del module.__dict__[_GETSTATE]


_TOKENS = iter(range(1 << 62))


def keep_out_of_copies(module: nn.Module, *, hooks: Iterable[int] = (), attrs: Iterable[str] = ()) -> _Kept:
    """Leave the torch hooks of handle ids ``hooks`` and the ``__dict__`` entries ``attrs`` of
    ``module`` out of its copies and pickles until ``remove()`` of the returned handle: they refer
    to the module itself (a copy would run the original's rollout or feed its recording), and some
    cannot be pickled (closures).  A copy comes out as the module would without them."""
    filt = module.__dict__.get(_GETSTATE)
    if not isinstance(filt, _LeftOut):
        filt = module.__dict__[_GETSTATE] = _LeftOut(module)
    token = next(_TOKENS)
    filt.held[token] = (frozenset(int(h) for h in hooks), frozenset(attrs))
    return _Kept(filt, token)

"""The one way canvas-core modules export names lazily (PEP 562).

A module that hands out names defined elsewhere (often behind ``import torch``) writes::

    from canvas_core._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(__name__, {
        "CanvasAttention": "canvas_core.runtime.canvas_attention",      # same name there
        "periodic": "canvas_core.program.clock_ir:clock_periodic",       # another name there
        "SlotBindingModule": _slot_binding_class,                        # built by a function
    }, globals())

Each entry is looked up on first access only: ``"module"`` reads the attribute of the same name,
``"module:attr"`` another attribute, a callable (no arguments) builds the value.  With ``globals()``
given, the value is cached there so that later lookups skip ``__getattr__``; a module that must
not cache (its value may change, e.g. a plugin installed later) passes ``None``.  An unknown name
raises the usual ``AttributeError("module 'x' has no attribute 'y'")``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, MutableMapping, Optional, Tuple, Union

__all__ = ["lazy_exports", "Source"]

#: where a lazily exported name comes from: ``"module"``, ``"module:attr"`` or a builder.
Source = Union[str, Callable[[], Any]]


def _load(name: str, source: Source) -> Any:
    if callable(source):
        return source()
    module, _, attr = source.partition(":")
    return getattr(importlib.import_module(module), attr or name)


def lazy_exports(module_name: str, table: Dict[str, Source],
                 namespace: Optional[MutableMapping[str, Any]] = None
                 ) -> Tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for module ``module_name`` exporting the names of ``table``.

    ``table`` is read at each lookup, so a module may add entries to it after this call.
    ``namespace`` (the module's ``globals()``) caches every value looked up; ``__dir__`` lists
    its names and the table's.
    """

    def __getattr__(name: str) -> Any:
        source = table.get(name)
        if source is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = _load(name, source)
        if namespace is not None:
            namespace[name] = value
        return value

    def __dir__() -> list:
        return sorted(set(namespace or ()) | set(table))

    return __getattr__, __dir__

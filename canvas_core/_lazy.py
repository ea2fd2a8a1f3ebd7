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

A name whose plugin failed to load raises the plugin's :class:`~canvas_core.errors.PluginLoadError`
where the code names it (``module.y``, ``from module import y`` or ``*``), and
:class:`~canvas_core.errors.PluginLoadAttributeError` (an ``AttributeError`` with the same message)
where it is probed by name (``hasattr``, ``getattr``, a library doing so), so ``hasattr`` is False
and ``getattr(module, "y", None)`` None.
"""

from __future__ import annotations

import dis
import importlib
import sys
from typing import Any, Callable, Dict, MutableMapping, Optional, Tuple, Union

from canvas_core.errors import CanvasError, PluginLoadAttributeError, PluginLoadError, PluginNotInstalledError

__all__ = ["lazy_exports", "Source"]

#: where a lazily exported name comes from: ``"module"``, ``"module:attr"`` or a builder.
Source = Union[str, Callable[[], Any]]


def _load(name: str, source: Source) -> Any:
    if callable(source):
        return source()
    module, _, attr = source.partition(":")
    return getattr(importlib.import_module(module), attr or name)


#: instructions that name an attribute in the source: ``m.y`` (``LOAD_METHOD`` on Python 3.10),
#: ``from m import y``, ``from m import *`` (``IMPORT_STAR`` up to Python 3.11)
_NAMING = {dis.opmap[op] for op in ("LOAD_ATTR", "LOAD_METHOD", "IMPORT_FROM", "IMPORT_STAR") if op in dis.opmap}
#: Python 3.12+: ``from m import *`` is ``CALL_INTRINSIC_1`` with this argument (INTRINSIC_IMPORT_STAR)
_INTRINSIC_1, _INTRINSIC_IMPORT_STAR = dis.opmap.get("CALL_INTRINSIC_1", -1), 2


def _instruction(co_code: bytes, lasti: int) -> Tuple[int, int]:
    """``(opcode, argument byte)`` of the instruction at byte offset ``lasti`` of ``co_code``, its
    ``EXTENDED_ARG`` prefixes skipped (Python 3.10 may leave ``f_lasti`` on one); ``(-1, 0)``
    outside the code."""
    while 0 <= lasti < len(co_code) - 2 and co_code[lasti] == dis.EXTENDED_ARG:
        lasti += 2
    if not 0 <= lasti < len(co_code) - 1:
        return -1, 0
    return co_code[lasti], co_code[lasti + 1]


def _names_attribute(co_code: bytes, lasti: int) -> bool:
    """Whether the instruction at byte offset ``lasti`` of ``co_code`` names an attribute."""
    op, arg = _instruction(co_code, lasti)
    return op in _NAMING or (op == _INTRINSIC_1 and arg == _INTRINSIC_IMPORT_STAR)


def _caller() -> Any:
    """The frame of the code that looked the name up: the first one outside this module."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame


def _named_in_source() -> bool:
    """Whether the code that looked the name up names it in its source, ``m.y``, ``from m import
    y`` or ``*`` (for a package ``importlib._bootstrap._handle_fromlist`` probes first, with
    ``hasattr``), rather than probing with ``getattr``."""
    frame = _caller()
    if frame is None:
        return False
    code = frame.f_code
    if code.co_name == "_handle_fromlist" and code.co_filename.startswith("<frozen importlib"):
        return True
    return _names_attribute(code.co_code, frame.f_lasti)


def _imported_from() -> bool:
    """Whether the lookup is a ``from m import y``, which turns an ``AttributeError`` into a bare
    ``ImportError("cannot import name ...")`` and drops its message."""
    frame = _caller()
    return frame is not None and _instruction(frame.f_code.co_code, frame.f_lasti)[0] == dis.opmap["IMPORT_FROM"]


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
        try:
            value = _load(name, source)
        except PluginLoadError as exc:
            if _named_in_source():  # the error of the plugin, as `except PluginLoadError` expects
                raise
            err = PluginLoadAttributeError(str(exc), exc)
            err.__dict__.update({k: v for k, v in exc.__dict__.items() if k != "name"})
            err.name = name  # AttributeError.name: the attribute looked up
            raise err from exc
        except PluginNotInstalledError as exc:  # raised by a module this one re-exports from
            exc.name, exc.path = module_name, (namespace or {}).get("__file__")
            raise
        except AttributeError as exc:  # a canvas-core error (a plugin not installed): keep its message
            if isinstance(exc, CanvasError) and _imported_from():
                err = PluginNotInstalledError(str(exc))
                err.name, err.name_from = module_name, name  # as Python's own "cannot import name" sets them
                err.path = (namespace or {}).get("__file__")
                raise err from None
            raise
        if namespace is not None:
            namespace[name] = value
        return value

    def __dir__() -> list:
        return sorted(set(namespace or ()) | set(table))

    return __getattr__, __dir__

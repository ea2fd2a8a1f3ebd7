"""Helpers for the canvas-engineering-compatible module paths (``canvas_core.canvas``, ...).

Each such module re-exports names that canvas-core defines elsewhere, resolved lazily through the
top-level package so importing a torch-free path never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterable, Tuple


def reexport(module_name: str, names: Iterable[str], renamed: Dict[str, str] | None = None
             ) -> Tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for a module re-exporting ``names`` from ``canvas_core``.

    ``renamed`` maps a name of this module to ``"module:attr"`` where canvas-core defines it under
    another name or in a module the top level does not list.
    """
    names = list(names)
    renamed = dict(renamed or {})

    def __getattr__(name: str) -> Any:
        if name in renamed:
            mod, _, attr = renamed[name].partition(":")
            return getattr(importlib.import_module(mod), attr)
        if name in names:
            import canvas_core

            return getattr(canvas_core, name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__() -> list:
        return sorted(set(names) | set(renamed))

    return __getattr__, __dir__

"""Layer 4, the compiler: program -> reduced schema -> execution plan -> resolved kernels.

* :class:`ProgramCompiler` / :class:`CompiledProgram` (``compiler.py``): compile-mode passes
  (freeze, constant, export, dead elimination), lowering, resolution.
* :func:`lower` / :class:`ExecutionPlan` (``lowering.py`` / ``plan.py``): topology to rectangles.
* :func:`attention_mask` / :func:`block_mask` (``masks.py``): dense and block-sparse masks.
* ``resolution.py``: fn type -> implementation + kernel on a device; ``report.py``: the tables.

Nothing here imports torch at import time (names load lazily, PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ProgramCompiler", "CompiledProgram", "ExecutionPlan", "lower", "attention_mask", "block_mask",
    "ConnectionResolution", "resolve_connections",
]

_LAZY = {
    "ProgramCompiler": "canvas_core.compiler.compiler",
    "CompiledProgram": "canvas_core.compiler.compiler",
    "ExecutionPlan": "canvas_core.compiler.plan",
    "lower": "canvas_core.compiler.lowering",
    "attention_mask": "canvas_core.compiler.masks",
    "block_mask": "canvas_core.compiler.masks",
    "ConnectionResolution": "canvas_core.compiler.resolution",
    "resolve_connections": "canvas_core.compiler.resolution",
}

# also reachable here (not in ``__all__``), as in ``canvas_engineering.compiler``, which imported
# them into its namespace: ``from canvas_engineering.compiler import CanvasSchema`` keeps working
_ALSO = {
    "Connection": "canvas_core.schema",
    "CanvasTopology": "canvas_core.schema",
    "CanvasLayout": "canvas_core.schema",
    "RegionSpec": "canvas_core.schema",
    "CanvasSchema": "canvas_core.schema",
    "CanvasProgram": "canvas_core.program",
}
_LAZY.update(_ALSO)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'canvas_core.compiler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))

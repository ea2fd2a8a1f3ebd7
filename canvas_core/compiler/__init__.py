"""Layer 4, the compiler: program -> reduced schema -> execution plan -> resolved groups.

* :class:`ProgramCompiler` (``compiler.py``) runs the steps; :class:`CompiledProgram`
  (``compiled.py``) holds the outcome; ``passes.py`` has the mode, elimination, cortex and
  identity steps; ``report.py`` prints the tables.
* :func:`lower` / :class:`ExecutionPlan` (``lowering.py`` / ``plan.py``): a topology as weighted
  rectangles over packed positions, grouped by fn type; ``temporal.py`` the frame rules.
* :func:`resolve_plan` (``resolution.py``) gives each group its :class:`ResolvedGroup`
  (``resolved.py``): the attention entry and kernel every executing module builds from.
* :func:`block_mask` (``masks.py``): the block-sparse tile structure (and :func:`attention_mask`,
  a delegate to the runtime, which builds the dense tensor).

Torch-free.  The few places that reach into the runtime are the delegates listed in
:data:`RUNTIME_DELEGATES`; names load lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ProgramCompiler", "CompiledProgram", "ExecutionPlan", "lower", "attention_mask", "block_mask",
    "ConnectionResolution", "resolve_connections", "ResolvedGroup", "resolve_plan",
]

#: Every place where the compiler (layer 4) reaches the runtime (layer 5), each a thin delegate
#: that keeps an existing entry point working: ``"module:qualified name -> runtime module"``.
#: Nothing else under ``canvas_core/compiler`` imports torch or a layer above it; the import-graph
#: test allows exactly these.
RUNTIME_DELEGATES = (
    # builds the runtime's ModeApplier for the nn.Module a caller hands to compile(module=...)
    "canvas_core.compiler.compiler:_mode_applier -> canvas_core.runtime.modes",
    # hand out torch tensors: the plan's dense weights, the topology's dense mask, the block
    # mask's index arrays
    "canvas_core.compiler.plan:ExecutionPlan.to_dense -> canvas_core.runtime.plan_tensors",
    "canvas_core.compiler.masks:attention_mask -> canvas_core.runtime.plan_tensors",
    "canvas_core.compiler.masks:BlockMask.to_torch -> canvas_core.runtime.plan_tensors",
)

_LAZY = {
    "ProgramCompiler": "canvas_core.compiler.compiler",
    "CompiledProgram": "canvas_core.compiler.compiled",
    "ExecutionPlan": "canvas_core.compiler.plan",
    "lower": "canvas_core.compiler.lowering",
    "attention_mask": "canvas_core.compiler.masks",
    "block_mask": "canvas_core.compiler.masks",
    "ConnectionResolution": "canvas_core.compiler.resolution",
    "resolve_connections": "canvas_core.compiler.resolution",
    "resolve_plan": "canvas_core.compiler.resolution",
    "ResolvedGroup": "canvas_core.compiler.resolved",
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

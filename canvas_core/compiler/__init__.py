"""Layer 4, the compiler: program -> reduced schema -> execution plan -> resolved groups.

* :class:`ProgramCompiler` (``compiler.py``) runs the steps; :class:`CompiledProgram`
  (``compiled.py``) holds the outcome; ``passes.py`` has the mode, elimination, cortex and
  identity steps; ``report.py`` prints the tables.
* :func:`lower` / :class:`ExecutionPlan` (``lowering.py`` / ``plan.py``): a topology as weighted
  rectangles over packed positions, grouped by fn type; ``temporal.py`` the frame rules.
* :func:`resolve_plan` (``resolution.py``) returns a new plan whose groups carry their frozen
  :class:`ResolvedGroup` (``resolved.py``): the attention entry and kernel every executing module builds from.
* :func:`block_mask` (``masks.py``): the block-sparse tile structure (the dense mask is a tensor:
  ``CanvasTopology.to_attention_mask``).

Torch-free.  The few places that reach into the runtime are thin delegates, listed in the one
allow-list of upward imports (``ALLOWED_UPWARD`` in ``tests/architecture/test_import_graph.py``);
names load lazily (``canvas_core._lazy``).
"""

from __future__ import annotations

from canvas_core._lazy import lazy_exports

__all__ = [
    "ProgramCompiler", "CompiledProgram", "ExecutionPlan", "lower", "block_mask",
    "ConnectionResolution", "resolve_connections", "ResolvedGroup", "resolve_plan",
]

_LAZY = {
    "ProgramCompiler": "canvas_core.compiler.compiler",
    "CompiledProgram": "canvas_core.compiler.compiled",
    "ExecutionPlan": "canvas_core.compiler.plan",
    "lower": "canvas_core.compiler.lowering",
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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

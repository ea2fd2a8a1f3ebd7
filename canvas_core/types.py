"""canvas-engineering-compatible path: ``canvas_engineering.types`` is ``canvas_core.types``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['Field', 'LayoutStrategy', 'ConnectivityPolicy', 'BoundField', 'BoundSchema', 'compile_schema', 'compile_program', 'DEFAULT_WIRING']
# also reachable here, as in canvas-engineering (which imported them into this module)
_ALSO = ['CanvasLayout', 'RegionSpec', 'SpatiotemporalCanvas', 'CanvasTopology', 'Connection', 'CanvasSchema']
__getattr__, __dir__ = reexport(__name__, __all__ + _ALSO, {'DEFAULT_WIRING': 'canvas_core.program:DEFAULT_WIRING'})

"""canvas-engineering-compatible path: ``canvas_engineering.connectivity`` is ``canvas_core.connectivity``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['TemporalFill', 'Connection', 'CanvasTopology']
# also reachable here, as in canvas-engineering (which imported them into this module)
_ALSO = ['CanvasLayout']
__getattr__, __dir__ = reexport(__name__, __all__ + _ALSO, {})

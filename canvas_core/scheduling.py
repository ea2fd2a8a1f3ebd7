"""canvas-engineering-compatible path: ``canvas_engineering.scheduling`` is ``canvas_core.scheduling``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['RegionScheduler', 'LearnedScheduler']
# also reachable here, as in canvas-engineering (which imported them into this module)
_ALSO = ['CanvasProgram', 'ClockSpec']
__getattr__, __dir__ = reexport(__name__, __all__ + _ALSO, {})

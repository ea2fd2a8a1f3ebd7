"""canvas-engineering-compatible path: ``canvas_engineering.learning`` is ``canvas_core.learning``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['FAMILY_DEFAULTS', 'default_learning']
# also reachable here, as in canvas-engineering (which imported them into this module)
_ALSO = ['LearningSpec']
__getattr__, __dir__ = reexport(__name__, __all__ + _ALSO, {})

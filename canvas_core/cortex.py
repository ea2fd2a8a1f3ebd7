"""canvas-engineering-compatible path: ``canvas_engineering.cortex`` is ``canvas_core.cortex``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['CortexSpec', 'CortexRegistry']
__getattr__, __dir__ = reexport(__name__, __all__, {})

"""canvas-engineering-compatible path: ``canvas_engineering.curriculum`` is ``canvas_core.curriculum``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['CurriculumScheduler']
__getattr__, __dir__ = reexport(__name__, __all__, {})

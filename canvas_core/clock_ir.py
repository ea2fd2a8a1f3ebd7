"""canvas-engineering-compatible path: ``canvas_engineering.clock_ir`` is ``canvas_core.clock_ir``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['ClockContext', 'ClockExpr', 'Periodic', 'OnEvent', 'BoundaryExpr', 'And', 'Or', 'Not', 'Cooldown', 'MaxSilence', 'ClockCooldown', 'ClockMaxSilence', 'clock_periodic', 'clock_on', 'clock_boundary', 'periodic', 'on', 'boundary']
__getattr__, __dir__ = reexport(__name__, __all__, {'periodic': 'canvas_core.program.clock_ir:clock_periodic', 'on': 'canvas_core.program.clock_ir:clock_on', 'boundary': 'canvas_core.program.clock_ir:clock_boundary'})

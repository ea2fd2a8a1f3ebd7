"""canvas-engineering-compatible path: ``canvas_engineering.graft`` is ``canvas_core.graft``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['graft_looped_blocks', 'freeze_full', 'freeze_half']
# also reachable here, as in canvas-engineering (which imported them into this module)
_ALSO = ['LoopedBlockWrapper', 'ActionHead']
__getattr__, __dir__ = reexport(__name__, __all__ + _ALSO, {})

"""canvas-engineering-compatible path: ``canvas_engineering.masks`` is ``canvas_core.masks``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['MaskSpec', 'Rect', 'rect_cover', 'mask_to_index_pairs']
# also reachable here, as in canvas-engineering (which imported them into this module)
_ALSO = ['CanvasLayout']
__getattr__, __dir__ = reexport(__name__, __all__ + _ALSO, {})

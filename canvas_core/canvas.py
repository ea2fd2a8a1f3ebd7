"""canvas-engineering-compatible path: ``canvas_engineering.canvas`` is ``canvas_core.canvas``.

canvas-core defines these names elsewhere (see ``docs/design.md``); this module re-exports them
lazily, so migrating code keeps its imports.
"""

from canvas_core._compat import reexport

__all__ = ['RegionSpec', 'ATTENTION_TYPES', 'transfer_distance', 'CanvasLayout', 'SinusoidalPositionalEncodingND', 'SinusoidalPositionalEncoding3D', 'PeriodEmbedding', 'FamilyCarrierEmbedding', 'SpatiotemporalCanvas']
__getattr__, __dir__ = reexport(__name__, __all__, {})

"""Layer 2: the program layer (pure Python, never imports torch).

``Field`` declarations compile (``compile_schema`` / ``compile_program``) into a
``CanvasSchema`` plus a ``CanvasProgram`` that types every region (family, carrier, clock,
learning, compile mode, constraints, identity) and every connection (operator, trigger,
write mode). See ``docs/programs.md``.
"""

from __future__ import annotations

from canvas_core._lazy import lazy_exports
from canvas_core.program.bound import BoundField, BoundList, BoundSchema, UnknownFieldError
from canvas_core.program.canvas_program import CanvasProgram, validate_constraints
from canvas_core.program.compile import compile_program, compile_schema
from canvas_core.program.constants import (
    CARRIERS, COMPILE_MODES, DEFAULT_WIRING, OPERATORS, REGION_FAMILIES, WRITE_MODES,
)
from canvas_core.program.fields import ConnectivityPolicy, Field, LayoutStrategy
from canvas_core.program.identity import IdentitySpec
from canvas_core.program.specs import ClockSpec, ConnectionProgram, ConstraintSpec, LearningSpec, RegionProgram

__all__ = [
    "Field", "LayoutStrategy", "ConnectivityPolicy", "BoundField", "BoundList", "BoundSchema",
    "UnknownFieldError", "compile_schema", "compile_program",
    "CanvasProgram", "RegionProgram", "ConnectionProgram",
    "ClockSpec", "LearningSpec", "ConstraintSpec", "validate_constraints", "IdentitySpec",
    "REGION_FAMILIES", "CARRIERS", "OPERATORS", "WRITE_MODES", "COMPILE_MODES", "DEFAULT_WIRING",
]

# names of sibling modules written separately, resolved on first access
_LAZY = {
    "default_learning": "canvas_core.program.learning",
    "FAMILY_DEFAULTS": "canvas_core.program.learning",
    "CortexSpec": "canvas_core.program.cortex",
    "CortexRegistry": "canvas_core.program.cortex",
    # canvas_engineering.program imported it; keep `from ...program import CanvasSchema` working
    "CanvasSchema": "canvas_core.schema",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

"""Per-family learning defaults (pure Python).

Each region family has a default training recipe (``LearningSpec``): mode, losses, and the
compile mode targeted at deploy.  Set ``RegionProgram.learning`` explicitly to override.

Usage::

    from canvas_core import default_learning
    spec = default_learning("observation")
    assert spec.compile_mode == "freeze" and "next_step" in spec.losses
"""

from __future__ import annotations

from typing import Dict

from canvas_core.errors import CanvasTypeError
from canvas_core.program.constants import check_family
from canvas_core.program.specs import LearningSpec

__all__ = ["FAMILY_DEFAULTS", "default_learning"]

FAMILY_DEFAULTS: Dict[str, LearningSpec] = {
    "observation": LearningSpec(mode="ssl_prediction", losses=("next_step", "masked_prediction"),
                                compile_mode="freeze"),
    "state": LearningSpec(mode="posterior_match", losses=("predictive_consistency", "calibration"),
                          compile_mode="runtime"),
    "memory": LearningSpec(mode="retrieval", losses=("retrieval_accuracy", "write_utility"),
                           compile_mode="export"),
    "residual": LearningSpec(mode="calibration", losses=("calibration", "sparsity"), compile_mode="freeze"),
    "action": LearningSpec(mode="supervised", losses=("task",), compile_mode="freeze"),
}


def default_learning(family: str) -> LearningSpec:
    """Default ``LearningSpec`` for a region family.

    Known families get their recipe from :data:`FAMILY_DEFAULTS`; a custom family name gets a
    generic ``LearningSpec()`` (supervised, no losses, runtime compile mode), as in
    canvas-engineering.  As everywhere a family is named (``Field``, ``RegionProgram``), a name
    that looks like a misspelling of a built-in family (``"observaton"``, ``"States"``) raises
    ``ProgramError`` with a did-you-mean instead of silently getting the generic recipe; a
    non-string or empty name raises ``CanvasTypeError``.  LearningSpec is frozen, so the shared
    default objects cannot be mutated by callers.
    """
    if not isinstance(family, str):
        raise CanvasTypeError(f"default_learning: family must be a string, got {type(family).__name__} {family!r}")
    if family in FAMILY_DEFAULTS:
        return FAMILY_DEFAULTS[family]
    check_family(family, "default_learning")
    return LearningSpec()

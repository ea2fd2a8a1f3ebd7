"""A region's training recipe (:class:`LearningSpec`) and the default recipe of each family
(pure Python).

Each region family has a default ``LearningSpec``: mode, losses, and the compile mode targeted
at deploy.  Set ``RegionProgram.learning`` explicitly to override.

Usage::

    from canvas_core import default_learning
    spec = default_learning("observation")
    assert spec.compile_mode == "freeze" and "next_step" in spec.losses
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError
from canvas_core.program._check import str_tuple, text
from canvas_core.program.constants import (
    LEARNING_COMPILE_MODES, LEARNING_MODES, check_choice, check_family, looks_like_typo,
)

__all__ = ["LearningSpec", "FAMILY_DEFAULTS", "default_learning"]


@dataclass(frozen=True)
class LearningSpec:
    """The training recipe of one region: what it is trained to do, with which losses, and how
    it is compiled when deployed.

    Args:
        mode: Learning paradigm: ``"supervised"``, ``"ssl_prediction"``, ``"posterior_match"``,
            ``"retrieval"``, ``"calibration"``, ``"none"``; custom names are allowed when they are
            not a misspelling of these.
        losses: Named loss functions, interpreted by the training loop.
        compile_mode: What happens at deploy: ``"runtime"``, ``"freeze"``, ``"distill"``,
            ``"constant"`` or ``"export"``.
    """

    mode: str = "supervised"
    losses: Tuple[str, ...] = ()
    compile_mode: str = "runtime"

    def __post_init__(self) -> None:
        w = "LearningSpec"
        text(self.mode, w, "mode")
        typo = looks_like_typo(self.mode, LEARNING_MODES)
        if typo is not None:
            raise ProgramError(
                f"{w}: unknown learning mode {self.mode!r}. Did you mean {typo!r}? Known modes: "
                f"{sorted(LEARNING_MODES)}"
            )
        object.__setattr__(self, "losses", str_tuple(self.losses, w, "losses"))
        check_choice(self.compile_mode, LEARNING_COMPILE_MODES, "compile_mode", w)

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

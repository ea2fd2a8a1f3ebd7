"""Vocabularies of the program layer and the checks that enforce them (pure Python).

The five constant sets have the same values as canvas-engineering's. ``DEFAULT_WIRING`` maps a
``(src family, dst family)`` pair to the operator that :func:`compile_program` puts on the
connection between two fields of those families.
"""

from __future__ import annotations

from typing import AbstractSet, Any, Dict, Iterable, Optional, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError
from canvas_core.schema._validate import OPERATORS as _SCHEMA_OPERATORS
from canvas_core.schema._validate import REGION_FAMILIES as _SCHEMA_FAMILIES
from canvas_core.schema._validate import check_family_name, looks_like_typo, osa_distance  # noqa: F401
from canvas_core.schema.region import CARRIERS as _SCHEMA_CARRIERS
from canvas_core.schema.topology import WRITE_MODES as _SCHEMA_WRITE_MODES

__all__ = [
    "REGION_FAMILIES", "CARRIERS", "OPERATORS", "WRITE_MODES", "COMPILE_MODES",
    "LEARNING_MODES", "LEARNING_COMPILE_MODES", "CLOCK_DOMAINS", "CLOCK_MODES",
    "IDENTITY_MODES", "CONSTRAINT_VALUES", "DEFAULT_WIRING", "TEMPORAL_OPERATORS",
]

#: What kind of state a region holds (defined in the schema layer, which checks it too).
REGION_FAMILIES = _SCHEMA_FAMILIES
#: What dynamics govern a region (shared with the schema layer's ``RegionSpec.carrier``).
CARRIERS = frozenset(_SCHEMA_CARRIERS)
#: Semantic intent of a connection (shared with the schema layer's ``Connection.operator``).
OPERATORS = _SCHEMA_OPERATORS
#: How a connection's output accumulates at its destination (shared with the schema layer).
WRITE_MODES = frozenset(_SCHEMA_WRITE_MODES)
#: What happens to a region at deploy.
COMPILE_MODES = frozenset({"runtime", "freeze", "constant", "export"})
#: ``LearningSpec.mode`` values (canvas-engineering's documented paradigms).
LEARNING_MODES = frozenset({
    "supervised", "ssl_prediction", "posterior_match", "retrieval", "calibration", "none",
})
#: ``LearningSpec.compile_mode`` also documents ``"distill"`` (train a small student).
LEARNING_COMPILE_MODES = COMPILE_MODES | {"distill"}
#: Time domains of a clock: environment time, inner-loop iterations, lifecycle events.
CLOCK_DOMAINS = frozenset({"external", "internal", "boundary"})
#: Firing rules of a clock.
CLOCK_MODES = frozenset({"periodic", "on_event", "boundary"})
#: Identity management modes.
IDENTITY_MODES = frozenset({"persistent", "ephemeral", "tracklet"})
#: Allowed values of each ``ConstraintSpec`` field.
CONSTRAINT_VALUES: Dict[str, AbstractSet[str]] = {
    "equivariance": frozenset({"translation", "rotation", "permutation"}),
    "conservation": frozenset({"capacity", "energy"}),
    "causal_direction": frozenset({"acyclic", "forward_only"}),
    "monotonicity": frozenset({"non_decreasing", "non_increasing"}),
}

#: Operator wired between two fields with explicitly declared families.
DEFAULT_WIRING: Dict[Tuple[str, str], str] = {
    ("observation", "state"): "observe",
    ("state", "observation"): "predict",
    ("state", "state"): "integrate",
    ("state", "memory"): "write",
    ("memory", "state"): "retrieve",
    ("state", "action"): "act",
    ("action", "state"): "intervene",
    ("state", "residual"): "emit_residual",
    ("observation", "residual"): "emit_residual",
    ("observation", "observation"): "attend",
    ("action", "action"): "attend",
    ("memory", "memory"): "attend",
    ("residual", "residual"): "attend",
}

#: Operators that describe a change from one frame to another (auto-wiring labels every
#: state->state / action->state connection with them, as canvas-engineering does).
TEMPORAL_OPERATORS = frozenset({"integrate", "intervene"})


_osa_distance = osa_distance


def closest(name: str, known: Iterable[str]) -> Optional[str]:
    """The known name ``name`` most plausibly misspells, or None."""
    import difflib

    known = sorted(known)
    low = name.lower()
    for k in known:
        if k.lower() == low:
            return k
    best = min(known, key=lambda k: (_osa_distance(low, k), k), default=None)
    if best is not None and _osa_distance(low, best) <= max(1, len(best) // 4):
        return best
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _hint(name: str, known: Iterable[str]) -> str:
    c = closest(name, known)
    return f" Did you mean {c!r}?" if c else ""


def check_choice(value: Any, known: AbstractSet[str], what: str, where: str) -> str:
    """``value`` if it is one of ``known``; else a ProgramError naming ``where`` and the choices."""
    if not isinstance(value, str):
        raise CanvasTypeError(f"{where}: {what} must be a string, one of {sorted(known)}; got {value!r}")
    if value not in known:
        raise ProgramError(
            f"{where}: unknown {what} {value!r}.{_hint(value, known)} Use one of {sorted(known)}."
        )
    return value


def check_family(value: Any, where: str) -> str:
    """A region family: a built-in one, or a custom string that is not a typo of a built-in."""
    return check_family_name(value, where, ProgramError)


def check_operator(value: Any, where: str) -> str:
    return check_choice(value, OPERATORS, "operator", where)

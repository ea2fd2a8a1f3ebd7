"""Per-region and per-connection process semantics: clocks, learning, constraints, programs.

All specs are frozen dataclasses validated on construction: an unknown carrier, operator,
write mode, compile mode, clock mode or domain raises :class:`~canvas_core.errors.ProgramError`
naming the value, the closest known one and the choices. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError
from canvas_core.program._check import (
    nonneg_int, number, opt_pos_int, opt_text, pos_int, str_tuple,
)
from canvas_core.program.constants import (
    CARRIERS, CLOCK_DOMAINS, CLOCK_MODES, COMPILE_MODES, CONSTRAINT_VALUES, OPERATORS, WRITE_MODES, check_choice,
    check_family,
)
from canvas_core.program.learning import LearningSpec, default_learning
from canvas_core.schema.limits import check_size

if TYPE_CHECKING:  # pragma: no cover
    from canvas_core.program.identity import IdentitySpec

__all__ = ["ClockSpec", "LearningSpec", "ConstraintSpec", "RegionProgram", "ConnectionProgram"]


@dataclass(frozen=True)
class ClockSpec:
    """When a region updates.

    Args:
        domain: Time domain. ``"external"`` = environment time (canvas frames),
            ``"internal"`` = iterations of an inner loop (e.g. looped attention) within one
            external step, ``"boundary"`` = lifecycle events.
        mode: Firing rule. ``"periodic"`` = every ``period`` steps, ``"on_event"`` = when the
            residual summary ``event_source`` exceeds ``event_threshold``, ``"boundary"`` = on the
            named boundary event ``event_source``.
        period: For periodic mode, fire every N steps (>= 1).
        event_source: For on_event mode ``"region.kind"``; for boundary mode the event name.
        event_threshold: For on_event mode, fire when the summary exceeds this.
        cooldown: After firing, suppress for this many steps (>= 0).
        max_silence: Force a firing after this many silent steps (None = never).
        max_inner_steps: Most inner iterations per external step (None = as many as the loop
            runs); it bounds internal clocks and is kept, unused, on the others (as in
            canvas-engineering, so switching a clock's domain keeps its bound). At most
            ``CANVAS_MAX_LOOPS`` (1,024 by default), like a looped block's ``max_loops``.
    """

    domain: str = "external"
    mode: str = "periodic"
    period: int = 1
    event_source: Optional[str] = None
    event_threshold: float = 0.0
    cooldown: int = 0
    max_silence: Optional[int] = None
    max_inner_steps: Optional[int] = None

    def __post_init__(self) -> None:
        w = "ClockSpec"
        check_choice(self.domain, CLOCK_DOMAINS, "clock domain", w)
        check_choice(self.mode, CLOCK_MODES, "clock mode", w)
        object.__setattr__(self, "period", pos_int(self.period, w, "period", "A clock fires every `period` steps."))
        opt_text(self.event_source, w, "event_source")
        object.__setattr__(self, "event_threshold", number(self.event_threshold, w, "event_threshold"))
        object.__setattr__(self, "cooldown", nonneg_int(self.cooldown, w, "cooldown"))
        object.__setattr__(self, "max_silence", opt_pos_int(self.max_silence, w, "max_silence"))
        object.__setattr__(self, "max_inner_steps", opt_pos_int(self.max_inner_steps, w, "max_inner_steps"))
        check_size("loops", self.max_inner_steps, f"ClockSpec max_inner_steps (domain={self.domain!r})",
                   "Use fewer inner steps per external step")
        if self.mode in ("on_event", "boundary") and self.event_source is None:
            example = "'vision.prediction'" if self.mode == "on_event" else "'episode_start'"
            raise ProgramError(
                f"ClockSpec(mode={self.mode!r}) needs event_source (e.g. event_source={example})"
            )
        if self.mode == "on_event" and "." not in self.event_source.strip("."):
            raise ProgramError(
                f"ClockSpec(mode='on_event'): event_source {self.event_source!r} must be 'region.kind' (the "
                "residual summary of that kind for that region, e.g. 'vision.prediction'); without it the "
                "clock would never fire")


@dataclass(frozen=True)
class ConstraintSpec:
    """Structural constraints on a region's dynamics (checked by ``validate_constraints``).

    Args:
        equivariance: ``"translation"``, ``"rotation"``, ``"permutation"`` or None.
        conservation: ``"capacity"``, ``"energy"`` or None.
        causal_direction: ``"acyclic"`` (no cycle between regions reachable from this one) or
            ``"forward_only"`` (only connects to regions starting at the same or a later frame).
        monotonicity: ``"non_decreasing"``, ``"non_increasing"`` or None.
    """

    equivariance: Optional[str] = None
    conservation: Optional[str] = None
    causal_direction: Optional[str] = None
    monotonicity: Optional[str] = None

    def __post_init__(self) -> None:
        for key, allowed in CONSTRAINT_VALUES.items():
            value = getattr(self, key)
            if value is not None:
                check_choice(value, allowed, key, "ConstraintSpec")


def _check_spec(value, cls, where: str, what: str):
    if value is not None and not isinstance(value, cls):
        raise CanvasTypeError(f"{where}: {what} must be a {cls.__name__} or None, got {value!r}")
    return value


@dataclass(frozen=True)
class RegionProgram:
    """Process semantics of one canvas region.

    Args:
        family: What the region holds: observation, state, memory, residual, action, or a custom
            name (rejected when it looks like a misspelling of a built-in family).
        tags: Semantic sub-tags within the family, e.g. ``("belief", "object")``.
        carrier: Dynamics: deterministic, diffusive, filter, memory or residual.
        clock: When the region updates; None = always active.
        learning: Training recipe; None = the family default (``default_learning(family)``).
        compile_mode: Deploy behaviour: runtime, freeze, constant or export.
        constraints: Structural constraints; None = unconstrained.
        identity: Identity/slot persistence; None = no identity tracking.
    """

    family: str = "state"
    tags: Tuple[str, ...] = ()
    carrier: str = "deterministic"
    clock: Optional[ClockSpec] = None
    learning: Optional[LearningSpec] = None
    compile_mode: str = "runtime"
    constraints: Optional[ConstraintSpec] = None
    identity: Optional["IdentitySpec"] = None

    def __post_init__(self) -> None:
        self.validate("RegionProgram")

    def validate(self, where: str) -> None:
        from canvas_core.program.identity import IdentitySpec

        check_family(self.family, where)
        object.__setattr__(self, "tags", str_tuple(self.tags, where, "tags"))
        check_choice(self.carrier, CARRIERS, "carrier", where)
        _check_spec(self.clock, ClockSpec, where, "clock")
        _check_spec(self.learning, LearningSpec, where, "learning")
        check_choice(self.compile_mode, COMPILE_MODES, "compile_mode", where)
        _check_spec(self.constraints, ConstraintSpec, where, "constraints")
        _check_spec(self.identity, IdentitySpec, where, "identity")

    @property
    def effective_compile_mode(self) -> str:
        """The compile mode the compiler applies: an explicit ``learning.compile_mode`` other than
        ``"runtime"`` wins over ``compile_mode`` (canvas-engineering's rule), except ``"distill"``,
        which is a training recipe and leaves ``compile_mode`` in charge."""
        learned = self.learning.compile_mode if self.learning is not None else "runtime"
        return learned if learned in COMPILE_MODES and learned != "runtime" else self.compile_mode

    def resolved_learning(self) -> LearningSpec:
        """``learning``, or the family default when it is None."""
        if self.learning is not None:
            return self.learning
        return default_learning(self.family)


@dataclass(frozen=True)
class ConnectionProgram:
    """Process semantics of one connection.

    Args:
        operator: Semantic intent: attend, observe, predict, integrate, write, retrieve, act,
            intervene, emit_residual, correct, compress, bind.
        trigger: Optional firing condition over residual summaries, e.g.
            ``"vision.prediction > 0.25"``.  A recorded label only: it is validated, saved and
            loaded (as canvas-engineering keeps it) but nothing reads it, so the connection runs
            on every step its regions run; gate a region with a ``ClockSpec`` / ``RegionScheduler``.
        write_mode: Intended accumulation at the destination: add, replace or gate.  A recorded
            label only: every mode runs like ``"add"``.  Compiling a program that sets a trigger or
            a write mode other than ``"add"`` warns (``UserWarning``) that it is not applied.
    """

    operator: str = "attend"
    trigger: Optional[str] = None
    write_mode: str = "add"

    def __post_init__(self) -> None:
        w = "ConnectionProgram"
        check_choice(self.operator, OPERATORS, "operator", w)
        opt_text(self.trigger, w, "trigger")
        check_choice(self.write_mode, WRITE_MODES, "write_mode", w)

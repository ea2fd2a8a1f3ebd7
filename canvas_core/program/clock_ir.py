"""When does a region run?  Clocks as small trees of nodes that a scheduler asks at every step.

Pure Python (no torch).  :class:`ClockContext` and the :class:`ClockExpr` base class (equality, hashing,
``&`` / ``|`` / ``~``, loading from dicts) come first, then the node types.  A scheduler (``RegionScheduler``)
only calls ``expr.evaluate(ctx: ClockContext) -> bool``, so any object with that method works as a clock.

Leaves: ``Periodic(period, domain)``, ``OnEvent(source, gt, lt, domain)``, ``BoundaryExpr(name)``.
Combinators: ``And(a, b)``, ``Or(a, b)``, ``Not(child)``.  Decorators: ``Cooldown(child, steps)`` and
``MaxSilence(child, steps)``.  Sugar: ``clock_periodic``, ``clock_on``, ``clock_boundary``.
Operators: ``a & b`` is ``And(a, b)``, ``a | b`` is ``Or(a, b)``, ``~a`` is ``Not(a)``.

``expr.to_dict()`` gives a JSON-compatible dict with a ``"type"`` key, in canvas-engineering's
format (default ``domain`` and absent thresholds are omitted; a boundary is ``"boundary_expr"``,
``"boundary"`` is accepted on input).  ``ClockExpr.from_dict(d)`` (or the module-level
:func:`from_dict`) rebuilds it exactly; a malformed dict (not a dict, unknown type, unknown or
missing keys, wrong value types) raises :class:`~canvas_core.errors.SchemaFormatError` (a
``CanvasError`` and ``ValueError``) naming the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from canvas_core.errors import CanvasError, CanvasTypeError, ProgramError, SchemaError
from canvas_core.program.clock_values import (_DOMAINS, _refuse, _step, int_at_least, optional_number,  # noqa: F401
                                              summary_number, time_domain)
from canvas_core.program.clock_tree import (MAX_DEPTH, MAX_NODES, LINKS, check_dict_shape, check_tree, evaluate_shared,
                                             is_sound, load_node, same_tree, set_link, too_many)
from canvas_core.program.constants import CLOCK_DOMAINS  # noqa: F401

__all__ = [
    "ClockContext", "ClockExpr", "Periodic", "OnEvent", "BoundaryExpr", "And", "Or", "Not",
    "Cooldown", "MaxSilence", "ClockCooldown", "ClockMaxSilence",
    "clock_periodic", "clock_on", "clock_boundary", "from_dict", "ClockNotSerializableError",
    "MAX_DEPTH", "MAX_NODES",
]

#: ``"type"`` value of a node's dict -> its class (filled by the node classes below).
NODE_TYPES: Dict[str, Any] = {}


@dataclass
class ClockContext:
    """What a clock expression may look at when it decides, for one region at one step.

    Attributes:
        external_t: the step of the outside world being scheduled now.
        summaries: per region, its residual summaries by kind: ``{region: {kind: value}}``.
        boundary: the name of the lifecycle event happening at this step, or None.
        last_fired: the step at which the region last ran; -1 before its first run.
        cooldown_until: a region in cooldown stays quiet while ``external_t`` is below this
            step; 0 means no cooldown.
    """

    external_t: int = 0
    summaries: Optional[Dict[str, Dict[str, float]]] = None
    boundary: Optional[str] = None
    last_fired: int = -1
    cooldown_until: int = 0

    def __post_init__(self) -> None:
        # a fractional step makes `t % period` silently never 0; a list of summaries crashed lookups
        for key in ("external_t", "last_fired", "cooldown_until"):
            setattr(self, key, _step(key, getattr(self, key)))
        if not (self.summaries is None or isinstance(self.summaries, Mapping)):
            _refuse("summaries", "a mapping region -> {kind: number}", self.summaries)
        if not (self.boundary is None or isinstance(self.boundary, str)):
            _refuse("boundary", "an event name (a string) or None", self.boundary)


def clock_child(value: Any, what: str) -> "ClockExpr":
    """``value`` if it is a clock expression, else a CanvasTypeError naming ``what``."""
    if not isinstance(value, ClockExpr):
        raise CanvasTypeError(f"{what} must be a ClockExpr, got {type(value).__name__} {value!r}")
    return value


class ClockNotSerializableError(CanvasError, NotImplementedError):
    """A custom clock expression (a user subclass of ``ClockExpr``) without ``to_dict``."""


class ClockExpr:
    """One node of a clock expression tree: answers "does the region run now?" for a context.
    Subclass it for a custom leaf: implement ``evaluate(ctx) -> bool`` (and ``to_dict`` if it must be
    saved; ``from_dict`` only knows the built-in node types).  Such a node composes with ``And`` / ``Or`` /
    ``Not`` / the decorators and works in ``RegionScheduler``; without ``to_dict`` it compares and hashes
    by identity."""

    _keys: tuple = ()
    _required: tuple = ()
    _level = 1  # nesting depth of the tree below this node (leaves: 1), as far as this node knows
    _size = 1  # node count of the tree below written out (shared nodes once per place); set by check_tree

    def __setattr__(self, name: str, value: Any) -> None:
        # every field is checked as the constructor checks it, also when set later (p.period = 0)
        if name in self._keys:
            value = self._checked(name, value)
        if name in LINKS and isinstance(value, ClockExpr):
            self._set_link(name, value)
        else:
            object.__setattr__(self, name, value)

    def _checked(self, name: str, value: Any) -> Any:
        """``value`` for the field ``name`` once it passes the field's check (subclasses)."""
        return value

    def _set_link(self, name: str, value: "ClockExpr") -> None:
        # a tree deeper than from_dict accepts, or a cycle, overflows the stack in evaluate / to_dict /
        # == / hash: refused here when the nodes below know it, else at the next use (clock_tree.py)
        set_link(self, name, value, ClockExpr)

    def _ensure_sound(self) -> None:
        """Refuse (ProgramError) a tree changed into a cycle or past MAX_DEPTH since it was built."""
        if not is_sound(self):
            check_tree(self, ClockExpr, MAX_DEPTH)

    def evaluate(self, ctx: ClockContext) -> bool:
        """True when the region should run at the step ``ctx`` describes."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(ctx) -> bool")

    def to_dict(self) -> dict:
        """This node (and its children) as plain dicts, lists, strings and numbers."""
        raise ClockNotSerializableError(
            f"{type(self).__name__} is a custom clock expression without to_dict(); implement "
            "to_dict() to save it, or build the clock from the built-in nodes")

    def _serializable(self) -> bool:
        return type(self).to_dict is not ClockExpr.to_dict

    @classmethod
    def from_dict(cls, d: dict) -> "ClockExpr":
        """Rebuild a node from :meth:`to_dict` output; the ``'type'`` key picks the node class.  A dict
        nested past ``MAX_DEPTH`` or describing more than ``MAX_NODES`` nodes is refused before any is built."""
        check_dict_shape(d, "ClockExpr.from_dict()")
        return _load(d)

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return False
        if not (self._serializable() and other._serializable()):  # type: ignore[union-attr]
            return self is other
        try:
            if max(self._written_size(), other._written_size()) > MAX_NODES:  # type: ignore[union-attr]
                return same_tree(self, other, ClockExpr)  # to_dict would refuse it
            return self.to_dict() == other.to_dict()  # type: ignore[union-attr]
        except ClockNotSerializableError:  # a custom node somewhere inside
            return self is other

    def __hash__(self) -> int:
        try:  # past MAX_NODES, equal trees have the same shape
            size = self._written_size()
            return hash((type(self).__name__, size, self._level) if size > MAX_NODES else repr(self.to_dict()))
        except ClockNotSerializableError:
            return id(self)

    def _written_size(self) -> int:
        """Node count of this tree written out (shared nodes once per place); walks it if it changed."""
        self._ensure_sound()
        return self._size

    def __repr__(self) -> str:
        if any(k in LINKS for k in self._keys) and self._written_size() > MAX_NODES:
            return f"<{type(self).__name__}: a clock of {self._size:,} nodes written out, {self._level} levels deep>"
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._keys)
        return f"{type(self).__name__}({args})"

    # a & b, a | b and ~a build And, Or and Not nodes
    def __and__(self, other: "ClockExpr") -> "ClockExpr":
        return And(self, other)

    def __or__(self, other: "ClockExpr") -> "ClockExpr":
        return Or(self, other)

    def __invert__(self) -> "ClockExpr":
        return Not(self)


def _load(d: Any) -> ClockExpr:
    """One node of a dict whose shape ``from_dict`` has checked, and its children."""
    return load_node(d, NODE_TYPES)


class _Combinator(ClockExpr):
    """A node whose answer combines its children's: ``evaluate`` asks each node of the tree once per
    call, however often it is shared (``x = And(x, x)``), instead of once per path to it."""

    def evaluate(self, ctx: ClockContext) -> bool:
        self._ensure_sound()
        return evaluate_shared(self, ctx, _Combinator.evaluate)

    def _inputs(self, ctx: ClockContext) -> tuple:
        """The children whose answers ``_combine`` needs at ``ctx``, in the order they are asked."""
        return tuple(getattr(self, k) for k in self._keys if k in LINKS)

    def _combine(self, ctx: ClockContext, values: list) -> bool:
        raise NotImplementedError

    def _written(self) -> None:
        """Refuse (ProgramError) to write out a tree past ``MAX_NODES``, before anything is allocated."""
        if self._written_size() > MAX_NODES:
            raise too_many(f"{type(self).__name__}.to_dict()", self._size, ProgramError)


class Periodic(ClockExpr):
    """Runs at the steps that are multiples of ``period`` (``external_t % period == 0``); the
    ``domain`` is recorded for the scheduler and the saved form."""

    _keys = ("period", "domain")
    _required = ()

    def __init__(self, period: int = 1, domain: str = "external"):
        self.period = period
        self.domain = domain

    def _checked(self, name: str, value: Any) -> Any:
        return int_at_least(value, "Periodic.period", 1) if name == "period" else time_domain(value, "Periodic")

    def evaluate(self, ctx: ClockContext) -> bool:
        return ctx.external_t % self.period == 0

    def to_dict(self) -> dict:
        return _with_domain({"type": "periodic", "period": self.period}, self.domain)

    @classmethod
    def _from(cls, d: dict) -> "Periodic":
        return cls(d.get("period", 1), d.get("domain", "external"))


class OnEvent(ClockExpr):
    """Runs while a residual summary of some region lies beyond a bound (``gt``) or below one (``lt``).
    *source* is ``"region_name.kind_name"`` looked up in ``ctx.summaries``: split at the last
    dot, as canvas-engineering and ``RegionScheduler`` do (so region names may contain dots);
    when that region has no summaries, split at the first dot (kind names with dots).  At least
    one of *gt* / *lt* is required; with both the condition is ``gt < val < lt``.  A missing
    summary never fires (canvas-engineering reads it as 0.0, see docs/design.md)."""

    _keys = ("source", "gt", "lt", "domain")
    _required = ("source",)

    def __init__(self, source: str, gt: Optional[float] = None, lt: Optional[float] = None,
                 domain: str = "external"):
        self.source = source
        self.gt = gt
        self.lt = lt
        _check_band(self.source, self.gt, self.lt)  # at construction the pair is checked at once
        object.__setattr__(self, "_band", True)
        self.domain = domain

    def _checked(self, name: str, value: Any) -> Any:
        if name == "source":
            if not isinstance(value, str) or "." not in value:
                raise SchemaError(f"OnEvent.source must be 'region.kind', got {value!r}")
            return value
        if name == "domain":
            return time_domain(value, "OnEvent")
        value = optional_number(value, f"OnEvent.{name}")
        # assigned later, gt and lt are checked as a pair at the next use (_band_ok): moving a band
        # takes two assignments, and the one in between may be empty (gt=5 before lt=10)
        self.__dict__.pop("_band", None)
        return value

    def _band_ok(self) -> None:
        """Refuse (SchemaError) bounds assigned since construction that can never fire together."""
        if "_band" not in self.__dict__:
            _check_band(self.source, self.gt, self.lt, assigned=True)
            object.__setattr__(self, "_band", True)

    def evaluate(self, ctx: ClockContext) -> bool:
        self._band_ok()
        summaries = ctx.summaries or {}
        region, kind = self.source.rsplit(".", 1)
        if region not in summaries:
            region, kind = self.source.split(".", 1)
        per_region = summaries.get(region) or {}
        if not isinstance(per_region, Mapping):
            raise CanvasTypeError(f"summaries[{region!r}] must be a mapping kind -> number, got "
                                  f"{type(per_region).__name__} {per_region!r:.80}")
        val = per_region.get(kind)
        if val is None:
            return False
        val = summary_number(val, region, kind)
        return (self.gt is None or val > self.gt) and (self.lt is None or val < self.lt)

    def to_dict(self) -> dict:
        self._band_ok()  # (== and hash compare to_dict())
        bounds = {key: v for key, v in (("gt", self.gt), ("lt", self.lt)) if v is not None}
        return _with_domain({"type": "on_event", "source": self.source, **bounds}, self.domain)

    @classmethod
    def _from(cls, d: dict) -> "OnEvent":
        return cls(d["source"], d.get("gt"), d.get("lt"), d.get("domain", "external"))


def _check_band(source: str, gt: Optional[float], lt: Optional[float], assigned: bool = False) -> None:
    """Refuse bounds no finite summary can satisfy (or none at all), naming the OnEvent; ``assigned``:
    the bounds were assigned after construction (the message names both fields to set)."""
    later = (" (OnEvent.gt and OnEvent.lt as assigned after construction; they are checked together when "
             "the clock is next used: set both, in either order, before using it)") if assigned else ""
    if gt is None and lt is None:
        raise SchemaError(f"OnEvent({source!r}) needs at least one of gt= or lt= "
                          f"(OnEvent requires at least one of gt= or lt=){later}")
    lo = -math.inf if gt is None else gt
    hi = math.inf if lt is None else lt
    if not lo < hi or lo == math.inf or hi == -math.inf:
        raise SchemaError(
            f"OnEvent({source!r}, gt={gt!r}, lt={lt!r}) can never fire: no finite summary is "
            f"above {gt!r} and below {lt!r}{later}. For a band give gt < lt; to fire outside a band "
            f"use Or(OnEvent({source!r}, gt=...), OnEvent({source!r}, lt=...))")


class BoundaryExpr(ClockExpr):
    """Runs at the step where the lifecycle event called ``name`` happens (``ctx.boundary == name``)."""

    _keys = ("name",)
    _required = ("name",)

    def __init__(self, name: str):
        self.name = name

    def _checked(self, name: str, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise SchemaError(f"BoundaryExpr.name must be a non-empty string, got {value!r}")
        return value

    def evaluate(self, ctx: ClockContext) -> bool:
        return ctx.boundary == self.name

    def to_dict(self) -> dict:
        return {"type": "boundary_expr", "name": self.name}

    @classmethod
    def _from(cls, d: dict) -> "BoundaryExpr":
        return cls(d["name"])


class _Binary(_Combinator):
    _keys = ("left", "right")
    _required = ("left", "right")
    _tag = ""

    def __init__(self, left: ClockExpr, right: ClockExpr):
        self.left = left
        self.right = right

    def _checked(self, name: str, value: Any) -> Any:
        return clock_child(value, f"{type(self).__name__}.{name}")

    def to_dict(self) -> dict:
        self._written()
        return {"type": self._tag, "left": self.left.to_dict(), "right": self.right.to_dict()}

    @classmethod
    def _from(cls, d: dict) -> ClockExpr:
        return cls(_load(d["left"]), _load(d["right"]))


class And(_Binary):
    """Runs only at steps where ``left`` and ``right`` would both run."""

    _tag = "and"

    def _combine(self, ctx: ClockContext, values: list) -> bool:
        # both sides are asked every time (no short cut), so neither side's answer depends on the order
        a, b = values
        return a and b


class Or(_Binary):
    """Runs at steps where ``left``, ``right`` or both would run."""

    _tag = "or"

    def _combine(self, ctx: ClockContext, values: list) -> bool:
        a, b = values
        return a or b


class Not(_Combinator):
    """Runs exactly at the steps where ``child`` would not."""

    _keys = ("child",)
    _required = ("child",)

    def __init__(self, child: ClockExpr):
        self.child = child

    def _checked(self, name: str, value: Any) -> Any:
        return clock_child(value, "Not.child")

    def _combine(self, ctx: ClockContext, values: list) -> bool:
        return not values[0]

    def to_dict(self) -> dict:
        self._written()
        return {"type": "not", "child": self.child.to_dict()}

    @classmethod
    def _from(cls, d: dict) -> "Not":
        return cls(_load(d["child"]))


class Cooldown(_Combinator):
    """After each run, keeps the region quiet for ``steps`` steps: fires when the child fires and
    ``ctx.external_t >= ctx.cooldown_until`` (the scheduler sets ``cooldown_until = t + steps`` on a fire)."""

    _keys = ("child", "steps")
    _required = ("child",)

    _min_steps = 0

    def __init__(self, child: ClockExpr, steps: int = 1):
        self.child = child
        self.steps = steps

    def _checked(self, name: str, value: Any) -> Any:
        what = f"{type(self).__name__}.{name}"
        return clock_child(value, what) if name == "child" else int_at_least(value, what, self._min_steps)

    def _inputs(self, ctx: ClockContext) -> tuple:
        return (self.child,) if ctx.external_t >= ctx.cooldown_until else ()  # in cooldown: child not asked

    def _combine(self, ctx: ClockContext, values: list) -> bool:
        return values[0] if values else False

    def to_dict(self) -> dict:
        self._written()
        return {"type": "cooldown", "child": self.child.to_dict(), "steps": self.steps}

    @classmethod
    def _from(cls, d: dict) -> "Cooldown":
        return cls(_load(d["child"]), d.get("steps", 1))


class MaxSilence(_Combinator):
    """Makes the region run once it has been quiet for ``steps`` steps: fires when the child fires, when
    ``external_t - last_fired >= steps``, or when it never fired (``last_fired < 0``, as canvas-engineering)."""

    _keys = ("child", "steps")
    _required = ("child",)
    _min_steps = 1

    def __init__(self, child: ClockExpr, steps: int = 10):
        self.child = child
        self.steps = steps

    _checked = Cooldown._checked

    def _combine(self, ctx: ClockContext, values: list) -> bool:
        fired = values[0]
        return fired or ctx.last_fired < 0 or (ctx.external_t - ctx.last_fired) >= self.steps

    def to_dict(self) -> dict:
        self._written()
        return {"type": "max_silence", "child": self.child.to_dict(), "steps": self.steps}

    @classmethod
    def _from(cls, d: dict) -> "MaxSilence":
        return cls(_load(d["child"]), d.get("steps", 10))


NODE_TYPES.update({
    "periodic": Periodic, "on_event": OnEvent, "boundary_expr": BoundaryExpr, "boundary": BoundaryExpr,
    "and": And, "or": Or, "not": Not, "cooldown": Cooldown, "max_silence": MaxSilence,
})


def _with_domain(d: dict, domain: str) -> dict:
    if domain != "external":  # canvas-engineering omits the default domain
        d["domain"] = domain
    return d


def from_dict(d: dict) -> ClockExpr:
    """The module-level spelling of :meth:`ClockExpr.from_dict`."""
    return ClockExpr.from_dict(d)


ClockCooldown, ClockMaxSilence = Cooldown, MaxSilence


def clock_periodic(n: int = 1, domain: str = "external") -> ClockExpr:
    """Shorthand for ``Periodic(n, domain)``."""
    return Periodic(n, domain)


def clock_on(source: str, gt: Optional[float] = None, lt: Optional[float] = None,
             domain: str = "external") -> ClockExpr:
    """Shorthand for ``OnEvent(source, gt, lt, domain)``."""
    return OnEvent(source, gt, lt, domain)


def clock_boundary(name: str) -> ClockExpr:
    """Shorthand for ``BoundaryExpr(name)``."""
    return BoundaryExpr(name)

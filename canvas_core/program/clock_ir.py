"""Clock expression IR: a small composable AST describing *when* a region fires.

Pure Python (no torch).  Evaluation protocol (duck-typed by ``RegionScheduler``):
``expr.evaluate(ctx: ClockContext) -> bool``.

Leaves: ``Periodic(period, domain)``, ``OnEvent(source, gt, lt, domain)``, ``BoundaryExpr(name)``.
Combinators: ``And(a, b)``, ``Or(a, b)``, ``Not(child)``.
Decorators: ``Cooldown(child, steps)`` (no firing while ``ctx.external_t < ctx.cooldown_until``,
the scheduler sets ``cooldown_until = t + steps`` after a fire) and ``MaxSilence(child, steps)``
(forces a fire once ``external_t - last_fired >= steps``, and whenever the region never fired,
``last_fired < 0``, as in canvas-engineering).
Sugar: ``clock_periodic``, ``clock_on``, ``clock_boundary``.
Operators: ``a & b`` is ``And(a, b)``, ``a | b`` is ``Or(a, b)``, ``~a`` is ``Not(a)``.

``expr.to_dict()`` gives a JSON-compatible dict with a ``"type"`` key, in canvas-engineering's
format (default ``domain`` and absent thresholds are omitted; a boundary is ``"boundary_expr"``,
``"boundary"`` is accepted on input).  ``ClockExpr.from_dict(d)`` (or the module-level
:func:`from_dict`) rebuilds it exactly; a malformed dict (not a dict, unknown type, unknown or
missing keys, wrong value types) raises :class:`~canvas_core.errors.SchemaFormatError` (a
``CanvasError`` and ``ValueError``) naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError, SchemaFormatError
from canvas_core.program.constants import CLOCK_DOMAINS

__all__ = [
    "ClockContext", "ClockExpr", "Periodic", "OnEvent", "BoundaryExpr", "And", "Or", "Not",
    "Cooldown", "MaxSilence", "ClockCooldown", "ClockMaxSilence",
    "clock_periodic", "clock_on", "clock_boundary", "from_dict", "ClockNotSerializableError",
]

_DOMAINS = tuple(sorted(CLOCK_DOMAINS))  # same time domains as ClockSpec


@dataclass
class ClockContext:
    """Runtime context for evaluating clock expressions.

    Attributes:
        external_t: Current external timestep.
        summaries: Residual summaries ``{region: {kind: float}}``.
        boundary: Optional named boundary event this step.
        last_fired: Timestep the owning region last fired (-1 if never).
        cooldown_until: Timestep until which cooldown is active (0 if none).
    """

    external_t: int = 0
    summaries: Optional[Dict[str, Dict[str, float]]] = None
    boundary: Optional[str] = None
    last_fired: int = -1
    cooldown_until: int = 0


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchemaError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _domain(value: Any, what: str) -> str:
    if value not in _DOMAINS:
        raise SchemaError(f"{what}: domain must be one of {_DOMAINS}, got {value!r}")
    return value


def _expr(value: Any, what: str) -> "ClockExpr":
    if not isinstance(value, ClockExpr):
        raise CanvasTypeError(f"{what} must be a ClockExpr, got {type(value).__name__} {value!r}")
    return value


def _num(value: Any, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SchemaError(f"{what} must be a number (not NaN) or None, got {value!r}")
    return float(value)


class ClockNotSerializableError(CanvasError, NotImplementedError):
    """A custom clock expression (a user subclass of ``ClockExpr``) without ``to_dict``."""


#: deepest nesting ``ClockExpr.from_dict`` accepts (far beyond any hand-written clock)
MAX_DEPTH = 200


def _depth(d: Any) -> int:
    """Nesting depth of a clock dict (iterative, so a hostile dict cannot blow the stack)."""
    best, stack = 0, [(d, 1)]
    while stack:
        node, k = stack.pop()
        best = max(best, k)
        if k > MAX_DEPTH:
            return k
        if isinstance(node, dict):
            stack.extend((node[key], k + 1) for key in ("child", "left", "right") if isinstance(node.get(key), dict))
    return best


class ClockExpr:
    """Base class for clock expression AST nodes.

    Subclass it for a custom leaf: implement ``evaluate(ctx) -> bool`` (and ``to_dict`` if it
    must be saved; ``from_dict`` only knows the built-in node types).  Such a node composes with
    ``And`` / ``Or`` / ``Not`` / the decorators and works in ``RegionScheduler``; without
    ``to_dict`` it compares and hashes by identity.
    """

    _keys: tuple = ()
    _required: tuple = ()

    def evaluate(self, ctx: ClockContext) -> bool:
        """Evaluate this expression in the given context."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(ctx) -> bool")

    def to_dict(self) -> dict:
        """Serialize to a JSON-compatible dict."""
        raise ClockNotSerializableError(
            f"{type(self).__name__} is a custom clock expression without to_dict(); implement "
            "to_dict() to save it, or build the clock from the built-in nodes")

    def _serializable(self) -> bool:
        return type(self).to_dict is not ClockExpr.to_dict

    @classmethod
    def from_dict(cls, d: dict) -> "ClockExpr":
        """Deserialize from a dict.  Dispatches on the ``'type'`` key."""
        if not isinstance(d, dict):
            raise SchemaFormatError(
                f"clock expression must be a dict with a 'type' key, got {type(d).__name__} {d!r:.120}")
        if _depth(d) > MAX_DEPTH:
            raise SchemaFormatError(f"clock expression is nested more than {MAX_DEPTH} levels deep; "
                                    "flatten it (a clock this deep is almost certainly generated by mistake)")
        kind = d.get("type")
        node = _TYPES.get(kind) if isinstance(kind, str) else None
        if node is None:
            raise SchemaFormatError(
                f"clock expression {d!r:.120}: unknown type {kind!r}; expected one of {sorted(_TYPES)}")
        allowed = {"type", *node._keys}
        extra = set(d) - allowed
        if extra:
            raise SchemaFormatError(f"clock expression {d!r:.120}: unknown keys {sorted(extra)} for type "
                                    f"{kind!r} (allowed: {sorted(allowed)})")
        missing = [k for k in node._required if k not in d]
        if missing:
            raise SchemaFormatError(f"clock expression {d!r:.120}: type {kind!r} needs keys {missing}")
        try:
            return node._from(d)
        except SchemaFormatError:
            raise
        except (CanvasTypeError, SchemaError) as exc:
            raise SchemaFormatError(f"clock expression {d!r:.120}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return False
        if not (self._serializable() and other._serializable()):  # type: ignore[union-attr]
            return self is other
        try:
            return self.to_dict() == other.to_dict()  # type: ignore[union-attr]
        except ClockNotSerializableError:  # a custom node somewhere inside
            return self is other

    def __hash__(self) -> int:
        try:
            return hash(repr(self.to_dict()))
        except ClockNotSerializableError:
            return id(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._keys)
        return f"{type(self).__name__}({args})"

    # sugar: a & b, a | b, ~a
    def __and__(self, other: "ClockExpr") -> "ClockExpr":
        return And(self, other)

    def __or__(self, other: "ClockExpr") -> "ClockExpr":
        return Or(self, other)

    def __invert__(self) -> "ClockExpr":
        return Not(self)


class Periodic(ClockExpr):
    """Fire every *period* steps in the given time domain (when ``external_t % period == 0``)."""

    _keys = ("period", "domain")
    _required = ()

    def __init__(self, period: int = 1, domain: str = "external"):
        self.period = _int(period, "Periodic.period", 1)
        self.domain = _domain(domain, "Periodic")

    def evaluate(self, ctx: ClockContext) -> bool:
        return ctx.external_t % self.period == 0

    def to_dict(self) -> dict:
        return _with_domain({"type": "periodic", "period": self.period}, self.domain)

    @classmethod
    def _from(cls, d: dict) -> "Periodic":
        return cls(d.get("period", 1), d.get("domain", "external"))


class OnEvent(ClockExpr):
    """Fire when a residual summary crosses a threshold.

    *source* is ``"region_name.kind_name"`` looked up in ``ctx.summaries``: split at the last
    dot, as canvas-engineering and ``RegionScheduler`` do (so region names may contain dots);
    when that region has no summaries, split at the first dot (kind names with dots).  At least
    one of *gt* / *lt* is required; with both the condition is ``gt < val < lt``.  A missing
    summary never fires (canvas-engineering reads it as 0.0, see docs/design.md).
    """

    _keys = ("source", "gt", "lt", "domain")
    _required = ("source",)

    def __init__(self, source: str, gt: Optional[float] = None, lt: Optional[float] = None,
                 domain: str = "external"):
        if not isinstance(source, str) or "." not in source:
            raise SchemaError(f"OnEvent.source must be 'region.kind', got {source!r}")
        self.source = source
        self.gt = _num(gt, "OnEvent.gt")
        self.lt = _num(lt, "OnEvent.lt")
        if self.gt is None and self.lt is None:
            raise SchemaError(f"OnEvent({source!r}) needs at least one of gt= or lt=")
        self.domain = _domain(domain, "OnEvent")

    def evaluate(self, ctx: ClockContext) -> bool:
        summaries = ctx.summaries or {}
        region, kind = self.source.rsplit(".", 1)
        if region not in summaries:
            region, kind = self.source.split(".", 1)
        val = (summaries.get(region) or {}).get(kind)
        if val is None:
            return False
        if self.gt is not None and not val > self.gt:
            return False
        if self.lt is not None and not val < self.lt:
            return False
        return True

    def to_dict(self) -> dict:
        d: dict = {"type": "on_event", "source": self.source}
        if self.gt is not None:
            d["gt"] = self.gt
        if self.lt is not None:
            d["lt"] = self.lt
        return _with_domain(d, self.domain)

    @classmethod
    def _from(cls, d: dict) -> "OnEvent":
        return cls(d["source"], d.get("gt"), d.get("lt"), d.get("domain", "external"))


class BoundaryExpr(ClockExpr):
    """Fire on a named lifecycle boundary event (``ctx.boundary == name``)."""

    _keys = ("name",)
    _required = ("name",)

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise SchemaError(f"BoundaryExpr.name must be a non-empty string, got {name!r}")
        self.name = name

    def evaluate(self, ctx: ClockContext) -> bool:
        return ctx.boundary == self.name

    def to_dict(self) -> dict:
        return {"type": "boundary_expr", "name": self.name}

    @classmethod
    def _from(cls, d: dict) -> "BoundaryExpr":
        return cls(d["name"])


class _Binary(ClockExpr):
    _keys = ("left", "right")
    _required = ("left", "right")
    _tag = ""

    def __init__(self, left: ClockExpr, right: ClockExpr):
        self.left = _expr(left, f"{type(self).__name__}.left")
        self.right = _expr(right, f"{type(self).__name__}.right")

    def to_dict(self) -> dict:
        return {"type": self._tag, "left": self.left.to_dict(), "right": self.right.to_dict()}

    @classmethod
    def _from(cls, d: dict) -> ClockExpr:
        return cls(ClockExpr.from_dict(d["left"]), ClockExpr.from_dict(d["right"]))


class And(_Binary):
    """Fire when both children fire."""

    _tag = "and"

    def evaluate(self, ctx: ClockContext) -> bool:
        # evaluate both (no short-circuit) so stateless semantics stay symmetric
        a, b = self.left.evaluate(ctx), self.right.evaluate(ctx)
        return a and b


class Or(_Binary):
    """Fire when either child fires."""

    _tag = "or"

    def evaluate(self, ctx: ClockContext) -> bool:
        a, b = self.left.evaluate(ctx), self.right.evaluate(ctx)
        return a or b


class Not(ClockExpr):
    """Invert: fire when the child does NOT fire."""

    _keys = ("child",)
    _required = ("child",)

    def __init__(self, child: ClockExpr):
        self.child = _expr(child, "Not.child")

    def evaluate(self, ctx: ClockContext) -> bool:
        return not self.child.evaluate(ctx)

    def to_dict(self) -> dict:
        return {"type": "not", "child": self.child.to_dict()}

    @classmethod
    def _from(cls, d: dict) -> "Not":
        return cls(ClockExpr.from_dict(d["child"]))


class Cooldown(ClockExpr):
    """Suppress re-firing for *steps* steps after a fire.

    Fires when the child fires and ``ctx.external_t >= ctx.cooldown_until``; the scheduler that
    owns the context sets ``cooldown_until = t + steps`` whenever the region fires.
    """

    _keys = ("child", "steps")
    _required = ("child",)

    def __init__(self, child: ClockExpr, steps: int = 1):
        self.child = _expr(child, "Cooldown.child")
        self.steps = _int(steps, "Cooldown.steps", 0)

    def evaluate(self, ctx: ClockContext) -> bool:
        if ctx.external_t < ctx.cooldown_until:
            return False
        return self.child.evaluate(ctx)

    def to_dict(self) -> dict:
        return {"type": "cooldown", "child": self.child.to_dict(), "steps": self.steps}

    @classmethod
    def _from(cls, d: dict) -> "Cooldown":
        return cls(ClockExpr.from_dict(d["child"]), d.get("steps", 1))


class MaxSilence(ClockExpr):
    """Force a fire after *steps* steps of silence regardless of the child.

    Fires when the child fires, when ``ctx.external_t - ctx.last_fired >= steps``, or when the
    region never fired (``ctx.last_fired < 0``; canvas-engineering's behaviour).
    """

    _keys = ("child", "steps")
    _required = ("child",)

    def __init__(self, child: ClockExpr, steps: int = 10):
        self.child = _expr(child, "MaxSilence.child")
        self.steps = _int(steps, "MaxSilence.steps", 1)

    def evaluate(self, ctx: ClockContext) -> bool:
        fired = self.child.evaluate(ctx)
        return fired or ctx.last_fired < 0 or (ctx.external_t - ctx.last_fired) >= self.steps

    def to_dict(self) -> dict:
        return {"type": "max_silence", "child": self.child.to_dict(), "steps": self.steps}

    @classmethod
    def _from(cls, d: dict) -> "MaxSilence":
        return cls(ClockExpr.from_dict(d["child"]), d.get("steps", 10))


_TYPES: Dict[str, Any] = {
    "periodic": Periodic, "on_event": OnEvent, "boundary_expr": BoundaryExpr, "boundary": BoundaryExpr,
    "and": And, "or": Or, "not": Not, "cooldown": Cooldown, "max_silence": MaxSilence,
}


def _with_domain(d: dict, domain: str) -> dict:
    if domain != "external":  # canvas-engineering omits the default domain
        d["domain"] = domain
    return d


def from_dict(d: dict) -> ClockExpr:
    """Rebuild a clock expression from :meth:`ClockExpr.to_dict` output (see ``ClockExpr.from_dict``)."""
    return ClockExpr.from_dict(d)

ClockCooldown = Cooldown
ClockMaxSilence = MaxSilence


def clock_periodic(n: int = 1, domain: str = "external") -> ClockExpr:
    """Create a :class:`Periodic` clock expression."""
    return Periodic(n, domain)


def clock_on(source: str, gt: Optional[float] = None, lt: Optional[float] = None,
             domain: str = "external") -> ClockExpr:
    """Create an :class:`OnEvent` clock expression."""
    return OnEvent(source, gt, lt, domain)


def clock_boundary(name: str) -> ClockExpr:
    """Create a :class:`BoundaryExpr` clock expression."""
    return BoundaryExpr(name)

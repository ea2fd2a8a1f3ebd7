"""The common ground of clock expressions: :class:`ClockContext`, the :class:`ClockExpr` base class
(equality, hashing, ``&`` / ``|`` / ``~``, loading from dicts) and the argument checks the node
types share.  The node types themselves are in :mod:`canvas_core.program.clock_ir`.

Pure Python (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError, SchemaFormatError
from canvas_core.program.constants import CLOCK_DOMAINS

__all__ = [
    "ClockContext", "ClockExpr", "ClockNotSerializableError", "MAX_DEPTH", "NODE_TYPES",
    "int_at_least", "time_domain", "clock_child", "optional_number",
]

_DOMAINS = tuple(sorted(CLOCK_DOMAINS))  # the time domains ClockSpec knows

#: ``"type"`` value of a node's dict -> its class (filled by :mod:`canvas_core.program.clock_ir`).
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


def int_at_least(value: Any, what: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``, else a SchemaError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchemaError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def time_domain(value: Any, what: str) -> str:
    """``value`` if it names one of the clock time domains, else a SchemaError."""
    if value not in _DOMAINS:
        raise SchemaError(f"{what}: domain must be one of {_DOMAINS}, got {value!r}")
    return value


def clock_child(value: Any, what: str) -> "ClockExpr":
    """``value`` if it is a clock expression, else a CanvasTypeError naming ``what``."""
    if not isinstance(value, ClockExpr):
        raise CanvasTypeError(f"{what} must be a ClockExpr, got {type(value).__name__} {value!r}")
    return value


def optional_number(value: Any, what: str) -> Optional[float]:
    """None, or ``value`` as a float when it is a real number (not a bool, not NaN)."""
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
    """One node of a clock expression tree: answers "does the region run now?" for a context.

    Subclass it for a custom leaf: implement ``evaluate(ctx) -> bool`` (and ``to_dict`` if it
    must be saved; ``from_dict`` only knows the built-in node types).  Such a node composes with
    ``And`` / ``Or`` / ``Not`` / the decorators and works in ``RegionScheduler``; without
    ``to_dict`` it compares and hashes by identity.
    """

    _keys: tuple = ()
    _required: tuple = ()

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
        """Rebuild a node from :meth:`to_dict` output; the ``'type'`` key picks the node class."""
        if not isinstance(d, dict):
            raise SchemaFormatError(
                f"clock expression must be a dict with a 'type' key, got {type(d).__name__} {d!r:.120}")
        if _depth(d) > MAX_DEPTH:
            raise SchemaFormatError(f"clock expression is nested more than {MAX_DEPTH} levels deep; "
                                    "flatten it (a clock this deep is almost certainly generated by mistake)")
        import canvas_core.program.clock_ir  # noqa: F401  (fills NODE_TYPES)

        kind = d.get("type")
        node = NODE_TYPES.get(kind) if isinstance(kind, str) else None
        if node is None:
            raise SchemaFormatError(
                f"clock expression {d!r:.120}: unknown type {kind!r} (Unknown ClockExpr type: {kind!r}); "
                f"expected one of {sorted(NODE_TYPES)}")
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

    # a & b, a | b and ~a build And, Or and Not nodes
    def __and__(self, other: "ClockExpr") -> "ClockExpr":
        from canvas_core.program.clock_ir import And

        return And(self, other)

    def __or__(self, other: "ClockExpr") -> "ClockExpr":
        from canvas_core.program.clock_ir import Or

        return Or(self, other)

    def __invert__(self) -> "ClockExpr":
        from canvas_core.program.clock_ir import Not

        return Not(self)



"""A layout given to a layer together with a plan must be the layout the plan was lowered from.

``CanvasAttention(plan, layout)`` (and ``AttentionDispatcher``, built on it) runs the plan's
indices, which describe ``plan.layout``; a layout given beside it used to be read only for its
``d_model``, so another layout was run as the plan's without a word (another region placement:
other positions updated; another grid: a shape error at the first call).
:func:`check_plan_layout` refuses such a layout when the layer is built, naming what differs.

Compared is what a module built from a layout copies out of it, as the staleness checks compare it
(:mod:`canvas_core.schema.staleness`): ``T``, ``spatial_shape``, ``d_model`` and the regions
(name -> spec, in any order, field by field: canvas-engineering's specs compare with
canvas-core's by the fields both have).  ``t_current`` and ``allow_overlap`` move no position and may
differ; an equal copy of the plan's layout is accepted.
"""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Any, List, Optional

from canvas_core.errors import CanvasTypeError, SchemaError
from canvas_core.schema.staleness import check_unchanged, layout_stamp

__all__ = ["check_plan_layout", "layout_differences"]

#: differing parts a refusal names before "(and k more)"
_NAMED = 3

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxtuple = 40, 40, 8


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a comparison that fails counts as a difference
        return False


def _shape(layout: Any) -> Any:
    shape = getattr(layout, "spatial_shape", None)
    if shape is None:  # a layout with H / W only
        shape = tuple(v for v in (getattr(layout, "H", None), getattr(layout, "W", None)) if v is not None)
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return shape


def _fields(spec: Any) -> List[str]:
    if dataclasses.is_dataclass(spec):
        return [f.name for f in dataclasses.fields(spec)]
    return list(getattr(spec, "__dict__", {}))


def _region_difference(name: str, given: Any, held: Any) -> Optional[str]:
    """What differs in region ``name`` (None: nothing): the differing fields of the two specs,
    compared field by field over the fields both have (a canvas-engineering ``RegionSpec`` beside
    canvas-core's), else the two specs."""
    theirs = set(_fields(held))
    common = [f for f in _fields(given) if f in theirs]
    if not common:
        return None if _same(given, held) else (
            f"region {name!r} is {_short.repr(given)} in the layout given, {_short.repr(held)} in the plan's")
    return "; ".join(f"region {name!r} {f} {_short.repr(getattr(given, f))} in the layout given, "
                     f"{_short.repr(getattr(held, f))} in the plan's"
                     for f in common if not _same(getattr(given, f), getattr(held, f))) or None


def layout_differences(given: Any, held: Any) -> List[str]:
    """The parts in which layout ``given`` differs from ``held`` (the plan's), one phrase each,
    empty when they place every position alike (see the module docstring)."""
    parts = []
    for what, read in (("T", lambda lay: getattr(lay, "T", None)), ("spatial_shape", _shape),
                       ("d_model", lambda lay: getattr(lay, "d_model", None))):
        a, b = read(given), read(held)
        if not _same(a, b):
            parts.append(f"{what}={a!r} in the layout given, {b!r} in the plan's")
    mine, theirs = dict(getattr(given, "regions", {})), dict(getattr(held, "regions", {}))
    only_given = [n for n in mine if n not in theirs]
    only_held = [n for n in theirs if n not in mine]
    if only_given:
        parts.append(f"region(s) {only_given} only in the layout given")
    if only_held:
        parts.append(f"region(s) {only_held} only in the plan's")
    for name in mine:
        if name in theirs and mine[name] is not theirs[name]:
            part = _region_difference(name, mine[name], theirs[name])
            parts += [part] if part else []
    return parts


def check_plan_layout(plan: Any, layout: Any, where: str) -> None:
    """Refuse (``SchemaError``) ``layout``, given to ``where`` beside ``plan``, unless it is the
    plan's layout or an equal copy of it; a plan whose own layout changed since it was lowered is
    refused first, as stale.  O(regions), once per build."""
    held = plan.layout
    if layout is held:
        return
    if not hasattr(layout, "T") or not hasattr(layout, "regions"):
        raise CanvasTypeError(f"{where}(plan, layout): layout must be a CanvasLayout, got {type(layout).__name__}; "
                              "leave it out with a plan (the plan's own layout is used)")
    layout_stamp(held)  # counts a region replaced behind the dict's back
    check_unchanged(held, getattr(plan, "layout_stamp", None), f"ExecutionPlan given to {where}")
    parts = layout_differences(layout, held)
    if not parts:
        return
    more = f" (and {len(parts) - _NAMED} more)" if len(parts) > _NAMED else ""
    raise SchemaError(
        f"{where}(plan, layout): the layout given is not the one the plan was lowered from ("
        f"{'; '.join(parts[:_NAMED])}{more}), and the plan's indices place the positions of its own "
        "layout; lower the plan from this layout (lower(topology, layout)) and pass that, or leave "
        "layout out to run the plan's")

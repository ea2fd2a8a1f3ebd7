"""Whether a layout given beside an :class:`ExecutionPlan` is one the plan describes.

A plan holds indices lowered from ``plan.layout``; a layout given with it (to ``CanvasAttention`` /
``AttentionDispatcher``, ``block_mask``, ``attention_mask``) describes the same plan when lowering
it would give the same indices.  Lowering reads from a layout only ``T``, ``spatial_shape`` and,
per region (by name, in any order), its ``bounds``, its ``period`` (which frames link) and its
``default_attn`` (the function type of the connections leaving it that set no ``fn``).  Everything
else (``d_model``, ``t_current``, ``allow_overlap``, a region's ``is_output``, ``loss_weight``,
``semantic_type``, ...) places no position and may differ.  A region given as a bare bounds tuple
(as canvas-engineering layouts allow) counts as a spec with those bounds and the defaults.

:func:`layout_differences` is the one comparison; :func:`describe_differences` words it for a
refusal.  O(regions).
"""

from __future__ import annotations

import reprlib
from typing import Any, Dict, List, Optional

__all__ = ["describe_differences", "layout_differences"]

#: differing parts a refusal names before "(and k more)"
NAMED = 3
#: the defaults of a region given as a bare bounds tuple (canvas-core's RegionSpec defaults)
_DEFAULTS = {"period": 1, "default_attn": "cross_attention"}

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxtuple = 40, 40, 8


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a comparison that fails counts as a difference
        return False


def _ints(value: Any) -> Any:
    """``value`` as a tuple of ints when it is a sequence of integers, else unchanged."""
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        return value


def _shape(layout: Any) -> Any:
    shape = getattr(layout, "spatial_shape", None)
    if shape is None:  # a layout with H / W only
        shape = tuple(v for v in (getattr(layout, "H", None), getattr(layout, "W", None)) if v is not None)
    return _ints(shape)


def _placement(spec: Any) -> Dict[str, Any]:
    """What lowering reads of one region: ``bounds`` (tuple of ints), ``period``, ``default_attn``;
    a spec without ``bounds`` is taken as the bounds themselves."""
    if not hasattr(spec, "bounds"):
        return {"bounds": _ints(spec), **_DEFAULTS}
    out = {"bounds": _ints(spec.bounds)}
    for field, default in _DEFAULTS.items():
        value = getattr(spec, field, default)
        out[field] = default if value is None else value
    return out


def _region_parts(name: str, given: Any, held: Any) -> List[str]:
    mine, theirs = _placement(given), _placement(held)
    return [f"region {name!r} {field} {_short.repr(mine[field])} in the layout given, "
            f"{_short.repr(theirs[field])} in the plan's"
            for field in mine if not _same(mine[field], theirs[field])]


def _top_parts(given: Any, held: Any) -> List[str]:
    parts = []
    for what, read in (("T", lambda lay: getattr(lay, "T", None)), ("spatial_shape", _shape)):
        a, b = read(given), read(held)
        if not _same(a, b):
            parts.append(f"{what}={a!r} in the layout given, {b!r} in the plan's")
    return parts


def layout_differences(given: Any, held: Any) -> List[str]:
    """The parts in which layout ``given`` differs from ``held`` (the plan's) in what lowering
    reads (see the module docstring), one phrase each; empty when both lower alike."""
    if given is held:
        return []
    parts = _top_parts(given, held)
    mine, theirs = dict(getattr(given, "regions", {})), dict(getattr(held, "regions", {}))
    only_given = [n for n in mine if n not in theirs]
    only_held = [n for n in theirs if n not in mine]
    if only_given:
        parts.append(f"region(s) {only_given} only in the layout given")
    if only_held:
        parts.append(f"region(s) {only_held} only in the plan's")
    for name in mine:
        if name in theirs and mine[name] is not theirs[name]:
            parts += _region_parts(name, mine[name], theirs[name])
    return parts


def describe_differences(given: Any, held: Any) -> Optional[str]:
    """The first :data:`NAMED` differences of :func:`layout_differences`, joined, with
    "(and k more)" past them; None when the layouts lower alike."""
    parts = layout_differences(given, held)
    if not parts:
        return None
    more = f" (and {len(parts) - NAMED} more)" if len(parts) > NAMED else ""
    return "; ".join(parts[:NAMED]) + more


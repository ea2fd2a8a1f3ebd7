"""A layout given to a layer together with a plan must be one the plan describes.

``CanvasAttention(plan, layout)`` (and ``AttentionDispatcher``, built on it) runs the plan's
indices, which describe ``plan.layout``; a layout given beside it used to be read only for its
``d_model``, so another layout was run as the plan's without a word (another region placement:
other positions updated; another grid: a shape error at the first call).
:func:`check_plan_layout` refuses such a layout when the layer is built, naming what differs.

Compared is only what lowering reads (:mod:`canvas_core.compiler.layout_match`, the comparison
``block_mask`` and ``attention_mask`` use too): ``T``, ``spatial_shape`` and each region's bounds,
period and ``default_attn``, by name in any order, a bare bounds tuple counting as a spec with
those bounds.  Fields that place no position (``d_model``, ``t_current``, a region's
``loss_weight`` or ``semantic_type``, ...) may differ; the layer still reads ``d_model`` from the
layout given when no ``d_model`` argument is passed.
"""

from __future__ import annotations

from typing import Any

from canvas_core.compiler.layout_match import describe_differences, layout_differences
from canvas_core.errors import CanvasTypeError, SchemaError
from canvas_core.schema.staleness import check_unchanged, layout_stamp

__all__ = ["check_plan_layout", "layout_differences"]


def check_plan_layout(plan: Any, layout: Any, where: str) -> None:
    """Refuse (``SchemaError``) ``layout``, given to ``where`` beside ``plan``, unless it lowers
    like the plan's layout (see the module docstring); a plan whose own layout changed since it
    was lowered is refused first, as stale.  O(regions), once per build."""
    held = plan.layout
    if layout is held:
        return
    if not hasattr(layout, "T") or not hasattr(layout, "regions"):
        raise CanvasTypeError(f"{where}(plan, layout): layout must be a CanvasLayout, got {type(layout).__name__}; "
                              "leave it out with a plan (the plan's own layout is used)")
    layout_stamp(held)  # counts a region replaced behind the dict's back
    check_unchanged(held, getattr(plan, "layout_stamp", None), f"ExecutionPlan given to {where}")
    differs = describe_differences(layout, held)
    if differs is None:
        return
    raise SchemaError(
        f"{where}(plan, layout): the layout given is not the one the plan was lowered from ({differs}), "
        "and the plan's indices place the positions of its own layout; lower the plan from this layout "
        "(lower(topology, layout)) and pass that, or leave layout out to run the plan's")

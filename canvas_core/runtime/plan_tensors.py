"""Torch tensors made from a plan: the dense weight matrix and the topology's attention mask.

The plan itself (:mod:`canvas_core.compiler.plan`) is numpy only; whoever needs its weights as a
tensor comes here.  ``ExecutionPlan.to_dense`` is a thin delegate to :func:`dense_weights`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from canvas_core.compiler.lowering import lower
from canvas_core.compiler.masks import check_plan_current
from canvas_core.compiler.plan import ExecutionPlan
from canvas_core.errors import CanvasTypeError, SchemaError
from canvas_core.schema.limits import check_elements

__all__ = ["dense_weights", "attention_mask"]


def dense_weights(plan: Any, device: Any = "cpu", fn: Optional[str] = None, canonical: bool = True,
                  dtype: Any = None, *, where: str = "dense_weights") -> torch.Tensor:
    """``(N, N)`` weights of fn type ``fn`` (every type when None): at ``[i, j]`` the largest
    weight of a rectangle linking query i to key j, 0 where none.

    Two gathers from the plan's segment grid, no scatter over N x N.  ``canonical=True`` indexes
    positions canonically (the ``to_attention_mask`` convention), False in packed order.  A link
    whose weight is below the smallest positive value of ``dtype`` (default float32) shows that
    smallest value, not 0, so that every linked pair reads as linked.  ``where`` is the name the
    errors give the call (what the user called: ``ExecutionPlan.to_dense``, ``attention_mask``, ...).
    A plan whose layout or topology changed since it was lowered is refused (``SchemaError``):
    its rectangles are those of the old connections.
    """
    dtype = dtype or torch.float32
    if not isinstance(plan, ExecutionPlan):
        raise CanvasTypeError(f"{where}: plan must be an ExecutionPlan (lower(topology, layout)), got "
                              f"{type(plan).__name__}")
    check_plan_current(plan, where)
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype == torch.bool):
        # an integer dtype would round every weight below 1 to 0: linked pairs reading as unlinked
        raise CanvasTypeError(f"{where}: dtype must be a floating torch dtype (or torch.bool: "
                              f"linked or not), got {dtype!r}; e.g. dtype=torch.float32")
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise SchemaError(f"{where}: cannot place the weights on device {device!r} ({exc}); pass "
                          "a device this machine has, e.g. 'cpu'") from None
    check_elements((plan.n, plan.n), f"{where}: the dense (N, N) weight matrix of {plan.n:,} positions")
    if plan.n == 0:
        return torch.zeros(0, 0, device=device, dtype=dtype)
    sg = plan.segment_grid(fn)
    rows = torch.from_numpy(sg.row_segment_of(plan.n)).to(device)
    cols = torch.from_numpy(sg.col_segment_of(plan.n)).to(device)
    if canonical:
        inv = torch.from_numpy(plan.inv_perm).to(device)
        rows, cols = rows[inv], cols[inv]
    grid = np.asarray(sg.grid)
    if dtype.is_floating_point:
        # a positive weight below the dtype's smallest positive value (1e-50 in float32) is kept
        # at that value: rounded to 0 it would read as "not linked", and the runtime links it
        fi = torch.finfo(dtype)
        least = fi.tiny * fi.eps  # the smallest subnormal
        grid = np.where((grid > 0) & (grid < least), least, grid)
    small = torch.from_numpy(grid).to(device=device, dtype=dtype)
    return small[rows][:, cols]


def attention_mask(topology: Any, layout: Any, device: Any = "cpu", *, plan: Any = None,
                   where: str = "attention_mask") -> torch.Tensor:
    """``(N, N)`` float32 mask of a topology on a layout, canonical order: the largest weight that
    links query i to key j over all connections (fill weights included), 0 where nothing does.

    What ``CanvasTopology.to_attention_mask`` returns; built from the lowered plan (``plan`` when
    given, else ``lower(topology, layout)``); ``where`` names the call in errors.  A given plan is
    refused (``SchemaError``) once its topology or layout changed since it was lowered, or when it
    was lowered from another topology or layout than the ones given (None: the plan's own).
    """
    if plan is None:
        plan = lower(topology, layout)
    elif not isinstance(plan, ExecutionPlan):
        raise CanvasTypeError(f"{where}: plan must be an ExecutionPlan (lower(topology, layout)), got "
                              f"{type(plan).__name__}")
    else:
        check_plan_current(plan, where, topology, layout)
    return dense_weights(plan, device=device, fn=None, canonical=True, where=where)

"""`AttentionDispatcher`: canvas-engineering's public dispatcher, running on `CanvasAttention`.

Same constructor and ``forward(x, active_regions=None)`` as ``canvas_engineering.dispatch``:
``x`` is ``(B, N, d_model)``; the result is the updated hidden states ``(B, N, d_model)``,
positions not in any (active) source region passing through unchanged.  The execution is
DESIGN.md's: one fused call per fn type (see :mod:`canvas_core.runtime.canvas_attention`),
incoming connections combined as ``sum_f W_f out_f / sum_f W_f``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Set

import numpy as np
import torch

from canvas_core.compiler.lowering import lower
from canvas_core.compiler.plan import ExecutionPlan
from canvas_core.errors import CanvasTypeError
from canvas_core.runtime.canvas_attention import CanvasAttention, plan_stamps

__all__ = ["AttentionDispatcher"]


def _without_time(topology: Any) -> Any:
    if getattr(topology, "connections", None) is None:
        return topology  # not a topology: the layer's build says so
    conns = [dataclasses.replace(c, t_src=None, t_dst=None) for c in topology.connections]
    return type(topology)(connections=conns)


def _plan_without_time(plan: ExecutionPlan) -> ExecutionPlan:
    """``plan`` lowered again from its topology with every offset dropped; same fn type per
    connection and each group's resolution (kernel) kept.  A plan without offsets is returned
    as it is.  A plan whose layout or topology changed since it was lowered is refused first."""
    plan_stamps(plan, "AttentionDispatcher")  # stale: refused, naming the fix
    conns = plan.topology.connections
    if all(c.t_src is None and c.t_dst is None for c in conns):
        return plan
    bare = lower(_without_time(plan.topology), plan.layout, resolve_fn=list(plan.fn_of_connection),
                 warn_unlinked=False)
    groups = {fn: dataclasses.replace(g, resolved=plan.groups[fn].resolved) for fn, g in bare.groups.items()}
    return dataclasses.replace(bare, groups=groups)


def _skip_time(plan_or_topology: Any) -> Any:
    """What the layer runs under ``skip_temporal=True``: the topology or plan without offsets."""
    if isinstance(plan_or_topology, ExecutionPlan):
        return _plan_without_time(plan_or_topology)
    return _without_time(plan_or_topology)


def _check_arguments(skip_temporal: Any, accumulator: Any) -> None:
    if not isinstance(skip_temporal, (bool, np.bool_)) and skip_temporal not in (0, 1):
        raise CanvasTypeError(f"AttentionDispatcher: skip_temporal must be True or False, got {skip_temporal!r} "
                              f"({type(skip_temporal).__name__})")
    if accumulator is not None and not callable(getattr(accumulator, "update", None)):
        raise CanvasTypeError(f"AttentionDispatcher: residual_accumulator {type(accumulator).__name__} has no "
                              "update(region, error) method; pass a canvas_core.ResidualAccumulator or None")


class AttentionDispatcher(CanvasAttention):
    """canvas-engineering's dispatcher interface on top of :class:`CanvasAttention`.

    The topology is lowered and resolved once, when the layer is built (one registry lookup per
    fn type); ``forward`` then runs one kernel call per softmax-family type and one module call
    per other type, never one call per connection.

    Args:
        topology: the ``CanvasTopology`` to run, or an ``ExecutionPlan`` lowered from one.
        layout: the ``CanvasLayout`` that places its regions.
        d_model: width of the hidden states.
        n_heads: heads of the softmax-family attention.
        dropout: attention dropout, applied only in training mode.
        skip_temporal: drop every ``t_src`` / ``t_dst`` first, so each connection links all
            frames of its regions.  A plan is lowered again from its topology without them
            (each connection keeps its fn type, each type its resolved kernel).
        residual_accumulator: optional ``ResidualAccumulator``; after each forward, each region
            it tracks (and the layout has) receives ``output - x`` restricted to that region.
        **kwargs: forwarded to :class:`CanvasAttention` (``kernel``, ``attention_factory``, ...).
    """

    def __init__(self, topology: Any, layout: Any, d_model: int, n_heads: int = 4,
                 dropout: float = 0.0, skip_temporal: bool = False, residual_accumulator=None,
                 **kwargs: Any) -> None:
        _check_arguments(skip_temporal, residual_accumulator)
        topo = _skip_time(topology) if skip_temporal else topology
        super().__init__(topo, layout, d_model=d_model, n_heads=n_heads, dropout=dropout, **kwargs)
        self.topology = topology
        self.layout = layout
        self.skip_temporal = bool(skip_temporal)
        self.residual_accumulator = residual_accumulator
        self._residual_index = {}
        if residual_accumulator is not None:
            names = getattr(residual_accumulator, "region_names", ())
            names = names() if callable(names) else names
            for name in ((names,) if isinstance(names, str) else names):  # one name, not its letters
                if name in layout.regions:
                    idx = torch.as_tensor(layout.region_indices(name), dtype=torch.long)
                    self._residual_index[name] = idx

    def forward(self, x: torch.Tensor, active_regions: Optional[Set[str]] = None) -> torch.Tensor:
        """``(B, N, d_model)`` -> ``(B, N, d_model)`` updated hidden states."""
        out = super().forward(x, active_regions)
        if self.residual_accumulator is not None:
            for name, idx in self._residual_index.items():
                idx = idx.to(x.device)
                self.residual_accumulator.update(name, (out - x).index_select(1, idx).detach())
        return out

    def __repr__(self) -> str:
        from canvas_core._reprs import dispatcher_repr  # canvas-engineering's text

        return dispatcher_repr(list(self.plan.fn_of_connection))

    @property
    def summaries(self):
        """The accumulator's summaries per region right now (None without an accumulator)."""
        acc = self.residual_accumulator
        return acc.summaries() if acc is not None else None

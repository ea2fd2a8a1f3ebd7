"""Torch side of the declarative layers' canvas-engineering-compatible methods.

``schema``, ``program``, ``plugins`` and ``compiler`` never import torch or a layer above them.
A handful of methods there must still hand out torch objects because canvas-engineering offers
them on the declarative classes:

* ``CanvasLayout.loss_weight_mask``
* ``CanvasTopology.to_attention_mask`` / ``to_additive_mask``
* ``BoundSchema.build_canvas`` / ``build_semantic_conditioner``

Each of those is a two-line delegate to a function here.  They, the compiler's few delegates
into the runtime and ``CanvasTopology.to_block_mask`` (which lowers through the compiler, numpy
only) are the only upward imports out of the lower layers, all in the one allow-list
``ALLOWED_UPWARD`` of ``tests/architecture/test_import_graph.py``. The functions take the declarative object as their first argument and do the work.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from canvas_core.compiler.lowering import lower
from canvas_core.errors import SchemaError
from canvas_core.runtime.plan_tensors import attention_mask
from canvas_core.schema.limits import check_elements

__all__ = [
    "layout_loss_weight_mask",
    "topology_attention_mask",
    "topology_additive_mask",
    "bound_schema_canvas",
    "bound_schema_semantic_conditioner",
]


def _device(device: Any, what: str) -> torch.device:
    """``device`` as a ``torch.device`` that can hold a tensor here, else a ``SchemaError`` naming
    the method (a misspelt device, or a CUDA device on a machine without one)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SchemaError(
            f"{what}: device {device!r} is not a torch device ({exc}); pass e.g. 'cpu' or 'cuda'"
        ) from None
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise SchemaError(f"{what}: cannot place the mask on {str(dev)!r}: {exc}; pass a device this "
                          "machine has, e.g. 'cpu'") from None
    return dev


def layout_loss_weight_mask(layout: Any, device: Any = "cpu") -> torch.Tensor:
    """``(N,)`` float32: each ``is_output`` region adds its ``loss_weight`` at its positions
    (overlaps add up); every other position is 0."""
    device = _device(device, "loss_weight_mask")
    weights = torch.zeros(layout.num_positions, dtype=torch.float32)
    for name, spec in layout.regions.items():
        if spec.is_output and spec.loss_weight:
            idx = torch.tensor(layout.region_indices(name), dtype=torch.long)
            weights.index_add_(0, idx, torch.full((idx.numel(),), spec.loss_weight))
    return weights.to(device)


def topology_attention_mask(topology: Any, layout: Any, device: Any = "cpu") -> torch.Tensor:
    """``(N, N)`` float mask of a validated topology: the largest linking weight, 0 where none."""
    return attention_mask(topology, layout, device=_device(device, "to_attention_mask"),
                          where="CanvasTopology.to_attention_mask")


def topology_additive_mask(topology: Any, layout: Any, device: Any = "cpu") -> torch.Tensor:
    """``(N, N)`` float32 additive mask: ``log(weight)`` where linked, ``-inf`` elsewhere; a query
    row that reaches no key keeps a 0 on its own diagonal so that a softmax over it never yields NaN.

    The logarithm is taken in float64 on the plan's segment grid (the weights as declared) and
    only then cast to float32, as the runtime's kernels do: a weight below float32's smallest
    normal (about 1e-38) would otherwise be flushed or rounded before the log and its link lost or
    mis-biased.  Every weight the schema accepts (finite, > 0) gives a finite bias: the log of the
    smallest positive double is about -744.4 and of the largest about 709.8, both well inside
    float32's range.
    """
    device = _device(device, "to_additive_mask")
    plan = lower(topology, layout)
    n = int(plan.n)
    check_elements((n, n), f"the dense (N, N) additive mask of {n:,} positions")
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float32, device=device)
    sg = plan.segment_grid(None)
    grid = np.asarray(sg.grid, dtype=np.float64)
    linked = grid > 0
    logw = np.full(grid.shape, -np.inf)
    logw[linked] = np.log(grid[linked])  # float64: no weight underflows here
    inv = plan.inv_perm  # canonical order, as to_attention_mask
    rows, cols = sg.row_segment_of(n)[inv], sg.col_segment_of(n)[inv]
    lonely = torch.from_numpy(np.flatnonzero(~linked.any(axis=1)[rows])).to(device)
    small = torch.from_numpy(logw.astype(np.float32)).to(device)
    add = small[torch.from_numpy(rows).to(device)][:, torch.from_numpy(cols).to(device)]
    add[lonely, lonely] = 0.0
    return add


def bound_schema_canvas(bound: Any, semantic_conditioner: Any = None) -> Any:
    """A ``SpatiotemporalCanvas`` over the bound schema's layout."""
    from canvas_core.runtime.canvas import SpatiotemporalCanvas

    return SpatiotemporalCanvas(bound.layout, semantic_conditioner=semantic_conditioner)


def bound_schema_semantic_conditioner(bound: Any, embed_fn: Any, embed_dim: Optional[int] = None,
                                      freeze_embeddings: bool = True,
                                      learn_residuals: bool = True) -> Any:
    """A ``SemanticConditioner`` whose per-field embeddings come from ``embed_fn`` applied to the
    fields' names (or their declared semantic types)."""
    from canvas_core.runtime.semantic_conditioner import SemanticConditioner
    from canvas_core.semantic import compute_semantic_embeddings

    types = {n: s.semantic_type for n, s in bound.region_specs.items() if s.semantic_type}
    embeddings = compute_semantic_embeddings(bound.field_names, embed_fn, semantic_types=types)
    if embed_dim is None:
        embed_dim = len(next(iter(embeddings.values()))) if embeddings else 1
    return SemanticConditioner(
        d_model=bound.layout.d_model, embed_dim=embed_dim, region_embeddings=embeddings,
        freeze_embeddings=freeze_embeddings, learn_residuals=learn_residuals,
    )

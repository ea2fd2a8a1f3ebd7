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

import torch

from canvas_core.runtime.plan_tensors import attention_mask
from canvas_core.errors import SchemaError

__all__ = [
    "layout_loss_weight_mask",
    "topology_attention_mask",
    "topology_additive_mask",
    "bound_schema_canvas",
    "bound_schema_semantic_conditioner",
]


def layout_loss_weight_mask(layout: Any, device: Any = "cpu") -> torch.Tensor:
    """``(N,)`` float32: each ``is_output`` region adds its ``loss_weight`` at its positions
    (overlaps add up); every other position is 0."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SchemaError(
            f"loss_weight_mask: device {device!r} is not a torch device ({exc}); pass e.g. 'cpu' or 'cuda'"
        ) from None
    weights = torch.zeros(layout.num_positions, dtype=torch.float32)
    for name, spec in layout.regions.items():
        if spec.is_output and spec.loss_weight:
            idx = torch.tensor(layout.region_indices(name), dtype=torch.long)
            weights.index_add_(0, idx, torch.full((idx.numel(),), spec.loss_weight))
    try:
        return weights.to(device)
    except (RuntimeError, AssertionError) as exc:  # e.g. a CUDA device on a machine without one
        raise SchemaError(f"loss_weight_mask: cannot place the mask on {str(device)!r}: {exc}") from None


def topology_attention_mask(topology: Any, layout: Any, device: Any = "cpu") -> torch.Tensor:
    """``(N, N)`` float mask of a validated topology: the largest linking weight, 0 where none."""
    return attention_mask(topology, layout, device=device)


def topology_additive_mask(topology: Any, layout: Any, device: Any = "cpu") -> torch.Tensor:
    """``log(weight)`` where linked, ``-inf`` elsewhere; a query row that reaches no key keeps
    a 0 on its own diagonal so that a softmax over it never yields NaN."""
    mask = topology_attention_mask(topology, layout, device=device)
    add = torch.where(mask > 0, mask.clamp_min(1e-30).log(), torch.full_like(mask, float("-inf")))
    lonely = torch.nonzero(~(mask > 0).any(dim=1)).flatten()
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

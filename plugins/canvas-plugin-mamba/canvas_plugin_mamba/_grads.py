"""Second derivatives through the plugin's operators: a clear error instead of torch's.

Each ``torch.library`` operator here has a hand-written backward that is itself one operator
without a derivative. A double backward (a gradient penalty through a mamba connection, any
``create_graph=True`` that is differentiated again) would stop on torch's "no autograd formula
was registered"; :func:`first_order_only` makes it an :class:`UnavailableError` naming mamba.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch

from canvas_core.errors import UnavailableError

__all__ = ["first_order_only"]


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on gradient tensors whose own backward raises."""

    @staticmethod
    def forward(ctx, what: str, *grads):
        ctx.what = what
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise UnavailableError(
            f"{ctx.what} has no second derivative (a double backward: create_graph=True differentiated "
            "again, e.g. a gradient penalty through a mamba connection); keep mamba's output out of the "
            "penalty (detach it) or use another attention type for that connection")


def first_order_only(what: str, grads: Sequence[Any]) -> Tuple[Any, ...]:
    """``grads`` (tensors, None, or lists of tensors) unchanged; when the backward builds a graph
    (``create_graph=True``), their tensors pass through an identity whose derivative raises
    :class:`UnavailableError` naming ``what``."""
    if not torch.is_grad_enabled():
        return tuple(grads)
    flat = [t for g in grads for t in (g if isinstance(g, (list, tuple)) else [g]) if isinstance(t, torch.Tensor)]
    wrapped = iter(_FirstOrderOnly.apply(what, *flat)) if flat else iter(())
    out = []
    for g in grads:
        if isinstance(g, (list, tuple)):
            out.append([next(wrapped) if isinstance(t, torch.Tensor) else t for t in g])
        else:
            out.append(next(wrapped) if isinstance(g, torch.Tensor) else g)
    return tuple(out)

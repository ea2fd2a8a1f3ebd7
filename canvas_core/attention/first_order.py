"""Hand-written backwards are first-order: a second derivative stops with a clear error.

The fast paths of several types (``rwkv``, ``hyena``, ``linear_attention``, the mamba plugin's
scans) have a backward written by hand with operations that record no graph: results written
into per-thread scratch with ``out=``, compiled operators.  A second derivative through them (a
gradient penalty, a Hessian-vector product: a gradient taken with ``create_graph=True`` and
differentiated again) would stop on torch's message about ``out=`` arguments or about a missing
autograd formula, or, where part of such a backward ran without recording, miss that part's terms.

* :func:`first_order_backward` (the core's ``autograd.Function`` backwards): asked to record a
  graph (``create_graph=True``), the backward raises :class:`~canvas_core.errors.UnavailableError`
  naming the type at once; without it, the backward runs as written.
* :func:`first_order_only` (operators whose backward is itself an operator, as the mamba
  plugin's): the first derivative is computed and its tensors pass through an identity whose own
  derivative raises the same error.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, Tuple

import torch

from canvas_core.errors import UnavailableError

__all__ = ["first_order_backward", "first_order_only"]


def _no_second_derivative(what: str) -> UnavailableError:
    return UnavailableError(
        f"{what} has no second derivative: a gradient through it was taken with create_graph=True "
        "to be differentiated again (a gradient penalty, a Hessian-vector product); detach this "
        "connection's output from that term, or give the connection a type whose backward is "
        "differentiable (cosine_attention, sigmoid_attention, pooling, local_attention)"
    )


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on gradient tensors; differentiating through it raises."""

    @staticmethod
    def forward(ctx, what: str, *grads):
        ctx.what = what
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise _no_second_derivative(ctx.what)


def first_order_only(what: str, grads: Sequence[Any]) -> Tuple[Any, ...]:
    """``grads`` (tensors, None, or lists of tensors) unchanged; while a graph is recorded (the
    backward of a ``create_graph=True`` call) their tensors pass through an identity whose
    derivative raises :class:`UnavailableError` naming ``what``.  For gradients computed by
    operators that record their inputs (so the identity sits on every path through them)."""
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


def first_order_backward(what: str) -> Callable[[Callable], Callable]:
    """Decorates an ``autograd.Function.backward`` that records no graph: asked to record one
    (``create_graph=True``) it raises :class:`UnavailableError` naming ``what`` before running
    (a recorded graph would miss its terms); otherwise it runs as written."""

    def decorate(backward: Callable) -> Callable:
        @functools.wraps(backward)
        def run(ctx, *grads):
            if torch.is_grad_enabled():
                raise _no_second_derivative(what)
            return backward(ctx, *grads)

        return run

    return decorate

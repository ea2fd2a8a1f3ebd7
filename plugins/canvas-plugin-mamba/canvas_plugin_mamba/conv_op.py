"""Mamba's causal depthwise convolution as one ``torch.library`` operator each way.

``y_t = b + sum_s w[:, s] * x_{t - (K-1) + s}`` on time-major ``(B, L, E)`` tensors, written as
``K`` shifted multiply-adds (no transposed copies) with its adjoint written the same way.  Under
``torch.compile`` each direction is a single call: traced as plain tensor code, the taps, their
slices and the backward's scatters came to about 70 graph nodes per mamba module (a tenth of a
canvas block's compile graph in the world-model benchmark), each lowered and compiled by inductor.
Shapes for tracing come from the fake implementations; eager results are those of the loops below.
"""

from __future__ import annotations

from typing import Tuple

import torch

from canvas_core.extend import first_order_only


__all__ = ["causal_depthwise_conv"]


def _forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    L, K = x.shape[1], w.shape[1]
    y = b.expand_as(x).clone()
    wt = w.t()  # (K, E)
    for s in range(K):
        shift = K - 1 - s
        if shift < L:
            y[:, shift:].addcmul_(x[:, : L - shift], wt[s])
    return y


def _backward(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    L, K = x.shape[1], w.shape[1]
    wt = w.t()
    gx = torch.zeros_like(x)
    gw = w.new_zeros(K, w.shape[0])
    for s in range(K):
        shift = K - 1 - s
        if shift < L:
            gx[:, : L - shift].addcmul_(g[:, shift:], wt[s])
            gw[s] = (g[:, shift:] * x[:, : L - shift]).sum(dim=(0, 1))
    return gx, gw.t().contiguous(), g.sum(dim=(0, 1))


@torch.library.custom_op("canvas_mamba::depthwise_conv", mutates_args=())
def _conv_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _forward(x, w, b)


@_conv_op.register_fake
def _(x, w, b):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("canvas_mamba::depthwise_conv_backward", mutates_args=())
def _conv_backward_op(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(g, x, w)


@_conv_backward_op.register_fake
def _(g, x, w):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w, memory_format=torch.contiguous_format),
            w.new_empty(w.shape[0]))


def _setup_context(ctx, inputs, output):
    x, w, _ = inputs
    ctx.save_for_backward(x, w)


def _autograd_backward(ctx, g):
    x, w = ctx.saved_tensors
    return first_order_only("mamba's causal conv", _conv_backward_op(g, x, w))


_conv_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution of ``x (B, L, E)`` with ``weight (E, K)`` and ``bias (E,)``:
    ``y_t = bias + sum_s weight[:, s] x_{t-K+1+s}`` (``x`` zero before the start), ``(B, L, E)``
    (``nn.Conv1d(E, E, K, groups=E, padding=K-1)`` cut to the first ``L`` outputs)."""
    w = weight if weight.dtype == x.dtype else weight.to(x.dtype)
    b = bias if bias.dtype == x.dtype else bias.to(x.dtype)
    return _conv_op(x.contiguous(), w, b)

"""Base class of an attention kernel, published as ``canvas_core.extend.AttentionKernel``.

A kernel runs the softmax attention of one fn group of an execution plan in one fused call.
It is built once per group, ``Kernel(group, plan, *, n_heads, head_dim, **options)``, with every
index structure it needs computed in ``__init__``; then ``kernel(q, k, v, scale=..., dropout_p=...)``
takes ``(B, H, N, d)`` tensors in canonical position order and returns the same shape. Per query
``i`` the result is ``softmax_j(scale * q_i . k_j + log w_ij) @ v`` over the keys ``j`` that the
group's rectangles link to ``i`` (``w_ij`` the largest linking weight); a query linked to no key
returns exactly 0. ``ReferenceKernel`` is the oracle every kernel is compared with
(``canvas_core.testing.check_kernel``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from canvas_core.errors import ShapeError

__all__ = ["AttentionKernel"]


class AttentionKernel(nn.Module):
    """Keeps what every kernel reads from its group and plan and checks the call's shapes.

    Attributes:
        fn: the group's attention function type.
        n: number of canvas positions (``plan.n``).
        n_heads, head_dim: as given by the runtime (``head_dim`` may be None).

    Subclasses call ``super().__init__(group, plan, n_heads=..., head_dim=...)`` first, build their
    buffers, and implement ``forward(q, k, v, *, scale=None, dropout_p=0.0)``, typically starting
    with ``self.check_qkv(q, k, v)``.
    """

    def __init__(self, group: Any, plan: Any, *, n_heads: int = 1, head_dim: Optional[int] = None) -> None:
        super().__init__()
        self.fn = group.fn
        self.n = int(plan.n)
        self.n_heads = n_heads
        self.head_dim = head_dim

    def check_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Raise :class:`ShapeError` unless ``q``, ``k``, ``v`` are ``(B, H, n, d)`` tensors of one
        batch and head count (``v`` may have its own last dimension)."""
        name = type(self).__name__
        for label, x in (("q", q), ("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-2] != self.n:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ShapeError(f"{name} for fn {self.fn!r} over {self.n} positions expects {label} as "
                                 f"(B, H, {self.n}, d), got {shape}")
        if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise ShapeError(f"{name}: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must "
                             "agree (k as q; v in batch, heads and positions)")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                dropout_p: float = 0.0) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(q, k, v, *, scale, dropout_p)")

    def extra_repr(self) -> str:
        return f"fn={self.fn!r}, n={self.n}"

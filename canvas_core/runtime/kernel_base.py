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

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, CompileError, ShapeError
from canvas_core.schema._validate import is_int

__all__ = ["AttentionKernel", "REFERENCE_OPTIONS", "check_reference_options", "check_reference_sizes"]

#: the options the core's ``ReferenceKernel`` takes (its ``kernel_options``)
REFERENCE_OPTIONS = ("mode", "block_size", "dense_threshold", "small_n", "max_buckets")


def check_reference_options(options: Any) -> None:
    """Refuse option names the reference kernel does not take (``CanvasTypeError`` listing them)."""
    unknown = sorted(str(k) for k in options if k not in REFERENCE_OPTIONS)
    if unknown:
        raise CanvasTypeError(f"the reference kernel got kernel_options it does not take: {unknown}; it takes "
                              f"{list(REFERENCE_OPTIONS)} (options of another kernel: name that kernel with kernel=)")


def _int_option(name: str, value: Any, minimum: int) -> int:
    if not is_int(value) or value < minimum:
        raise CompileError(f"ReferenceKernel {name} must be an int >= {minimum}, got {value!r} "
                           f"({type(value).__name__}); fix kernel_options[{name!r}]")
    return int(value)


def check_reference_sizes(block_size: Any, small_n: Any, max_buckets: Any, dense_threshold: Any) -> int:
    """The reference kernel's numeric options checked (a float or bool block size is refused, not
    rounded: ``CompileError`` naming the option); returns ``block_size``."""
    _int_option("small_n", small_n, 0)
    if max_buckets is not None:  # None: as many calls as the query classes need
        _int_option("max_buckets", max_buckets, 1)
    if isinstance(dense_threshold, bool) or not isinstance(dense_threshold, (int, float, np.floating)) \
            or not math.isfinite(dense_threshold) or dense_threshold < 0:
        raise CompileError(f"ReferenceKernel dense_threshold must be a finite number >= 0 (a fraction of N x N), "
                           f"got {dense_threshold!r}; fix kernel_options['dense_threshold']")
    return _int_option("block_size", block_size, 1)


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

"""`XFormersKernel`: one softmax group of an execution plan on xformers (CUDA).

Kernel contract (the core's, see ``canvas_core.extend.ReferenceKernel``)::

    kernel = XFormersKernel(group, plan, n_heads=..., head_dim=...)
    out = kernel(q, k, v, scale=..., dropout_p=0.0)     # (B, H, N, d) canonical -> same

The group's weights become one additive ``attn_bias`` ``(N, N)`` in canonical order (``log w``
where linked, ``-inf`` elsewhere; rows with no key get 0 and their output is zeroed), built once
from the plan's segment grid.  xformers wants ``(B, N, H, d)`` tensors and a bias whose last
dimension is allocated in multiples of 8, which is handled here.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from canvas_core.extend import AttentionKernel, ExecutionPlan, RectGroup, nan_where_linked, non_finite_keys, zero_bad_keys
from canvas_core.errors import ShapeError, UnavailableError

__all__ = ["XFormersKernel", "additive_bias"]


def additive_bias(group: RectGroup, plan: ExecutionPlan, device: Any = None):
    """``((N, N) float32 bias, (N,) bool row_has_key)`` in canonical order for ``group``."""
    # the weights in float64 and their log before the cast (a float32 weight matrix loses 1e-50,
    # and a clamp at 1e-30 makes 1e-300 and 2e-300 equal)
    W = plan.to_dense(device=device or "cpu", fn=group.fn, canonical=True, dtype=torch.float64)
    unlinked = W <= 0
    has = ~unlinked.all(dim=1)
    bias = W.masked_fill_(unlinked, 1.0).log_().masked_fill_(unlinked, -math.inf)  # in place: one N x N
    bias[~has] = 0.0
    return bias.float(), has


class XFormersKernel(AttentionKernel):
    """Memory-efficient attention with the plan's additive bias (see the module docstring)."""

    def __init__(self, group: RectGroup, plan: ExecutionPlan, *, n_heads: int = 1,
                 head_dim: Optional[int] = None, device: Any = None) -> None:
        super().__init__(group, plan, n_heads=n_heads, head_dim=head_dim)
        try:
            import xformers.ops  # noqa: F401
        except ImportError as exc:
            raise UnavailableError(
                f"kernel 'xformers' needs the xformers package ({exc}); pip install xformers, or "
                "compile with another kernel") from None
        n = self.n
        bias, has = additive_bias(group, plan)
        pad = (-n) % 8  # xformers requires the bias storage's last dim aligned to 8
        storage = torch.zeros(n, n + pad)
        storage[:, :n] = bias
        self.register_buffer("bias_storage", storage.to(device) if device is not None else storage,
                             persistent=False)
        self.register_buffer("row_has_key", has.to(device) if device is not None else has,
                             persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                dropout_p: float = 0.0) -> torch.Tensor:
        """``(B, H, N, d)`` x3 canonical -> ``(B, H, N, d)`` canonical."""
        import xformers.ops as xops

        if q.dim() != 4 or q.shape[-2] != self.n:
            raise ShapeError(f"XFormersKernel for {self.n} positions expects (B, H, {self.n}, d), "
                             f"got {tuple(q.shape)}")
        B, H, n, _ = q.shape
        bias = self.bias_storage[:, :n].to(q.dtype)
        # NaN isolation: an additive -inf bias does not stop a non-finite key reaching every query
        bad = non_finite_keys(k, v)
        if bad is not None:
            k, v = zero_bad_keys(k, v, bad)
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias[None, None].expand(B, H, n, n),
            p=float(dropout_p), scale=scale)
        out = out.transpose(1, 2)
        if bad is not None:
            linked = torch.isfinite(bias) & self.row_has_key[:, None]
            out = nan_where_linked(out, linked, bad)
        return out * self.row_has_key[:, None].to(out.dtype)

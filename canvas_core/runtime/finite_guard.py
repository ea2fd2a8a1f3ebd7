"""Keeping a non-finite key where it belongs: the masked kernels' NaN isolation.

A masked kernel (one SDPA over all N x N with ``-inf`` on the pairs no connection links, or over
gathered key tiles that contain unlinked keys) multiplies every query with every key it sees: a
NaN or inf in key or value ``j`` then turns the rows of queries that do *not* read ``j`` NaN as
well (``nan + -inf`` is NaN, and ``0 * nan`` is NaN in ``P @ V``). DESIGN.md's semantics say a
query reads only its linked keys, so the kernels here

1. zero the keys and values of positions holding a non-finite number (``zero_bad_keys``), run as
   usual, and
2. set to NaN exactly the rows that link such a key (``nan_where_linked``), as the exact reference would.

On CPU outside ``torch.compile`` the common case (all finite) costs one multiply-and-sum pass over
the keys and values and no extra work; elsewhere the guard runs without a data-dependent branch (no host sync, traceable).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from canvas_core.runtime.func_transforms import func_transformed

__all__ = ["non_finite_keys", "zero_bad_keys", "reads_bad", "nan_where_linked"]


def non_finite_keys(k: torch.Tensor, v: torch.Tensor) -> Optional[torch.Tensor]:
    """``(B, H, N)`` bool: key ``j`` of a head holds a non-finite number in ``k`` or ``v``; None
    when it is known (cheaply, without a device sync) that every key is finite."""
    # x * 0 is 0 for a finite x and NaN for NaN / inf, so one product and one sum per key find them
    # (several times faster than isfinite(...).all(-1) on CPU)
    bad = ((k * 0).sum(dim=-1) + (v * 0).sum(dim=-1)).isnan()
    if k.device.type == "cpu" and not torch.compiler.is_compiling() and not func_transformed(bad) \
            and not bool(bad.any()):
        return None
    return bad


def zero_bad_keys(k: torch.Tensor, v: torch.Tensor, bad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``k, v`` with the keys marked in ``bad`` ``(B, H, N)`` set to zero."""
    m = bad.unsqueeze(-1)
    return k.masked_fill(m, 0.0), v.masked_fill(m, 0.0)


def reads_bad(linked: torch.Tensor, bad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(..., R, Nq)`` bool: query ``i`` links (``linked`` ``(..., Nq, Nk)`` bool) a key marked in
    ``bad`` ``(..., R, Nk)`` (R: the folded batch and heads); one matrix product, no broadcast copy."""
    lk = linked if linked.dtype == dtype else linked.to(dtype)
    return torch.matmul(bad.to(dtype), lk.transpose(-1, -2)) > 0


def nan_where_linked(out: torch.Tensor, linked: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Canonical ``out`` ``(B, H, N, d)`` with NaN in the rows whose query links (``linked``
    ``(N, N)``, bool or 0/1 in ``out``'s dtype, which saves a conversion) a key marked in ``bad``
    ``(B, H, N)``."""
    B, H, N, _ = out.shape
    reads = reads_bad(linked, bad.reshape(B * H, N), out.dtype).reshape(B, H, N, 1)
    return out.masked_fill(reads, float("nan"))

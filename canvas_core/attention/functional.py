"""Reference masked softmax attention, safe for queries without any allowed key."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["masked_softmax_attention", "masked_softmax"]

_NEG_INF = float("-inf")


def masked_softmax(
    logits: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim of ``logits (..., Nq, Nk)`` restricted to ``mask``.

    Returns ``(weights, has_key)``; ``weights`` is 0 at blocked entries and on rows with no
    allowed (finite) logit, ``has_key (..., Nq, 1)`` is bool.  Computed in float32 at least
    (bf16/fp16 logits are upcast), returned in the logits' dtype.
    """
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if mask is not None:
        work = work.masked_fill(~mask, _NEG_INF)
    has_key = (work != _NEG_INF).any(dim=-1, keepdim=True)
    # rows with no key: replace by zeros so softmax is finite, then zero the weights
    work = work.masked_fill(~has_key, 0.0)
    w = F.softmax(work, dim=-1)
    w = w.masked_fill(~has_key, 0.0)
    return w.to(logits.dtype), has_key


def masked_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale + bias, masked) v`` with empty rows -> zeros.

    Args:
        q: ``(..., Nq, d)``; k: ``(..., Nk, d)``; v: ``(..., Nk, dv)``.
        mask: bool, broadcastable to ``(..., Nq, Nk)``; True = may attend.
        bias: float, broadcastable to ``(..., Nq, Nk)``, added to the logits (``-inf`` blocks).
        scale: logit multiplier; default ``1 / sqrt(d)``.
        dropout_p: dropout on the attention weights (only when ``training``).

    Returns:
        ``(out (..., Nq, dv), has_key (..., Nq, 1) bool)``; rows with no allowed key (also
        ``Nk == 0``) are exactly zero, never NaN.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    w, has_key = masked_softmax(logits, mask)
    if dropout_p > 0.0 and training:
        w = F.dropout(w, p=dropout_p, training=True)
    out = torch.matmul(w.to(v.dtype), v)
    return out, has_key

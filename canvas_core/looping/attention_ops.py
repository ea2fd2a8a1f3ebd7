"""Attention arithmetic shared by backbone adapters: inverse temperature and canvas bias."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from canvas_core.errors import ShapeError

__all__ = ["canvas_sdpa", "select_bias"]


def select_bias(target, seq_len: int, device, dtype, rows=None):
    """The canvas bias a processor holds, checked against the sequence length and moved to
    ``device``/``dtype``; ``rows`` (LongTensor) selects a subset of tokens (e.g. valid text).
    Returns ``(bias (S', S') or None, has_key (S',) or None)``."""
    bias = getattr(target, "canvas_bias", None)
    if bias is None:
        return None, None
    if bias.shape[0] != seq_len:
        raise ShapeError(
            f"the canvas topology was installed for {bias.shape[0]} attention tokens but this call "
            f"has {seq_len}; rebuild adapter.token_layout(model, inputs) for these input shapes "
            "and "
            "install the topology again"
        )
    has_key = target.canvas_has_key
    cache = getattr(target, "_canvas_cache", None)
    if cache is None or cache[0] is not bias or cache[1] != (device, dtype):
        cache = (bias, (device, dtype), bias.to(device=device, dtype=dtype), has_key.to(device))
        target._canvas_cache = cache
    b, hk = cache[2], cache[3]
    if rows is not None:
        b = b.index_select(0, rows).index_select(1, rows)
        hk = hk.index_select(0, rows)
        # a row whose only keys were dropped tokens now has none
        hk = hk & torch.isfinite(b).any(dim=1)
        b = torch.where(hk[:, None], b, torch.zeros_like(b))
    return b, hk


def canvas_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    beta: float = 1.0,
    bias: Optional[torch.Tensor] = None,
    has_key: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``softmax(beta * q k^T / sqrt(d) + bias) v`` for ``q, k, v`` ``(B, H, S, d)``.

    ``bias`` ``(S, S)`` additive (``-inf`` = no link); rows where ``has_key`` is False return 0.
    ``attn_mask`` (the backbone's own mask, additive or bool) is combined with ``bias``."""
    scale = float(beta) / math.sqrt(q.shape[-1])
    mask = bias
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                ~attn_mask, float("-inf")
            )
        mask = attn_mask if mask is None else mask + attn_mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if has_key is not None:
        out = out * has_key.to(out.dtype)[:, None]
    return out

"""A LinearAttention whose projections are the identity, so a test sets its pre-activations."""

from __future__ import annotations

import torch

from canvas_core.attention import LinearAttention


def identity_linear_attention(d_model: int, n_heads: int, dtype: torch.dtype = torch.float32) -> LinearAttention:
    """``LinearAttention(d_model, n_heads)`` in ``dtype`` with identity weights and zero biases."""
    m = LinearAttention(d_model, n_heads).to(dtype)
    with torch.no_grad():
        for lin in (m.q_proj, m.k_proj, m.v_proj, m.out_proj):
            lin.weight.copy_(torch.eye(d_model, dtype=dtype))
            lin.bias.zero_()
    return m

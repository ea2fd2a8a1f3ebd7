"""Builtin attention types of canvas-core.

Every type is an ``nn.Module`` built as ``Cls(d_model, n_heads=8, dropout=0.0, **options)`` and
called as ``module(queries (B, Nq, D), keys (B, Nk, D), values (B, Nk, D), key_mask=None)
-> (B, Nq, D)``.  ``key_mask`` (bool, True = may attend, or additive float) broadcasts to
``(B, Nq, Nk)``; a query with no allowed key (or ``Nk == 0``) gets zeros, never NaN.
Registration (names -> classes) lives in ``canvas_core.plugins.builtin``.
"""

from canvas_core.attention.functional import masked_softmax, masked_softmax_attention
from canvas_core.attention.recurrent import HyenaAttention, RWKVAttention
from canvas_core.attention.simple import (
    CopyAttention,
    LinearAttention,
    MixtureAttention,
    NoneAttention,
    PoolingAttention,
    SigmoidAttention,
)
from canvas_core.attention.softmax import (
    CosineAttention,
    CrossAttention,
    GatedAttention,
    LocalAttention,
    PerceiverAttention,
    RandomFixedAttention,
    SparseAttention,
)

__all__ = [
    "CrossAttention",
    "LinearAttention",
    "CosineAttention",
    "SigmoidAttention",
    "GatedAttention",
    "PerceiverAttention",
    "PoolingAttention",
    "CopyAttention",
    "SparseAttention",
    "LocalAttention",
    "NoneAttention",
    "RandomFixedAttention",
    "MixtureAttention",
    "RWKVAttention",
    "HyenaAttention",
    "masked_softmax_attention",
    "masked_softmax",
]

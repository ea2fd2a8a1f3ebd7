"""Builtin attention types of canvas-core.

Every type is an ``nn.Module`` built as ``Cls(d_model, n_heads=4, dropout=0.0, **options)`` (canvas-engineering's defaults) and
called as ``module(queries (B, Nq, D), keys (B, Nk, D), values (B, Nk, D), key_mask=None)
-> (B, Nq, D)``.  ``key_mask`` (bool, True = may attend, or additive float) broadcasts to
``(B, Nq, Nk)``; a query with no allowed key (or ``Nk == 0``) gets zeros, never NaN.
Registration (names -> classes) lives in ``canvas_core.plugins.builtin``.

========================  ====================  ==============================================
name                      class                 operator (per query ``i``, allowed keys ``j``)
========================  ====================  ==============================================
``cross_attention``       CrossAttention        softmax(beta q.k / sqrt(d)) v
``self_attention``        CrossAttention        the same (canvas-engineering's alias)
``cosine_attention``      CosineAttention       softmax(beta s_h cos(q, k)) v, learned s_h
``sparse_attention``      SparseAttention       softmax over the top_k logits
``local_attention``       LocalAttention        softmax over ``|j - c_i| <= window``
``random_fixed``          RandomFixedAttention  softmax over n_random seeded pseudo-random keys
``gated``                 GatedAttention        tanh(alpha) sigmoid(W q) cross (module 0 at init)
``perceiver``             PerceiverAttention    queries -> latents -> keys (K latents)
``linear_attention``      LinearAttention       phi(q)^T sum phi(k) v^T / phi(q)^T sum phi(k)
``sigmoid_attention``     SigmoidAttention      sum sigmoid(q.k / sqrt(d) - log n_i) v
``pooling``               PoolingAttention      W mean(v) + b
``copy``                  CopyAttention         v at nearest index floor((i + .5) Nk / Nq)
``none``                  NoneAttention         0
``mixture``               MixtureAttention      router-weighted experts
``rwkv``                  RWKVAttention         RWKV-4 WKV read at p(i) = ceil((i+1) Nk/Nq) - 1
``hyena``                 HyenaAttention        gated implicit FFT long convolutions, read at p(i)
========================  ====================  ==============================================

Softmax types carry ``beta`` (inverse temperature, default 1.0; ``None`` also means 1.0).
``rwkv`` and ``hyena`` (and the plugin type ``mamba``) are causal along the key sequence as
given; the canvas runtime passes keys in canonical (t-major, region) order.
"""

from canvas_core._lazy import lazy_exports
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

# canvas-engineering's ``attention`` module also carried the registry and the plugin-provided
# types; keep those import paths working (resolved lazily through the plugin layer).
_REGISTRY_NAMES = ("ATTENTION_REGISTRY", "create_attention", "register_attention",
                   "MambaAttention", "CogVideoXAttention")
__getattr__, __dir__ = lazy_exports(__name__, {name: "canvas_core" for name in _REGISTRY_NAMES})

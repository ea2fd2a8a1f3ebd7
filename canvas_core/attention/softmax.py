"""Softmax-family attention types.

cross, cosine, sparse (top-k), local, random_fixed, gated, perceiver.

All of them honour ``self.beta`` (inverse temperature, default 1.0) as a multiplier of the
logits; ``SharpeningSchedule`` sets it per loop.  Queries without any allowed key output zeros.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.attention import fused_softmax
from canvas_core.attention._base import AttentionBase, _check_finite, _check_int, has_key, operators_under_compile
from canvas_core.attention.causal_read import autocast_on, plain_linear, plain_module
from canvas_core.attention.functional import masked_softmax
from canvas_core.schema.limits import check_elements, check_size

__all__ = [
    "CrossAttention",
    "CosineAttention",
    "SparseAttention",
    "LocalAttention",
    "RandomFixedAttention",
    "GatedAttention",
    "PerceiverAttention",
]


#: run gated / perceiver through their fused operators in eager too (tests compare the two paths)
_FUSE_EAGER = False


def _fusing() -> bool:
    return _FUSE_EAGER or (operators_under_compile() and torch.compiler.is_compiling())


def _fusable(module: AttentionBase, queries: torch.Tensor, Nk: int, weight: torch.Tensor,
             bias: Optional[torch.Tensor] = None, parts: Tuple[AttentionBase, ...] = ()) -> bool:
    """Whether ``module`` may run as its ``fused_softmax`` operator (checked while compiling, see
    :func:`_fusing`): a CPU tensor (elsewhere inductor compiles the traced module's
    ``scaled_dot_product_attention`` into the device's fused kernels, which the operator's plain
    maths would replace), at least one key and query, no active dropout (in ``module`` or its
    attention ``parts``), no float mask that wants a gradient, and inputs in the dtype of the
    parameters (``weight`` stands for them) outside autocast, where eager casts nothing either.
    Written to read few attributes: dynamo guards each one on every compiled call."""
    if queries.device.type != "cpu" or Nk == 0 or queries.shape[0] == 0 or queries.shape[1] == 0:
        return False
    if module.training and (module.dropout_p > 0.0 or any(m.dropout_p > 0.0 for m in parts)):
        return False
    if bias is not None and bias.requires_grad:
        return False
    return weight.dtype == queries.dtype and not autocast_on(queries.device.type)


def _plain_linears(*modules: nn.Module) -> bool:
    """Each one a bare ``nn.Linear`` with its bias (``causal_read.plain_linear``): what a fused
    operator computes in its place, taking the weights and biases as inputs (it would bypass a
    hook, a weight norm or an adapter)."""
    return all(plain_linear(m, with_bias=True) for m in modules)


def _projections(m: "_QKVAttention") -> Tuple[nn.Module, ...]:
    return m.q_proj, m.k_proj, m.v_proj, m.out_proj


def _heads(m: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``(B|1, Nq|1, Nk) -> (B|1, 1, Nq|1, Nk)`` (broadcast over heads)."""
    return None if m is None else m.unsqueeze(1)


class _QKVAttention(AttentionBase):
    """Multi-head attention with Q/K/V/output projections; subclasses shape the logits."""

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.beta = 1.0

    def _project_qkv(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and split heads: ``(B, Nq, D), (B, Nk, D), (B, Nk, D)`` ->
        ``q (B, H, Nq, D/H), k (B, H, Nk, D/H), v (B, H, Nk, D/H)``."""
        q = self._split(self.q_proj(queries))
        k = self._split(self.k_proj(keys))
        v = self._split(self.v_proj(values))
        return q, k, v

    # logits (B, H, Nq, Nk) from projected heads; subclasses override
    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scale = self._beta() / math.sqrt(self.head_dim)
        if q.dtype == torch.float16 or k.dtype == torch.float16:
            # q k^T past 65,504 is inf in float16 (and inf - inf NaN in the softmax): float32
            # logits, also under autocast, which would cast the product back to float16
            with torch.autocast(q.device.type, enabled=False) if autocast_on(q.device.type) else nullcontext():
                return torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        return torch.matmul(q, k.transpose(-1, -2)) * scale

    # extra restriction (bool, broadcastable to (B, H, Nq, Nk)) or None; subclasses override
    def _structure_mask(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        _, _, Nk, allowed, bias = self._prepare(queries, keys, values, key_mask)
        q, k, v = self._project_qkv(queries, keys, values)
        plain = type(self)._logits is _QKVAttention._logits
        if plain and type(self)._structure_mask is _QKVAttention._structure_mask and Nk > 0:
            return self._forward_sdpa(q, k, v, allowed, bias)
        logits = self._logits(q, k)
        if bias is not None:
            logits = logits + _heads(bias).to(logits.dtype)
        mask = _heads(allowed)
        extra = self._structure_mask(
            logits if mask is None else logits.masked_fill(~mask, float("-inf"))
        )
        if extra is not None:
            mask = extra if mask is None else mask & extra
        w, has_key = masked_softmax(logits, mask)
        if self.dropout_p > 0.0 and self.training:
            w = F.dropout(w, p=self.dropout_p)
        out = self.out_proj(self._merge(torch.matmul(w.to(v.dtype), v)))
        # has_key is identical across heads: (B|1, H|1, Nq, 1) -> (B|1, Nq, 1)
        return out.masked_fill(~has_key.any(dim=1), 0.0)

    def _forward_sdpa(self, q, k, v, allowed, bias) -> torch.Tensor:
        """Same maths through ``F.scaled_dot_product_attention`` (fused kernels where available).

        Rows without any allowed key are given every key (so the kernel stays finite) and
        zeroed afterwards.
        """
        if allowed is None:  # every query has a key (Nk > 0 here): nothing to zero afterwards
            has = None
            attn_mask = None if bias is None else _heads(bias).to(q.dtype)
        else:
            has = allowed.any(dim=-1, keepdim=True)  # (B|1, Nq|1, 1)
            safe = allowed | ~has
            if bias is None:
                attn_mask = _heads(safe)
            else:
                fill = torch.zeros((), dtype=q.dtype, device=q.device)
                attn_mask = _heads(torch.where(safe, bias.to(q.dtype), fill - float("inf")))
        beta = self._beta()
        if torch.compiler.is_compiling() and beta != 1:
            # beta as a factor of q, not of SDPA's scale (a python float the graph would be
            # specialised on: one recompile for every value of a sharpening schedule)
            q, beta = q * beta, 1.0
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout_p if self.training else 0.0,
            scale=beta / math.sqrt(self.head_dim),
        )
        out = self.out_proj(self._merge(out))
        return out if has is None else out.masked_fill(~has, 0.0)


class CrossAttention(_QKVAttention):
    """Scaled dot-product attention: ``softmax(beta * Q K^T / sqrt(d_head) + bias) V``, then an
    output projection.  ``O(Nq * Nk)``.  The default type (``cross_attention``)."""

    type_name = "cross_attention"
    key_mask_exact = True


class CosineAttention(_QKVAttention):
    """Cosine-similarity attention (``cosine_attention``).

    Logits are ``beta * s_h * cos(q, k)`` with a learned per-head scale
    ``s_h = exp(log_scale_h)`` (initialised to 10, clamped to at most 100), then softmax.
    """

    type_name = "cosine_attention"
    key_mask_exact = True

    def __init__(
        self, d_model: int, n_heads: int = 4, dropout: float = 0.0, init_scale: float = 10.0
    ) -> None:
        super().__init__(d_model, n_heads, dropout)
        init_scale = _check_finite(self.type_name, "init_scale", init_scale, positive=True)
        self.log_scale = nn.Parameter(torch.full((n_heads,), math.log(init_scale)))

    def scale(self) -> torch.Tensor:
        """Per-head temperature ``(H,)``."""
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        qn = F.normalize(q, dim=-1, eps=1e-6)
        kn = F.normalize(k, dim=-1, eps=1e-6)
        s = (self.scale() * self._beta()).to(q.dtype).view(1, -1, 1, 1)
        return torch.matmul(qn * s, kn.transpose(-1, -2))


class SparseAttention(_QKVAttention):
    """Top-k attention (``sparse_attention``): per head, each query keeps its ``top_k`` highest
    allowed logits and takes the softmax over those only (ties broken by ``torch.topk``)."""

    type_name = "sparse_attention"
    key_mask_exact = True

    def __init__(
        self, d_model: int, n_heads: int = 4, dropout: float = 0.0, top_k: int = 8
    ) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.top_k = _check_int(self.type_name, "top_k", top_k, 1)

    def _structure_mask(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        Nk = logits.shape[-1]
        k = min(self.top_k, Nk)
        if k == Nk:
            return None
        idx = logits.topk(k, dim=-1).indices
        keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        return keep.scatter(-1, idx, True)


class LocalAttention(_QKVAttention):
    """Windowed attention (``local_attention``): query ``i`` attends to keys ``j`` with
    ``|j - c_i| <= window``, where ``c_i`` is the query's position in key-index units:
    ``c_i = i`` when ``Nq == Nk``, otherwise ``c_i = (i + 0.5) * Nk / Nq - 0.5`` (aligned cell
    centres).  Positions are indices in the token sequences as given: the canvas runtime passes
    tokens in region order (canonical t-major, row-major order within each region), so "local"
    means near in that order.

    Args:
        window_size: full width of the window as in canvas-engineering (default 8): the
            half-width is ``window_size // 2``, so keys ``|j - c_i| <= window_size // 2``.
        window: the half-width directly (overrides ``window_size``).
    """

    type_name = "local_attention"

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        dropout: float = 0.0,
        window_size: int = 8,
        window: Optional[int] = None,
    ) -> None:
        super().__init__(d_model, n_heads, dropout)
        if window is None:
            window = _check_int(self.type_name, "window_size", window_size, 0) // 2
        else:
            window_size = 2 * _check_int(self.type_name, "window", window, 0)
        self.window = window
        self.window_size = window_size

    def _structure_mask(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        Nq, Nk = logits.shape[-2], logits.shape[-1]
        i = torch.arange(Nq, device=logits.device, dtype=torch.float64)
        j = torch.arange(Nk, device=logits.device, dtype=torch.float64)
        c = i if Nq == Nk else (i + 0.5) * (Nk / max(Nq, 1)) - 0.5
        return (j[None, :] - c[:, None]).abs() <= self.window + 1e-9


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer on int64 tensors (values stay below 2**62: no overflow)."""
    m = 0xFFFFFFFF
    x = x & m
    x = x ^ (x >> 16)
    x = (x * 0x2C1B3C6D) & m
    x = x ^ (x >> 12)
    x = (x * 0x297A2D39) & m
    x = x ^ (x >> 15)
    return x


class RandomFixedAttention(_QKVAttention):
    """Fixed random sparse connectivity (``random_fixed``).

    Each query ``i`` attends (softmax) to ``n_random`` keys chosen pseudo-randomly among its
    allowed keys: the ``n_random`` keys with the largest hash ``h(seed, i, j)``.  The seed is
    drawn once at construction from ``seed`` and stored as the buffer ``salt`` (saved in the
    state dict), so the pattern is fixed for the module's lifetime, identical across calls, batch
    items and heads, and defined for any ``(Nq, Nk)`` without a size limit.
    """

    type_name = "random_fixed"

    def __init__(
        self, d_model: int, n_heads: int = 4, dropout: float = 0.0, n_random: int = 8, seed: int = 0
    ) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.n_random = _check_int(self.type_name, "n_random", n_random, 1)
        _check_int(self.type_name, "seed", seed, 0)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "salt", torch.randint(0, 2**31 - 1, (1,), generator=g, dtype=torch.int64)
        )

    def pattern_scores(self, Nq: int, Nk: int) -> torch.Tensor:
        """``(Nq, Nk)`` int64 pseudo-random scores of the fixed pattern."""
        dev = self.salt.device
        i = torch.arange(Nq, device=dev, dtype=torch.int64)[:, None]
        j = torch.arange(Nk, device=dev, dtype=torch.int64)[None, :]
        return _hash32(_hash32(i * 0x9E3779B1 + self.salt) + j * 0x7FEB352D)

    def _structure_mask(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        Nq, Nk = logits.shape[-2], logits.shape[-1]
        k = min(self.n_random, Nk)
        if k == Nk:
            return None
        s = self.pattern_scores(Nq, Nk).to(logits.device)
        allowed = logits != float("-inf")  # (B|1, H, Nq, Nk): already masked by key_mask
        s = torch.where(allowed, s, torch.full_like(s, -1))
        idx = s.topk(k, dim=-1).indices
        keep = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        return keep.scatter(-1, idx, True)


class GatedAttention(_QKVAttention):
    """Flamingo-style gated cross-attention (``gated``).

    ``out = tanh(alpha) * sigmoid(W_g q) * CrossAttention(q, k, v)`` with a per-channel gate
    ``alpha (D,)`` initialised to zero, so the module itself outputs exactly zeros at
    initialisation and ``alpha`` receives a non-zero gradient from the first step.

    What a gated edge does at initialisation depends on where it runs:

    * in a canvas layer (``CanvasAttention`` / ``AttentionDispatcher``) the edge still takes its
      weight share of the per-position mix ``sum_f W_f out_f / sum_f W_f``: at a position it links,
      the other types' outputs are scaled by ``(sum_f W_f - W_gated) / sum_f W_f``, and a position
      only gated edges update gets 0 (the layer returns the updated state, not a residual);
    * inside a grafted backbone its output is added after the attention with its own gate as the
      only gate (``self_gated``: no second, block-level zero gate), so the backbone is unchanged at
      initialisation and the branch learns from the first step.
    """

    type_name = "gated"
    key_mask_exact = True
    self_gated = True

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.gate_alpha = nn.Parameter(torch.zeros(d_model))
        self.gate_proj = nn.Linear(d_model, d_model)

    def _plain(self) -> bool:
        """No subclass reshapes the logits or adds a structure mask, and the projections are plain
        linear layers (the fused operator's maths)."""
        cls = type(self)
        return (cls._logits is _QKVAttention._logits and cls._structure_mask is _QKVAttention._structure_mask
                and _plain_linears(*_projections(self), self.gate_proj))

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``; zeros at init."""
        if _fusing() and self._plain():
            _, _, Nk, allowed, bias = self._prepare(queries, keys, values, key_mask)
            if _fusable(self, queries, Nk, self.q_proj.weight, bias):
                return fused_softmax.gated_attention(self, queries, keys, values, allowed, bias)
        attn = super().forward(queries, keys, values, key_mask)
        gate = torch.tanh(self.gate_alpha).to(attn.dtype) * torch.sigmoid(self.gate_proj(queries))
        return gate * attn


class PerceiverAttention(AttentionBase):
    """Latent-bottleneck attention (``perceiver``), ``O((Nq + Nk) * K)``.

    ``n_latents`` learned latents (``K << Nk``) cross-attend to the keys/values
    (``z = latents + CrossAttention(latents, keys, values)``), then the queries cross-attend to
    ``z``.  The latents are shared by all queries, so they read the union of the keys any query
    may see (per batch item); a query with no allowed key outputs zeros.  The inner
    cross-attentions carry their own ``beta``.
    """

    type_name = "perceiver"

    def __init__(
        self, d_model: int, n_heads: int = 4, dropout: float = 0.0, n_latents: int = 8
    ) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.n_latents = _check_int(self.type_name, "n_latents", n_latents, 1)
        # the latents are a learned sequence: bounded like the positions of a canvas
        check_size("positions", n_latents, f"attention type {self.type_name!r} n_latents")
        check_elements((n_latents, d_model), f"attention type {self.type_name!r} latents (n_latents, d_model)")
        self.latents = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
        self.encode = CrossAttention(d_model, n_heads, dropout)
        self.decode = CrossAttention(d_model, n_heads, dropout)

    def _plain_parts(self) -> bool:
        """encode / decode are plain ``CrossAttention`` modules without hooks, with plain linear
        projections (what the fused operator computes in their place)."""
        parts = (self.encode, self.decode)
        return all(plain_module(m, CrossAttention) and _plain_linears(*_projections(m)) for m in parts)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        B, _, Nk, allowed, _ = self._prepare(queries, keys, values, key_mask)
        parts = (self.encode, self.decode)
        if _fusing() and _fusable(self, queries, Nk, self.latents, parts=parts) and self._plain_parts():
            return fused_softmax.perceiver_attention(self, queries, keys, values, allowed)
        lat = self.latents.to(queries.dtype).unsqueeze(0).expand(B, -1, -1)
        union = None if allowed is None else allowed.any(dim=1, keepdim=True)  # (B|1, 1, Nk)
        z = lat + self.encode(lat, keys, values, key_mask=union)
        out = self.decode(queries, z, z)
        if allowed is None and Nk > 0:  # every query has a key: nothing to zero
            return out
        return out.masked_fill(~has_key(allowed, Nk, queries.device), 0.0)  # (B|1, Nq|1, 1)

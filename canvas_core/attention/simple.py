"""Non-softmax attention types: linear, sigmoid, pooling, copy, none, mixture."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.attention._base import (
    AttentionBase,
    _check_int,
    aligned_key_index,
    has_key,
    safe_div,
)
from canvas_core.attention.softmax import CosineAttention, CrossAttention, _QKVAttention
from canvas_core.errors import CanvasTypeError

__all__ = [
    "LinearAttention",
    "SigmoidAttention",
    "PoolingAttention",
    "CopyAttention",
    "NoneAttention",
    "MixtureAttention",
]


class LinearAttention(_QKVAttention):
    """Kernelised linear attention (``linear_attention``), ``O(Nq + Nk)``.

    With ``phi(x) = elu(x) + 1`` per head:
    ``out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j))`` over the allowed
    keys, then an output projection.  A key mask that does not depend on the query keeps the
    ``O(N + M)`` form; a per-query mask ``(Nq, Nk)`` needs the explicit ``Nq x Nk`` weights.
    Computed in float32 at least.
    """

    type_name = "linear_attention"

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.beta = None  # not a softmax type

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        _, _, Nk, allowed, _ = self._prepare(queries, keys, values, key_mask)
        wdt = torch.float32 if queries.dtype in (torch.float16, torch.bfloat16) else queries.dtype
        q, k, v = self._project_qkv(queries, keys, values)
        q = F.elu(q.to(wdt)) + 1.0
        k = F.elu(k.to(wdt)) + 1.0
        v = v.to(wdt)
        if allowed is None or allowed.shape[1] == 1:
            if allowed is not None:  # (B|1, 1, Nk) -> (B|1, 1, Nk, 1) zeroes blocked keys
                k = k * allowed.transpose(1, 2).unsqueeze(1).to(wdt)
            kv = torch.einsum("bhnd,bhne->bhde", k, v)
            num = torch.einsum("bhqd,bhde->bhqe", q, kv)
            den = torch.einsum("bhqd,bhd->bhq", q, k.sum(dim=2)).unsqueeze(-1)
        else:
            a = torch.matmul(q, k.transpose(-1, -2)) * allowed.unsqueeze(1).to(wdt)
            num = torch.matmul(a, v)
            den = a.sum(dim=-1, keepdim=True)
        out = safe_div(num, den).to(queries.dtype)
        if self.dropout_p > 0.0 and self.training:
            out = F.dropout(out, p=self.dropout_p)
        out = self.out_proj(self._merge(out))
        return out.masked_fill(~has_key(allowed, Nk, out.device), 0.0)


class SigmoidAttention(_QKVAttention):
    """Sigmoid attention (``sigmoid_attention``): no competition between keys.

    ``w_ij = sigmoid(q_i . k_j / sqrt(d_head) + b_i)`` with ``b_i = -log(n_i)``, ``n_i`` the
    number of keys query ``i`` may attend (``Nk`` without a mask), as in "Theory, Analysis, and
    Best Practices for Sigmoid Self-Attention" (Ramapuram et al., 2024); ``out_i = sum_j w_ij v_j``
    over allowed keys, then an output projection.
    """

    type_name = "sigmoid_attention"
    key_mask_exact = True

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.beta = None  # not a softmax type

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
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if allowed is None:
            n = torch.full(
                (1, 1, 1, 1), float(max(Nk, 1)), dtype=logits.dtype, device=logits.device
            )
        else:
            n = allowed.sum(dim=-1, keepdim=True).clamp(min=1).unsqueeze(1).to(logits.dtype)
        logits = logits - torch.log(n)
        if bias is not None:
            logits = logits + bias.unsqueeze(1).to(logits.dtype)
        w = torch.sigmoid(logits)
        if allowed is not None:
            w = w * allowed.unsqueeze(1).to(w.dtype)
        if self.dropout_p > 0.0 and self.training:
            w = F.dropout(w, p=self.dropout_p)
        out = self.out_proj(self._merge(torch.matmul(w, v)))
        return out.masked_fill(~has_key(allowed, Nk, out.device), 0.0)


class PoolingAttention(AttentionBase):
    """Masked mean pooling (``pooling``), ``O(Nq + Nk)`` without a per-query mask.

    ``out_i = W (mean_{j allowed for i} v_j) + b``; the same vector for every query sharing a key
    set (broadcast).  Queries with no allowed key output zeros.  ``n_heads`` is validated only.
    """

    type_name = "pooling"
    key_mask_exact = True

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.out_proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(self.dropout_p)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        B, Nq, Nk, allowed, _ = self._prepare(queries, keys, values, key_mask)
        if allowed is None:
            pooled = values.sum(dim=1, keepdim=True) / max(Nk, 1)  # (B, 1, D)
        else:
            m = allowed.to(values.dtype)
            count = m.sum(dim=-1, keepdim=True)
            pooled = safe_div(torch.matmul(m, values), count)  # (B, Nq|1, D)
        out = self.out_proj(self.drop(pooled))
        out = out.masked_fill(~has_key(allowed, Nk, out.device), 0.0)
        return out.expand(B, Nq, self.d_model)


class CopyAttention(AttentionBase):
    """Parameter-free transfer (``copy``): ``out_i = v_{j(i)}``.

    ``j(i)`` is nearest-index resampling: ``j(i) = floor((i + 0.5) * Nk / Nq)``, the key whose
    cell of ``[0, 1)`` contains the centre of query ``i``'s cell (so ``Nq == Nk`` copies
    elementwise, ``Nq > Nk`` repeats keys, ``Nq < Nk`` subsamples).  If ``key_mask`` forbids
    ``(i, j(i))``, or ``Nk == 0``, query ``i`` gets zeros.  Keys are ignored.
    """

    type_name = "copy"

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        _, Nq, Nk, allowed, _ = self._prepare(queries, keys, values, key_mask)
        if Nk == 0:
            return torch.zeros_like(queries)
        idx = aligned_key_index(Nq, Nk, device=values.device)
        out = values.index_select(1, idx)
        if allowed is not None:
            a = allowed.expand(allowed.shape[0], Nq, Nk)
            ok = a.gather(-1, idx.view(1, Nq, 1).expand(a.shape[0], Nq, 1))
            out = out.masked_fill(~ok, 0.0)
        return out.to(queries.dtype)


class NoneAttention(AttentionBase):
    """Disabled connection (``none``): returns zeros ``(B, Nq, D)``; no parameters."""

    type_name = "none"
    key_mask_exact = True

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), ... -> zeros (B, Nq, D)``."""
        self._prepare(queries, keys, values, key_mask)  # validate only
        return torch.zeros_like(queries)


_EXPERTS = {
    "cross_attention": CrossAttention,
    "linear_attention": LinearAttention,
    "pooling": PoolingAttention,
    "cosine_attention": CosineAttention,
    "sigmoid_attention": SigmoidAttention,
}


class MixtureAttention(AttentionBase):
    """Router-mixed experts (``mixture``).

    A linear router on each query gives softmax weights over the experts
    (default: a softmax ``cross_attention`` expert, a ``linear_attention`` expert and a
    ``pooling`` expert); with ``top_k_experts`` only the k largest weights are kept and
    renormalised (sparse routing), otherwise all experts are mixed (soft routing).
    ``out_i = sum_e g_ie * expert_e(q, k, v)_i``.

    Args:
        experts: expert type names, from ``cross_attention``, ``linear_attention``, ``pooling``,
            ``cosine_attention``, ``sigmoid_attention`` (keyword; overrides ``n_experts``).
        n_experts: canvas-engineering compatibility: the first ``n_experts`` of the default
            cycle ``(cross, linear, pooling, cosine)`` repeated (ignored when ``experts`` is given).
        top_k_experts: keep the top-k router weights per query; None = soft mixture.
    """

    type_name = "mixture"

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        dropout: float = 0.0,
        n_experts: Optional[int] = None,
        top_k_experts: Optional[int] = None,
        experts: Optional[Sequence[str]] = None,
    ) -> None:
        # positional order (n_experts, top_k_experts) as in canvas-engineering; experts= extends it
        super().__init__(d_model, n_heads, dropout)
        if experts is None:
            cycle = ("cross_attention", "linear_attention", "pooling", "cosine_attention")
            if n_experts is None:
                experts = cycle[:3]
            else:
                _check_int(self.type_name, "n_experts", n_experts, 1)
                experts = tuple(cycle[i % len(cycle)] for i in range(n_experts))
        experts = tuple(experts)
        if not experts:
            raise CanvasTypeError("mixture: experts must name at least one expert type")
        for e in experts:
            if e not in _EXPERTS:
                raise CanvasTypeError(
                    f"mixture: unknown expert type {e!r}; choose from {sorted(_EXPERTS)}"
                )
        if top_k_experts is not None:
            _check_int(self.type_name, "top_k_experts", top_k_experts, 1)
            top_k_experts = min(top_k_experts, len(experts))
        self.expert_names = experts
        self.top_k_experts = top_k_experts
        self.experts = nn.ModuleList(_EXPERTS[e](d_model, n_heads, dropout) for e in experts)
        self.router = nn.Linear(d_model, len(experts))

    @property
    def key_mask_exact(self) -> bool:  # type: ignore[override]
        """Exact when every expert is: otherwise the runtime calls the mixture per key set."""
        return all(getattr(e, "key_mask_exact", False) is True for e in self.experts)

    def gates(self, queries: torch.Tensor) -> torch.Tensor:
        """Router weights ``(B, Nq, E)`` (rows sum to 1)."""
        g = F.softmax(self.router(queries).float(), dim=-1)
        k = self.top_k_experts
        if k is not None and k < g.shape[-1]:
            idx = g.topk(k, dim=-1).indices
            keep = torch.zeros_like(g, dtype=torch.bool).scatter(-1, idx, True)
            g = g * keep
            g = g / g.sum(dim=-1, keepdim=True)
        return g.to(queries.dtype)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        self._check_inputs(queries, keys, values)
        g = self.gates(queries)
        outs = torch.stack([e(queries, keys, values, key_mask) for e in self.experts], dim=-1)
        return (outs * g.unsqueeze(-2)).sum(dim=-1)

"""Non-softmax attention types: linear, sigmoid, pooling, copy, none, mixture."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.attention._base import (
    AttentionBase,
    _check_int,
    _check_width,
    aligned_key_index,
    has_key,
    safe_div,
)
from canvas_core.attention.causal_read import autocast_on, exp_floor, finite_or_zero, outside_autocast, \
    plain_module, work_dtype
from canvas_core.attention.linear_rows import _heads, exact_rows
from canvas_core.attention.linear_sums import dim_shift, elu_plus_one, scaled_features, shifted_key_summary
from canvas_core.attention.softmax import CosineAttention, CrossAttention, _QKVAttention
from canvas_core.errors import CanvasTypeError
from canvas_core.schema.limits import check_elements, check_size

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
    Computed in float32 at least.  Nothing that weighs in a ratio underflows: the key sums of each
    feature ``d`` are scaled by ``e^{-c_d}`` (``c_d`` the largest key pre-activation, capped at 0),
    and each query's features of a head by ``e^{c_d - n}`` with ``n`` their largest exponent
    (:func:`~canvas_core.attention.linear_sums.scaled_features`), constants the ratio does not see.
    The per-query form scales each key and each query by its own constant per head, and each
    query's weights by the largest key constant among its keys; a query whose weights still come
    out below what the float format holds exactly is recomputed in the log domain (one operator,
    so also under ``torch.compile``, on those rows only).

    The ``O(N + M)`` form works on the merged heads: ``S = phi(K)^T V`` is one ``(D, D)`` product
    per batch row with its off-head blocks zeroed (no head transposes), the normaliser's
    ``sum_j phi(k_j)`` sits next to it, and one product with ``phi(Q)`` gives numerator and
    denominator at once.  The value projection is applied after the sum over keys
    (``S = (phi(K)^T X) W_v^T + (sum_j phi(k_j)) b_v^T``), and the key side is one autograd
    function (:func:`canvas_core.attention.linear_sums.key_summary`; under ``torch.compile`` an
    operator running the same code) when nothing asks for the composite form (autocast, a
    replaced projection, a key mask).
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
        B, Nq, Nk, allowed, _ = self._prepare(queries, keys, values, key_mask)
        wdt = torch.float32 if queries.dtype in (torch.float16, torch.bfloat16) else queries.dtype
        q = self.q_proj(queries).to(wdt)
        if allowed is None or allowed.shape[1] == 1:
            kv, ks, c = self._key_side(keys, values, allowed, wdt)
            out = _read_summary(q, kv, ks, c, self.head_dim)
        else:
            k, v = self.k_proj(keys).to(wdt), self.v_proj(values).to(wdt)
            out = _weigh_per_query(q, k, v, allowed, self.head_dim)
        out = out.to(queries.dtype)
        if self.dropout_p > 0.0 and self.training:
            out = F.dropout(out, p=self.dropout_p)
        out = self.out_proj(out)
        return out.masked_fill(~has_key(allowed, Nk, out.device), 0.0)

    def _key_side(self, keys, values, allowed, wdt):
        """``(sum_j phi(k_j - c) v_j^T (B, D, D), sum_j phi(k_j - c) (B, D), c (B, 1, D))`` over
        the allowed keys (``allowed`` None or ``(B|1, 1, Nk)``), in ``wdt``; ``c`` is
        :func:`~canvas_core.attention.linear_sums.dim_shift` of the key pre-activations."""
        kp, vp = self.k_proj, self.v_proj
        plain = plain_module(kp, nn.Linear) and plain_module(vp, nn.Linear)
        if plain and allowed is None and keys.dtype == wdt == kp.weight.dtype == vp.weight.dtype \
                and not autocast_on(keys.device.type):
            # sum_j phi(k_j) (W_v x_j + b)^T = (sum_j phi(k_j) x_j^T) W_v^T + (sum_j phi(k_j)) b^T:
            # one (D, D) product per row instead of a projection of every key's value
            P, ks, c = shifted_key_summary(keys, None if values is keys else values, kp.weight, kp.bias)
            kv = torch.matmul(P, vp.weight.t())
            if vp.bias is not None:
                kv = kv + ks.unsqueeze(-1) * vp.bias
            return kv, ks, c
        k = kp(keys).to(wdt)
        c = dim_shift(k, None if allowed is None else allowed[:, 0])
        k = elu_plus_one(k, c)
        if allowed is not None:  # (B|1, 1, Nk) -> (B|1, Nk, 1) zeroes blocked keys
            k = k * allowed.transpose(1, 2).to(wdt)
        return _sum_over_keys(k, vp(values).to(wdt)) + (c,)


# The sums over keys below are what the float32 work dtype is for: under float16 autocast a
# matmul would be cast back to float16 and a sum over thousands of keys overflow, so they run with
# autocast off (the projections around them still follow it).
@outside_autocast
def _sum_over_keys(k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(sum_j k_j v_j^T (B, D, D), sum_j k_j (B, D))`` of features ``k`` and values ``v``."""
    return torch.matmul(k.transpose(1, 2), v), k.sum(dim=1)


@outside_autocast
def _read_summary(q: torch.Tensor, kv: torch.Tensor, ks: torch.Tensor, c: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Every query's ``phi(q_i)^T S / phi(q_i)^T s`` per head from the merged-head key summary
    ``S = kv (B, D, D)``, ``s = ks (B, D)`` of keys shifted by ``c`` (off-head blocks zeroed here),
    for query pre-activations ``q``: ``(B, Nq, D)``.  The dominant feature of each (query, head)
    weighs 1 and its key sum is at least 1, so no denominator underflows."""
    q = scaled_features(q, head_dim, c)[0]
    D = q.shape[-1]
    head = torch.arange(D, device=q.device) // head_dim
    same = head[:, None] == head[None, :]  # (D, D): the blocks of one head
    kv = kv.masked_fill(~same, 0.0)
    kd = ks.unsqueeze(-1).masked_fill(~same, 0.0)
    nd = torch.matmul(q, torch.cat([kv, kd], dim=2))  # (B, Nq, 2D): numerators, denominators
    return safe_div(nd[..., :D], nd[..., D:])


@outside_autocast
def _weigh_per_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                     head_dim: int) -> torch.Tensor:
    """The explicit form for a per-query mask ``allowed (B|1, Nq, Nk)``, from pre-activations
    ``q``, ``k`` and values ``v`` (merged heads): ``(B, Nq, D)``.

    ``w_ij = phi(q_i) . phi(k_j) = e^{n_i + m_j} (q'_i . k'_j)`` per head, with each query's and
    each key's features scaled to a largest value of 1 (a per-row constant ``e^{n_i}`` dropped).
    When the ``m_j`` of the keys some query links lie within half the float format's exponent
    range of their largest, ``M``, the keys are weighed ``e^{m_j - M}`` (one product, as before);
    otherwise each query ``i`` weighs its keys by ``e^{m_j - M_i}``, ``M_i`` the largest ``m_j`` it
    may attend (one more ``(Nq, Nk)`` exponential per head).  A row whose weights then sum below
    ``Nk * head_dim`` times the smallest normal number over epsilon may have lost its dominant
    terms to underflow (features whose large entries miss each other, or keys far below the
    largest): :func:`~canvas_core.attention.linear_rows.exact_rows` recomputes it exactly.

    Eagerly one host read first tells which weighing holds, so only that one is built, and
    :func:`~canvas_core.attention.linear_rows.exact_rows` reads whether a row is low (two reads
    per call; weighing first and reading both at once saved a read where the keys lie close, but
    built both weighings where they do not); under ``torch.compile`` the per-query weighing runs,
    and the operator looks for low rows."""
    B, Nq, D = q.shape
    Nk = k.shape[1]
    if Nk == 0:
        return torch.zeros_like(q)
    qh = _heads(scaled_features(q, head_dim)[0], head_dim)
    kf, m = scaled_features(k, head_dim)
    kh, vh = _heads(kf, head_dim), _heads(v, head_dim)
    al = allowed.unsqueeze(1)  # (B|1, 1, Nq, Nk)
    mk = m.squeeze(-1).transpose(1, 2).unsqueeze(2)  # (B, H, 1, Nk)
    used = al.any(dim=2, keepdim=True)  # keys some query may attend
    top = finite_or_zero(mk.masked_fill(~used, float("-inf")).amax(dim=-1, keepdim=True))  # (B, H, 1, 1)
    low_end = mk.masked_fill(~used, float("inf")).amin(dim=-1, keepdim=True)
    floor = exp_floor(q.dtype)
    fin = torch.finfo(q.dtype)
    bound = 4 * Nk * head_dim * fin.tiny / fin.eps
    has = al.any(dim=-1)  # (B|1, 1, Nq): rows without keys stay 0
    eager = not q.is_meta and not torch.compiler.is_compiling()
    if q.is_meta or (eager and bool((top - low_end <= -floor / 2).all())):
        # (clamped at the floor: keys no query links, weighed 0 by the mask anyway)
        scale = torch.exp((mk - top).clamp(min=floor, max=0)).transpose(-1, -2)
        a, W, low = _weights(qh, kh * scale, al.to(q.dtype), bound, has)
    else:
        rel = mk.masked_fill(~al, float("-inf"))  # (B, H, Nq, Nk)
        top = finite_or_zero(rel.amax(dim=-1, keepdim=True))
        scale = rel.sub_(top).clamp_(min=floor).exp_().masked_fill_(~al, 0.0)
        a, W, low = _weights(qh, kh, scale, bound, has)
    out = safe_div(torch.matmul(a, vh), W)  # (B, H, Nq, hd)
    if not q.is_meta:
        out = exact_rows(out, q, k, vh, allowed, low, head_dim)
    return out.transpose(1, 2).reshape(B, Nq, D)


def _weights(qh: torch.Tensor, kh: torch.Tensor, scale: torch.Tensor, bound: float,
             has: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weights ``a = (qh kh^T) * scale`` ``(B, H, Nq, Nk)``, their row sums ``W``
    ``(B, H, Nq, 1)``, and which rows with keys (``has``) sum below ``bound`` ``(B, H, Nq)``."""
    a = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    W = a.sum(dim=-1, keepdim=True)
    return a, W, (W.squeeze(-1) < bound) & has


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
        if allowed is not None or Nk == 0:  # zeros for a query without keys
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
    #: the output ignores keys and values: a NaN key does not make its rows NaN (runtime/type_call.py)
    reads_keys = False

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
        experts: a list or tuple of expert type names, from ``cross_attention``,
            ``linear_attention``, ``pooling``, ``cosine_attention``, ``sigmoid_attention`` (keyword;
            overrides ``n_experts``).
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
            else:  # the router's output width
                _check_width(self.type_name, "n_experts", n_experts)
                experts = tuple(cycle[i % len(cycle)] for i in range(n_experts))
        if isinstance(experts, (str, bytes)) or not isinstance(experts, (list, tuple)):
            raise CanvasTypeError(
                f"mixture: experts must be a list or tuple of expert type names, got {experts!r}; "
                f"write e.g. experts=[{experts!r}] for a single expert"
                if isinstance(experts, str) else
                f"mixture: experts must be a list or tuple of expert type names, got "
                f"{type(experts).__name__} {experts!r}"
            )
        experts = tuple(experts)
        if not experts:
            raise CanvasTypeError("mixture: experts must name at least one expert type")
        for e in experts:
            if not isinstance(e, str) or e not in _EXPERTS:
                raise CanvasTypeError(
                    f"mixture: unknown expert type {e!r}; choose from {sorted(_EXPERTS)}"
                )
        check_size("width", len(experts), "attention type 'mixture' number of experts (the router's width)")
        n_proj = sum(1 if e == "pooling" else 4 for e in experts)  # (d_model, d_model) weights
        check_elements((n_proj, d_model, d_model), "attention type 'mixture' expert projection weights "
                       "(one (d_model, d_model) matrix per projection)")
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
        logits = self.router(queries)  # softmax in float32 at least (float64 stays float64)
        g = F.softmax(logits, dim=-1, dtype=work_dtype(logits.dtype))
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
        # checked here so a bad mask is named as the mixture's, not as its first expert's
        self._mask(key_mask, queries.shape[0], queries.shape[1], keys.shape[1], queries)
        g = self.gates(queries)
        outs = torch.stack([e(queries, keys, values, key_mask) for e in self.experts], dim=-1)
        return (outs * g.unsqueeze(-2)).sum(dim=-1)

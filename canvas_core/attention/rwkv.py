"""RWKV attention (``rwkv``): the RWKV-4 time-decay recurrence over a connection's keys and values.

The scan itself (:func:`wkv_scan`, :func:`wkv_masked`) is public for kernels that want to check
themselves against it.  How queries read the sequence: :mod:`canvas_core.attention.causal_read`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from canvas_core.attention._base import AttentionBase, safe_div
from canvas_core.attention.causal_read import (
    CHUNK_ELEMS,
    NEG_INF,
    causal_read,
    check_kernel_choice,
    finite_or_zero,
    read_at,
    rows_identical,
    work_dtype,
)

__all__ = ["RWKVAttention", "wkv_scan", "wkv_masked"]


def wkv_scan(
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    key_ok: Optional[torch.Tensor] = None,
    chunk: Optional[int] = None,
) -> torch.Tensor:
    """RWKV-4 WKV along the sequence, as a numerically stable log-space chunked scan.

    ``wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) /
    (sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t})`` per channel, where masked keys
    (``key_ok`` False) are left out of both sums.

    The recurrent state ``(a, b, p)`` (numerator and denominator sums relative to their maximum
    exponent ``p``) is carried from chunk to chunk; inside a chunk of ``T`` keys the outputs are
    computed in parallel from the state and the chunk's keys (every exponent is taken relative to
    its row maximum, so nothing overflows).  ``chunk=1`` is the plain step-by-step recurrence.
    Cost ``O(L * T * C)``, ``L / T`` sequential steps.

    Args:
        k, v: ``(B, L, C)``; w: ``(C,)`` decay rate (> 0); u: ``(C,)`` bonus of the current key.
        key_ok: optional bool ``(B|1, L)``.
        chunk: keys per chunk (default: 1 on CPU, where the step recurrence is cheapest; up to
            32 on other devices).

    Returns:
        ``(B, L, C)``; 0 where no key is allowed up to ``t``.
    """
    B, L, C = k.shape
    if L == 0:
        return k.new_zeros(B, 0, C)
    if key_ok is not None:
        k = k.masked_fill(~key_ok.unsqueeze(-1), NEG_INF)
    if chunk is None:  # CPU: the step recurrence is cheapest; GPU: parallel chunks
        chunk = (
            1
            if k.device.type == "cpu"
            else max(1, min(32, int(math.sqrt(CHUNK_ELEMS / 4 / max(1, B * C)))))
        )
    a = torch.zeros(B, C, dtype=k.dtype, device=k.device)
    b = torch.zeros_like(a)
    p = torch.full_like(a, NEG_INF)
    outs = []
    if chunk == 1:
        for t in range(L):
            kt, vt = k[:, t], v[:, t]
            cur = u + kt
            m = finite_or_zero(torch.maximum(p, cur))
            e1, e2 = torch.exp(p - m), torch.exp(cur - m)
            outs.append(safe_div(e1 * a + e2 * vt, e1 * b + e2))
            old = p - w
            p = torch.maximum(old, kt)
            m = finite_or_zero(p)
            e1, e2 = torch.exp(old - m), torch.exp(kt - m)
            a = e1 * a + e2 * vt
            b = e1 * b + e2
        return torch.stack(outs, dim=1)
    for s in range(0, L, chunk):
        kc, vc = k[:, s : s + chunk], v[:, s : s + chunk]
        T = kc.shape[1]
        tau = torch.arange(T, device=k.device)
        lag = (tau[:, None] - 1 - tau[None, :]).to(k.dtype)  # (T, T): t - 1 - j
        logw = kc[:, None, :, :] - lag[None, :, :, None] * w  # (B, T_t, T_j, C)
        diag = (tau[:, None] == tau[None, :])[None, :, :, None]
        logw = torch.where(diag, (u + kc)[:, None, :, :], logw)
        future = (tau[None, :] > tau[:, None])[None, :, :, None]
        logw = logw.masked_fill(future, NEG_INF)
        log_state = p[:, None, :] - tau.to(k.dtype)[None, :, None] * w  # (B, T, C)
        m = finite_or_zero(torch.maximum(logw.amax(dim=2), log_state))
        e = torch.exp(logw - m[:, :, None, :])
        es = torch.exp(log_state - m)
        num = (e * vc[:, None, :, :]).sum(dim=2) + es * a[:, None, :]
        den = e.sum(dim=2) + es * b[:, None, :]
        outs.append(safe_div(num, den))
        # carry the state to the end of the chunk
        log_keys = kc - (T - 1 - tau).to(k.dtype)[None, :, None] * w  # (B, T, C)
        log_old = p - T * w
        p_new = torch.maximum(log_keys.amax(dim=1), log_old)
        pn = finite_or_zero(p_new)
        ek, eo = torch.exp(log_keys - pn[:, None, :]), torch.exp(log_old - pn)
        a = eo * a + (ek * vc).sum(dim=1)
        b = eo * b + ek.sum(dim=1)
        p = p_new
    return torch.cat(outs, dim=1)


def wkv_masked(
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    read: torch.Tensor,
    allowed: torch.Tensor,
) -> torch.Tensor:
    """WKV read at positions ``read (Nq,)`` with a per-query key mask (explicit form).

    Query ``i`` gets ``sum_j a_ij v_j / sum_j a_ij`` over keys ``j <= read_i`` allowed by
    ``allowed (B|1, Nq, L)``, with ``log a_ij = k_j - (read_i - 1 - j) w`` for ``j < read_i`` and
    ``u + k_j`` for ``j == read_i``: the scan's formula with the query's own key set.
    Chunked over queries; ``O(Nq * L * C)``.  Returns ``(B, Nq, C)``.
    """
    B, L, C = k.shape
    Nq = read.shape[0]
    j = torch.arange(L, device=k.device)
    chunk = max(1, CHUNK_ELEMS // max(1, B * L * C))
    outs = []
    for s in range(0, Nq, chunk):
        r = read[s : s + chunk]
        lag = (r[:, None] - 1 - j[None, :]).to(k.dtype)  # (Qc, L)
        logw = k[:, None, :, :] - lag[None, :, :, None] * w  # (B, Qc, L, C)
        cur = (j[None, :] == r[:, None])[None, :, :, None]
        logw = torch.where(cur, (u + k)[:, None, :, :], logw)
        ok = (
            (j[None, :] <= r[:, None])[None] & allowed[:, s : s + chunk]
            if allowed.shape[1] > 1
            else (j[None, :] <= r[:, None])[None] & allowed
        )
        logw = logw.masked_fill(~ok.unsqueeze(-1), NEG_INF)
        m = finite_or_zero(logw.amax(dim=2, keepdim=True))
        e = torch.exp(logw - m)
        outs.append(safe_div((e * v[:, None]).sum(dim=2), e.sum(dim=2)))
    if not outs:
        return k.new_zeros(B, 0, C)
    return torch.cat(outs, dim=1)


class RWKVAttention(AttentionBase):
    """RWKV-4 time-mixing (``rwkv``): a real WKV recurrence with learned per-channel decay.

    Keys/values give ``k = W_k keys``, ``v = W_v values``; the WKV recurrence (per channel decay
    ``w = exp(time_decay) > 0`` and bonus ``u = time_first`` for the current key) runs causally
    along the key sequence (:func:`wkv_scan`, log-space, stable).  Query ``i`` reads the WKV at
    its causal read position ``p(i) = floor((i + 1) * Nk / Nq) - 1`` (``Nq == Nk``: position
    ``i``, as in RWKV; ``Nq == 1``: after all keys; ``p(i) < 0``: zeros) and is gated by its
    receptance: ``out_i = W_o(sigmoid(W_r q_i) * wkv_{p(i)})``.

    Key mask: keys a query may not attend are left out of its sums.  A mask shared by all
    queries runs in the ``O(Nk)`` scan; a per-query mask uses the equivalent explicit form
    (:func:`wkv_masked`, ``O(Nq * Nk * D)``).  ``n_heads`` is validated only (RWKV-4 is
    per-channel).  ``kernel``: ``"auto"`` or ``"torch"`` (the CPU/GPU PyTorch scan); the choice
    is recorded in ``self.kernel_used``.
    """

    type_name = "rwkv"

    def __init__(
        self, d_model: int, n_heads: int = 4, dropout: float = 0.0, kernel: str = "auto"
    ) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.kernel = check_kernel_choice(self.type_name, kernel)
        self.kernel_used: Optional[str] = None
        D = d_model
        ratio = torch.arange(D, dtype=torch.float32) / max(D - 1, 1)
        # RWKV-4 init: decay speeds spread from slow to fast across channels
        self.time_decay = nn.Parameter(-5.0 + 8.0 * ratio ** (0.7 + 1.3 * ratio))
        zigzag = ((torch.arange(D) + 1) % 3 - 1).float() * 0.5
        self.time_first = nn.Parameter(torch.full((D,), math.log(0.3)) + zigzag)
        self.receptance = nn.Linear(D, D, bias=False)
        self.key = nn.Linear(D, D, bias=False)
        self.value = nn.Linear(D, D, bias=False)
        self.output = nn.Linear(D, D, bias=False)
        self.drop = nn.Dropout(self.dropout_p)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""
        _, Nq, Nk, allowed, _ = self._prepare(queries, keys, values, key_mask)
        self.kernel_used = "torch"
        if Nk == 0 or Nq == 0:
            return torch.zeros_like(queries)
        wd = work_dtype(queries.dtype)
        k = self.key(keys).to(wd)
        v = self.value(values).to(wd)
        w = torch.exp(self.time_decay.to(wd))
        u = self.time_first.to(wd)
        read, has = causal_read(Nq, Nk, allowed, queries.device)
        if allowed is None or rows_identical(allowed):
            key_ok = None if allowed is None else allowed[:, 0, :]
            wkv = read_at(self._wkv(k, v, w, u, key_ok), read, wd)
        else:
            wkv = wkv_masked(k, v, w, u, read, allowed)
        r = torch.sigmoid(self.receptance(queries))
        out = self.output(self.drop(r * wkv.to(queries.dtype)))
        return out.masked_fill(~has, 0.0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={self.kernel!r}"

    def _wkv(self, k, v, w, u, key_ok):
        """The WKV sequence ``(B, Nk, D)``: a registered kernel when one was named, else the
        PyTorch scan (``kernel_used`` records which)."""
        if self.kernel in ("auto", "torch"):
            return wkv_scan(k, v, w, u, key_ok)
        fast = self.__dict__.get("_fast_kernel")
        if fast is None:
            from canvas_core.plugins import create_kernel

            fast = self.__dict__["_fast_kernel"] = create_kernel(self.kernel)
        self.kernel_used = self.kernel
        return fast(k, v, w, u, key_ok)

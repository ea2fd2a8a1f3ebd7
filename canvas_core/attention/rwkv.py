"""RWKV attention (``rwkv``): the RWKV-4 time-decay recurrence over a connection's keys and values.

The scan itself (:func:`wkv_scan`, :func:`wkv_masked`) is public for kernels that want to check
themselves against it.  How queries read the sequence: :mod:`canvas_core.attention.causal_read`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
from torch import nn

from canvas_core.attention._base import AttentionBase, autocast_on, safe_div
from canvas_core.attention.causal_read import (
    CHUNK_ELEMS,
    NEG_INF,
    scratch,  # noqa: F401 - importable from here as before the split
    scratch_out,  # noqa: F401
    causal_read,
    exp_floor,  # noqa: F401
    check_kernel_choice,
    finite_or_zero,
    outside_autocast,
    plain_linear,
    read_at,
    rows_identical,
    work_dtype,
)
from canvas_core.attention.first_order import first_order_backward
from canvas_core.attention.int_roots import largest_int
from canvas_core.attention.wkv_chunks import _ChunkRead, _ChunkSums
from canvas_core.attention.wkv_kernel import W_MAX as _W_MAX
from canvas_core.attention.wkv_kernel import WKVNonFiniteError
from canvas_core.attention.wkv_kernel import usable_for as _kernel_usable
from canvas_core.attention.wkv_kernel import wkv_read_cpu
from canvas_core.attention.wkv_states import _chunk_states, _exp_rel, finite_prefix, finite_values, nan_from, nan_where_read

__all__ = ["RWKVAttention", "wkv_read", "wkv_scan", "wkv_masked"]


def _blocked(x: torch.Tensor, blocked: Optional[torch.Tensor]) -> torch.Tensor:
    """``x`` with ``-inf`` where ``blocked`` (bool, broadcastable; None: nothing blocked)."""
    return x if blocked is None else x.masked_fill(blocked, NEG_INF)


def _chunk_for(L: int, Q: int) -> int:
    """Keys per chunk: ``round((3 L^2 / Q)^(1/3))`` (balances the in-chunk and the chunk-state
    terms), moved to a divisor of ``L`` within -30% / +40% when there is one (no padded chunk: no
    concatenated copies of the keys and values, no mask).  Integer arithmetic only (a bisection
    for the rounded cube root): under ``torch.compile`` with dynamic shapes the sizes are
    symbolic, and dynamo's runtime-assert pass cannot replay float powers of them."""
    Q, X = max(Q, 1), 24 * L * L  # round(c) >= t  <=>  (2t - 1)^3 Q <= 24 L^2, with c^3 = 3 L^2 / Q
    t = largest_int(lambda r: (2 * r - 1) ** 3 * Q <= X, 1, 2 * L + 2)  # c <= 1.45 L
    best, gap = t, None
    for d in range(max(1, (7 * t) // 10), (14 * t) // 10 + 1):  # a loop, not min(): torch.compile traces it
        if L % d == 0 and (gap is None or abs(d - t) < gap):  # ties: the smaller divisor
            best, gap = d, abs(d - t)
    return best


_LOG_W_MAX = math.log(_W_MAX)


def _compiled_read(k, v, w, u, read, key_ok) -> Optional[torch.Tensor]:
    """:func:`~canvas_core.attention.wkv_kernel.wkv_read_cpu`, or None when its scan met a NaN or
    infinite key or value (masked ones included): the caller then runs the PyTorch path, which
    gives NaN from that key on.  The kernel raises before its autograd node is recorded, so the
    failed try leaves nothing behind."""
    try:
        return wkv_read_cpu(k, v, w, u, read, key_ok)
    except WKVNonFiniteError:
        return None


@outside_autocast
def wkv_read(
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    read: torch.Tensor,
    key_ok: Optional[torch.Tensor] = None,
    chunk: Optional[int] = None,
    ends_chunks: bool = False,
) -> torch.Tensor:
    """RWKV-4 WKV read at positions ``read``, chunked and parallel (no loop over positions).

    ``wkv_p = (sum_{j<p} e^{k_j - (p-1-j) w} v_j + e^{u + k_p} v_p) /
    (sum_{j<p} e^{k_j - (p-1-j) w} + e^{u + k_p})`` per channel, masked keys (``key_ok``
    False) left out of both sums; 0 where no key is allowed up to ``p`` or ``p < 0``.

    The keys are cut into chunks of ``T``: each chunk is summarised (its sums at its end,
    relative to their largest exponent), the state after every chunk is a decayed sum of the
    earlier summaries (all chunks at once), and each read combines the state entering its chunk
    with its chunk's keys up to ``p``.  Every exponent is taken relative to the largest one
    actually combined (a chunk or state with no allowed key has maximum ``-inf``, never 0), so
    nothing overflows in float32 and no weight that matters is clamped at the floor.  Cost
    ``O(Q T C + (L / T)^2 C)``.  A NaN or ``+inf`` key or a non-finite value gives NaN from its
    position on, never before (as the step recurrence does).

    Args:
        k, v: ``(B, L, C)``; w: ``(C,)`` decay rate (> 0); u: ``(C,)`` bonus of the current key.
        read: ``(Q,)`` long positions in ``[-1, L - 1]``.
        key_ok: optional bool ``(B|1, L)``.
        chunk: keys per chunk (default ``(3 L^2 / Q)^(1/3)``, which balances the two terms as
            measured on CPUs, or a divisor of ``L`` near it).
        ends_chunks: ``read[i] == (i + 1) chunk - 1`` for every ``i`` (each read ends its own
            chunk: no gather of the chunks); checked outside ``torch.compile``.

    Returns:
        ``(B, Q, C)``.
    """
    B, L, C = k.shape
    Q = read.shape[0]
    if L == 0 or Q == 0:
        return (k.sum() + v.sum() + w.sum() + u.sum()) * 0 + k.new_zeros(B, Q, C)
    # exp(-w) is 0 in float32 and float64 long before w = 1e4, so a larger rate forgets exactly
    # as much; capped, the products lag * w and (chunks apart) * T * w stay finite (an infinite
    # one made inf - inf = NaN), and the gradient above the cap is the 0 the exponentials give
    w = w.clamp(max=_W_MAX)
    k, v, marks = finite_prefix(k, v, key_ok)
    T = chunk if chunk is not None else _chunk_for(L, Q)
    T = max(1, min(int(T), L))
    nC = -(-L // T)
    Lp = nC * T
    dev = k.device
    ok = torch.ones(1, L, dtype=torch.bool, device=dev) if key_ok is None else key_ok.to(torch.bool)
    if Lp > L:
        k = torch.cat([k, k.new_zeros(B, Lp - L, C)], dim=1)
        v = torch.cat([v, v.new_zeros(B, Lp - L, C)], dim=1)
        ok = torch.cat([ok, ok.new_zeros(ok.shape[0], Lp - L)], dim=1)
    kc, vc = k.view(B, nC, T, C), v.view(B, nC, T, C)
    okc = ok.view(-1, nC, T, 1)
    tau = torch.arange(T, device=dev)
    # summary of each chunk at its end: sum_j e^{k_j - (T-1-j) w} (v_j, 1)
    masked = key_ok is not None or Lp > L
    fused = ends_chunks and T > 1
    if fused:  # each chunk's first T - 1 keys weighed as its read weighs them; the last key apart
        a1, b1, m1, kl, vl = _ChunkSums.apply(kc, vc, w, okc if masked else None, True)  # m1 -inf: no key
        bl = (~okc[:, :, -1]) if masked else None
        m = torch.maximum(m1 - w.detach(), _blocked(kl.detach(), bl))  # -inf for an empty chunk
        mf = finite_or_zero(m)
        e1, el = _exp_rel(m1 - w - mf, None), _exp_rel(_blocked(kl, bl) - mf, bl)  # the summary decays them one more step
        a, b = a1 * e1 + vl * el, b1 * e1 + el
    else:
        a, b, m = _ChunkSums.apply(kc, vc, w, okc if masked else None)
    # state after chunk c: sum_{c' <= c} e^{m_c' - (c - c') T w} (a_c', b_c')
    As, Bs, Ms = _chunk_states(a, b, m, w, T)
    # each read: the state entering its chunk, decayed to p, and its chunk's keys j <= p
    pos = read.clamp(min=0)
    cr = torch.div(pos, T, rounding_mode="floor")
    off = pos - cr * T
    prev = (cr - 1).clamp(min=0)
    Mr = Ms.index_select(1, prev) - off.to(k.dtype).view(1, Q, 1) * w
    first = (cr == 0).view(1, Q, 1)
    Mr = Mr.masked_fill(first, NEG_INF)
    rel = tau.view(1, T) - off.view(Q, 1)  # j - p
    ends = torch.arange(1, Q + 1, device=dev) * T - 1
    if ends_chunks and (Q != nC or not (torch.compiler.is_compiling() or bool((pos == ends).all()))):
        raise ValueError("wkv_read: ends_chunks needs read[i] == (i + 1) * chunk - 1 for every read")
    if fused:  # the read: those keys plus the last one with the bonus u
        bonus = u + kl
        mx = finite_or_zero(torch.maximum(torch.maximum(m1, _blocked(bonus.detach(), bl)), Mr.detach()))
        e1, el = _exp_rel(m1 - mx, None), _exp_rel(_blocked(bonus, bl) - mx, bl)
        num_i, den_i = a1 * e1 + vl * el, b1 * e1 + el
    else:
        crr = None if ends_chunks else cr
        num_i, den_i, mx = _ChunkRead.apply(kc, vc, w, u, None if key_ok is None else okc, crr, rel, Mr.detach())
    es = _exp_rel(Mr - mx, first)
    num = num_i + es * As.index_select(1, prev)
    den = den_i + es * Bs.index_select(1, prev)
    out = safe_div(num, den)
    return nan_from(out * (read >= 0).view(1, Q, 1).to(out.dtype), read, marks)


@outside_autocast
def wkv_scan(
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    key_ok: Optional[torch.Tensor] = None,
    chunk: Optional[int] = None,
) -> torch.Tensor:
    """RWKV-4 WKV at every position: ``wkv_t`` of :func:`wkv_read` for ``t = 0 .. L-1``.

    ``chunk=1`` runs the plain step-by-step recurrence (the reference: a running numerator,
    denominator and maximum exponent carried key by key); otherwise :func:`wkv_read` runs with
    ``chunk`` keys per chunk (default: its own choice).

    Args:
        k, v: ``(B, L, C)``; w: ``(C,)`` decay rate (> 0); u: ``(C,)`` bonus of the current key.
        key_ok: optional bool ``(B|1, L)``.
        chunk: keys per chunk.

    Returns:
        ``(B, L, C)``; 0 where no key is allowed up to ``t``.
    """
    B, L, C = k.shape
    if L == 0:
        return k.new_zeros(B, 0, C)
    if chunk != 1:
        return wkv_read(k, v, w, u, torch.arange(L, device=k.device), key_ok, chunk)
    if key_ok is not None:  # a masked key weighs 0 and its value is not read (0 x NaN is NaN)
        k, v = k.masked_fill(~key_ok.unsqueeze(-1), NEG_INF), v.masked_fill(~key_ok.unsqueeze(-1), 0.0)
    a = torch.zeros(B, C, dtype=k.dtype, device=k.device)
    b = torch.zeros_like(a)
    p = torch.full_like(a, NEG_INF)
    outs = []
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


@outside_autocast
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
    w = w.clamp(max=_W_MAX)  # as in wkv_read: 0 * inf at lag 0 would be NaN
    v, bad_v = finite_values(v)  # a non-finite value: NaN for the queries that read it, no other
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
        outs.append(nan_where_read(safe_div((e * v[:, None]).sum(dim=2), e.sum(dim=2)), ok, bad_v))
    if not outs:
        return k.new_zeros(B, 0, C)
    return torch.cat(outs, dim=1)


class _SharedProjections(torch.autograd.Function):
    """``(x W_k^T, x W_v^T)`` of one tensor ``x (B, L, D)`` (keys that are the values): the
    backward writes ``dx = dk W_k + dv W_v`` as one product and one accumulating product, with
    no second gradient of ``x`` to add."""

    @staticmethod
    def forward(ctx, x, wk, wv):
        ctx.save_for_backward(x, wk, wv)
        return torch.matmul(x, wk.t()), torch.matmul(x, wv.t())

    @staticmethod
    @first_order_backward("rwkv's key and value projection")
    def backward(ctx, dk, dv):
        x, wk, wv = ctx.saved_tensors
        xf = x.reshape(-1, x.shape[-1])
        dkf, dvf = dk.reshape(-1, dk.shape[-1]), dv.reshape(-1, dv.shape[-1])
        dx = torch.addmm(torch.mm(dkf, wk), dvf, wv).view(x.shape) if ctx.needs_input_grad[0] else None
        dwk = torch.mm(dkf.t(), xf) if ctx.needs_input_grad[1] else None
        dwv = torch.mm(dvf.t(), xf) if ctx.needs_input_grad[2] else None
        return dx, dwk, dwv


class RWKVAttention(AttentionBase):
    """RWKV-4 time-mixing (``rwkv``): a real WKV recurrence with learned per-channel decay.

    Keys/values give ``k = W_k keys``, ``v = W_v values``; the WKV recurrence (per channel decay
    ``w = exp(time_decay) > 0`` and bonus ``u = time_first`` for the current key) runs causally
    along the key sequence (:func:`wkv_scan`, log-space, stable).  Query ``i`` reads the WKV at
    its causal read position ``p(i) = ceil((i + 1) * Nk / Nq) - 1`` (``Nq == Nk``: position
    ``i``, as in RWKV; ``Nq == 1``: after all keys; ``Nq > Nk``: at least key 0) and is gated by its
    receptance: ``out_i = W_o(sigmoid(W_r q_i) * wkv_{p(i)})``.

    Key mask: keys a query may not attend are left out of its sums.  A mask shared by all
    queries runs in the ``O(Nk)`` scan; a per-query mask uses the equivalent explicit form
    (:func:`wkv_masked`, ``O(Nq * Nk * D)``).  ``n_heads`` is validated only (RWKV-4 is
    per-channel).  ``kernel``: ``"auto"`` (on CPU in float32 / float64 with finite keys and values,
    which the compiled scan checks as it runs, outside ``torch.compile``: the compiled scan of
    :mod:`canvas_core.attention.wkv_kernel` when it builds, ``CANVAS_RWKV_CPU_KERNEL`` choosing;
    else the PyTorch one) or ``"torch"`` (the CPU/GPU PyTorch scan always); the choice is recorded
    in ``self.kernel_used`` (``"rwkv_cpu"``, ``"torch"``).
    """

    type_name = "rwkv"

    def __init__(
        self, d_model: int, n_heads: int = 4, dropout: float = 0.0, kernel: str = "auto"
    ) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.kernel = check_kernel_choice(self.type_name, kernel)
        self.kernel_used: Optional[str] = None
        D = d_model
        dt = torch.get_default_dtype()  # the parameters' dtype, as nn.Linear's; computed at least in float32
        ratio = torch.arange(D, dtype=torch.promote_types(dt, torch.float32)) / max(D - 1, 1)
        # RWKV-4 init: decay speeds spread from slow to fast across channels
        self.time_decay = nn.Parameter((-5.0 + 8.0 * ratio ** (0.7 + 1.3 * ratio)).to(dt))
        self.time_first = nn.Parameter((math.log(0.3) + ((torch.arange(D) + 1) % 3 - 1).to(ratio.dtype) * 0.5).to(dt))
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
        # under autocast the projections run as autocast has them (then cast to wd); the WKV
        # (and a kernel named by kernel=) runs outside it, in wd, as the public WKV functions do
        amp = autocast_on(queries.device.type)
        if keys is values and not amp and plain_linear(self.key, with_bias=False) and plain_linear(self.value, with_bias=False):
            k, v = (t.to(wd) for t in _SharedProjections.apply(values, self.key.weight.to(values.dtype),
                                                               self.value.weight.to(values.dtype)))
        else:
            k = self.key(keys).to(wd)
            v = self.value(values).to(wd)
        w = torch.exp(self.time_decay.to(wd).clamp(max=_LOG_W_MAX))  # capped before exp: a 0 gradient above, not 0 * inf
        u = self.time_first.to(wd)
        read, has = causal_read(Nq, Nk, allowed, queries.device)
        with torch.autocast(queries.device.type, enabled=False) if amp else contextlib.nullcontext():
            if allowed is None or rows_identical(allowed):
                key_ok = None if allowed is None else allowed[:, 0, :]
                compiled = self.kernel == "auto" and _kernel_usable(k, v, w, u, key_ok)  # CPU: the compiled scan
                wkv = _compiled_read(k, v, w, u, read, key_ok) if compiled else None
                if wkv is not None:
                    self.kernel_used = "rwkv_cpu"
                elif self.kernel in ("auto", "torch"):  # chunked, only at the read positions
                    # Nk = s Nq: every read ends a chunk of s keys (no key past a read in its chunk)
                    aligned = Nk // Nq if Nk % Nq == 0 and Nk > Nq else None
                    wkv = wkv_read(k, v, w, u, read, key_ok, chunk=aligned, ends_chunks=aligned is not None)
                else:
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

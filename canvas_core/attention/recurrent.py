"""Sequence-operator attention types: RWKV time-decay recurrence and Hyena long convolution.

Both run causally along the key/value sequence (the connection's destination positions, in the
order given: region order on the canvas) and let queries read it at their causal read position
(:func:`canvas_core.attention._base.causal_read_index`): query ``i`` reads the state after key
``p(i) = floor((i + 1) * Nk / Nq) - 1``.  ``Nq == Nk`` is the usual position-aligned causal
operator; ``Nq == 1`` reads the whole sequence; ``p(i) < 0`` gives zeros.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from canvas_core.attention._base import AttentionBase, _check_int, causal_read_index, safe_div
from canvas_core.errors import CanvasTypeError

__all__ = ["RWKVAttention", "HyenaAttention", "wkv_scan", "wkv_masked", "fft_causal_conv"]

_NEG_INF = float("-inf")
_CHUNK_ELEMS = 1 << 24  # bound on the size of per-query intermediate tensors


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _finite_or_zero(q: torch.Tensor) -> torch.Tensor:
    return torch.where(q == _NEG_INF, torch.zeros_like(q), q)


def _check_kernel(type_name: str, kernel: str) -> str:
    """``"auto"``, ``"torch"``, or the name of a registered kernel that supports ``type_name``
    (e.g. ``fla_rwkv`` from canvas-plugin-fla); anything else is a clear error."""
    if kernel in ("auto", "torch"):
        return kernel
    if not isinstance(kernel, str):
        raise CanvasTypeError(f"{type_name}: kernel must be a kernel name, got {kernel!r}")
    from canvas_core.plugins import get_kernel_spec

    spec = get_kernel_spec(kernel)  # UnknownNameError (with install hint) for unknown names
    if type_name not in tuple(getattr(spec, "supports", ()) or ()):
        raise CanvasTypeError(
            f"{type_name}: kernel {kernel!r} ({spec.describe_provider()}) does not compute "
            f"{type_name}; use kernel='auto', 'torch', or a kernel whose supports include {type_name!r}"
        )
    return kernel


def _rows_identical(allowed: torch.Tensor) -> bool:
    """True when a ``(B|1, Nq, Nk)`` mask is the same for every query (eager mode only)."""
    if allowed.shape[1] == 1:
        return True
    if torch.compiler.is_compiling():
        return False
    return bool((allowed == allowed[:, :1, :]).all())


def _causal_read(
    Nq: int, Nk: int, allowed: Optional[torch.Tensor], device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Causal read positions of the queries and which queries read anything.

    Args:
        allowed: ``(B|1, Nq|1, Nk)`` bool key mask, or None (every key allowed).

    Returns:
        ``read (Nq,)``: :func:`causal_read_index` (``-1``: before the first key);
        ``has (B|1, Nq, 1)`` bool: query ``i`` has an allowed key ``j <= read_i``.
    """
    read = causal_read_index(Nq, Nk, device=device)
    j = torch.arange(Nk, device=device)
    before = j[None, :] <= read[:, None]  # (Nq, Nk)
    if allowed is None:
        return read, before.any(-1).view(1, Nq, 1)
    return read, (before[None] & allowed).any(-1, keepdim=True)


def _read_at(seq: torch.Tensor, read: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``seq (B, Nk, C)`` read at ``read (Nq,)`` -> ``(B, Nq, C)``; zeros where ``read < 0``
    (the validity factor is cast to ``dtype``, the working dtype)."""
    valid = read >= 0
    return seq.index_select(1, read.clamp(min=0)) * valid.view(1, -1, 1).to(dtype)


# ---------------------------------------------------------------------------- RWKV
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
        k = k.masked_fill(~key_ok.unsqueeze(-1), _NEG_INF)
    if chunk is None:  # CPU: the step recurrence is cheapest; GPU: parallel chunks
        chunk = (
            1
            if k.device.type == "cpu"
            else max(1, min(32, int(math.sqrt(_CHUNK_ELEMS / 4 / max(1, B * C)))))
        )
    a = torch.zeros(B, C, dtype=k.dtype, device=k.device)
    b = torch.zeros_like(a)
    p = torch.full_like(a, _NEG_INF)
    outs = []
    if chunk == 1:
        for t in range(L):
            kt, vt = k[:, t], v[:, t]
            cur = u + kt
            m = _finite_or_zero(torch.maximum(p, cur))
            e1, e2 = torch.exp(p - m), torch.exp(cur - m)
            outs.append(safe_div(e1 * a + e2 * vt, e1 * b + e2))
            old = p - w
            p = torch.maximum(old, kt)
            m = _finite_or_zero(p)
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
        logw = logw.masked_fill(future, _NEG_INF)
        log_state = p[:, None, :] - tau.to(k.dtype)[None, :, None] * w  # (B, T, C)
        m = _finite_or_zero(torch.maximum(logw.amax(dim=2), log_state))
        e = torch.exp(logw - m[:, :, None, :])
        es = torch.exp(log_state - m)
        num = (e * vc[:, None, :, :]).sum(dim=2) + es * a[:, None, :]
        den = e.sum(dim=2) + es * b[:, None, :]
        outs.append(safe_div(num, den))
        # carry the state to the end of the chunk
        log_keys = kc - (T - 1 - tau).to(k.dtype)[None, :, None] * w  # (B, T, C)
        log_old = p - T * w
        p_new = torch.maximum(log_keys.amax(dim=1), log_old)
        pn = _finite_or_zero(p_new)
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
    chunk = max(1, _CHUNK_ELEMS // max(1, B * L * C))
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
        logw = logw.masked_fill(~ok.unsqueeze(-1), _NEG_INF)
        m = _finite_or_zero(logw.amax(dim=2, keepdim=True))
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
        self.kernel = _check_kernel(self.type_name, kernel)
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
        wd = _work_dtype(queries.dtype)
        k = self.key(keys).to(wd)
        v = self.value(values).to(wd)
        w = torch.exp(self.time_decay.to(wd))
        u = self.time_first.to(wd)
        read, has = _causal_read(Nq, Nk, allowed, queries.device)
        if allowed is None or _rows_identical(allowed):
            key_ok = None if allowed is None else allowed[:, 0, :]
            wkv = _read_at(self._wkv(k, v, w, u, key_ok), read, wd)
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


# ---------------------------------------------------------------------------- Hyena
def fft_causal_conv(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal long convolution by FFT: ``y_t = sum_{s<=t} h_{t-s} z_s``.

    z: ``(B, L, C)``; h: ``(L, C)``. ``O(L log L)``; computed in float32 (float64 kept).
    """
    B, L, C = z.shape
    if L == 0:
        return z.clone()
    wd = _work_dtype(z.dtype)
    n = 2 * L
    Z = torch.fft.rfft(z.to(wd), n=n, dim=1)
    H = torch.fft.rfft(h.to(wd), n=n, dim=0)
    return torch.fft.irfft(Z * H.unsqueeze(0), n=n, dim=1)[:, :L]


class _Sin(nn.Module):
    """``sin(freq * x)`` with a learned per-feature frequency (Hyena's filter activation)."""

    def __init__(self, dim: int, w: float = 1.0) -> None:
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class HyenaAttention(AttentionBase):
    """Hyena operator (``hyena``): implicit long convolutions with data-controlled gating.

    Implicit filters ``h^n (L, D)`` (``n = 1..order``) are produced by a small MLP (sine
    activations) over positional features of the lag ``t = 0..L-1`` (``t / max_len`` plus
    ``n_bands`` sine/cosine bands ``sin, cos(t / max_len^(b / n_bands))``), times an
    exponential decay window ``exp(-alpha_c t / max_len)``
    with per-channel rates.  Along the key sequence (length ``L = Nk``):

    ``z^1 = W_v values``; ``z^{n+1} = x^n * (h^n (*) z^n + d_n z^n)`` for ``n < order`` with gates
    ``x^n = W_x^n keys``; ``y = h^order (*) z^order + d_order z^order``, where ``(*)`` is the causal
    convolution done by FFT (``O(L log L)``).  Query ``i`` reads ``y`` at its causal read position
    ``p(i)`` and gates it: ``out_i = W_o((W_q q_i) * y_{p(i)})``.

    Key mask: masked keys are zeroed in every stage (they contribute nothing; positions keep
    their place, so lags are unchanged).  Per-query masks restrict the last convolution exactly
    per query (explicit ``O(Nq * Nk * D)`` form); inner stages use the keys any query may see.

    Args:
        order: number of convolutions (>= 1), default 2.
        max_len: length scale of the positional features (sequences may be longer).
        filter_dim: width of the filter MLP.
        n_bands: number of sine/cosine positional bands.
        kernel: ``"auto"`` or ``"torch"`` (FFT in PyTorch); recorded in ``self.kernel_used``.
    """

    type_name = "hyena"

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        dropout: float = 0.0,
        order: int = 2,
        max_len: int = 4096,
        filter_dim: int = 32,
        n_bands: int = 4,
        kernel: str = "auto",
    ) -> None:
        # positional order (order, max_len) as in canvas-engineering; the rest are extensions
        super().__init__(d_model, n_heads, dropout)
        t = self.type_name
        self.order = _check_int(t, "order", order, 1)
        self.filter_dim = _check_int(t, "filter_dim", filter_dim, 1)
        self.n_bands = _check_int(t, "n_bands", n_bands, 0)
        self.max_len = _check_int(t, "max_len", max_len, 1)
        self.kernel = _check_kernel(t, kernel)
        self.kernel_used: Optional[str] = None
        D = d_model
        self.v_proj = nn.Linear(D, D)
        self.q_proj = nn.Linear(D, D)
        self.gate_proj = nn.Linear(D, D * (order - 1)) if order > 1 else None
        self.out_proj = nn.Linear(D, D)
        emb = 1 + 2 * n_bands
        self.filter_mlp = nn.Sequential(
            nn.Linear(emb, filter_dim),
            _Sin(filter_dim),
            nn.Linear(filter_dim, filter_dim),
            _Sin(filter_dim),
            nn.Linear(filter_dim, order * D, bias=False),
        )
        # decay rates: reach 1e-2 after between 30% and 150% of max_len
        rates = torch.linspace(math.log(1e-2) / 0.3, math.log(1e-2) / 1.5, D).abs()
        self.register_buffer("decay_rates", rates)
        self.skip = nn.Parameter(torch.randn(order, D) * 0.02)
        self.drop = nn.Dropout(self.dropout_p)

    def filters(self, L: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The implicit filters ``(order, L, D)`` for a sequence of length ``L``."""
        dev = self.skip.device
        lag = torch.arange(L, device=dev, dtype=torch.float32)
        t = lag / self.max_len
        feats = [t[:, None]]
        if self.n_bands:
            # transformer-style bands over the absolute lag: fast (period 2*pi) to slow
            b = torch.arange(self.n_bands, device=dev, dtype=torch.float32)
            ang = lag[:, None] / (float(self.max_len) ** (b / self.n_bands))[None, :]
            feats += [torch.sin(ang), torch.cos(ang)]
        z = torch.cat(feats, dim=-1)
        h = self.filter_mlp(z.to(self.skip.dtype)).view(L, self.order, self.d_model).transpose(0, 1)
        window = torch.exp(-t[:, None] * self.decay_rates[None, :].float())
        return (h * window.to(h.dtype)).to(dtype)

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
        if Nk == 0:
            return torch.zeros_like(queries)
        wd = _work_dtype(queries.dtype)
        read, has = _causal_read(Nq, Nk, allowed, queries.device)
        per_query = allowed is not None and not _rows_identical(allowed)
        key_ok = None if allowed is None else allowed.any(dim=1)  # (B|1, Nk): union over queries
        keep = None if key_ok is None else key_ok.unsqueeze(-1).to(wd)

        h = self.filters(Nk, dtype=wd)  # (order, Nk, D)
        d = self.skip.to(wd)
        z = self.v_proj(values).to(wd)
        if keep is not None:
            z = z * keep
        gates = self.gate_proj(keys).to(wd).chunk(self.order - 1, dim=-1) if self.order > 1 else ()
        for n in range(self.order - 1):
            z = gates[n] * (fft_causal_conv(z, h[n]) + d[n] * z)
            if keep is not None:
                z = z * keep
        if not per_query:
            y = _read_at(fft_causal_conv(z, h[-1]) + d[-1] * z, read, wd)
        else:
            y = self._masked_last_conv(z, h[-1], d[-1], read, allowed)
        out = self.out_proj(self.drop(self.q_proj(queries) * y.to(queries.dtype)))
        return out.masked_fill(~has, 0.0)

    @staticmethod
    def _masked_last_conv(
        z: torch.Tensor, h: torch.Tensor, d: torch.Tensor, read: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """``y_i = sum_{j <= p_i, allowed_ij} h[p_i - j] z_j + d z_{p_i} [allowed_i,p_i]``."""
        B, L, C = z.shape
        Nq = read.shape[0]
        j = torch.arange(L, device=z.device)
        chunk = max(1, _CHUNK_ELEMS // max(1, B * L * C))
        outs = []
        for s in range(0, Nq, chunk):
            r = read[s : s + chunk]
            lag = r[:, None] - j[None, :]  # (Qc, L)
            a = allowed[:, s : s + chunk] if allowed.shape[1] > 1 else allowed
            ok = ((lag >= 0)[None] & a).to(z.dtype)  # (B|1, Qc, L)
            taps = h[lag.clamp(min=0)] + d * (lag == 0).unsqueeze(-1).to(z.dtype)  # (Qc, L, C)
            outs.append(
                torch.einsum("bqj,qjc,bjc->bqc", ok, taps, z)
                if ok.shape[0] == B
                else torch.einsum("qj,qjc,bjc->bqc", ok[0], taps, z)
            )
        if not outs:
            return z.new_zeros(B, 0, C)
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", order={self.order}, kernel={self.kernel!r}"

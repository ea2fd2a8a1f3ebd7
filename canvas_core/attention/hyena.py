"""Hyena attention (``hyena``): implicit long convolutions with data-controlled gating, run
causally over a connection's keys and values (see :mod:`canvas_core.attention.causal_read`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from canvas_core.attention._base import AttentionBase, _check_int
from canvas_core.attention.causal_read import (
    CHUNK_ELEMS,
    causal_read,
    check_kernel_choice,
    plain_linear,
    rows_identical,
    scratch,
    work_dtype,
)
from canvas_core.attention.first_order import first_order_backward

__all__ = ["HyenaAttention", "fft_causal_conv", "causal_conv_last", "gated_causal_conv", "read_conv_last", "fft_size"]


def fft_size(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (a fast FFT length)."""
    m = max(1, n)
    while True:
        x = m
        for p in (2, 3, 5):
            while x % p == 0:
                x //= p
        if x == 1:
            return m
        m += 1


def _zero_padded(x: torch.Tensor, n: int, slot: str) -> torch.Tensor:
    """``x (..., L)`` zero-padded to ``(..., n)`` in the per-thread scratch buffer ``slot``."""
    xp = scratch(slot, x.shape[:-1] + (n,), x)
    L = x.shape[-1]
    xp[..., :L].copy_(x)
    xp[..., L:].zero_()
    return xp


class _CausalConv(torch.autograd.Function):
    """``y = causal_conv(z, h)`` along the last dim by FFT, with its adjoint by FFT too:
    ``dz_s = sum_{t >= s} g_t h_{t-s}``, ``dh_k = sum_b sum_t g_t z_{t-k}`` (correlations, as
    products with the conjugate spectra; the zero padding to ``n >= 2L - 1`` keeps them exact).

    The padded signals and the spectra that are not saved live in per-thread scratch (each is
    ``B x C x n``: fresh ones cost more in page faults than the arithmetic on them).  The
    transforms themselves are not given ``out=`` (torch computes a fresh result and copies it
    there) and the results are the first ``L`` points of the inverse transforms, as views.
    The spectra are saved already conjugated (what the backward multiplies by)."""

    @staticmethod
    def forward(ctx, z, h):  # z (B, C, L), h (C, L)
        L = z.shape[-1]
        n = fft_size(2 * L - 1)
        Z = torch.fft.rfft(_zero_padded(z, n, "hy_pad"))
        H = torch.fft.rfft(h, n=n)
        y = torch.fft.irfft(torch.mul(Z, H, out=scratch("hy_spec", Z.shape, Z)), n=n)[..., :L]
        ctx.save_for_backward(Z.conj_physical_(), H.conj_physical_())
        ctx.L, ctx.n = L, n
        return y

    @staticmethod
    @first_order_backward("hyena's causal convolution")
    def backward(ctx, g):
        Zc, Hc = ctx.saved_tensors
        L, n = ctx.L, ctx.n
        G = torch.fft.rfft(_zero_padded(g, n, "hy_pad"))
        dz = dh = None
        if ctx.needs_input_grad[1]:
            dh = torch.fft.irfft(torch.mul(G, Zc, out=scratch("hy_spec", G.shape, G)).sum(dim=0), n=n)
            dh = dh[..., :L]
        if ctx.needs_input_grad[0]:
            dz = torch.fft.irfft(torch.mul(G, Hc, out=scratch("hy_spec", G.shape, G)), n=n)[..., :L]
        return dz, dh


class _ReadConv(torch.autograd.Function):
    """:class:`_CausalConv` read only at ``p_i = s (i + 1) - 1`` (``i < Q = L / s``), in ``s``
    phases: with ``z^b_a = z_{s a + b}`` and ``h^b_k = h_{s k + s - 1 - b}`` (``b < s``),
    ``y_{p_i} = sum_b sum_{a <= i} h^b_{i - a} z^b_a``: ``s`` causal convolutions of length ``Q``,
    summed in the frequency domain, so the transforms are ``m = fft_size(2 Q - 1)`` points (the
    ``s`` forward ones per row, one inverse) instead of ``2 L``.  The backward is the adjoint in
    the same phases: ``dz^b = corr(g, h^b)``, ``dh^b = sum_rows corr(g, z^b)`` (products with the
    conjugated spectra, saved so), one ``m``-point transform of ``g`` and ``s`` inverse ones."""

    @staticmethod
    def forward(ctx, z, h, s):  # z (B, C, L), h (C, L) -> (B, C, L / s)
        B, C, L = z.shape
        Q = L // s
        m = fft_size(2 * Q - 1)
        Z = torch.fft.rfft(_zero_padded(z.view(B, C, Q, s).transpose(-1, -2), m, "hy_ph"))  # (B, C, s, m / 2 + 1)
        H = torch.fft.rfft(h.view(C, Q, s).flip(-1).transpose(-1, -2), n=m)  # (C, s, m / 2 + 1)
        y = torch.fft.irfft(torch.mul(Z, H, out=scratch("hy_phs", Z.shape, Z)).sum(dim=2), n=m)
        ctx.save_for_backward(Z.conj_physical_(), H.conj_physical_())
        ctx.s, ctx.m = s, m
        return y[..., :Q]

    @staticmethod
    @first_order_backward("hyena's read convolution")
    def backward(ctx, g):
        Zc, Hc = ctx.saved_tensors
        s, m = ctx.s, ctx.m
        B, C, Q = g.shape
        G = torch.fft.rfft(g, n=m).unsqueeze(2)  # (B, C, 1, m / 2 + 1)
        dz = dh = None
        if ctx.needs_input_grad[0]:
            dzp = torch.fft.irfft(torch.mul(G, Hc, out=scratch("hy_phs", Zc.shape, Zc)), n=m)
            dz = dzp[..., :Q].transpose(-1, -2).reshape(B, C, Q * s)
        if ctx.needs_input_grad[1]:
            dhp = torch.fft.irfft(torch.mul(G, Zc, out=scratch("hy_phs", Zc.shape, Zc)).sum(dim=0), n=m)
            dh = dhp[..., :Q].flip(1).transpose(-1, -2).reshape(C, Q * s)
        return dz, dh, None


class _GatedConv(torch.autograd.Function):
    """``gate * causal_conv(z, h)`` (a stage of the operator before the last), one batch row at a
    time: its padded signal, spectrum product and inverse transform (``C x n`` each, a megabyte
    at 64 channels of 3,840 points) stay in cache between the transforms and the gate's product,
    where :class:`_CausalConv` over the whole batch goes through memory between each step.
    Saves the gate, the convolution (the gate's gradient) and the conjugated spectra; the
    backward likewise, one row at a time, with the filter's gradient summed over the rows in the
    frequency domain."""

    @staticmethod
    def forward(ctx, z, gate, h):  # z, gate (B, C, L); h (C, L)
        B, C, L = z.shape
        n = fft_size(2 * L - 1)
        H = torch.fft.rfft(h, n=n)
        out, conv = torch.empty_like(z), torch.empty_like(z)
        Zc = torch.empty((B, C, n // 2 + 1), dtype=H.dtype, device=z.device)
        pad = scratch("hy_gpad", (C, n), z)
        pad[:, L:].zero_()
        spec = scratch("hy_gspec", (C, n // 2 + 1), H)
        for b in range(B):
            pad[:, :L].copy_(z[b])
            Z = torch.fft.rfft(pad)
            torch.conj_physical(Z, out=Zc[b])
            conv[b].copy_(torch.fft.irfft(torch.mul(Z, H, out=spec), n=n)[:, :L])
            torch.mul(gate[b], conv[b], out=out[b])
        ctx.save_for_backward(gate, conv, Zc, H.conj_physical_())
        ctx.n = n
        return out

    @staticmethod
    @first_order_backward("hyena's gated convolution")
    def backward(ctx, g):
        gate, conv, Zc, Hc = ctx.saved_tensors
        B, C, L = gate.shape
        n = ctx.n
        need_z, need_gate, need_h = ctx.needs_input_grad
        dgate = torch.mul(g, conv) if need_gate else None
        if not (need_z or need_h):
            return None, dgate, None
        dz = torch.empty_like(gate) if need_z else None
        dH = torch.zeros_like(Hc) if need_h else None
        pad = scratch("hy_gpad", (C, n), gate)
        pad[:, L:].zero_()
        spec = scratch("hy_gspec", (C, n // 2 + 1), Hc)
        for b in range(B):
            pad[:, :L].copy_(g[b]).mul_(gate[b])  # (not mul(out=) a strided view: torch.compile refuses it)
            G = torch.fft.rfft(pad)
            if need_z:
                dz[b].copy_(torch.fft.irfft(torch.mul(G, Hc, out=spec), n=n)[:, :L])
            if need_h:
                dH.addcmul_(G, Zc[b])
        dh = torch.fft.irfft(dH, n=n)[:, :L] if need_h else None
        return dz, dgate, dh


def gated_causal_conv(z: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``gate * causal_conv_last(z, h)``: ``z, gate (B, C, L)``, ``h (C, L)`` -> ``(B, C, L)``, in
    one pass over each batch row when run eagerly (same dtype as ``z``: float32 or float64)."""
    if z.numel() == 0:
        return gate * z
    if torch.compiler.is_compiling():
        # traced, its loop over the rows would specialise the graph on the batch size (a
        # recompile per size); the batched form gives one graph, and the compiler fuses the gate
        return gate * causal_conv_last(z, h)
    return _GatedConv.apply(z, gate.to(z.dtype), h.to(z.dtype))


def read_conv_last(z: torch.Tensor, h: torch.Tensor, stride: int) -> torch.Tensor:
    """:func:`causal_conv_last` read at ``stride (i + 1) - 1`` only: ``(B, C, L)`` ->
    ``(B, C, L / stride)`` (``stride`` divides ``L``; ``stride == 1`` is the whole output)."""
    if z.numel() == 0 or stride == 1:
        return causal_conv_last(z, h)[..., stride - 1 :: stride]
    if z.shape[-1] % stride:
        raise ValueError(f"read_conv_last: stride {stride} does not divide the length {z.shape[-1]}")
    return _ReadConv.apply(z, h.to(z.dtype), stride)


def causal_conv_last(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal long convolution along the last dim: ``z (B, C, L)``, ``h (C, L)`` -> ``(B, C, L)``,
    ``y_t = sum_{s<=t} h_{t-s} z_s``, by FFT (``O(L log L)``; same dtype as ``z``: float32 or
    float64)."""
    if z.numel() == 0:  # no positions or an empty batch (MKL's FFT refuses a batch of 0)
        return z.clone()
    return _CausalConv.apply(z, h.to(z.dtype))


def fft_causal_conv(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal long convolution by FFT: ``y_t = sum_{s<=t} h_{t-s} z_s``.

    z: ``(B, L, C)``; h: ``(L, C)``. ``O(L log L)``; computed in float32 (float64 kept).
    """
    B, L, C = z.shape
    if L == 0:
        return z.clone()
    wd = work_dtype(z.dtype)
    y = causal_conv_last(z.to(wd).transpose(1, 2).contiguous(), h.to(wd).t().contiguous())
    return y.transpose(1, 2)


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
        self.kernel = check_kernel_choice(t, kernel)
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
        wd = work_dtype(queries.dtype)
        read, has = causal_read(Nq, Nk, allowed, queries.device)
        per_query = allowed is not None and not rows_identical(allowed)
        key_ok = None if allowed is None else allowed.any(dim=1)  # (B|1, Nk): union over queries
        keep = None if key_ok is None else key_ok.unsqueeze(-1).to(wd)

        h = self.filters(Nk, dtype=wd)  # (order, Nk, D)
        d = self.skip.to(wd)
        if not per_query:  # channels-first (B, D, Nk): the FFTs run along the last dim
            if self.order > 1 and keys is values:  # one product for the values and the gates
                z, *gates = (p.to(wd) for p in self._project_t((self.v_proj, self.gate_proj), values))
                gates = [g for part in gates for g in part.chunk(self.order - 1, dim=1)]
            else:
                z = self._project_t((self.v_proj,), values)[0].to(wd)
                if self.order > 1:
                    gates = self._project_t((self.gate_proj,), keys)[0].to(wd).chunk(self.order - 1, dim=1)
            keep_t = None if keep is None else keep.transpose(1, 2)
            if keep_t is not None:
                z = z * keep_t
            # the skip d_n z is the filter's lag-0 tap: h^n (*) z + d_n z = (h^n + d_n delta) (*) z
            ht = h.transpose(1, 2)  # (order, D, Nk)
            ht = torch.cat([ht[..., :1] + d.unsqueeze(-1), ht[..., 1:]], dim=-1)
            for n in range(self.order - 1):
                z = gated_causal_conv(z, gates[n], ht[n])
                if keep_t is not None:
                    z = z * keep_t
            if Nq > 0 and Nk % Nq == 0:
                # every read at stride (i + 1) - 1: the last stage only there (in phases)
                y = read_conv_last(z, ht[-1], Nk // Nq).transpose(1, 2)
            else:
                y = causal_conv_last(z, ht[-1])  # (B, D, Nk)
                y = y.index_select(2, read.clamp(min=0)).transpose(1, 2)
                y = y * (read >= 0).view(1, -1, 1).to(wd)
        else:
            z = self.v_proj(values).to(wd)
            if keep is not None:
                z = z * keep
            gates = self.gate_proj(keys).to(wd).chunk(self.order - 1, dim=-1) if self.order > 1 else ()
            for n in range(self.order - 1):
                z = gates[n] * (fft_causal_conv(z, h[n]) + d[n] * z)
                if keep is not None:
                    z = z * keep
            y = self._masked_last_conv(z, h[-1], d[-1], read, allowed)
        out = self.out_proj(self.drop(self.q_proj(queries) * y.to(queries.dtype)))
        return out.masked_fill(~has, 0.0)

    @staticmethod
    def _project_t(projs, x: torch.Tensor):
        """``[proj(x) for proj in projs]``, each ``(B, D_out, N)`` channels-first: for plain
        ``nn.Linear`` modules with biases one batched product ``b + W x^T`` over their stacked
        weights writes that layout directly (no transposed copy, no separate bias addition) and
        is split along the channels; anything else is called as a module and transposed."""
        if not all(plain_linear(p, with_bias=True) for p in projs):
            return [p(x).transpose(1, 2).contiguous() for p in projs]
        w = projs[0].weight if len(projs) == 1 else torch.cat([p.weight for p in projs])
        b = projs[0].bias if len(projs) == 1 else torch.cat([p.bias for p in projs])
        out = torch.baddbmm(b.unsqueeze(-1), w.expand(x.shape[0], *w.shape), x.transpose(1, 2))
        return [out] if len(projs) == 1 else list(out.split([p.out_features for p in projs], dim=1))

    @staticmethod
    def _masked_last_conv(
        z: torch.Tensor, h: torch.Tensor, d: torch.Tensor, read: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """``y_i = sum_{j <= p_i, allowed_ij} h[p_i - j] z_j + d z_{p_i} [allowed_i,p_i]``."""
        B, L, C = z.shape
        Nq = read.shape[0]
        j = torch.arange(L, device=z.device)
        chunk = max(1, CHUNK_ELEMS // max(1, B * L * C))
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

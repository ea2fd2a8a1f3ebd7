"""Hyena attention (``hyena``): implicit long convolutions with data-controlled gating, run
causally over a connection's keys and values (see :mod:`canvas_core.attention.causal_read`); the
convolutions themselves are in :mod:`canvas_core.attention.fft_conv` (their names are kept here).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from canvas_core.attention._base import AttentionBase, _check_int, _check_width, autocast_on
from canvas_core.attention.causal_read import (
    CHUNK_ELEMS,
    causal_read,
    check_kernel_choice,
    plain_linear,
    plain_module,
    rows_identical,
    work_dtype,
)
from canvas_core.attention.fft_conv import (
    causal_conv_last,
    fft_causal_conv,
    fft_size,
    gated_causal_conv,
    gated_causal_conv_stacked,
    read_conv_last,
)
from canvas_core.attention.first_order import first_order_backward
from canvas_core.schema.limits import check_elements, check_size

__all__ = ["HyenaAttention", "fft_causal_conv", "causal_conv_last", "gated_causal_conv", "read_conv_last", "fft_size"]


class _Sin(nn.Module):
    """``sin(freq * x)`` with a learned per-feature frequency (Hyena's filter activation)."""

    def __init__(self, dim: int, w: float = 1.0) -> None:
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class _ProjectT(torch.autograd.Function):
    """``b + W x^T`` channels-first: ``x (B, N, D)``, ``W (O, D)``, ``b (O,)`` -> ``(B, O, N)``.
    The backward writes the gradient of ``x`` as ``g^T W``, in ``x``'s own layout ``(B, N, D)``;
    autograd's formula for the batched product writes ``W^T g`` ``(B, D, N)``, which then costs a
    transposed copy to make contiguous."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.b_dtype = b.dtype
        if autocast_on(x.device.type):
            return torch.baddbmm(b.unsqueeze(-1), w.expand(x.shape[0], *w.shape), x.transpose(1, 2))
        # one row at a time: each row's bias copy is still in cache when its product adds to it
        # (the batched product writes the whole batch's bias first, then reads it back)
        out = x.new_empty((x.shape[0], w.shape[0], x.shape[1]))
        for r in range(x.shape[0]):
            torch.addmm(b.unsqueeze(-1), w, x[r].t(), out=out[r])
        return out

    @staticmethod
    @first_order_backward("hyena's projections")
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        # under autocast the product ran (and g arrives) in the autocast dtype while x and w were
        # saved in theirs: compute in g's dtype and return each gradient in its input's dtype
        xg, wg = x.to(g.dtype), w.to(g.dtype)
        dx = torch.bmm(g.transpose(1, 2), wg.expand(x.shape[0], *w.shape)).to(x.dtype) if need_x else None
        dw = torch.bmm(g, xg).sum(0).to(w.dtype) if need_w else None
        db = g.sum((0, 2)).to(ctx.b_dtype) if need_b else None
        return dx, dw, db


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

    @property
    def takes_strided_inputs(self) -> bool:
        """Whether the runtime may hand this module its key sets' slices uncopied
        (``runtime/type_call.py``): its own products read strided inputs directly, so True while the
        projections reading them are plain ``nn.Linear`` (a replacement module may need them contiguous)."""
        projs = (self.q_proj, self.v_proj) + ((self.gate_proj,) if self.gate_proj is not None else ())
        return all(plain_linear(p, with_bias=True) for p in projs)

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
        self.filter_dim = _check_width(t, "filter_dim", filter_dim)
        self.n_bands = _check_int(t, "n_bands", n_bands, 0)
        self.max_len = _check_int(t, "max_len", max_len, 1)
        # the filter MLP's input (1 + 2 n_bands features) and output (order * d_model) are layer widths
        check_size("width", 1 + 2 * n_bands, f"attention type {t!r} positional features 1 + 2 * n_bands")
        check_size("width", order * d_model, f"attention type {t!r} filter outputs order * d_model "
                   f"(order={order}, d_model={d_model})")
        check_elements((filter_dim, 1 + 2 * n_bands), f"attention type {t!r} filter input weight")
        check_elements((order * d_model, max(filter_dim, d_model)),
                       f"attention type {t!r} largest weight (order * d_model, max(filter_dim, d_model))")
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
        return self._filters_t(L, dtype).transpose(1, 2)

    def _filters_t(self, L: int, dtype: torch.dtype) -> torch.Tensor:
        """The implicit filters channels-first, ``(order, D, L)`` contiguous (the layout the FFTs
        take): the MLP's last product is computed as ``W a^T`` (no transposed copy of its output,
        nor of its gradient), the window as ``(D, L)``."""
        dev = self.skip.device
        # the features in float64 for a float64 module (float32 ones cost it 1e-7 of accuracy)
        fd = torch.float64 if self.skip.dtype == torch.float64 else torch.float32
        lag = torch.arange(L, device=dev, dtype=fd)
        t = lag / self.max_len
        feats = [t[:, None]]
        if self.n_bands:
            # transformer-style bands over the absolute lag: fast (period 2*pi) to slow
            b = torch.arange(self.n_bands, device=dev, dtype=fd)
            ang = lag[:, None] / (float(self.max_len) ** (b / self.n_bands))[None, :]
            feats += [torch.sin(ang), torch.cos(ang)]
        z = torch.cat(feats, dim=-1).to(self.skip.dtype)
        mlp, (*hidden, last) = self.filter_mlp, list(self.filter_mlp)
        if plain_module(mlp, nn.Sequential) and plain_linear(last, with_bias=False):
            for layer in hidden:
                z = layer(z)
            h = torch.mm(last.weight, z.t())  # (order D, L)
        else:
            h = mlp(z).t().contiguous()
        window = torch.exp(-t[None, :] * self.decay_rates[:, None].to(fd))  # (D, L)
        return (h.view(self.order, self.d_model, L) * window.to(h.dtype)).to(dtype)

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

        d = self.skip.to(wd)
        if not per_query:  # channels-first (B, D, Nk): the FFTs run along the last dim
            keep_t = None if keep is None else keep.transpose(1, 2)
            # the skip d_n z is the filter's lag-0 tap: h^n (*) z + d_n z = (h^n + d_n delta) (*) z,
            # added in place (the filters are a fresh tensor; its gradient then passes unchanged)
            ht = self._filters_t(Nk, wd)  # (order, D, Nk)
            ht.select(-1, 0).add_(d)
            ht = ht.unbind(0)  # one gradient stacked, no zero fill per stage
            z = self._gated_stages(keys, values, ht, keep_t, wd)
            if Nq > 0 and Nk % Nq == 0:
                # Nk = s Nq: causal_read_index reads (i + 1) s - 1, the last stage only there (in phases)
                y = read_conv_last(z, ht[-1], Nk // Nq).transpose(1, 2)
            else:
                y = causal_conv_last(z, ht[-1])  # (B, D, Nk)
                y = y.index_select(2, read.clamp(min=0)).transpose(1, 2)
                y = y * (read >= 0).view(1, -1, 1).to(wd)
        else:
            h = self.filters(Nk, dtype=wd)  # (order, Nk, D)
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

    def _gated_stages(self, keys: torch.Tensor, values: torch.Tensor, ht: Sequence[torch.Tensor],
                      keep_t: Optional[torch.Tensor], wd: torch.dtype) -> torch.Tensor:
        """``z^order (B, D, Nk)``: the values' projection through the ``order - 1`` gated stages
        (filters with their skip taps ``ht[n] (D, Nk)``, key mask ``keep_t (B|1, 1, Nk)``)."""
        D, stacked = self.d_model, 0
        if self.order > 1 and keys is values:
            # one product for the values and the gates; the first stage takes z^1 and its gate as
            # that product's first 2 D channels, so its gradient reaches the product uncut
            zx = self._project_t((self.v_proj, self.gate_proj), values).to(wd)  # (B, order D, Nk)
            z, *rest = zx.split([2 * D] + [D] * (self.order - 2), dim=1) if self.order > 2 else (zx,)
            gates, stacked = [None, *rest], 1
        else:
            z = self._project_t((self.v_proj,), values).to(wd)
            gates = self._project_t((self.gate_proj,), keys).to(wd).chunk(self.order - 1, dim=1) if self.order > 1 else ()
        if keep_t is not None:  # a stacked first gate is masked too: its stage's output is masked anyway
            z = z * keep_t
        for n in range(self.order - 1):
            z = gated_causal_conv_stacked(z, ht[n]) if n < stacked else gated_causal_conv(z, gates[n], ht[n])
            if keep_t is not None:
                z = z * keep_t
        return z

    @staticmethod
    def _project_t(projs, x: torch.Tensor) -> torch.Tensor:
        """``proj(x)`` for each of ``projs`` stacked along the channels, ``(B, sum D_out, N)``
        channels-first: for plain ``nn.Linear`` modules with biases one batched product
        ``b + W x^T`` over their stacked weights writes that layout directly (no transposed copy,
        no separate bias addition); anything else is called as a module and transposed."""
        if not all(plain_linear(p, with_bias=True) for p in projs):
            outs = [p(x).transpose(1, 2) for p in projs]
            return outs[0].contiguous() if len(outs) == 1 else torch.cat(outs, dim=1)
        w = projs[0].weight if len(projs) == 1 else torch.cat([p.weight for p in projs])
        b = projs[0].bias if len(projs) == 1 else torch.cat([p.bias for p in projs])
        if torch.compiler.is_compiling():
            return torch.baddbmm(b.unsqueeze(-1), w.expand(x.shape[0], *w.shape), x.transpose(1, 2))
        return _ProjectT.apply(x, w, b)

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

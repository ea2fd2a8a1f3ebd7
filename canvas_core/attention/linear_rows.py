"""Exact rows of ``linear_attention``'s per-query form, recomputed in the log domain.

The per-query form (``canvas_core.attention.simple``) weighs each query's keys with scaled
features; a row whose weights still sum below what the float format holds exactly (features whose
large entries miss each other, keys far below the others) has lost its dominant terms.  Those rows
``low (B, H, Nq)`` are recomputed here with ``log w_ij = logsumexp_d(log phi(q_id) + log phi(k_jd))``.

Which rows need it is only known from the data, so the work is one ``torch.library`` operator
(``canvas_core::linear_exact_rows``) with a hand-written backward operator: under
``torch.compile`` the traced graph holds one node and the search runs at run time, on the rows
that need it only.  Both directions work in pieces of at most ``CHUNK_ELEMS`` elements, from
``log phi`` of the queries and keys computed once per call; the backward recomputes each piece
(nothing of the forward's pieces is kept).
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import torch
from torch import Tensor

from canvas_core.attention.causal_read import CHUNK_ELEMS
from canvas_core.attention.first_order import first_order_only
from canvas_core.attention.linear_sums import log_phi

__all__ = ["exact_rows"]


def _heads(x: Tensor, head_dim: int) -> Tensor:
    """``(B, N, D) -> (B, H, N, head_dim)`` (a view)."""
    B, N, D = x.shape
    return x.view(B, N, D // head_dim, head_dim).transpose(1, 2)


def _pieces(low: Tensor, Nk: int, hd: int) -> List[Tuple[Tensor, Tensor, Tensor]]:
    """The low rows ``(b, h, i)`` in pieces of at most ``CHUNK_ELEMS // (Nk hd)`` rows."""
    b, h, i = low.nonzero(as_tuple=True)
    step = max(1, CHUNK_ELEMS // max(1, Nk * hd))
    return [(b[s:s + step], h[s:s + step], i[s:s + step]) for s in range(0, b.shape[0], step)]


def _log_heads(q: Tensor, k: Tensor, head_dim: int) -> Tuple[Tensor, Tensor]:
    """``log phi`` of the queries and the keys, per head ``(B, H, N, hd)``: once per call."""
    return _heads(log_phi(q), head_dim), _heads(log_phi(k), head_dim)


def _rows(lq: Tensor, lk: Tensor, vh: Tensor, allowed: Tensor, b: Tensor, h: Tensor, i: Tensor) -> Tensor:
    """``softmax_j(log w_ij) @ v_j`` for the rows ``(b, h, i)`` from the per-head ``log phi`` of
    the queries ``lq`` and keys ``lk``: ``(S, hd)`` (a row without keys gives finite values; the
    caller leaves such rows out)."""
    ok = allowed[b if allowed.shape[0] > 1 else torch.zeros_like(b), i]  # (S, Nk)
    lw = torch.logsumexp(lq[b, h, i].unsqueeze(1) + lk[b, h], dim=-1).masked_fill(~ok, float("-inf"))
    lw = lw.masked_fill(~ok.any(dim=-1, keepdim=True), 0.0)
    return torch.matmul(torch.softmax(lw, dim=-1).unsqueeze(1), vh[b, h]).squeeze(1)


@torch.library.custom_op("canvas_core::linear_exact_rows", mutates_args=())
def _exact_rows_op(out: Tensor, q: Tensor, k: Tensor, vh: Tensor, allowed: Tensor, low: Tensor,
                   head_dim: int) -> Tensor:
    res = out.clone()
    pieces = _pieces(low, k.shape[1], head_dim)
    if pieces:
        with torch.no_grad():
            lq, lk = _log_heads(q, k, head_dim)
            for b, h, i in pieces:
                res[b, h, i] = _rows(lq, lk, vh, allowed, b, h, i).to(res.dtype)
    return res


@_exact_rows_op.register_fake
def _(out, q, k, vh, allowed, low, head_dim):
    return torch.empty_like(out)


def _rows_of(lq: Tensor, lk: Tensor, vh: Tensor, *, allowed: Tensor, idx: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
    return _rows(lq, lk, vh, allowed, *idx)


@torch.library.custom_op("canvas_core::linear_exact_rows_backward", mutates_args=())
def _exact_rows_backward_op(g: Tensor, q: Tensor, k: Tensor, vh: Tensor, allowed: Tensor, low: Tensor,
                            head_dim: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    g_out = g.masked_fill(low.unsqueeze(-1), 0.0)  # the recomputed rows replaced the form's
    pieces = _pieces(low, k.shape[1], head_dim)
    if not pieces:
        return g_out, torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(vh)
    (lq, lk), pull_logs = torch.func.vjp(functools.partial(_log_heads, head_dim=head_dim), q, k)
    glq, glk, gv = torch.zeros_like(lq), torch.zeros_like(lk), torch.zeros_like(vh)
    for b, h, i in pieces:
        rows, pull = torch.func.vjp(functools.partial(_rows_of, allowed=allowed, idx=(b, h, i)), lq, lk, vh)
        for acc, t in zip((glq, glk, gv), pull(g[b, h, i].to(rows.dtype))):
            acc.add_(t)
    gq, gk = pull_logs((glq, glk))
    return g_out, gq, gk, gv


@_exact_rows_backward_op.register_fake
def _(g, q, k, vh, allowed, low, head_dim):
    return torch.empty_like(g), torch.empty_like(q), torch.empty_like(k), torch.empty_like(vh)


def _setup(ctx, inputs, output):
    _, q, k, vh, allowed, low, head_dim = inputs
    ctx.save_for_backward(q, k, vh, allowed, low)
    ctx.head_dim = head_dim


def _backward(ctx, g):
    q, k, vh, allowed, low = ctx.saved_tensors
    grads = _exact_rows_backward_op(g.contiguous(), q, k, vh, allowed, low, ctx.head_dim)
    return first_order_only("linear_attention's exact rows", grads) + (None, None, None)


_exact_rows_op.register_autograd(_backward, setup_context=_setup)


def exact_rows(out: Tensor, q: Tensor, k: Tensor, vh: Tensor, allowed: Tensor, low: Tensor,
               head_dim: int) -> Tensor:
    """``out (B, H, Nq, hd)`` with the rows ``low (B, H, Nq)`` recomputed exactly from the
    pre-activations ``q (B, Nq, D)``, ``k (B, Nk, D)``, the values ``vh (B, H, Nk, hd)`` and the
    mask ``allowed (B|1, Nq, Nk)``.  Eagerly nothing runs when no row is low (one host read)."""
    if not torch.compiler.is_compiling() and not bool(low.any()):
        return out
    return _exact_rows_op(out.contiguous(), q.contiguous(), k.contiguous(), vh.contiguous(),
                          allowed.contiguous(), low.contiguous(), head_dim)

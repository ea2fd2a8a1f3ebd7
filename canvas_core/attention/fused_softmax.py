"""``gated`` and ``perceiver`` as one ``torch.library`` operator each way (what runs under ``torch.compile``).

Traced op by op, each of these modules puts its projections, head reshapes, bias sums, masks and
their backward formulas into the graph, and inductor lowers and compiles every one (a perceiver
alone added about 12 CPU s to a 4-layer model's compile).  Here a module's whole forward, from its
inputs and parameters to its output, is one operator, and its backward is a second operator whose
chain rule is written out below (linear layers, plain softmax attention, the gate / the latent
residual), so the compiled graph holds two calls per module.

The forward operators compute what the modules compute: the same projections (``F.linear``),
softmax attention with the mask and scale ``_QKVAttention._forward_sdpa`` uses (on CPU the very
kernel ``F.scaled_dot_product_attention`` runs there, keeping its log-sum-exp; on other devices
plain tensor maths with the same result), the same zeroing of queries without any allowed key.
They keep the projections and the log-sum-exp for the backward, which recomputes the attention
weights from it and returns every gradient the eager autograd graph would give.

Used by :class:`~canvas_core.attention.softmax.GatedAttention` and
:class:`~canvas_core.attention.softmax.PerceiverAttention` only while compiling, only on CPU
(elsewhere inductor turns the traced module's ``scaled_dot_product_attention`` into the device's
fused kernels, which the plain maths here would replace) and only where nothing would differ from
eager (no active dropout, one dtype without autocast, at least one key); eager calls keep their
own code path.  Under compile the step pays a little for it (inductor fuses nothing inside an
operator): docs/performance.md, "Compiling canvas models", has the numbers.

The operators carry a ``_v2`` suffix since their inputs and outputs changed (values that are the
keys passed as None, masks built by the caller): inductor's FX-graph cache names an operator, not
its code, so a warm cache must not find a graph compiled against the first version.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from canvas_core.attention._base import as_dtype

__all__ = ["gated_attention", "perceiver_attention"]

Tensor = torch.Tensor
_INF = float("inf")


def _sdpa_mask(allowed: Optional[Tensor], bias: Optional[Tensor], dtype) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``(mask, none)`` as ``_QKVAttention._forward_sdpa`` builds them: rows without any allowed
    key are given every key (so the softmax stays finite; their outputs are zeroed afterwards) and
    ``none`` marks those rows, ``(B|1, Nq|1, 1)``.  ``mask``: additive, ``(B|1, 1, Nq|1, Nk)``, or
    None.  Built by the callers of the operators (traced code: inductor fuses it), once for the
    forward and the backward."""
    if allowed is None:
        return (None if bias is None else bias.unsqueeze(1).to(dtype)), None
    none = ~allowed.any(dim=-1, keepdim=True)
    fill = torch.zeros((), dtype=dtype, device=allowed.device)
    add = fill if bias is None else bias.to(dtype)
    return torch.where(allowed | none, add, fill - _INF).unsqueeze(1), none


def _work(dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


#: use the device-agnostic attention below on CPU too (tests check it there; other devices use it)
_GENERIC = False


def _flash(q: Tensor) -> bool:
    return q.device.type == "cpu" and not _GENERIC


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float) -> Tuple[Tensor, Tensor]:
    """``softmax(scale * q k^T + mask) v`` on ``(B, H, N, d)`` heads: ``(out, logsumexp)``.  On
    CPU the kernel ``F.scaled_dot_product_attention`` runs there; elsewhere plain tensor maths."""
    if _flash(q):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                          scale=scale)[:2]
    s = as_dtype(torch.matmul(q, k.transpose(-1, -2)), _work(q.dtype)).mul_(scale)
    if mask is not None:
        s = s + as_dtype(mask, s.dtype)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(as_dtype(torch.exp(s - lse.unsqueeze(-1)), v.dtype), v)
    # laid out as the CPU kernel lays them out, (B, N, H, d) and (B, N, H)
    return out.transpose(1, 2).contiguous().transpose(1, 2), lse.transpose(1, 2).contiguous().transpose(1, 2)


def _attend_backward(go: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Optional[Tensor],
                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`_attend` w.r.t. ``q, k, v``, the weights recomputed from ``lse``."""
    if _flash(q):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            go, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
    work = lse.dtype
    qf, kf, vf, gf = (as_dtype(t, work) for t in (q, k, v, go))
    s = torch.matmul(qf, kf.transpose(-1, -2)).mul_(scale)
    if mask is not None:
        s = s + as_dtype(mask, work)
    w = torch.exp(s - lse.unsqueeze(-1))
    gv = torch.matmul(w.transpose(-1, -2), gf)
    gw = torch.matmul(gf, vf.transpose(-1, -2))
    gs = gw.sub_((gf * as_dtype(out, work)).sum(dim=-1, keepdim=True)).mul_(w).mul_(scale)
    gq, gk = torch.matmul(gs, kf), torch.matmul(gs.transpose(-1, -2), qf)
    return as_dtype(gq, q.dtype), as_dtype(gk, k.dtype), as_dtype(gv, v.dtype)


def _heads(x: Tensor, heads: int) -> Tensor:
    """``(B, N, D) -> (B, H, N, D/H)`` (a view), as ``AttentionBase._split``."""
    B, N, D = x.shape
    return x.view(B, N, heads, D // heads).transpose(1, 2)


def _flat(x: Tensor) -> Tensor:
    """``(B, H, N, d)`` laid out as ``(B, N, H, d)`` (the attention kernels' outputs and
    gradients) -> ``(B * N, H * d)``, a view."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B * N, H * d)


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _attend_merged(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float, heads: int
                   ) -> Tuple[Tensor, Tensor]:
    """:func:`_attend` from ``(B, N, D)`` projections to ``(om (B, Nq, D), lse)``."""
    o, lse = _attend(_heads(q, heads), _heads(k, heads), _heads(v, heads), mask, scale)
    return _flat(o).view(q.shape[0], q.shape[1], -1), lse


def _attend_grads(go: Tensor, q: Tensor, k: Tensor, v: Tensor, om: Tensor, lse: Tensor, mask: Optional[Tensor],
                  scale: float, heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`_attend_backward` from ``(B, N, D)`` tensors (``go`` given as ``(B * Nq, D)`` rows)
    to the projections' gradients as ``(B * N, D)`` rows (views of the kernel's outputs)."""
    g = _attend_backward(_heads(go.view(om.shape), heads), _heads(q, heads), _heads(k, heads), _heads(v, heads),
                         _heads(om, heads), lse, mask, scale)
    return _flat(g[0]), _flat(g[1]), _flat(g[2])


def _kv_backward(gk: Tensor, gv: Tensor, keys: Tensor, values: Optional[Tensor], wk: Tensor, wv: Tensor
                 ) -> Tuple[List[Tensor], Tensor, Tensor, Tensor, Tensor]:
    """``k = keys wk^T + bk``, ``v = values wv^T + bv`` (``values`` None: the keys themselves)
    from the rows ``gk``, ``gv``: ``([grad keys(, grad values)], gwk, gbk, gwv, gbv)``.  Shared
    keys / values get one gradient, summed by ``addmm`` (no second product, no addition after)."""
    k2 = _rows(keys)
    gwk, gbk = gk.t().mm(k2), gk.sum(dim=0)
    if values is None:
        inputs = [torch.addmm(gk.mm(wk), gv, wv).view(keys.shape)]
        gwv = gv.t().mm(k2)
    else:
        inputs = [gk.mm(wk).view(keys.shape), gv.mm(wv).view(values.shape)]
        gwv = gv.t().mm(_rows(values))
    return inputs, gwk, gbk, gwv, gv.sum(dim=0)


# ------------------------------------------------------------------------------------------ gated
def _gated_forward(queries, keys, values, params, mask, none, scale, heads):
    """``params``: ``(wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, alpha)``; ``values`` None: the keys."""
    wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, alpha = params
    q, k = F.linear(queries, wq, bq), F.linear(keys, wk, bk)
    v = F.linear(keys if values is None else values, wv, bv)
    om, lse = _attend_merged(q, k, v, mask, scale, heads)
    attn = F.linear(om, wo, bo)
    if none is not None:
        attn.masked_fill_(none, 0.0)
    s = F.linear(queries, wg, bg).sigmoid_()
    out = (s * as_dtype(torch.tanh(alpha), attn.dtype)).mul_(attn)
    return out, q, k, v, om, lse, attn, s


def _fake_lse(q: Tensor, heads: int) -> Tensor:
    B, Nq, _ = q.shape
    return q.new_empty(B, Nq, heads, dtype=_work(q.dtype)).transpose(1, 2)  # as the CPU kernel lays it out


@torch.library.custom_op("canvas_core::gated_attention_v2", mutates_args=())
def _gated_op(queries: Tensor, keys: Tensor, values: Optional[Tensor], params: List[Tensor], mask: Optional[Tensor],
              none: Optional[Tensor], scale: float, heads: int
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _gated_forward(queries, keys, values, params, mask, none, scale, heads)


@_gated_op.register_fake
def _(queries, keys, values, params, mask, none, scale, heads):
    q = torch.empty_like(queries, memory_format=torch.contiguous_format)
    k = torch.empty_like(keys, memory_format=torch.contiguous_format)
    return (q, torch.empty_like(q), k, torch.empty_like(k), torch.empty_like(q), _fake_lse(q, heads),
            torch.empty_like(q), torch.empty_like(q))


@torch.library.custom_op("canvas_core::gated_attention_backward_v2", mutates_args=())
def _gated_backward_op(g: Tensor, queries: Tensor, keys: Tensor, values: Optional[Tensor], params: List[Tensor],
                       mask: Optional[Tensor], none: Optional[Tensor], saved: List[Tensor], scale: float,
                       heads: int) -> List[Tensor]:
    wq, _, wk, _, wv, _, wo, _, wg, _, alpha = params
    q, k, v, om, lse, attn, s = saved
    t = torch.tanh(alpha)
    tc = as_dtype(t, attn.dtype)
    gg = g * attn  # the gradient reaching the gate tanh(alpha) * sigmoid(...)
    galpha = torch.ops.aten.tanh_backward(as_dtype((gg * s).sum(dim=(0, 1)), alpha.dtype), t)
    gsp = _rows(torch.ops.aten.sigmoid_backward(gg.mul_(tc), s))  # through the sigmoid, (B * Nq, D)
    ga = (g * s).mul_(tc)
    if none is not None:
        ga.masked_fill_(none, 0.0)
    ga = _rows(ga)
    x2 = _rows(queries)
    gwg, gbg = gsp.t().mm(x2), gsp.sum(dim=0)
    gwo, gbo = ga.t().mm(_rows(om)), ga.sum(dim=0)
    gq, gk, gv = _attend_grads(ga.mm(wo), q, k, v, om, lse, mask, scale, heads)
    gqueries = torch.addmm(gsp.mm(wg), gq, wq).view(queries.shape)
    inputs, gwk, gbk, gwv, gbv = _kv_backward(gk, gv, keys, values, wk, wv)
    return [gqueries, *inputs, gq.t().mm(x2), gq.sum(dim=0), gwk, gbk, gwv, gbv, gwo, gbo, gwg, gbg, galpha]


def _fake_grads(queries, keys, values, params):
    c = torch.contiguous_format
    inputs = (queries, keys) if values is None else (queries, keys, values)
    return [torch.empty_like(t, memory_format=c) for t in (*inputs, *params)]


@_gated_backward_op.register_fake
def _(g, queries, keys, values, params, mask, none, saved, scale, heads):
    return _fake_grads(queries, keys, values, params)


def _input_grads(grads: List[Tensor], values: Optional[Tensor]):
    """The backward operators' list -> ``(grad queries, grad keys, grad values, [grad params])``."""
    if values is None:
        return grads[0], grads[1], None, grads[2:]
    return grads[0], grads[1], grads[2], grads[3:]


def _wire_autograd(op, backward_op, n_masks: int) -> None:
    """Autograd of a forward operator called ``op(queries, keys, values, params, *masks, *numbers)``
    whose first output is the result and the others are saved for ``backward_op(g, queries, keys,
    values, params, *masks, saved, *numbers)``, which returns the gradients as listed by
    :func:`_input_grads`."""

    def setup(ctx, inputs, output):
        queries, keys, values, params, *rest = inputs
        ctx.numbers, ctx.n_saved = tuple(rest[n_masks:]), len(output) - 1
        ctx.save_for_backward(queries, keys, values, *rest[:n_masks], *output[1:], *params)
        ctx.mark_non_differentiable(*output[1:])  # saved for the backward only
        ctx.set_materialize_grads(False)

    def backward(ctx, g, *_unused):
        if g is None:
            return (None,) * (4 + n_masks + len(ctx.numbers))
        queries, keys, values, *rest = ctx.saved_tensors
        masks, saved, params = rest[:n_masks], rest[n_masks:n_masks + ctx.n_saved], rest[n_masks + ctx.n_saved:]
        grads = backward_op(g.contiguous(), queries, keys, values, params, *masks, saved, *ctx.numbers)
        return (*_input_grads(grads, values), *(None,) * (n_masks + len(ctx.numbers)))

    op.register_autograd(backward, setup_context=setup)


_wire_autograd(_gated_op, _gated_backward_op, n_masks=2)


def _params(m) -> List[Tensor]:
    return [m.q_proj.weight, m.q_proj.bias, m.k_proj.weight, m.k_proj.bias, m.v_proj.weight, m.v_proj.bias,
            m.out_proj.weight, m.out_proj.bias]


def _beta_into_queries(params: List[Tensor], i: int, beta: float, head_dim: int) -> float:
    """The operator's ``scale`` for inverse temperature ``beta``: ``beta / sqrt(head_dim)`` as the
    eager module computes it, except under ``torch.compile`` with ``beta != 1``, where ``beta``
    multiplies the query projection ``params[i]``, ``params[i + 1]`` (weight, bias) in place in
    the list instead: as a float argument of the operator it would pin the graph to its value
    (a recompile for every value of a sharpening schedule); as a factor of tensors one graph
    serves them all (the result may differ from eager in the last bits)."""
    if torch.compiler.is_compiling() and beta != 1:
        params[i], params[i + 1] = params[i] * beta, params[i + 1] * beta
        return 1.0 / math.sqrt(head_dim)
    return beta / math.sqrt(head_dim)


def gated_attention(module, queries: Tensor, keys: Tensor, values: Tensor, allowed: Optional[Tensor],
                    bias: Optional[Tensor]) -> Tensor:
    """``GatedAttention.forward`` (dropout inactive, ``Nk >= 1``) as one operator; ``allowed`` /
    ``bias`` as ``AttentionBase._mask`` returns them.  Values that are the keys (what the canvas
    runtime passes) reach the operator as None: one gradient for both."""
    m = module
    params = [*_params(m), m.gate_proj.weight, m.gate_proj.bias, m.gate_alpha]
    scale = _beta_into_queries(params, 0, m._beta(), m.head_dim)
    mask, none = _sdpa_mask(allowed, bias, queries.dtype)
    return _gated_op(queries, keys, None if values is keys else values, params, mask, none, scale, m.n_heads)[0]


# -------------------------------------------------------------------------------------- perceiver
def _perceiver_forward(queries, keys, values, params, e_mask, e_none, q_none, e_scale, d_scale, heads):
    """``params``: the latents, then the encode and the decode cross-attentions'
    ``(wq, bq, wk, bk, wv, bv, wo, bo)``; ``e_mask`` / ``e_none``: the latents' mask (the union of
    the keys the queries read), ``q_none``: the queries without any key."""
    latents, ew, dw = params[0], params[1:9], params[9:17]
    lat = as_dtype(latents, queries.dtype)
    # the latents' queries are the same for every batch item: projected once, read broadcast
    eq = F.linear(lat, ew[0], ew[1])
    ek = F.linear(keys, ew[2], ew[3])
    ev = F.linear(keys if values is None else values, ew[4], ew[5])
    eom, e_lse = _attend_merged(eq.expand(queries.shape[0], -1, -1), ek, ev, e_mask, e_scale, heads)
    z = F.linear(eom, ew[6], ew[7])
    if e_none is not None:
        z.masked_fill_(e_none, 0.0)
    z.add_(lat)
    dq, dk, dv = F.linear(queries, dw[0], dw[1]), F.linear(z, dw[2], dw[3]), F.linear(z, dw[4], dw[5])
    dom, dlse = _attend_merged(dq, dk, dv, None, d_scale, heads)
    out = F.linear(dom, dw[6], dw[7])
    if q_none is not None:
        out.masked_fill_(q_none, 0.0)
    return out, eq, ek, ev, eom, e_lse, z, dq, dk, dv, dom, dlse


_TWELVE = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("canvas_core::perceiver_attention_v2", mutates_args=())
def _perceiver_op(queries: Tensor, keys: Tensor, values: Optional[Tensor], params: List[Tensor],
                  e_mask: Optional[Tensor], e_none: Optional[Tensor], q_none: Optional[Tensor], e_scale: float,
                  d_scale: float, heads: int) -> _TWELVE:
    return _perceiver_forward(queries, keys, values, params, e_mask, e_none, q_none, e_scale, d_scale, heads)


@_perceiver_op.register_fake
def _(queries, keys, values, params, e_mask, e_none, q_none, e_scale, d_scale, heads):
    B, Nq, D = queries.shape
    K, Nk = params[0].shape[0], keys.shape[1]
    q, lat, kv = (lambda: queries.new_empty(B, Nq, D)), (lambda: queries.new_empty(B, K, D)), \
        (lambda: queries.new_empty(B, Nk, D))
    return (q(), queries.new_empty(K, D), kv(), kv(), lat(), _fake_lse(lat(), heads), lat(), q(), lat(), lat(), q(),
            _fake_lse(q(), heads))


@torch.library.custom_op("canvas_core::perceiver_attention_backward_v2", mutates_args=())
def _perceiver_backward_op(g: Tensor, queries: Tensor, keys: Tensor, values: Optional[Tensor], params: List[Tensor],
                           e_mask: Optional[Tensor], e_none: Optional[Tensor], q_none: Optional[Tensor],
                           saved: List[Tensor], e_scale: float, d_scale: float, heads: int) -> List[Tensor]:
    latents, ew, dw = params[0], params[1:9], params[9:17]
    eq, ek, ev, eom, e_lse, z, dq, dk, dv, dom, dlse = saved
    B, K, D = z.shape
    if q_none is not None:
        g = g.masked_fill(q_none, 0.0)
    # decode: the queries read z
    g = _rows(g)
    gdwo, gdbo = g.t().mm(_rows(dom)), g.sum(dim=0)
    gdq, gdk, gdv = _attend_grads(g.mm(dw[6]), dq, dk, dv, dom, dlse, None, d_scale, heads)
    gqueries = gdq.mm(dw[0]).view(queries.shape)
    gdwq, gdbq = gdq.t().mm(_rows(queries)), gdq.sum(dim=0)
    (gz,), gdwk, gdbk, gdwv, gdbv = _kv_backward(gdk, gdv, z, None, dw[2], dw[4])  # z is both
    # z = latents + encode(latents, keys, values)
    glat = gz.sum(dim=0)  # the residual's share
    genc = gz if e_none is None else gz.masked_fill_(e_none, 0.0)
    genc = _rows(genc)
    gewo, gebo = genc.t().mm(_rows(eom)), genc.sum(dim=0)
    geq, gek, gev = _attend_grads(genc.mm(ew[6]), eq.expand(B, -1, -1), ek, ev, eom, e_lse, e_mask, e_scale, heads)
    geq = geq.view(B, K, D).sum(dim=0)
    lat = as_dtype(latents, queries.dtype)
    glatents = as_dtype(torch.addmm(glat, geq, ew[0]), latents.dtype)
    inputs, gewk, gebk, gewv, gebv = _kv_backward(gek, gev, keys, values, ew[2], ew[4])
    return [gqueries, *inputs, glatents, geq.t().mm(lat), geq.sum(dim=0), gewk, gebk, gewv, gebv, gewo, gebo,
            gdwq, gdbq, gdwk, gdbk, gdwv, gdbv, gdwo, gdbo]


@_perceiver_backward_op.register_fake
def _(g, queries, keys, values, params, e_mask, e_none, q_none, saved, e_scale, d_scale, heads):
    return _fake_grads(queries, keys, values, params)


_wire_autograd(_perceiver_op, _perceiver_backward_op, n_masks=3)


def perceiver_attention(module, queries: Tensor, keys: Tensor, values: Tensor, allowed: Optional[Tensor]) -> Tensor:
    """``PerceiverAttention.forward`` (dropout inactive, ``Nk >= 1``) as one operator; ``allowed``
    as ``AttentionBase._mask`` returns it.  Values that are the keys reach the operator as None."""
    e, d = module.encode, module.decode
    params = [module.latents, *_params(e), *_params(d)]
    union = None if allowed is None else allowed.any(dim=1, keepdim=True)  # what the latents read
    e_mask, e_none = _sdpa_mask(union, None, queries.dtype)
    q_none = None if allowed is None else ~allowed.any(dim=-1, keepdim=True)
    e_scale = _beta_into_queries(params, 1, e._beta(), e.head_dim)
    d_scale = _beta_into_queries(params, 9, d._beta(), d.head_dim)
    return _perceiver_op(queries, keys, None if values is keys else values, params, e_mask, e_none, q_none,
                         e_scale, d_scale, module.n_heads)[0]

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
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["gated_attention", "perceiver_attention"]

Tensor = torch.Tensor
_INF = float("inf")


def _heads(x: Tensor, heads: int) -> Tensor:
    """``(B, N, D) -> (B, H, N, D/H)`` (a view), as ``AttentionBase._split``."""
    B, N, D = x.shape
    return x.view(B, N, heads, D // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """``(B, H, N, d) -> (B, N, H * d)``, as ``AttentionBase._merge`` (a view for the attention
    kernels' outputs, which are laid out as ``(B, N, H, d)``)."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


def _sdpa_mask(allowed: Optional[Tensor], bias: Optional[Tensor], dtype) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``(has, mask)`` as ``_QKVAttention._forward_sdpa`` builds them: rows without any allowed
    key are given every key (so the softmax stays finite; their outputs are zeroed afterwards) and
    ``has`` marks the others.  ``mask``: additive, ``(B|1, 1, Nq|1, Nk)``, or None."""
    if allowed is None:
        return None, (None if bias is None else bias.unsqueeze(1).to(dtype))
    has = allowed.any(dim=-1, keepdim=True)
    fill = torch.zeros((), dtype=dtype, device=allowed.device)
    add = fill if bias is None else bias.to(dtype)
    return has, torch.where(allowed | ~has, add, fill - _INF).unsqueeze(1)


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
                                                                          scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)).to(_work(q.dtype)).mul_(scale)
    if mask is not None:
        s = s + mask.to(s.dtype)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse.unsqueeze(-1)).to(v.dtype), v)
    # laid out as the CPU kernel lays them out, (B, N, H, d) and (B, N, H)
    return out.transpose(1, 2).contiguous().transpose(1, 2), lse.transpose(1, 2).contiguous().transpose(1, 2)


def _attend_backward(go: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Optional[Tensor],
                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`_attend` w.r.t. ``q, k, v``, the weights recomputed from ``lse``."""
    if _flash(q):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            go, q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=scale)
    work = lse.dtype
    qf, kf, vf, gf = (t.to(work) for t in (q, k, v, go))
    s = torch.matmul(qf, kf.transpose(-1, -2)).mul_(scale)
    if mask is not None:
        s = s + mask.to(work)
    w = torch.exp(s - lse.unsqueeze(-1))
    gv = torch.matmul(w.transpose(-1, -2), gf)
    gw = torch.matmul(gf, vf.transpose(-1, -2))
    gs = gw.sub_((gf * out.to(work)).sum(dim=-1, keepdim=True)).mul_(w).mul_(scale)
    return torch.matmul(gs, kf).to(q.dtype), torch.matmul(gs.transpose(-1, -2), qf).to(k.dtype), gv.to(v.dtype)


def _linear_backward(g: Tensor, x: Tensor, w: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``y = x w^T + b``: ``(grad x, grad w, grad b)`` from ``g = grad y``."""
    g2 = g.reshape(-1, g.shape[-1])
    gx = g2.mm(w).view(*g.shape[:-1], w.shape[1])
    return gx, g2.t().mm(x.reshape(-1, x.shape[-1])), g2.sum(dim=0)


def _heads_backward(go: Tensor, q: Tensor, k: Tensor, v: Tensor, om: Tensor, lse: Tensor, mask: Optional[Tensor],
                    scale: float, heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`_attend_backward` from and to ``(B, N, D)`` tensors (the projections, the merged
    attention output ``om`` and its gradient ``go``)."""
    g = _attend_backward(_heads(go, heads), _heads(q, heads), _heads(k, heads), _heads(v, heads), _heads(om, heads),
                         lse, mask, scale)
    return _merge(g[0]), _merge(g[1]), _merge(g[2])


def _attend_merged(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float, heads: int
                   ) -> Tuple[Tensor, Tensor]:
    """:func:`_attend` from ``(B, N, D)`` projections to ``(om (B, Nq, D), lse)``."""
    o, lse = _attend(_heads(q, heads), _heads(k, heads), _heads(v, heads), mask, scale)
    return _merge(o), lse


# ------------------------------------------------------------------------------------------ gated
def _gated_forward(queries, keys, values, params, allowed, bias, scale, heads):
    """``params``: ``(wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, alpha)``."""
    wq, bq, wk, bk, wv, bv, wo, bo, wg, bg, alpha = params
    q, k, v = F.linear(queries, wq, bq), F.linear(keys, wk, bk), F.linear(values, wv, bv)
    has, mask = _sdpa_mask(allowed, bias, q.dtype)
    om, lse = _attend_merged(q, k, v, mask, scale, heads)
    attn = F.linear(om, wo, bo)
    if has is not None:
        attn.masked_fill_(~has, 0.0)
    s = F.linear(queries, wg, bg).sigmoid_()
    out = (s * torch.tanh(alpha).to(attn.dtype)).mul_(attn)
    return out, q, k, v, om, lse, attn, s


def _fake_lse(q: Tensor, heads: int) -> Tensor:
    B, Nq, _ = q.shape
    return q.new_empty(B, Nq, heads, dtype=_work(q.dtype)).transpose(1, 2)  # as the CPU kernel lays it out


@torch.library.custom_op("canvas_core::gated_attention", mutates_args=())
def _gated_op(queries: Tensor, keys: Tensor, values: Tensor, params: List[Tensor], allowed: Optional[Tensor],
              bias: Optional[Tensor], scale: float, heads: int
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _gated_forward(queries, keys, values, params, allowed, bias, scale, heads)


@_gated_op.register_fake
def _(queries, keys, values, params, allowed, bias, scale, heads):
    q = torch.empty_like(queries, memory_format=torch.contiguous_format)
    k = torch.empty_like(keys, memory_format=torch.contiguous_format)
    return (q, torch.empty_like(q), k, torch.empty_like(k), torch.empty_like(q), _fake_lse(q, heads),
            torch.empty_like(q), torch.empty_like(q))


@torch.library.custom_op("canvas_core::gated_attention_backward", mutates_args=())
def _gated_backward_op(g: Tensor, queries: Tensor, keys: Tensor, values: Tensor, params: List[Tensor],
                       allowed: Optional[Tensor], bias: Optional[Tensor], saved: List[Tensor], scale: float,
                       heads: int) -> List[Tensor]:
    wq, _, wk, _, wv, _, wo, _, wg, _, alpha = params
    q, k, v, om, lse, attn, s = saved
    has, mask = _sdpa_mask(allowed, bias, q.dtype)
    t = torch.tanh(alpha)
    tc = t.to(attn.dtype)
    u = (g * attn).mul_(s)  # the gradient reaching tanh(alpha) * sigmoid, per element
    galpha = u.sum(dim=(0, 1)).to(alpha.dtype).mul_(1.0 - t * t)
    gsp = torch.addcmul(u, u, s, value=-1.0).mul_(tc)  # through the sigmoid: u * (1 - s) * tanh(alpha)
    gq_gate, gwg, gbg = _linear_backward(gsp, queries, wg)
    ga = (g * s).mul_(tc)
    if has is not None:
        ga.masked_fill_(~has, 0.0)
    gom, gwo, gbo = _linear_backward(ga, om, wo)
    gqp, gkp, gvp = _heads_backward(gom, q, k, v, om, lse, mask, scale, heads)
    gq, gwq, gbq = _linear_backward(gqp, queries, wq)
    gk, gwk, gbk = _linear_backward(gkp, keys, wk)
    gv, gwv, gbv = _linear_backward(gvp, values, wv)
    return [gq.add_(gq_gate), gk, gv, gwq, gbq, gwk, gbk, gwv, gbv, gwo, gbo, gwg, gbg, galpha]


@_gated_backward_op.register_fake
def _(g, queries, keys, values, params, allowed, bias, saved, scale, heads):
    c = torch.contiguous_format
    return [torch.empty_like(t, memory_format=c) for t in (queries, keys, values, *params)]


def _gated_setup(ctx, inputs, output):
    queries, keys, values, params, allowed, bias, scale, heads = inputs
    ctx.save_for_backward(queries, keys, values, allowed, bias, *output[1:], *params)
    ctx.scale, ctx.heads = scale, heads
    ctx.mark_non_differentiable(*output[1:])  # saved for the backward only
    ctx.set_materialize_grads(False)


def _gated_autograd(ctx, g, *_unused):
    if g is None:
        return (None,) * 8
    queries, keys, values, allowed, bias, *rest = ctx.saved_tensors
    grads = _gated_backward_op(g.contiguous(), queries, keys, values, rest[7:], allowed, bias, rest[:7], ctx.scale,
                               ctx.heads)
    return (*grads[:3], grads[3:], None, None, None, None)


_gated_op.register_autograd(_gated_autograd, setup_context=_gated_setup)


def _params(m) -> List[Tensor]:
    return [m.q_proj.weight, m.q_proj.bias, m.k_proj.weight, m.k_proj.bias, m.v_proj.weight, m.v_proj.bias,
            m.out_proj.weight, m.out_proj.bias]


def gated_attention(module, queries: Tensor, keys: Tensor, values: Tensor, allowed: Optional[Tensor],
                    bias: Optional[Tensor]) -> Tensor:
    """``GatedAttention.forward`` (dropout inactive, ``Nk >= 1``) as one operator; ``allowed`` /
    ``bias`` as ``AttentionBase._mask`` returns them."""
    m = module
    params = [*_params(m), m.gate_proj.weight, m.gate_proj.bias, m.gate_alpha]
    scale = m._beta() / math.sqrt(m.head_dim)  # as the eager module computes it
    return _gated_op(queries, keys, values, params, allowed, bias, scale, m.n_heads)[0]


# -------------------------------------------------------------------------------------- perceiver
def _perceiver_forward(queries, keys, values, params, allowed, e_scale, d_scale, heads):
    """``params``: the latents, then the encode and the decode cross-attentions'
    ``(wq, bq, wk, bk, wv, bv, wo, bo)``."""
    latents, ew, dw = params[0], params[1:9], params[9:17]
    B = queries.shape[0]
    lat = latents.to(queries.dtype)
    union = None if allowed is None else allowed.any(dim=1, keepdim=True)  # what the latents read
    # the latents' queries are the same for every batch item: projected once, then broadcast
    eq = F.linear(lat, ew[0], ew[1]).unsqueeze(0).expand(B, -1, -1).contiguous()
    ek, ev = F.linear(keys, ew[2], ew[3]), F.linear(values, ew[4], ew[5])
    has, mask = _sdpa_mask(union, None, eq.dtype)
    eom, e_lse = _attend_merged(eq, ek, ev, mask, e_scale, heads)
    enc = F.linear(eom, ew[6], ew[7])
    if has is not None:
        enc.masked_fill_(~has, 0.0)
    z = enc + lat
    dq, dk, dv = F.linear(queries, dw[0], dw[1]), F.linear(z, dw[2], dw[3]), F.linear(z, dw[4], dw[5])
    dom, dlse = _attend_merged(dq, dk, dv, None, d_scale, heads)
    out = F.linear(dom, dw[6], dw[7])
    if allowed is not None:
        out.masked_fill_(~allowed.any(dim=-1, keepdim=True), 0.0)
    return out, eq, ek, ev, eom, e_lse, z, dq, dk, dv, dom, dlse


_TWELVE = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("canvas_core::perceiver_attention", mutates_args=())
def _perceiver_op(queries: Tensor, keys: Tensor, values: Tensor, params: List[Tensor], allowed: Optional[Tensor],
                  e_scale: float, d_scale: float, heads: int) -> _TWELVE:
    return _perceiver_forward(queries, keys, values, params, allowed, e_scale, d_scale, heads)


@_perceiver_op.register_fake
def _(queries, keys, values, params, allowed, e_scale, d_scale, heads):
    B, Nq, D = queries.shape
    K, Nk = params[0].shape[0], keys.shape[1]
    q, lat, kv = (lambda: queries.new_empty(B, Nq, D)), (lambda: queries.new_empty(B, K, D)), \
        (lambda: queries.new_empty(B, Nk, D))
    return q(), lat(), kv(), kv(), lat(), _fake_lse(lat(), heads), lat(), q(), lat(), lat(), q(), _fake_lse(q(), heads)


@torch.library.custom_op("canvas_core::perceiver_attention_backward", mutates_args=())
def _perceiver_backward_op(g: Tensor, queries: Tensor, keys: Tensor, values: Tensor, params: List[Tensor],
                           allowed: Optional[Tensor], saved: List[Tensor], e_scale: float, d_scale: float,
                           heads: int) -> List[Tensor]:
    latents, ew, dw = params[0], params[1:9], params[9:17]
    eq, ek, ev, eom, e_lse, z, dq, dk, dv, dom, dlse = saved
    union = None if allowed is None else allowed.any(dim=1, keepdim=True)
    has, mask = _sdpa_mask(union, None, eq.dtype)
    if allowed is not None:
        g = g.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
    # decode: the queries read z
    gdom, gdwo, gdbo = _linear_backward(g, dom, dw[6])
    gdq, gdk, gdv = _heads_backward(gdom, dq, dk, dv, dom, dlse, None, d_scale, heads)
    gq, gdwq, gdbq = _linear_backward(gdq, queries, dw[0])
    gz, gdwk, gdbk = _linear_backward(gdk, z, dw[2])
    gz2, gdwv, gdbv = _linear_backward(gdv, z, dw[4])
    gz = gz.add_(gz2)
    # z = latents + encode(latents, keys, values)
    genc = gz if has is None else gz.masked_fill(~has, 0.0)
    geom, gewo, gebo = _linear_backward(genc, eom, ew[6])
    geq, gek, gev = _heads_backward(geom, eq, ek, ev, eom, e_lse, mask, e_scale, heads)
    glat, gewq, gebq = _linear_backward(geq.sum(dim=0), latents.to(queries.dtype), ew[0])
    gk, gewk, gebk = _linear_backward(gek, keys, ew[2])
    gv, gewv, gebv = _linear_backward(gev, values, ew[4])
    glatents = gz.sum(dim=0).add_(glat).to(latents.dtype)
    return [gq.contiguous(), gk.contiguous(), gv.contiguous(), glatents, gewq, gebq, gewk, gebk, gewv, gebv, gewo,
            gebo, gdwq, gdbq, gdwk, gdbk, gdwv, gdbv, gdwo, gdbo]


@_perceiver_backward_op.register_fake
def _(g, queries, keys, values, params, allowed, saved, e_scale, d_scale, heads):
    c = torch.contiguous_format
    return [torch.empty_like(t, memory_format=c) for t in (queries, keys, values, *params)]


def _perceiver_setup(ctx, inputs, output):
    queries, keys, values, params, allowed, e_scale, d_scale, heads = inputs
    ctx.save_for_backward(queries, keys, values, allowed, *output[1:], *params)
    ctx.args = (e_scale, d_scale, heads)
    ctx.mark_non_differentiable(*output[1:])  # saved for the backward only
    ctx.set_materialize_grads(False)


def _perceiver_autograd(ctx, g, *_unused):
    if g is None:
        return (None,) * 8
    queries, keys, values, allowed, *rest = ctx.saved_tensors
    grads = _perceiver_backward_op(g.contiguous(), queries, keys, values, rest[11:], allowed, rest[:11], *ctx.args)
    return (*grads[:3], grads[3:], None, None, None, None)


_perceiver_op.register_autograd(_perceiver_autograd, setup_context=_perceiver_setup)


def perceiver_attention(module, queries: Tensor, keys: Tensor, values: Tensor, allowed: Optional[Tensor]) -> Tensor:
    """``PerceiverAttention.forward`` (dropout inactive, ``Nk >= 1``) as one operator; ``allowed``
    as ``AttentionBase._mask`` returns it."""
    e, d = module.encode, module.decode
    params = [module.latents, *_params(e), *_params(d)]
    return _perceiver_op(queries, keys, values, params, allowed, e._beta() / math.sqrt(e.head_dim),
                         d._beta() / math.sqrt(d.head_dim), module.n_heads)[0]

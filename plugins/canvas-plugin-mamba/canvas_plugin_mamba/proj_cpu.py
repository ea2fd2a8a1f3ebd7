"""The whole mamba forward as one operator each way on the compiled CPU scan, for ``torch.compile``.

:mod:`~canvas_plugin_mamba.proj_op` keeps a traced graph small by running the projections, the
conv, the activations and the scan inside one operator; with the PyTorch scan it computes the
conv, ``softplus`` and the skip term as tensor operations around the scan.  On the compiled CPU
scan the eager module does better (``MambaAttention._compiled_read``): the conv and its SiLU,
``softplus`` and ``D u`` happen inside the kernel, one product serves both key projections when
keys are values, and ``dt_proj``'s weight gradient is formed as ``dt^T g``.  This operator does
exactly that, so a compiled module runs what the eager one runs (the same values), and the traced
graph stays one node each way: the module's conv, activations and projections compiled by inductor
instead cost about 10 s more compile time on a four-layer world model and ran slower.

The backward writes each projection's chain rule out, around the kernel's own backward.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from canvas_core.extend import first_order_only
from canvas_plugin_mamba import cpu_kernel
from canvas_plugin_mamba.inner_op import _reads
from canvas_plugin_mamba.proj_op import _flat, _resolve

__all__ = ["cpu_projected", "fits"]

_NINE = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]

def fits(conv_weight: Tensor) -> bool:
    """Whether the kernel computes this conv inside the scan (width up to ``cpu_kernel.MAX_CONV``)."""
    return conv_weight.shape[-1] <= cpu_kernel.MAX_CONV


def _split(xs: Tensor, sel: Tensor, E: int, merged: bool):
    """(conv input x, the key projection ``sel``) from the kept products (one when merged)."""
    return (xs[..., :E], xs[..., E:]) if merged else (xs, sel)


def _forward(queries, keys, values, params, read, T: int):
    """``(out, xs, sel, dt, C, z, y, states, y_pre)``: ``xs`` the values' projection (with the keys'
    appended when keys are values: ``sel`` is then empty), ``dt`` before ``softplus``, ``y_pre``
    the read before the gate ``silu(z)``, ``y`` after it."""
    w_in, b_in, cw, cb, w_x, w_dt, b_dt, w_c, w_z, b_z, w_out, b_out, A_log, D = params
    q, k, v = _resolve(queries, keys, values)
    Bt, L, _ = k.shape
    E, R = w_in.shape[0], w_dt.shape[1]
    merged = values is None
    if merged:  # one product for both projections of the shared keys / values
        xs = F.linear(k, torch.cat([w_in, w_x]), torch.cat([b_in, b_in.new_zeros(w_x.shape[0])]))
        sel = xs.new_empty(0)
    else:
        xs, sel = F.linear(v, w_in, b_in), F.linear(k, w_x)
    x, s = _split(xs, sel, E, merged)
    dt = torch.addmm(b_dt, _flat(s[..., :R]), w_dt.t()).view(Bt, L, E)
    C, z = F.linear(q, w_c), F.linear(q, w_z, b_z)
    A = -torch.exp(A_log)
    states = x.new_empty(Bt, -(-L // T), A.shape[1], E)
    y_pre = cpu_kernel.conv_forward(x, cw, cb, dt, A, s[..., R:].contiguous(), C, _reads(read, L, x.device), T,
                                    states, True, D)
    y = y_pre * F.silu(z)
    return F.linear(y, w_out, b_out), xs, sel, dt, C, z, y, states, y_pre


@torch.library.custom_op("canvas_mamba::cpu_projected", mutates_args=())
def _op(queries: Tensor, keys: Optional[Tensor], values: Optional[Tensor], params: List[Tensor],
        read: Optional[Tensor], T: int) -> _NINE:
    with torch.autocast("cpu", enabled=False):  # autocast reaches into an operator's body
        return _forward(queries, keys, values, params, read, T)


@_op.register_fake
def _(queries, keys, values, params, read, T):
    q, k, _ = _resolve(queries, keys, values)
    w_in, w_x, w_out, A_log = params[0], params[4], params[10], params[12]
    (Bt, Q, _), L, E, N, P = q.shape, k.shape[1], w_in.shape[0], A_log.shape[1], w_x.shape[0]
    merged = values is None
    return (q.new_empty(Bt, Q, w_out.shape[0]), q.new_empty(Bt, L, E + P if merged else E),
            q.new_empty(0) if merged else q.new_empty(Bt, L, P), q.new_empty(Bt, L, E), q.new_empty(Bt, Q, N),
            q.new_empty(Bt, Q, E), q.new_empty(Bt, Q, E), q.new_empty(Bt, -(-L // T), N, E), q.new_empty(Bt, Q, E))


@torch.library.custom_op("canvas_mamba::cpu_projected_backward", mutates_args=())
def _backward_op(g: Tensor, queries: Tensor, keys: Optional[Tensor], values: Optional[Tensor],
                 params: List[Tensor], read: Optional[Tensor], saved: List[Tensor], T: int) -> List[Tensor]:
    w_in, _, cw, cb, w_x, w_dt, _, w_c, w_z, _, w_out, _, A_log, D = params
    xs, sel, dt, C, z, y, states, y_pre = saved
    q, k, v = _resolve(queries, keys, values)
    E, R = w_in.shape[0], w_dt.shape[1]
    merged = values is None
    x, s = _split(xs, sel, E, merged)
    g2 = _flat(g)
    gy = torch.mm(g2, w_out).view(y.shape)
    gw_out, gb_out = torch.mm(g2.t(), _flat(y)), g2.sum(0)
    gz = torch.ops.aten.silu_backward(gy * y_pre, z)
    A = -torch.exp(A_log)
    gx, gcw, gcb, gdt, gA, gB, gC, gD = cpu_kernel.conv_backward(
        (gy * F.silu(z)).contiguous(), x, cw, cb, dt, A, s[..., R:].contiguous(), C,
        _reads(read, x.shape[1], x.device), T, states, True, D)
    gdt2, gC2, gz2 = _flat(gdt), _flat(gC), _flat(gz)
    # queries: through c_proj and z_proj
    q2 = _flat(q)
    gq = torch.mm(gC2, w_c).addmm_(gz2, w_z)
    gw_c, gw_z, gb_z = torch.mm(gC2.t(), q2), torch.mm(gz2.t(), q2), gz2.sum(0)
    # dt_proj: its weight's gradient as (dt_in^T g)^T (g^T dt_in is several times slower)
    gw_dt, gb_dt = torch.mm(_flat(s[..., :R]).t(), gdt2).t().contiguous(), gdt2.sum(0)
    gsel = torch.cat((torch.mm(gdt2, w_dt), _flat(gB)), dim=1)  # x_proj's output: dt_proj's input, then B
    gx2, k2 = _flat(gx), _flat(k)
    gw_x, gw_in, gb_in = torch.mm(gsel.t(), k2), torch.mm(gx2.t(), k2 if merged else _flat(v)), gx2.sum(0)
    gk = gq.addmm_(gsel, w_x) if keys is None else torch.mm(gsel, w_x)
    gv = None
    if merged:  # keys are values: both projections' input gradients into one tensor
        gk.addmm_(gx2, w_in)
    else:
        gv = torch.mm(gx2, w_in)
    grads = [gq.view(q.shape)]
    if keys is not None:
        grads.append(gk.view(k.shape))
    if values is not None:
        grads.append(gv.view(v.shape))
    return grads + [gw_in, gb_in, gcw, gcb, gw_x, gw_dt, gb_dt, gw_c, gw_z, gb_z, gw_out, gb_out, gA * A, gD]


@_backward_op.register_fake
def _(g, queries, keys, values, params, read, saved, T):
    c = torch.contiguous_format
    given = [t for t in (queries, keys, values) if t is not None]
    return [torch.empty_like(t, memory_format=c) for t in (*given, *params)]


def _setup_context(ctx, inputs, output):
    queries, keys, values, params, read, T = inputs
    ctx.save_for_backward(queries, keys, values, read, *output[1:], *params)
    ctx.T = T
    ctx.mark_non_differentiable(*output[1:])  # kept for the backward only
    ctx.set_materialize_grads(False)


def _autograd(ctx, g, *_unused):
    if g is None:
        return (None,) * 6
    queries, keys, values, read, *rest = ctx.saved_tensors
    with torch.autocast("cpu", enabled=False):
        grads = _backward_op(g.contiguous(), queries, keys, values, rest[8:], read, rest[:8], ctx.T)
    n = 1 + (keys is not None) + (values is not None)
    gq, gk, gv = grads[0], grads[1] if keys is not None else None, grads[n - 1] if values is not None else None
    return first_order_only("mamba's fused operator", (gq, gk, gv, grads[n:], None, None))


_op.register_autograd(_autograd, setup_context=_setup_context)


def cpu_projected(queries: Tensor, keys: Optional[Tensor], values: Optional[Tensor], params: List[Tensor],
                  read: Optional[Tensor], T: int) -> Tensor:
    """``MambaAttention``'s output ``(Bt, Q, D)`` on the compiled CPU scan, as one operator.

    Arguments as :func:`~canvas_plugin_mamba.proj_op.mamba_projected` passes them to its own
    operator: a tensor that is an earlier one is None in its slot (``keys is queries``, ``values is
    keys``), ``params`` contiguous, the conv no wider than ``cpu_kernel.MAX_CONV`` (:func:`fits`)."""
    return _op(queries, keys, values, params, read, T)[0]

"""A whole mamba forward, projections included, as one ``torch.library`` operator each way.

:mod:`~canvas_plugin_mamba.inner_op` covers what lies between the module's projections; traced by
``torch.compile``, the six ``nn.Linear`` layers around it (``in_proj``, ``x_proj``, ``dt_proj``,
``c_proj``, ``z_proj``, ``out_proj``) and the split of ``x_proj``'s output still came to about a
hundred ATen nodes forward and backward per call (matrix products, views, transposes, bias sums),
which inductor lowers one by one.  Here they run inside the operator: forward the module's own
``F.linear`` calls in its order (the same values), backward each layer's chain rule written out
(``grad input = g W``, ``grad W = g^T x``, ``grad b = sum g``) around the inner operator's backward.

The parameters reach the operator as inputs (never as constants), so one traced graph serves every
module of the same shapes (regional compilation reuses one block's graph for all blocks).  A
query, key or value tensor that is another one (``keys is values``, ``queries is keys``: the usual
canvas call reads keys and values from one gather) is passed once, as ``None`` in its later slot;
the backward then adds that tensor's gradients in place, so no extra addition is traced.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from canvas_core.extend import first_order_only
from canvas_plugin_mamba import chunked
from canvas_plugin_mamba.inner_op import _forward as _inner_forward
from canvas_plugin_mamba.inner_op import _inner_backward

__all__ = ["mamba_projected"]

_ELEVEN = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _resolve(queries: Tensor, keys: Optional[Tensor], values: Optional[Tensor]):
    keys = queries if keys is None else keys
    return queries, keys, keys if values is None else values


def _forward(queries, keys, values, params, read, T: int, block: int, kernel: str):
    """``params``: ``in_proj`` (w, b), conv (w ``(E, K)``, b), ``x_proj.weight``, ``dt_proj`` (w, b),
    ``c_proj.weight``, ``z_proj`` (w, b), ``out_proj`` (w, b), ``A_log``, ``D``."""
    w_in, b_in, cw, cb, w_x, w_dt, b_dt, w_c, w_z, b_z, w_out, b_out, A_log, D = params
    q, k, v = _resolve(queries, keys, values)
    R = w_dt.shape[1]
    x = F.linear(v, w_in, b_in)
    sel = F.linear(k, w_x)
    dt_in, Bm = sel.split([R, sel.shape[-1] - R], dim=-1)
    dt = F.linear(dt_in, w_dt, b_dt)
    C, z = F.linear(q, w_c), F.linear(q, w_z, b_z)
    y, hin, y_pre, conv, delta = _inner_forward(x, cw, cb, dt, Bm, C, z, A_log, D, read, T, block, kernel)
    return F.linear(y, w_out, b_out), x, sel, dt, C, z, y, hin, y_pre, conv, delta


@torch.library.custom_op("canvas_mamba::projected_v2", mutates_args=())
def _projected_op(queries: Tensor, keys: Optional[Tensor], values: Optional[Tensor], params: List[Tensor],
                  read: Optional[Tensor], T: int, block: int, kernel: str) -> _ELEVEN:
    return _forward(queries, keys, values, params, read, T, block, kernel)


@_projected_op.register_fake
def _(queries, keys, values, params, read, T, block, kernel):
    q, k, v = _resolve(queries, keys, values)
    w_in, w_x, w_out, A_log = params[0], params[4], params[10], params[12]
    (Bt, Q, _), L, E = q.shape, k.shape[1], w_in.shape[0]
    x = q.new_empty(Bt, L, E)
    hin = q.new_empty(chunked._saved_shape(x, A_log, q.new_empty(Bt, Q, A_log.shape[1]), T, kernel))
    return (q.new_empty(Bt, Q, w_out.shape[0]), x, q.new_empty(Bt, L, w_x.shape[0]), q.new_empty(Bt, L, E),
            q.new_empty(Bt, Q, A_log.shape[1]), q.new_empty(Bt, Q, E), q.new_empty(Bt, Q, E), hin,
            q.new_empty(Bt, Q, E), q.new_empty(Bt, L, E), q.new_empty(Bt, L, E))


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


@torch.library.custom_op("canvas_mamba::projected_backward_v2", mutates_args=())
def _projected_backward_op(g: Tensor, queries: Tensor, keys: Optional[Tensor], values: Optional[Tensor],
                           params: List[Tensor], read: Optional[Tensor], saved: List[Tensor], T: int,
                           block: int, kernel: str) -> List[Tensor]:
    w_in, _, cw, _, w_x, w_dt, _, w_c, w_z, _, w_out, _, A_log, D = params
    x, sel, dt, C, z, y, hin, y_pre, conv, delta = saved
    q, k, v = _resolve(queries, keys, values)
    R = w_dt.shape[1]
    g2 = _flat(g)
    gy = torch.mm(g2, w_out).view(y.shape)
    gw_out, gb_out = torch.mm(g2.t(), _flat(y)), g2.sum(0)
    Bm = sel[..., R:]
    gx, gcw, gcb, gdt, gB, gC, gz, gA_log, gD = _inner_backward(gy, x, cw, conv, delta, dt, Bm, C, z, A_log, D,
                                                                read, hin, y_pre, T, block, kernel)
    gx2, gdt2, gC2, gz2 = _flat(gx), _flat(gdt), _flat(gC), _flat(gz)
    # queries: through c_proj and z_proj
    q2 = _flat(q)
    gq = torch.mm(gC2, w_c).addmm_(gz2, w_z)
    gw_c, gw_z, gb_z = torch.mm(gC2.t(), q2), torch.mm(gz2.t(), q2), gz2.sum(0)
    # keys: through x_proj, whose output is split into dt_proj's input and B
    gsel = torch.cat((torch.mm(gdt2, w_dt), _flat(gB)), dim=1)
    gw_dt, gb_dt = torch.mm(gdt2.t(), _flat(sel)[:, :R]), gdt2.sum(0)  # dt_proj's input: a strided view
    gw_x = torch.mm(gsel.t(), _flat(k))
    gk = gq.addmm_(gsel, w_x) if keys is None else torch.mm(gsel, w_x)
    # values: through in_proj
    gw_in, gb_in = torch.mm(gx2.t(), _flat(v)), gx2.sum(0)
    gv = gk.addmm_(gx2, w_in) if values is None else torch.mm(gx2, w_in)
    grads = [gq.view(q.shape)]
    if keys is not None:
        grads.append(gk.view(k.shape))
    if values is not None:
        grads.append(gv.view(v.shape))
    return grads + [gw_in, gb_in, gcw, gcb, gw_x, gw_dt, gb_dt, gw_c, gw_z, gb_z, gw_out, gb_out, gA_log, gD]


@_projected_backward_op.register_fake
def _(g, queries, keys, values, params, read, saved, T, block, kernel):
    c = torch.contiguous_format
    given = [t for t in (queries, keys, values) if t is not None]
    return [torch.empty_like(t, memory_format=c) for t in (*given, *params)]


def _setup_context(ctx, inputs, output):
    queries, keys, values, params, read, T, block, kernel = inputs
    ctx.save_for_backward(queries, keys, values, read, *output[1:], *params)
    ctx.T, ctx.block, ctx.kernel = T, block, kernel
    ctx.mark_non_differentiable(*output[1:])  # kept for the backward only
    ctx.set_materialize_grads(False)


def _autograd(ctx, g, *_unused):
    if g is None:
        return (None,) * 8
    queries, keys, values, read, *rest = ctx.saved_tensors
    grads = _projected_backward_op(g.contiguous(), queries, keys, values, rest[10:], read, rest[:10], ctx.T,
                                   ctx.block, ctx.kernel)
    n = 1 + (keys is not None) + (values is not None)
    gq, gk, gv = grads[0], grads[1] if keys is not None else None, grads[n - 1] if values is not None else None
    return first_order_only("mamba's fused operator", (gq, gk, gv, grads[n:], None, None, None, None))


_projected_op.register_autograd(_autograd, setup_context=_setup_context)


def mamba_projected(module, queries: Tensor, keys: Tensor, values: Tensor, read: Optional[Tensor],
                    kernel: str = "torch") -> Tensor:
    """``MambaAttention``'s output before the mask of queries without keys (``out_proj`` applied; no
    active dropout, one floating dtype, no key mask), as one operator; ``read`` as in
    :func:`~canvas_plugin_mamba.inner_op.mamba_inner` (``kernel``: the scan, as there)."""
    m = module
    params = [m.in_proj.weight, m.in_proj.bias, m.conv1d.weight.squeeze(1), m.conv1d.bias, m.x_proj.weight,
              m.dt_proj.weight, m.dt_proj.bias, m.c_proj.weight, m.z_proj.weight, m.z_proj.bias, m.out_proj.weight,
              m.out_proj.bias, m.A_log, m.D]
    T = chunked.chunk_size(keys.shape[1])
    # the same tensor in two slots is passed once (its gradients then add up inside the backward)
    k = None if keys is queries else keys
    v = None if values is keys else values
    params = [p.contiguous() for p in params]
    from canvas_plugin_mamba import proj_cpu  # (it imports this module's helpers)

    if kernel == "cpu" and proj_cpu.fits(params[2]):  # what the eager module runs on the compiled scan
        return proj_cpu.cpu_projected(queries, k, v, params, read, T)
    return _projected_op(queries, k, v, params, read, T, -1, kernel)[0]

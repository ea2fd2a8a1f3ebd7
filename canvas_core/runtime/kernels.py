"""The core's reference kernel: one softmax-family group of rectangles in one fused call.

Kernel contract (what a backend kernel, e.g. ``canvas-backend-flex``, implements)::

    kernel = KernelClass(group, plan, *, n_heads, head_dim, **options)   # nn.Module
    out = kernel(q, k, v, scale=..., dropout_p=...)

* ``group``: the :class:`~canvas_core.compiler.plan.RectGroup` of one fn type (packed coords),
  ``plan``: the :class:`~canvas_core.compiler.plan.ExecutionPlan` (``plan.perm``, ``plan.n``,
  ``plan.segment_grid(fn)``, ``plan.block_layout(block_size, fn)``).
* ``q, k, v``: ``(B, H, N, d)`` in **canonical** position order; returns ``(B, H, N, d)``
  canonical.  Per query ``i``: ``softmax_j(scale * q_i . k_j + log w_ij)`` over the keys ``j``
  with ``w_ij > 0`` (``w_ij`` the largest weight of a rectangle covering ``(i, j)``), applied to
  ``v``.  A query with no key outputs exactly 0 (never NaN).
* All index structures are built once in ``__init__`` (buffers), so ``forward`` has no Python loop
  over connections or frames and traces under ``torch.compile(fullgraph=True)``.

:class:`ReferenceKernel` picks, per group, between

* ``dense``: one SDPA over all N x N with a cached additive float mask (``log w`` / ``-inf``),
  the right thing when the group touches most tiles;
* ``segments``: exact gather by query class.  Queries whose rows of the weight matrix are
  identical (e.g. every position of one region-frame under a temporal topology) form a class
  that shares one key set and one per-key bias; classes are bucketed by (key count, query
  count) and each bucket is one batched 4-D SDPA over exactly its keys -- no padded keys, no
  pair mask (no mask at all when the weights are 1), so the work is exactly the linked pairs
  and CPU SDPA takes its fused path.  Chosen when the topology has a handful of such shapes.
* ``sparse``: block-sparse gather.  Packed positions (each region-frame run padded to a multiple
  of ``block_size`` so that no block straddles two frames) are cut into query/key blocks; query
  blocks are bucketed by their number of non-empty key blocks (exact counts, or a 1.25x
  geometric ladder when many differ); per bucket one batched 4-D SDPA runs over the gathered key
  blocks with a precomputed bias tile.  Work ~ (non-empty tiles) x block_size^2.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from canvas_core._lazy import lazy_exports
from canvas_core.attention._base import as_dtype
from canvas_core.compiler.plan import ExecutionPlan, RectGroup, block_layout_of, segment_grid
from canvas_core.compiler.resolved import REFERENCE_KERNEL, ResolvedGroup
from canvas_core.errors import CanvasError, CompileError, ShapeError  # noqa: F401
from canvas_core.plugins.builtin import BUILTIN_ATTENTION, SOFTMAX_FAMILY
from canvas_core.plugins.registry import BUILTIN_PLUGIN
from canvas_core.plugins.spec import Spec
from canvas_core.schema.limits import check_elements, limit
from canvas_core.runtime.finite_guard import nan_where_linked, non_finite_keys, reads_bad, zero_bad_keys
from canvas_core.runtime.kernel_base import AttentionKernel, check_reference_options, check_reference_sizes
from canvas_core.runtime.kernel_index import Segments, bucket_counts, is_arange, segment_buckets, slot_layout

__all__ = ["ReferenceKernel", "make_kernel", "kernel_for", "probe_kernel", "REFERENCE_MODES"]

#: the modes of the reference kernel, chosen with ``kernel="reference", kernel_options={"mode": m}``
#: (a kernel is named by its registry name).  As ``kernel=`` values they are a deprecated spelling
#: of the same choice, translated in one place (:func:`make_kernel`).
REFERENCE_MODES = ("dense", "segments", "sparse")


def _reference_mode_spelling(kernel: str, options: dict) -> dict:
    """``kernel="dense"`` (deprecated) -> the options of ``kernel="reference"`` with that mode."""
    import warnings

    if options.get("mode", kernel) != kernel:
        raise CompileError(f"kernel={kernel!r} and kernel_options={{'mode': {options['mode']!r}}} ask for two modes "
                           f"of the reference kernel; write kernel='reference', kernel_options={{'mode': ...}}")
    warnings.warn(f"kernel={kernel!r} names a mode of the reference kernel; write kernel='reference', "
                  f"kernel_options={{'mode': {kernel!r}}} (a kernel is named by its registry name)",
                  DeprecationWarning, stacklevel=3)
    return {**options, "mode": kernel}


class ReferenceKernel(AttentionKernel):
    """SDPA over the plan's blocks (dense or block-sparse gather), see the module docstring.

    Args:
        group: the fn type's rectangles.
        plan: the execution plan.
        n_heads, head_dim: informational (the kernel works for any heads / head dim).
        mode: ``"auto"`` (default), ``"dense"``, ``"segments"`` or ``"sparse"``.
        block_size: tile edge of the sparse path.
        dense_threshold: auto picks dense when N <= ``small_n`` (one call beats a few small
            gathers), else ``segments`` whenever the query classes fit in ``max_buckets``
            batched calls, else dense when the padded block work exceeds this fraction of
            N x N, else ``sparse``.
        max_buckets: most SDPA calls the ``segments`` mode may use.
        device: where to build the buffers.
    """

    def __init__(self, group: RectGroup, plan: ExecutionPlan, *, n_heads: int = 1,
                 head_dim: Optional[int] = None, mode: str = "auto", block_size: int = 128,
                 dense_threshold: float = 0.5, small_n: int = 256, max_buckets: int = 12,
                 device: Any = None) -> None:
        super().__init__(group, plan, n_heads=n_heads, head_dim=head_dim)  # fn, n, n_heads, head_dim
        if not isinstance(mode, str) or mode not in ("auto", "dense", "segments", "sparse"):
            raise CompileError("ReferenceKernel mode must be 'auto', 'dense', 'segments' or 'sparse', "
                               f"got {mode!r}")
        n = self.n
        self.block_size = bs = check_reference_sizes(block_size, small_n, max_buckets, dense_threshold)
        to = (lambda t: t.to(device)) if device is not None else (lambda t: t)
        perm = torch.from_numpy(plan.perm)
        inv = torch.from_numpy(plan.inv_perm)
        # the type's weight matrix compressed to segments, in packed order (segments and dense use it)
        packed_grid = segment_grid(n, group.q0, group.q1, group.k0, group.k1, group.weight)
        if mode in ("auto", "segments"):
            seg = segment_buckets(plan, packed_grid, max_buckets if mode == "auto" else None)
            # exact work and no pair mask: better than the masked dense call once N is not tiny
            if mode == "segments" or (seg is not None and n > small_n):
                self.mode = "segments"
                self.sparse_work_fraction = seg.work / float(max(1, n * n))
                self._init_segments(seg, to)
                return
        # slot layout of the sparse path: each packed piece (region-frame run) padded to a
        # multiple of block_size, so that a query block never straddles two frames
        slot_packed, q0, q1, k0, k1, w = slot_layout(plan, group, bs)
        n_slots = int(slot_packed.shape[0])
        sg = segment_grid(n_slots, q0, q1, k0, k1, w)
        bl = block_layout_of(sg, n_slots, bs)
        nonempty = bl.state > 0
        counts = nonempty.sum(axis=1)
        padded = bucket_counts(counts, bl.n_k_blocks)
        sparse_work = float(padded.sum()) * bs * bs
        self.sparse_work_fraction = sparse_work / float(max(1, n * n))
        if mode == "auto":
            mode = "dense" if (n <= small_n or sparse_work > dense_threshold * n * n) else "sparse"
            if mode == "dense" and n * n > limit("elements"):
                mode = "sparse"  # an N x N mask over the element limit: the gather path needs none
        self.mode = mode
        if mode == "dense":
            check_elements((n, n), f"the dense kernel's (N, N) mask of fn group {self.fn!r} (N = {n:,}; "
                           "kernel='segments' or 'sparse' need no N x N tensor)")
            rs = torch.from_numpy(packed_grid.row_segment_of(n))[inv]
            cs = torch.from_numpy(packed_grid.col_segment_of(n))[inv]
            W = torch.from_numpy(packed_grid.grid)[rs][:, cs]  # canonical (N, N)
            has = (W > 0).any(dim=1)
            # an additive float mask: faster than a boolean one in CPU SDPA, and carries log w
            mask = _log_weights(W, has).float()
            self._float64_source = (packed_grid, rs, cs, has)  # see _exact_float64
            self.register_buffer("mask", to(mask), persistent=False)
            self.register_buffer("row_has_key", to(has), persistent=False)
            # built here, in the form forward uses them: (N, 1) row multiplier, (N, N) float links
            # (the NaN guard's matrix: nan_where_linked then converts nothing)
            self.register_buffer("row_keep", to(has.float()[:, None]), persistent=False)
            self.register_buffer("linked", to((W > 0).float()), persistent=False)
            self._all_have_keys = bool(has.all())
            return
        # ---- sparse: buckets of query blocks by padded key-block count -------------------------
        nqb = nkb = bl.n_q_blocks
        grid = torch.from_numpy(sg.grid)
        rs = torch.from_numpy(sg.row_segment_of(n_slots))
        cs = torch.from_numpy(sg.col_segment_of(n_slots))
        has_p = (grid > 0).any(dim=1)[rs] if n_slots else torch.zeros(0, dtype=torch.bool)
        logw = _log_weights(grid)
        logw = torch.cat([logw, torch.full((logw.shape[0], 1), -math.inf, dtype=logw.dtype)], 1)
        cs_p = torch.cat([cs, torch.full((bs,), grid.shape[1], dtype=cs.dtype)])  # + dummy key block
        self._float64_source = (logw, rs, cs_p)  # see _exact_float64
        buckets = {}
        for qb in range(nqb):
            if padded[qb] > 0:
                buckets.setdefault(int(padded[qb]), []).append(qb)
        self._bucket_sizes: List[int] = []
        order: List[int] = []
        for bi, (m, qbs) in enumerate(sorted(buckets.items())):
            kb = np.full((len(qbs), m), nkb, dtype=np.int64)  # dummy block = zeros, bias -inf
            for r, qb in enumerate(qbs):
                ks = np.flatnonzero(nonempty[qb])
                kb[r, : len(ks)] = ks
            qb_t = torch.tensor(qbs, dtype=torch.long)
            kb_t = torch.from_numpy(kb)
            rows = (qb_t[:, None] * bs + torch.arange(bs)[None, :])  # (nb, bs)
            cols = (kb_t[:, :, None] * bs + torch.arange(bs)[None, None, :]).reshape(len(qbs), m * bs)
            has = has_p[rows]
            bias = _bucket_bias(logw, rs, cs_p, rows, cols, has).float()  # (nb, bs, m*bs)
            for name, t in (("qb", qb_t), ("kb", kb_t), ("bias", bias), ("has", has)):
                self.register_buffer(f"b{bi}_{name}", to(t), persistent=False)
            self._bucket_sizes.append(m)
            order.extend(qbs)
        # query blocks with no key at all are appended as zeros at the end of the concatenation
        empty = [qb for qb in range(nqb) if padded[qb] == 0]
        order.extend(empty)
        self._n_empty_blocks = len(empty)
        unorder = torch.empty(nqb, dtype=torch.long)
        unorder[torch.tensor(order, dtype=torch.long)] = torch.arange(nqb)
        self.nqb, self.nkb = nqb, nkb
        sp = torch.from_numpy(slot_packed)
        # slot -> canonical row of the input padded with one zero row (index n)
        slot_canon = torch.where(sp >= 0, perm[sp.clamp_min(0)], torch.full_like(sp, n))
        packed_slot = torch.empty(n, dtype=torch.long)
        real = sp >= 0
        packed_slot[sp[real]] = torch.nonzero(real).flatten()
        canon_slot = packed_slot[inv]
        for name, t in (("slot_canon", slot_canon), ("canon_slot", canon_slot), ("unorder", unorder)):
            self.register_buffer(name, to(t), persistent=False)

    def _exact_float64(self, device: Any) -> List[torch.Tensor]:
        """The dense mask (``[mask]``) or the sparse buckets' biases in float64, rebuilt from the
        plan's weights once per device: the buffers hold the log-weights in float32 (a float32
        call would otherwise convert an N x N mask each time), and a float64 call, or a layer
        converted with ``.double()``, would read them rounded (errors of 1e-8 where w != 1)."""
        hit = self.__dict__.get("_float64_cache")
        if hit is not None and hit[0] == device:
            return hit[1]
        if self.mode == "dense":
            grid, rs, cs, has = self._float64_source
            out = [_log_weights(torch.from_numpy(grid.grid)[rs][:, cs], has)]
        else:
            logw, rs, cs_p = self._float64_source
            bs, out = self.block_size, []
            for bi in range(len(self._bucket_sizes)):
                qb, kb = getattr(self, f"b{bi}_qb").cpu(), getattr(self, f"b{bi}_kb").cpu()
                rows = qb[:, None] * bs + torch.arange(bs)[None, :]
                cols = (kb[:, :, None] * bs + torch.arange(bs)[None, None, :]).reshape(len(qb), -1)
                out.append(_bucket_bias(logw, rs, cs_p, rows, cols, getattr(self, f"b{bi}_has").cpu()))
        out = [t.to(device) for t in out]
        self.__dict__["_float64_cache"] = (device, out)
        return out

    def _init_segments(self, seg: "Segments", to) -> None:
        self._seg_shapes: List[tuple] = []
        for bi, (nb, nq, nk, qi, ki, bias) in enumerate(seg.buckets):
            self.register_buffer(f"s{bi}_q", to(torch.from_numpy(qi)), persistent=False)
            self.register_buffer(f"s{bi}_k", to(torch.from_numpy(ki)), persistent=False)
            if bias is not None:
                self.register_buffer(f"s{bi}_bias", to(torch.from_numpy(bias)), persistent=False)
            self._seg_shapes.append((nb, nq, nk, bias is not None, nb == 1 and is_arange(qi, self.n),
                                     nb == 1 and is_arange(ki, self.n)))
        self.register_buffer("s_out", to(torch.from_numpy(seg.out_index)), persistent=False)

    def _forward_segments(self, q, k, v, scale, dropout_p):
        B, H, _, d = q.shape
        # token-major views (B, N, H, d): for the usual q/k/v (views of one (B, N, 3, H, d)
        # projection) a gather of whole token rows is a cheap memory copy, and the gathered
        # (B, nb*n, H, d) blocks reshape for free to SDPA's (B*nb, H, n, d) layout
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        def gather(t, idx, nb, m, identity):
            g = t if identity else t.index_select(1, idx)
            return g.reshape(B * nb, m, H, d).transpose(1, 2)

        outs = []
        for bi, (nb, nq, nk, has_bias, q_all, k_all) in enumerate(self._seg_shapes):
            qg = gather(qt, getattr(self, f"s{bi}_q"), nb, nq, q_all)
            ki = getattr(self, f"s{bi}_k")
            kg, vg = gather(kt, ki, nb, nk, k_all), gather(vt, ki, nb, nk, k_all)
            mask = None
            if has_bias:  # (nb, nk) per-key log w, the same for every head and query of a class
                b = getattr(self, f"s{bi}_bias").to(q.dtype)
                mask = b[None].expand(B, nb, nk).reshape(B * nb, 1, 1, nk)
            o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, dropout_p=dropout_p, scale=scale)
            outs.append(o.transpose(1, 2).reshape(B, nb * nq, H, d))
        if len(outs) == 1 and self._seg_shapes[0][4]:
            return outs[0].transpose(1, 2)  # one class, every query, canonical order
        outs.append(q.new_zeros(B, 1, H, d))  # the output of queries with no key
        return torch.cat(outs, dim=1).index_select(1, self.s_out).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"fn={self.fn!r}, n={self.n}, mode={self.mode!r}, block_size={self.block_size}"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                dropout_p: float = 0.0) -> torch.Tensor:
        """``(B, H, N, d)`` x3 canonical -> ``(B, H, N, d)`` canonical."""
        if q.shape[-2] != self.n:
            raise ShapeError(f"ReferenceKernel for {self.n} positions got tensors with {q.shape[-2]}")
        if self.mode == "segments":
            return self._forward_segments(q, k, v, scale, dropout_p)
        if self.mode == "dense":
            if q.dtype == torch.float64:
                mask = self._exact_float64(q.device)[0]
            else:
                mask = as_dtype(self.mask, q.dtype) if self.mask.dtype != torch.bool else self.mask
            bad = non_finite_keys(k, v)  # keep a non-finite key away from queries not linked to it
            if bad is not None:
                k, v = zero_bad_keys(k, v, bad)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
            if bad is not None:
                out = nan_where_linked(out, as_dtype(self.linked, out.dtype), bad)
            if self._all_have_keys:
                return out
            return out * as_dtype(self.row_keep, out.dtype)
        B, H, _, d = q.shape
        bs, BH = self.block_size, B * H
        # blocks first, (batch, heads) folded into SDPA's batch: 4-D SDPA hits the fused kernel
        def blocks(t, extra_blocks):
            t = F.pad(t, (0, 0, 0, 1)).index_select(2, self.slot_canon)
            if extra_blocks:
                t = F.pad(t, (0, 0, 0, bs))
            return t.reshape(B, H, t.shape[2] // bs, bs, d).permute(2, 0, 1, 3, 4)  # no -1: B may be 0

        bad = non_finite_keys(k, v)  # a gathered tile may hold unlinked keys: see finite_guard
        if bad is not None:
            k, v = zero_bad_keys(k, v, bad)
            badp = F.pad(F.pad(bad.to(q.dtype), (0, 1)).index_select(2, self.slot_canon), (0, bs))
            badp = badp.reshape(B, H, badp.shape[2] // bs, bs).permute(2, 0, 1, 3)  # (nkb + 1, B, H, bs)
        qp = blocks(q, False)  # (nqb, B, H, bs, d)
        kp = blocks(k, True)  # (nkb + 1, B, H, bs, d), last block = zeros
        vp = blocks(v, True)
        outs = []
        for bi, m in enumerate(self._bucket_sizes):
            qb = getattr(self, f"b{bi}_qb")
            kb = getattr(self, f"b{bi}_kb").reshape(-1)
            bias = (self._exact_float64(q.device)[bi] if q.dtype == torch.float64
                    else getattr(self, f"b{bi}_bias").to(q.dtype))
            has = getattr(self, f"b{bi}_has")
            nb = qb.shape[0]
            qg = qp.index_select(0, qb).reshape(nb, BH, bs, d)
            kg = kp.index_select(0, kb).reshape(nb, m, BH, bs, d).transpose(1, 2).reshape(nb, BH, m * bs, d)
            vg = vp.index_select(0, kb).reshape(nb, m, BH, bs, d).transpose(1, 2).reshape(nb, BH, m * bs, d)
            o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=bias[:, None], dropout_p=dropout_p,
                                               scale=scale)
            o = o * has[:, None, :, None].to(o.dtype)
            if bad is not None:
                bg = badp.index_select(0, kb).reshape(nb, m, BH, bs).transpose(1, 2).reshape(nb, BH, m * bs)
                linked = torch.isfinite(bias) & has[:, :, None]  # (nb, bs, m*bs)
                o = o.masked_fill(reads_bad(linked, bg, o.dtype).unsqueeze(-1), float("nan"))
            outs.append(o)
        if self._n_empty_blocks:
            outs.append(q.new_zeros(self._n_empty_blocks, BH, bs, d))
        out = torch.cat(outs, dim=0).index_select(0, self.unorder)  # (nqb, BH, bs, d)
        out = out.reshape(self.nqb, B, H, bs, d).permute(1, 2, 0, 3, 4).reshape(B, H, self.nqb * bs, d)
        return out.index_select(2, self.canon_slot)


def _log_weights(W: torch.Tensor, has: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``log w`` where ``W > 0``, ``-inf`` elsewhere (float64, as ``W``); rows without any key
    (``has`` False) all 0, so that SDPA gives them no NaN (their output is zeroed later)."""
    out = torch.where(W > 0, W.log(), torch.full_like(W, -math.inf))
    if has is not None:
        out[~has] = 0.0
    return out


def _bucket_bias(logw: torch.Tensor, rs: torch.Tensor, cs_p: torch.Tensor, rows: torch.Tensor,
                 cols: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """A sparse bucket's ``(nb, bs, m * bs)`` bias gathered from the segment grid's log-weights
    (0 on slots without a key)."""
    bias = logw[rs[rows][:, :, None], cs_p[cols][:, None, :]]
    return torch.where(has[:, :, None], bias, torch.zeros_like(bias))


def make_kernel(kernel: Any, group: RectGroup, plan: ExecutionPlan, *, n_heads: int, head_dim: int,
                device: Any = None, **options: Any) -> nn.Module:
    """Build the kernel module that runs one softmax-family group of ``plan``.

    ``kernel`` may be:

    * a :class:`~canvas_core.compiler.resolved.ResolvedGroup` (what the plan carries): its
      kernel entry, or the reference kernel when it has none;
    * a registry entry (``Spec``): ``spec.create(group, plan, n_heads=, head_dim=, **options)``;
    * None / ``"auto"`` / ``"reference"``: :class:`ReferenceKernel` (``mode=`` in ``options``
      forces one of :data:`REFERENCE_MODES`; ``kernel="dense"`` etc. is a deprecated spelling);
    * another string: the kernel registered under that name (the one lookup happens here);
    * a class or callable: ``kernel(group, plan, n_heads=..., head_dim=..., **options)``.

    With ``device`` the result is built there (or moved there when its factory takes no device).
    """
    if isinstance(kernel, ResolvedGroup):
        if kernel.preview:
            raise CompileError(
                f"fn group {kernel.fn!r} was resolved as a preview for {kernel.device} (a device this machine "
                "lacks), so it cannot be run here; compile again without preview for the device you run on")
        kernel = kernel.kernel
    if isinstance(kernel, str) and kernel in REFERENCE_MODES:
        options, kernel = _reference_mode_spelling(kernel, options), REFERENCE_KERNEL
    core = kernel is None or (isinstance(kernel, str) and kernel in ("auto", REFERENCE_KERNEL))
    if core or (isinstance(kernel, Spec) and kernel.name == REFERENCE_KERNEL and kernel.plugin == BUILTIN_PLUGIN):
        check_reference_options(options)  # the core's own: options checked by name, not by a TypeError
    if core:
        return ReferenceKernel(group, plan, n_heads=n_heads, head_dim=head_dim, device=device, **options)
    if isinstance(kernel, str):
        from canvas_core.plugins import get_kernel_spec

        kernel = get_kernel_spec(kernel)
    if isinstance(kernel, Spec):
        module = kernel.create(group, plan, n_heads=n_heads, head_dim=head_dim, **options)
    else:
        module = kernel(group, plan, n_heads=n_heads, head_dim=head_dim, **options)
    return module.to(device) if device is not None else module


def kernel_for(plan: ExecutionPlan, fn: str, *, n_heads: int, head_dim: int, device: Any = None,
               **options: Any) -> nn.Module:
    """The kernel module of fn group ``fn`` of ``plan``, as resolved (``plan.groups[fn].resolved``).

    Called as ``kernel(q, k, v, scale=..., dropout_p=0.0)`` with ``(B, H, N, d)`` tensors in
    canonical position order (see the module docstring).  A plan that was never resolved gets the
    reference kernel.  A canvas-core type outside the softmax family (``linear_attention``, ...)
    runs its own module, not a kernel: ``CompileError``.
    """
    group = plan.groups.get(fn) if isinstance(fn, str) else None
    if group is None:
        raise CompileError(f"kernel_for(plan, fn): fn must be one of the plan's types {sorted(plan.groups)}, "
                           f"got {fn!r}")
    rg = group.resolved
    if fn not in SOFTMAX_FAMILY and (rg.attention.plugin == BUILTIN_PLUGIN if rg is not None else fn in BUILTIN_ATTENTION):
        raise CompileError(f"kernel_for(plan, {fn!r}): {fn!r} runs its own module, not a softmax kernel (build it "
                           "with canvas_core.plugins.create_attention); kernel_for serves the softmax family "
                           f"{list(SOFTMAX_FAMILY)} and a backbone's own attention types")
    return make_kernel(group.resolved, group, plan, n_heads=n_heads, head_dim=head_dim, device=device, **options)


# the probe builds kernels with make_kernel, so it lives in its own module and is exported from
# here lazily (an import at the top would be a cycle)
__getattr__, __dir__ = lazy_exports(__name__, {
    "probe_kernel": "canvas_core.runtime.kernel_probe", "_PROBE_REGIONS": "canvas_core.runtime.kernel_probe",
    "_probe_plan": "canvas_core.runtime.kernel_probe", "_eager": "canvas_core.runtime.kernel_probe",
    "_default_device": "canvas_core.runtime.kernel_probe"}, globals())

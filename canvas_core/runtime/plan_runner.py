"""Running a plan on projections someone else made: the execution core shared by every path.

``CanvasAttention`` projects its own ``q, k, v``; a backbone (CogVideoX, Mochi, a timm ViT)
brings its own, after its norms, rotary embeddings and text/video concatenation.  Both hand
them to the same code here:

* :func:`compact_plan` restricts an :class:`~canvas_core.compiler.plan.ExecutionPlan` to the
  canvas positions that actually hold a token and renumbers it so that "canonical" index ``k`` is
  the k-th token of the backbone's sequence.  Rectangles stay rectangles (dropping positions from
  a packed run keeps the rest contiguous), so this is O(N + rectangles) and no ``(S, S)`` array
  is made.  The kernels then read the backbone's token order directly: their gathers do the
  permutation, nothing else does.
* :class:`PlanRunner` builds, once, the kernel of every softmax-family group (the kernel the
  compiler resolved for the device, else the reference kernel) and the query/key index sets of
  every other group.
* :func:`mix_softmax_groups` runs the softmax groups and mixes them per query by their weights;
  :func:`run_module_groups` runs the other types' modules on their linked sets.

Semantics (``docs/design.md``, "One attention semantics"): per fn group, one softmax of each query
over the union of its linked keys with ``log w`` biases; a query with no key of the group gets 0;
groups are mixed per query by ``W_f(p)``, the total weight of f's connections linking ``p``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.compiler.plan import ExecutionPlan, segment_grid
from canvas_core.compiler.resolved import REFERENCE_KERNEL
from canvas_core.errors import ShapeError
from canvas_core.runtime.block_views import strided_blocks
from canvas_core.runtime.func_transforms import tangent_drops_refused
from canvas_core.runtime.key_sets import group_key_sets, merge_cover, query_block_ids, shape_buckets
from canvas_core.runtime.type_call import call_exact_masked, is_builtin_module, run_flat_buckets, runs_per_key_set
from canvas_core.runtime.type_dtypes import naming_connections, type_connections

__all__ = [
    "compact_plan",
    "PlanRunner",
    "mix_softmax_groups",
    "run_module_groups",
    "plan_query_weights",
    "weights",
]


def plan_query_weights(plan: ExecutionPlan, weights: Sequence[float]) -> Dict[str, np.ndarray]:
    """``W_f(p)`` (packed) recomputed from the plan's rectangles: the sum of the weights of the
    connections of type f that link query p to at least one key (``weights[ci]``: connection
    ``ci``'s weight).  Vectorised over connections: O(R log R + N) per type."""
    out: Dict[str, np.ndarray] = {}
    n = int(plan.n)
    w_of = np.asarray(list(weights), dtype=np.float64)
    for fn, g in plan.groups.items():
        acc = np.zeros(n + 1, dtype=np.float64)
        if g.n_rects:
            # the query ranges of each connection, merged: offset every connection into its own
            # band of [0, (C + 1) * (n + 1)) so that one sort and one running max merge them all
            conn = g.conn.astype(np.int64)
            span = n + 1
            lo, hi = g.q0 + conn * span, g.q1 + conn * span
            order = np.argsort(lo, kind="stable")
            lo, hi, conn = lo[order], hi[order], conn[order]
            reach = np.maximum.accumulate(hi)
            start = np.ones(len(lo), dtype=bool)
            start[1:] = lo[1:] > reach[:-1]
            first = np.flatnonzero(start)
            last = np.r_[first[1:], len(lo)] - 1
            m_lo, m_hi, m_conn = lo[first], reach[last], conn[first]
            np.add.at(acc, m_lo - m_conn * span, w_of[m_conn])
            np.add.at(acc, m_hi - m_conn * span, -w_of[m_conn])
            count = np.zeros(n + 1, dtype=np.int64)  # linking connections: exact, unlike the float sum
            np.add.at(count, m_lo - m_conn * span, 1)
            np.add.at(count, m_hi - m_conn * span, -1)
            acc = np.where(np.cumsum(count) > 0, np.cumsum(acc), 0.0)
        out[fn] = acc[:n]
    return out


def compact_plan(plan: ExecutionPlan, token_index: Sequence[int]) -> ExecutionPlan:
    """The plan over the tokens only: ``token_index[k]`` is the canonical canvas position of token
    ``k``; the result has ``n = len(token_index)`` and its canonical index ``k`` is token ``k``.

    Positions without a token vanish from every rectangle (a rectangle left empty is dropped) and
    ``query_weight`` is recomputed, so a query whose keys were all on dropped positions gets no
    key.  Costs O(N + rectangles) time and memory.  Every other field of the plan (resolutions,
    anything a later compiler adds) is carried over unchanged.
    """
    n = int(plan.n)
    tok = np.asarray(token_index, dtype=np.int64).reshape(-1)
    s = int(tok.shape[0])
    if s and (tok.min() < 0 or tok.max() >= n):
        raise ShapeError(f"token positions must lie in [0, {n}) of the plan's canvas")
    tok_of = np.full(n, -1, dtype=np.int64)
    tok_of[tok] = np.arange(s, dtype=np.int64)
    if s and int((tok_of >= 0).sum()) != s:
        raise ShapeError("two tokens are mapped to the same canvas position")
    packed_tok = tok_of[plan.perm]  # token number of each packed position, -1 if none
    present = packed_tok >= 0
    c = np.concatenate([[0], np.cumsum(present)]).astype(np.int64)  # packed -> compact
    perm = packed_tok[present]
    inv = np.empty(s, dtype=np.int64)
    inv[perm] = np.arange(s, dtype=np.int64)
    groups = {}
    for fn, g in plan.groups.items():
        ng = dataclasses.replace(g, q0=c[g.q0], q1=c[g.q1], k0=c[g.k0], k1=c[g.k1])
        keep = (ng.q1 > ng.q0) & (ng.k1 > ng.k0)
        groups[fn] = ng.select(keep)
    blocks = {}
    for r, frames in plan.region_blocks.items():
        nf = {}
        for t, runs in frames.items():
            rr = [(int(c[a]), int(c[b])) for a, b in runs if c[b] > c[a]]
            if rr:
                nf[t] = rr
        blocks[r] = nf
    weights = [float(getattr(conn, "weight", 1.0)) for conn in plan.topology.connections]
    out = dataclasses.replace(plan, n=s, perm=perm, inv_perm=inv, n_covered=int(c[plan.n_covered]),
                              region_blocks=blocks, groups=groups)
    out.query_weight = plan_query_weights(out, weights)
    for fn in plan.query_weight:  # a type whose every rectangle vanished still has a (zero) entry
        out.query_weight.setdefault(fn, np.zeros(s))
    return out


def _kernel_label(kernel: Any) -> str:
    if kernel is None:
        return REFERENCE_KERNEL
    if isinstance(kernel, str):
        return kernel
    name = getattr(kernel, "kernel_name", None)  # a ResolvedGroup
    if isinstance(name, str):
        return REFERENCE_KERNEL if name == "module" else name
    return getattr(kernel, "name", None) or getattr(kernel, "__name__", type(kernel).__name__)


def _is_full(plan: ExecutionPlan, fn: str) -> bool:
    """Every query linked to every key with weight 1 (plain attention)."""
    g = plan.groups[fn]
    if plan.n == 0 or g.n_rects == 0:
        return False
    sg = segment_grid(plan.n, g.q0, g.q1, g.k0, g.k1, g.weight)
    return bool(np.all(sg.grid == 1.0))


def _ascending(bucket: Tuple[np.ndarray, np.ndarray, np.ndarray], n: int):
    """A bucket ``(Q (G, nq), K (G, nk), C (G * nq,))`` whose key sets are strided blocks stacked
    in decreasing order, restacked in increasing order (any other bucket as it is).  The key sets
    of a bucket are independent rows in any order; read in increasing order they are plain slices
    of ``x``, with no flip of the inputs nor of their gradients (``runtime/block_views.py``)."""
    bq, bk, bc = bucket
    spec = strided_blocks(bq, bk, n)
    if spec is None or not spec[4]:
        return bucket
    return bq[::-1].copy(), bk[::-1].copy(), bc.reshape(bq.shape)[::-1].reshape(-1).copy()


class PlanRunner(nn.Module):
    """Kernels and index buffers of one plan (no parameters); built once, run every call.

    Args:
        plan: the plan, in the order of the tensors it will be given (for a backbone, the
            :func:`compact_plan` of its token layout).
        softmax_types: fn types run by a softmax kernel on the given ``q, k, v``.
        kernels: fn type -> kernel: the group's ``ResolvedGroup`` (what the plan carries), None
            (the reference kernel), a reference mode, or anything
            :func:`canvas_core.runtime.kernels.make_kernel` takes.
        n_heads, head_dim: of the projections.
        normalize: ``"all"``: a type's mixing weight at p is ``W_f(p) / sum_over_all_types``
            (CanvasAttention); ``"softmax"``: the softmax types are normalised among themselves
            and the other types among all types (a backbone, whose attention stays its own).
        kernel_options: extra keyword arguments of the kernels.
        plain_when_full: run plain SDPA (no kernel built) when one softmax type links every pair
            with weight 1 and nothing else runs.
        keep_empty: keep groups without rectangles (their output is 0) instead of skipping them.
    """

    def __init__(self, plan: ExecutionPlan, softmax_types: Iterable[str], kernels: Optional[Mapping[str, Any]] = None,
                 *, n_heads: int, head_dim: int, normalize: str = "all",
                 kernel_options: Optional[Mapping[str, Any]] = None, device: Any = None,
                 plain_when_full: bool = True, keep_empty: bool = False) -> None:
        super().__init__()
        from canvas_core.runtime.kernels import make_kernel

        softmax_types = tuple(softmax_types)
        kernels = dict(kernels or {})
        n = int(plan.n)
        self.n = n
        inv = plan.inv_perm
        has = (lambda f: True) if keep_empty else (lambda f: plan.groups[f].n_rects > 0)
        self.soft_fns = [f for f in plan.groups if f in softmax_types and has(f)]
        self.other_fns = [f for f in plan.groups if f not in softmax_types and has(f)]
        # plain attention: one softmax type linking everything with weight 1 and nothing else
        self.full = bool(plain_when_full and len(self.soft_fns) == 1 and not self.other_fns
                         and _is_full(plan, self.soft_fns[0]))
        self.kernel_names = {f: _kernel_label(kernels.get(f)) for f in self.soft_fns}
        to = (lambda t: t.to(device)) if device is not None else (lambda t: t)
        self.kernels = nn.ModuleDict()
        if not self.full:
            for i, f in enumerate(self.soft_fns):
                self.kernels[f"k{i}"] = make_kernel(kernels.get(f), plan.groups[f], plan, n_heads=n_heads,
                                                    head_dim=head_dim, device=device,
                                                    **dict(kernel_options or {}))
        qw = {f: plan.query_weight[f][inv] for f in list(self.soft_fns) + list(self.other_fns)}
        den_all = np.zeros(n)
        for w in qw.values():
            den_all += w
        den_soft = np.zeros(n)
        for f in self.soft_fns:
            den_soft += qw[f]
        den = den_soft if normalize == "softmax" else den_all
        safe = np.where(den > 0, den, 1.0)
        self.updated_np = den_all > 0
        self.register_buffer("updated", to(torch.from_numpy(self.updated_np)), persistent=False)
        self.all_updated = bool(self.updated_np.all())
        self.c_is_one = []
        for i, f in enumerate(self.soft_fns):
            cf = qw[f] / safe
            self._weights(f"c_soft{i}", cf, to)
            self.c_is_one.append(bool(np.all(cf == 1.0)))
        safe_all = np.where(den_all > 0, den_all, 1.0)
        #: per other type: [(query-then-key index buffer name, G, nq, nk), ...] of its key sets stacked by shape
        self._flat: list = []
        fused_idx, fused_coef = [], []
        for i, f in enumerate(self.other_fns):
            g = plan.groups[f]
            sg = segment_grid(n, g.q0, g.q1, g.k0, g.k1, g.weight)
            q_packed = np.flatnonzero(plan.query_weight[f] > 0)
            k_packed = np.flatnonzero(merge_cover(n, g.k0, g.k1))
            set_of_q, sets = group_key_sets(sg.grid, sg.row_segment_of(n), sg.col_segment_of(n),
                                            q_packed, k_packed, query_block_ids(plan, g, sg.row_bounds))
            q_can, k_can = plan.perm[q_packed], plan.perm[k_packed]
            coef = (qw[f] / safe_all)[q_can]
            arrays = [("q", q_can), ("k", k_can), ("set", set_of_q), ("sets", sets), ("coef", coef)]
            # a per-key-set type: the key sets of equal shape, stacked (one call per shape), their
            # index vectors flattened here once; the rows they output, in order, and their weights
            buckets = [_ascending(b, n) for b in shape_buckets(set_of_q, sets, q_can, k_can, coef)]
            flat = []
            for j, (bq, bk, _) in enumerate(buckets):  # query then key indices in one vector
                arrays.append((f"b{j}_qkf", np.concatenate([bq.reshape(-1), bk.reshape(-1)])))
                flat.append((f"o{i}_b{j}_qkf", int(bq.shape[0]), int(bq.shape[1]), int(bk.shape[1]),
                             strided_blocks(bq, bk, n)))  # slices instead of gathers (block_views.py)
            rows = np.concatenate([bq.reshape(-1) for bq, _, _ in buckets] or [np.zeros(0, np.int64)])
            rows_coef = np.concatenate([bc for _, _, bc in buckets] or [np.zeros(0)])
            arrays += [("rows", rows), ("rows_coef", rows_coef.reshape(1, -1, 1)), ("coef3", coef.reshape(1, -1, 1))]
            fused_idx.append(rows)
            fused_coef.append(rows_coef)
            self._flat.append(flat)
            setattr(self, f"o{i}_nb", len(buckets))
            # an exact-mask type may run either way: per key set when that reads far fewer pairs
            pairs_sets = sum(bq.size * bk.shape[1] for bq, bk, _ in buckets)
            setattr(self, f"o{i}_sets_cheaper", 2 * pairs_sets <= len(q_can) * len(k_can))
            for name, arr in arrays:
                if name in ("rows_coef", "coef3"):
                    self._weights(f"o{i}_{name}", arr, to)
                    continue
                t = torch.from_numpy(np.ascontiguousarray(arr))  # coef: float64, cast at use
                self.register_buffer(f"o{i}_{name}", to(t), persistent=False)
        # every type run per key set (the usual case): ONE scatter of all their rows, whose index
        # and weights are concatenated here
        if self.other_fns:
            rows_all = np.concatenate(fused_idx)
            self.register_buffer("fused_rows", to(torch.from_numpy(rows_all)), persistent=False)
            self._weights("fused_coef", np.concatenate(fused_coef).reshape(1, -1, 1), to)
            #: every row written once: run_module_groups may add into a given tensor directly
            self.fused_unique = len(np.unique(rows_all)) == len(rows_all)
        self.other_names = list(self.other_fns)
        #: fn -> (src, dst) of its connections, named when its module is refused (type_dtypes.py)
        self.type_connections = {f: type_connections(plan, f) for f in self.other_fns}

    def _weights(self, name: str, arr: np.ndarray, to) -> None:
        """Register float64 weights ``name`` and their float32 twin ``name_f32`` (see :func:`weights`)."""
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
        self.register_buffer(name, to(t), persistent=False)
        self.register_buffer(f"{name}_f32", to(t.float()), persistent=False)

    def key_mask(self, i: int) -> torch.Tensor:
        """``(Nq, Nk)`` bool key mask of the i-th non-softmax group (its queries x its union of
        keys), what an exact-mask type is given."""
        return getattr(self, f"o{i}_sets").index_select(0, getattr(self, f"o{i}_set"))

    def key_sets_cheaper(self, i: int) -> bool:
        """True when the i-th group's key sets, stacked by shape, hold at most half the (query, key)
        pairs of one masked call over the union of its keys."""
        return bool(getattr(self, f"o{i}_sets_cheaper", False))

    def key_set_buckets(self, i: int):
        """``[(Q (G, nq), K (G, nk), coef (G * nq,)), ...]`` of the i-th non-softmax group: its key
        sets stacked by shape, indices into the runner's positions (see ``runtime/key_sets.py``)."""
        out, start, coef = [], 0, getattr(self, f"o{i}_rows_coef").reshape(-1)
        for qf, kf, G, nq, nk, *_ in self.flat_buckets(i):
            out.append((qf.reshape(G, nq), kf.reshape(G, nk), coef[start:start + G * nq]))
            start += G * nq
        return out

    def flat_buckets(self, i: int):
        """``[(qf (G*nq,), kf (G*nk,), G, nq, nk, qkf, blocks), ...]`` of the i-th non-softmax group:
        the index vectors of :meth:`key_set_buckets`, flattened (what :func:`run_flat_buckets`
        takes); ``qf`` and ``kf`` are the two parts of the one buffer ``qkf`` (for a single gather
        of both); ``blocks``: the bucket as strided blocks (``runtime/block_views.py``) or None."""
        out = []
        for name, G, nq, nk, blocks in self._flat[i]:
            qkf = getattr(self, name)
            out.append((qkf[:G * nq], qkf[G * nq:], G, nq, nk, qkf, blocks))
        return out

    def extra_repr(self) -> str:
        return (f"n={self.n}, softmax={self.soft_fns}, other={self.other_fns}, "
                f"kernels={self.describe_kernels()}")

    def describe_kernels(self) -> Dict[str, str]:
        """fn type -> the kernel that runs it here (``"sdpa"`` for plain attention, the reference
        kernel with its mode, a backend's class name, or ``"module"`` for a type's own module)."""
        out: Dict[str, str] = {}
        for i, f in enumerate(self.soft_fns):
            if self.full:
                out[f] = "sdpa (dense: every pair linked)"
                continue
            k = self.kernels[f"k{i}"]
            mode = getattr(k, "mode", None)
            name = self.kernel_names.get(f) or REFERENCE_KERNEL
            out[f] = f"{name} ({mode})" if mode else f"{name} ({type(k).__name__})"
        for f in self.other_fns:
            out[f] = "module"
        return out


def weights(ex: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The runner's weights ``name`` in ``dtype``: the float64 buffer, or its float32 twin, when one
    of them already has that dtype (no conversion is run or traced: the usual float32 model gets
    the twin, rounded once at build as a cast at use would round it), else the float64 one cast.
    ``module.to(dtype)`` converts both alike, so whichever matches holds the same values."""
    t = getattr(ex, name)
    if t.dtype == dtype:
        return t
    t32 = getattr(ex, f"{name}_f32", None)
    return t32 if t32 is not None and t32.dtype == dtype else t.to(dtype)


def mix_softmax_groups(ex: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                       dropout_p: float = 0.0) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Run every softmax group of ``ex`` on ``q, k, v`` ``(B, H, N, d)`` (the runner's order; any
    number of heads) and mix them per query: returns ``(out (B, H, N, d), csum)`` with
    ``out = sum_f c_f(p) o_f(p)`` (``o_f`` is 0 where f gives p no key) and ``csum`` ``(N,)`` the
    sum of the ``c_f`` (None when every query has weight exactly 1 on a single type);
    ``(None, None)`` when there is no softmax group.  ``ex``: a :class:`PlanRunner`, or
    ``CanvasAttention``'s executor (same attributes).  Both paths call this function."""
    if not ex.soft_fns:
        return None, None
    if getattr(ex, "full", False):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale), None
    mixed, csum = None, None
    for i, kern in enumerate(ex.kernels.values()):
        o = kern(q, k, v, scale=scale, dropout_p=dropout_p)  # (B, H, N, d)
        if len(ex.soft_fns) == 1 and ex.c_is_one[0]:
            return o, None  # every position updated by this one type only: weight 1
        c = weights(ex, f"c_soft{i}", q.dtype)
        o = o * c[None, None, :, None]
        mixed = o if mixed is None else mixed + o
        csum = c if csum is None else csum + c
    return mixed, csum


def run_module_groups(ex: Any, x: torch.Tensor, modules: Mapping[str, nn.Module],
                      gates: Optional[Mapping[str, Optional[torch.Tensor]]] = None,
                      into: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Run each non-softmax type's module on ``x`` ``(B, N, D)`` over its linked sets and return
    ``sum_g gate_g * c_g(p) * out_g(p)`` scattered to ``(B, N, D)`` (None when the plan has no such
    type).  A type is called once per shape of key set, its key sets of that shape stacked along the
    batch (``runtime/type_call.py``); an exact-mask type once instead: queries = the positions it
    updates, keys = values = the union of its keys, ``key_mask`` = linked, unless it is one of
    canvas-core's own and its key sets hold at most half the pairs.  ``modules`` / ``gates`` are
    keyed by fn type (a gate of None: no gate).

    Everything that depends only on the plan was built with the runner: flat index vectors, the
    rows each call outputs and their weights; the outputs of all types are concatenated and
    weighted once and land in ONE ``index_add`` (in type order, as one ``index_add`` per type would
    add them), so a traced call holds the gathers, the modules and three more operations.

    ``into`` ``(B, N, D)`` (optional): a fresh tensor the caller hands over (it may be updated in
    place; not a leaf), returned plus the sum: the rows are added to it directly when each is
    written once (no zero tensor, no copy, no extra ``(B, N, D)`` addition; same values)."""
    if not ex.other_names:
        return None
    with tangent_drops_refused():  # a custom operator's dropped jvp tangent is refused, not summed
        return _run_module_groups(ex, x, modules, gates, into)


def _run_module_groups(ex: Any, x: torch.Tensor, modules: Mapping[str, nn.Module],
                       gates: Optional[Mapping[str, Optional[torch.Tensor]]],
                       into: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    outs, rows, coefs = [], [], []
    fused = True  # every type per key set: the runner's concatenated rows and weights apply
    for i, f in enumerate(ex.other_names):
        module = modules[f]
        gate = None if gates is None else gates.get(f)
        try:  # free unless raised: a refusal of the module (its dtype, its device) names the connections
            # canvas-core's own exact types give the same rows either way: per key set when cheaper
            if runs_per_key_set(module) or (ex.key_sets_cheaper(i) and is_builtin_module(module)):
                parts = run_flat_buckets(module, x, x, x, ex.flat_buckets(i), name=f)
                rows.append(getattr(ex, f"o{i}_rows"))
                coefs.append(f"o{i}_rows_coef")
            else:
                fused = False
                qi, ki = getattr(ex, f"o{i}_q"), getattr(ex, f"o{i}_k")
                kv = x.index_select(1, ki)
                q = x.index_select(1, qi)
                parts = [call_exact_masked(module, q, kv, kv, ex.key_mask(i), f)]
                rows.append(qi)
                coefs.append(f"o{i}_coef3")
        except ShapeError as exc:  # the same error, named: its cause (torch's error) and frames kept
            named = naming_connections(exc, f, getattr(ex, "type_connections", {}).get(f))
            if named is exc:
                raise
            raise named.with_traceback(exc.__traceback__) from exc.__cause__
        if gate is not None:
            parts = [p * gate.to(p.dtype) for p in parts]
        outs.extend(parts)
    if not outs:
        return None
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    if fused:
        idx, coef = ex.fused_rows, weights(ex, "fused_coef", o.dtype)
    else:
        idx, coef = torch.cat(rows), torch.cat([weights(ex, c, o.dtype) for c in coefs], dim=1)
    o = o * coef
    if into is not None and fused and getattr(ex, "fused_unique", False) and into.dtype == o.dtype:
        return into.index_add_(1, idx, o)
    B, N, _ = x.shape
    out = o.new_zeros(B, N, o.shape[-1]).index_add(1, idx, o)
    return out if into is None else into + out

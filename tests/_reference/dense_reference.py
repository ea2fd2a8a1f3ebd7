"""The slow, obvious, dense reference of DESIGN.md's canvas attention layer.

Independent of the lowering code on purpose: it enumerates positions one by one and re-derives
the temporal rules from DESIGN.md ("Temporal semantics") from scratch.

Load it from a test (works under ``--import-mode=importlib``)::

    import importlib.util, pathlib, sys
    _P = pathlib.Path(__file__).resolve().parents[1] / "_reference" / "dense_reference.py"
    ref = sys.modules.get("canvas_dense_reference")
    if ref is None:
        _s = importlib.util.spec_from_file_location("canvas_dense_reference", _P)
        ref = importlib.util.module_from_spec(_s); sys.modules[_s.name] = ref; _s.loader.exec_module(ref)
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch


# ---- geometry by enumeration -------------------------------------------------------------------
def positions(layout) -> List[Tuple[int, ...]]:
    """Coordinates ``(t, s0, s1, ...)`` of every canonical position, in canonical order."""
    shape = tuple(layout.spatial_shape or ())
    return list(itertools.product(range(layout.T), *[range(s) for s in shape]))


def region_members(layout, name) -> Dict[int, List[int]]:
    """frame -> canonical indices of the region at that frame (by testing every position)."""
    b = tuple(layout.region_spec(name).bounds)
    out: Dict[int, List[int]] = {}
    for i, c in enumerate(positions(layout)):
        if all(b[2 * d] <= c[d] < b[2 * d + 1] for d in range(len(c))):
            out.setdefault(c[0], []).append(i)
    return out


def _fill(target: int, frames: Sequence[int], period: int, mode: str, order: int) -> List[Tuple[int, float]]:
    """(frame, weight) linked for real frame ``target`` among region frames (written from DESIGN.md)."""
    real = {f: f * period for f in frames}
    exact = [f for f in frames if real[f] == target]
    if exact:
        return [(f, 1.0) for f in exact]
    if mode == "drop":
        return []
    earlier = [f for f in frames if real[f] < target]
    later = [f for f in frames if real[f] > target]
    e = max(earlier, key=lambda f: real[f]) if earlier else None
    l_ = min(later, key=lambda f: real[f]) if later else None
    if mode == "hold":
        return [(e, 1.0)] if e is not None else []
    if order <= 1:
        if e is not None and l_ is not None:
            de, dl = target - real[e], real[l_] - target
            return [(e, dl / (de + dl)), (l_, de / (de + dl))]
        if e is not None:
            return [(e, 1.0)]
        return [(l_, 1.0)] if l_ is not None else []
    ranked = sorted(frames, key=lambda f: (abs(real[f] - target), real[f]))[: order + 1]
    inv = {f: abs(real[f] - target) ** -float(order) for f in ranked}
    s = sum(inv.values())
    return [(f, v / s) for f, v in inv.items()]


def connection_pairs(conn, layout) -> Dict[Tuple[int, int], float]:
    """(query, key) -> largest weight, for one connection, by brute force over reference frames."""
    src = region_members(layout, conn.src)
    dst = region_members(layout, conn.dst)
    ps = layout.region_spec(conn.src).period
    pd = layout.region_spec(conn.dst).period
    mode = str(getattr(conn.temporal_fill, "value", conn.temporal_fill)).lower()
    out: Dict[Tuple[int, int], float] = {}

    def link(qs, ks, w):
        for q in qs:
            for k in ks:
                if w > out.get((q, k), 0.0):
                    out[(q, k)] = w

    mask = getattr(conn, "mask", None)
    if mask is not None and str(getattr(mask, "kind", "full")) != "full":
        from canvas_core.schema.masks import mask_to_index_pairs

        allowed = {(q, k) for qs, ks in mask_to_index_pairs(mask, layout, conn.src, conn.dst)
                   for q in qs for k in ks}
        inner = link

        def link(qs, ks, w):  # noqa: F811 - the mask restricts which pairs link
            for q in qs:
                for k in ks:
                    if (q, k) in allowed:
                        inner([q], [k], w)

    all_src = [i for f in src for i in src[f]]
    all_dst = [i for f in dst for i in dst[f]]
    if conn.t_src is None and conn.t_dst is None:
        link(all_src, all_dst, conn.weight)
        return out
    for ref in range(layout.T):
        if conn.t_src is None:
            qs = all_src
        else:
            qs = src.get(ref + conn.t_src, [])
            if not qs:
                continue
        if conn.t_dst is None:
            link(qs, all_dst, conn.weight)
            continue
        target = (ref + conn.t_dst) * (ps if conn.t_src is not None else 1)
        for f, fw in _fill(target, sorted(dst), pd, mode, conn.interpolation_order):
            link(qs, dst[f], conn.weight * fw)
    return out


def weight_matrices(topology, layout, resolve: Optional[Callable] = None):
    """Per fn type: dense ``W_f`` (N, N) float64 (largest weight) and ``Wq_f`` (N,) total weight
    of the type's connections that link each query to at least one key."""
    n = len(positions(layout))
    resolve = resolve or (lambda c: topology.resolve_fn(c, layout))
    W: Dict[str, torch.Tensor] = {}
    Wq: Dict[str, torch.Tensor] = {}
    for conn in topology.connections:
        fn = resolve(conn)
        M = W.setdefault(fn, torch.zeros(n, n, dtype=torch.float64))
        q = Wq.setdefault(fn, torch.zeros(n, dtype=torch.float64))
        queries = set()
        for (i, j), w in connection_pairs(conn, layout).items():
            M[i, j] = max(M[i, j].item(), w)
            queries.add(i)
        for i in queries:
            q[i] += conn.weight
    return W, Wq


def query_blocks(topology, layout, fn: str, resolve: Optional[Callable] = None) -> Dict[int, Tuple]:
    """query -> its query block for type ``fn`` (DESIGN.md, "Semantics of a canvas attention
    layer"): the connections of ``fn`` that link it, and its canvas frame when one of them has
    ``t_src`` set (None when none has).  A per-key-set type is called once per block and key set."""
    resolve = resolve or (lambda c: topology.resolve_fn(c, layout))
    V = len(positions(layout)) // layout.T if layout.T else 0
    linked_by: Dict[int, set] = {}
    tied: Dict[int, bool] = {}
    for ci, conn in enumerate(topology.connections):
        if resolve(conn) != fn:
            continue
        for q in {i for i, _ in connection_pairs(conn, layout)}:
            linked_by.setdefault(q, set()).add(ci)
            tied[q] = tied.get(q, False) or conn.t_src is not None
    return {q: (frozenset(cs), q // V if tied[q] else None) for q, cs in linked_by.items()}


def per_block_call(module, x, Wf, blocks) -> torch.Tensor:
    """A per-key-set type run as DESIGN.md says, one plain call per (query block, key set): the
    block's queries and its keys in canonical order, no mask; 0 for queries without keys."""
    out = torch.zeros_like(x)
    calls: Dict[Tuple, List[int]] = {}
    for q, block in blocks.items():
        keys = tuple(torch.nonzero(Wf[q] > 0).flatten().tolist())
        if keys:
            calls.setdefault((block, keys), []).append(q)
    for (_, keys), qs in calls.items():
        qs, ks = sorted(qs), list(keys)
        out[:, qs] = module(x[:, qs], x[:, ks], x[:, ks]).to(out.dtype)
    return out


def reference_mask(topology, layout) -> torch.Tensor:
    """Brute-force ``to_attention_mask``: (N, N) float64 largest weight over all connections."""
    n = len(positions(layout))
    M = torch.zeros(n, n, dtype=torch.float64)
    for conn in topology.connections:
        for (i, j), w in connection_pairs(conn, layout).items():
            M[i, j] = max(M[i, j].item(), w)
    return M


# ---- the layer ---------------------------------------------------------------------------------
def softmax_attention(x, W, w_qkv, b_qkv, w_out, b_out, n_heads: int, beta: float = 1.0):
    """One softmax attention of every query over keys with ``W > 0``, bias ``log W``.

    x: (B, N, D); W: (N, N) -> (B, N, D).  A query with no key gets exactly 0 (it is not
    updated by this type; its combination weight is 0 anyway).
    """
    B, N, D = x.shape
    dh = D // n_heads
    qkv = x @ w_qkv.T + b_qkv
    q, k, v = qkv.split(D, dim=-1)
    q, k, v = (t.reshape(B, N, n_heads, dh).transpose(1, 2) for t in (q, k, v))
    scores = beta * (q @ k.transpose(-1, -2)) / math.sqrt(dh)
    allowed = W > 0
    bias = torch.where(allowed, W.clamp_min(1e-300).log(), torch.full_like(W, -math.inf))
    scores = scores + bias
    out = torch.zeros_like(q)
    has = allowed.any(dim=1)
    if has.any():
        p = torch.softmax(scores[:, :, has], dim=-1)
        out[:, :, has] = p @ v
    out = out.transpose(1, 2).reshape(B, N, D) @ w_out.T + b_out
    return out * has[None, :, None].to(out.dtype)


def reference_layer(x, topology, layout, *, softmax_params, n_heads, beta=1.0,
                    other_modules: Optional[Dict[str, Callable]] = None,
                    softmax_types=("cross_attention", "self_attention"), resolve=None,
                    per_block_types=()):
    """DESIGN.md's layer: ``sum_f W_f(p) out_f(p) / sum_f W_f(p)``, passthrough elsewhere.

    softmax_params: (w_qkv (3D, D), b_qkv (3D,), w_out (D, D), b_out (D,)) shared by softmax types.
    other_modules: fn -> module(queries, keys, values, key_mask) for the other types; the
    reference calls it on *all* positions with ``key_mask = W_f > 0`` (N, N), except for the types
    in ``per_block_types`` (types that scan or compress), which :func:`per_block_call` runs.
    """
    W, Wq = weight_matrices(topology, layout, resolve)
    x = x.to(torch.float64)
    num = torch.zeros_like(x)
    den = torch.zeros(x.shape[1], dtype=torch.float64)
    for fn, Wf in W.items():
        if fn in softmax_types:
            out = softmax_attention(x, Wf, *softmax_params, n_heads=n_heads, beta=beta)
        elif fn in per_block_types:
            out = per_block_call(other_modules[fn], x, Wf, query_blocks(topology, layout, fn, resolve))
        else:
            out = other_modules[fn](x, x, x, key_mask=(Wf > 0))
        num = num + Wq[fn][None, :, None] * out
        den = den + Wq[fn]
    upd = den > 0
    y = x.clone()
    y[:, upd] = num[:, upd] / den[upd][None, :, None]
    return y

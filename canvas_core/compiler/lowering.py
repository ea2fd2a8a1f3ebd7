"""Lowering: a topology on a layout -> :class:`~canvas_core.compiler.plan.ExecutionPlan`.

No torch, no N x N: the work is O(connections x timesteps) Python plus O(N) numpy for packing.

Packing (see also ``plan.py``): regions are packed in declaration order, each frame by frame.
Each canonical position is packed once, with the first region that declares it; an overlapping
later region therefore covers, at a frame, several packed ranges (its own fresh positions plus
the ranges of earlier regions it shares).  Without overlap every region-frame is exactly one
contiguous packed range and a region's frames are adjacent, so a connection over all frames is a
single rectangle.  Uncovered positions come last and pass through.

Each link ``(src_frames, dst_frame, w)`` of :func:`~canvas_core.compiler.temporal.connection_links`
becomes the rectangles ``q_runs x k_runs`` (runs of the source frames merged, runs of the
destination frame).  Rectangles of one connection that share their query range and weight are
merged along keys (so ``t_src = t_dst = None`` is one rectangle).

Connections with a non-full ``MaskSpec`` are intersected with the temporal links through
``canvas_core.schema.masks.mask_to_index_pairs`` (read as numpy arrays, ``mask_index_arrays``;
see :func:`_mask_rects`): each ``(src_indices, dst_indices)`` pair, restricted to the link's frames,
becomes the product of the packed runs of both sides.  Those rectangles are built as arrays over
all pairs and links at once (:mod:`canvas_core.compiler.mask_lowering`): a mask of a million
rectangles lowers in about a second, not minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np

from canvas_core.compiler.mask_cost import MaskCost, mask_cost
from canvas_core.compiler.mask_lowering import RectArrays, mask_pair_rects, merged_runs
from canvas_core.compiler.plan import ExecutionPlan, RectGroup
from canvas_core.compiler.temporal import link_count_bound, link_ranges, region_frames
from canvas_core.errors import CanvasTypeError, UnknownRegionError, brief_number, did_you_mean, user_stacklevel
from canvas_core.schema.limits import check_bytes, check_size, limit
from canvas_core.schema.mask_pairs import mask_index_arrays
from canvas_core.schema.staleness import check_topology_unchanged, check_unchanged, layout_stamp, topology_stamp
from canvas_core.schema.topology import DEFAULT_FN, check_connection_regions

__all__ = ["lower", "restrict", "region_canonical_indices", "runs_of"]

Runs = List[Tuple[int, int]]


def _region_names(layout: Any) -> Tuple[str, ...]:
    names = getattr(layout, "region_names", None)
    return tuple(names) if names is not None else tuple(layout.regions)


def _spatial_shape(layout: Any) -> Tuple[int, ...]:
    return tuple(int(s) for s in (getattr(layout, "spatial_shape", None) or ()))


def region_canonical_indices(layout: Any, name: str) -> np.ndarray:
    """``(frames, positions_per_frame)`` int64 canonical indices of a region (bounds clipped)."""
    shape = _spatial_shape(layout)
    b = tuple(layout.region_spec(name).bounds)
    t0, t1, _ = region_frames(layout, name)
    vol = int(np.prod(shape)) if shape else 1
    strides = [int(np.prod(shape[i + 1:])) if i + 1 < len(shape) else 1 for i in range(len(shape))]
    off = np.zeros(1, dtype=np.int64)
    for d, size in enumerate(shape):
        lo, hi = max(0, int(b[2 + 2 * d])), min(size, int(b[3 + 2 * d]))
        ax = np.arange(lo, max(lo, hi), dtype=np.int64) * strides[d]
        off = (off[:, None] + ax[None, :]).reshape(-1)
    frames = np.arange(t0, t1, dtype=np.int64) * vol
    return frames[:, None] + off[None, :]


def runs_of(sorted_idx: np.ndarray) -> Runs:
    """Maximal runs ``[(start, stop), ...]`` of consecutive integers in a sorted array."""
    if sorted_idx.size == 0:
        return []
    cut = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [sorted_idx.size]])
    return [(int(sorted_idx[a]), int(sorted_idx[b - 1]) + 1) for a, b in zip(starts, stops)]


def _merge(runs: Sequence[Tuple[int, int]]) -> Runs:
    if len(runs) == 1:
        return [runs[0]]
    out: Runs = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


class _Packing:
    """Region-major packing of canonical positions (see the module docstring)."""

    def __init__(self, layout: Any) -> None:
        shape = _spatial_shape(layout)
        self.vol = int(np.prod(shape)) if shape else 1
        self.n = int(layout.T) * self.vol
        self.names = _region_names(layout)
        seen = np.zeros(self.n, dtype=bool)
        parts: List[np.ndarray] = []
        self.idx: Dict[str, np.ndarray] = {}
        self.t0: Dict[str, int] = {}
        for name in self.names:
            idx = region_canonical_indices(layout, name)
            self.idx[name] = idx
            self.t0[name] = region_frames(layout, name)[0]
            flat = idx.reshape(-1)
            fresh = flat[~seen[flat]]
            seen[fresh] = True
            parts.append(fresh)
        self.n_covered = int(sum(p.size for p in parts))
        parts.append(np.flatnonzero(~seen))
        self.perm = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        self.inv = np.empty(self.n, dtype=np.int64)
        self.inv[self.perm] = np.arange(self.n, dtype=np.int64)
        self.blocks: Dict[str, Dict[int, Runs]] = {}
        for name in self.names:
            idx = self.idx[name]
            fr: Dict[int, Runs] = {}
            if idx.size:
                packed = np.sort(self.inv[idx], axis=1)
                first, last = packed[:, 0], packed[:, -1]
                contiguous = (last - first) == (packed.shape[1] - 1)
                t0 = self.t0[name]
                # one run per frame without overlap: built from whole columns, not frame by frame
                fr = {t0 + i: [(a, b)] for i, (a, b) in enumerate(zip(first.tolist(), (last + 1).tolist()))}
                for i in np.flatnonzero(~contiguous).tolist():
                    fr[t0 + i] = runs_of(packed[i])
            self.blocks[name] = fr

    def frame_runs(self, name: str, t: int) -> Runs:
        return self.blocks[name].get(t, [])

    def frames_runs(self, name: str, frames: Sequence[int]) -> Runs:
        runs: Runs = []
        for t in frames:
            runs.extend(self.blocks[name].get(t, []))
        return _merge(runs)


def _mask_is_full(mask: Any) -> bool:
    return mask is None or str(getattr(mask, "kind", "full")) == "full"


def _mask_rects(conn: Any, layout: Any, pk: _Packing, links: Sequence[Tuple[int, int, int, float]]
                ) -> Tuple[RectArrays, Tuple[np.ndarray, np.ndarray]]:
    """Rectangles of a connection with a non-full ``MaskSpec``: mask pairs x temporal links
    (numpy over all pairs and links; see :mod:`canvas_core.compiler.mask_lowering`), and the
    query runs they use."""
    pairs = mask_index_arrays(conn.mask, layout, conn.src, conn.dst)
    return mask_pair_rects(pairs, pk.inv, pk.vol, links)


def _full_rects(conn: Any, pk: _Packing, links: Sequence[Tuple[int, int, int, float]]
                ) -> List[Tuple[int, int, int, int, float]]:
    """Rectangles of a connection without a mask: the source runs of each link x the runs of
    its destination frame, merged along keys per (source frames, weight).

    Keys and caches are the frame range ``(lo, hi)``, never the frames themselves, so each link
    costs O(1) whatever T (two ranges of one region's frames give the same runs only when both are
    empty, which are skipped).
    """
    by_q: Dict[Tuple[int, int, float], Tuple[Runs, Runs]] = {}
    q_cache: Dict[Tuple[int, int], Runs] = {}
    for lo, hi, dst_frame, w in links:
        q = q_cache.get((lo, hi))
        if q is None:
            q = q_cache[(lo, hi)] = pk.frames_runs(conn.src, range(lo, hi))
        k = pk.frame_runs(conn.dst, dst_frame)
        if q and k:
            entry = by_q.get((lo, hi, w))
            if entry is None:
                entry = by_q[(lo, hi, w)] = (q, [])
            entry[1].extend(k)
    return [(a, b, c, d, w) for (_, _, w), (q, ks) in by_q.items() for (a, b) in q for (c, d) in _merge(ks)]


def _connection_rects(conn: Any, layout: Any, pk: _Packing, links: Sequence[Tuple[int, int, int, float]]
                      ) -> Tuple[RectArrays, Tuple[np.ndarray, np.ndarray]]:
    """The rectangles of one connection and query ranges with the same union as theirs."""
    out = _full_rects(conn, pk, links) if _mask_is_full(getattr(conn, "mask", None)) else \
        _mask_rects(conn, layout, pk, links)
    if isinstance(out, list):  # (q0, q1, k0, k1, w) tuples: the dense path (or a test's reference)
        rects = RectArrays.from_tuples(out)
        return rects, (rects.q0, rects.q1)
    return out


def _resolver(topology: Any, layout: Any, resolve_fn: Union[bool, Callable, Sequence[str]]) -> Callable[[int, Any], str]:
    if isinstance(resolve_fn, (list, tuple)):
        if len(resolve_fn) != len(topology.connections):
            raise CanvasTypeError(f"lower(resolve_fn=[...]) needs one fn type per connection "
                                  f"({len(topology.connections)}), got {len(resolve_fn)}")
        return lambda i, c: _fn_name(resolve_fn[i], i, c)
    if callable(resolve_fn):
        return lambda i, c: _fn_name(resolve_fn(c, layout), i, c)
    if resolve_fn:
        return lambda i, c: str(topology.resolve_fn(c, layout))
    return lambda i, c: DEFAULT_FN


def _fn_name(fn: Any, i: int, conn: Any) -> str:
    """A fn type given through ``lower(resolve_fn=...)``: a non-empty string (None or 5 became the
    types "None" and "5")."""
    if not isinstance(fn, str) or not fn.strip():
        raise CanvasTypeError(f"lower(resolve_fn=...): the fn type of connection #{i} ({conn.src!r} -> {conn.dst!r}) "
                              f"must be a non-empty string (an attention type name), got {fn!r:.80}")
    return fn


def _check(topology: Any, layout: Any) -> None:
    if not hasattr(topology, "connections"):
        raise CanvasTypeError(f"lower() needs a CanvasTopology, got {type(topology).__name__}")
    if not hasattr(layout, "region_spec") or not hasattr(layout, "T"):
        raise CanvasTypeError(f"lower() needs a CanvasLayout, got {type(layout).__name__}")
    # the constructors check these; lists appended to afterwards are checked here, before any work
    check_size("connections", len(topology.connections), "CanvasTopology number of connections",
               "Connect fewer region pairs (e.g. a hub or a chain instead of all pairs)")
    check_size("regions", len(layout.regions), "CanvasLayout number of regions", "Use fewer regions")
    for name, spec in layout.regions.items():
        if not hasattr(spec, "bounds"):
            raise CanvasTypeError(
                f"CanvasLayout region {name!r} is a {type(spec).__name__} ({spec!r:.80}), not a RegionSpec: it "
                "was put into layout.regions after the layout was built, so its bounds were never checked; "
                "build a new CanvasLayout(..., regions={...}) that declares it")
    for i, c in enumerate(topology.connections):
        if not (hasattr(c, "src") and hasattr(c, "dst")):
            raise CanvasTypeError(f"CanvasTopology connection #{i} must be a Connection, got "
                                  f"{type(c).__name__} ({c!r:.80}); write Connection(src=..., dst=...)")
    check_connection_regions(topology.connections, _region_names(layout))  # what topology.validate checks


def lower(topology: Any, layout: Any, *, resolve_fn: Union[bool, Callable, Sequence[str]] = True,
          warn_unlinked: bool = True) -> ExecutionPlan:
    """Lower ``topology`` on ``layout`` to an :class:`ExecutionPlan`.

    This is where a connection's fn type is read, once per connection (``topology.resolve_fn``:
    its ``fn``, else its source region's ``default_attn``); the plan keeps the answers in
    ``fn_of_connection`` and groups the rectangles by them.  Which implementation runs each
    group is decided later, by :func:`canvas_core.compiler.resolution.resolve_plan`.

    Args:
        topology: a ``CanvasTopology``.
        layout: a ``CanvasLayout``.
        resolve_fn: True: group connections by ``topology.resolve_fn(conn, layout)``; False: put
            every connection in ``"cross_attention"``; a callable ``(conn, layout) -> str``: use
            it; a list of fn names: the type of each connection, in order.
        warn_unlinked: warn (``UserWarning``) about each connection that links no pair of
            positions on this layout (it has no effect; usually offsets past the regions' frames).
    """
    start = time.perf_counter()
    _check(topology, layout)
    stamps = {"layout_stamp": layout_stamp(layout), "topology_stamp": topology_stamp(topology)}  # as lowered
    _check_frame_work(topology, layout)
    with _gc_paused():
        return _lower(topology, layout, resolve_fn, warn_unlinked, start, stamps)


#: bytes of the Python objects lowering makes per frame link while it lowers one connection (the
#: link, its key-run list entry, its rectangle and row: ~1 KiB measured, peak; freed before the next
#: connection), per rectangle that outlives it (a connection with both offsets set, or a mask, keeps
#: about one per link: its array entries and their copy when the fn type's rectangles are joined,
#: ~100 measured since rectangles are arrays) and per region frame (its packed-runs entry, kept)
_LINK_BYTES = 1100
_KEPT_LINK_BYTES = 150
_REGION_FRAME_BYTES = 250
#: per canvas position: the packing's permutation and its inverse, the query weights' sums
_POSITION_BYTES = 64


def _check_frame_work(topology: Any, layout: Any) -> None:
    """Refuse, before building anything, a lowering whose per-frame Python objects would exceed
    the byte limit (``CANVAS_MAX_BYTES``): without this a tiny file (one connection over 2**24
    frames) grows the process by many gigabytes before it fails.  The estimate is the largest
    connection's transient objects plus what outlives each connection (rectangles that do not merge
    across frames) plus the packing's per-region-frame entries.  A tile or sparse mask counts its
    index lists (transient) and its rectangles (kept) from its declared size (``mask_cost``)."""
    conns = list(topology.connections)
    counts = [link_count_bound(c, layout) for c in conns]
    masked = [i for i, c in enumerate(conns) if not _mask_is_full(getattr(c, "mask", None))]
    kept = sum(n for c, n in zip(conns, counts)
               if (c.t_src is not None and c.t_dst is not None) or getattr(c, "mask", None) is not None)
    frames = sum(max(0, b - a) for a, b, _ in (region_frames(layout, n) for n in _region_names(layout)))
    fixed = (_KEPT_LINK_BYTES * kept + _REGION_FRAME_BYTES * frames
             + _POSITION_BYTES * int(layout.num_positions))
    costs = {i: mask_cost(conns[i], layout, _conn_name(i, conns[i])) for i in masked}
    nbytes = _frame_work_bytes(counts, costs, fixed)
    if nbytes > limit("bytes") and costs:  # the cheap bound of a sparse pattern may be loose: count it
        costs = {i: mask_cost(conns[i], layout, _conn_name(i, conns[i]), exact=True) for i in masked}
        nbytes = _frame_work_bytes(counts, costs, fixed)
    if nbytes <= limit("bytes"):
        return
    mi = max(costs, key=lambda i: costs[i].transient_bytes + costs[i].kept_bytes, default=None)
    if mi is not None and 2 * (costs[mi].transient_bytes + costs[mi].kept_bytes) > nbytes:
        _refuse_mask(conns[mi], mi, costs[mi], nbytes, layout)
    ci = max(range(len(counts)), key=counts.__getitem__) if counts else 0
    worst = (f"{_conn_name(ci, conns[ci])} alone links up to {counts[ci]:,} frame pairs; " if counts else "")
    check_bytes(nbytes, f"lowering this topology on T={int(layout.T):,} frames ({worst}{kept:,} frame links kept "
                f"as rectangles over all connections, {frames:,} region frames; Python objects per frame)",
                "Use fewer frames (a smaller T, or a region period > 1) or fewer connections that pair "
                "every frame")


def _conn_name(i: int, conn: Any) -> str:
    return f"connection #{i} {conn.src!r} -> {conn.dst!r}"


def _frame_work_bytes(counts: Sequence[int], costs: Dict[int, MaskCost], fixed: int) -> int:
    """The estimate of :func:`_check_frame_work`: the largest connection's transient bytes (its
    links, or its mask's index lists) plus the masks' rectangles plus ``fixed``."""
    transient = [_LINK_BYTES * n for n in counts]
    for i, cost in costs.items():
        transient[i] = max(transient[i], cost.transient_bytes)
    return max(transient, default=0) + sum(c.kept_bytes for c in costs.values()) + fixed


def _refuse_mask(conn: Any, ci: int, cost: MaskCost, nbytes: int, layout: Any) -> None:
    """Refuse a lowering whose estimate is mostly one connection's tile or sparse mask."""
    check_bytes(nbytes, f"lowering {_conn_name(ci, conn)} with its {conn.mask.kind!r} mask on T={int(layout.T):,} "
                f"frames (up to {cost.rects:,} rectangles, mask pairs x temporal links x source frames, and "
                f"{cost.indices:,} listed position indices; with the rest of the topology)",
                "Use a coarser mask (larger tiles, a pattern of fewer and larger blocks), fewer frames, or "
                "offsets (t_src, t_dst) that pair fewer frames")


_GC_LOCK = threading.Lock()
_GC_STATE = {"depth": 0, "was": False}


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Lowering allocates millions of small acyclic objects; the cyclic collector would rescan them
    over and over (3x the time at T = 2**18).  Paused while any lowering runs: the collector is
    process-wide, so the first lowering to start pauses it and the last to end turns it back on
    if it was on when the first started (a caller that turned it off before keeps it off; one that
    turns it off in another thread while a lowering runs gets it back on at the end)."""
    with _GC_LOCK:
        if _GC_STATE["depth"] == 0:
            _GC_STATE["was"] = gc.isenabled()
            gc.disable()
        _GC_STATE["depth"] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_STATE["depth"] -= 1
            if _GC_STATE["depth"] == 0 and _GC_STATE["was"] and not gc.isenabled():
                gc.enable()


def _lower(topology: Any, layout: Any, resolve_fn: Union[bool, Callable, Sequence[str]], warn_unlinked: bool,
           start: float, stamps: Dict[str, Any]) -> ExecutionPlan:
    pk = _Packing(layout)
    resolve = _resolver(topology, layout, resolve_fn)
    per_fn: Dict[str, List[Tuple[RectArrays, int]]] = {}
    conns_of: Dict[str, List[int]] = {}
    fns: List[str] = []
    qw_diff: Dict[str, np.ndarray] = {}
    qw_count: Dict[str, np.ndarray] = {}
    for ci, conn in enumerate(topology.connections):
        fn = resolve(ci, conn)
        fns.append(fn)
        conns_of.setdefault(fn, []).append(ci)
        links = link_ranges(conn, layout)
        rects, queries = _connection_rects(conn, layout, pk, links)
        if not rects.n and warn_unlinked:
            _warn_links_nothing(ci, conn, layout)
        per_fn.setdefault(fn, []).append((rects, ci))
        # W_f(p): the connection's weight on every query it links (once per connection)
        if fn not in qw_diff:  # (not setdefault: that would allocate two (N,) arrays per connection)
            qw_diff[fn] = np.zeros(pk.n + 1, dtype=np.float64)
            qw_count[fn] = np.zeros(pk.n + 1, dtype=np.int64)
        starts, stops = merged_runs(*queries)  # disjoint, not touching: no index twice
        qw_diff[fn][starts] += float(conn.weight)
        qw_diff[fn][stops] -= float(conn.weight)
        qw_count[fn][starts] += 1
        qw_count[fn][stops] -= 1
    groups = {fn: _group(fn, chunks, conns_of[fn]) for fn, chunks in per_fn.items()}
    # a query no connection links gets exactly 0, not the round-off of the cumulative sum (the
    # exact integer count of linking connections says which; a tiny real weight is kept)
    query_weight = {fn: np.where(np.cumsum(qw_count[fn])[: pk.n] > 0, np.cumsum(d)[: pk.n], 0.0)
                    for fn, d in qw_diff.items()}
    return ExecutionPlan(
        layout=layout, topology=topology, n=pk.n, perm=pk.perm, inv_perm=pk.inv,
        n_covered=pk.n_covered, region_blocks=pk.blocks, groups=groups, fn_of_connection=fns,
        query_weight=query_weight, build_seconds=time.perf_counter() - start, **stamps,
    )


def _group(fn: str, chunks: List[Tuple[RectArrays, int]], conns: List[int]) -> RectGroup:
    """The rectangles of one fn type, its connections' chunks in connection order."""
    cat = [chunks[0][0][j] if len(chunks) == 1 else np.concatenate([r[j] for r, _ in chunks])
           for j in range(len(RectArrays._fields))]  # (one chunk: its arrays, not a copy)
    conn = np.concatenate([np.full(r.n, ci, dtype=np.int64) for r, ci in chunks])
    return RectGroup(fn, cat[0], cat[1], cat[2], cat[3], cat[4], conn, tuple(conns))


def _warn_links_nothing(ci: int, conn: Any, layout: Any) -> None:
    """A connection that links no (query, key) pair on this layout has no effect: almost always
    offsets that point past the regions' frames, or a mask that selects nothing. Say so."""
    import warnings

    s0, s1, ps = region_frames(layout, conn.src)
    d0, d1, pd = region_frames(layout, conn.dst)
    if conn.t_src is not None or conn.t_dst is not None:
        fill = getattr(conn.temporal_fill, "value", conn.temporal_fill)
        why = (f"its offsets t_src={brief_number(conn.t_src)}, t_dst={brief_number(conn.t_dst)} "
               f"(temporal_fill={fill!r}) pair no frame of "
               f"{conn.src!r} (canvas frames {s0}..{s1 - 1}, period {ps}) with a frame of {conn.dst!r} "
               f"(canvas frames {d0}..{d1 - 1}, period {pd}) within T={layout.T}")
    else:
        why = "its mask selects no pair of positions"
    warnings.warn(f"connection #{ci} {conn.src!r} -> {conn.dst!r} links nothing: {why}; it has no effect. "
                  "Check the offsets (or the fill / mask), or remove the connection", UserWarning,
                  stacklevel=user_stacklevel())


def restrict(plan: ExecutionPlan, source_regions: Any) -> ExecutionPlan:
    """The plan of the connections of ``plan`` whose source region is in ``source_regions``.

    The fn type of each kept connection is taken from ``plan.fn_of_connection`` (not read again)
    and every group keeps its resolution (``resolved``; the per-connection rows of the smaller plan
    are computed from it), so executing the smaller plan needs no registry either.
    """
    if isinstance(source_regions, (str, bytes)):
        raise CanvasTypeError(f"restrict: source_regions must be a set or list of region names, got the "
                              f"string {source_regions!r}; write {{{source_regions!r}}} for one region")
    try:
        keep = set(source_regions)
    except TypeError:
        raise CanvasTypeError(f"restrict: source_regions must be a set or list of region names (str), got "
                              f"{type(source_regions).__name__} {source_regions!r:.80}") from None
    names = _region_names(plan.layout)
    unknown = sorted(str(n) for n in keep - set(names))
    if unknown:  # (as CanvasAttention's active_regions) a typo would select nothing, silently
        raise UnknownRegionError(f"restrict: source_regions names unknown region(s) {unknown}; regions: "
                                 f"{sorted(names)}.{did_you_mean(unknown[0], names)}")
    topology = plan.topology
    # fn_of_connection is by index into the connections as lowered
    check_unchanged(plan.layout, plan.layout_stamp, "ExecutionPlan")
    check_topology_unchanged(topology, plan.topology_stamp, "ExecutionPlan",
                             "lower the plan again (lower(topology, layout)) and restrict that")
    idx = [i for i, c in enumerate(topology.connections) if c.src in keep]
    sub = lower(_sub_topology(topology, [topology.connections[i] for i in idx]), plan.layout,
                resolve_fn=[plan.fn_of_connection[i] for i in idx], warn_unlinked=False)
    groups = {fn: dataclasses.replace(g, resolved=plan.groups[fn].resolved) for fn, g in sub.groups.items()}
    return dataclasses.replace(sub, groups=groups)


def _sub_topology(topology: Any, connections: List[Any]) -> Any:
    try:
        return type(topology)(connections=list(connections))
    except Exception:  # a duck-typed topology: a bare holder of the connections will do
        class _Connections:
            pass

        view = _Connections()
        view.connections = list(connections)
        view.resolve_fn = getattr(topology, "resolve_fn", None)
        return view

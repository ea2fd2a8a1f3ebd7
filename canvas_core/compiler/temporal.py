"""Temporal resolution of one connection: which source frames link to which destination frame.

Pure Python, no torch.  This is the single place where the temporal semantics of
``DESIGN.md`` ("Temporal semantics") are implemented; masks, plans and the runtime are all
built from :func:`connection_links`.

Definitions (all frames are *absolute* canvas frames):

* a region with period ``p`` occupies the canvas frames ``t0 <= t < t1`` of its bounds (clipped
  to the canvas ``[0, T)``); canvas frame ``t`` of that region is real frame ``t * p``;
* ``t_src = t_dst = None``: every source frame links to every destination frame;
* otherwise, for each reference frame ``ref in range(T)``: the source frames are
  ``{ref + t_src}`` (all source frames when ``t_src`` is None; nothing when the region has no
  such frame).  When ``t_dst`` is None they link to every destination frame; otherwise the target
  is real frame ``R = (ref + t_dst) * p_src`` (``p_src`` the source period, 1 when ``t_src`` is
  None) and the destination frames are those whose real frame ``t * p_dst`` equals ``R``;
* when no destination frame sits at ``R`` the connection's ``temporal_fill`` decides:
  ``drop`` links nothing; ``hold`` links the nearest earlier frame (real frame ``< R``), if any;
  ``interpolate`` order 1 links the nearest earlier and later frames with weights
  ``d_later / (d_earlier + d_later)`` and ``d_earlier / (d_earlier + d_later)`` (only an earlier
  one: like hold; only a later one: that one with weight 1); order ``k > 1`` links the ``k + 1``
  nearest frames (ties broken towards the earlier frame) with weights ``1 / d^k`` normalised;
* every fill weight multiplies the connection weight.

A link ``(src_frames, dst_frame, weight)`` says: every source position at any frame of
``src_frames`` may attend to every destination position at ``dst_frame`` with ``weight``.  When
several reference frames produce the same ``(src_frames, dst_frame)`` pair the largest weight is
kept (the mask stores the largest weight linking two positions).  Cost is O(T) per connection
(O(T * k) for interpolation order k).
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import TopologyError

__all__ = ["Link", "region_frames", "connection_links", "link_ranges", "link_count_bound", "fill_frames"]

Link = Tuple[Tuple[int, ...], int, float]


def _fill_name(fill: Any) -> str:
    return str(getattr(fill, "value", fill)).lower()


def region_frames(layout: Any, name: str) -> Tuple[int, int, int]:
    """``(t0, t1, period)`` of region ``name``, frames clipped to ``[0, layout.T)``."""
    spec = layout.region_spec(name)
    b = tuple(spec.bounds)
    t0, t1 = max(0, int(b[0])), min(int(layout.T), int(b[1]))
    return t0, max(t0, t1), int(getattr(spec, "period", 1) or 1)


def _floor_div(a: int, b: int) -> int:
    return a // b


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def fill_frames(
    target: int, t0: int, t1: int, period: int, fill: Any, order: int = 1
) -> List[Tuple[int, float]]:
    """Destination frames and fill weights for real frame ``target`` of a region on ``[t0, t1)``.

    Returns ``[(dst_frame, weight), ...]`` (weights in ``(0, 1]``, not yet multiplied by the
    connection weight).  An exact match returns ``[(frame, 1.0)]`` whatever the fill mode.
    """
    _check_fill(period, order)
    return _fill(target, t0, t1, period, fill, order)


def _check_fill(period: Any, order: Any) -> None:
    if isinstance(period, bool) or not isinstance(period, numbers.Integral) or period < 1:
        raise TopologyError(f"fill_frames: period must be an int >= 1 (real frames per canvas frame), got {period!r}")
    if order is not None and (isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1):
        raise TopologyError(f"fill_frames: interpolation order must be an int >= 1 (1 = linear), got {order!r}")


def _fill(target: int, t0: int, t1: int, period: int, fill: Any, order: Any) -> List[Tuple[int, float]]:
    """:func:`fill_frames` without the argument checks (the caller made them once)."""
    if t1 <= t0:
        return []
    if target % period == 0 and t0 <= target // period < t1:
        return [(target // period, 1.0)]
    mode = _fill_name(fill)
    if mode == "drop":
        return []
    # nearest earlier frame: largest t with t * period < target; nearest later: smallest t > target
    earlier = min(t1 - 1, _ceil_div(target, period) - 1)
    later = max(t0, _floor_div(target, period) + 1)
    has_e, has_l = earlier >= t0, later < t1
    if mode == "hold":
        return [(earlier, 1.0)] if has_e else []
    if mode != "interpolate":
        raise TopologyError(f"unknown temporal_fill {fill!r}; use 'drop', 'hold' or 'interpolate'")
    order = int(order) if order is not None else 1
    if order <= 1:
        if has_e and has_l:
            de, dl = target - earlier * period, later * period - target
            return [(earlier, dl / (de + dl)), (later, de / (de + dl))]
        if has_e:
            return [(earlier, 1.0)]
        if has_l:
            return [(later, 1.0)]
        return []
    # order k > 1: the k + 1 nearest frames (two-pointer merge outward), weights 1/d^k normalised
    picked: List[Tuple[int, int]] = []
    e, lt = earlier, later
    while len(picked) < order + 1 and (e >= t0 or lt < t1):
        de = target - e * period if e >= t0 else None
        dl = lt * period - target if lt < t1 else None
        if dl is None or (de is not None and de <= dl):
            picked.append((e, de))
            e -= 1
        else:
            picked.append((lt, dl))
            lt += 1
    # (d_min / d)^k: the same normalised weights as 1/d^k, without overflow for a large order k;
    # int / int, because float(d) overflows for offsets like 10**400
    dmin = min(d for _, d in picked)
    inv = [(dmin / d) ** order for _, d in picked]
    s = sum(inv)
    out = [(f, w / s) for (f, _), w in zip(picked, inv)]
    out.sort()
    return out


def connection_links(conn: Any, layout: Any) -> List[Link]:
    """The links ``(src_frames, dst_frame, weight)`` of one connection in ``layout``.

    ``src_frames`` is a tuple of absolute canvas frames of ``conn.src``, ``dst_frame`` an
    absolute canvas frame of ``conn.dst`` and ``weight = conn.weight * fill_weight``.
    Links with weight 0 are omitted.  Links that share their source frames share one tuple.
    """
    tuples: Dict[Tuple[int, int], Tuple[int, ...]] = {}
    out: List[Link] = []
    for lo, hi, t, w in link_ranges(conn, layout):
        src = tuples.get((lo, hi))
        if src is None:
            src = tuples[(lo, hi)] = tuple(range(lo, hi))
        out.append((src, t, w))
    return out


def link_count_bound(conn: Any, layout: Any) -> int:
    """An upper bound on ``len(link_ranges(conn, layout))``, computed in O(1) (no frame loop)."""
    s0, s1, _ = region_frames(layout, conn.src)
    d0, d1, _ = region_frames(layout, conn.dst)
    if s1 <= s0 or d1 <= d0:
        return 0
    if conn.t_dst is None:
        return d1 - d0
    if conn.t_src is None:
        return min(int(layout.T), d1 - d0)
    n_ref = max(0, min(int(layout.T), s1 - int(conn.t_src)) - max(0, s0 - int(conn.t_src)))
    mode = _fill_name(getattr(conn, "temporal_fill", "hold"))
    order = getattr(conn, "interpolation_order", 1)
    per_ref = 1
    if mode == "interpolate":
        per_ref = min(d1 - d0, max(2, int(order) + 1 if isinstance(order, numbers.Integral) else 2))
    return n_ref * per_ref


def link_ranges(conn: Any, layout: Any) -> List[Tuple[int, int, int, float]]:
    """The links of :func:`connection_links` as ``(src_lo, src_hi, dst_frame, weight)``.

    The source frames of a link are always the contiguous range ``src_lo <= f < src_hi``, so a
    link is a few ints: keys and caches built from it cost O(1) per link, not O(T).  Same links,
    same order as :func:`connection_links`.
    """
    s0, s1, ps = region_frames(layout, conn.src)
    d0, d1, pd = region_frames(layout, conn.dst)
    w = float(conn.weight)
    if s1 <= s0 or d1 <= d0 or w == 0.0:
        return []
    t_src: Optional[int] = conn.t_src
    t_dst: Optional[int] = conn.t_dst
    T = int(layout.T)
    if t_src is None and t_dst is None:
        return [(s0, s1, t, w) for t in range(d0, d1)]
    fill = getattr(conn, "temporal_fill", "hold")
    order = getattr(conn, "interpolation_order", 1)
    if t_dst is None:
        # each valid source frame ref + t_src (a contiguous range) links to every destination frame
        lo, hi = max(s0, int(t_src)), min(s1, T + int(t_src))
        return [(lo, hi, t, w) for t in range(d0, d1)] if lo < hi else []
    if t_src is None:
        # the source is every frame whatever the reference: keep the largest weight per target
        best: Dict[int, float] = {}
        _check_fill(pd, order)
        for ref in range(T):
            for t, fw in _fill(ref + int(t_dst), d0, d1, pd, fill, order):
                val = w * fw
                if val != 0.0 and (t not in best or val > best[t]):
                    best[t] = val
        return [(s0, s1, t, val) for t, val in best.items()]
    # one source frame per reference: every reference gives distinct (frame, target) pairs
    out: List[Tuple[int, int, int, float]] = []
    ts, td = int(t_src), int(t_dst)
    refs = range(max(0, s0 - ts), min(T, s1 - ts))
    if refs:
        _check_fill(pd, order)
    append = out.append
    for ref in refs:
        f = ref + ts
        target = (ref + td) * ps
        if target % pd == 0 and d0 <= target // pd < d1:  # exact match (the common case), inline
            append((f, f + 1, target // pd, w))
            continue
        for t, fw in _fill(target, d0, d1, pd, fill, order):
            val = w * fw
            if val != 0.0:
                append((f, f + 1, t, val))
    return out

"""What a telemetry layer probe (:class:`~canvas_core.runtime.telemetry._LayerProbe`) measures and
under which name: the queries it samples of a layer's plan (:func:`sample_queries`) and the name
of a layer's series (:func:`series_name`).  Host-side numpy work, once per recording and layer."""

from __future__ import annotations

from typing import Dict, FrozenSet, List

import numpy as np
from torch import nn

from canvas_core.runtime.compiled_names import plain_name

__all__ = ["sample_queries", "series_name", "unlinked_connections"]


def series_name(name: str, modules: Dict[str, nn.Module], wrapped: FrozenSet[str] = frozenset()) -> str:
    """A layer's name as the plain model has it, so logged series go on across ``torch.compile``,
    ``DistributedDataParallel`` and grafting: without the segments of those wrappers (``wrapped``,
    from :func:`~canvas_core.runtime.compiled_names.wrapped_paths`) and the ``original`` under which
    a looped-block wrapper (``canvas_core.looping``; duck-typed) holds the block."""
    parts, keep = name.split(".") if name else [], []
    for i, part in enumerate(parts):
        parent = modules.get(".".join(parts[:i]))
        if ".".join(parts[:i + 1]) in wrapped:
            continue
        if not (part == "original" and hasattr(parent, "max_loops")):
            keep.append(part)
    return plain_name(".".join(keep))  # and without the compile wrapper's segments


def sample_queries(plan, updated: np.ndarray, max_queries: int) -> np.ndarray:
    """The packed query positions a probe measures, sorted: ``max_queries`` evenly spaced over
    ``updated`` (all of them when fewer), and for every connection that links none of those a
    query it does link (the middle of its largest rectangle), so that a connection of a small
    region is measured too; at most ``max_queries`` plus one per connection."""
    sample = updated
    if len(updated) > max_queries:
        sample = updated[np.linspace(0, len(updated) - 1, max_queries).round().astype(np.int64)]
    extra: List[int] = []
    for g in plan.groups.values():
        if not g.n_rects:
            continue
        q0, q1 = np.asarray(g.q0), np.asarray(g.q1)
        hit = np.searchsorted(sample, q1) > np.searchsorted(sample, q0)  # a sampled query in the rectangle
        for ci in np.setdiff1d(np.asarray(g.conn), np.asarray(g.conn)[hit]):
            rects = np.flatnonzero(np.asarray(g.conn) == ci)
            r = rects[np.argmax(q1[rects] - q0[rects])]
            extra.append((int(q0[r]) + int(q1[r]) - 1) // 2)
    return np.union1d(sample, np.asarray(extra, dtype=np.int64)) if extra else sample


def unlinked_connections(plan) -> List[int]:
    """The indices of the connections of ``plan`` that link no query at all (no rectangle)."""
    linked = {int(c) for g in plan.groups.values() for c in np.asarray(g.conn)}
    return sorted(ci for g in plan.groups.values() for ci in g.connections if ci not in linked)

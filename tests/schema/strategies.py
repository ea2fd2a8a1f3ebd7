"""Hypothesis strategies for random layouts and topologies (shared by the schema tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec, TemporalFill

FN_TYPES = ["cross_attention", "linear_attention", "gated", "pooling", "copy", None]


@st.composite
def layouts(draw, max_regions: int = 4, max_dims: int = 3, allow_overlap: bool = False):
    n_sp = draw(st.integers(0, max_dims))
    T = draw(st.integers(1, 6))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(n_sp))
    regions = {}
    boxes = []
    for i in range(draw(st.integers(1, max_regions))):
        bounds = []
        for size in (T, *shape):
            lo = draw(st.integers(0, size - 1))
            hi = draw(st.integers(lo + 1, size))
            bounds += [lo, hi]
        box = tuple(bounds)
        if not allow_overlap and any(
            all(max(box[k], b[k]) < min(box[k + 1], b[k + 1]) for k in range(0, len(box), 2)) for b in boxes
        ):
            continue
        boxes.append(box)
        spec = RegionSpec(
            bounds=box,
            period=draw(st.integers(1, 4)),
            is_output=draw(st.booleans()),
            loss_weight=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
            default_attn=draw(st.sampled_from(["cross_attention", "linear_attention", "gated"])),
            semantic_type=draw(st.one_of(st.none(), st.text(max_size=12))),
            semantic_embedding=draw(st.one_of(st.none(), st.lists(st.floats(-1, 1, width=32), min_size=2, max_size=4).map(tuple))),
        )
        raw = draw(st.booleans()) and spec == RegionSpec(bounds=box)
        regions[f"r{i}"] = box if raw else spec
    t_current = draw(st.integers(0, T))
    return CanvasLayout(T=T, d_model=draw(st.sampled_from([8, 16])), spatial_shape=shape,
                        regions=regions, t_current=t_current, allow_overlap=allow_overlap)


@st.composite
def topologies(draw, layout: CanvasLayout, max_connections: int = 6):
    names = list(layout.regions)
    conns = []
    for _ in range(draw(st.integers(0, max_connections))):
        temporal = draw(st.booleans())
        conns.append(Connection(
            src=draw(st.sampled_from(names)),
            dst=draw(st.sampled_from(names)),
            weight=draw(st.sampled_from([1.0, 0.5, 2.0, 0.25])),
            t_src=draw(st.one_of(st.none(), st.integers(-2, 2))) if temporal else None,
            t_dst=draw(st.one_of(st.none(), st.integers(-3, 2))) if temporal else None,
            fn=draw(st.sampled_from(FN_TYPES)),
            temporal_fill=draw(st.sampled_from(list(TemporalFill))),
            interpolation_order=draw(st.integers(1, 3)),
        ))
    return CanvasTopology(conns)

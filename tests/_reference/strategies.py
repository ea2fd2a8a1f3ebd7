"""Hypothesis strategies for random layouts and topologies (shared by lowering/runtime tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec

FILLS = ("drop", "hold", "interpolate")


@st.composite
def layouts(draw, max_T=5, max_side=3, max_regions=4, periods=True):
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(nd))
    T = draw(st.integers(1, max_T))
    regions = {}
    for r in range(draw(st.integers(1, max_regions))):
        t0 = draw(st.integers(0, T - 1))
        t1 = draw(st.integers(t0 + 1, T))
        b = [t0, t1]
        for s in shape:
            lo = draw(st.integers(0, s - 1))
            b += [lo, draw(st.integers(lo + 1, s))]
        period = draw(st.integers(1, 3)) if periods else 1
        regions[f"r{r}"] = RegionSpec(tuple(b), period=period)
    return CanvasLayout(T=T, d_model=4, spatial_shape=shape, regions=regions,
                        t_current=draw(st.integers(0, T)), allow_overlap=True)


@st.composite
def topologies(draw, layout, fns=("cross_attention",), max_conns=5, temporal=True):
    names = list(layout.regions)
    conns = []
    for _ in range(draw(st.integers(1, max_conns))):
        off = st.none() | st.integers(-3, 3) if temporal else st.none()
        conns.append(Connection(
            src=draw(st.sampled_from(names)), dst=draw(st.sampled_from(names)),
            weight=draw(st.sampled_from([0.25, 0.5, 1.0, 2.0])),
            t_src=draw(off), t_dst=draw(off), fn=draw(st.sampled_from(fns)),
            temporal_fill=draw(st.sampled_from(FILLS)),
            interpolation_order=draw(st.integers(1, 3))))
    return CanvasTopology(connections=conns)

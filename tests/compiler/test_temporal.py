"""temporal.py against hand-worked cases of DESIGN.md's temporal rules."""

from canvas_core.compiler.temporal import connection_links, fill_frames
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec, TemporalFill


def _lay(**regions):
    return CanvasLayout(T=8, d_model=4, spatial_shape=(2,), regions=regions, allow_overlap=True)


def test_exact_match_and_hold():
    # dst period 2 on frames 0..3 -> real frames 0, 2, 4, 6
    assert fill_frames(4, 0, 4, 2, "hold") == [(2, 1.0)]
    assert fill_frames(5, 0, 4, 2, "hold") == [(2, 1.0)]  # nearest earlier real frame 4
    assert fill_frames(-1, 0, 4, 2, "hold") == []  # before the first frame: nothing earlier
    assert fill_frames(99, 0, 4, 2, "hold") == [(3, 1.0)]  # after the last: the last one
    assert fill_frames(5, 0, 4, 2, "drop") == []


def test_interpolate_order_1():
    out = fill_frames(5, 0, 4, 4, "interpolate")  # real frames 0, 4, 8, 12; 5 is 1 after 4, 3 before 8
    assert out == [(1, 0.75), (2, 0.25)]
    assert fill_frames(-2, 1, 4, 4, "interpolate") == [(1, 1.0)]  # only later
    assert fill_frames(20, 0, 4, 4, "interpolate") == [(3, 1.0)]  # only earlier


def test_interpolate_order_2_idw():
    # frames 0..4 period 1, target 2.5 impossible; use period 2: real 0,2,4,6,8; target 3
    out = dict(fill_frames(3, 0, 5, 2, "interpolate", order=2))
    # three nearest: real 2 (d=1), 4 (d=1), then 0 (d=3, ties to the earlier) ; weights 1/d^2
    w = {1: 1.0, 2: 1.0, 0: 1 / 9}
    s = sum(w.values())
    assert set(out) == set(w)
    for f in w:
        assert abs(out[f] - w[f] / s) < 1e-12


def test_links_offsets_periods():
    lay = _lay(a=RegionSpec((0, 8, 0, 1), period=1), b=RegionSpec((0, 4, 1, 2), period=2))
    c = Connection("a", "b", t_src=0, t_dst=0, weight=2.0, temporal_fill=TemporalFill.HOLD)
    links = connection_links(c, lay)
    # src frame f (period 1) targets real frame f; b has real frames 0,2,4,6 at canvas 0..3
    expect = {((f,), min(f // 2, 3), 2.0) for f in range(8)}
    assert set(links) == expect
    # period of the source scales the target: b -> a with t_src=t_dst=0: real frame 2f
    links = connection_links(Connection("b", "a", t_src=0, t_dst=0), lay)
    assert set(links) == {((f,), 2 * f, 1.0) for f in range(4)}


def test_none_offsets():
    lay = _lay(a=RegionSpec((1, 3, 0, 1)), b=RegionSpec((2, 5, 1, 2)))
    assert connection_links(Connection("a", "b"), lay) == [((1, 2), t, 1.0) for t in (2, 3, 4)]
    # t_src None, t_dst set: all source frames link to the targets of every ref (0..7 - 1)
    links = connection_links(Connection("a", "b", t_dst=-1, temporal_fill="drop"), lay)
    assert {l[1] for l in links} == {2, 3, 4} and all(l[0] == (1, 2) for l in links)
    # t_src set, t_dst None: frame ref+1 of a to all frames of b
    links = connection_links(Connection("a", "b", t_src=1), lay)
    assert links == [((1, 2), t, 1.0) for t in (2, 3, 4)]


def test_causal_temporal_topology_links():
    lay = _lay(a=RegionSpec((0, 8, 0, 1)), b=RegionSpec((0, 8, 1, 2)))
    top = CanvasTopology.causal_temporal(["a", "b"])
    for c in top.connections:
        for src, dst, w in connection_links(c, lay):
            assert len(src) == 1 and dst == src[0] + c.t_dst - c.t_src or dst == 0

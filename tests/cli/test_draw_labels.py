"""What ``canvas draw`` puts on the picture: every region labelled, one arrow per offset pattern."""

from __future__ import annotations

from hypothesis import given, settings

from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection
from canvas_core.viz import draw_schema, frame_grid, region_labels, topology_arrows

from tests.schema.strategies import layouts


@settings(max_examples=40, deadline=None)
@given(layouts(max_dims=3))
def test_every_region_present_in_a_frame_gets_one_label_inside_it(layout):
    for t in range(layout.T):
        grid = frame_grid(layout, t)
        present = {layout.region_names[v] for row in grid for v in row if v >= 0}
        labels = region_labels(layout, t)
        assert {lab.name for lab in labels} == present
        for lab in labels:
            assert 0 <= lab.x < len(grid[0]) and 0 <= lab.y < len(grid)
            assert lab.number == layout.region_names.index(lab.name) + 1
            assert lab.text == (lab.name if lab.inline else str(lab.number))
            assert grid[int(lab.y)][int(lab.x)] == lab.number - 1  # on a cell of its own region


def _layout():
    return CanvasLayout(T=4, H=8, W=16, d_model=8, regions={
        "video": (0, 4, 0, 7, 0, 16), "a": (0, 4, 7, 8, 0, 1), "reward": (0, 4, 7, 8, 1, 2)})


def test_tiny_regions_are_numbered_and_wide_ones_named():
    labels = {lab.name: lab for lab in region_labels(_layout(), 0)}
    assert labels["video"].inline and labels["video"].text == "video"
    assert not labels["reward"].inline and labels["reward"].text == "3"


def test_connections_differing_in_offsets_are_separate_labelled_arrows():
    layout = _layout()
    topo = CanvasTopology(connections=[
        Connection(src="a", dst="video", t_src=0, t_dst=0),
        Connection(src="a", dst="video", t_src=0, t_dst=-1),
        Connection(src="a", dst="video", t_src=0, t_dst=-1, weight=0.5),   # same pattern: same arrow
        Connection(src="video", dst="video"),
        Connection(src="reward", dst="a", fn="gated", t_src=0, t_dst=0),
        Connection(src="reward", dst="a", t_src=0, t_dst=0),               # other fn: its own arrow
    ])
    arrows = topology_arrows(topo, layout)
    a_video = [x for x in arrows if (x.src, x.dst) == ("a", "video")]
    assert sorted(x.label for x in a_video) == ["frame -1", "same frame"]
    assert sorted(x.rank for x in a_video) == [0, 1]
    assert next(x for x in a_video if x.label == "frame -1").count == 2
    assert [x.label for x in arrows if x.src == "video"] == [""]
    assert sorted(x.fn for x in arrows if x.src == "reward") == ["cross_attention", "gated"]


def test_panels_keep_the_canvas_aspect(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = []
    real_savefig = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen.extend(ax.get_aspect() for ax in fig.axes if ax.images)
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        draw_schema(CanvasSchema(_layout(), CanvasTopology([Connection("a", "video")])), tmp_path / "x.png")
    finally:
        plt.Figure.savefig = real_savefig
    assert seen and all(a == 1.0 for a in seen)  # "equal": one cell is a square

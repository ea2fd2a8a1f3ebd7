"""``canvas draw`` of a large canvas: the region ids of a frame are written one run at a time into
an array and the labels computed by array reductions (a Python loop per cell took 47 s per frame
on a 4096 x 4096 canvas, twice per drawn frame); the pictures' arrays and labels are unchanged."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings

from canvas_core import CanvasLayout
from canvas_core.schema import CanvasSchema, CanvasTopology, Connection
from canvas_core import viz
from canvas_core.viz import draw_schema, frame_grid, region_labels

from tests.schema.strategies import layouts


def _reference_grid(layout, t):
    """Cell by cell from ``region_runs``: the last region covering a cell owns it."""
    shape = layout.spatial_shape or (1,)
    cols = int(np.prod(shape[1:])) if len(shape) >= 2 else shape[0]
    rows = shape[0] if len(shape) >= 2 else 1
    grid = [[-1] * cols for _ in range(rows)]
    for rid, name in enumerate(layout.region_names):
        for start, stop in layout.region_runs(name, t):
            for flat in range(start, stop):
                r, c = divmod(flat - t * layout.spatial_volume, cols)
                grid[r][c] = rid
    return grid


def _reference_labels(layout, t, min_cells_per_char=0.6):
    """Per region: its cells, the widest row, the centroid and the cell nearest it (ties: smallest (row, col))."""
    cells_of = {}
    for r, row in enumerate(_reference_grid(layout, t)):
        for c, v in enumerate(row):
            if v >= 0:
                cells_of.setdefault(v, []).append((r, c))
    out = []
    for rid, name in enumerate(layout.region_names):
        cells = cells_of.get(rid)
        if not cells:
            continue
        width = max(Counter(r for r, _ in cells).values())
        cy = sum(r for r, _ in cells) / len(cells)
        cx = sum(c for _, c in cells) / len(cells)
        y, x = min(cells, key=lambda rc: ((rc[0] - cy) ** 2 + (rc[1] - cx) ** 2, rc))
        out.append((name, rid + 1, x, y, width >= min_cells_per_char * len(name) and len(cells) >= 2))
    return out


@settings(max_examples=60, deadline=None)
@given(layouts(max_dims=3))
def test_grids_and_labels_equal_the_cell_by_cell_reference(layout):
    for t in range(layout.T):
        ref = _reference_grid(layout, t)
        assert frame_grid(layout, t) == ref
        assert [(lab.name, lab.number, lab.x, lab.y, lab.inline) for lab in region_labels(layout, t)] == \
            _reference_labels(layout, t)


@settings(max_examples=20, deadline=None)
@given(layouts(max_dims=3))
def test_the_frame_array_is_the_grid(layout):
    for t in range(layout.T):
        arr = viz.frame_array(layout, t)
        assert arr.dtype == np.int64 and arr.tolist() == _reference_grid(layout, t)


def test_overlapping_and_odd_shaped_regions():
    """Later regions overwrite earlier ones; an L-shaped (folded 3-d) region's label sits on its own cell."""
    layout = CanvasLayout(T=2, spatial_shape=(5, 3, 4), d_model=8, allow_overlap=True,
                          regions={"base": (0, 2, 0, 5, 0, 3, 0, 4), "mid": (0, 1, 1, 4, 1, 3, 0, 2),
                                   "corner": (1, 2, 0, 2, 0, 1, 2, 4), "a_long_region_name": (0, 2, 4, 5, 0, 3, 0, 4)})
    for t in range(2):
        assert frame_grid(layout, t) == _reference_grid(layout, t)
        assert [(lab.name, lab.number, lab.x, lab.y, lab.inline) for lab in region_labels(layout, t)] == \
            _reference_labels(layout, t)


def test_draw_shows_the_reference_array_and_reads_each_frame_once(tmp_path, monkeypatch):
    """The image of each frame panel is the reference grid + 1; the frame's regions are read once
    per panel (were read twice: once for the image, once again for the labels)."""
    import matplotlib.axes

    layout = CanvasLayout(T=3, spatial_shape=(6, 9), d_model=8,
                          regions={"obs": (0, 3, 0, 3, 0, 9), "act": (0, 3, 3, 6, 0, 4), "goal": (1, 3, 3, 6, 4, 9)})
    topo = CanvasTopology(connections=[Connection("act", "obs"), Connection("goal", "act", t_src=0, t_dst=-1)])
    shown, runs = [], [0]
    real_imshow, real_runs = matplotlib.axes.Axes.imshow, CanvasLayout.region_runs

    def imshow(self, X, *a, **k):
        shown.append(np.asarray(X).copy())
        return real_imshow(self, X, *a, **k)

    def region_runs(self, *a, **k):
        runs[0] += 1
        return real_runs(self, *a, **k)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    monkeypatch.setattr(CanvasLayout, "region_runs", region_runs)
    draw_schema(CanvasSchema(layout=layout, topology=topo), tmp_path / "x.png", max_frames=3)
    monkeypatch.setattr(CanvasLayout, "region_runs", real_runs)
    assert len(shown) == 3
    for t, image in enumerate(shown):
        assert image.tolist() == [[v + 1 for v in row] for row in _reference_grid(layout, t)]
    # once per region per panel, and once per region for its size in the legend (was twice per panel)
    assert runs[0] == 3 * len(layout.region_names) + len(layout.region_names)

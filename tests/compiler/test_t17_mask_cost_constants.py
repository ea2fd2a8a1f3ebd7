"""The up-front memory estimate of lowering (``lowering._check_frame_work`` with the per-item bytes of
``compiler/mask_cost.py``) is an upper bound on what lowering a masked topology really allocates,
and not a loose one: measured with tracemalloc (numpy buffers included), the estimate lies between
the real peak and twice it.  Both sides are read through ``CANVAS_MAX_BYTES``: under a limit equal
to the measured peak the topology is refused (estimate > peak), under twice the peak it lowers."""

import tracemalloc

import numpy as np
import pytest

from canvas_core import MaskSpec
from canvas_core.compiler.lowering import lower
from canvas_core.errors import SizeLimitError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

TILE_1X1 = MaskSpec(kind="tile", tile_h=1, tile_w=1)


def _one_region(T, side):
    return CanvasLayout(T=T, d_model=8, spatial_shape=(side, side), regions={"a": (0, T, 0, side, 0, side)})


def _checkerboard(n):
    return MaskSpec(kind="sparse", pattern=(np.add.outer(np.arange(n), np.arange(n)) % 2).astype(int))


def _peak_bytes(topology, layout):
    """Peak bytes traced while ``lower`` runs (after a warm-up lowering, so imports and caches of a
    first call are not counted); the plan is checked to be non-empty."""
    lower(CanvasTopology(connections=[Connection(src="a", dst="a", mask=TILE_1X1),
                                      Connection(src="a", dst="a", mask=_checkerboard(4))]), _one_region(2, 2))
    tracemalloc.start()
    try:
        plan = lower(topology, layout)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(g.n_rects for g in plan.groups.values()) > 0
    return peak


def _rect_heavy():  # 1x1 tiles, every frame pair: 64 pairs x 64 x 64 frame links
    return _one_region(64, 8), [Connection(src="a", dst="a", mask=TILE_1X1)]


def _index_heavy():  # every 1x1 tile of 'a' links all of 'b' (disjoint): 256 x 1024 listed indices
    layout = CanvasLayout(T=4, d_model=8, spatial_shape=(16, 32),
                          regions={"a": (0, 4, 0, 16, 0, 16), "b": (0, 4, 0, 16, 16, 32)})
    return layout, [Connection(src="a", dst="b", mask=TILE_1X1, t_src=0, t_dst=0)]


def _one_frame_links():  # a sparse checkerboard, one frame per link: indices ~ 2x rectangles
    return _one_region(64, 8), [Connection(src="a", dst="a", mask=_checkerboard(64), t_src=0, t_dst=0)]


def _pair_heavy():  # one frame, 128x128 one-cell tiles: one rectangle per mask pair
    return _one_region(1, 128), [Connection(src="a", dst="a", mask=TILE_1X1)]


def _mixed():  # two masks of one fn type (their rectangles are joined) and a dense connection
    return _one_region(16, 8), [Connection(src="a", dst="a", mask=TILE_1X1),
                                Connection(src="a", dst="a", mask=_checkerboard(64), weight=0.5),
                                Connection(src="a", dst="a", t_src=0, t_dst=-1)]


@pytest.mark.parametrize("case", [_rect_heavy, _index_heavy, _one_frame_links, _pair_heavy, _mixed])
def test_estimate_is_between_the_real_peak_and_twice_it(case, monkeypatch):
    layout, conns = case()
    topology = CanvasTopology(connections=conns)
    peak = _peak_bytes(topology, layout)
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(peak))
    with pytest.raises(SizeLimitError, match="CANVAS_MAX_BYTES"):  # the estimate is over the real peak
        lower(topology, layout)
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(2 * peak))
    assert lower(topology, layout).n == layout.num_positions  # and under twice it


@pytest.mark.parametrize("layout, mask, limit_mib", [
    (_one_region(64, 16), TILE_1X1, 256),  # 2**20 rectangles: ~100 MB real, ~470 MB at 450 B each
    (_one_region(16, 8), _checkerboard(64), 128),  # 2**19 rectangles: ~55 MB real, ~240 MB before
])
def test_mask_that_fits_is_no_longer_refused(layout, mask, limit_mib, monkeypatch):
    """Masks the estimate of the unvectorised lowering (450 bytes a rectangle) refused under this
    limit lower now, and really stay under it."""
    topology = CanvasTopology(connections=[Connection(src="a", dst="a", mask=mask)])
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(limit_mib << 20))
    assert _peak_bytes(topology, layout) < limit_mib << 20

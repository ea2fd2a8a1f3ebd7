"""A block size that makes more tiles than the byte limit holds is refused before anything is
allocated, naming the smallest block size that fits (the element limit alone let block_size=1 at
65,536 positions through: 4.3e9 tiles, about 100 GiB and an hour of work)."""

from __future__ import annotations

import tracemalloc

import pytest

from canvas_core.compiler.masks import TILE_BYTES, block_mask
from canvas_core.errors import CanvasError, SizeLimitError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection


def _canvas(T: int, H: int, W: int):
    layout = CanvasLayout(T=T, H=H, W=W, d_model=8, regions={"video": (0, T, 0, H - 2, 0, W),
                                                              "a": (0, T, H - 2, H, 0, W)})
    topo = CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0),
                                       Connection("a", "video", t_src=0, t_dst=0)])
    return layout, topo


def test_block_size_1_at_65k_positions_is_refused_before_allocating(monkeypatch) -> None:
    monkeypatch.delenv("CANVAS_MAX_BYTES", raising=False)
    # the old check (elements only) passed 4.3e9 tiles; with this limit it would have named elements
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", str(1 << 30))
    layout, topo = _canvas(8, 64, 128)
    tracemalloc.start()
    try:
        with pytest.raises(SizeLimitError) as err:
            topo.to_block_mask(layout, block_size=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert isinstance(err.value, CanvasError) and isinstance(err.value, ValueError)
    assert "block_size=1" in msg and "N=65,536" in msg and "4,294,967,296 tiles" in msg
    assert "Use block_size >= 4" in msg and "CANVAS_MAX_BYTES" in msg
    assert peak < 64 << 20  # nothing of the tiles' size was allocated


def test_the_named_block_size_fits_and_one_less_does_not(monkeypatch) -> None:
    layout, topo = _canvas(1, 8, 8)  # N = 64
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(TILE_BYTES * 16 * 16))  # 16 blocks a side at most
    with pytest.raises(SizeLimitError, match=r"block_size=3 over N=64 .*Use block_size >= 4 \(16 blocks"):
        block_mask(topo, layout, block_size=3)
    bm = block_mask(topo, layout, block_size=4)
    assert bm.layout.state.shape == (16, 16)


def test_a_given_plan_is_checked_by_its_own_size(monkeypatch) -> None:
    from canvas_core.compiler.lowering import lower

    layout, topo = _canvas(1, 8, 8)
    plan = lower(topo, layout)
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(TILE_BYTES * 8 * 8))
    with pytest.raises(SizeLimitError, match=r"Use block_size >= 8 "):
        block_mask(None, None, block_size=4, plan=plan)
    assert block_mask(None, None, block_size=8, plan=plan).layout.state.shape == (8, 8)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_bad_block_sizes_keep_their_own_errors(bad) -> None:
    layout, topo = _canvas(1, 4, 4)
    with pytest.raises(CanvasError, match="block_size"):
        block_mask(topo, layout, block_size=bad)


def test_a_plans_block_layout_is_refused_by_bytes_before_allocating():
    # ExecutionPlan.block_layout(1) at 65,536 positions: 4.3e9 tiles pass the element limit,
    # but their 9 bytes each (about 36 GiB) must be refused by the byte limit
    from canvas_core import CanvasLayout, CanvasTopology
    from canvas_core.compiler.lowering import lower
    from canvas_core.errors import SizeLimitError

    lay = CanvasLayout(T=1, H=256, W=256, d_model=8, regions={"v": (0, 1, 0, 256, 0, 256)})
    plan = lower(CanvasTopology.dense(["v"]), lay)
    with pytest.raises(SizeLimitError, match=r"block_size=1 over N=65536.*Use a larger block_size"):
        plan.block_layout(1)

"""Tile states of the block-sparse mask: a tile is "full" only when every pair is linked with one
weight, whatever the size of the weights (the sums of squares it was judged by underflow at 1e-300
and overflow at 1e300, which made tiles with varying weights look uniform)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from canvas_core.compiler.plan import block_layout_of, segment_grid
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=1, d_model=4, spatial_shape=(4,), regions={"a": (0, 1, 0, 2), "b": (0, 1, 2, 4)})


@pytest.mark.parametrize("w1, w2", [(1.0, 2.0), (1e-300, 2e-300), (3e38, 1e-300), (1e-200, 1e-300), (1e-160, 1e-161)])
def test_a_tile_with_two_weights_is_partial_at_any_scale(w1: float, w2: float) -> None:
    topo = CanvasTopology([Connection("a", "a", weight=w1), Connection("a", "b", weight=w2),
                           Connection("b", "a", weight=w1), Connection("b", "b", weight=w1)])
    bm = topo.to_block_mask(LAYOUT, block_size=4)
    assert bm.layout.state.tolist() == [[1]]  # every pair linked, but not with one weight
    assert bm.full_kv_num_blocks.tolist() == [0]
    assert bm.partial_kv_num_blocks.tolist() == [1]


@pytest.mark.parametrize("w", [1e-300, 1.0, 3e38])
def test_a_tile_with_one_weight_stays_full_at_any_scale(w: float) -> None:
    topo = CanvasTopology.dense(["a", "b"])
    topo = CanvasTopology([Connection(c.src, c.dst, weight=w) for c in topo.connections])
    assert topo.to_block_mask(LAYOUT, block_size=4).layout.state.tolist() == [[2]]


def _dense_states(n: int, rects, bs: int) -> np.ndarray:
    w = np.zeros((n, n))
    for q0, q1, k0, k1, wt in rects:
        w[q0:q1, k0:k1] = np.maximum(w[q0:q1, k0:k1], wt)
    nb = -(-n // bs)
    out = np.zeros((nb, nb), dtype=np.int8)
    for i in range(nb):
        for j in range(nb):
            tile = w[i * bs:(i + 1) * bs, j * bs:(j + 1) * bs]
            if (tile > 0).all():
                out[i, j] = 2 if tile.max() == tile.min() else 1
            elif (tile > 0).any():
                out[i, j] = 1
    return out


@pytest.mark.parametrize("seed", range(40))
def test_tile_states_match_a_dense_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    bs = int(rng.integers(1, 9))
    rects = []
    for _ in range(int(rng.integers(0, 6))):
        q0, k0 = int(rng.integers(0, n)), int(rng.integers(0, n))
        q1, k1 = int(rng.integers(q0 + 1, n + 1)), int(rng.integers(k0 + 1, n + 1))
        rects.append((q0, q1, k0, k1, float(rng.choice([1e-300, 0.5, 1.0, 1e300]))))
    cols = list(zip(*rects)) if rects else [[]] * 5
    sg = segment_grid(n, *cols)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings from numpy either
        state = block_layout_of(sg, n, bs).state
    np.testing.assert_array_equal(state, _dense_states(n, rects, bs))


def test_tile_states_use_memory_in_the_size_of_one_block_row() -> None:
    # the states were counted by products of the whole grid with block-overlap matrices: a copy of
    # the grid or two and n_blocks times the work (72 s for a 20 000-connection plan, N = 32 768)
    import tracemalloc

    from canvas_core.compiler.plan import SegmentGrid

    n = 1500
    rng = np.random.default_rng(0)
    grid = np.where(rng.random((n, n)) < 0.5, 0.0, 1.0)
    grid[:64, :64] = 1.0  # one full tile
    sg = SegmentGrid(np.arange(n + 1), np.arange(n + 1), grid)
    tracemalloc.start()
    try:
        bl = block_layout_of(sg, n, 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bl.state[0, 0] == 2 and bl.count[0, 0] == 64 * 64
    assert peak < grid.nbytes / 4, f"peak {peak} bytes for a {grid.nbytes}-byte grid"


def test_a_tile_grid_over_the_element_limit_is_refused_before_allocating(monkeypatch) -> None:
    from canvas_core.errors import SizeLimitError

    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "100000")
    layout = CanvasLayout(T=1, d_model=4, spatial_shape=(1024,), regions={"a": (0, 1, 0, 1024)})
    topo = CanvasTopology([Connection("a", "a")])
    with pytest.raises(SizeLimitError, match=r"block_size=1 over N=1024 .*raise block_size"):
        topo.to_block_mask(layout, block_size=1)  # 1024 x 1024 tiles: a MemoryError on a big canvas
    assert topo.to_block_mask(layout, block_size=8).layout.state.shape == (128, 128)


def test_a_segment_grid_over_the_element_limit_is_refused(monkeypatch) -> None:
    from canvas_core.errors import SizeLimitError

    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "100000")
    n = 1000  # 1000 one-position rectangles on the diagonal: a 1000 x 1000 segment grid
    with pytest.raises(SizeLimitError, match="segment grid"):
        segment_grid(n, np.arange(n), np.arange(n) + 1, np.arange(n), np.arange(n) + 1, np.ones(n))


@pytest.mark.parametrize("bad", [2.5, "4", "x", True, None])
def test_a_block_size_that_is_not_an_int_is_refused(bad) -> None:
    from canvas_core.compiler.masks import block_mask
    from canvas_core.errors import CanvasTypeError

    topo = CanvasTopology([Connection("a", "b")])
    with pytest.raises(CanvasTypeError, match="block_size must be an int"):
        block_mask(topo, LAYOUT, bad)  # 2.5 was cut to 2, "4" read as 4, "x" a bare ValueError
    assert block_mask(topo, LAYOUT, np.int64(2)).block_size == 2

"""The segment grid at scale: a grid past its byte budget is refused before it is allocated
(20,000 one-position connections at N = 32,768 made a 4.3 GB grid in 13-24 s), and big
rectangles are written as slices, not expanded cell by cell; the grid is unchanged."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from canvas_core.compiler.plan import segment_grid
from canvas_core.errors import SizeLimitError


def _diagonal(n: int, k: int):
    """``k`` one-position rectangles on the diagonal of an ``n x n`` matrix: ~2k x 2k segments."""
    q0 = np.linspace(0, n - 1, k).astype(np.int64)
    return q0, q0 + 1, q0, q0 + 1, np.ones(k)


def test_a_grid_over_its_byte_budget_is_refused_before_allocating(monkeypatch) -> None:
    monkeypatch.setenv("CANVAS_MAX_BYTES", "1000000")  # 1 MB for the grid: 4 M cells are 32 MB
    with pytest.raises(SizeLimitError, match=r"segment grid of 1,000 rectangles over N=4,096 positions "
                                             r"\(1,999 x 1,999 segments.*30\.5 MiB.*over its budget of 976\.6 KiB "
                                             r"\(the byte limit\).*fewer connections.*fewer frames"):
        segment_grid(4096, *_diagonal(4096, 1000))
    assert segment_grid(4096, *_diagonal(4096, 100)).grid.shape == (199, 199)


def test_the_default_budget_refuses_a_grid_over_8_gib_at_once() -> None:
    t = time.perf_counter()
    with pytest.raises(SizeLimitError, match=r"\(33,999 x 33,999 segments.*8\.6 GiB"):
        segment_grid(65536, *_diagonal(65536, 17000))  # 9.2 GB of float64
    assert time.perf_counter() - t < 1.0


def test_a_big_rectangle_is_not_expanded_cell_by_cell() -> None:
    n, k = 4000, 1000
    q0, q1, k0, k1, w = _diagonal(n, k)
    cols = [np.append(a, v) for a, v in zip((q0, q1, k0, k1, w), (0, n, 0, n, 0.5))]  # one rectangle over all
    tracemalloc.start()
    try:
        sg = segment_grid(n, *cols)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * sg.grid.nbytes, f"peak {peak} bytes for a {sg.grid.nbytes}-byte grid"
    dense = np.zeros((n, n))
    for a, b, c, d, x in zip(*cols):
        dense[a:b, c:d] = np.maximum(dense[a:b, c:d], x)
    rs, cs = sg.row_segment_of(n), sg.col_segment_of(n)
    assert sg.grid[rs][:, cs].tobytes() == dense.tobytes()


@pytest.mark.parametrize("seed", range(30))
def test_the_grid_is_the_largest_weight_per_cell(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, r = int(rng.integers(1, 300)), int(rng.integers(0, 80))
    q0, k0 = rng.integers(0, n, r), rng.integers(0, n, r)
    q1, k1 = np.minimum(n, q0 + rng.integers(0, n, r)), np.minimum(n, k0 + rng.integers(0, n, r))
    w = rng.choice([1e-300, 0.5, 1.0, 2.0, 1e300], r)
    sg = segment_grid(n, q0, q1, k0, k1, w)
    dense = np.zeros((n, n))
    for a, b, c, d, x in zip(q0, q1, k0, k1, w):
        dense[a:b, c:d] = np.maximum(dense[a:b, c:d], x)
    rs, cs = sg.row_segment_of(n), sg.col_segment_of(n)
    assert sg.grid[rs][:, cs].tobytes() == dense.tobytes()

"""`declared_rows` works on bool rows: its peak memory is a few (nq, N) bool arrays, not the int64
copy (8x the rows) it used to make; the rows still equal a dense reachability."""

from __future__ import annotations

import tracemalloc

import numpy as np

from canvas_core.compiler.lowering import lower
from canvas_core.runtime.verify_probe import declared_rows
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

N = 16384


def _case(n: int):
    w = n // 16
    layout = CanvasLayout(T=1, d_model=4, spatial_shape=(n,),
                          regions={f"r{i}": (0, 1, i * w, (i + 1) * w) for i in range(16)})
    topo = CanvasTopology([Connection(f"r{i}", f"r{(i * 5 + 3) % 16}") for i in range(16)]
                          + [Connection("r0", "r0"), Connection("r7", "r2")])
    return lower(topo, layout)


def _dense(plan) -> np.ndarray:
    m = plan.to_dense().numpy() > 0
    return m | np.eye(plan.n, dtype=bool)


def test_declared_rows_peak_memory_is_a_few_bool_rows() -> None:
    plan = _case(N)
    queries = np.arange(0, N, N // 64)
    declared_rows([plan], queries)  # warm up (imports, caches)
    tracemalloc.start()
    try:
        rows = declared_rows([plan, plan], queries)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    nbytes = len(queries) * N  # one (nq, N) bool array
    assert peak < 6 * nbytes, f"peak {peak} bytes for (nq, N) bool rows of {nbytes} bytes"
    assert rows.dtype == bool and rows.shape == (len(queries), N)


def test_declared_rows_equal_a_dense_reachability() -> None:
    plan = _case(512)
    queries = np.arange(0, 512, 7)
    rows = declared_rows([plan, plan], queries)
    d = _dense(plan)
    want = d[queries]
    want = (want.astype(np.float32) @ d.astype(np.float32)) > 0
    np.testing.assert_array_equal(rows, want)

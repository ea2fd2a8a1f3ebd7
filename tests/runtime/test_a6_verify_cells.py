"""``verify_structure`` probes the queries of a cell (same frame, same declared reads) with one
cotangent spread over all of them, and one by one only when together they read something
undeclared: a sampled canvas costs one backward per cell instead of one per query (a 65,536-position
layer took hours), and what is undeclared is still found and counted per query."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, verify_structure
from canvas_core.runtime.verify_probe import probe_rows

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=8, W=8, d_model=8, regions={"video": (0, 2, 0, 6, 0, 8), "a": (0, 2, 6, 8, 0, 8)})
TOPO = CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0), Connection("a", "a", t_src=0, t_dst=0),
                                   Connection("a", "video", t_src=0, t_dst=0)])


class Counted(nn.Module):
    """A canvas layer with a residual; counts its calls.  ``leak``: canonical position ``leak[0]``
    also reads position ``leak[1]``, which no connection declares."""

    def __init__(self, leak=None) -> None:
        super().__init__()
        self.layer = CanvasAttention(TOPO, LAYOUT, n_heads=2)
        self.leak, self.calls = leak, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = x + self.layer(x)
        if self.leak is not None:
            q, k = self.leak
            out = out.clone()
            out[:, q] = out[:, q] + 0.5 * x[:, k]
        return out


def test_a_sampled_canvas_costs_a_backward_per_cell_not_per_query() -> None:
    torch.manual_seed(0)
    model = Counted()
    # 128 positions, 64 sampled queries in 4 (region, frame) cells; chunk=1: one call per cotangent
    report = verify_structure(model, max_exact=0, samples=64, probes=2, chunk=1)
    assert report.ok and not report.exact and "sampled 64 of 128" in report.sampling
    assert model.calls <= 2 + 2 * 4  # the checks' calls, then 2 probes x 4 cells (was 2 x 64)


def test_an_undeclared_read_is_still_found_and_counted_per_query(monkeypatch) -> None:
    import canvas_core.runtime.verify as verify

    q, k = 64 + 6 * 8 + 3, 10  # an `a` position of frame 1 reads a video position of frame 0
    found = []
    for one_by_one in (False, True):
        if one_by_one:  # every query its own cell: the probe as it was before cells
            monkeypatch.setattr(verify, "query_cells", lambda plans, queries, frames: np.arange(len(queries)))
        torch.manual_seed(0)
        report = verify_structure(Counted(leak=(q, k)), probes=1)  # 128 <= max_exact: every query
        assert not report.ok and report.exact
        (dep,) = report.undeclared
        found.append((dep.query_region, dep.query_frame, dep.key_region, dep.key_frame, dep.pairs, dep.future))
    assert found[0] == found[1] == ("a", 1, "video", 0, 1, False)


class Masked(nn.Module):
    """out[:, i] = tanh(sum_j M[i, j] x[:, j] W): output i reads input j iff M[i, j]."""

    def __init__(self, mask: torch.Tensor, d: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask.double())
        self.w = nn.Parameter(torch.randn(d, d, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(torch.einsum("ij,bjd,de->bie", self.mask, x, self.w))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 14), n_cells=st.integers(1, 4), chunk=st.integers(1, 5), seed=st.integers(0, 10 ** 6))
def test_reads_outside_the_declaration_match_the_jacobian_query_by_query(n, n_cells, chunk, seed) -> None:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, n_cells, n)
    shared = rng.random((n_cells, n)) < 0.6  # what a cell's queries may read, besides themselves
    allowed = shared[cells] | np.eye(n, dtype=bool)
    mask = allowed & (rng.random((n, n)) < 0.8)  # mostly declared reads ...
    mask |= rng.random((n, n)) < 0.1  # ... and a few undeclared ones
    torch.manual_seed(seed)
    model = Masked(torch.as_tensor(mask), 2)
    queries = np.arange(n)
    s = probe_rows(model, lambda b, gen: torch.randn(b, n, 2, generator=gen, dtype=torch.float64), queries, n,
                   probes=1, chunk=chunk, gen=torch.Generator().manual_seed(seed), cells=cells, allowed=allowed)
    assert np.array_equal((s > 0) & ~allowed, mask & ~allowed)  # exact per query
    for c in range(n_cells):  # declared reads: at least the query's own, at most its cell's
        rows = cells == c
        assert not ((s[rows] > 0) & ~(mask[rows].any(0) | ~allowed[rows])).any()
        assert ((s[rows] > 0) | ~mask[rows]).all()

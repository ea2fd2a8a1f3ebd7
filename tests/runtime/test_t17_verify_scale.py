"""``verify_structure`` at scale: the dead-link pass reads each connection's own rectangles
(was a segment grid of every rectangle and an ``(nq, N)`` matrix per connection: quadratic in the
number of connections), with the same report; and a plan lowered before its topology changed is
refused, as a canvas layer refuses it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, verify_structure
from canvas_core.compiler.lowering import lower
from canvas_core.errors import SchemaError
from canvas_core.runtime.verify_probe import PositionLabels, dead_entries, declared_rows, linked_connections
from canvas_core.runtime.verify_report import DeadLink
from canvas_core.schema.region import RegionSpec

torch.set_num_threads(1)


def _random_structure(n_regions: int, n_conn: int, seed: int):
    """Regions of two positions over 3 frames, a few overlapping; random connections with frame
    offsets (some past the frames: linking nothing) and two fn types."""
    rnd = random.Random(seed)
    regions = {f"r{i}": (0, 3, 2 * i, 2 * i + 2) for i in range(n_regions)}
    regions["wide"] = (0, 3, 0, 6)
    lay = CanvasLayout(T=3, spatial_shape=(2 * n_regions,), d_model=8, regions=regions, allow_overlap=True)
    names = list(regions)
    conns = [Connection(rnd.choice(names), rnd.choice(names), t_src=0, t_dst=rnd.choice([0, -1, -2, -5]),
                        fn=rnd.choice(["cross_attention", "pooling"])) for _ in range(n_conn)]
    return lay, CanvasTopology(connections=conns)


def _reference_dead(where, plan, strength, queries, labels, rtol, connections=None):
    """The dead-link entries as first written: a dense declared-rows matrix per connection."""
    out = []
    linked = linked_connections(plan)
    for ci in (range(len(plan.fn_of_connection)) if connections is None else connections):
        fn, c = plan.fn_of_connection[ci], plan.topology.connections[ci]
        if ci not in linked:
            out.append(DeadLink(where, ci, c.src, c.dst, fn, (), True, 0))
            continue
        decl = declared_rows([plan], queries, connection=ci, with_self=False)
        if not decl.any():
            continue
        cells = {}
        for q, k in zip(*np.nonzero(decl)):
            key = (int(labels.frame[queries[q]]), int(labels.frame[k]))
            cells[key] = cells.get(key, False) or bool(strength[q, k] > rtol)
        dead = tuple(sorted(k for k, alive in cells.items() if not alive))
        if dead:
            out.append(DeadLink(where, ci, c.src, c.dst, fn, dead, len(dead) == len(cells), len(cells)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dead_links_equal_the_dense_reference(seed):
    lay, topo = _random_structure(30, 120, seed)
    plan = lower(topo, lay, warn_unlinked=False)
    rng = np.random.default_rng(seed)
    labels = PositionLabels(lay)
    queries = np.sort(rng.choice(int(plan.n), size=70, replace=False))
    # a strength matrix with holes: some declared cells carry signal, some do not
    strength = rng.random((len(queries), int(plan.n))) * (rng.random((len(queries), int(plan.n))) < 0.3)
    got = dead_entries("layer", plan, strength, queries, labels, 0.5)
    assert got == _reference_dead("layer", plan, strength, queries, labels, 0.5)
    assert any(d.checked_cells == 0 for d in got) and any(d.checked_cells and not d.whole for d in got)
    some = list(range(0, len(topo.connections), 3))
    assert dead_entries("x", plan, strength, queries, labels, 0.5, some) == \
        _reference_dead("x", plan, strength, queries, labels, 0.5, some)


def test_verify_report_on_a_random_topology_is_unchanged():
    """A whole verify run (layer, sampled queries): every dead link and note as the reference
    dead-link pass finds them on the same probes."""
    lay, topo = _random_structure(20, 60, 3)
    torch.manual_seed(0)
    layer = CanvasAttention(topo, lay, n_heads=2)
    rep = verify_structure(layer, max_exact=40, samples=48, probes=1)
    assert rep.ok and not rep.undeclared and not rep.exact and rep.n_positions == 120
    unlinked = sorted(d.connection for d in rep.dead if d.checked_cells == 0)
    assert unlinked == sorted(set(range(len(topo.connections))) - linked_connections(layer.plan))


class _Plain(nn.Module):
    """Reads each position alone: verifies against any topology."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x)


def test_a_stale_plan_is_refused_by_name():
    lay, topo = _random_structure(4, 6, 5)
    plan = lower(topo, lay, warn_unlinked=False)
    assert verify_structure(_Plain(), plan=plan, probes=1).n_positions == int(plan.n)
    topo.connections.append(Connection("r0", "r3", t_src=0, t_dst=0))
    with pytest.raises(SchemaError, match=r"(?s)verify_structure.*lower the plan again"):
        verify_structure(_Plain(), plan=plan, probes=1)
    fresh = lower(topo, lay, warn_unlinked=False)
    assert verify_structure(_Plain(), plan=fresh, probes=1).ok


def test_a_plan_of_a_changed_layout_is_refused():
    lay, topo = _random_structure(4, 6, 6)
    plan = lower(topo, lay, warn_unlinked=False)
    lay.regions["r0"] = RegionSpec((0, 2, 0, 2))
    with pytest.raises(SchemaError, match="verify_structure"):
        verify_structure(_Plain(), plan=plan, probes=1)

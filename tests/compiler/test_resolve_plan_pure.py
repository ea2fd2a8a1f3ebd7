"""`resolve_plan` returns a new plan and leaves the one it was given as it was; one record per group."""

from __future__ import annotations

import dataclasses

import pytest

from canvas_core.compiler.lowering import lower, restrict
from canvas_core.compiler.resolution import resolve_connections, resolve_plan
from canvas_core.compiler.resolved import ConnectionResolution, ResolvedGroup
from canvas_core.errors import UnknownNameError
from canvas_core.plugins.host import PluginHost, use_host
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

REGIONS = {"obs": (0, 2, 0, 1, 0, 4), "state": (0, 2, 1, 2, 0, 4), "mem": (0, 2, 2, 3, 0, 4)}
CONNS = [
    Connection("obs", "obs"),
    Connection("state", "obs", fn="linear_attention"),
    Connection("state", "mem", weight=0.5),
    Connection("mem", "state"),
]


@pytest.fixture
def host():
    with use_host(PluginHost(autoload=False)) as h:
        yield h


def _plan(conns=CONNS):
    layout = CanvasLayout(T=2, H=3, W=4, d_model=16, regions=dict(REGIONS))
    return lower(CanvasTopology(connections=list(conns)), layout), layout


def test_input_plan_is_not_changed(host):
    plan, _ = _plan()
    before = {fn: g.resolved for fn, g in plan.groups.items()}
    out = resolve_plan(plan)
    assert out is not plan
    assert {fn: g.resolved for fn, g in plan.groups.items()} == before == {fn: None for fn in plan.groups}
    assert plan.resolutions == {} and not plan.is_resolved
    assert out.is_resolved and set(out.resolutions) == {0, 1, 2, 3}
    # the arrays are shared, not copied; each group carries one frozen record
    for fn, g in out.groups.items():
        assert g.q0 is plan.groups[fn].q0
        assert isinstance(g.resolved, ResolvedGroup)
        with pytest.raises(dataclasses.FrozenInstanceError):
            g.resolved.note = "x"


def test_rows_are_computed_from_the_group_records(host):
    out = resolve_plan(_plan()[0])
    for i, fn in enumerate(out.fn_of_connection):
        row = out.resolutions[i]
        rg = out.groups[fn].resolved
        assert row == ConnectionResolution.of(rg, i, CONNS[i])
        assert (row.requested, row.kernel, row.implementation) == (fn, rg.kernel_name, rg.attention.name)


def test_only_and_failure_leave_the_input_alone(host):
    plan, _ = _plan()
    part = resolve_plan(plan, only=["linear_attention"])
    assert part.groups["linear_attention"].resolved is not None
    assert part.groups["cross_attention"].resolved is None
    assert set(part.resolutions) == {1}
    bad, _ = _plan([Connection("obs", "obs", fn="no_such_type")])
    with pytest.raises(UnknownNameError, match="connection #0"):
        resolve_plan(bad)
    assert bad.groups["no_such_type"].resolved is None


def test_restrict_and_resolve_connections_agree(host):
    plan, layout = _plan()
    out = resolve_plan(plan)
    sub = restrict(out, {"state"})
    assert [(r.src, r.dst, r.index) for r in sub.resolutions.values()] == [("state", "obs", 0), ("state", "mem", 1)]
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=list(CONNS)))
    assert resolve_connections(schema) == out.resolutions

"""Public behaviour compared with the peer package canvas-engineering 0.5.0 (skipped when absent):
same region names and order, same connections and offsets, same families and semantic types,
same operators (canvas-engineering's wiring table on every connection), same auto-sized placement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import pytest

import canvas_core as cc

ce = pytest.importorskip("canvas_engineering")

def _world(F):
    @dataclass
    class Cam:
        rgb: F = F(4, 4, family="observation")
        depth: F = F(2, 2, family="observation")

    @dataclass
    class Agent:
        thought: F = F(2, 2, family="state")
        act: F = F(1, 2, family="action")
        mem: F = F(1, 3, family="memory")

    @dataclass
    class World:
        camera: Cam = field(default_factory=Cam)
        agents: List[Agent] = field(default_factory=lambda: [Agent(), Agent(), Agent()])
        belief: F = F(3, 3, family="state", tags=("belief",))
        err: F = F(1, 1, family="residual")
        plain: F = F(1, 2)

    return World()


def _robot(F):
    @dataclass
    class Robot:
        camera: F = F(6, 6, family="observation")
        belief: F = F(4, 4, family="state", tags=("belief",))
        action: F = F(1, 4, family="action", loss_weight=2.0)

    return Robot()


POLICIES = [dict(), dict(intra="star"), dict(intra="causal_chain"), dict(intra="isolated"),
            dict(array_element="dense"), dict(array_element="ring"), dict(temporal="causal"),
            dict(temporal="same_frame")]


@pytest.mark.parametrize("make", [_robot, _world])
@pytest.mark.parametrize("policy", POLICIES)
def test_same_regions_connections_and_operators(make, policy):
    b1, p1 = cc.compile_program(make(cc.Field), T=4, d_model=32, connectivity=cc.ConnectivityPolicy(**policy))
    b2, p2 = ce.compile_program(make(ce.Field), T=4, d_model=32, connectivity=ce.ConnectivityPolicy(**policy))
    assert b1.field_names == b2.field_names
    for name in b1.field_names:
        r1, r2 = b1.layout.regions[name], b2.layout.regions[name]
        size2 = tuple(r2.bounds[k + 1] - r2.bounds[k] for k in range(0, len(r2.bounds), 2))
        assert r1.extent == size2 and r1.period == r2.period and r1.loss_weight == r2.loss_weight
        assert r1.semantic_type == r2.semantic_type and r1.carrier == r2.carrier
        assert p1.regions[name].family == p2.regions[name].family
        assert p1.regions[name].tags == p2.regions[name].tags
    c1 = [(c.src, c.dst, c.t_src, c.t_dst) for c in p1.schema.topology.connections]
    c2 = [(c.src, c.dst, c.t_src, c.t_dst) for c in p2.schema.topology.connections]
    assert c1 == c2
    assert [a.operator for a in p1.schema.topology.connections] == [
        b.operator for b in p2.schema.topology.connections]
    assert [b1.layout.regions[n].bounds for n in b1.field_names] == [
        tuple(b2.layout.region_spec(n).bounds) for n in b2.field_names]
    assert b1.layout.spatial_shape == tuple(b2.layout.spatial_shape)


def test_seed_robot_operators_equal_canvas_engineering():
    _, p1 = cc.compile_program(_robot(cc.Field), T=8, d_model=256)
    _, p2 = ce.compile_program(_robot(ce.Field), T=8, d_model=256)
    ours = [(c.src, c.dst, c.operator) for c in p1.schema.topology.connections if c.operator != "attend"]
    theirs = [(c.src, c.dst, c.operator) for c in p2.schema.topology.connections if c.operator != "attend"]
    assert ours == theirs == [("camera", "belief", "observe"), ("belief", "camera", "predict"),
                              ("belief", "belief", "integrate"), ("belief", "action", "act"),
                              ("action", "belief", "intervene")]


def test_canvas_engineering_program_files_load():
    _, p2 = ce.compile_program(_robot(ce.Field), T=8, d_model=256)
    loaded = cc.CanvasProgram.from_dict(p2.to_dict())
    assert list(loaded.regions) == ["camera", "belief", "action"]
    assert loaded.regions["belief"].tags == ("belief",)
    ops = {(c.src, c.dst): c.operator for c in loaded.schema.topology.connections}
    assert ops[("camera", "belief")] == "observe"


def test_explicit_canvas_placement_matches():
    b1 = cc.compile_schema(_robot(cc.Field), T=2, spatial_shape=(16, 16))
    b2 = ce.compile_schema(_robot(ce.Field), T=2, spatial_shape=(16, 16))
    assert {n: s.bounds for n, s in b1.layout.regions.items()} == {n: s.bounds for n, s in b2.layout.regions.items()}

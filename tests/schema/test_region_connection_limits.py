"""The number of regions and of connections is bounded (CANVAS_MAX_REGIONS, CANVAS_MAX_CONNECTIONS).

Before these limits a list of 5,000 fields wired all-to-all ran out of memory in the program
wiring, and a million regions took tens of seconds to compile. Most cases lower a limit so that
a small input stands for the runaway one; the time bound checks that the refusal comes before
the work.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

import canvas_core as cc
from canvas_core.errors import CanvasError, SizeLimitError
from canvas_core.program import ConnectivityPolicy, Field, compile_program, compile_schema
from canvas_core.schema.limits import limit, size_limits


class _Bag:  # a plain object; attributes are set by the tests
    pass


def _refused_quickly(make, *words):
    start = time.perf_counter()
    with pytest.raises(SizeLimitError) as info:
        make()
    assert time.perf_counter() - start < 5.0, "refused only after doing the work"
    msg = str(info.value)
    for word in words:
        assert word in msg, msg
    assert isinstance(info.value, CanvasError) and isinstance(info.value, ValueError)
    return msg


def test_defaults_are_in_size_limits():
    limits = size_limits()
    assert limits["regions"] == 65_536 and limits["connections"] == 262_144


def test_a_dense_list_of_fields_is_refused_before_wiring():
    bag = _Bag()
    bag.items = [Field(1, 1)] * 1_000  # a million pairs under the default limits
    msg = _refused_quickly(lambda: compile_program(bag, T=1), "_Bag (the root object)", "intra='dense'",
                           "1,000 fields", "1,000,000 connections", "intra='causal_chain'",
                           "CANVAS_MAX_CONNECTIONS")
    assert "'items[0]'" in msg and "'items[999]'" in msg


def test_many_plain_attributes_are_refused_naming_the_nested_object(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "1000")
    inner = _Bag()
    for i in range(40):
        setattr(inner, f"f{i}", Field(1, 1))
    outer = _Bag()
    outer.robot = inner
    _refused_quickly(lambda: compile_schema(outer), "_Bag at 'robot'", "40 fields", "1,600 connections",
                     "(1,601 with those made before)")


def test_a_sparser_policy_compiles_the_same_fields():
    bag = _Bag()
    bag.items = [Field(1, 1)] * 2_000
    bound = compile_schema(bag, connectivity=ConnectivityPolicy(intra="causal_chain"))
    assert len(bound.topology.connections) == 2 * 2_000 - 1


def test_a_dense_list_of_objects_is_refused_naming_the_list(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "1000")

    @dataclasses.dataclass
    class Agent:
        x: Field = dataclasses.field(default_factory=lambda: Field(1, 1))

    bag = _Bag()
    bag.agents = [Agent() for _ in range(50)]
    _refused_quickly(lambda: compile_schema(bag, connectivity=ConnectivityPolicy(array_element="matched_fields")),
                     "array_element='matched_fields'", "50 elements", "'agents'", "array_element='ring'")


def test_many_sparse_connections_are_stopped_at_the_limit(monkeypatch):
    # no single object is dense, but the total passes the limit: stopped while wiring
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "100")
    bag = _Bag()
    bag.items = [Field(1, 1)] * 200
    _refused_quickly(lambda: compile_schema(bag, connectivity=ConnectivityPolicy(intra="star")),
                     "more than 100 connections", "CANVAS_MAX_CONNECTIONS")
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", str(3 * 200 - 2))  # star: 3 per field but the hub's 2
    assert len(compile_schema(bag, connectivity=ConnectivityPolicy(intra="star")).topology.connections) == 598


def test_too_many_fields_are_refused_while_walking_the_tree(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_REGIONS", "100")
    bag = _Bag()
    bag.items = [Field(1, 1)] * 150
    _refused_quickly(lambda: compile_schema(bag, connectivity=ConnectivityPolicy(intra="isolated")),
                     "more than 100 regions", "'items[100]'", "CANVAS_MAX_REGIONS")


def test_nested_objects_count_as_regions(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_REGIONS", "3")

    @dataclasses.dataclass
    class Arm:
        a: Field = dataclasses.field(default_factory=lambda: Field(1, 1))

    bag = _Bag()
    bag.x = Field(1, 1)
    bag.arm = Arm()  # x, arm.a and the coarse region 'arm': 3
    assert len(compile_schema(bag).layout.regions) == 3
    bag.y = Field(1, 1)
    _refused_quickly(lambda: compile_schema(bag), "more than 3 regions")


def test_layout_with_too_many_regions_is_refused(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_REGIONS", "10")
    n = limit("regions") + 1
    regions = {f"r{i}": (0, 1, 0, 1, i, i + 1) for i in range(n)}
    _refused_quickly(lambda: cc.CanvasLayout(T=1, H=1, W=n, d_model=8, regions=regions),
                     "CanvasLayout number of regions = 11", "limit 10 ", "CANVAS_MAX_REGIONS")
    assert len(cc.CanvasLayout(T=1, H=1, W=n, d_model=8, regions=dict(list(regions.items())[:10])).regions) == 10


def test_topology_with_too_many_connections_is_refused(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "10")
    conns = [cc.Connection("a", "b")] * 11
    _refused_quickly(lambda: cc.CanvasTopology(conns), "CanvasTopology number of connections = 11",
                     "CANVAS_MAX_CONNECTIONS")
    assert len(cc.CanvasTopology(conns[:10]).connections) == 10


def test_all_pairs_constructors_refuse_before_building(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "100")
    names = [f"r{i}" for i in range(20)]
    _refused_quickly(lambda: cc.CanvasTopology.dense(names), "CanvasTopology.dense of 20 regions",
                     "number of connections = 400", "hub_spoke")
    _refused_quickly(lambda: cc.CanvasTopology.causal_temporal(names), "causal_temporal", "= 420")
    assert len(cc.CanvasTopology.dense(names[:10]).connections) == 100


def test_schema_file_counts_are_checked_before_validation(monkeypatch):
    layout = cc.CanvasLayout(T=1, H=1, W=4, d_model=8, regions={f"r{i}": (0, 1, 0, 1, i, i + 1) for i in range(4)})
    text = cc.CanvasSchema(layout=layout, topology=cc.CanvasTopology.dense(list(layout.regions))).to_json()
    monkeypatch.setenv("CANVAS_MAX_REGIONS", "3")
    with pytest.raises(SizeLimitError, match="'regions': number of regions = 4 .*CANVAS_MAX_REGIONS"):
        cc.CanvasSchema.from_json(text)
    monkeypatch.delenv("CANVAS_MAX_REGIONS")
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "15")
    with pytest.raises(SizeLimitError, match="'topology': number of connections = 16 .*CANVAS_MAX_CONNECTIONS"):
        cc.CanvasSchema.from_json(text)
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "16")
    assert len(cc.CanvasSchema.from_json(text).topology.connections) == 16


def test_connections_appended_after_construction_are_checked_when_building(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_CONNECTIONS", "4")
    layout = cc.CanvasLayout(T=2, H=4, W=4, d_model=16,
                             regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
    topology = cc.CanvasTopology(connections=[cc.Connection("a", "b")])  # within the limit here
    topology.connections.extend(cc.Connection("b", "a") for _ in range(5))
    _refused_quickly(lambda: cc.CanvasAttention(topology, layout), "CanvasTopology number of connections = 6",
                     "CANVAS_MAX_CONNECTIONS")
    layout.regions.update({f"r{i}": (0, 1, 0, 1, i % 4, i % 4 + 1) for i in range(9)})
    monkeypatch.setenv("CANVAS_MAX_REGIONS", "8")
    topology.connections[1:] = []
    _refused_quickly(lambda: cc.CanvasAttention(topology, layout), "CanvasLayout number of regions = 11",
                     "CANVAS_MAX_REGIONS")


def test_a_non_connection_appended_to_a_topology_is_named_when_building():
    layout = cc.CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 2, 0, 2)})
    topology = cc.CanvasTopology(connections=[cc.Connection("a", "a")])
    topology.connections.append(("a", "a"))
    with pytest.raises(cc.CanvasError, match=r"connection #1 must be a Connection, got tuple"):
        cc.CanvasAttention(topology, layout)


def test_a_raw_region_put_into_a_built_layout_is_named_when_building():
    layout = cc.CanvasLayout(T=1, H=2, W=4, d_model=8, regions={"a": (0, 1, 0, 1, 0, 4)})
    topology = cc.CanvasTopology(connections=[cc.Connection("a", "a")])
    layout.regions["c"] = (0, 1, 1, 2, 0, 4)  # the constructor's form, but never checked
    with pytest.raises(cc.CanvasError, match=r"region 'c' is a tuple .*build a new CanvasLayout"):
        cc.CanvasAttention(topology, layout)

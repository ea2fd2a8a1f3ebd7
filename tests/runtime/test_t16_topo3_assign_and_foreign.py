"""Connections assigned in any way, and topologies that are not a ``CanvasTopology``.

``topology.connections = value`` used to copy only a list or a tuple: a generator stayed a
generator (a raw TypeError later), a set was kept (its order varies with the hash seed) and
None was accepted.  A list written into the topology's ``__dict__`` (behind ``__setattr__``) was
not seen by a compiled layer, which ran its old plan while the eager layer refused.  A topology
of another kind (canvas-engineering's, or any object with ``connections``) had no check at all.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import canvas_engineering as ce
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from canvas_core import CanvasAttention
from canvas_core.errors import CanvasTypeError, SchemaError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
from canvas_core.schema._connection_list import ConnectionList
from canvas_core.testing import one_thread_fixture

_one_thread = one_thread_fixture()
STALE = "before its connections were changed"


def _layout(n: int = 2) -> CanvasLayout:
    return CanvasLayout(T=2, d_model=8, spatial_shape=(n,), regions={f"r{i}": (0, 2, i, i + 1) for i in range(n)})


def _topology(n: int = 2) -> CanvasTopology:
    return CanvasTopology(connections=[Connection(f"r{i}", f"r{i}") for i in range(n)])


def _layer(topology, n: int = 2) -> CanvasAttention:
    torch.manual_seed(0)
    return CanvasAttention(topology, _layout(n), n_heads=2).eval()


@pytest.mark.parametrize("value, words", [
    (lambda c: set(c), "a set has no defined order"),
    (lambda c: frozenset(c), "a set has no defined order"),
    (lambda c: {x: 1 for x in c}, "iterating a mapping yields only its keys"),
    (lambda c: None, "must be a list of Connection, got NoneType"),
    (lambda c: "r0", "must be a list of Connection, got str"),
    (lambda c: 5, "must be a list of Connection, got int"),
])
def test_unordered_or_non_list_connections_are_refused_on_assignment(value, words):
    t = _topology()
    before = list(t.connections)
    with pytest.raises(CanvasTypeError, match=words):
        t.connections = value(before)
    assert t.connections == before and type(t.connections) is ConnectionList


@pytest.mark.parametrize("value", [
    lambda c: (x for x in c), lambda c: iter(c), lambda c: tuple(c), lambda c: {x: 1 for x in c}.keys(),
    lambda c: reversed(c),
])
def test_any_ordered_iterable_is_copied_into_a_counting_list_in_its_order(value):
    t = _topology(3)
    order = list(value(list(t.connections)))
    t.connections = value(list(t.connections))
    assert type(t.connections) is ConnectionList and t.connections == order
    t.validate(_layout(3))  # a generator used to stay a generator here


def test_a_generator_assigned_after_the_build_is_refused_not_a_type_error():
    t = _topology()
    layer, x = _layer(t), torch.randn(1, 4, 8)
    t.connections = (c for c in [Connection("r0", "r1"), Connection("r1", "r1")])
    with pytest.raises(SchemaError, match=STALE):
        layer(x)
    assert CanvasAttention(t, _layout(), n_heads=2)(x).shape == x.shape  # and a new layer takes it


def _bypass(how: str, t: CanvasTopology) -> None:
    new = [Connection("r0", "r1"), Connection("r1", "r1")]  # as many as before, one replaced
    if how == "dict":
        t.__dict__["connections"] = new
    elif how == "vars_update":
        vars(t).update(connections=new)
    elif how == "object_setattr":
        object.__setattr__(t, "connections", new)
    elif how == "counting_list":
        t.__dict__["connections"] = ConnectionList(new)
    else:
        t.__dict__["connections"] = set(new)


@pytest.mark.parametrize("how", ["dict", "vars_update", "object_setattr", "counting_list", "set"])
def test_a_compiled_layer_refuses_connections_written_behind_setattr(how):
    torch._dynamo.reset()
    t = _topology()
    layer, x = _layer(t), torch.randn(1, 4, 8)
    f = torch.compile(layer, backend="eager")
    f(x)
    _bypass(how, t)
    with pytest.raises(SchemaError, match=STALE):
        f(x)
    with pytest.raises(SchemaError, match=STALE):
        layer(x)


def test_a_set_written_behind_setattr_is_refused_when_a_layer_is_built():
    t = _topology()
    t.__dict__["connections"] = set(t.connections)
    with pytest.raises(CanvasTypeError, match="a set has no defined order"):
        _layer(t)


def test_a_compiled_layer_compiles_once_for_twenty_calls_and_once_per_change():
    torch._dynamo.reset()
    t = _topology()
    layer, x = _layer(t), torch.randn(1, 4, 8)
    counter = CompileCounter()
    f = torch.compile(layer, backend=counter)
    y = f(x)
    frames = counter.frame_count
    for _ in range(19):
        f(x)
    assert counter.frame_count == frames
    t.connections.append(Connection("r0", "r1"))
    with pytest.raises(SchemaError, match=STALE):
        f(x)
    t.connections.pop()  # undone: accepted, after one recompile
    assert torch.allclose(f(x), y)
    again = counter.frame_count
    for _ in range(5):
        f(x)
    assert counter.frame_count == again


# --- topologies that are not a CanvasTopology ------------------------------------------------------
def _ce_topology() -> "ce.CanvasTopology":
    return ce.CanvasTopology(connections=[ce.Connection("r0", "r0"), ce.Connection("r1", "r1")])


def _duck_topology() -> SimpleNamespace:
    return SimpleNamespace(connections=[Connection("r0", "r0"), Connection("r1", "r1")],
                           resolve_fn=lambda c, layout: "cross_attention")


@pytest.mark.parametrize("make", [_ce_topology, _duck_topology])
@pytest.mark.parametrize("change", ["append", "setitem", "reverse", "assign", "weight"])
def test_a_layer_refuses_a_foreign_topology_changed_after_its_build(make, change):
    t = make()
    layer, x = _layer(t), torch.randn(1, 4, 8)
    y = layer(x)
    conn = type(t.connections[0])
    before = list(t.connections)
    if change == "append":
        t.connections.append(conn("r0", "r1"))
    elif change == "setitem":
        t.connections[0] = conn("r0", "r1")
    elif change == "reverse":
        t.connections.reverse()
    elif change == "assign":
        t.connections = [conn("r0", "r1"), conn("r1", "r1")]
    else:  # a frozen connection edited in place: seen too, the snapshot holds the values
        object.__setattr__(t.connections[0], "weight", 2.0)
    with pytest.raises(SchemaError, match=STALE + ".*build the CanvasAttention again"):
        layer(x)
    if change == "weight":
        object.__setattr__(t.connections[0], "weight", 1.0)
    else:
        t.connections = before
    assert torch.equal(layer(x), y)  # undone: accepted


def test_a_compiled_layer_refuses_a_changed_foreign_topology():
    torch._dynamo.reset()
    t = _ce_topology()
    layer, x = _layer(t), torch.randn(1, 4, 8)
    f = torch.compile(layer, backend="eager")
    y = f(x)
    t.connections[0] = ce.Connection("r0", "r1")
    with pytest.raises(SchemaError, match=STALE):
        f(x)
    t.connections[0] = ce.Connection("r0", "r0")  # an equal connection: the same plan
    assert torch.equal(f(x), y)


def test_a_pickled_layer_of_a_foreign_topology_keeps_its_check():
    layer, x = _layer(_ce_topology()), torch.randn(1, 4, 8)
    twin = pickle.loads(pickle.dumps(layer))
    assert torch.equal(twin(x), layer(x))
    twin.plan.topology.connections.append(ce.Connection("r0", "r1"))
    with pytest.raises(SchemaError, match=STALE):
        twin(x)
    assert layer(x).shape == x.shape  # the original's topology is another object

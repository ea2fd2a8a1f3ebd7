"""A layer built from a topology refuses the topology once its connections changed.

``CanvasAttention`` lowers ``topology.connections`` into its plan when it is built.  A connection
appended (or removed, replaced, reordered) afterwards used to be ignored: the layer ran the old
plan silently.  ``topology.connections`` now counts its changes (a list subclass), the layer
records the count at build and refuses a changed topology before every call, eager and compiled
(with a constant number of guards whatever the number of connections).
"""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch

from canvas_core import CanvasAttention
from canvas_core.errors import SchemaError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection
from canvas_core.schema._connection_list import ConnectionList
from canvas_core.testing import one_thread_fixture

_one_thread = one_thread_fixture()
STALE = "before its connections were changed"


def _schema(n: int = 2) -> CanvasSchema:
    regions = {f"r{i}": (0, 2, i, i + 1) for i in range(n)}
    layout = CanvasLayout(T=2, d_model=8, spatial_shape=(n,), regions=regions)
    conns = [Connection(f"r{i}", f"r{i}") for i in range(n)]
    return CanvasSchema(layout=layout, topology=CanvasTopology(connections=conns))


def _layer(s: CanvasSchema) -> CanvasAttention:
    torch.manual_seed(0)
    return CanvasAttention(s.topology, s.layout, n_heads=2).eval()


@pytest.mark.parametrize("change", ["append", "del", "setitem", "insert", "reverse", "iadd", "assign", "clear"])
def test_the_layer_refuses_a_topology_changed_after_it_was_built(change):
    s = _schema(3)
    layer, x = _layer(s), torch.randn(1, 6, 8)
    layer(x)
    conns = s.topology.connections
    extra = Connection("r0", "r1")
    {"append": lambda: conns.append(extra), "del": lambda: conns.__delitem__(0),
     "setitem": lambda: conns.__setitem__(1, extra), "insert": lambda: conns.insert(0, extra),
     "reverse": conns.reverse, "iadd": lambda: conns.__iadd__([extra]), "clear": conns.clear,
     "assign": lambda: setattr(s.topology, "connections", list(conns) + [extra])}[change]()
    with pytest.raises(SchemaError, match=f"CanvasAttention was built from this CanvasTopology {STALE}.*build the "
                                          "CanvasAttention again"):
        layer(x)


def test_a_change_undone_is_accepted_and_gives_the_same_output():
    s = _schema()
    layer, x = _layer(s), torch.randn(1, 4, 8)
    y = layer(x)
    s.topology.connections.append(Connection("r0", "r1"))
    s.topology.connections.pop()
    assert torch.equal(layer(x), y)


def test_copies_of_the_layer_run_and_refuse_changes_of_their_own_topology():
    s = _schema()
    layer, x = _layer(s), torch.randn(1, 4, 8)
    y = layer(x)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(twin(x), y)
        s.topology.connections.append(Connection("r0", "r1"))  # the original's topology: not the twin's
        assert torch.equal(twin(x), y)
        s.topology.connections.pop()
        twin.plan.topology.connections.append(Connection("r0", "r1"))
        with pytest.raises(SchemaError, match=STALE):
            twin(x)


def test_connections_stay_a_list_for_users():
    t = CanvasTopology(connections=[Connection("a", "a")])
    conns = t.connections
    assert isinstance(conns, list) and type(conns) is ConnectionList
    assert conns == [Connection("a", "a")] and t == CanvasTopology([Connection("a", "a")])
    assert json.dumps([c.src for c in conns]) == '["a"]'
    for twin in (copy.copy(t), copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert twin == t and type(twin.connections) is ConnectionList
    mine = [Connection("b", "b")]
    t.connections = mine  # copied into a counting list: the user's list is not shared
    assert type(t.connections) is ConnectionList and t.connections == mine and t.connections is not mine
    before = t.connections.version
    t.connections.append(Connection("a", "b"))
    assert t.connections.version != before


def _guards(n: int) -> int:
    torch._dynamo.reset()
    layer = _layer(_schema(n))
    seen = []

    def keep_all(entries):
        seen.extend(e for e in entries if any(w in e.name for w in ("topology", "connections", "_traced")))
        return [True] * len(entries)

    f = torch.compile(layer, backend="eager", options={"guard_filter_fn": keep_all})
    f(torch.randn(1, 2 * n, 8))
    return len(seen)


def test_compiled_guards_on_the_topology_do_not_grow_with_the_connections():
    assert _guards(2) == _guards(6) > 0


def test_a_compiled_layer_refuses_a_changed_topology_and_accepts_it_undone():
    torch._dynamo.reset()
    s = _schema()
    layer, x = _layer(s), torch.randn(1, 4, 8)
    f = torch.compile(layer, backend="eager")
    y = f(x)
    s.topology.connections.append(Connection("r1", "r0"))
    with pytest.raises(SchemaError, match=STALE):
        f(x)
    s.topology.connections.pop()
    assert torch.allclose(f(x), y)

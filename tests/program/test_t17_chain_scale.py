"""A deeply chained program (each object holding the previous one) builds in linear time: the
walk asked "does this object hold a Field?" of every level by searching the whole chain below it,
and the coarse field of every level summed every field below it (both O(N^2)).  The compiled
schema and program are unchanged."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass

import pytest

from canvas_core import Field, compile_program
from canvas_core.program import _values
from canvas_core.program._values import _holds_fields


class _Wrap:
    """No Field of its own: holds the next level through a list, plus a helper chain without Fields."""

    def __init__(self, inner) -> None:
        self.items = [inner]
        self.helper = type("Helper", (), {})()
        self.helper.tail = type("Tail", (), {})()
        self.helper.tail.n = 3


class _Node:
    def __init__(self, nxt, i: int) -> None:
        self.x = Field(1, 1 + i % 2, period=1 + i % 3, family="state")
        if nxt is not None:
            self.child = _Wrap(nxt) if i % 4 == 0 else nxt


@dataclass
class _Leaf:
    y: Field = Field(2, 2, period=4)


def _chain(n: int):
    node = _Node(None, 0)
    node.leaf = _Leaf()
    for i in range(1, n):
        node = _Node(node, i)
    return node


class _Bare:
    """A level holding only the next one: the chain's one Field is at its bottom."""

    def __init__(self, inner) -> None:
        self.inner = inner


#: sha256 of the schema and program compiled from _chain(n) before the change (n -> digest, regions, connections)
_BEFORE = {
    40: ("819df435858fbbb902915b4850b60afd9925c1889915ca48062b90c964236aad", 90, 250),
    150: ("ee1867cb1e2bcafd361d12bb25cd354383edcafb1b393cf36da5930da42c1fb8", 338, 938),
}


@pytest.mark.parametrize("n", sorted(_BEFORE))
def test_a_chain_compiles_to_the_same_schema_and_program(n):
    bound, program = compile_program(_chain(n), T=4, d_model=8)
    blob = json.dumps([bound.schema.to_dict(), program.to_dict()], sort_keys=True, default=str)
    got = (hashlib.sha256(blob.encode()).hexdigest(), len(bound.schema.layout.regions),
           len(bound.schema.topology.connections))
    assert got == _BEFORE[n]


def _counting(monkeypatch):
    calls = [0]
    inner = _values._plain_attributes

    def counted(obj):
        calls[0] += 1
        return inner(obj)
    monkeypatch.setattr(_values, "_plain_attributes", counted)
    return calls


def test_the_field_search_reads_each_object_a_bounded_number_of_times(monkeypatch):
    """Fields only at the bottom of 300 bare levels: each level's attributes are read a bounded
    number of times (were read once per level above it: 45,000 reads)."""
    n = 300
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20 * n))
    try:
        root = _Leaf()
        for _ in range(n):
            root = _Bare(root)
        calls = _counting(monkeypatch)
        bound, _ = compile_program(root, T=1, d_model=8)
    finally:
        sys.setrecursionlimit(old)
    assert len(bound.schema.layout.regions) == n + 1  # n coarse regions and the leaf's y
    assert calls[0] <= 3 * n


def test_the_memo_gives_the_answers_of_a_fresh_search():
    """Objects with and without Fields, sharing helpers, a helper cycle and lists, asked in
    every order with one shared memo: the same answers as a search per object."""
    class Obj:
        pass
    objs = [Obj() for _ in range(8)]
    objs[0].a, objs[0].b = objs[1], [objs[2]]
    objs[1].c = objs[3]
    objs[3].back = objs[1]          # a cycle of helpers, no Field
    objs[2].f = [1, Field(1, 1)]     # a Field in a list
    objs[4].d = (objs[0],)
    objs[5].e = _Leaf()             # a dataclass counts as holding Fields
    objs[6].g = objs[3]
    objs[7].h = "text"
    fresh = [_holds_fields(o) for o in objs]
    assert fresh == [True, False, True, False, True, True, False, False]
    for order in (list(range(8)), list(range(7, -1, -1)), [3, 0, 6, 1, 4, 2, 7, 5]):
        memo: dict = {}
        assert [(i, _holds_fields(objs[i], memo)) for i in order] == [(i, fresh[i]) for i in order]

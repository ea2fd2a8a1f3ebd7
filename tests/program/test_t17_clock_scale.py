"""Work that grows with what is distinct, not with what is repeated.

1. A clock tree that shares nodes (``x = And(x, x)`` in a loop) asked each node once per path, so
   ``evaluate`` was exponential in the depth; ``to_dict`` wrote out 2**depth dicts (out of memory
   at 40 levels) and ``from_dict`` of a dict reused inside itself built as many nodes.  Now
   ``evaluate`` asks each node once per call, and writing out / building more than ``MAX_NODES``
   nodes is refused before anything is allocated; ``from_dict`` measures a dict once.
2. ``validate_constraints`` searched for a cycle from every ``acyclic`` region afresh and scanned
   every connection for each ``forward_only`` region (quadratic on a chain of regions).
3. The canvas-argument errors said ``compile_schema`` when ``compile_program`` was called.

Every count below is of work done (calls, attribute reads), never of time.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core import (And, CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, ClockContext, Connection,
                         Cooldown, Field, MaxSilence, Not, OnEvent, Or, Periodic, compile_program, compile_schema,
                         validate_constraints)
from canvas_core.errors import CanvasError, ProgramError, SchemaFormatError
from canvas_core.program import canvas_program, clock_ir
from canvas_core.program.clock_ir import BoundaryExpr, ClockExpr
from canvas_core.program.specs import ConstraintSpec, RegionProgram


class _Counted(ClockExpr):
    """A custom leaf that counts how often it is asked."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.calls = 0

    def evaluate(self, ctx: ClockContext) -> bool:
        self.calls += 1
        return self.answer

    def to_dict(self) -> dict:
        return {"type": "periodic", "period": 1}


def _doubling(leaf: ClockExpr, levels: int, op=And) -> ClockExpr:
    x = leaf
    for _ in range(levels):
        x = op(x, x)
    return x


def _doubling_dict(levels: int) -> dict:
    d = {"type": "periodic", "period": 2}
    for _ in range(levels):
        d = {"type": "and", "left": d, "right": d}
    return d


# --- 1a. evaluate: each node once per call ----------------------------------------------------------
@pytest.mark.parametrize("op", [And, Or])
def test_shared_tree_asks_each_node_once_per_call(op):
    leaf = _Counted()
    expr = _doubling(leaf, 16, op)  # 2**16 paths to the leaf
    assert expr.evaluate(ClockContext()) is True
    assert leaf.calls == 1
    expr.evaluate(ClockContext(external_t=3))
    assert leaf.calls == 2  # memoised per call only


def test_forty_shared_levels_evaluate_with_one_visit_per_node(monkeypatch):
    calls = []
    original = Periodic.evaluate
    monkeypatch.setattr(Periodic, "evaluate", lambda self, ctx: calls.append(1) or original(self, ctx))
    expr = Not(MaxSilence(Cooldown(_doubling(Periodic(2), 40), steps=2), steps=5))
    assert expr.evaluate(ClockContext(external_t=4, last_fired=3)) is False  # Periodic(2) fires at 4
    assert len(calls) == 1
    assert expr.evaluate(ClockContext(external_t=5, last_fired=3)) is True
    assert len(calls) == 2


def test_cooldown_still_does_not_ask_its_child_while_cooling_down():
    leaf = _Counted()
    expr = And(Cooldown(leaf, steps=3), Cooldown(leaf, steps=3))
    assert not expr.evaluate(ClockContext(external_t=1, cooldown_until=2))
    assert leaf.calls == 0
    assert expr.evaluate(ClockContext(external_t=2, cooldown_until=2))
    assert leaf.calls == 1


def test_custom_node_overriding_a_combinator_is_asked_through_its_own_evaluate():
    class Never(And):
        def evaluate(self, ctx):
            return False if ctx.external_t else super().evaluate(ctx)

    inner = Never(Periodic(1), Periodic(1))
    assert Or(inner, Periodic(5)).evaluate(ClockContext(external_t=1)) is False
    assert Or(inner, Periodic(5)).evaluate(ClockContext(external_t=0)) is True


def _old_evaluate(node, ctx):
    """The recursive rules evaluate followed before (a reference)."""
    if isinstance(node, And):
        a, b = _old_evaluate(node.left, ctx), _old_evaluate(node.right, ctx)
        return a and b
    if isinstance(node, Or):
        a, b = _old_evaluate(node.left, ctx), _old_evaluate(node.right, ctx)
        return a or b
    if isinstance(node, Not):
        return not _old_evaluate(node.child, ctx)
    if isinstance(node, Cooldown):
        return ctx.external_t >= ctx.cooldown_until and _old_evaluate(node.child, ctx)
    if isinstance(node, MaxSilence):
        fired = _old_evaluate(node.child, ctx)
        return fired or ctx.last_fired < 0 or (ctx.external_t - ctx.last_fired) >= node.steps
    return node.evaluate(ctx)


_leaves = st.one_of(
    st.builds(Periodic, st.integers(1, 4)),
    st.builds(OnEvent, st.just("r.k"), gt=st.sampled_from([0.2, 0.5])),
    st.builds(BoundaryExpr, st.sampled_from(["ep", "reset"])),
)


def _combinators(children):
    return st.one_of(
        st.builds(And, children, children), st.builds(Or, children, children), st.builds(Not, children),
        st.builds(Cooldown, children, st.integers(0, 3)), st.builds(MaxSilence, children, st.integers(1, 4)),
    )


@st.composite
def _shared_trees(draw):
    """A random tree, with some nodes reused (a DAG)."""
    pool = [draw(_leaves) for _ in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(1, 12))):
        pick = st.sampled_from(pool)
        pool.append(draw(_combinators(pick)))
    return pool[-1]


@settings(max_examples=150, deadline=None)
@given(tree=st.recursive(_leaves, _combinators, max_leaves=12), shared=_shared_trees(),
       t=st.integers(0, 12), last=st.integers(-1, 12), cool=st.integers(0, 12),
       boundary=st.sampled_from([None, "ep", "reset"]), value=st.sampled_from([None, 0.1, 0.3, 0.9]))
def test_evaluate_agrees_with_the_recursive_rules(tree, shared, t, last, cool, boundary, value):
    ctx = ClockContext(external_t=t, last_fired=last, cooldown_until=cool, boundary=boundary,
                       summaries={"r": {} if value is None else {"k": value}})
    for expr in (tree, shared):
        assert expr.evaluate(ctx) == _old_evaluate(expr, ctx)
        assert ClockExpr.from_dict(expr.to_dict()).evaluate(ctx) == _old_evaluate(expr, ctx)


# --- 1b. to_dict / from_dict: refused past MAX_NODES before allocating --------------------------------
def test_to_dict_of_a_huge_shared_tree_is_refused_before_writing_anything(monkeypatch):
    calls = []
    original = Periodic.to_dict
    monkeypatch.setattr(Periodic, "to_dict", lambda self: calls.append(1) or original(self))
    for levels in (17, 40):  # 2**18 - 1 and 2**41 - 1 nodes written out
        expr = _doubling(Periodic(2), levels)
        with pytest.raises(ProgramError, match=r"MAX_NODES=100,000") as info:
            expr.to_dict()
        assert "And.to_dict()" in str(info.value)
    assert calls == []


def test_eq_hash_and_repr_of_a_huge_shared_tree_visit_each_node_once(monkeypatch):
    calls = []
    original = Periodic.to_dict
    monkeypatch.setattr(Periodic, "to_dict", lambda self: calls.append(1) or original(self))
    a, b, c = _doubling(Periodic(2), 40), _doubling(Periodic(2), 40), _doubling(Periodic(3), 40)
    assert a == b and hash(a) == hash(b)
    assert a != c and a != _doubling(Periodic(2), 39)
    assert len(calls) <= 4  # each pair of leaves compared once
    assert repr(a) == "<And: a clock of 2,199,023,255,551 nodes written out, 41 levels deep>"
    assert repr(And(Periodic(2), Periodic(3))) == ("And(left=Periodic(period=2, domain='external'), "
                                                   "right=Periodic(period=3, domain='external'))")


def test_to_dict_under_the_limit_is_unchanged():
    expr = _doubling(Periodic(2), 10)  # 2047 nodes written out
    d = expr.to_dict()
    assert d == _doubling_dict(10)
    assert ClockExpr.from_dict(d) == expr


def test_from_dict_of_a_dict_reused_inside_itself_is_refused_before_building(monkeypatch):
    built = []
    original = Periodic.__init__
    monkeypatch.setattr(Periodic, "__init__", lambda self, *a: built.append(1) or original(self, *a))
    for levels in (17, 40):
        with pytest.raises(SchemaFormatError, match=r"MAX_NODES=100,000"):
            ClockExpr.from_dict(_doubling_dict(levels))
    assert built == []


class _CountingDict(dict):
    """A dict that counts the reads of its keys."""

    reads = [0]

    def get(self, *args):
        self.reads[0] += 1
        return super().get(*args)

    def __getitem__(self, key):
        self.reads[0] += 1
        return super().__getitem__(key)


def test_from_dict_reads_each_node_of_a_deep_dict_a_bounded_number_of_times():
    levels = 190  # under MAX_DEPTH: the depth check once per dict, not once per dict per ancestor
    d = _CountingDict(type="periodic", period=3)
    for _ in range(levels):
        d = _CountingDict(type="not", child=d)
    _CountingDict.reads[0] = 0
    expr = ClockExpr.from_dict(d)
    assert expr.to_dict() == d
    assert _CountingDict.reads[0] <= 12 * (levels + 1)  # before: about 3 * levels**2 / 2


def test_from_dict_of_a_legitimately_large_tree_within_the_limit_loads():
    leaves = [{"type": "periodic", "period": 1 + i % 5} for i in range(4096)]
    while len(leaves) > 1:  # a balanced tree of 8191 distinct dicts
        leaves = [{"type": "or", "left": a, "right": b} for a, b in zip(leaves[::2], leaves[1::2])]
    expr = ClockExpr.from_dict(leaves[0])
    assert expr.to_dict() == leaves[0]


def test_a_dict_containing_itself_is_refused_as_too_deep():
    d = {"type": "not"}
    d["child"] = d
    with pytest.raises(SchemaFormatError, match="nested more than 200 levels"):
        ClockExpr.from_dict(d)


def test_max_nodes_is_documented():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "clocks.md").read_text()
    assert "MAX_NODES" in text and f"{clock_ir.MAX_NODES:,}" in text


# --- 2. validate_constraints: linear on a chain, same violations ---------------------------------------
def _old_validate(program):
    """validate_constraints's violations as computed before (a reference: a fresh cycle search per
    acyclic region, a scan of every connection per forward_only region)."""
    conns = program.schema.topology.connections
    graph = {}
    for c in conns:
        if c.src != c.dst and c.dst not in graph.get(c.src, ()):
            graph.setdefault(c.src, []).append(c.dst)
    out = []
    for name, rp in program.regions.items():
        cs = rp.constraints
        if cs is None:
            continue
        if cs.causal_direction == "acyclic":
            cycle = _old_find_cycle(graph, name)
            if cycle:
                out.append(f"{name}: causal_direction='acyclic' violated — cycle {' -> '.join(cycle)}")
        elif cs.causal_direction == "forward_only":
            t0, seen = program.schema.layout.regions[name].t0, set()
            for c in conns:
                if c.src == name and c.dst != name and c.dst not in seen:
                    seen.add(c.dst)
                    dt0 = program.schema.layout.regions[c.dst].t0
                    if dt0 < t0:
                        out.append(f"{name}: causal_direction='forward_only' violated — connects to {c.dst} "
                                   f"(t0={dt0} < {t0})")
    return out


def _old_find_cycle(graph, start):
    state, path, stack = {start: 1}, [start], [(start, iter(graph.get(start, ())))]
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            stack.pop()
            path.pop()
            state[node] = 2
            continue
        s = state.get(nxt, 0)
        if s == 1:
            return path[path.index(nxt):] + [nxt]
        if s == 0:
            state[nxt] = 1
            path.append(nxt)
            stack.append((nxt, iter(graph.get(nxt, ()))))
    return None


def _make_program(n, edges, marks, T=4):
    names = [f"r{i}" for i in range(n)]
    regions = {nm: (i % T, T, i, i + 1) for i, nm in enumerate(names)}
    lay = CanvasLayout(T=T, d_model=4, spatial_shape=(n,), regions=regions)
    topo = CanvasTopology([Connection(names[a], names[b]) for a, b in edges])
    progs = {names[i]: RegionProgram(constraints=ConstraintSpec(causal_direction=m)) for i, m in marks.items()}
    return CanvasProgram(schema=CanvasSchema(layout=lay, topology=topo), regions=progs)


@pytest.mark.parametrize("seed", range(40))
def test_validate_constraints_reports_what_the_old_checks_reported(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, 3 * n))]
    marks = {i: rng.choice(["acyclic", "forward_only", None]) for i in range(n) if rng.random() < 0.7}
    program = _make_program(n, edges, marks)
    assert validate_constraints(program) == _old_validate(program)


def test_validate_constraints_on_a_chain_does_linear_work(monkeypatch):
    n = 600
    marks = {i: ("acyclic" if i % 2 else "forward_only") for i in range(n)}
    program = _make_program(n, [(i, i + 1) for i in range(n - 1)], marks)
    expected = _old_validate(program)
    reads, searched = [0], [0]

    def src(self):
        reads[0] += 1
        return self.__dict__["src"]

    def counting_iter(x):
        searched[0] += 1
        return iter(x)

    monkeypatch.setattr(Connection, "src", property(src), raising=False)
    monkeypatch.setattr(canvas_program, "iter", counting_iter, raising=False)
    assert validate_constraints(program) == expected
    assert searched[0] <= 2 * n  # before: a search from every acyclic region, n**2 / 4 visits
    assert reads[0] <= 20 * n  # before: every connection read for every forward_only region


# --- 3. the canvas argument errors name the function called -----------------------------------------------
class _Prog:
    def __init__(self) -> None:
        self.a = Field(1, 1)


@pytest.mark.parametrize("kwargs", [dict(spatial_shape="8x8"), dict(spatial_shape=()), dict(H=0),
                                    dict(spatial_shape=(4, 4), H=3), dict(packing="loose")])
@pytest.mark.parametrize("fn", [compile_schema, compile_program])
def test_canvas_errors_name_the_function_called(fn, kwargs):
    with pytest.raises(CanvasError) as info:
        fn(_Prog(), **kwargs)
    assert str(info.value).startswith(f"{fn.__name__}:")

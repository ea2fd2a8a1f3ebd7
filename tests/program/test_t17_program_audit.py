"""Program-layer audit: ordered canvas shapes, mixed lists, unapplied connection labels,
program_distance arguments, validate_constraints on a changed program, clock trees changed
after construction, and cortex registries that do not fit the compiled layout."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from canvas_core import (And, CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, ClockContext, Connection,
                         ConnectionProgram, ConnectivityPolicy, ConstraintSpec, Cooldown, CortexRegistry, CortexSpec,
                         Field, MaxSilence, Not, OnEvent, Periodic, ProgramCompiler, RegionProgram, RegionScheduler,
                         RegionSpec, compile_program, compile_schema, validate_constraints)
from canvas_core.errors import CanvasTypeError, ProgramError, SchemaError, ShapeError, TopologyError
from canvas_core.program.clock_ir import ClockExpr
from canvas_core.semantic import program_distance


@dataclasses.dataclass
class _Two:
    a: Field = Field(2, 3)
    b: Field = Field(1, 1)


# --- 1. spatial_shape must be ordered ------------------------------------------------------------
@pytest.mark.parametrize("shape", [{3, 8}, frozenset({3, 8}), {3: "h", 8: "w"}])
@pytest.mark.parametrize("compile_fn", [compile_schema, compile_program])
def test_unordered_spatial_shape_is_refused(compile_fn, shape):
    with pytest.raises(CanvasTypeError, match=r"spatial_shape must be an ordered sequence"):
        compile_fn(_Two(), spatial_shape=shape)


def test_ordered_spatial_shape_keeps_its_order():
    assert compile_schema(_Two(), spatial_shape=[3, 8]).layout.spatial_shape == (3, 8)


# --- 2. a list mixing bare Fields and objects ------------------------------------------------------
@dataclasses.dataclass
class _Agent:
    x: Field = Field(1, 1)


@dataclasses.dataclass
class _Team:
    xs: list = dataclasses.field(default_factory=lambda: [_Agent(), Field(2, 2), _Agent()])


def test_list_mixing_fields_and_objects_is_refused():
    with pytest.raises(ProgramError, match=r"_Team: xs\[1\] is a bare Field, but xs\[0\] is a _Agent object") as ei:
        compile_schema(_Team(), connectivity=ConnectivityPolicy(array_element="isolated"))
    assert "Wrap each bare Field" in str(ei.value)


def test_list_mixing_fields_then_objects_names_the_first_object():
    @dataclasses.dataclass
    class Mixed:
        xs: list = dataclasses.field(default_factory=lambda: [Field(1, 1), Field(1, 1), _Agent()])

    with pytest.raises(ProgramError, match=r"xs\[2\] is a _Agent object, but xs\[0\] is a bare Field"):
        compile_program(Mixed())


def test_lists_of_one_kind_still_compile():
    @dataclasses.dataclass
    class Ok:
        fs: list = dataclasses.field(default_factory=lambda: [Field(1, 1), Field(1, 1)])
        agents: list = dataclasses.field(default_factory=lambda: [_Agent(), _Agent()])

    names = compile_schema(Ok()).field_names
    assert "fs[1]" in names and "agents[1].x" in names


# --- 3. write_mode / trigger are recorded, not applied ---------------------------------------------
def _two_region_layout():
    return CanvasLayout(T=1, d_model=8, spatial_shape=(4,), regions={"a": (0, 1, 0, 2), "b": (0, 1, 2, 4)})


def _unapplied(record):
    return [w for w in record if "recorded" in str(w.message) and "not applied" in str(w.message)]


@pytest.mark.parametrize("mode", ["replace", "gate"])
def test_layer_with_a_non_default_write_mode_warns(mode):
    torch = pytest.importorskip("torch")
    from canvas_core import AttentionDispatcher

    torch.set_num_threads(1)
    topo = CanvasTopology([Connection("a", "a"), Connection("a", "b", write_mode=mode)])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        AttentionDispatcher(layout=_two_region_layout(), topology=topo, d_model=8)
    hits = _unapplied(rec)
    assert len(hits) == 1 and issubclass(hits[0].category, UserWarning)
    assert f"'a' -> 'b' (write_mode={mode!r})" in str(hits[0].message)


def test_layer_with_default_write_modes_does_not_warn():
    pytest.importorskip("torch")
    from canvas_core import AttentionDispatcher

    topo = CanvasTopology([Connection("a", "a"), Connection("a", "b")])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        AttentionDispatcher(layout=_two_region_layout(), topology=topo, d_model=8)
    assert not _unapplied(rec)


def test_compiling_a_program_with_a_trigger_warns():
    lay = _two_region_layout()
    schema = CanvasSchema(layout=lay, topology=CanvasTopology([Connection("a", "b")]))
    prog = CanvasProgram(schema=schema, connections={("a", "b"): ConnectionProgram(trigger="b.err > 0.2")})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ProgramCompiler(prog).compile(lower=False)
    hits = _unapplied(rec)
    assert len(hits) == 1 and "trigger='b.err > 0.2'" in str(hits[0].message)


def test_write_mode_and_trigger_are_still_kept_in_the_program_file():
    schema = CanvasSchema(layout=_two_region_layout(),
                          topology=CanvasTopology([Connection("a", "b", write_mode="gate")]))
    cp = ConnectionProgram(write_mode="replace", trigger="b.err > 0.2")
    prog = CanvasProgram(schema=schema, connections={("a", "b"): cp})
    back = CanvasProgram.from_dict(prog.to_dict())
    assert back.connections[("a", "b")] == cp
    assert back.schema.topology.connections[0].write_mode == "gate"


# --- 4. program_distance argument types ------------------------------------------------------------
_A = RegionSpec(bounds=(0, 1, 0, 1), semantic_embedding=(1.0, 0.0))
_B = RegionSpec(bounds=(0, 1, 0, 1), semantic_embedding=(0.0, 1.0))


@pytest.mark.parametrize("a_prog,b_prog", [({"family": "state"}, RegionProgram()),
                                           (RegionProgram(), "action"), ({"family": "state"}, None)])
def test_program_distance_refuses_programs_that_are_not_region_programs(a_prog, b_prog):
    with pytest.raises(CanvasTypeError, match=r"program_distance: [ab]_program must be a RegionProgram or None"):
        program_distance(_A, a_prog, _B, b_prog)


def test_program_distance_refuses_swapped_arguments_naming_itself():
    with pytest.raises(CanvasTypeError, match=r"program_distance: a_spec must be a RegionSpec"):
        program_distance(RegionProgram(), _A, RegionProgram(), _B)


def test_program_distance_accepts_programs_and_none():
    assert program_distance(_A, RegionProgram(family="state"), _B, RegionProgram(family="action")) > 1.0
    assert program_distance(_A, None, _B, RegionProgram(family="action")) == pytest.approx(1.0)


# --- 5. validate_constraints on a program changed in place -----------------------------------------
def _program():
    lay = CanvasLayout(T=2, d_model=8, spatial_shape=(3,),
                       regions={"a": (0, 2, 0, 1), "b": (0, 2, 1, 2), "c": (1, 2, 2, 3)})
    topo = CanvasTopology([Connection("a", "b"), Connection("c", "a")])
    return CanvasProgram(schema=CanvasSchema(layout=lay, topology=topo))


def test_validate_constraints_refuses_a_region_program_for_no_region():
    p = _program()
    p.regions["ghost"] = RegionProgram(constraints=ConstraintSpec(causal_direction="forward_only"))
    with pytest.raises(ProgramError, match="'ghost' names no region"):
        validate_constraints(p)


def test_validate_constraints_refuses_a_value_that_is_no_region_program():
    p = _program()
    p.regions["c"] = "not a program"
    with pytest.raises(CanvasTypeError, match=r"regions\['c'\] must be a RegionProgram"):
        validate_constraints(p)


def test_validate_constraints_refuses_a_connection_to_a_missing_region():
    p = _program()
    p.regions["c"] = RegionProgram(constraints=ConstraintSpec(causal_direction="forward_only"))
    p.schema.topology.connections.append(Connection("c", "zz"))
    with pytest.raises(TopologyError, match="'zz' is not in the layout"):
        validate_constraints(p)


def test_validate_constraints_still_reports_violations():
    p = _program()
    p.regions["c"] = RegionProgram(constraints=ConstraintSpec(causal_direction="forward_only"))
    assert any("forward_only" in v for v in validate_constraints(p))


# --- 6. clock trees changed after construction -----------------------------------------------------
def _top_down(n):
    root = Not(Periodic(1))
    cur = root
    for _ in range(n):
        nxt = Not(Periodic(1))
        cur.child = nxt
        cur = nxt
    return root, cur


@pytest.mark.parametrize("use", ["evaluate", "to_dict", "hash", "eq", "repr"])
def test_a_clock_grown_top_down_past_the_limit_is_a_program_error(use):
    root, _ = _top_down(1500)
    calls = {"evaluate": lambda: root.evaluate(ClockContext()), "to_dict": root.to_dict,
             "hash": lambda: hash(root), "eq": lambda: root == root, "repr": lambda: repr(root)}
    with pytest.raises(ProgramError, match=r"Not\.child: .*more than 200 levels"):
        calls[use]()


def test_a_clock_grown_top_down_fails_in_the_scheduler_with_a_program_error():
    @dataclasses.dataclass
    class P:
        a: Field = Field(1, 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, prog = compile_program(P())
    root, _ = _top_down(1500)
    sched = RegionScheduler(prog, clocks={"a": root})
    with pytest.raises(ProgramError, match="200 levels"):
        sched.step(0)


def test_a_clock_at_the_limit_still_runs_and_one_more_level_is_refused():
    root, leaf_parent = _top_down(198)  # 199 Not nodes over a leaf: 200 levels
    assert root.evaluate(ClockContext()) is False
    leaf_parent.child = Not(Periodic(1))
    with pytest.raises(ProgramError, match="200 levels"):
        root.evaluate(ClockContext())


def test_a_node_assigned_as_its_own_child_is_refused_at_once():
    a = And(Periodic(2), Periodic(3))
    with pytest.raises(ProgramError, match=r"And\.left: a clock node cannot be its own left"):
        a.left = a
    assert a.evaluate(ClockContext(external_t=6)) is True  # unchanged


def test_a_longer_cycle_is_a_program_error_and_can_be_undone():
    a = And(Periodic(2), Periodic(3))
    b = Not(a)
    a.left = b
    for call in (lambda: b.evaluate(ClockContext()), b.to_dict, lambda: hash(a)):
        with pytest.raises(ProgramError, match="refers back to"):
            call()
    a.left = Periodic(5)
    assert b.to_dict() == {"type": "not", "child": {"type": "and", "left": {"type": "periodic", "period": 5},
                                                    "right": {"type": "periodic", "period": 3}}}


@pytest.mark.parametrize("make,field,value,error", [
    (lambda: Periodic(2), "period", 0, SchemaError),
    (lambda: Periodic(2), "period", "3", SchemaError),
    (lambda: Periodic(2), "domain", "Internal", SchemaError),
    (lambda: Cooldown(Periodic(2), 3), "steps", -4, SchemaError),
    (lambda: MaxSilence(Periodic(2), 3), "steps", 0, SchemaError),
    (lambda: OnEvent("x.y", gt=0.5), "source", "xy", SchemaError),
    (lambda: Not(Periodic(1)), "child", 5, CanvasTypeError),
    (lambda: And(Periodic(1), Periodic(2)), "right", None, CanvasTypeError),
])
def test_assigning_a_field_runs_its_check(make, field, value, error):
    node = make()
    before = node.to_dict()
    with pytest.raises(error, match=field if field != "child" else "Not.child"):
        setattr(node, field, value)
    assert node.to_dict() == before


def test_period_zero_set_later_no_longer_reaches_the_scheduler():
    p = Periodic(2)
    with pytest.raises(SchemaError):
        p.period = 0
    p.period = 3
    assert p.evaluate(ClockContext(external_t=6)) and not p.evaluate(ClockContext(external_t=4))


def test_a_shared_subtree_is_no_cycle():
    x = Periodic(1)
    for _ in range(10):  # x & x: one node under both sides, reached twice but never from itself
        x = And(x, x)
    x.left.left = Periodic(2)  # a change below: the next use checks the tree again
    assert x.evaluate(ClockContext(external_t=2)) is True
    assert hash(x) == hash(ClockExpr.from_dict(x.to_dict()))


# --- 7. cortex registries that do not fit the layout -----------------------------------------------
@dataclasses.dataclass
class _Cube:
    a: Field = Field(spatial_shape=(2, 2, 2))
    b: Field = Field(spatial_shape=(2, 2, 2))


def _cube_program():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_program(_Cube(), T=2, d_model=16)[1]


def test_cortex_tile_of_the_wrong_rank_names_the_zone_and_the_fix():
    reg = CortexRegistry()
    reg.register(CortexSpec("z"))  # tile (4, 4) on a 3-d canvas
    reg.assign("a", "z")
    reg.assign("b", "z")
    with pytest.raises(ShapeError, match=r"cortex 'z' \(regions \['a', 'b'\]\): tile \(4, 4\) has 2 dims.*"
                                         r"3 spatial dims.*tile=\(4, 4, 4\)"):
        ProgramCompiler(_cube_program()).compile(cortex=reg, lower=False)


def test_cortex_assignment_of_an_unknown_region_is_refused():
    reg = CortexRegistry()
    reg.register(CortexSpec("z", bounds=(0, 2, 0, 2, 0, 2, 0, 2), tile=(2, 2, 2)))
    reg.assign("aa", "z")
    reg.assign("b", "z")
    with pytest.raises(ProgramError, match=r"\['aa'\] are assigned to a cortex but are no region.*"
                                           r"regions: \['a', 'b'\]"):
        ProgramCompiler(_cube_program()).compile(cortex=reg, lower=False)


def test_cortex_that_fits_still_rewrites_the_connections():
    reg = CortexRegistry()
    reg.register(CortexSpec("z", bounds=(0, 2, 0, 2, 0, 2, 0, 2), tile=(2, 2, 2)))
    reg.assign("a", "z")
    reg.assign("b", "z")
    compiled = ProgramCompiler(_cube_program()).compile(cortex=reg, lower=False)
    inside = [c for c in compiled.active_connections if {c.src, c.dst} <= {"a", "b"}]
    assert inside and all(c.mask is not None and c.mask.tile_shape == (2, 2, 2) for c in inside)

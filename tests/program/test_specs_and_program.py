"""Specs (clock, learning, constraints, identity, region/connection programs), CanvasProgram
validation, file round trips, malformed files, validate_constraints."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from canvas_core.errors import CanvasError, CanvasTypeError, ProgramError, SchemaFormatError, TopologyError
from canvas_core.program import (
    CARRIERS, COMPILE_MODES, OPERATORS, REGION_FAMILIES, WRITE_MODES, CanvasProgram, ClockSpec,
    ConnectionProgram, ConstraintSpec, Field, IdentitySpec, LearningSpec, RegionProgram,
    compile_program, validate_constraints,
)
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection


def test_constants_have_canvas_engineering_values():
    assert REGION_FAMILIES == {"action", "state", "residual", "observation", "memory"}
    assert CARRIERS == {"deterministic", "diffusive", "filter", "memory", "residual"}
    assert OPERATORS == {"emit_residual", "act", "integrate", "compress", "predict", "intervene",
                         "retrieve", "write", "correct", "bind", "attend", "observe"}
    assert WRITE_MODES == {"replace", "add", "gate"}
    assert COMPILE_MODES == {"runtime", "constant", "export", "freeze"}


@pytest.mark.parametrize("make, needle", [
    (lambda: Field(2, family="observaton"), "Did you mean 'observation'"),
    (lambda: Field(2, family="actoin"), "Did you mean 'action'"),
    (lambda: RegionProgram(family="States"), "Did you mean 'state'"),
    (lambda: Field(2, carrier="difusive"), "Did you mean 'diffusive'"),
    (lambda: RegionProgram(carrier="kalman"), "unknown carrier 'kalman'"),
    (lambda: ConnectionProgram(operator="observ"), "Did you mean 'observe'"),
    (lambda: ConnectionProgram(write_mode="gated"), "Did you mean 'gate'"),
    (lambda: RegionProgram(compile_mode="frozen"), "Did you mean 'freeze'"),
    (lambda: Field(1, compile_mode="distill"), "unknown compile_mode 'distill'"),
    (lambda: LearningSpec(compile_mode="distil"), "Did you mean 'distill'"),
    (lambda: LearningSpec(mode="supervized"), "Did you mean 'supervised'"),
    (lambda: ClockSpec(mode="periodical"), "Did you mean 'periodic'"),
    (lambda: ClockSpec(domain="intern"), "Did you mean 'internal'"),
    (lambda: ClockSpec(period=0), "period must be >= 1"),
    (lambda: ClockSpec(cooldown=-1), "cooldown must be >= 0"),
    (lambda: ClockSpec(max_silence=0), "max_silence must be >= 1"),
    (lambda: ClockSpec(domain="internal", max_inner_steps=0), "max_inner_steps must be >= 1"),
    (lambda: ClockSpec(mode="on_event"), "needs event_source"),
    (lambda: ClockSpec(mode="boundary"), "needs event_source"),
    (lambda: IdentitySpec(mode="tracklets"), "Did you mean 'tracklet'"),
    (lambda: IdentitySpec(slot_capacity=0), "slot_capacity must be >= 1"),
    (lambda: IdentitySpec(mode="persistent", birth_death=True), "mode='tracklet'"),
    (lambda: ConstraintSpec(causal_direction="acylic"), "Did you mean 'acyclic'"),
    (lambda: ConstraintSpec(equivariance="scale"), "unknown equivariance"),
    (lambda: Field(0, 2), "h must be >= 1"),
    (lambda: Field(2, -3), "w must be >= 1"),
    (lambda: Field(2, period=0), "period must be >= 1"),
    (lambda: Field(2, temporal_extent=0), "temporal_extent must be >= 1"),
    (lambda: Field(2, loss_weight=-1.0), "loss_weight must be >= 0"),
    (lambda: Field(spatial_shape=(2, 0)), "must be >= 1"),
    (lambda: Field(spatial_shape=()), "no dimension"),
    (lambda: Field(2, 3, spatial_shape=(4,)), "not both"),
])
def test_bad_specs_raise_program_error(make, needle):
    with pytest.raises(ProgramError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make()


@pytest.mark.parametrize("make", [
    lambda: Field("2"), lambda: Field(2.5), lambda: Field(2, tags="belief"), lambda: Field(2, family=3),
    lambda: Field(2, is_output="yes"), lambda: Field(2, clock="periodic"), lambda: RegionProgram(learning={}),
    lambda: IdentitySpec(birth_death=1), lambda: ClockSpec(event_threshold="x"), lambda: LearningSpec(losses="task"),
])
def test_wrong_types_raise_canvas_type_error(make):
    with pytest.raises(CanvasTypeError):
        make()


def test_custom_family_allowed_when_not_a_typo():
    assert RegionProgram(family="goal").family == "goal"
    assert Field(1, family="custom_observation").family == "custom_observation"
    assert LearningSpec(mode="contrastive").mode == "contrastive"


def test_valid_specs():
    c = ClockSpec(domain="internal", max_inner_steps=3)
    assert c.max_inner_steps == 3 and c.mode == "periodic"
    assert ClockSpec(mode="on_event", event_source="vision.prediction", event_threshold=1).event_threshold == 1.0
    assert ClockSpec(domain="boundary", mode="boundary", event_source="episode_start").domain == "boundary"
    assert IdentitySpec(mode="tracklet", birth_death=True).birth_death
    assert LearningSpec(compile_mode="distill").compile_mode == "distill"
    f = Field(spatial_shape=(8,))
    assert (f.h, f.w, f.shape, f.num_positions) == (8, 1, (8,), 8)
    assert Field(3, 4).shape == (3, 4)


def _robot_program():
    @dataclass
    class Robot:
        camera: Field = Field(6, 6, family="observation")
        belief: Field = Field(4, 4, family="state", tags=("belief",))
        action: Field = Field(1, 4, family="action", loss_weight=2.0)

    return compile_program(Robot(), T=8, d_model=256)[1]


def _rich_program():
    base = _robot_program()
    return CanvasProgram(
        schema=base.schema,
        regions={
            "camera": RegionProgram(
                family="observation", carrier="filter",
                clock=ClockSpec(mode="on_event", event_source="belief.prediction", event_threshold=0.3,
                                cooldown=2, max_silence=5),
                learning=LearningSpec(mode="ssl_prediction", losses=("a", "b"), compile_mode="freeze"),
                compile_mode="freeze", constraints=ConstraintSpec(equivariance="translation"),
                identity=IdentitySpec(mode="tracklet", slot_capacity=8, birth_death=True)),
            "belief": RegionProgram(tags=("belief", "object"), clock=ClockSpec(domain="internal", max_inner_steps=3)),
            "action": RegionProgram(family="goal_custom", clock=ClockSpec()),
        },
        connections={("camera", "belief"): ConnectionProgram(operator="correct", trigger="belief.err > 0.2",
                                                             write_mode="gate"),
                     ("belief", "action"): ConnectionProgram()},
    )


@pytest.mark.parametrize("make", [_robot_program, _rich_program])
def test_json_round_trip_is_exact(make, tmp_path):
    prog = make()
    again = CanvasProgram.from_json(prog.to_json())
    assert again == prog
    assert again.to_dict() == prog.to_dict()
    path = tmp_path / "p.json"
    prog.to_json(path)
    assert CanvasProgram.from_json(path) == prog
    assert CanvasProgram.from_json(str(path)) == prog
    assert CanvasProgram.from_dict(json.loads(json.dumps(prog.to_dict()))) == prog


def test_program_file_format_is_the_schema_plus_program_keys():
    prog = _rich_program()
    d = prog.to_dict()
    schema_only = {k: v for k, v in d.items() if k not in ("program_version", "region_programs", "connection_programs")}
    assert CanvasSchema.from_dict(schema_only) == prog.schema
    assert d["program_version"] == "2.0.0"
    assert d["region_programs"]["belief"] == {"tags": ["belief", "object"],
                                              "clock": {"domain": "internal", "max_inner_steps": 3}}
    assert d["region_programs"]["action"] == {"family": "goal_custom", "clock": {}}
    assert d["connection_programs"]["camera|belief"] == {"operator": "correct", "trigger": "belief.err > 0.2",
                                                         "write_mode": "gate"}
    nested = {"schema": schema_only, **{k: d[k] for k in ("program_version", "region_programs", "connection_programs")}}
    assert CanvasProgram.from_dict(nested) == prog
    # a plain schema file is a program with no region programs
    assert CanvasProgram.from_dict(schema_only).regions == {}


def test_summary_mentions_regions_and_operators():
    prog = _rich_program()
    text = prog.summary()  # canvas-engineering's text: counts
    assert text.splitlines()[0] == f"CanvasProgram (v{prog.version}, {len(prog.regions)} regions programmed):"
    assert "  families: " in text and "non-default carriers: filter=" in text
    assert repr(prog) == (f"CanvasProgram(regions={len(prog.regions)}, connections={len(prog.connections)}, "
                          f"version={prog.version!r})")
    text = prog.summary(detail=True)
    assert text.startswith(prog.summary()) and "camera" in text and "family=observation" in text and "carrier=filter" in text
    assert "camera -> belief: observe" in text
    assert "identity=tracklet/8" in text


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["region_programs"].update(camra={}), "camra"),
    (lambda d: d["region_programs"]["camera"].update(carrier="x"), "region_programs.camera"),
    (lambda d: d["region_programs"]["camera"].update(carier="filter"), "Did you mean 'carrier'"),
    (lambda d: d["region_programs"]["camera"].update(clock={"mode": "sometimes"}), "region_programs.camera.clock"),
    (lambda d: d["region_programs"]["camera"].update(clock=3), "clock"),
    (lambda d: d["region_programs"]["camera"].update(tags="belief"), "tags"),
    (lambda d: d["region_programs"]["camera"].update(identity={"slot_capacity": True}), "identity"),
    (lambda d: d.update(region_programs=[]), "region_programs"),
    (lambda d: d.update(connection_programs={"camera|nowhere": {}}), "nowhere"),
    (lambda d: d.update(connection_programs={"camera-belief": {}}), "src|dst"),
    (lambda d: d.update(topology=[{"src": "camera", "dst": "camera"}], connection_programs={"camera|belief": {}}),
     "no matching connection"),
    (lambda d: d.update(connection_programs={"camera|belief": {"operator": "zap"}}), "operator"),
    (lambda d: d.update(program_version=2), "program_version"),
    (lambda d: d.update(layout=3), "layout"),
    (lambda d: d.update(extra_key=1), "extra_key"),
    (lambda d: d["topology"][1].update(operator="obsrve"), "operator"),
])
def test_malformed_program_dicts(mutate, needle):
    d = _robot_program().to_dict()
    mutate(d)
    with pytest.raises(SchemaFormatError, match=needle.replace("|", r"\|")):
        CanvasProgram.from_dict(d)


def test_malformed_program_files(tmp_path):
    with pytest.raises(SchemaFormatError, match="not valid JSON"):
        CanvasProgram.from_json('{"layout": ')
    with pytest.raises(SchemaFormatError, match="does not exist"):
        CanvasProgram.from_json(tmp_path / "missing.json")
    with pytest.raises(SchemaFormatError, match="JSON object"):
        CanvasProgram.from_dict([1, 2])
    with pytest.raises(CanvasTypeError):
        CanvasProgram.from_json(42)


def test_program_constructor_validation():
    schema = _robot_program().schema
    with pytest.raises(ProgramError, match="Did you mean 'camera'"):
        CanvasProgram(schema=schema, regions={"camra": RegionProgram()})
    with pytest.raises(ProgramError, match="'zz' is not in the schema"):
        CanvasProgram(schema=schema, connections={("camera", "zz"): ConnectionProgram()})
    with pytest.raises(ProgramError, match="no matching connection"):
        CanvasProgram(schema=CanvasSchema(layout=schema.layout), connections={("camera", "belief"): ConnectionProgram()})
    with pytest.raises(CanvasTypeError):
        CanvasProgram(schema=schema, connections={"camera|belief": ConnectionProgram()})
    with pytest.raises(CanvasTypeError):
        CanvasProgram(schema=schema, regions={"camera": "observation"})
    with pytest.raises(CanvasTypeError):
        CanvasProgram(schema=schema.to_dict())
    # an unknown operator is refused where it is written, by the schema layer (did-you-mean)
    with pytest.raises(TopologyError, match="unknown operator 'watch'"):
        Connection("camera", "belief", operator="watch")
    with pytest.raises(TopologyError, match="Did you mean 'observe'"):
        Connection("camera", "belief", operator="obsrve")


# --- validate_constraints ------------------------------------------------------------------------
def _program(edges, constraints, t0=None):
    t0 = t0 or {}
    regions = {n: (t0.get(n, 0), 4, i, i + 1) for i, n in enumerate("abcd")}
    layout = CanvasLayout(T=4, d_model=8, spatial_shape=(4,), regions=regions)
    topo = CanvasTopology([Connection(s, d) for s, d in edges])
    return CanvasProgram(
        schema=CanvasSchema(layout=layout, topology=topo),
        regions={n: RegionProgram(constraints=ConstraintSpec(causal_direction=v)) for n, v in constraints.items()},
    )


def _has_cycle_from(edges, start):
    """Reference: some node reachable from start (itself included) reaches itself through one
    or more edges between distinct regions."""
    graph = {}
    for s, d in edges:
        if s != d:
            graph.setdefault(s, set()).add(d)

    def reach(x):
        seen, todo = set(), [x]
        while todo:
            for y in graph.get(todo.pop(), ()):
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        return seen

    nodes = {start} | reach(start)
    return any(n in reach(n) for n in nodes)


@pytest.mark.parametrize("edges", [
    [("a", "a")],
    [("a", "b"), ("b", "c")],
    [("a", "b"), ("b", "a")],
    [("a", "b"), ("b", "c"), ("c", "b")],
    [("b", "c"), ("c", "b")],
    [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")],
    [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
])
def test_acyclic(edges):
    out = validate_constraints(_program(edges, {"a": "acyclic"}))
    assert bool(out) == _has_cycle_from(edges, "a")
    if out:
        assert out[0].startswith("a: causal_direction='acyclic' violated")


def test_forward_only():
    t0 = {"a": 1, "b": 0, "c": 1, "d": 2}
    out = validate_constraints(_program([("a", "b"), ("a", "c"), ("a", "d"), ("a", "a"), ("b", "a")],
                                        {"a": "forward_only"}, t0))
    assert out == ["a: causal_direction='forward_only' violated — connects to b (t0=0 < 1)"]
    assert validate_constraints(_program([("b", "a")], {"a": "forward_only"}, t0)) == []


def test_validate_constraints_reports_unknown_values_smuggled_past_construction():
    prog = _program([], {"a": "acyclic"})
    object.__setattr__(prog.regions["a"].constraints, "monotonicity", "sideways")
    assert validate_constraints(prog) == [
        "a: unknown monotonicity 'sideways' (valid: ['non_decreasing', 'non_increasing'])"
    ]
    with pytest.raises(CanvasError):
        validate_constraints("not a program")


def test_region_program_default_and_lookup():
    prog = _robot_program()
    assert prog.region("camera").family == "observation"
    with pytest.raises(ProgramError, match="camra"):
        prog.region("camra")


def test_an_event_clock_reading_a_summary_it_never_gets_is_warned_about():
    """canvas-engineering's clocks read summaries of any source (not only regions), so a misspelt
    ``event_source`` can only show when summaries arrive: the scheduler warns, once per clock;
    a source without a dot is refused at once."""
    import warnings

    from canvas_core.errors import ProgramError
    from canvas_core.runtime.scheduling import RegionScheduler

    layout = CanvasLayout(T=2, spatial_shape=(2,), d_model=8, regions={"error": (0, 2, 0, 1), "plan": (0, 2, 1, 2)})
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=[]))

    def scheduler(src):
        return RegionScheduler(CanvasProgram(schema=schema, regions={"plan": RegionProgram(clock=ClockSpec(
            mode="on_event", event_source=src, event_threshold=0.5))}))

    summaries = {"error": {"prediction": 1.0}}
    for src, fires in (("error.prediction", True), ("eror.prediction", False), ("error.predicton", False)):
        s = scheduler(src)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fired = ["plan" in s.step(t, summaries=summaries) for t in range(3)]
        assert fired[1:] == [fires, fires]
        missing = [w for w in seen if "do not hold" in str(w.message)]
        assert len(missing) == (0 if fires else 1), src  # once per clock
    with pytest.raises(ProgramError, match="must be 'region.kind'"):
        ClockSpec(mode="on_event", event_source="error")

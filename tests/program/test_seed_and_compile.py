"""compile_schema / compile_program: nested and list fields, layouts, wiring (the seed 000 snippet itself: tests/compat)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import List

import pytest

import canvas_core
from canvas_core.errors import CanvasError, ProgramError
from canvas_core.program import (
    BoundField, CanvasProgram, ClockSpec, ConnectivityPolicy, Field, IdentitySpec, LayoutStrategy,
    LearningSpec, RegionProgram, compile_program, compile_schema,
)


@dataclass
class Cam:
    rgb: Field = Field(4, 4, family="observation")
    depth: Field = Field(2, 2, family="observation")


@dataclass
class Agent:
    thought: Field = Field(2, 2, family="state")
    act: Field = Field(1, 2, family="action")


@dataclass
class World:
    camera: Cam = field(default_factory=Cam)
    agents: List[Agent] = field(default_factory=lambda: [Agent(), Agent()])
    belief: Field = Field(3, 3, family="state")


def test_nested_and_list_field_names_and_access():
    bound = compile_schema(World(), T=2, d_model=16)
    assert bound.field_names == [
        "belief", "camera", "camera.rgb", "camera.depth",
        "agents[0]", "agents[0].thought", "agents[0].act",
        "agents[1]", "agents[1].thought", "agents[1].act",
    ]
    assert bound["agents[1].thought"] is bound.agents[1].thought
    assert bound.camera.rgb is bound["camera.rgb"]
    assert isinstance(bound.camera, BoundField) and bound.camera.region_name == "camera"
    assert len(bound.agents) == 2 and [a.region_name for a in bound.agents] == ["agents[0]", "agents[1]"]
    assert bound.agents[-1].region_name == "agents[1]"
    assert bound.layout.region_numel("camera.rgb") == 4 * 4 * 2
    assert bound["camera.rgb"].num_positions == 32
    assert bound["camera.rgb"].indices() == bound.layout.region_indices("camera.rgb")
    with pytest.raises(ProgramError, match="agents\\[0\\].thougt"):
        bound["agents[0].thougt"]
    with pytest.raises(KeyError):
        bound["nope"]
    with pytest.raises(AttributeError):
        bound.agents[0].nope
    with pytest.raises(ProgramError, match="out of range"):
        bound.agents[5]
    assert not hasattr(bound, "missing")
    # coarse-grained regions are 1x1 and say what they are
    assert bound.layout.regions["camera"].extent == (2, 1, 1)
    assert bound.layout.regions["camera"].semantic_type == "coarse: camera"
    assert bound.layout.regions["agents[0].thought"].semantic_type == "agents 0 / thought"


def _edges(bound):
    return [(c.src, c.dst) for c in bound.topology.connections]


def test_hierarchy_connectivity_rules():
    edges = set(_edges(compile_schema(World(), T=1)))
    # parent fields <-> coarse region, coarse <-> own fields, intra dense within an element
    for coarse, leaves in [("camera", ["camera.rgb", "camera.depth"]),
                           ("agents[0]", ["agents[0].thought", "agents[0].act"])]:
        assert {("belief", coarse), (coarse, "belief"), (coarse, coarse)} <= edges
        for leaf in leaves:
            assert {(coarse, leaf), (leaf, coarse)} <= edges
            for other in leaves:
                assert (leaf, other) in edges
    # default array policy is isolated; leaves never talk across elements or to the root directly
    assert ("agents[0]", "agents[1]") not in edges
    assert ("belief", "camera.rgb") not in edges
    dense = set(_edges(compile_schema(World(), T=1, connectivity=ConnectivityPolicy(array_element="dense"))))
    assert {("agents[0]", "agents[1]"), ("agents[1]", "agents[0]")} <= dense
    matched = set(_edges(compile_schema(World(), T=1, connectivity=ConnectivityPolicy(array_element="matched_fields"))))
    assert ("agents[0].thought", "agents[1].thought") in matched
    assert ("agents[0].thought", "agents[1].act") not in matched


def test_intra_policies():
    @dataclass
    class Three:
        a: Field = Field(1, 1)
        b: Field = Field(1, 1)
        c: Field = Field(1, 1)

    def edges(intra):
        return set(_edges(compile_schema(Three(), connectivity=ConnectivityPolicy(intra=intra))))

    selfs = {("a", "a"), ("b", "b"), ("c", "c")}
    assert edges("isolated") == selfs
    assert edges("dense") == {(x, y) for x in "abc" for y in "abc"}
    assert edges("causal_chain") == selfs | {("b", "a"), ("c", "b")}
    assert edges("star") == selfs | {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}


def test_temporal_policies_and_temporal_operators():
    @dataclass
    class Robot:
        camera: Field = Field(2, 2, family="observation")
        belief: Field = Field(2, 2, family="state")
        action: Field = Field(1, 2, family="action")

    _, prog = compile_program(Robot(), T=4, connectivity=ConnectivityPolicy(temporal="causal"))
    conns = {(c.src, c.dst, c.t_src, c.t_dst): c.operator for c in prog.schema.topology.connections}
    assert conns[("belief", "belief", 0, 0)] == "integrate"  # canvas-engineering's table, any offsets
    assert conns[("belief", "belief", 0, -1)] == "integrate"
    assert conns[("action", "belief", 0, -1)] == "intervene"
    assert conns[("camera", "belief", 0, -1)] == "observe"
    assert ("camera", "belief", 0, 0) not in conns
    _, prog = compile_program(Robot(), T=4, connectivity=ConnectivityPolicy(temporal="same_frame"))
    assert all(c.t_src == 0 and c.t_dst == 0 for c in prog.schema.topology.connections)
    ops = {(c.src, c.dst): c.operator for c in prog.schema.topology.connections}
    assert ops[("belief", "belief")] == "integrate" and ops[("action", "belief")] == "intervene"


def test_undeclared_family_gets_no_operator_and_default_program():
    @dataclass
    class R:
        obs: Field = Field(2, 2, family="observation")
        hidden: Field = Field(2, 2)  # family not declared -> "state" program, but no wiring

    _, prog = compile_program(R())
    assert prog.regions["hidden"].family == "state"
    assert all(c.operator == "attend" for c in prog.schema.topology.connections)
    assert prog.schema.layout.regions["hidden"].family is None


def test_field_program_metadata_flows_into_region_program():
    clock = ClockSpec(domain="internal", max_inner_steps=4)
    learning = LearningSpec(mode="ssl_prediction", losses=("next_step",), compile_mode="freeze")
    ident = IdentitySpec(mode="tracklet", slot_capacity=8, birth_death=True)

    @dataclass
    class R:
        objs: Field = Field(2, 4, family="state", carrier="filter", clock=clock, learning=learning,
                            compile_mode="export", identity=ident, tags=("object",))

    bound, prog = compile_program(R(), T=2)
    rp = prog.regions["objs"]
    assert rp == RegionProgram(family="state", tags=("object",), carrier="filter", clock=clock,
                               learning=learning, compile_mode="export", identity=ident)
    assert bound.layout.regions["objs"].carrier == "filter"
    assert CanvasProgram.from_json(prog.to_json()) == prog


def test_auto_layout_of_seed_robot_is_canvas_engineerings():
    @dataclass
    class Robot:
        camera: Field = Field(6, 6)
        belief: Field = Field(4, 4)
        action: Field = Field(1, 4)

    # width max(ceil(sqrt(56 * 1.15)), 6) = 9: camera | belief + action wrap at 9 -> rows 6 + 4,
    # height ceil(10 * 1.15) = 12
    lay = compile_schema(Robot(), T=8).layout
    assert lay.spatial_shape == (12, 9)
    assert lay.regions["camera"].bounds == (0, 8, 0, 6, 0, 6)
    assert lay.regions["belief"].bounds == (0, 8, 6, 10, 0, 4)
    assert lay.regions["action"].bounds == (0, 8, 6, 7, 4, 8)


def test_auto_layout_packs_seed_robot_tightly():
    @dataclass
    class Robot:
        camera: Field = Field(6, 6)
        belief: Field = Field(4, 4)
        action: Field = Field(1, 4)

    lay = compile_schema(Robot(), T=8, packing="tight").layout
    # canvas width = ceil(sqrt(56)) = 8; shelves: camera | belief + action
    assert lay.spatial_shape == (10, 8)
    assert lay.regions["camera"].bounds == (0, 8, 0, 6, 0, 6)
    assert lay.regions["belief"].bounds == (0, 8, 6, 10, 0, 4)
    assert lay.regions["action"].bounds == (0, 8, 6, 7, 4, 8)


def test_explicit_canvas_and_deprecated_hw():
    @dataclass
    class Robot:
        camera: Field = Field(6, 6)
        action: Field = Field(1, 4)

    a = compile_schema(Robot(), T=2, spatial_shape=(16, 16)).layout
    b = compile_schema(Robot(), T=2, H=16, W=16).layout
    assert a == b and a.spatial_shape == (16, 16)
    assert a.regions["action"].bounds == (0, 2, 0, 1, 6, 10)
    with pytest.raises(ProgramError, match="'camera' is 6 positions along W"):
        compile_schema(Robot(), spatial_shape=(8, 4))
    with pytest.raises(ProgramError, match="disagree"):
        compile_schema(Robot(), spatial_shape=(8, 8), H=9, W=9)


def test_nd_fields():
    @dataclass
    class Vol:
        grid: Field = Field(spatial_shape=(2, 2, 2))
        strip: Field = Field(spatial_shape=(1, 2, 3))

    lay = compile_schema(Vol(), T=1).layout
    assert lay.n_spatial_dims == 3
    assert lay.region_numel("grid") == 8 and lay.region_numel("strip") == 6

    @dataclass
    class Seq:
        tokens: Field = Field(spatial_shape=(8,))
        cls: Field = Field(spatial_shape=(1,))

    lay = compile_schema(Seq(), T=3, packing="tight").layout
    assert lay.spatial_shape == (9,)
    assert lay.regions["cls"].bounds == (0, 3, 8, 9)
    lay = compile_schema(Seq(), T=3).layout  # canvas-engineering's: ceil(9 * 1.15) = 11
    assert lay.spatial_shape == (11,)
    assert lay.regions["cls"].bounds == (0, 3, 8, 9)


def test_temporal_extent_and_period():
    @dataclass
    class R:
        video: Field = Field(2, 2)
        reward: Field = Field(1, 1, period=4, temporal_extent=2)

    lay = compile_schema(R(), T=4).layout
    assert lay.regions["reward"].bounds[:2] == (0, 2) and lay.regions["reward"].period == 4
    assert lay.region_numel("reward") == 2


def test_interleaved_places_matched_fields_together():
    @dataclass
    class A:
        x: Field = Field(1, 1)
        y: Field = Field(1, 1)

    @dataclass
    class R:
        agents: List[A] = field(default_factory=lambda: [A(), A(), A()])

    packed = compile_schema(R(), spatial_shape=(1, 9)).layout
    inter = compile_schema(R(), spatial_shape=(1, 9), layout_strategy=LayoutStrategy.INTERLEAVED).layout
    assert packed.region_names == inter.region_names  # declaration order is kept
    col = lambda lay, n: lay.regions[n].bounds[4]  # noqa: E731
    assert [col(inter, f"agents[{i}].x") for i in range(3)] == [3, 4, 5]
    assert [col(packed, f"agents[{i}].x") for i in range(3)] == [1, 4, 7]
    assert compile_schema(R(), layout_strategy="interleaved").layout.region_names == packed.region_names


def test_coarse_field_overrides():
    @dataclass
    class B:
        __coarse__ = Field(2, 2)
        y: Field = Field(1, 1)

    @dataclass
    class A:
        x: Field = Field(1, 1)

    @dataclass
    class R:
        a: A = field(default_factory=A, metadata={"coarse": Field(1, 3)})
        b: B = field(default_factory=B)
        n: int = 3           # non-Field attributes are ignored
        empty: list = field(default_factory=list)

    lay = compile_schema(R()).layout
    assert lay.region_names == ("a", "a.x", "b", "b.y")
    assert lay.regions["a"].extent[1:] == (1, 3)
    assert lay.regions["b"].extent[1:] == (2, 2)


def test_plain_objects_and_pydantic_models():
    class Plain:
        cls_level = Field(1, 2)

        def __init__(self):
            self.inst = Field(2, 2)

    assert compile_schema(Plain()).field_names == ["inst", "cls_level"]
    pydantic = pytest.importorskip("pydantic")

    class M(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        a: Field = Field(1, 1, family="observation")
        b: Field = Field(1, 1, family="state")

    _, prog = compile_program(M())
    ops = {(c.src, c.dst): c.operator for c in prog.schema.topology.connections}
    assert ops[("a", "b")] == "observe"


def test_plain_objects_nest_at_any_depth_like_dataclasses():
    """A plain object holding Fields only through another plain object (or a list of Fields)
    composes like a dataclass; such fields were left off the canvas without a word."""
    class Gripper:
        def __init__(self):
            self.force = Field(2, 2)

    class Arm:
        def __init__(self):
            self.gripper = Gripper()

    class Hand:
        def __init__(self):
            self.fingers = [Field(1, 1), Field(1, 1)]

    class Robot:
        def __init__(self):
            self.camera = Field(4, 4)
            self.arm = Arm()
            self.hand = Hand()
            self.team = [Arm(), Arm()]

    @dataclass
    class DGripper:
        force: Field = field(default_factory=lambda: Field(2, 2))

    @dataclass
    class DArm:
        gripper: DGripper = field(default_factory=DGripper)

    @dataclass
    class DHand:
        fingers: list = field(default_factory=lambda: [Field(1, 1), Field(1, 1)])

    @dataclass
    class DRobot:
        camera: Field = field(default_factory=lambda: Field(4, 4))
        arm: DArm = field(default_factory=DArm)
        hand: DHand = field(default_factory=DHand)
        team: list = field(default_factory=lambda: [DArm(), DArm()])

    names = compile_schema(Robot(), T=2).field_names
    assert names == compile_schema(DRobot(), T=2).field_names
    assert {"arm.gripper.force", "hand.fingers[1]", "team[1].gripper.force"} <= set(names)


def test_lists_of_bare_fields_are_leaves():
    @dataclass
    class R:
        cams: list = field(default_factory=lambda: [Field(2, 2), Field(1, 1)])

    bound = compile_schema(R())
    assert bound.field_names == ["cams[0]", "cams[1]"]
    assert bound.cams[1] is bound["cams[1]"]


def test_bad_roots_and_arguments():
    @dataclass
    class R:
        a: Field = Field(1, 1)

    for bad in (3, "x", None, [Field(1, 1)], {"a": Field(1, 1)}, Field(1, 1)):
        with pytest.raises(ProgramError, match="dataclass"):
            compile_program(bad)
    with pytest.raises(ProgramError, match=r"pass R\(\)"):
        compile_program(R)
    with pytest.raises(ProgramError, match="no Field"):
        compile_program(object())

    @dataclass
    class Empty:
        n: int = 1

    with pytest.raises(ProgramError, match="no Field attributes found in Empty"):
        compile_schema(Empty())
    with pytest.raises(ProgramError, match="layout_strategy"):
        compile_schema(R(), layout_strategy="pack")
    with pytest.raises(ProgramError, match="T must be >= 1"):
        compile_schema(R(), T=0)
    with pytest.raises(CanvasError):
        compile_schema(R(), d_model=0)
    with pytest.raises(CanvasError):
        compile_schema(R(), connectivity="dense")
    with pytest.raises(ProgramError, match="do not fit"):
        compile_schema(type("Two", (), {"a": Field(2, 2), "b": Field(2, 2)})(), spatial_shape=(2, 3))
    with pytest.raises(ProgramError, match="temporal_extent=5 exceeds"):
        compile_schema(type("X", (), {"a": Field(1, temporal_extent=5)})(), T=2)
    with pytest.raises(ProgramError, match="3 spatial dims"):
        compile_schema(type("X", (), {"a": Field(spatial_shape=(2, 2, 2))})(), spatial_shape=(4, 4))


def test_name_clash_and_cycles():
    obj = type("Weird", (), {})()
    setattr(obj, "cam.rgb", Field(1, 1))
    with pytest.raises(ProgramError, match="'cam.rgb'"):
        compile_schema(obj)

    class Node:
        def __init__(self):
            self.x = Field(1, 1)
            self.me = self

    with pytest.raises(ProgramError, match="refers back to itself"):
        compile_schema(Node())


def test_program_layer_never_imports_torch():
    code = (
        "import sys, canvas_core\n"
        "from dataclasses import dataclass\n"
        "from canvas_core import Field, compile_program, CanvasProgram\n"
        "@dataclass\nclass R:\n    a: Field = Field(2, 2, family='observation')\n"
        "b, p = compile_program(R(), T=2)\n"
        "CanvasProgram.from_json(p.to_json()); p.summary(); b.summary()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_resolve_from_canvas_core():
    for name in ("Field", "LayoutStrategy", "ConnectivityPolicy", "BoundField", "BoundSchema",
                 "compile_schema", "compile_program", "CanvasProgram", "RegionProgram",
                 "ConnectionProgram", "ClockSpec", "LearningSpec", "ConstraintSpec",
                 "validate_constraints", "IdentitySpec", "REGION_FAMILIES", "CARRIERS", "OPERATORS",
                 "WRITE_MODES", "COMPILE_MODES"):
        assert getattr(canvas_core, name) is getattr(canvas_core.program, name)


def test_compile_schema_sets_region_semantics_but_no_operators():
    @dataclass
    class R:
        camera: Field = Field(2, 2, family="observation", carrier="diffusive", attn="gated",
                              semantic_type="rgb video")
        belief: Field = Field(2, 2, family="state")

    bound = compile_schema(R(), T=2)
    assert all(c.operator == "attend" for c in bound.topology.connections)
    spec = bound.layout.regions["camera"]
    assert (spec.family, spec.carrier, spec.default_attn, spec.semantic_type) == (
        "observation", "diffusive", "gated", "rgb video")
    assert compile_program(R(), T=2)[0].layout == bound.layout


def test_mutated_policy_is_rechecked():
    @dataclass
    class R:
        a: Field = Field(1, 1)

    policy = ConnectivityPolicy()
    policy.intra = "everything"
    with pytest.raises(ProgramError, match="intra policy 'everything'"):
        compile_schema(R(), connectivity=policy)

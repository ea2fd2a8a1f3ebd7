"""Connection / CanvasTopology / CanvasSchema: seed snippets, JSON round trips, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvas_core import CanvasError
from canvas_core.errors import CanvasTypeError, SchemaFormatError, TopologyError
from canvas_core.schema import (
    CanvasLayout,
    CanvasSchema,
    CanvasTopology,
    Connection,
    RegionSpec,
    TemporalFill,
    schema_json_schema,
    transfer_distance,
)

from .strategies import layouts, topologies

ROOT = Path(__file__).resolve().parents[2]


def fn_layout() -> CanvasLayout:
    return CanvasLayout(
        T=8, H=16, W=16, d_model=512,
        regions={
            "visual": RegionSpec(bounds=(0, 8, 0, 12, 0, 12), default_attn="cross_attention"),
            "proprio": RegionSpec(bounds=(0, 8, 12, 13, 0, 2), default_attn="linear_attention"),
            "thought": RegionSpec(bounds=(0, 4, 13, 15, 0, 4), default_attn="mamba"),
            "goal": RegionSpec(bounds=(0, 1, 15, 16, 0, 4), default_attn="cross_attention", is_output=False),
        },
    )


def test_seed_attention_ops_resolution_order():
    layout = fn_layout()
    topology = CanvasTopology(connections=[
        Connection(src="visual", dst="visual"),
        Connection(src="proprio", dst="proprio"),
        Connection(src="thought", dst="thought"),
        Connection(src="goal", dst="goal"),
        Connection(src="visual", dst="goal", fn="gated"),
        Connection(src="thought", dst="visual", fn="perceiver"),
        Connection(src="proprio", dst="visual", fn="pooling"),
        Connection(src="thought", dst="thought", fn="copy", t_src=0, t_dst=-1),
    ])
    ops = topology.attention_ops(layout)
    assert ops[:3] == [
        ("visual", "visual", 1.0, "cross_attention"),
        ("proprio", "proprio", 1.0, "linear_attention"),
        ("thought", "thought", 1.0, "mamba"),
    ]
    assert [op[3] for op in ops[4:]] == ["gated", "perceiver", "pooling", "copy"]
    # without a layout, region defaults are unknown: the global default applies
    assert topology.attention_ops()[1] == ("proprio", "proprio", 1.0, "cross_attention")
    assert topology.resolve_fn(topology.connections[4], layout) == "gated"


def test_seed_constructors():
    assert len(CanvasTopology.dense(["a", "b", "c"]).connections) == 9
    iso = CanvasTopology.isolated(["a", "b", "c"])
    assert [(c.src, c.dst) for c in iso.connections] == [("a", "a"), ("b", "b"), ("c", "c")]
    hub = CanvasTopology.hub_spoke("task", ["r1", "r2"])
    pairs = {(c.src, c.dst) for c in hub.connections}
    assert {("task", "r1"), ("r1", "task"), ("task", "r2"), ("r2", "task")} <= pairs
    assert ("r1", "r2") not in pairs
    one_way = CanvasTopology.hub_spoke("task", ["r1"], bidirectional=False)
    assert ("r1", "task") not in {(c.src, c.dst) for c in one_way.connections}
    chain = CanvasTopology.causal_chain(["obs", "plan", "act"])
    assert {(c.src, c.dst) for c in chain.connections} == {
        ("obs", "obs"), ("plan", "plan"), ("act", "act"), ("plan", "obs"), ("act", "plan")}
    ct = CanvasTopology.causal_temporal(["obs", "act"])
    assert all(c.t_src == 0 and c.t_dst in (0, -1) for c in ct.connections)
    assert all(c.t_dst == -1 for c in ct.connections if c.src != c.dst)  # no same-frame cross leakage
    assert ct.has_temporal_constraints and not chain.has_temporal_constraints


def test_seed_multi_robot_queries():
    topology = CanvasTopology(connections=[
        Connection(src="robot1_cam", dst="robot1_cam"),
        Connection(src="robot1_action", dst="robot1_cam"),
        Connection(src="robot1_cam", dst="robot2_cam", weight=0.5),
        Connection(src="shared_task", dst="robot1_cam"),
        Connection(src="robot1_action", dst="shared_task"),
    ])
    assert topology.neighbors_of("robot1_action") == ["robot1_cam", "shared_task"]
    assert topology.attended_by("robot1_cam") == ["robot1_cam", "robot1_action", "shared_task"]
    assert topology.to_block_adjacency()[("robot1_cam", "robot2_cam")] == 0.5
    assert topology.regions == {"robot1_cam", "robot1_action", "robot2_cam", "shared_task"}
    assert "robot1_cam" in topology.summary()


def test_seed_temporal_connections():
    same = Connection(src="cam", dst="action", t_src=0, t_dst=0)
    prev = Connection(src="action", dst="obs", t_src=0, t_dst=-1)
    assert same.is_temporal and prev.t_dst == -1 and prev.temporal_fill is TemporalFill.HOLD
    assert not Connection(src="thought", dst="thought", t_src=None, t_dst=None).is_temporal
    assert Connection("a", "b", temporal_fill="interpolate").temporal_fill is TemporalFill.INTERPOLATE


def test_seed_schema_round_trip(tmp_path):
    schema = CanvasSchema(
        layout=CanvasLayout(
            T=8, H=16, W=16, d_model=256,
            regions={
                "visual": RegionSpec(bounds=(0, 8, 0, 12, 0, 12), semantic_type="RGB video 224x224",
                                     semantic_embedding=(0.12, -0.05, 0.3)),
                "action": RegionSpec(bounds=(0, 8, 12, 14, 0, 2), loss_weight=2.0,
                                     semantic_type="6-DOF end-effector + gripper",
                                     semantic_embedding=(0.31, 0.08, -0.2)),
            },
        ),
        topology=CanvasTopology(connections=[
            Connection(src="visual", dst="visual"),
            Connection(src="action", dst="visual"),
            Connection(src="action", dst="action"),
        ]),
        metadata={"model": "CogVideoX-2B", "data": "bridge_v2"},
    )
    path = tmp_path / "robot_v1.json"
    schema.to_json(path)
    loaded = CanvasSchema.from_json(path)
    assert loaded == schema
    assert CanvasSchema.from_json(schema.to_json()) == schema  # a JSON string works too
    assert loaded.schema_hash() == schema.schema_hash()
    other = CanvasSchema(
        layout=CanvasLayout(T=8, H=16, W=16, d_model=256, regions={
            "camera": RegionSpec(bounds=(0, 8, 0, 12, 0, 12), semantic_embedding=(0.13, -0.04, 0.28)),
            "gripper_cmd": RegionSpec(bounds=(0, 8, 12, 14, 0, 2), semantic_embedding=(0.3, 0.1, -0.18)),
        }))
    pairs = schema.compatible_regions(other, threshold=0.3)
    assert [(a, b) for a, b, _ in pairs][:2] == [("visual", "camera"), ("action", "gripper_cmd")] or \
        {(a, b) for a, b, _ in pairs} >= {("visual", "camera"), ("action", "gripper_cmd")}
    assert all(d <= 0.3 for _, _, d in pairs)
    assert [d for _, _, d in pairs] == sorted(d for _, _, d in pairs)


def test_transfer_distance_is_cosine_distance():
    a = RegionSpec(bounds=(0, 1), semantic_embedding=(1.0, 0.0))
    b = RegionSpec(bounds=(0, 1), semantic_embedding=(0.0, 2.0))
    c = RegionSpec(bounds=(0, 1), semantic_embedding=(-3.0, 0.0))
    assert transfer_distance(a, a) == pytest.approx(0.0)
    assert transfer_distance(a, b) == pytest.approx(1.0)
    assert transfer_distance(a, c) == pytest.approx(2.0)
    with pytest.raises(CanvasError, match="no semantic_embedding"):
        transfer_distance(a, RegionSpec(bounds=(0, 1)))
    with pytest.raises(CanvasError, match="different models"):
        transfer_distance(a, RegionSpec(bounds=(0, 1), semantic_embedding=(1.0, 0.0), embedding_model="other"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_schemas_round_trip_exactly(data):
    layout = data.draw(layouts(allow_overlap=data.draw(st.booleans())))
    topology = data.draw(st.one_of(st.none(), topologies(layout)))
    metadata = data.draw(st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()), max_size=3))
    schema = CanvasSchema(layout=layout, topology=topology, metadata=metadata)
    text = schema.to_json()
    again = CanvasSchema.from_json(text)
    assert again == schema
    assert again.to_json() == text
    assert CanvasSchema.from_dict(json.loads(text)) == schema


def test_files_written_by_canvas_engineering_load(tmp_path):
    ce = pytest.importorskip("canvas_engineering")
    layout = ce.CanvasLayout(T=5, H=8, W=8, d_model=64, regions={
        "visual": (0, 5, 0, 6, 0, 6),
        "reward": ce.RegionSpec(bounds=(2, 3, 7, 8, 0, 1), period=5, loss_weight=0.5, default_attn="pooling"),
    }, t_current=2)
    topo = ce.CanvasTopology([ce.Connection("visual", "reward", t_src=0, t_dst=-1, fn="gated", weight=0.5)])
    path = tmp_path / "ce.json"
    ce.CanvasSchema(layout=layout, topology=topo, metadata={"k": "v"}).to_json(path)
    ours = CanvasSchema.from_json(path)
    assert ours.layout.region_spec("reward").period == 5
    assert ours.layout.region_spec("reward").default_attn == "pooling"
    assert ours.topology.connections[0] == Connection("visual", "reward", t_src=0, t_dst=-1, fn="gated", weight=0.5)
    # and ours load in canvas-engineering
    back = tmp_path / "ours.json"
    ours.to_json(back)
    theirs = ce.CanvasSchema.from_json(back)
    assert theirs.layout.region_spec("reward").period == 5
    assert theirs.layout.region_indices("visual") == ours.layout.region_indices("visual")


BAD_JSON = [
    ("", "not valid JSON"),
    ('{"layout": {"T": 2, "d_model": 4', "truncated"),
    ("[1, 2]", "JSON object"),
    ('{"regions": {}}', "layout: required key is missing"),
    ('{"layout": {"T": "5", "d_model": 4}}', "layout.T"),
    ('{"layout": {"T": 2, "d_model": 4, "spatial_shape": [2]}, "regions": {"a": {"bounds": [0, 1, 0, 3]}}}', "'a'"),
    ('{"layout": {"T": 2, "d_model": 4}, "regions": {"a": {"bounds": [0, 1], "perod": 2}}}', "regions.a.perod: unknown key"),
    ('{"layout": {"T": 2, "d_model": 4}, "regions": {"a": {"bounds": [0, 1.5]}}}', "regions.a.bounds"),
    ('{"layout": {"T": 2, "d_model": 4}, "regions": {"a": {"bounds": [0, 1]}}, "topology": [{"src": "a", "dst": "b"}]}', "'b'"),
    ('{"layout": {"T": 2, "d_model": 4}, "regions": {"a": {"bounds": [0, 1]}}, "topology": [{"src": "a", "dst": "a", "temporal_fill": "wait"}]}', "temporal_fill"),
    ('{"layout": {"T": 2, "d_model": 4}, "regions": {"a": {"bounds": [0, 1], "period": 0}}}', "regions.a.period"),
    ('{"layout": {"T": 2, "d_model": 4}, "regions": {"a": {"bounds": [0, 1], "is_output": "no"}}}', "is_output"),
]


@pytest.mark.parametrize("text, words", BAD_JSON)
def test_bad_json_raises_schema_format_error(text, words):
    with pytest.raises(SchemaFormatError) as info:
        CanvasSchema.from_json(text) if text.strip() else CanvasSchema.from_json(text or "{")
    assert words in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(SchemaFormatError, match="does not exist"):
        CanvasSchema.from_json(tmp_path / "nope.json")


@settings(max_examples=150, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["layout", "regions", "topology", "T", "d_model", "bounds", "src", "dst", "period",
                         "spatial_shape", "t_src", "weight", "metadata", "x"]), kids, max_size=5),
    max_leaves=20))
def test_garbage_only_ever_raises_canvas_error(garbage):
    try:
        CanvasSchema.from_dict(garbage)
    except CanvasError:
        pass
    try:
        CanvasSchema.from_json(json.dumps(garbage, allow_nan=True))
    except CanvasError:
        pass


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(["src", "dst", "weight", "t_src", "t_dst", "fn", "write_mode",
                                        "temporal_fill", "interpolation_order", "operator"]),
                       st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=True) | st.text(max_size=4),
                       max_size=8))
def test_random_bad_connection_specs_only_raise_canvas_error(kwargs):
    kwargs.setdefault("src", "a")
    kwargs.setdefault("dst", "b")
    try:
        Connection(**kwargs)
    except CanvasError:
        pass


def test_bad_topologies():
    layout = fn_layout()
    with pytest.raises(TopologyError) as info:
        CanvasSchema(layout=layout, topology=CanvasTopology([Connection("visual", "vsual")]))
    assert "'vsual'" in str(info.value) and "Did you mean 'visual'" in str(info.value)
    with pytest.raises(CanvasTypeError, match="connection #1"):
        CanvasTopology([Connection("a", "a"), ("a", "b")])
    with pytest.raises(TopologyError, match="weight"):
        Connection("a", "b", weight=0)
    with pytest.raises(TopologyError, match="write_mode"):
        Connection("a", "b", write_mode="overwrite")
    with pytest.raises(TopologyError, match="interpolation_order"):
        Connection("a", "b", interpolation_order=0)
    with pytest.raises(CanvasTypeError, match="t_src"):
        Connection("a", "b", t_src=0.5)
    with pytest.raises(CanvasTypeError, match="list of region names"):
        CanvasTopology.dense("abc")


def test_shipped_json_schema_is_current():
    shipped = json.loads((ROOT / "docs" / "schema.json").read_text())
    assert shipped == schema_json_schema()


def test_bundled_example_validates_against_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    example = json.loads((ROOT / "canvas_core" / "examples" / "robot_arm.json").read_text())
    jsonschema.validate(example, schema_json_schema())
    CanvasSchema.from_dict(example)


@pytest.mark.parametrize("source, words", [
    ("", "empty string"),
    ("   ", "empty string"),
    ("\x00", "NUL byte"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ('{"schema_version": "99.0", "layout": {"T": 1, "d_model": 2}}', "99.0"),
])
def test_more_bad_sources(source, words):
    with pytest.raises(SchemaFormatError, match=words):
        CanvasSchema.from_json(source)

"""Pure-Python semantic helpers: auto_semantic_type, compute_semantic_embeddings, program_distance."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError
from canvas_core.program import RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, RegionSpec, transfer_distance
from canvas_core.semantic import (
    CARRIER_PENALTY, FAMILY_PENALTY, auto_semantic_type, compute_semantic_embeddings, program_distance,
)


# ------------------------------------------------------------------------- auto_semantic_type
@pytest.mark.parametrize("path, expected", [
    ("country_us.macro.output.gdp_nowcast", "country us / macro / output / gdp nowcast"),
    ("financial.yield_curves.ten_year", "financial / yield curves / ten year"),
    ("firm_AAPL.financials.revenue", "firm AAPL / financials / revenue"),
    ("single", "single"),
    ("", ""),
])
def test_auto_semantic_type_documented_examples(path, expected):
    assert auto_semantic_type(path) == expected


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="ab_. XY-", max_size=20))
def test_auto_semantic_type_is_plain_substitution(path):
    # reference: replace every "." by " / " and every "_" by " ", nothing else
    ref = "".join(" / " if c == "." else " " if c == "_" else c for c in path)
    assert auto_semantic_type(path) == ref


def test_auto_semantic_type_matches_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering.semantic")
    for p in ["a__b..c", " x_y ", "A.B_C", "x-y.z", "robot.arm_0.joint_angles"]:
        assert auto_semantic_type(p) == ce.auto_semantic_type(p)


def test_auto_semantic_type_rejects_non_strings():
    with pytest.raises(CanvasTypeError, match="string path"):
        auto_semantic_type(3)


# ---------------------------------------------------------------- compute_semantic_embeddings
def _char_embed(texts):
    """Deterministic toy embedder: (#letters, #spaces, #slashes, 1)."""
    return [[sum(c.isalpha() for c in t), t.count(" "), t.count("/"), 1.0] for t in texts]


def test_dict_form_uses_semantic_types_else_auto():
    paths = ["robot.joint_angles", "camera.rgb"]
    out = compute_semantic_embeddings(paths, _char_embed, {"camera.rgb": "RGB video"})
    assert set(out) == set(paths)
    assert out["robot.joint_angles"] == tuple(float(x) for x in _char_embed(["robot / joint angles"])[0])
    assert out["camera.rgb"] == tuple(float(x) for x in _char_embed(["RGB video"])[0])
    assert all(isinstance(v, tuple) for v in out.values())
    assert compute_semantic_embeddings([], _char_embed) == {}


def _schema():
    layout = CanvasLayout(T=2, d_model=8, spatial_shape=(2, 2), regions={
        "camera.rgb_video": RegionSpec((0, 2, 0, 1, 0, 2), semantic_type="RGB video", loss_weight=2.0),
        "robot.joint_angles": (0, 2, 1, 2, 0, 2),
    })
    return CanvasSchema(layout, CanvasTopology.dense(["camera.rgb_video", "robot.joint_angles"]),
                        metadata={"name": "toy"})


class _Named:
    model_name = "toy/char-counts"

    def __init__(self):
        self.calls = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return _char_embed(texts)


def test_schema_form_fills_every_region_and_keeps_everything_else():
    schema = _schema()
    emb = _Named()
    out = compute_semantic_embeddings(schema, embedder=emb)
    assert isinstance(out, CanvasSchema) and out is not schema
    # the input is untouched (frozen specs, new objects)
    assert all(s.semantic_embedding is None for s in schema.layout.regions.values())
    assert len(emb.calls) == 1  # one batched call
    rgb, joints = out.layout.regions["camera.rgb_video"], out.layout.regions["robot.joint_angles"]
    assert rgb.semantic_type == "RGB video"                        # given type kept
    assert joints.semantic_type == "robot / joint angles"                # auto from the name
    assert rgb.semantic_embedding == tuple(float(x) for x in _char_embed(["RGB video"])[0])
    assert joints.semantic_embedding == tuple(float(x) for x in _char_embed(["robot / joint angles"])[0])
    assert {s.embedding_model for s in out.layout.regions.values()} == {"toy/char-counts"}
    # geometry, other fields, topology and metadata survive
    assert rgb.bounds == (0, 2, 0, 1, 0, 2) and rgb.loss_weight == 2.0
    assert out.layout.region_names == schema.layout.region_names
    assert out.layout.num_positions == schema.layout.num_positions
    assert out.topology == schema.topology and out.metadata == schema.metadata
    # the result round-trips through JSON
    again = CanvasSchema.from_json(out.to_json())
    assert again.layout.regions["robot.joint_angles"].semantic_embedding == joints.semantic_embedding


def test_layout_form_and_callable_model_name():
    def my_embedder(texts):
        return _char_embed(texts)

    layout = _schema().layout
    out = compute_semantic_embeddings(layout, embedder=my_embedder)
    assert isinstance(out, CanvasLayout)
    assert {s.embedding_model for s in out.regions.values()} == {"my_embedder"}
    assert all(len(s.semantic_embedding) == 4 for s in out.regions.values())


def test_registered_embedder_by_name():
    from canvas_core.plugins import register_embedder, unregister_embedder

    register_embedder("toy_chars_for_test", _Named, description="test only")
    try:
        out = compute_semantic_embeddings(_schema(), embedder="toy_chars_for_test")
    finally:
        unregister_embedder("toy_chars_for_test")
    assert {s.embedding_model for s in out.layout.regions.values()} == {"toy/char-counts"}


@pytest.mark.parametrize("bad_embedder, exc, match", [
    (lambda ts: [[1.0, 2.0]], SchemaError, "1 vectors for 2 texts"),
    (lambda ts: [[1.0], [1.0, 2.0]], SchemaError, "different lengths"),
    (lambda ts: [[float("nan")], [1.0]], SchemaError, "non-finite"),
    (lambda ts: [[], []], SchemaError, "empty"),
    (42, CanvasTypeError, "embed"),
])
def test_bad_embedders_raise_clear_errors(bad_embedder, exc, match):
    with pytest.raises(exc, match=match):
        compute_semantic_embeddings(_schema(), embedder=bad_embedder)


def test_unknown_embedder_name_and_bad_arguments():
    with pytest.raises(CanvasError, match="no_such_embedder"):
        compute_semantic_embeddings(_schema(), embedder="no_such_embedder")
    with pytest.raises(CanvasTypeError, match="needs an embedder"):
        compute_semantic_embeddings(_schema())
    with pytest.raises(CanvasTypeError, match="not both"):
        compute_semantic_embeddings(["a"], _char_embed, embedder=_char_embed)
    with pytest.raises(CanvasTypeError, match="field_paths"):
        compute_semantic_embeddings("a.b", _char_embed)


# ------------------------------------------------------------------------- program_distance
def _spec(vec, model="m"):
    return RegionSpec((0, 1), semantic_embedding=vec, embedding_model=model)


def _cos_dist(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(x * x for x in b)))


@settings(max_examples=40, deadline=None)
@given(
    a=st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=3).filter(lambda v: sum(x * x for x in v) > 1e-3),
    b=st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=3).filter(lambda v: sum(x * x for x in v) > 1e-3),
    fam=st.sampled_from([("state", "state"), ("state", "action"), ("memory", "observation")]),
    car=st.sampled_from([("deterministic", "deterministic"), ("deterministic", "diffusive")]),
)
def test_program_distance_is_cosine_plus_penalties(a, b, fam, car):
    pa, pb = RegionProgram(family=fam[0], carrier=car[0]), RegionProgram(family=fam[1], carrier=car[1])
    ref = _cos_dist(a, b) + (0.3 if fam[0] != fam[1] else 0.0) + (0.2 if car[0] != car[1] else 0.0)
    got = program_distance(_spec(a), pa, _spec(b), pb)
    assert got >= 0.0
    assert got == pytest.approx(max(ref, 0.0), abs=1e-9)
    assert program_distance(_spec(a), pa, _spec(b), pb) == pytest.approx(program_distance(_spec(b), pb, _spec(a), pa))


def test_program_distance_orders_and_matches_canvas_engineering():
    a, b = _spec((1.0, 0.0)), _spec((0.6, 0.8))
    same = program_distance(a, RegionProgram(), b, RegionProgram())
    fam = program_distance(a, RegionProgram(), b, RegionProgram(family="action"))
    both = program_distance(a, RegionProgram(), b, RegionProgram(family="action", carrier="diffusive"))
    assert same == pytest.approx(transfer_distance(a, b)) and same < fam < both
    assert (FAMILY_PENALTY, CARRIER_PENALTY) == (0.3, 0.2)
    ce_sem = pytest.importorskip("canvas_engineering.semantic")
    from canvas_engineering.canvas import RegionSpec as CeSpec
    from canvas_engineering.program import RegionProgram as CeProg

    ce = ce_sem.program_distance(CeSpec((0, 1), semantic_embedding=(1.0, 0.0)), CeProg(),
                                 CeSpec((0, 1), semantic_embedding=(0.6, 0.8)), CeProg(family="action", carrier="diffusive"))
    assert both == pytest.approx(ce)


def test_program_distance_none_program_adds_no_penalty_and_errors_are_clear():
    a, b = _spec((1.0, 0.0)), _spec((0.0, 1.0))
    assert program_distance(a, None, b, RegionProgram(family="action")) == pytest.approx(1.0)
    with pytest.raises(SchemaError, match="semantic_embedding"):
        program_distance(RegionSpec((0, 1)), None, b, None)
    with pytest.raises(SchemaError, match="different models"):
        program_distance(_spec((1.0, 0.0), "x"), None, _spec((1.0, 0.0), "y"), None)


def test_import_is_torch_free():
    code = "import sys, canvas_core.semantic as s; s.auto_semantic_type('a.b'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_other_objects_with_a_layout_are_rejected_clearly():
    class Bound:
        layout = _schema().layout

    with pytest.raises(CanvasTypeError, match="CanvasSchema or CanvasLayout.*Bound"):
        compute_semantic_embeddings(Bound(), embedder=_char_embed)

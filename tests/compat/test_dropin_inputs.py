"""The drop-in promise: canvas-engineering's unusual but harmless inputs are accepted (a schema
file's `version` key, period 0, a semantic conditioner's `modality_embeddings is None`), and
error messages keep canvas-engineering's key phrases beside canvas-core's own text."""

from __future__ import annotations

import dataclasses
import json

import pytest

import canvas_core as cc
from canvas_core.errors import CanvasError


def test_a_schema_file_with_a_version_key_loads(tmp_path):
    data = {"layout": {"T": 2, "H": 2, "W": 2, "d_model": 16}, "regions": {"a": {"bounds": [0, 2, 0, 1, 0, 1]}},
            "topology": [{"src": "a", "dst": "a"}], "version": "0.2.0"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    for loaded in (cc.CanvasSchema.from_json(str(path)), cc.CanvasSchema.from_dict(data)):
        assert loaded.version == "0.2.0" and loaded.topology.connections[0].operator == "attend"
    with pytest.raises(CanvasError, match="version"):  # still a string, like every other key
        cc.CanvasSchema.from_dict(dict(data, version=2))


def test_a_canvas_with_a_semantic_conditioner_has_no_modality_embeddings():
    lay = cc.CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 1), "b": (0, 2, 1, 2, 0, 2)})
    cond = cc.SemanticConditioner(8, 3, {"a": [1.0, 0.0, 0.5]})
    sc = cc.SpatiotemporalCanvas(lay, semantic_conditioner=cond)
    assert sc.modality_embeddings is None
    assert not [k for k in sc.state_dict() if k.startswith("modality_embeddings")]
    assert sc.create_empty(2).shape == (2, 8, 8)
    assert sc.region_identity("b").shape == (8,)  # a region the conditioner does not know
    plain = cc.SpatiotemporalCanvas(lay)
    assert set(plain.modality_embeddings.keys()) == {"r0", "r1"}


def _raises(fn):
    with pytest.raises(CanvasError) as info:
        fn()
    return str(info.value)


def test_error_messages_keep_canvas_engineerings_phrases():
    emb = dict(bounds=(0, 1, 0, 1, 0, 1))

    @dataclasses.dataclass
    class Empty:
        x: int = 1

    @dataclasses.dataclass
    class Wide:
        a: cc.Field = dataclasses.field(default_factory=lambda: cc.Field(1, 9))

    cases = {
        "Unknown attention type: 'nope_type'": lambda: cc.create_attention("nope_type", d_model=8),
        "Both RegionSpecs must have semantic_embedding set": lambda: cc.transfer_distance(cc.RegionSpec(**emb),
                                                                                         cc.RegionSpec(**emb)),
        "Embedding model mismatch": lambda: cc.transfer_distance(
            cc.RegionSpec(**emb, semantic_embedding=(1.0, 0.0), embedding_model="a"),
            cc.RegionSpec(**emb, semantic_embedding=(1.0, 0.0), embedding_model="b")),
        "Embedding dimension mismatch": lambda: cc.transfer_distance(
            cc.RegionSpec(**emb, semantic_embedding=(1.0, 0.0, 1.0)), cc.RegionSpec(**emb, semantic_embedding=(1.0, 0.0))),
        "Bounds length 4 != expected 6": lambda: cc.CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 1, 0, 1)}),
        "Cannot specify both spatial_shape and H/W": lambda: cc.CanvasLayout(T=2, H=2, W=3, spatial_shape=(4, 4), d_model=4),
        "Unknown ClockExpr type: 'nonexistent'": lambda: cc.ClockExpr.from_dict({"type": "nonexistent"}),
        "OnEvent requires at least one of gt= or lt=": lambda: cc.OnEvent("err.prediction"),
        "Rect() requires even number of positional args": lambda: cc.Rect(0, 1, 2),
        "No Field attributes found in object tree": lambda: cc.compile_schema(Empty(), T=2, H=2, W=2, d_model=4),
        "Field 'a' width 9 exceeds canvas W=2": lambda: cc.compile_schema(Wide(), T=1, H=2, W=2, d_model=4),
        "already registered": lambda: _register_twice(),
        "not registered": lambda: cc.CortexRegistry().unregister("zz"),
    }
    for phrase, fn in cases.items():
        assert phrase in _raises(fn), phrase


def _register_twice():
    r = cc.CortexRegistry()
    r.register(cc.CortexSpec(name="c"))
    r.register(cc.CortexSpec(name="c"))

"""The shipped JSON Schema (``docs/schema.json``) and the loader agree: documents the loader
refuses are refused by a JSON Schema validator too, and every example file is accepted by both."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

import canvas_core as cc
from canvas_core import CanvasSchema
from canvas_core.errors import SchemaFormatError
from canvas_core.schema import schema_json_schema

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
ROBOT = json.loads((ROOT / "canvas_core" / "examples" / "robot_arm.json").read_text())


def _validator() -> Any:
    return jsonschema.Draft202012Validator(json.loads((ROOT / "docs" / "schema.json").read_text()))


def _edit(change: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    doc = copy.deepcopy(ROBOT)
    change(doc)
    return doc


def _region(doc: Dict[str, Any]) -> Dict[str, Any]:
    return doc["regions"]["visual"]


def _conn(doc: Dict[str, Any]) -> Dict[str, Any]:
    return doc["topology"][0]


BAD = {
    "temporal_fill bogus": lambda d: _conn(d).update(temporal_fill="bogus"),
    "write_mode bogus": lambda d: _conn(d).update(write_mode="bogus"),
    "operator bogus": lambda d: _conn(d).update(operator="bogus"),
    "carrier bogus": lambda d: _region(d).update(carrier="bogus"),
    "mask kind bogus": lambda d: _conn(d).update(mask={"kind": "bogus"}),
    "mask unknown key": lambda d: _conn(d).update(mask={"kind": "tile", "tile": 4}),
    "mask tile_h 0": lambda d: _conn(d).update(mask={"kind": "tile", "tile_h": 0}),
    "mask tile_shape empty": lambda d: _conn(d).update(mask={"kind": "tile", "tile_shape": []}),
    "mask pattern 2": lambda d: _conn(d).update(mask={"kind": "sparse", "pattern": [[2]]}),
    "mask pattern empty row": lambda d: _conn(d).update(mask={"kind": "sparse", "pattern": [[]]}),
    "weight 0": lambda d: _conn(d).update(weight=0),
    "weight negative": lambda d: _conn(d).update(weight=-0.5),
    "weight above float32": lambda d: _conn(d).update(weight=3.5e38),
    "interpolation_order 0": lambda d: _conn(d).update(interpolation_order=0),
    "fn empty": lambda d: _conn(d).update(fn=""),
    "fn spaces": lambda d: _conn(d).update(fn="  "),
    "src empty": lambda d: _conn(d).update(src=""),
    "t_current -1": lambda d: d["layout"].update(t_current=-1),
    "spatial_shape 0": lambda d: d["layout"].update(spatial_shape=[0, 16]),
    "schema_version 1.0": lambda d: d.update(schema_version="1.0"),
    "schema_version 01": lambda d: d.update(schema_version="01"),
    "schema_version newline": lambda d: d.update(schema_version="0\n"),
    "loss_weight negative": lambda d: _region(d).update(loss_weight=-1),
    "period 0": lambda d: _region(d).update(period=0),
    "bounds empty": lambda d: _region(d).update(bounds=[]),
    "bounds negative": lambda d: _region(d).update(bounds=[0, 8, -1, 12, 0, 12]),
    "default_attn empty": lambda d: _region(d).update(default_attn=""),
    "embedding_model spaces": lambda d: _region(d).update(embedding_model=" "),
    "family empty": lambda d: _region(d).update(family=""),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_document_is_refused_by_json_schema_and_loader(name):
    doc = _edit(BAD[name])
    assert list(_validator().iter_errors(doc)), f"{name}: docs/schema.json accepts it"
    with pytest.raises(SchemaFormatError):
        CanvasSchema.from_dict(doc)


def _written_by_us() -> Dict[str, Any]:
    from canvas_core.schema.masks import MaskSpec

    layout = cc.CanvasLayout(T=4, spatial_shape=(4, 4), d_model=8, t_current=4, regions={
        "a": cc.RegionSpec((0, 4, 0, 2, 0, 4), period=2, is_output=False, loss_weight=0.0, semantic_type="",
                           semantic_embedding=(0.5, -1.0, 0.0), embedding_model="m", default_attn="linear",
                           carrier="diffusive", family="state"),
        "b": cc.RegionSpec((0, 4, 2, 4, 0, 4), carrier="memory", family="my_custom_family")})
    topo = cc.CanvasTopology([
        cc.Connection("a", "b", weight=2.5, t_src=0, t_dst=-1, fn="gated", operator="observe", write_mode="gate",
                      temporal_fill="interpolate", interpolation_order=2, mask=MaskSpec("tile", tile_h=2, tile_w=2)),
        cc.Connection("b", "a", weight=3.4e38, temporal_fill="drop", mask=MaskSpec("tile", tile_shape=(1, 2))),
        cc.Connection("a", "a", mask=MaskSpec("sparse", pattern=[[1] * 8 for _ in range(8)])),
        cc.Connection("b", "b", mask=MaskSpec())])
    return CanvasSchema(layout, topo, metadata={"k": [1, {"x": None}]}).to_dict()


def _written_by_canvas_engineering() -> Dict[str, Any]:
    ce = pytest.importorskip("canvas_engineering")

    @dataclass
    class Robot:
        camera: Any = ce.Field(6, 6, family="observation")
        belief: Any = ce.Field(4, 4, family="state")
        action: Any = ce.Field(1, 4, family="action", loss_weight=2.0)

    _, program = ce.compile_program(Robot(), T=8, d_model=64)
    return program.schema.to_dict()


GOOD = {
    "robot_arm example": lambda: copy.deepcopy(ROBOT),
    "written by canvas-core": _written_by_us,
    "written by canvas-engineering": _written_by_canvas_engineering,
    "compiled program": lambda: cc.compile_program(_CcRobot(), T=4, d_model=32)[1].schema.to_dict(),
    "2-d shorthand, legacy version, upper-case fill": lambda: {
        "schema_version": "0", "version": "0.1", "layout": {"T": 2, "H": 2, "W": 2, "d_model": 4},
        "regions": {"a": {"bounds": [0, 2, 0, 2, 0, 2]}},
        "topology": [{"src": "a", "dst": "a", "temporal_fill": "HOLD", "weight": 1,
                      "mask": {"kind": "sparse", "pattern": [[1, 0, True, False]] * 4}}]},
    "0-d canvas, no topology": lambda: {"layout": {"T": 1, "d_model": 1, "spatial_shape": []},
                                        "regions": {"a": {"bounds": [0, 1], "loss_weight": 3}}},
}


@dataclass
class _CcRobot:
    camera: Any = cc.Field(6, 6, family="observation")
    belief: Any = cc.Field(4, 4, family="state")
    action: Any = cc.Field(1, 4, family="action", loss_weight=2.0)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_example_is_accepted_by_json_schema_and_loader(name):
    doc = json.loads(json.dumps(GOOD[name]()))
    errors = [e.message for e in _validator().iter_errors(doc)]
    assert not errors, f"{name}: docs/schema.json refuses it: {errors[:3]}"
    CanvasSchema.from_dict(doc)


def test_shipped_file_is_the_generated_schema():
    assert json.loads((ROOT / "docs" / "schema.json").read_text()) == schema_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema_json_schema())


def test_misspelled_choice_gets_a_suggestion():
    with pytest.raises(SchemaFormatError, match=r"topology\.0\.write_mode: .*'gate'.*Did you mean 'gate'"):
        CanvasSchema.from_dict(_edit(lambda d: _conn(d).update(write_mode="gat")))

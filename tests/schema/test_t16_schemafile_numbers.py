"""Schema files with numbers no float holds (a 400-digit integer, NaN) and large metadata lists."""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path

import pytest

import canvas_core as cc
from canvas_core import CanvasSchema
from canvas_core.errors import SchemaError, SchemaFormatError

ROOT = Path(__file__).resolve().parents[2]
ROBOT_TEXT = (ROOT / "canvas_core" / "examples" / "robot_arm.json").read_text()
HUGE = "1" + "0" * 400


def _text_with(key_path: str, literal: str) -> str:
    """robot_arm.json with the value at ``key_path`` written as the JSON text ``literal``."""
    doc = json.loads(ROBOT_TEXT)
    node = doc
    *parents, last = key_path.split("/")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = "@@VALUE@@"
    return json.dumps(doc).replace('"@@VALUE@@"', literal)


@pytest.mark.parametrize("key_path, words", [
    ("regions/visual/loss_weight", "regions.visual.loss_weight"),
    ("topology/0/weight", "topology[0] (visual -> visual): weight"),
])
def test_integer_past_the_largest_float_is_a_schema_error(key_path, words):
    with pytest.raises(SchemaFormatError) as info:
        CanvasSchema.from_json(_text_with(key_path, HUGE))
    assert words in str(info.value)
    assert "largest float" in str(info.value)


def test_embedding_entry_past_the_largest_float_is_named():
    doc = json.loads(ROBOT_TEXT)
    doc["regions"]["visual"]["semantic_embedding"] = [0.5, "@@VALUE@@"]
    with pytest.raises(SchemaFormatError, match=r"regions\.visual\.semantic_embedding\[1\] must be finite.*largest float"):
        CanvasSchema.from_json(json.dumps(doc).replace('"@@VALUE@@"', HUGE))


def test_canvas_compile_reports_the_huge_number_without_a_traceback(tmp_path, capsys):
    from canvas_core.cli import main

    path = tmp_path / "huge.json"
    path.write_text(_text_with("regions/visual/loss_weight", HUGE))
    assert main(["compile", str(path)]) not in (0, None)
    err = capsys.readouterr().err
    assert "regions.visual.loss_weight" in err and "Traceback" not in err and "OverflowError" not in err


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_loss_weight_says_finite(literal):
    with pytest.raises(SchemaFormatError, match=r"regions\.visual\.loss_weight: must be a finite number") as info:
        CanvasSchema.from_json(_text_with("regions/visual/loss_weight", literal))
    assert "greater than or equal" not in str(info.value)


def test_metadata_list_is_checked_without_a_path_per_element():
    layout = cc.CanvasLayout(T=1, spatial_shape=(1,), d_model=1, regions={"a": (0, 1, 0, 1)})
    metadata = {"x": [1] * 200_000, "y": [[2] * 1000 for _ in range(100)]}
    tracemalloc.start()
    try:
        CanvasSchema(layout, metadata=metadata)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the JSON check's text is about 1.2 MB; a path string per element was about 30 MB more
    assert peak < 6_000_000, peak


def test_metadata_key_clash_deep_in_lists_is_still_named():
    layout = cc.CanvasLayout(T=1, spatial_shape=(1,), d_model=1, regions={"a": (0, 1, 0, 1)})
    metadata = copy.deepcopy({"runs": [0, 1, {"cfg": [{"lr": 1, 3: "a", "3": "b"}]}]})
    with pytest.raises(SchemaError, match=r"metadata\['runs'\]\[2\]\['cfg'\]\[0\] has the keys 3 and '3'"):
        CanvasSchema(layout, metadata=metadata)

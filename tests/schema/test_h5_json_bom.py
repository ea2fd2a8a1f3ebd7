"""JSON with a leading byte-order mark (as Windows editors write it): read as the JSON it is,
from a file, a string or bytes, instead of 'not valid JSON' or 'file ... does not exist'."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, CanvasSchema
from canvas_core.program.canvas_program import CanvasProgram


def _schema() -> CanvasSchema:
    return CanvasSchema(CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"a": (0, 1, 0, 1, 0, 2)}))


@pytest.mark.parametrize("cls", [CanvasSchema, CanvasProgram])
def test_a_file_with_a_bom_loads(tmp_path, cls):
    path = tmp_path / "s.json"
    path.write_text(_schema().to_json(), encoding="utf-8-sig")
    assert cls.from_json(path).layout.region_indices("a") == [0, 1]


@pytest.mark.parametrize("text", [lambda s: "\ufeff" + s, lambda s: ("\ufeff" + s).encode("utf-8"),
                                  lambda s: " \ufeff\n" + s], ids=["str", "bytes", "space-first"])
def test_json_text_with_a_bom_is_text_not_a_path(text):
    schema = _schema()
    assert CanvasSchema.from_json(text(schema.to_json())) == schema

"""CanvasSchema names what it got in JSON words: a schema given as null, an array or a scalar is
"null", "an array", "a number", not Python's NoneType / list / int."""

from __future__ import annotations

import pytest

from canvas_core import CanvasSchema
from canvas_core.errors import CanvasError


@pytest.mark.parametrize("value, word", [(None, "null"), ([1], "array"), ("x", "string"), (True, "boolean")])
def test_from_dict_names_json_types(value, word) -> None:
    with pytest.raises(CanvasError, match=rf"a canvas schema must be a JSON object, got {word}$"):
        CanvasSchema.from_dict(value)


@pytest.mark.parametrize("text, word", [("5", "number"), ("null", "null"), ('"abc"', "string")])
def test_from_json_of_a_scalar_names_it(text, word) -> None:
    with pytest.raises(CanvasError, match=rf"as JSON it is a {word}, but a canvas schema must be a JSON object"):
        CanvasSchema.from_json(text)

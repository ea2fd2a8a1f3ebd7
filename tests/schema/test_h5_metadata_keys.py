"""Schema metadata with dict keys that are not strings: JSON writes them as strings, so two keys
of one dict with the same text (``1`` and ``"1"``) would make a file that repeats a key; they are
refused with their path. A lone non-string key is accepted, as canvas-engineering accepts it."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, CanvasSchema
from canvas_core.errors import SchemaError


def _layout() -> CanvasLayout:
    return CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"a": (0, 1, 0, 1, 0, 2)})


@pytest.mark.parametrize("metadata, where", [
    ({1: "a", "1": "b"}, r"metadata has the keys 1 and '1'.*string '1'"),
    ({"runs": [{"cfg": {None: 3, "null": 4}}]}, r"metadata\['runs'\]\[0\]\['cfg'\] has the keys None and 'null'"),
    ({"x": {"y": [0, (1, {True: 0, "true": 1})]}}, r"metadata\['x'\]\['y'\]\[1\]\[1\] has the keys True and 'true'"),
])
def test_keys_json_writes_alike_are_refused_with_their_path(metadata, where):
    with pytest.raises(SchemaError, match=where + ".*could not be loaded; rename one"):
        CanvasSchema(_layout(), metadata=metadata)


def test_a_lone_non_string_key_is_accepted_and_comes_back_as_its_json_text():
    schema = CanvasSchema(_layout(), metadata={1: "a", 2.5: {None: 0}})
    assert CanvasSchema.from_json(schema.to_json()).metadata == {"1": "a", "2.5": {"null": 0}}


def test_string_keys_round_trip_exactly():
    metadata = {"model": "x", "runs": [{"cfg": {"lr": 0.1}}], "": {"nested": [1, 2]}}
    schema = CanvasSchema(_layout(), metadata=metadata)
    assert CanvasSchema.from_json(schema.to_json()).metadata == metadata

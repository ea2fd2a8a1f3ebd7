"""Schema metadata with dict keys that are not strings: JSON would turn them into strings (and a
key beside a string key of the same text into a file that repeats a key), so they are refused."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, CanvasSchema
from canvas_core.errors import SchemaError


def _layout() -> CanvasLayout:
    return CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"a": (0, 1, 0, 1, 0, 2)})


@pytest.mark.parametrize("metadata, where, shown", [
    ({1: "a", "1": "b"}, r"metadata has the key 1 \(int\)", '"1"'),
    ({"runs": [{"cfg": {None: 3}}]}, r"metadata\['runs'\]\[0\]\['cfg'\] has the key None", '"null"'),
    ({"x": {"y": [0, (1, {True: 0})]}}, r"metadata\['x'\]\['y'\]\[1\]\[1\] has the key True", '"true"'),
    ({2.5: 0}, r"metadata has the key 2.5 \(float\)", '"2.5"'),
])
def test_a_non_string_key_is_refused_with_its_path(metadata, where, shown):
    with pytest.raises(SchemaError, match=where + f".*saved as {shown}.*use a string key"):
        CanvasSchema(_layout(), metadata=metadata)


def test_string_keys_round_trip_exactly():
    metadata = {"model": "x", "runs": [{"cfg": {"lr": 0.1}}], "": {"nested": [1, 2]}}
    schema = CanvasSchema(_layout(), metadata=metadata)
    assert CanvasSchema.from_json(schema.to_json()).metadata == metadata

"""Layer 1: declarations of the canvas (pure Python, never imports torch).

`RegionSpec`, `CanvasLayout`, `Connection`, `TemporalFill`, `CanvasTopology`, `CanvasSchema`,
`transfer_distance`, and the JSON file format (`schema_json_schema`).
"""

from canvas_core.schema.layout import CanvasLayout
from canvas_core.schema.region import RegionSpec, transfer_distance
from canvas_core.schema.schema import CanvasSchema
from canvas_core.schema.topology import CanvasTopology, Connection, TemporalFill


def schema_json_schema() -> dict:
    """The JSON Schema of the schema file format (the same as ``docs/schema.json``)."""
    from canvas_core.schema.fileformat import schema_json_schema as _js

    return _js()


__all__ = [
    "RegionSpec", "CanvasLayout", "transfer_distance", "Connection", "TemporalFill",
    "CanvasTopology", "CanvasSchema", "schema_json_schema",
]

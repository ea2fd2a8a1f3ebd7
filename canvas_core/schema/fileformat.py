"""The JSON file format of schemas, as pydantic v2 models (validation and JSON Schema export).

The runtime objects are the dataclasses of this package; these models only describe and check
the file. The format is the one canvas-engineering writes (``schema_version``, ``layout``,
``regions``, ``topology``) plus optional keys of ours; files written by either load in both
directions as long as only shared features are used.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

__all__ = ["SchemaFile", "RegionModel", "LayoutModel", "ConnectionModel", "MaskModel", "schema_json_schema"]

Number = Union[StrictInt, StrictFloat]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegionModel(_Strict):
    """One region: half-open bounds ``[t0, t1, s0_lo, s0_hi, ...]`` plus optional semantics."""

    bounds: List[StrictInt] = Field(description="[t0, t1, s0_lo, s0_hi, ...], half-open")
    period: StrictInt = Field(1, ge=1, description="real frames per canvas frame")
    is_output: StrictBool = True
    loss_weight: Number = Field(1.0, ge=0)
    semantic_type: Optional[StrictStr] = None
    semantic_embedding: Optional[List[Number]] = None
    embedding_model: StrictStr = "openai/text-embedding-3-small"
    default_attn: StrictStr = "cross_attention"
    carrier: StrictStr = "deterministic"
    family: Optional[StrictStr] = None


class LayoutModel(_Strict):
    """Canvas geometry. ``spatial_shape`` (or the 2-d shorthand ``H``/``W``)."""

    T: StrictInt = Field(ge=1)
    d_model: StrictInt = Field(ge=1)
    spatial_shape: Optional[List[StrictInt]] = None
    H: Optional[StrictInt] = None
    W: Optional[StrictInt] = None
    t_current: StrictInt = 0
    allow_overlap: StrictBool = False


class MaskModel(BaseModel):
    """A connection's ``MaskSpec`` (kind full / tile / sparse and its parameters)."""

    model_config = ConfigDict(extra="allow")
    kind: StrictStr = "full"


class ConnectionModel(_Strict):
    """One connection ``src -> dst`` (src queries dst)."""

    src: StrictStr
    dst: StrictStr
    weight: Number = 1.0
    t_src: Optional[StrictInt] = None
    t_dst: Optional[StrictInt] = None
    fn: Optional[StrictStr] = None
    operator: StrictStr = "attend"
    write_mode: StrictStr = "add"
    temporal_fill: StrictStr = "hold"
    interpolation_order: StrictInt = Field(1, ge=1)
    mask: Optional[MaskModel] = None


class SchemaFile(_Strict):
    """A canvas schema file: layout, regions, topology and free-form metadata."""

    schema_version: StrictStr = "0.2.0"
    version: Optional[StrictStr] = Field(
        None, description="written by older canvas-engineering releases; accepted and ignored "
                          "(schema_version is the file format's version)")
    layout: LayoutModel
    regions: Dict[str, RegionModel] = Field(default_factory=dict)
    topology: Optional[List[ConnectionModel]] = None
    metadata: Dict[str, Any] = Field(default_factory=dict)


def schema_json_schema() -> Dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the schema file format."""
    js = SchemaFile.model_json_schema()
    js["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    js["title"] = "canvas-core schema file"
    return js

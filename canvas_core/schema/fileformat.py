"""The JSON file format of schemas, as pydantic v2 models (validation and JSON Schema export).

The runtime objects are the dataclasses of this package; these models only describe and check
the file. The format is the one canvas-engineering writes (``schema_version``, ``layout``,
``regions``, ``topology``) plus optional keys of ours; files written by either load in both
directions as long as only shared features are used.

The models carry every rule a JSON Schema can state (fixed word lists, lower bounds, non-empty
strings), so that a validator given ``docs/schema.json`` refuses what the loader refuses; rules
between keys (bounds inside the canvas, ``t_current <= T``, ...) are the dataclasses' alone.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Dict, FrozenSet, List, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      WithJsonSchema)

from canvas_core.schema._validate import OPERATORS
from canvas_core.schema.mask_spec import _KINDS
from canvas_core.schema.region import CARRIERS
from canvas_core.schema.topology import MAX_WEIGHT, WRITE_MODES, TemporalFill

__all__ = ["SchemaFile", "RegionModel", "LayoutModel", "ConnectionModel", "MaskModel", "schema_json_schema",
           "CHOICES"]

#: the fixed word lists of the format, by key (used to add a did-you-mean to a refusal)
CHOICES: Dict[str, FrozenSet[str]] = {
    "operator": OPERATORS, "write_mode": WRITE_MODES, "carrier": CARRIERS, "kind": frozenset(_KINDS),
    "temporal_fill": frozenset(f.value for f in TemporalFill),
}



def _number(*, ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None) -> Any:
    """An int or a finite float within the given bounds; its JSON Schema states the bounds."""
    def check(value: Union[int, float]) -> Union[int, float]:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        for bound, ok, word in ((ge, lambda b: value >= b, ">="), (gt, lambda b: value > b, ">"),
                                (le, lambda b: value <= b, "<=")):
            if bound is not None and not ok(bound):
                raise ValueError(f"must be {word} {bound:g}, got {value:g}" if isinstance(value, float) or
                                 abs(value) < 10 ** 15 else f"must be {word} {bound:g}")
        return value

    js: Dict[str, Any] = {"type": "number"}
    for key, bound in (("minimum", ge), ("exclusiveMinimum", gt), ("maximum", le)):
        if bound is not None:
            js[key] = bound
    return Annotated[Union[StrictInt, StrictFloat], AfterValidator(check), WithJsonSchema(js)]


#: JSON Schema rules that the dataclasses check on loading, with messages naming the object
_NON_EMPTY = {"pattern": r"\S"}  # a character that is not a space (the loader strips before checking)
#: the schema_version the loader reads: major version 0 (checked by ``from_dict``, with its own message)
_VERSION_PATTERN = r"^0(?![^.])"


def _literal(words: FrozenSet[str]) -> Any:
    return Literal[tuple(sorted(words))]


def _any_case(words: FrozenSet[str]) -> str:
    """A pattern matching ``words`` in any letter case (the loader lower-cases temporal_fill)."""
    alts = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in w) for w in sorted(words))
    return "^(" + "|".join(alts) + ")$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegionModel(_Strict):
    """One region: half-open bounds ``[t0, t1, s0_lo, s0_hi, ...]`` plus optional semantics."""

    bounds: List[StrictInt] = Field(
        json_schema_extra={"minItems": 2, "items": {"type": "integer", "minimum": 0}}, description="[t0, t1, s0_lo, s0_hi, ...], half-open, an even number of integers")
    period: StrictInt = Field(1, ge=1, description="real frames per canvas frame")
    is_output: StrictBool = True
    loss_weight: _number(ge=0) = 1.0  # type: ignore[valid-type]
    semantic_type: Optional[StrictStr] = None
    semantic_embedding: Optional[List[_number()]] = None  # type: ignore[valid-type]
    embedding_model: StrictStr = Field("openai/text-embedding-3-small", json_schema_extra=_NON_EMPTY)
    default_attn: StrictStr = Field("cross_attention", json_schema_extra=_NON_EMPTY)
    carrier: _literal(CARRIERS) = "deterministic"  # type: ignore[valid-type]
    family: Optional[StrictStr] = Field(None, json_schema_extra=_NON_EMPTY)


class LayoutModel(_Strict):
    """Canvas geometry. ``spatial_shape`` (or the 2-d shorthand ``H``/``W``)."""

    T: StrictInt = Field(ge=1)
    d_model: StrictInt = Field(ge=1)
    spatial_shape: Optional[List[Annotated[StrictInt, Field(ge=1)]]] = None
    H: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    W: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    t_current: StrictInt = Field(0, json_schema_extra={"minimum": 0}, description="the present frame, in [0, T]")
    allow_overlap: StrictBool = False


class MaskModel(_Strict):
    """A connection's ``MaskSpec`` (kind full / tile / sparse and its parameters)."""

    kind: _literal(frozenset(_KINDS)) = "full"  # type: ignore[valid-type]
    tile_h: StrictInt = Field(1, ge=1)
    tile_w: StrictInt = Field(1, ge=1)
    tile_shape: Optional[List[Annotated[StrictInt, Field(ge=1)]]] = Field(None, min_length=1)
    pattern: Optional[List[Annotated[List[Union[StrictBool, Literal[0, 1]]], Field(min_length=1)]]] = Field(
        None, min_length=1, description="kind 'sparse': binary matrix (S_src rows x S_dst columns)")


class ConnectionModel(_Strict):
    """One connection ``src -> dst`` (src queries dst)."""

    src: StrictStr = Field(json_schema_extra=_NON_EMPTY)
    dst: StrictStr = Field(json_schema_extra=_NON_EMPTY)
    weight: _number() = Field(1.0, json_schema_extra={"exclusiveMinimum": 0, "maximum": MAX_WEIGHT})  # type: ignore
    t_src: Optional[StrictInt] = None
    t_dst: Optional[StrictInt] = None
    fn: Optional[StrictStr] = Field(None, json_schema_extra=_NON_EMPTY)
    operator: _literal(OPERATORS) = "attend"  # type: ignore[valid-type]
    write_mode: _literal(WRITE_MODES) = "add"  # type: ignore[valid-type]
    temporal_fill: StrictStr = Field("hold", pattern=_any_case(CHOICES["temporal_fill"]))
    interpolation_order: StrictInt = Field(1, ge=1)
    mask: Optional[MaskModel] = None


class SchemaFile(_Strict):
    """A canvas schema file: layout, regions, topology and free-form metadata."""

    schema_version: StrictStr = Field("0.2.0", json_schema_extra={"pattern": _VERSION_PATTERN})
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
    js["$comment"] = ("Write integers without a fractional part (8, not 8.0): the loader refuses 8.0, which JSON "
                      "Schema counts as an integer. Rules between keys (bounds inside the canvas, t_current <= T, "
                      "sparse masks need a pattern) are checked by the loader only.")
    return js

"""`CanvasSchema`: layout + topology + metadata, the portable type signature of a canvas model."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple, Union

from canvas_core.errors import (CanvasError, CanvasTypeError, SchemaError, SchemaFormatError, SettingError,
                                did_you_mean)
from canvas_core.schema._validate import as_float
from canvas_core.schema.jsonio import dump_json, json_type_name, loads_strict, read_json_source
from canvas_core.schema.layout import CanvasLayout
from canvas_core.schema.limits import check_size
from canvas_core.schema.region import RegionSpec, transfer_distance
from canvas_core.schema.topology import Connection, CanvasTopology, TemporalFill

__all__ = ["CanvasSchema", "SCHEMA_VERSION"]

SCHEMA_VERSION = "0.2.0"

_REGION_DEFAULTS = {f.name: f.default for f in fields(RegionSpec) if f.name != "bounds"}
_CONN_DEFAULTS = {f.name: f.default for f in fields(Connection) if f.name not in ("src", "dst")}


@dataclass
class CanvasSchema:
    """Everything that fixes a canvas's structure -- layout, topology, version, metadata -- in a
    form that round-trips through JSON.

    Example::

        schema = CanvasSchema(layout=layout, topology=topology, metadata={"model": "CogVideoX-2B"})
        text = schema.to_json()                 # a JSON string
        schema.to_json("robot_v1.json")         # and written to a file
        loaded = CanvasSchema.from_json("robot_v1.json")   # a path or a JSON string
        assert loaded == schema
    """

    layout: CanvasLayout
    topology: Optional[CanvasTopology] = None
    version: str = SCHEMA_VERSION
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """The constructor's checks; ``to_dict`` runs them again, since layout, topology and
        metadata may have been changed in place (a file that cannot be loaded back is refused)."""
        if not isinstance(self.layout, CanvasLayout):
            raise CanvasTypeError(f"CanvasSchema layout must be a CanvasLayout, got {type(self.layout).__name__}")
        if self.topology is not None:
            if not isinstance(self.topology, CanvasTopology):
                raise CanvasTypeError(
                    f"CanvasSchema topology must be a CanvasTopology or None, got {type(self.topology).__name__}"
                )
            self.topology.validate(self.layout)
        if not isinstance(self.version, str) or not self.version.strip():
            raise CanvasTypeError(
                f"CanvasSchema version must be a non-empty string such as {SCHEMA_VERSION!r}, got {self.version!r}"
            )
        if not isinstance(self.metadata, dict):
            raise CanvasTypeError(f"CanvasSchema metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SchemaError(
                f"CanvasSchema metadata must be JSON-serializable (strings, finite numbers, lists, dicts): {exc}"
            ) from None
        _check_metadata_keys(self.metadata)

    # --- dict form ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-compatible dict (defaults omitted, like canvas-engineering's files)."""
        self._check()
        lay = self.layout
        layout: Dict[str, Any] = {"T": lay.T, "spatial_shape": list(lay.spatial_shape), "d_model": lay.d_model,
                                  "t_current": lay.t_current}
        if lay.allow_overlap:
            layout["allow_overlap"] = True
        regions = {}
        for name in lay.region_names:  # checks a layout changed since it was built
            spec = lay.region_spec(name)
            d: Dict[str, Any] = {"bounds": list(spec.bounds)}
            for key, default in _REGION_DEFAULTS.items():
                value = getattr(spec, key)
                if value != default:
                    d[key] = list(value) if isinstance(value, tuple) else value
            regions[name] = d
        out: Dict[str, Any] = {"schema_version": self.version, "layout": layout, "regions": regions}
        if self.topology is not None:
            out["topology"] = [_connection_to_dict(c) for c in self.topology.connections]
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> "CanvasSchema":
        """Build from a dict (as produced by :meth:`to_dict` or by canvas-engineering)."""
        from pydantic import ValidationError

        from canvas_core.schema.fileformat import SchemaFile

        if not isinstance(d, dict):
            raise SchemaFormatError(f"a canvas schema must be a JSON object, got {json_type_name(d)}")
        # counted before the (slow) validation of every entry
        for key, name in (("regions", "regions"), ("topology", "connections")):
            if isinstance(d.get(key), (dict, list)):
                check_size(name, len(d[key]), f"the schema's {key!r}: number of {name}", f"Declare fewer {name}")
        try:
            model = SchemaFile.model_validate(d)
        except ValidationError as exc:
            raise SchemaFormatError(_describe_validation_error(exc)) from None
        except RecursionError:
            raise SchemaFormatError("schema is nested too deeply to be a canvas schema") from None
        major = model.schema_version.split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise SchemaFormatError(
                f"schema_version {model.schema_version!r} is not supported (this canvas-core reads "
                f"{SCHEMA_VERSION.split('.')[0]}.x files); upgrade canvas-core or convert the file")
        try:
            return _build(model)
        except CanvasError as exc:
            if isinstance(exc, (SchemaFormatError, SettingError)):
                raise  # already says what is wrong (a malformed variable is not the file's fault)
            raise SchemaFormatError(f"invalid schema: {exc}") from None

    # --- JSON ---------------------------------------------------------------------------------
    def to_json(self, path: Union[str, os.PathLike, None] = None, *, indent: Optional[int] = 2) -> str:
        """Serialize to a JSON string; also write it to ``path`` when given."""
        return dump_json(self.to_dict(), path, "the canvas schema", indent=indent)

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "CanvasSchema":
        """Load from a JSON file path or a JSON string (``path``, named as in canvas-engineering)."""
        source = path
        text, where = _read_source(source)
        # strict: a repeated key (a region or "T" written twice) is refused, not silently dropped
        data = loads_strict(text, where, on_decode_error=lambda exc: (
            " (the file looks truncated)" if exc.pos >= len(text.rstrip()) else ""))
        try:
            return cls.from_dict(data)
        except SchemaFormatError as exc:
            raise SchemaFormatError(f"{where}: {exc}") from None

    # --- identity ------------------------------------------------------------------------------
    def schema_hash(self) -> str:
        """Stable sha256 hex digest of the canonical JSON form (metadata excluded)."""
        d = self.to_dict()
        d.pop("metadata", None)
        canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    # --- semantics -----------------------------------------------------------------------------
    def compatible_regions(self, other: "CanvasSchema", threshold: float = 0.3) -> List[Tuple[str, str, float]]:
        """Region pairs ``(self_region, other_region, distance)`` with transfer distance <=
        ``threshold``, closest first. Only regions with embeddings from the same model count."""
        if not isinstance(other, CanvasSchema):
            raise CanvasTypeError(f"compatible_regions expects a CanvasSchema, got {type(other).__name__}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise CanvasTypeError(
                f"compatible_regions threshold must be a number (a cosine distance in [0, 2]), got {threshold!r}"
            )
        pairs = []
        ours, theirs = self.layout.region_names, other.layout.region_names  # (checked, if changed)
        for na, a in ((n, self.layout.region_spec(n)) for n in ours):
            for nb, b in ((n, other.layout.region_spec(n)) for n in theirs):
                if a.semantic_embedding is None or b.semantic_embedding is None:
                    continue
                if a.embedding_model != b.embedding_model or len(a.semantic_embedding) != len(b.semantic_embedding):
                    continue
                try:
                    dist = transfer_distance(a, b)
                except SchemaError:
                    continue
                if dist <= threshold:
                    pairs.append((na, nb, dist))
        pairs.sort(key=lambda p: (p[2], p[0], p[1]))
        return pairs

    def summary(self) -> str:
        parts = [self.layout.summary()]
        if self.topology is not None:
            parts.append(self.topology.summary())
        return "\n".join(parts)


def _check_metadata_keys(metadata: dict) -> None:
    """Refuse two keys of one metadata dict that JSON writes as the same string (``1`` and
    ``"1"``: the file would repeat a key and could not be read back).  A lone non-string key is
    accepted, as canvas-engineering accepts it; it comes back from the file as its JSON text.
    Only dicts and lists are visited, and the path is spelled out only for a clash (metadata may
    hold lists of millions of numbers)."""
    # each entry: (node, parent entry, key under the parent); None ends the chain
    stack: List[Tuple[Any, Any, Any]] = [(metadata, None, None)]
    while stack:
        entry = stack.pop()
        node = entry[0]
        if isinstance(node, dict):
            seen: Dict[str, Any] = {}
            for key, value in node.items():
                text = key if isinstance(key, str) else json.dumps({key: 0})[1:-4].strip('"')
                if text in seen:
                    raise SchemaError(
                        f"CanvasSchema {_metadata_path(entry)} has the keys {seen[text]!r} and {key!r}, which JSON "
                        f"writes as the same string {text!r}: the saved file would repeat a key and could not be "
                        "loaded; rename one")
                seen[text] = key
                if isinstance(value, (dict, list, tuple)):
                    stack.append((value, entry, key))
        elif any(issubclass(t, (dict, list, tuple)) for t in set(map(type, node))):  # (a C-speed scan first)
            stack.extend((value, entry, i) for i, value in enumerate(node) if isinstance(value, (dict, list, tuple)))


def _metadata_path(entry: Tuple[Any, Any, Any]) -> str:
    keys = []
    while entry[1] is not None:
        keys.append(entry[2])
        entry = entry[1]
    return "metadata" + "".join(f"[{k!r}]" for k in reversed(keys))


def _connection_to_dict(c: Connection) -> Dict[str, Any]:
    d: Dict[str, Any] = {"src": c.src, "dst": c.dst}
    for key, default in _CONN_DEFAULTS.items():
        value = getattr(c, key)
        if value == default:
            continue
        if key == "temporal_fill":
            value = value.value
        elif key == "mask":
            value = value.to_dict()
        d[key] = value
    return d


def _build(model) -> CanvasSchema:
    lay = model.layout
    spatial = tuple(lay.spatial_shape) if lay.spatial_shape is not None else ()
    regions = {}
    for name, r in model.regions.items():
        kw = r.model_dump()
        kw["bounds"] = tuple(kw["bounds"])
        if kw["semantic_embedding"] is not None:
            kw["semantic_embedding"] = tuple(
                as_float(x, f"regions.{name}.semantic_embedding[{i}]") for i, x in enumerate(kw["semantic_embedding"]))
        kw["loss_weight"] = as_float(kw["loss_weight"], f"regions.{name}.loss_weight")
        try:
            regions[name] = RegionSpec(**kw)
        except (SchemaError, CanvasTypeError) as exc:  # name the region, as the key checks above do
            raise type(exc)(f"regions.{name}: {exc}") from None
    layout = CanvasLayout(
        T=lay.T, d_model=lay.d_model, spatial_shape=spatial, regions=regions,
        t_current=lay.t_current, H=lay.H, W=lay.W, allow_overlap=lay.allow_overlap,
    )
    topology = None
    if model.topology is not None:
        conns = []
        for i, c in enumerate(model.topology):
            kw = c.model_dump()
            kw["weight"] = as_float(kw["weight"], f"topology[{i}] ({c.src} -> {c.dst}): weight")
            try:
                kw["temporal_fill"] = TemporalFill(kw["temporal_fill"])
            except ValueError:
                raise SchemaFormatError(
                    f"topology[{i}] ({c.src} -> {c.dst}): temporal_fill must be one of "
                    f"{[f.value for f in TemporalFill]}, got {kw['temporal_fill']!r}"
                ) from None
            if kw["mask"] is not None:
                from canvas_core.schema.masks import MaskSpec

                try:
                    kw["mask"] = MaskSpec.from_dict(kw["mask"])
                except CanvasError as exc:
                    raise SchemaFormatError(f"topology[{i}] ({c.src} -> {c.dst}): mask: {exc}") from None
            conns.append(Connection(**kw))
        topology = CanvasTopology(conns)
    return CanvasSchema(layout=layout, topology=topology, version=model.schema_version,
                        metadata=dict(model.metadata))


def _read_source(source: Any) -> Tuple[str, str]:
    return read_json_source(
        source, "schema", empty="give a schema file path or a JSON string",
        nul=lambda _: "from_json got a string with a NUL byte: neither a file path nor JSON", missing=_scalar_hint)


def _scalar_hint(source: Any) -> str:
    """For a string that is a JSON scalar (``5``, ``null``, ``"abc"``) rather than a path."""
    if not isinstance(source, str):
        return ""
    try:
        value = json.loads(source)
    except (ValueError, RecursionError):
        return ""
    return (f" (as JSON it is a {json_type_name(value)}, but a canvas schema must be a JSON object "
            "{\"layout\": ..., \"regions\": ...})")


def _describe_validation_error(exc) -> str:
    from canvas_core.schema.fileformat import CHOICES

    lines = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            msg = "unknown key; remove it or fix its spelling"
        elif kind == "value_error":  # raised by a check of ours, already worded with the value
            msg = str(err.get("ctx", {}).get("error", err.get("msg", "invalid value")))
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = err.get("msg", "invalid value")
            if "input" in err and kind not in ("missing",):
                inp = repr(err["input"])
                msg += f" (got {inp[:60]}{'...' if len(inp) > 60 else ''})"
            choices = CHOICES.get(str(loc.rsplit(".", 1)[-1]))
            if kind in ("literal_error", "string_pattern_mismatch") and choices and isinstance(err.get("input"), str):
                msg += did_you_mean(err["input"], sorted(choices))
        lines.append(f"{loc}: {msg}")
    more = len(exc.errors()) - len(lines)
    if more > 0:
        lines.append(f"... and {more} more problem(s)")
    return "invalid canvas schema: " + "; ".join(lines)

"""`BoundSchema` / `BoundField`: a compiled type hierarchy with access to its fields by path
(``bound["agents[0].thought"]``) or attribute (``bound.agents[0].thought``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

from canvas_core.errors import CanvasTypeError, ProgramError, did_you_mean
from canvas_core.schema._validate import is_int
from canvas_core.schema.region import RegionSpec
from canvas_core.schema.schema import CanvasSchema

if TYPE_CHECKING:  # pragma: no cover
    from canvas_core.schema.layout import CanvasLayout
    from canvas_core.schema.topology import CanvasTopology

__all__ = ["BoundField", "BoundSchema", "BoundList", "UnknownFieldError"]


class UnknownFieldError(ProgramError, KeyError, AttributeError):
    """A field path the compiled schema does not have (also a KeyError and an AttributeError,
    so ``bound[...]`` and ``getattr`` behave like a dict and an object)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Navigable:
    """Attribute / index navigation below a path prefix."""

    _bound: "BoundSchema"
    _prefix: str

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._bound._lookup(f"{self._prefix}.{name}" if self._prefix else name)

    def __dir__(self) -> List[str]:
        return sorted(set(super().__dir__()) | set(self._bound._children(self._prefix)))


class BoundField(_Navigable):
    """A ``Field`` bound to its compiled canvas region.

    ``bound_field.child`` / ``bound_field[i]`` navigate into nested fields of a nested object
    whose coarse-grained region this is. ``place``/``extract`` need torch (imported lazily).
    """

    def __init__(self, region_name: str, spec: RegionSpec, bound_schema: "BoundSchema"):
        self.region_name = region_name
        self.bound_schema = bound_schema
        self._bound = bound_schema
        self._prefix = region_name
        self._spec = spec
        # the compiled spec (the layout's own region) follows the layout; another one was given on purpose
        self._follows = spec == bound_schema.layout.regions.get(region_name)

    @property
    def name(self) -> str:
        return self.region_name

    @property
    def spec(self) -> RegionSpec:
        """The region's ``RegionSpec``: the one given explicitly (assigned, or passed in unlike the
        layout's) if any; else the layout's now (it follows ``bound.layout.regions[...] =`` as
        ``indices()`` does), or the compiled one for a name the layout no longer has."""
        layout = self.bound_schema.layout
        follows = self.__dict__.get("_follows")
        if follows is None:  # pickled by an older version: a plain "spec" that differs was set by hand
            follows = "_spec" in self.__dict__ or self._given() == layout.regions.get(self.region_name)
        if follows and self.region_name in layout.regions:
            return layout.region_spec(self.region_name)
        return self._given()

    @spec.setter
    def spec(self, value: RegionSpec) -> None:
        """Set this field's spec explicitly (as in canvas-engineering); it no longer follows the layout."""
        if not isinstance(value, RegionSpec):
            raise CanvasTypeError(f"BoundField {self.region_name!r}: spec must be a RegionSpec, got "
                                  f"{type(value).__name__} {value!r:.80}; write RegionSpec(bounds=(...))")
        self._spec, self._follows = value, False

    def _given(self) -> RegionSpec:
        return getattr(self, "_spec", self.__dict__.get("spec"))  # "spec": pickled by an older version

    @property
    def num_positions(self) -> int:
        """Total positions of this region (all frames): of :attr:`spec`, as canvas-engineering counts."""
        return self.spec.numel

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "spec": self._given()}  # "spec": what older versions read

    def indices(self) -> List[int]:
        """Canonical flat indices of this region, ascending."""
        return self.bound_schema.layout.region_indices(self.region_name)

    def place(self, batch: Any, embeddings: Any, canvas: Any = None) -> Any:
        """Write ``embeddings`` ``(B, n_positions, D)`` into this region of ``batch`` ``(B, N, D)``."""
        return self.bound_schema._canvas_for(canvas).place(batch, embeddings, self.region_name)

    def extract(self, batch: Any, canvas: Any = None) -> Any:
        """Read this region of ``batch`` ``(B, N, D)`` as ``(B, n_positions, D)``."""
        return self.bound_schema._canvas_for(canvas).extract(batch, self.region_name)

    def __getitem__(self, index: Any) -> Any:
        return self._bound._lookup(f"{self._prefix}[{index}]")

    def __repr__(self) -> str:
        from canvas_core._reprs import bound_field_repr  # canvas-engineering's text

        return bound_field_repr(self)


class BoundList(_Navigable):
    """The elements of a list of nested objects: ``bound.agents[0]``, ``len(bound.agents)``."""

    def __init__(self, bound: "BoundSchema", prefix: str, length: int):
        self._bound = bound
        self._prefix = prefix
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if not is_int(index):
            raise CanvasTypeError(f"{self._prefix}[...] takes an integer index, got {index!r}")
        index = int(index)
        i = index + self._length if index < 0 else index
        if not 0 <= i < self._length:
            raise UnknownFieldError(f"{self._prefix}[{index}]: index out of range (the list has {self._length} elements)")
        return self._bound._lookup(f"{self._prefix}[{i}]")

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(self._length))

    def __repr__(self) -> str:
        return f"BoundList({self._prefix!r}, {self._length} elements)"


class BoundSchema(_Navigable):
    """The result of ``compile_schema``: the user's object tree, each field now tied to its
    region of a ``CanvasSchema``.

    Example::

        bound = compile_schema(robot, T=8, d_model=256)
        bound["camera"], bound.camera                    # the same BoundField
        bound["agents[1].thought"], bound.agents[1].thought
        canvas = bound.build_canvas()                    # torch from here on
        batch = bound.create_batch(4)
        bound["camera"].place(batch, camera_embs)
    """

    def __init__(self, schema: CanvasSchema, region_specs: Dict[str, RegionSpec]):
        if not isinstance(schema, CanvasSchema):
            raise CanvasTypeError(f"BoundSchema needs a CanvasSchema, got {type(schema).__name__}")
        self.schema = schema
        self._bound = self
        self._prefix = ""
        self._fields = {name: BoundField(name, spec, self) for name, spec in dict(region_specs).items()}
        self._list_len: Dict[str, int] = {}  # "agents" -> number of elements
        for name in self._fields:
            for m in re.finditer(r"\[(\d+)\]", name):
                head = name[:m.start()]
                self._list_len[head] = max(self._list_len.get(head, 0), int(m.group(1)) + 1)
        self.canvas: Any = None

    # --- structure ---------------------------------------------------------------------------
    @property
    def layout(self) -> "CanvasLayout":
        return self.schema.layout

    @property
    def topology(self) -> Optional["CanvasTopology"]:
        return self.schema.topology

    @property
    def region_specs(self) -> Dict[str, RegionSpec]:
        """Field path -> its ``RegionSpec`` in the layout now."""
        return {name: f.spec for name, f in self._fields.items()}

    def __getstate__(self) -> Dict[str, Any]:  # "region_specs": what older versions read
        return {**self.__dict__, "region_specs": {name: f._given() for name, f in self._fields.items()}}

    @property
    def fields(self) -> Dict[str, BoundField]:
        return dict(self._fields)

    @property
    def field_names(self) -> List[str]:
        return list(self._fields)

    def __getitem__(self, path: str) -> BoundField:
        if path in self:
            return self._fields[path]
        raise UnknownFieldError(
            f"no field {path!r} in the compiled schema.{did_you_mean(path, self._fields)} "
            f"Fields: {list(self._fields)}"
        )

    def __contains__(self, path: object) -> bool:
        try:
            return path in self._fields
        except TypeError:  # unhashable: no field path
            raise CanvasTypeError(f"a compiled schema is indexed by a field path such as 'camera' or "
                                  f"'agents[1].thought', got {type(path).__name__} {path!r:.60}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def _lookup(self, path: str) -> Any:
        if path in self._fields:
            return self._fields[path]
        n = self._list_len.get(path, 0)
        if n:
            return BoundList(self, path, n)
        return self[path]

    def _children(self, prefix: str) -> List[str]:
        out = []
        start = f"{prefix}." if prefix else ""
        for k in self._fields:
            if k.startswith(start) and k != prefix:
                rest = k[len(start):]
                out.append(rest.split(".")[0].split("[")[0])
        return out

    # --- torch objects (thin delegates to canvas_core.runtime.delegates; see its docstring) -----
    def build_canvas(self, semantic_conditioner: Any = None) -> Any:
        """Create (and keep) a ``SpatiotemporalCanvas`` for this schema."""
        from canvas_core.runtime.delegates import bound_schema_canvas

        self.canvas = bound_schema_canvas(self, semantic_conditioner)
        return self.canvas

    def _canvas_for(self, canvas: Any) -> Any:
        if canvas is not None:
            return canvas
        if self.canvas is None:
            self.build_canvas()
        return self.canvas

    def create_batch(self, batch_size: int) -> Any:
        """An empty canvas batch ``(batch_size, N, d_model)``; builds the canvas if needed."""
        return self._canvas_for(None).create_empty(batch_size)

    def build_semantic_conditioner(self, embed_fn: Any, embed_dim: Optional[int] = None,
                                   freeze_embeddings: bool = True, learn_residuals: bool = True) -> Any:
        """A ``SemanticConditioner`` from the fields' semantic types embedded by ``embed_fn``
        (``list[str] -> list[list[float]]``). ``embed_dim`` defaults to the embeddings' length
        (384 for the MiniLM embedder of canvas-plugin-semantic)."""
        from canvas_core.runtime.delegates import bound_schema_semantic_conditioner

        return bound_schema_semantic_conditioner(self, embed_fn, embed_dim, freeze_embeddings,
                                                 learn_residuals)

    def summary(self) -> str:
        """One line per field: its name, box and number of positions (canvas-engineering's text)."""
        lay = self.layout
        lines = [f"BoundSchema ({len(self._fields)} fields, {lay.num_positions} positions):"]
        for name, spec in self.region_specs.items():
            b = spec.bounds
            box = ", ".join([f"t={b[0]}-{b[1]}"] + [f"{b[k]}-{b[k + 1]}" for k in range(2, len(b), 2)])
            lines.append(f"  {name} -> ({box}) {spec.numel}pos")
        if self.topology is not None:
            lines.append(f"  {len(self.topology.connections)} connections")
        return "\n".join(lines)

    def __repr__(self) -> str:
        from canvas_core._reprs import bound_repr  # canvas-engineering's text

        return bound_repr(self)

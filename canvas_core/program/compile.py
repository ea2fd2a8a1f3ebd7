"""`compile_schema` and `compile_program`: an object tree of ``Field``s -> layout, topology, program.

Steps: walk the tree (dataclasses, pydantic models or plain objects; nested objects and lists
of them) into region paths; shelf-pack the regions onto a ``(T, *spatial)`` grid; generate
connections from the ``ConnectivityPolicy``; for ``compile_program`` put operators on
connections between fields of declared families and build the ``CanvasProgram``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional, Tuple, Union

from canvas_core.errors import CanvasError, CanvasTypeError, ProgramError
from canvas_core.program._check import pos_int
from canvas_core.program.bound import BoundSchema
from canvas_core.program.canvas_program import CanvasProgram
from canvas_core.program.constants import DEFAULT_WIRING, TEMPORAL_OPERATORS
from canvas_core.program.fields import ConnectivityPolicy, Field, LayoutStrategy
from canvas_core.program.packing import auto_canvas_width, shelf_pack
from canvas_core.program.specs import RegionProgram
from canvas_core.schema._validate import is_int
from canvas_core.schema.layout import CanvasLayout
from canvas_core.schema.region import RegionSpec
from canvas_core.schema.schema import CanvasSchema
from canvas_core.schema.topology import CanvasTopology, Connection

__all__ = ["compile_schema", "compile_program", "wire_operator", "semantic_type_of"]

_RESERVED = re.compile(r"[.\[\]]")


# --- the object tree ---------------------------------------------------------------------------
@dataclass
class _Node:
    path: str                                    # "" for the root
    leaves: List[str] = dc_field(default_factory=list)
    children: List["_Child"] = dc_field(default_factory=list)

    def has_fields(self) -> bool:
        return bool(self.leaves) or any(c.elements for c in self.children)


@dataclass
class _Child:
    is_list: bool
    elements: List[Tuple[str, Field, _Node]]     # (coarse path, coarse field, subtree)


class _Walker:
    def __init__(self) -> None:
        self.fields: Dict[str, Field] = {}       # leaf path -> Field (coarse ones added later)

    def leaf(self, path: str, f: Field, owner: str) -> None:
        if path in self.fields:
            raise ProgramError(f"{owner}: two fields compile to the same region name {path!r}; rename one of them")
        self.fields[path] = f

    def walk(self, obj: Any, prefix: str, stack: Tuple[int, ...]) -> _Node:
        if id(obj) in stack:
            raise ProgramError(
                f"the object tree refers back to itself at {prefix.rstrip('.') or 'the root'!r} "
                f"({type(obj).__name__}); a canvas type must be a tree, not a cycle"
            )
        stack = stack + (id(obj),)
        node = _Node(prefix.rstrip("."))
        owner = type(obj).__name__
        attrs = _attributes(obj)
        for name, value, _meta in attrs:
            if isinstance(value, Field):
                self.leaf(f"{prefix}{name}", value, owner)
                node.leaves.append(f"{prefix}{name}")
            elif _is_sequence(value):
                _check_mixed_list(f"{prefix}{name}", value, owner)
                for i, v in enumerate(value):
                    if isinstance(v, Field):
                        self.leaf(f"{prefix}{name}[{i}]", v, owner)
                        node.leaves.append(f"{prefix}{name}[{i}]")
        # Nested objects first, then lists of objects (each in declaration order), as in
        # canvas-engineering: this fixes the region order, hence placement and connection order.
        for name, value, meta in attrs:
            if not isinstance(value, Field) and not _is_sequence(value) and _is_composite(value):
                path = f"{prefix}{name}"
                sub = self.walk(value, path + ".", stack)
                if sub.has_fields():
                    node.children.append(_Child(False, [(path, self.coarse(value, meta, path, sub), sub)]))
        for name, value, meta in attrs:
            if _is_sequence(value):
                elements = []
                for i, v in enumerate(value):
                    if _is_composite(v):
                        path = f"{prefix}{name}[{i}]"
                        sub = self.walk(v, path + ".", stack)
                        if sub.has_fields():
                            elements.append((path, self.coarse(v, meta, path, sub), sub))
                if elements:
                    node.children.append(_Child(True, elements))
        return node

    def coarse(self, value: Any, meta: dict, path: str, sub: "_Node") -> Field:
        """The coarse-grained field of a nested object. Its period, unless the template sets one
        (!= 1), is the mean period of all fields below it (nested coarse ones included) weighted by
        ``h * w``, rounded (canvas-engineering's rule: the summary follows the dominant
        timescale of the subtree)."""
        c = _coarse_field(value, meta, path)
        if c.period != 1:
            return c
        members: List[Field] = []
        todo = [sub]
        while todo:
            n = todo.pop()
            members += [self.fields[leaf] for leaf in n.leaves]
            for child in n.children:
                for _, f, s in child.elements:
                    members.append(f)
                    todo.append(s)
        total = sum(f.h * f.w for f in members)
        if not total:
            return c
        period = max(1, round(sum(f.period * f.h * f.w for f in members) / total))
        return c if period == 1 else dataclasses.replace(c, period=period)


def _check_mixed_list(path: str, value: Any, owner: str) -> None:
    """A list holding Fields / nested objects must hold nothing else (it would be silently dropped)."""
    kinds = [isinstance(v, Field) or _is_composite(v) for v in value]
    if any(kinds) and not all(kinds):
        i = kinds.index(False)
        raise ProgramError(
            f"{owner}: {path}[{i}] is {value[i]!r} ({type(value[i]).__name__}), but the other elements of "
            f"{path!r} are Fields / nested objects; a list of canvas fields can hold only Fields or "
            "objects with Fields. Remove that element or move it to a separate attribute"
        )


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and not isinstance(value, Field)


def _is_pydantic(value: Any) -> bool:
    return not isinstance(value, type) and hasattr(type(value), "model_fields") and hasattr(value, "model_dump")


def _is_composite(value: Any) -> bool:
    if value is None or isinstance(value, (type, Field, str, bytes, int, float, bool, dict, set, frozenset)):
        return False
    if dataclasses.is_dataclass(value) or _is_pydantic(value):
        return True
    return any(isinstance(v, Field) or _is_composite_shallow(v) for _, v, _ in _plain_attributes(value))


def _is_composite_shallow(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type) or _is_pydantic(value)


def _plain_attributes(obj: Any) -> List[Tuple[str, Any, dict]]:
    out: List[Tuple[str, Any, dict]] = []
    seen = set()
    inst = getattr(obj, "__dict__", None)
    if isinstance(inst, dict):
        for k, v in inst.items():
            if not k.startswith("__"):
                out.append((k, v, {}))
                seen.add(k)
    for klass in reversed(type(obj).__mro__):
        for k, v in vars(klass).items():
            if k in seen or k.startswith("__"):
                continue
            if isinstance(v, Field):
                out.append((k, v, {}))
                seen.add(k)
    return out


def _attributes(obj: Any) -> List[Tuple[str, Any, dict]]:
    if dataclasses.is_dataclass(obj):
        items = [(f.name, getattr(obj, f.name, None), dict(f.metadata)) for f in dataclasses.fields(obj)]
    elif _is_pydantic(obj):
        items = [(n, getattr(obj, n, None), {}) for n in type(obj).model_fields]
    else:
        items = _plain_attributes(obj)
    for name, _, _ in items:
        if not isinstance(name, str) or _RESERVED.search(name):
            raise ProgramError(
                f"{type(obj).__name__}: attribute name {name!r} contains '.', '[' or ']', which separate "
                "nested field paths; rename it"
            )
    return items


def _coarse_field(value: Any, meta: dict, path: str) -> Field:
    c = meta.get("coarse") if meta else None
    if c is None:
        c = getattr(type(value), "__coarse__", None)
    if c is None:
        return Field(spatial_shape=(1,))  # one position; padded to the canvas's dimensions
    if not isinstance(c, Field):
        raise CanvasTypeError(f"coarse-grained field of {path!r} must be a Field, got {c!r}")
    return c


# --- naming ------------------------------------------------------------------------------------
def semantic_type_of(path: str) -> str:
    """Readable modality description from a field path: ``"agents[0].joint_pos"`` ->
    ``"agents 0 / joint pos"``."""
    parts = []
    for part in path.split("."):
        part = re.sub(r"\[(\d+)\]", r" \1", part).replace("_", " ")
        parts.append(" ".join(part.split()))
    return " / ".join(parts)


# --- connectivity ------------------------------------------------------------------------------
class _Edges:
    def __init__(self, temporal: str) -> None:
        self.temporal = temporal
        self.out: List[Tuple[str, str, Optional[int], Optional[int]]] = []
        self._seen = set()

    def add(self, src: str, dst: str) -> None:
        if self.temporal == "dense":
            offs = [(None, None)]
        elif self.temporal == "same_frame":
            offs = [(0, 0)]
        else:  # causal
            offs = [(0, 0), (0, -1)] if src == dst else [(0, -1)]
        for ts, td in offs:
            key = (src, dst, ts, td)
            if key not in self._seen:
                self._seen.add(key)
                self.out.append(key)


def _intra(e: _Edges, leaves: List[str], policy: str) -> None:
    if policy == "dense":
        for a in leaves:
            for b in leaves:
                e.add(a, b)
    elif policy == "isolated":
        for a in leaves:
            e.add(a, a)
    elif policy == "causal_chain":
        for a in leaves:
            e.add(a, a)
        for i in range(1, len(leaves)):
            e.add(leaves[i], leaves[i - 1])
    elif policy == "star" and leaves:
        hub = leaves[0]
        e.add(hub, hub)
        for o in leaves[1:]:
            e.add(o, o)
            e.add(hub, o)
            e.add(o, hub)


def _array(e: _Edges, child: _Child, policy: str) -> None:
    cs = [p for p, _, _ in child.elements]
    n = len(cs)
    if policy in ("dense", "matched_fields"):
        for a in cs:
            for b in cs:
                if a != b:
                    e.add(a, b)
    if policy == "matched_fields":
        rel = [{leaf[len(p) + 1:]: leaf for leaf in sub.leaves} for p, _, sub in child.elements]
        for i in range(n):
            for j in range(n):
                if i != j:
                    for r, leaf in rel[i].items():
                        if r in rel[j]:
                            e.add(leaf, rel[j][r])
    elif policy == "ring" and n > 1:
        for i in range(n):
            j = (i + 1) % n
            e.add(cs[i], cs[j])
            e.add(cs[j], cs[i])


def _connect(e: _Edges, node: _Node, policy: ConnectivityPolicy) -> None:
    _intra(e, node.leaves, policy.intra)
    for child in node.children:
        for coarse, _, sub in child.elements:
            e.add(coarse, coarse)
            _connect(e, sub, policy)
            for leaf in sub.leaves:
                e.add(coarse, leaf)
                e.add(leaf, coarse)
            for pl in node.leaves:
                e.add(pl, coarse)
                e.add(coarse, pl)
        if child.is_list:
            _array(e, child, policy.array_element)


def wire_operator(src_family: Optional[str], dst_family: Optional[str],
                  t_src: Optional[int] = None, t_dst: Optional[int] = None) -> str:
    """The operator auto-wiring puts on a connection between fields of the given *declared*
    families (None = not declared): ``DEFAULT_WIRING[(src, dst)]``, ``"attend"`` when either
    family is undeclared or the pair is not in the table, and ``"attend"`` for the temporal
    operators (integrate, intervene) unless the connection crosses frames (``t_src`` and
    ``t_dst`` both set and different)."""
    if src_family is None or dst_family is None:
        return "attend"
    op = DEFAULT_WIRING.get((src_family, dst_family), "attend")
    if op in TEMPORAL_OPERATORS and (t_src is None or t_dst is None or t_src == t_dst):
        return "attend"
    return op


# --- layout ------------------------------------------------------------------------------------
def _resolve_canvas(spatial_shape: Any, H: Any, W: Any) -> Optional[Tuple[int, ...]]:
    where = "compile_schema"
    shape = None
    if spatial_shape is not None:
        if isinstance(spatial_shape, (str, bytes)) or not hasattr(spatial_shape, "__iter__"):
            raise CanvasTypeError(f"{where}: spatial_shape must be a tuple of ints or None, got {spatial_shape!r}")
        shape = tuple(pos_int(s, where, "every spatial_shape entry") for s in spatial_shape)
        if not shape:
            raise ProgramError(f"{where}: spatial_shape=() has no spatial axis; use None to size the canvas automatically")
    if H is not None or W is not None:
        if H is None or W is None:
            raise ProgramError(f"{where}: give both H and W, or use spatial_shape=(H, W)")
        hw = (pos_int(H, where, "H"), pos_int(W, where, "W"))
        if shape is not None and shape != hw:
            raise ProgramError(f"{where}: H={hw[0]}, W={hw[1]} disagree with spatial_shape={shape}; give one of them")
        shape = hw
    return shape


def _fit_shape(path: str, f: Field, ndim: int) -> Tuple[int, ...]:
    shape = f.shape
    if len(shape) < ndim:
        return shape + (1,) * (ndim - len(shape))
    if len(shape) > ndim:
        if any(s != 1 for s in shape[ndim:]):
            raise ProgramError(
                f"field {path!r} has shape {shape} ({len(shape)} spatial dims) but the canvas has {ndim}; "
                f"give the canvas {len(shape)} dims (spatial_shape) or reshape the field"
            )
        return shape[:ndim]
    return shape


def _axis_name(k: int, ndim: int) -> str:
    return ("H", "W")[k] if ndim == 2 else f"spatial_shape[{k}]"


def _placement_order(names: List[str], strategy: LayoutStrategy) -> List[int]:
    if strategy is LayoutStrategy.PACKED:
        return list(range(len(names)))
    groups: Dict[str, List[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(re.sub(r"\[\d+\]", "[]", n), []).append(i)
    return [i for g in groups.values() for i in g]


def _layout(regions: Dict[str, Field], T: int, d_model: int, canvas: Optional[Tuple[int, ...]],
            strategy: LayoutStrategy, t_current: int, coarse: set) -> CanvasLayout:
    names = list(regions)
    ndim = len(canvas) if canvas is not None else max(len(f.shape) for f in regions.values())
    extents = [_fit_shape(n, regions[n], ndim) for n in names]
    order = _placement_order(names, strategy)
    if canvas is None:
        size: List[Optional[int]] = [None, *auto_canvas_width(extents)]
    else:
        size = list(canvas)
        for n, ext in zip(names, extents):
            for k in range(ndim):
                if ext[k] > canvas[k]:
                    raise ProgramError(
                        f"field {n!r} is {ext[k]} positions along {_axis_name(k, ndim)} but the canvas has "
                        f"{canvas[k]} there; grow the canvas or pass spatial_shape=None to size it automatically"
                    )
    packed = shelf_pack([extents[i] for i in order], size)
    if packed is None:
        need = sum(math.prod(e) for e in extents)
        have = math.prod(canvas)
        raise ProgramError(
            f"the {len(names)} fields ({need} positions per frame) do not fit on the canvas "
            f"spatial_shape={canvas} ({have} per frame) with shelf packing; grow the canvas or pass "
            "spatial_shape=None to size it automatically"
        )
    offsets_in_order, used = packed
    offsets: Dict[int, Tuple[int, ...]] = dict(zip(order, offsets_in_order))
    spatial = tuple(used) if canvas is None else canvas
    specs: Dict[str, RegionSpec] = {}
    for i, n in enumerate(names):
        f = regions[n]
        t1 = T
        if f.temporal_extent is not None:
            if f.temporal_extent > T:
                raise ProgramError(
                    f"field {n!r}: temporal_extent={f.temporal_extent} exceeds the canvas T={T}; "
                    "lower it, raise T, or use None to span all frames"
                )
            t1 = f.temporal_extent
        bounds: List[int] = [0, t1]
        for k in range(ndim):
            bounds += [offsets[i][k], offsets[i][k] + extents[i][k]]
        specs[n] = RegionSpec(
            bounds=tuple(bounds), period=f.period, is_output=f.is_output, loss_weight=f.loss_weight,
            semantic_type=f.semantic_type or (f"coarse: {n}" if n in coarse else semantic_type_of(n)),
            default_attn=f.attn,
            carrier=f.carrier or "deterministic", family=f.family,
        )
    return CanvasLayout(T=T, d_model=d_model, spatial_shape=spatial, regions=specs, t_current=t_current)


# --- entry points ------------------------------------------------------------------------------
def _tree(root: Any) -> Tuple[Dict[str, Field], _Node, set]:
    if isinstance(root, type):
        raise ProgramError(
            f"compile_schema/compile_program got the class {root.__name__}, not an instance; pass {root.__name__}()"
        )
    if root is None or isinstance(root, (Field, str, bytes, int, float, bool, list, tuple, dict, set)):
        raise ProgramError(
            f"compile_schema/compile_program expects a dataclass (or pydantic model / object) instance "
            f"whose attributes are Fields, got {type(root).__name__} {root!r:.60}"
        )
    w = _Walker()
    node = w.walk(root, "", ())
    if not node.has_fields():
        raise ProgramError(
            f"no Field attributes found in {type(root).__name__}; declare at least one, e.g. "
            "`camera: Field = Field(4, 4)` on a @dataclass"
        )
    # final region order: leaves of a node, then each child's coarse region and subtree
    ordered: Dict[str, Field] = {}
    coarse_names: set = set()

    def emit(n: _Node) -> None:
        for leaf in n.leaves:
            ordered[leaf] = w.fields[leaf]
        for child in n.children:
            for path, coarse, sub in child.elements:
                if path in ordered or path in w.fields:
                    raise ProgramError(f"two fields compile to the same region name {path!r}; rename one of them")
                ordered[path] = coarse
                coarse_names.add(path)
                emit(sub)

    emit(node)
    return ordered, node, coarse_names


def _as_strategy(value: Any) -> LayoutStrategy:
    if isinstance(value, LayoutStrategy):
        return value
    try:
        return LayoutStrategy(value)
    except ValueError:
        raise ProgramError(
            f"unknown layout_strategy {value!r}; use one of {[s.value for s in LayoutStrategy]}"
        ) from None


def _compile(root: Any, T: int, spatial_shape: Any, d_model: int, connectivity: Any,
             layout_strategy: Any, t_current: int, H: Any, W: Any, wire: bool):
    T = pos_int(T, "compile_schema", "T", "T is the number of canvas frames.")
    d_model = pos_int(d_model, "compile_schema", "d_model")
    if not is_int(t_current):
        raise CanvasTypeError(f"compile_schema: t_current must be an integer, got {t_current!r}")
    policy = connectivity if connectivity is not None else ConnectivityPolicy()
    if not isinstance(policy, ConnectivityPolicy):
        raise CanvasTypeError(f"compile_schema: connectivity must be a ConnectivityPolicy or None, got {policy!r}")
    policy.__post_init__()  # re-check: the policy is mutable, like canvas-engineering's
    strategy = _as_strategy(layout_strategy)
    canvas = _resolve_canvas(spatial_shape, H, W)
    regions, tree, coarse = _tree(root)
    layout = _layout(regions, T, d_model, canvas, strategy, t_current, coarse)
    edges = _Edges(policy.temporal)
    _connect(edges, tree, policy)
    conns = []
    for src, dst, ts, td in edges.out:
        op = wire_operator(regions[src].family, regions[dst].family, ts, td) if wire else "attend"
        conns.append(Connection(src=src, dst=dst, t_src=ts, t_dst=td, operator=op))
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(conns))
    return BoundSchema(schema, layout.regions), regions


def compile_schema(
    root: Any,
    T: int = 1,
    spatial_shape: Optional[Tuple[int, ...]] = None,
    d_model: int = 64,
    connectivity: Optional[ConnectivityPolicy] = None,
    layout_strategy: Union[str, LayoutStrategy] = LayoutStrategy.PACKED,
    t_current: int = 0,
    H: Optional[int] = None,
    W: Optional[int] = None,
) -> BoundSchema:
    """Compile an object hierarchy of ``Field``s into a ``BoundSchema``.

    Walks ``root`` (a dataclass, pydantic model or plain object instance; nested objects and lists
    of them), packs every field onto a ``(T, *spatial_shape)`` grid, connects the fields by the
    ``ConnectivityPolicy`` and returns the bound schema. Every connection's operator is
    ``"attend"``; :func:`compile_program` adds operators and the program layer.

    Args:
        root: Object with ``Field`` attributes.
        T: Frames of the canvas.
        spatial_shape: Spatial grid, e.g. ``(16, 16)``; None = sized automatically from the
            fields (shelf packing on a roughly square canvas, trimmed to what is used).
        d_model: Width of every position's vector.
        connectivity: Connectivity policy (default ``ConnectivityPolicy()``).
        layout_strategy: ``"packed"`` (declaration order) or ``"interleaved"``.
        t_current: Frames ``t >= t_current`` are outputs.
        H, W: 2-d shorthand for ``spatial_shape=(H, W)``.

    Raises:
        ProgramError: bad input (no fields, a field that does not fit, unknown strategy, ...).
    """
    bound, _ = _compile(root, T, spatial_shape, d_model, connectivity, layout_strategy, t_current, H, W, wire=False)
    return bound


def compile_program(
    root: Any,
    T: int = 1,
    spatial_shape: Optional[Tuple[int, ...]] = None,
    d_model: int = 64,
    connectivity: Optional[ConnectivityPolicy] = None,
    layout_strategy: Union[str, LayoutStrategy] = LayoutStrategy.PACKED,
    t_current: int = 0,
    H: Optional[int] = None,
    W: Optional[int] = None,
) -> Tuple[BoundSchema, CanvasProgram]:
    """Compile an object hierarchy into ``(BoundSchema, CanvasProgram)``.

    Same layout and connections as :func:`compile_schema`; in addition every connection
    between two fields whose ``family`` was declared gets its operator from the family pair
    (see ``docs/programs.md``), and every region gets a ``RegionProgram`` from its field's
    family, tags, carrier, clock, learning, compile_mode, constraints and identity.

    Example::

        @dataclass
        class Robot:
            camera: Field = Field(6, 6, family="observation")
            belief: Field = Field(4, 4, family="state", tags=("belief",))
            action: Field = Field(1, 4, family="action", loss_weight=2.0)

        bound, program = compile_program(Robot(), T=8, d_model=256)
    """
    bound, regions = _compile(root, T, spatial_shape, d_model, connectivity, layout_strategy, t_current, H, W, wire=True)
    programs = {}
    for name, f in regions.items():
        kw: Dict[str, Any] = {"tags": f.tags}
        if f.family is not None:
            kw["family"] = f.family
        if f.carrier is not None:
            kw["carrier"] = f.carrier
        if f.compile_mode is not None:
            kw["compile_mode"] = f.compile_mode
        for key in ("clock", "learning", "constraints", "identity"):
            if getattr(f, key) is not None:
                kw[key] = getattr(f, key)
        try:
            programs[name] = RegionProgram(**kw)
        except CanvasError as exc:
            raise ProgramError(f"field {name!r}: {exc}") from None
    return bound, CanvasProgram(schema=bound.schema, regions=programs)

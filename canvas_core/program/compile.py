"""`compile_schema` and `compile_program`: an object tree of ``Field``s -> layout, topology, program.

Steps: walk the tree (dataclasses, pydantic models or plain objects; nested objects and lists
of them) into region paths (:mod:`._tree`); place the regions on a ``(T, *spatial)`` grid
(:mod:`._placement`); generate connections from the ``ConnectivityPolicy`` (:mod:`._wiring`);
for ``compile_program`` put operators on connections between fields of declared families and
build the ``CanvasProgram``.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Tuple, Union

from canvas_core.errors import CanvasError, CanvasTypeError, ProgramError
from canvas_core.program._check import pos_int
from canvas_core.program._placement import _check_packing, _layout, _resolve_canvas, semantic_type_of
from canvas_core.program._tree import _tree
from canvas_core.program._wiring import _connect, _Edges, wire_operator
from canvas_core.program.bound import BoundSchema
from canvas_core.program.canvas_program import CanvasProgram
from canvas_core.program.fields import ConnectivityPolicy, Field, LayoutStrategy
from canvas_core.program.specs import RegionProgram
from canvas_core.schema._validate import is_int
from canvas_core.schema.schema import CanvasSchema
from canvas_core.schema.topology import CanvasTopology, Connection

__all__ = ["compile_schema", "compile_program", "wire_operator", "semantic_type_of"]


# --- entry points ------------------------------------------------------------------------------
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
             layout_strategy: Any, t_current: int, H: Any, W: Any, wire: bool, packing: Any):
    where = "compile_program" if wire else "compile_schema"  # the public function, named in errors
    T = pos_int(T, where, "T", "T is the number of canvas frames.")
    d_model = pos_int(d_model, where, "d_model")
    if not is_int(t_current):
        raise CanvasTypeError(f"{where}: t_current must be an integer, got {t_current!r}")
    policy = connectivity if connectivity is not None else ConnectivityPolicy()
    if not isinstance(policy, ConnectivityPolicy):
        raise CanvasTypeError(f"{where}: connectivity must be a ConnectivityPolicy or None, got {policy!r}")
    policy.__post_init__()  # re-check: the policy is mutable, like canvas-engineering's
    strategy = _as_strategy(layout_strategy)
    canvas = _resolve_canvas(spatial_shape, H, W, where)
    packing = _check_packing(packing, where)
    # canvas-engineering's coarse region is always 1 x 1 (which makes an auto-sized canvas of 1-d
    # fields 2-d); the tight packing pads a one-position region to the canvas's rank instead
    coarse_default = Field(1, 1) if packing == "compatible" else Field(spatial_shape=(1,))
    try:  # walking, placing and connecting recurse once per level of nesting
        regions, tree, coarse = _tree(root, coarse_default)
        layout = _layout(regions, T, d_model, canvas, strategy, t_current, coarse, packing)
        edges = _Edges(policy.temporal)
        _connect(edges, tree, policy)
    except RecursionError:
        raise ProgramError(
            f"{type(root).__name__}: the object tree is nested too deeply to compile (Python's recursion "
            f"limit, {sys.getrecursionlimit()}, was reached while walking, placing or connecting it); a "
            "canvas type nests a few levels of objects, so flatten it (or look for an object whose "
            "attributes make an endless chain of new objects)") from None
    plain = [Connection(src=src, dst=dst, t_src=ts, t_dst=td) for src, dst, ts, td in edges.out]
    bound = BoundSchema(CanvasSchema(layout=layout, topology=CanvasTopology(plain)), layout.regions)
    if not wire:
        return bound, regions, None
    # as in canvas-engineering, the operators go on the program's schema; the bound schema keeps
    # the plain "attend" topology compile_schema gives
    wired = [Connection(src=src, dst=dst, t_src=ts, t_dst=td,
                        operator=wire_operator(regions[src].family, regions[dst].family, ts, td))
             for src, dst, ts, td in edges.out]
    return bound, regions, CanvasSchema(layout=layout, topology=CanvasTopology(wired))


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
    *,
    packing: str = "compatible",
) -> BoundSchema:
    """Compile an object hierarchy of ``Field``s into a ``BoundSchema``.

    Walks ``root`` (a dataclass, pydantic model or plain object instance; nested objects and lists
    of them), packs every field onto a ``(T, *spatial_shape)`` grid, connects the fields by the
    ``ConnectivityPolicy`` and returns the bound schema. Every connection's operator is
    ``"attend"``; :func:`compile_program` adds operators and the program layer.

    Args:
        root: the object to compile; its attributes (nested ones too) are ``Field`` objects.
        T: Frames of the canvas.
        spatial_shape: Spatial grid, e.g. ``(16, 16)``; None = sized automatically from the
            fields (see ``packing``).
        d_model: Width of every position's vector.
        connectivity: Connectivity policy (default ``ConnectivityPolicy()``).
        layout_strategy: ``"packed"`` (declaration order) or ``"interleaved"``.
        t_current: Frames ``t >= t_current`` are outputs.
        H, W: 2-d shorthand for ``spatial_shape=(H, W)``; with only one of them the other is
            sized automatically.
        packing: ``"compatible"`` (default): canvas-engineering 0.5.0's auto size (15% slack)
            and placement, so auto-sized layouts and their checkpoints are interchangeable with
            it; ``"tight"``: shelf packing on a roughly square canvas trimmed to what is used
            (fewer positions, see docs/programs.md "Packing"). With an explicit 1-d or 2-d canvas
            both place the fields alike.

    Raises:
        ProgramError: bad input (no fields, a field that does not fit, unknown strategy, ...).
    """
    bound, _, _ = _compile(root, T, spatial_shape, d_model, connectivity, layout_strategy, t_current, H, W, wire=False,
                        packing=packing)
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
    *,
    packing: str = "compatible",
) -> Tuple[BoundSchema, CanvasProgram]:
    """Compile an object hierarchy into ``(BoundSchema, CanvasProgram)``.

    Same layout and connections as :func:`compile_schema` (same arguments, ``packing`` too); in
    addition every connection between two fields whose ``family`` was declared gets its operator
    from the family pair (see ``docs/programs.md``), and every region gets a ``RegionProgram``
    from its field's family, tags, carrier, clock, learning, compile_mode, constraints and
    identity.

    Example::

        @dataclass
        class Gripper:
            wrist_cam: Field = Field(5, 5, family="observation")
            grasp_state: Field = Field(3, 3, family="state")
            torque: Field = Field(1, 6, family="action", loss_weight=3.0)

        bound, program = compile_program(Gripper(), T=6, d_model=128)
    """
    bound, regions, wired = _compile(root, T, spatial_shape, d_model, connectivity, layout_strategy, t_current, H, W,
                                     wire=True,
                                packing=packing)
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
    return bound, CanvasProgram(schema=wired, regions=programs)

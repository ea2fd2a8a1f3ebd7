"""Placing a declaration's regions on the canvas: canvas size, packing, region specs."""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError
from canvas_core.program._check import pos_int
from canvas_core.program.fields import Field, LayoutStrategy
from canvas_core.program.packing import auto_canvas_width, padded_canvas_shape, shelf_pack, stack_pack
from canvas_core.schema._validate import check_ordered
from canvas_core.schema.layout import CanvasLayout
from canvas_core.schema.region import RegionSpec

__all__ = ["semantic_type_of"]


# --- naming ------------------------------------------------------------------------------------
def semantic_type_of(path: str) -> str:
    """Readable modality description from a field path, the text canvas-engineering derives for
    the same path (``auto_semantic_type``): ``"agents[0].joint_pos"`` ->
    ``"agents 0 / joint pos"``; nothing is collapsed, so ``"a__b"`` -> ``"a  b"``."""
    from canvas_core.program.naming import auto_semantic_type

    return auto_semantic_type(path)


# --- layout ------------------------------------------------------------------------------------
#: the ``packing=`` choices of compile_schema / compile_program
PACKINGS = ("compatible", "tight")


def _resolve_canvas(spatial_shape: Any, H: Any, W: Any,
                    where: Optional[str] = None) -> Optional[Tuple[Optional[int], ...]]:
    """The requested canvas: None (auto-sized), or one size per axis; with only one of H / W,
    the other is None (sized automatically, as in canvas-engineering).  ``where`` names the public
    function called (``compile_schema`` or ``compile_program``) in the errors."""
    where = where or "compile_schema"
    shape = None
    if spatial_shape is not None:
        if isinstance(spatial_shape, (str, bytes)) or not hasattr(spatial_shape, "__iter__"):
            raise CanvasTypeError(f"{where}: spatial_shape must be a tuple of ints or None, got {spatial_shape!r}")
        check_ordered(spatial_shape, f"{where}: spatial_shape", "(8, 8)")
        shape = tuple(pos_int(s, where, "every spatial_shape entry") for s in spatial_shape)
        if not shape:
            raise ProgramError(f"{where}: spatial_shape=() has no spatial axis; use None to size the canvas automatically")
    if H is not None or W is not None:
        hw = (None if H is None else pos_int(H, where, "H"), None if W is None else pos_int(W, where, "W"))
        if shape is not None and (len(shape) != 2 or any(a is not None and a != b for a, b in zip(hw, shape))):
            raise ProgramError(f"{where}: H={hw[0]}, W={hw[1]} disagree with spatial_shape={shape}; give one of them")
        shape = shape or hw
    return shape


def _check_packing(packing: Any, where: Optional[str] = None) -> str:
    if packing not in PACKINGS:
        from canvas_core.errors import did_you_mean

        raise ProgramError(f"{where or 'compile_schema'}: unknown packing={packing!r}; use 'compatible' (canvas-engineering's "
                           f"auto size and placement, the default) or 'tight'.{did_you_mean(str(packing), PACKINGS)}")
    return packing


def _place(ordered: List[Tuple[int, ...]], extents: List[Tuple[int, ...]],
           canvas: Optional[Tuple[Optional[int], ...]], packing: str):
    """(canvas size, None per axis left to the packer; packing result or None when it does not fit).

    ``compatible``: canvas-engineering's size (``padded_canvas_shape`` of the boxes in region
    order) for every axis not given, boxes stacked along the first axis on 3+ axes when they fit
    that way, else (and on 1-2 axes, where the two rules agree) shelf-packed; should an
    auto-sized canvas still be too small (an ``interleaved`` order wraps differently, or the
    stacking did not fit), the first axis grows.  ``tight``: roughly square inner axes
    (``auto_canvas_width``) and the first axis trimmed to what the shelf packing uses."""
    ndim = len(extents[0])
    if packing == "compatible":
        auto = padded_canvas_shape(extents)
        size: List[Optional[int]] = list(auto) if canvas is None else [
            auto[a] if c is None else c for a, c in enumerate(canvas)]
        packed = stack_pack(ordered, size) if ndim >= 3 else None
        if packed is None:
            packed = shelf_pack(ordered, size)
        if packed is None and (canvas is None or canvas[0] is None):
            grown = shelf_pack(ordered, [None, *size[1:]])
            if grown is not None:
                size[0] = max(size[0], grown[1][0])
                packed = grown
        return size, packed
    if canvas is None:
        size = [None, *auto_canvas_width(extents)]
    else:
        size = list(canvas)
        if ndim == 2 and size[1] is None:
            size[1] = auto_canvas_width(extents)[0]
    return size, shelf_pack(ordered, size)


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


def _layout(regions: Dict[str, Field], T: int, d_model: int, canvas: Optional[Tuple[Optional[int], ...]],
            strategy: LayoutStrategy, t_current: int, coarse: set, packing: str = "compatible") -> CanvasLayout:
    names = list(regions)
    ndim = len(canvas) if canvas is not None else max(len(f.shape) for f in regions.values())
    extents = [_fit_shape(n, regions[n], ndim) for n in names]
    order = _placement_order(names, strategy)
    if canvas is not None:
        for n, ext in zip(names, extents):
            for k in range(ndim):
                if canvas[k] is not None and ext[k] > canvas[k]:
                    raise ProgramError(
                        f"field {n!r} is {ext[k]} positions along {_axis_name(k, ndim)} but the canvas has "
                        f"{canvas[k]} there (Field {n!r} width {ext[k]} exceeds canvas "
                        f"{_axis_name(k, ndim)}={canvas[k]}); grow the canvas or pass spatial_shape=None to size it automatically"
                    )
    size, packed = _place([extents[i] for i in order], extents, canvas, packing)
    if packed is None:
        need = sum(math.prod(e) for e in extents)
        raise ProgramError(
            f"the {len(names)} fields ({need} positions per frame) do not fit on the canvas "
            f"spatial_shape={tuple(size)} ({math.prod(size)} per frame); grow the canvas or pass "
            "spatial_shape=None to size it automatically"
        )
    offsets_in_order, used = packed
    offsets: Dict[int, Tuple[int, ...]] = dict(zip(order, offsets_in_order))
    if canvas is None and packing == "tight":
        spatial = tuple(used)  # trimmed to what is used
    else:
        spatial = tuple(used[a] if size[a] is None else size[a] for a in range(ndim))
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

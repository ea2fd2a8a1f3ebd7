"""The position pairs a :class:`~canvas_core.schema.mask_spec.MaskSpec` links between two
regions of a layout: as disjoint box pairs (:func:`mask_rectangles`) or as index lists
(:func:`mask_to_index_pairs`; :func:`mask_index_arrays` gives them as numpy arrays, for lowering).
The contracts are stated in :mod:`canvas_core.schema.masks`.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError, UnknownRegionError
from canvas_core.schema.mask_spec import MaskSpec
from canvas_core.schema.rects import Rect, rect_cover

__all__ = ["mask_index_arrays", "mask_rectangles", "mask_to_index_pairs"]


def _region_box(layout: Any, name: str) -> Tuple[Tuple[int, int], ...]:
    try:
        spec = layout.region_spec(name)
    except UnknownRegionError as exc:  # also a KeyError, as canvas-engineering raised here
        raise UnknownRegionError(f"mask: region {name!r} is not in the layout ({exc})") from None
    except Exception as exc:
        raise SchemaError(f"mask: region {name!r} is not in the layout ({exc})") from None
    b = tuple(spec.bounds)
    return tuple((b[k], b[k + 1]) for k in range(0, len(b), 2))


def _spatial_shape(layout: Any) -> Tuple[int, ...]:
    return tuple(getattr(layout, "spatial_shape", ()) or ())


def _indices_of_box(layout: Any, box: Sequence[Tuple[int, int]]) -> Any:
    """Canonical flat indices of a ``(T, *spatial)`` box: an ascending int64 ``(n,)`` array (the
    box in row-major order is ascending; built from one range per dim, not a grid per dim)."""
    import numpy as np

    shape = (int(layout.T),) + _spatial_shape(layout)
    idx = np.zeros((), dtype=np.int64)
    stride = 1
    for (a, b), n in reversed(list(zip(box, shape))):
        idx = np.add.outer(np.arange(a, max(a, b), dtype=np.int64) * stride, idx)
        stride *= n
    return idx.reshape(-1)


def _range_boxes(lo: int, hi: int, extent: Sequence[int]) -> List[List[Tuple[int, int]]]:
    """Split the row-major range ``[lo, hi)`` of a grid of ``extent`` into boxes (local coords)."""
    if lo >= hi:
        return []
    if len(extent) == 0:
        return [[]]
    if len(extent) == 1:
        return [[(lo, hi)]]
    inner = 1
    for e in extent[1:]:
        inner *= e
    a0, ar = divmod(lo, inner)
    b0, br = divmod(hi, inner)
    if a0 == b0:
        return [[(a0, a0 + 1)] + sub for sub in _range_boxes(ar, br, extent[1:])]
    boxes: List[List[Tuple[int, int]]] = []
    if ar:
        boxes += [[(a0, a0 + 1)] + sub for sub in _range_boxes(ar, inner, extent[1:])]
        a0 += 1
    if b0 > a0:
        boxes.append([(a0, b0)] + [(0, e) for e in extent[1:]])
    if br:
        boxes += [[(b0, b0 + 1)] + sub for sub in _range_boxes(0, br, extent[1:])]
    return boxes


def _tile_pairs(spec: MaskSpec, layout: Any, src: str, dst: str) -> List[Tuple[Tuple, Tuple]]:
    """``(src box, dst box)`` per tile, tiles in row-major order of the tile grid (anchored at the
    src region's corner): the src box is the tile cell clipped to the src region, the dst box the
    dst positions inside that clipped cell, or the whole dst region where there are none."""
    import itertools

    import numpy as np

    sbox, dbox = _region_box(layout, src), _region_box(layout, dst)
    n = len(sbox) - 1
    tile = spec.tile_for(n)
    if n == 0:
        return [(sbox, dbox)]
    s_dims, d_dims, empty = [], [], np.zeros((), dtype=bool)
    for (lo, hi), (c, d), t in zip(sbox[1:], dbox[1:], tile):
        s0 = np.arange(lo, max(lo, hi), t, dtype=np.int64)
        s1 = np.minimum(s0 + t, hi)
        d0, d1 = np.maximum(s0, c), np.minimum(s1, d)
        s_dims.append(list(zip(s0.tolist(), s1.tolist())))
        d_dims.append(list(zip(d0.tolist(), d1.tolist())))
        empty = np.logical_or.outer(empty, d0 >= d1)  # per tile: a dim without dst positions
    s_boxes = itertools.product(*s_dims)
    d_boxes = itertools.product(*d_dims)
    return [((sbox[0],) + s, dbox if e else (dbox[0],) + d)
            for s, d, e in zip(s_boxes, d_boxes, empty.reshape(-1).tolist())]


def _by_tile(layout: Any, idx: Any, sbox: Sequence[Tuple[int, int]], tile: Sequence[int]) -> Tuple[Any, Any]:
    """``(tile id, inside)`` of canonical indices ``idx``: the row-major id of the tile cell of the
    grid anchored at the src box's corner that holds each position, and whether it is in the
    src box at all (ids of positions outside are meaningless)."""
    import numpy as np

    spatial = _spatial_shape(layout)
    coords = np.unravel_index(idx % int(np.prod(spatial, dtype=np.int64)), spatial)
    tile_id = np.zeros(idx.shape, dtype=np.int64)
    inside = np.ones(idx.shape, dtype=bool)
    for c, (lo, hi), t in zip(coords, sbox[1:], tile):
        inside &= (c >= lo) & (c < hi)
        tile_id = tile_id * (-(-(hi - lo) // t)) + (c - lo) // t
    return tile_id, inside


def _tile_index_arrays(spec: MaskSpec, layout: Any, src: str, dst: str) -> List[Tuple[Any, Any]]:
    """The index arrays of :func:`_tile_pairs`' boxes, made for all tiles at once: each region's
    indices (ascending) grouped by tile with a stable sort, so each group stays ascending."""
    import numpy as np

    sbox, dbox = _region_box(layout, src), _region_box(layout, dst)
    tile = spec.tile_for(len(sbox) - 1)
    n_tiles = 1
    for (lo, hi), t in zip(sbox[1:], tile):
        n_tiles *= -(-(hi - lo) // t)
    if len(sbox) == 1 or n_tiles == 0:
        return [(_indices_of_box(layout, s), _indices_of_box(layout, d)) for s, d in _tile_pairs(spec, layout, src, dst)]

    def grouped(idx, keep_outside):
        tile_id, inside = _by_tile(layout, idx, sbox, tile)
        if not keep_outside:
            idx, tile_id = idx[inside], tile_id[inside]
        idx = idx[np.argsort(tile_id, kind="stable")]
        counts = np.bincount(tile_id, minlength=n_tiles)
        ends = np.cumsum(counts).tolist()
        return [idx[a:b] for a, b in zip([0] + ends[:-1], ends)], counts

    s_groups, _ = grouped(_indices_of_box(layout, sbox), True)
    d_all = _indices_of_box(layout, dbox)
    d_groups, d_counts = grouped(d_all, False)
    return [(s, d if n else d_all.copy()) for s, d, n in zip(s_groups, d_groups, d_counts.tolist())]


def _sparse_cover(spec: MaskSpec, layout: Any, src: str, dst: str) -> Tuple[Tuple, Tuple, List[Rect]]:
    """``(src box, dst box, cover)``: both region boxes and the rectangles of the pattern (rows
    and columns are the row-major spatial positions of each region), its shape checked."""
    sbox, dbox = _region_box(layout, src), _region_box(layout, dst)
    s_vol = d_vol = 1
    for a, b in sbox[1:]:
        s_vol *= b - a
    for a, b in dbox[1:]:
        d_vol *= b - a
    pat = spec.pattern
    if len(pat) != s_vol or len(pat[0]) != d_vol:
        raise ShapeError(
            f"connection {src!r} -> {dst!r}: sparse mask pattern is {len(pat)}x{len(pat[0])} but must be "
            f"{s_vol}x{d_vol} (spatial positions per frame of {src!r} x of {dst!r})")
    return sbox, dbox, rect_cover(pat, min_area=1)


def _sparse_pairs(spec: MaskSpec, layout: Any, src: str, dst: str) -> List[Tuple[List, List]]:
    """Per rectangle of the pattern: (list of src boxes, list of dst boxes) in canvas coords."""
    sbox, dbox, cover = _sparse_cover(spec, layout, src, dst)
    s_ext = [b - a for a, b in sbox[1:]]
    d_ext = [b - a for a, b in dbox[1:]]

    def to_canvas(local_boxes, box):
        return [(box[0],) + tuple((box[k + 1][0] + a, box[k + 1][0] + b) for k, (a, b) in enumerate(lb))
                for lb in local_boxes]

    out = []
    for r in cover:
        (r0, r1), (c0, c1) = r.ranges
        out.append((to_canvas(_range_boxes(r0, r1, s_ext), sbox), to_canvas(_range_boxes(c0, c1, d_ext), dbox)))
    return out


def _sparse_index_arrays(spec: MaskSpec, layout: Any, src: str, dst: str) -> List[Tuple[Any, Any]]:
    """The index pairs of a sparse mask, one per rectangle of the pattern: rows ``[r0, r1)`` of the
    pattern are the region's row-major spatial positions ``r0..r1-1`` at each of its frames, so
    their indices are ``frame * vol + offset[r]`` (frame-major: ascending, as the offsets are)."""
    import numpy as np

    sbox, dbox, cover = _sparse_cover(spec, layout, src, dst)
    vol = 1
    for n in _spatial_shape(layout):
        vol *= n

    def sides(box):  # (F, 1) frame starts and (S,) spatial offsets of the region, row-major
        starts = np.arange(box[0][0], box[0][1], dtype=np.int64)[:, None] * vol
        return starts, _indices_of_box(layout, ((0, 1),) + tuple(box[1:]))

    (s_start, s_off), (d_start, d_off) = sides(sbox), sides(dbox)
    out = []
    for r in cover:
        (r0, r1), (c0, c1) = r.ranges
        out.append(((s_start + s_off[r0:r1]).reshape(-1), (d_start + d_off[c0:c1]).reshape(-1)))
    return out


def _check_spec(mask_spec: Any) -> MaskSpec:
    if mask_spec is None:
        return MaskSpec()
    if not isinstance(mask_spec, MaskSpec):
        raise CanvasTypeError(f"mask must be a MaskSpec or None, got {type(mask_spec).__name__} {mask_spec!r}")
    return mask_spec


def mask_rectangles(mask_spec: Optional[MaskSpec], layout: Any, src: str, dst: str) -> List[Tuple[Rect, Rect]]:
    """Allowed pairs as ``(src box, dst box)`` :class:`Rect` pairs in ``(T, *spatial)`` coords.

    Every src position in a src box may attend to every dst position in the paired dst box
    (subject to the temporal links).  Pairs are disjoint; their union is the mask.
    """
    spec = _check_spec(mask_spec)
    if spec.kind == "full":
        return [(Rect(ranges=_region_box(layout, src)), Rect(ranges=_region_box(layout, dst)))]
    if spec.kind == "tile":
        return [(Rect(ranges=s), Rect(ranges=d)) for s, d in _tile_pairs(spec, layout, src, dst)]
    return [(Rect(ranges=s), Rect(ranges=d))
            for sl, dl in _sparse_pairs(spec, layout, src, dst) for s in sl for d in dl]


def mask_index_arrays(mask_spec: Optional[MaskSpec], layout: Any, src: str, dst: str) -> List[Tuple[Any, Any]]:
    """The pairs of :func:`mask_to_index_pairs` as ascending int64 ``(n,)`` numpy arrays (8 bytes an
    index, where a list of Python ints takes about 36): what lowering reads."""
    import numpy as np

    spec = _check_spec(mask_spec)
    if spec.kind == "full":
        return [(np.asarray(layout.region_indices(src), dtype=np.int64),
                 np.asarray(layout.region_indices(dst), dtype=np.int64))]
    if spec.kind == "tile":
        return _tile_index_arrays(spec, layout, src, dst)
    return _sparse_index_arrays(spec, layout, src, dst)


def mask_to_index_pairs(mask_spec: Optional[MaskSpec], layout: Any, src: str, dst: str) -> List[Tuple[List[int], List[int]]]:
    """Convert a MaskSpec to ``(src_indices, dst_indices)`` pairs (canonical flat indices).

    Each pair: every listed src position may attend to every listed dst position (all frames of
    both regions; the temporal links restrict frames).  For ``"full"`` one pair with all indices.
    Lists of Python ints, ascending (:func:`mask_index_arrays` gives the same as numpy arrays).
    """
    spec = _check_spec(mask_spec)
    if spec.kind == "full":
        return [(list(layout.region_indices(src)), list(layout.region_indices(dst)))]
    return [(s.tolist(), d.tolist()) for s, d in mask_index_arrays(spec, layout, src, dst)]

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
    sbox, dbox = _region_box(layout, src), _region_box(layout, dst)
    n = len(sbox) - 1
    tile = spec.tile_for(n)
    if n == 0:
        return [(sbox, dbox)]
    import itertools

    origin = [lo for lo, _ in sbox[1:]]  # the tile grid is anchored at the src region's corner

    pairs = []
    for key in itertools.product(*[range(-(-(hi - lo) // t)) for (lo, hi), t in zip(sbox[1:], tile)]):
        # src tile = tile cell clipped to the src box; its dst = dst positions inside that clipped cell
        sb = (sbox[0],) + tuple((o + k * t, min(o + (k + 1) * t, hi))
                                for k, t, o, (_, hi) in zip(key, tile, origin, sbox[1:]))
        db = (dbox[0],) + tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(dbox[1:], sb[1:]))
        if any(a >= b for a, b in db[1:]):  # no dst position there: the whole dst region
            db = dbox
        pairs.append((sb, db))
    return pairs


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
        return [(_indices_of_box(layout, s), _indices_of_box(layout, d)) for s, d in _tile_pairs(spec, layout, src, dst)]
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

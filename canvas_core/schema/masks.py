"""Attention mask specifications of a connection, and exact rectangle covers.

Pure Python at import (numpy / torch are imported lazily inside functions).

``MaskSpec(kind=...)`` restricts which position pairs of a connection ``src -> dst`` link
(always intersected with the connection's temporal links):

* ``"full"`` (default): every src position may attend to every dst position.
* ``"tile"``: the canvas spatial grid is cut into tiles of ``tile_shape`` (one size per spatial
  dim; ``tile_h``/``tile_w`` are the 2-d shorthand) anchored at the **src region's spatial corner**
  ``(o0, o1, ...)`` (as canvas-engineering does); tile of a position (src or dst) =
  ``((s0 - o0) // tile0, (s1 - o1) // tile1, ...)``.  Each src tile (its cell clipped to the src
  region's box) links to the dst positions inside that clipped cell, every frame (frames are chosen
  by the temporal links); a src tile whose clipped cell holds no dst position links to *every* dst
  position (canvas-engineering's rule: no src position is left without keys).  With no spatial dims
  a tile mask is the full mask.
* ``"sparse"``: ``pattern`` is an explicit binary matrix of shape ``(S_src, S_dst)`` where
  ``S_src`` / ``S_dst`` are the *per-frame spatial volumes* of the src / dst regions; row ``i``
  is the src region's i-th spatial position (row-major over the region's own spatial box), column
  ``j`` likewise for dst.  ``pattern[i][j]`` true = src spatial position i may attend to dst
  spatial position j (at every frame pair the temporal links allow).  The pattern is covered
  exactly by :func:`rect_cover`; each rectangle becomes one block of the block-sparse structure.

Contracts for the lowering:

* :func:`mask_to_index_pairs` ``(mask_spec, layout, src, dst) -> [(src_indices, dst_indices)]``:
  canonical flat indices over **all frames** of each region; each pair links every listed src
  index to every listed dst index; pairs never overlap (the union of their products is exactly the
  allowed set).  ``"full"`` gives one pair with all indices.
* :func:`mask_rectangles` ``(mask_spec, layout, src, dst) -> [(Rect src_box, Rect dst_box)]``:
  the same set as boxes in the layout's ``(T, *spatial)`` coordinates (half-open ranges; the time
  range is the region's frames ``(t0, t1)``); the product of each box pair is allowed, pairs are
  disjoint.  ``"full"`` gives the two region boxes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError

__all__ = ["MaskSpec", "Rect", "rect_cover", "mask_to_index_pairs", "mask_rectangles"]

_KINDS = ("full", "tile", "sparse")


def _posint(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SchemaError(f"MaskSpec: {what} must be an integer >= 1, got {v!r}")
    return v


@dataclass(frozen=True)
class MaskSpec:
    """Attention mask specification for a connection.

    Args:
        kind: ``"full"`` (dense, default), ``"tile"`` (same-tile block-sparse) or ``"sparse"``
            (exact rectangle cover of ``pattern``).
        tile_h: For ``kind="tile"``, tile height (2-d shorthand).
        tile_w: For ``kind="tile"``, tile width (2-d shorthand).
        tile_shape: For ``kind="tile"``, N-d tile shape (one size per spatial dim); mutually
            exclusive with ``tile_h``/``tile_w``.
        pattern: For ``kind="sparse"``, a binary matrix ``(S_src, S_dst)`` as nested
            sequences (or a numpy array / torch tensor, stored as a tuple of 0/1 tuples).
    """

    kind: str = "full"
    tile_h: int = 1
    tile_w: int = 1
    tile_shape: Optional[Tuple[int, ...]] = None
    pattern: Optional[Tuple[Tuple[int, ...], ...]] = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise SchemaError(f"MaskSpec: kind must be one of {_KINDS}, got {self.kind!r}")
        _posint(self.tile_h, "tile_h")
        _posint(self.tile_w, "tile_w")
        if self.tile_shape is not None:
            if not isinstance(self.tile_shape, (tuple, list)) or not self.tile_shape:
                raise SchemaError(f"MaskSpec: tile_shape must be a non-empty tuple of ints, got {self.tile_shape!r}")
            ts = tuple(_posint(v, "tile_shape entry") for v in self.tile_shape)
            if (self.tile_h, self.tile_w) != (1, 1):
                raise SchemaError("MaskSpec: give either tile_shape or tile_h/tile_w, not both")
            object.__setattr__(self, "tile_shape", ts)
        if self.pattern is not None:
            object.__setattr__(self, "pattern", _as_pattern(self.pattern))
        if self.kind == "sparse" and self.pattern is None:
            raise SchemaError("MaskSpec(kind='sparse') needs pattern=<binary matrix (S_src, S_dst)>")
        if self.kind != "sparse" and self.pattern is not None:
            raise SchemaError(f"MaskSpec: pattern is only used with kind='sparse' (got kind={self.kind!r})")

    def tile_for(self, n_spatial: int) -> Tuple[int, ...]:
        """Tile sizes for a grid with ``n_spatial`` spatial dims.

        ``tile_shape`` must have one size per spatial dim.  The 2-d shorthand: ``(tile_h, tile_w)``
        in 2-d; in 1-d the one that is not 1 (both set is an error); with more than two spatial
        dims ``(tile_h, tile_w, 1, ...)``.
        """
        if self.tile_shape is not None:
            if len(self.tile_shape) != n_spatial:
                raise ShapeError(f"MaskSpec tile_shape {self.tile_shape} has {len(self.tile_shape)} dims but "
                                 f"the layout has {n_spatial} spatial dims; give one size per spatial dim")
            return self.tile_shape
        if n_spatial == 2:
            return (self.tile_h, self.tile_w)
        if n_spatial == 1:
            if self.tile_w != 1 and self.tile_h != 1:
                raise ShapeError("MaskSpec: a 1-d layout takes tile_shape=(n,) (tile_h and tile_w both set)")
            return (max(self.tile_h, self.tile_w),)
        if n_spatial == 0:
            return ()
        # n_spatial > 2: tile_h / tile_w tile the first two spatial dims, the others get tile 1
        # (canvas-engineering pads the 2-d shorthand with ones the same way)
        return (self.tile_h, self.tile_w) + (1,) * (n_spatial - 2)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-compatible dict (only non-default fields besides ``kind``)."""
        d: Dict[str, Any] = {"kind": self.kind}
        if self.tile_h != 1:
            d["tile_h"] = self.tile_h
        if self.tile_w != 1:
            d["tile_w"] = self.tile_w
        if self.tile_shape is not None:
            d["tile_shape"] = list(self.tile_shape)
        if self.pattern is not None:
            d["pattern"] = [list(r) for r in self.pattern]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MaskSpec":
        """Inverse of :meth:`to_dict`; a malformed dict raises ``SchemaError``."""
        if not isinstance(d, dict):
            raise SchemaError(f"MaskSpec.from_dict needs a dict, got {type(d).__name__} {d!r}")
        extra = set(d) - {"kind", "tile_h", "tile_w", "tile_shape", "pattern"}
        if extra:
            raise SchemaError(f"MaskSpec: unknown keys {sorted(extra)} (allowed: kind, tile_h, tile_w, tile_shape, pattern)")
        ts = d.get("tile_shape")
        if ts is not None and not isinstance(ts, (list, tuple)):
            raise SchemaError(f"MaskSpec: tile_shape must be a list of ints, got {ts!r}")
        return cls(kind=d.get("kind", "full"), tile_h=d.get("tile_h", 1), tile_w=d.get("tile_w", 1),
                   tile_shape=None if ts is None else tuple(ts), pattern=d.get("pattern"))


def _as_pattern(p: Any) -> Tuple[Tuple[int, ...], ...]:
    if hasattr(p, "detach"):
        p = p.detach().cpu().tolist()
    elif hasattr(p, "tolist"):
        p = p.tolist()
    if not isinstance(p, (list, tuple)) or not p or not all(isinstance(r, (list, tuple)) for r in p):
        raise SchemaError("MaskSpec: pattern must be a non-empty 2-d binary matrix (S_src rows x S_dst columns)")
    width = len(p[0])
    rows = []
    for i, r in enumerate(p):
        if len(r) != width or width == 0:
            raise SchemaError(f"MaskSpec: pattern row {i} has {len(r)} entries, expected {width} (> 0)")
        row = []
        for v in r:
            if v not in (0, 1, True, False):
                raise SchemaError(f"MaskSpec: pattern entries must be 0/1 or bool, got {v!r} in row {i}")
            row.append(int(bool(v)))
        rows.append(tuple(row))
    return tuple(rows)


class Rect:
    """Axis-aligned half-open hyperrectangle; ``ranges`` is one ``(lo, hi)`` per dim.

    ``Rect(t0, t1, h0, h1, w0, w1)`` (flat pairs), ``Rect(((t0, t1), (h0, h1), ...))`` (one tuple
    of pairs) and ``Rect(ranges=((t0, t1), ...))`` all work, as in canvas-engineering.  Bounds are
    integers with ``lo <= hi``; anything else raises a ``CanvasError`` naming the bad value.
    ``t0 .. w1`` read dims 0..2; a dim the rectangle does not have reads as 0 (canvas-engineering's
    convention for lower-dimensional rectangles).
    """

    __slots__ = ("ranges",)

    def __init__(self, *args: Any, ranges: Optional[Tuple[Tuple[int, int], ...]] = None):
        if ranges is not None and args:
            raise CanvasTypeError("Rect: give either flat (lo, hi, ...) arguments or ranges=, not both")
        if ranges is None:
            if len(args) == 1 and isinstance(args[0], (tuple, list)) and args[0] \
                    and all(isinstance(p, (tuple, list)) for p in args[0]):
                ranges = args[0]  # Rect(((t0, t1), (h0, h1), ...))
            elif not args or len(args) % 2:
                raise CanvasTypeError(
                    f"Rect: needs an even number of bounds Rect(lo0, hi0, lo1, hi1, ...), a tuple of "
                    f"(lo, hi) pairs, or ranges=((lo, hi), ...); got {args!r}")
            else:
                ranges = tuple((args[k], args[k + 1]) for k in range(0, len(args), 2))
        if not isinstance(ranges, (tuple, list)) or not ranges:
            raise CanvasTypeError(f"Rect: ranges must be a non-empty tuple of (lo, hi) pairs, got {ranges!r}")
        rs = []
        for pair in ranges:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise CanvasTypeError(f"Rect: each range must be a (lo, hi) pair of ints, got {pair!r}")
            lo_hi = []
            for v in pair:
                # ints and integer-like objects (numpy / torch integer scalars, via __index__)
                try:
                    if isinstance(v, bool):
                        raise TypeError
                    lo_hi.append(operator.index(v))
                except TypeError:
                    raise CanvasTypeError(
                        f"Rect: bounds must be integers, got {v!r} in range {tuple(pair)!r}") from None
            a, b = lo_hi
            if b < a:
                raise SchemaError(f"Rect: range ({a}, {b}) has hi < lo; give (lo, hi) with lo <= hi")
            rs.append((a, b))
        self.ranges: Tuple[Tuple[int, int], ...] = tuple(rs)

    @property
    def ndim(self) -> int:
        return len(self.ranges)

    @property
    def volume(self) -> int:
        """Number of positions covered."""
        v = 1
        for a, b in self.ranges:
            v *= b - a
        return v

    def _r(self, k: int, j: int) -> int:
        return self.ranges[k][j] if k < len(self.ranges) else 0

    t0 = property(lambda self: self._r(0, 0))
    t1 = property(lambda self: self._r(0, 1))
    h0 = property(lambda self: self._r(1, 0))
    h1 = property(lambda self: self._r(1, 1))
    w0 = property(lambda self: self._r(2, 0))
    w1 = property(lambda self: self._r(2, 1))

    def slices(self) -> Tuple[slice, ...]:
        """Index slices selecting this rectangle from an array."""
        return tuple(slice(a, b) for a, b in self.ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rect) and other.ranges == self.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __repr__(self) -> str:
        return f"Rect(ranges={self.ranges})"


def _to_bool_array(mask: Any):
    import numpy as np

    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    if isinstance(mask, (str, bytes)) or mask is None:
        raise ShapeError(f"rect_cover: mask must be an N-d binary array (0/1 or bool), got {type(mask).__name__}")
    try:
        arr = np.asarray(mask)
    except Exception as exc:  # ragged lists etc.
        raise ShapeError(f"rect_cover: mask must be a rectangular N-d boolean array ({exc})") from None
    if arr.dtype == object:
        raise ShapeError("rect_cover: mask must be a rectangular N-d boolean array (got ragged input)")
    if arr.ndim == 0:
        raise ShapeError("rect_cover: mask must have at least one dimension")
    if arr.dtype != bool:
        if arr.dtype.kind not in "biuf":
            raise ShapeError(f"rect_cover: mask must hold 0/1 or bool values, got dtype {arr.dtype}")
        bad = ~((arr == 0) | (arr == 1))
        if bad.any():
            where = tuple(int(v) for v in np.argwhere(bad)[0])
            raise SchemaError(
                f"rect_cover: mask must be binary (0/1 or bool); found {arr[where].item()!r} at index {where}. "
                "Threshold it first, e.g. rect_cover(mask > 0.5)")
    return arr.astype(bool)


def rect_cover(mask: Any, min_area: int = 4) -> List[Rect]:
    """Exact cover of the true cells of an N-d boolean mask by disjoint hyperrectangles.

    Greedy, in row-major order: at the first uncovered true cell, grow along the last dim, then
    along each earlier dim while the whole slab stays true and uncovered.  The union of the
    returned rectangles equals the mask, they are pairwise disjoint, each has volume >= 1.

    Args:
        mask: N-d binary torch tensor, numpy array or nested lists (e.g. ``(T, H, W)``): bool,
            or numbers that are all 0 or 1.  Any other value (2, 0.5, NaN) raises ``SchemaError``
            (threshold first); ragged or 0-d input raises ``ShapeError``.
        min_area: kept for canvas-engineering compatibility: a *preference*, never at the cost
            of exactness.  Exactness wins, so rectangles smaller than ``min_area`` appear
            wherever the mask forces them (an isolated true cell is a volume-1 rectangle).

    Returns:
        List of :class:`Rect`, in row-major order of their first corner.
    """
    import numpy as np

    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise SchemaError(f"rect_cover: min_area must be an integer >= 1, got {min_area!r}")
    arr = _to_bool_array(mask)
    todo = arr.copy()
    nd = arr.ndim
    out: List[Rect] = []
    for flat in np.flatnonzero(todo.ravel()):
        start = np.unravel_index(int(flat), arr.shape)
        if not todo[start]:
            continue
        lo = [int(v) for v in start]
        hi = [v + 1 for v in lo]
        for d in range(nd - 1, -1, -1):  # last dim first
            while hi[d] < arr.shape[d]:
                sl = tuple(slice(lo[k], hi[k]) if k != d else slice(hi[d], hi[d] + 1) for k in range(nd))
                if todo[sl].all():
                    hi[d] += 1
                else:
                    break
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        todo[box] = False
        out.append(Rect(ranges=tuple(zip(lo, hi))))
    return out


# ---------------------------------------------------------------------------------------------
def _region_box(layout: Any, name: str) -> Tuple[Tuple[int, int], ...]:
    try:
        spec = layout.region_spec(name)
    except Exception as exc:
        raise SchemaError(f"mask: region {name!r} is not in the layout ({exc})") from None
    b = tuple(spec.bounds)
    return tuple((b[k], b[k + 1]) for k in range(0, len(b), 2))


def _spatial_shape(layout: Any) -> Tuple[int, ...]:
    return tuple(getattr(layout, "spatial_shape", ()) or ())


def _indices_of_box(layout: Any, box: Sequence[Tuple[int, int]]) -> List[int]:
    """Canonical flat indices of a ``(T, *spatial)`` box, ascending."""
    import numpy as np

    shape = (int(layout.T),) + _spatial_shape(layout)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in box], indexing="ij")
    if any(g.size == 0 for g in grids):
        return []
    idx = np.ravel_multi_index(tuple(g.ravel() for g in grids), shape)
    return [int(v) for v in np.sort(idx)]


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


def _sparse_pairs(spec: MaskSpec, layout: Any, src: str, dst: str) -> List[Tuple[List, List]]:
    """Per rectangle of the pattern: (list of src boxes, list of dst boxes) in canvas coords."""
    sbox, dbox = _region_box(layout, src), _region_box(layout, dst)
    s_ext = [b - a for a, b in sbox[1:]]
    d_ext = [b - a for a, b in dbox[1:]]
    s_vol = d_vol = 1
    for e in s_ext:
        s_vol *= e
    for e in d_ext:
        d_vol *= e
    pat = spec.pattern
    if len(pat) != s_vol or len(pat[0]) != d_vol:
        raise ShapeError(
            f"connection {src!r} -> {dst!r}: sparse mask pattern is {len(pat)}x{len(pat[0])} but must be "
            f"{s_vol}x{d_vol} (spatial positions per frame of {src!r} x of {dst!r})")

    def to_canvas(local_boxes, box):
        return [(box[0],) + tuple((box[k + 1][0] + a, box[k + 1][0] + b) for k, (a, b) in enumerate(lb))
                for lb in local_boxes]

    out = []
    for r in rect_cover(pat, min_area=1):
        (r0, r1), (c0, c1) = r.ranges
        out.append((to_canvas(_range_boxes(r0, r1, s_ext), sbox), to_canvas(_range_boxes(c0, c1, d_ext), dbox)))
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


def mask_to_index_pairs(mask_spec: Optional[MaskSpec], layout: Any, src: str, dst: str) -> List[Tuple[List[int], List[int]]]:
    """Convert a MaskSpec to ``(src_indices, dst_indices)`` pairs (canonical flat indices).

    Each pair: every listed src position may attend to every listed dst position (all frames of
    both regions; the temporal links restrict frames).  For ``"full"`` one pair with all indices.
    """
    spec = _check_spec(mask_spec)
    if spec.kind == "full":
        return [(list(layout.region_indices(src)), list(layout.region_indices(dst)))]
    if spec.kind == "tile":
        return [(_indices_of_box(layout, s), _indices_of_box(layout, d)) for s, d in _tile_pairs(spec, layout, src, dst)]
    out = []
    for sl, dl in _sparse_pairs(spec, layout, src, dst):
        s = sorted(i for b in sl for i in _indices_of_box(layout, b))
        d = sorted(i for b in dl for i in _indices_of_box(layout, b))
        out.append((s, d))
    return out

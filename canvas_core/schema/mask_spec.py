"""The :class:`MaskSpec` of a connection (its rules are described in :mod:`canvas_core.schema.masks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from canvas_core.errors import SchemaError, ShapeError

__all__ = ["MaskSpec"]

_KINDS = ("full", "tile", "sparse")


def _posint(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SchemaError(f"MaskSpec: {what} must be an integer >= 1, got {v!r}")
    return v


@dataclass(frozen=True)
class MaskSpec:
    """Which position pairs of a connection may attend, beyond its temporal links (see
    :mod:`canvas_core.schema.masks` for the exact rules of each kind).

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
        if not isinstance(self.kind, str) or self.kind not in _KINDS:  # (an array would compare elementwise)
            raise SchemaError(f"MaskSpec: kind must be one of {_KINDS} (a string), got {self.kind!r:.80}")
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
            if not _is_zero_or_one(v):
                raise SchemaError(f"MaskSpec: pattern entries must be 0/1 or bool, got {v!r} in row {i}")
            row.append(int(bool(v)))
        rows.append(tuple(row))
    return tuple(rows)


def _is_zero_or_one(v: Any) -> bool:
    """Whether a pattern entry is a scalar 0 or 1 (bools and numpy / torch scalars included); a
    nested sequence or a multi-element array is not, and must not be compared elementwise."""
    ndim = getattr(v, "ndim", None)
    if ndim is not None and ndim != 0 or ndim is None and (isinstance(v, (str, bytes)) or hasattr(v, "__len__")):
        return False
    try:
        return bool(v in (0, 1))
    except (TypeError, ValueError, RuntimeError):  # an object whose == answers something odd
        return False

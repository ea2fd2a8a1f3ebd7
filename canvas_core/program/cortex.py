"""Cortex zones: named spatial zones of the canvas with a preferred tiling and a local backend.

Pure Python.  Regions assigned to the same cortex share a KV cache (``shared_cache``) and their
connections run the zone's local attention kernel on its tiling.

Compiler helpers: :meth:`CortexRegistry.local_fn` ``(src, dst) -> str | None`` (the zone's
``local_backend`` when both regions are in one cortex) and :meth:`CortexRegistry.tile_mask`
``(src, dst) -> MaskSpec | None`` (``MaskSpec(kind="tile", tile_shape=zone.tile)`` for such a pair);
per connection, :meth:`CortexRegistry.resolve_fn` ``(conn, default) -> str`` returns the zone's
``local_backend`` for a connection whose src and dst lie in one cortex and which has no explicit
``fn`` (otherwise ``conn.fn`` or ``default``); :meth:`CortexRegistry.mask_for` ``(conn) ->
MaskSpec | None`` returns ``MaskSpec(kind="tile", tile_shape=zone.tile)`` for such an intra-zone
connection without its own mask (None otherwise).

Usage::

    reg = CortexRegistry()
    reg.register(CortexSpec(name="visual", bounds=(0, 4, 0, 8, 0, 8), tile=(4, 4)))
    reg.assign("camera", "visual"); reg.assign("depth", "visual")
    assert reg.same_cortex("camera", "depth")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import CanvasTypeError, SchemaError, UnknownRegionError

__all__ = ["CortexSpec", "CortexRegistry", "UnknownCortexError", "UnassignedRegionError"]


class UnknownCortexError(UnknownRegionError, KeyError):
    """A cortex name that is not registered (also a ``KeyError``, as in canvas-engineering)."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return Exception.__str__(self)


class UnassignedRegionError(UnknownRegionError, KeyError):
    """A region with no cortex assignment was unassigned (also a ``KeyError``)."""

    def __str__(self) -> str:
        return Exception.__str__(self)


def _region_name(region: Any, where: str) -> str:
    if not isinstance(region, str) or not region:
        raise CanvasTypeError(f"{where}: region must be a non-empty region name (str), got "
                              f"{type(region).__name__} {region!r}")
    return region


@dataclass(frozen=True)
class CortexSpec:
    """Declares a named spatial zone on the canvas.

    Args:
        name: Unique identifier for this cortex.
        bounds: Extent as a flat tuple ``(t0, t1, s0_lo, s0_hi, ...)``, half-open,
            length ``2 + 2 * n_spatial_dims``.
        tile: Preferred tiling per spatial dimension, e.g. ``(4, 4)`` for 2-d.
        local_backend: Attention type for intra-cortex connections (default ``"local_attention"``).
        shared_cache: Whether regions in this cortex share a KV cache at inference.
    """

    name: str
    bounds: Tuple[int, ...] = (0, 1, 0, 1, 0, 1)
    tile: Tuple[int, ...] = (4, 4)
    local_backend: str = "local_attention"
    shared_cache: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"CortexSpec.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.bounds, (tuple, list)):
            raise SchemaError(f"cortex {self.name!r}: bounds must be a tuple of ints (t0, t1, s0_lo, s0_hi, ...), "
                              f"got {type(self.bounds).__name__} {self.bounds!r}")
        if not isinstance(self.tile, (tuple, list)):
            raise SchemaError(f"cortex {self.name!r}: tile must be a tuple of ints, one per spatial dim "
                              f"(e.g. tile=(4, 4)), got {type(self.tile).__name__} {self.tile!r}")
        b = tuple(self.bounds)
        if len(b) < 2 or len(b) % 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in b):
            raise SchemaError(f"cortex {self.name!r}: bounds must be an even-length tuple of ints "
                              f"(t0, t1, s0_lo, s0_hi, ...), got {self.bounds!r}")
        for k in range(0, len(b), 2):
            if b[k] < 0 or b[k + 1] <= b[k]:
                raise SchemaError(f"cortex {self.name!r}: bounds pair {b[k]}..{b[k + 1]} must satisfy 0 <= lo < hi")
        t = tuple(self.tile)
        if not t or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in t):
            raise SchemaError(f"cortex {self.name!r}: tile must be a non-empty tuple of ints >= 1, got {self.tile!r}")
        if len(b) > 2 and len(t) != (len(b) - 2) // 2:
            raise SchemaError(f"cortex {self.name!r}: tile {t} has {len(t)} dims but bounds have "
                              f"{(len(b) - 2) // 2} spatial dims; give one tile size per spatial dim")
        if not isinstance(self.local_backend, str) or not self.local_backend:
            raise SchemaError(f"cortex {self.name!r}: local_backend must be an attention type name "
                              f"(e.g. 'local_attention'), got {self.local_backend!r}")
        if not isinstance(self.shared_cache, bool):
            raise SchemaError(f"cortex {self.name!r}: shared_cache must be True or False, got {self.shared_cache!r}")
        object.__setattr__(self, "bounds", b)
        object.__setattr__(self, "tile", t)


class CortexRegistry:
    """Manages cortex assignments; a region belongs to at most one cortex."""

    def __init__(self) -> None:
        self._cortices: Dict[str, CortexSpec] = {}
        self._assign: Dict[str, str] = {}

    def register(self, spec: CortexSpec) -> None:
        """Register a cortex.  Raises ``SchemaError`` (a ValueError) on a duplicate name."""
        if not isinstance(spec, CortexSpec):
            raise CanvasTypeError(f"CortexRegistry.register needs a CortexSpec, got {type(spec).__name__}")
        if spec.name in self._cortices:
            raise SchemaError(f"cortex {spec.name!r} is already registered; unregister it first or pick another name")
        self._cortices[spec.name] = spec

    def unregister(self, name: str) -> None:
        """Remove a cortex and all its region assignments."""
        self._need(name)
        del self._cortices[name]
        self._assign = {r: c for r, c in self._assign.items() if c != name}

    def _need(self, name: str) -> CortexSpec:
        if name not in self._cortices:
            raise UnknownCortexError(f"cortex {name!r} is not registered (known: {sorted(self._cortices)}); "
                                     "register a CortexSpec with that name first")
        return self._cortices[name]

    def assign(self, region: str, cortex_name: str) -> None:
        """Assign a region to a cortex.

        Raises :class:`UnknownCortexError` (a ``KeyError``) if the cortex is unknown and ``SchemaError``
        (a ValueError) if the region is already in a different cortex.
        """
        _region_name(region, "CortexRegistry.assign")
        self._need(cortex_name)
        cur = self._assign.get(region)
        if cur is not None and cur != cortex_name:
            raise SchemaError(f"region {region!r} is already assigned to cortex {cur!r}; "
                              f"unassign it before assigning it to {cortex_name!r}")
        self._assign[region] = cortex_name

    def unassign(self, region: str) -> None:
        """Remove a region's cortex assignment.

        Raises :class:`UnassignedRegionError` (a ``CanvasError`` and a ``KeyError``, as
        canvas-engineering raised ``KeyError``) when the region has no assignment.
        """
        if region not in self._assign:
            raise UnassignedRegionError(
                f"region {region!r} has no cortex assignment (assigned regions: {sorted(self._assign)}); "
                "check the name, or skip unassign for regions that were never assigned")
        del self._assign[region]

    def cortex_for(self, region: str) -> Optional[CortexSpec]:
        """The cortex assigned to a region, or None."""
        name = self._assign.get(region)
        return None if name is None else self._cortices[name]

    def regions_in(self, cortex_name: str) -> List[str]:
        """All regions assigned to a cortex, sorted alphabetically."""
        self._need(cortex_name)
        return sorted(r for r, c in self._assign.items() if c == cortex_name)

    def same_cortex(self, a: str, b: str) -> bool:
        """True when both regions are assigned to the same cortex."""
        ca = self._assign.get(a)
        return ca is not None and ca == self._assign.get(b)

    # -- compiler hooks ---------------------------------------------------------------------
    def local_fn(self, src: str, dst: str) -> Optional[str]:
        """The zone's ``local_backend`` when ``src`` and ``dst`` are in the same cortex, else None."""
        return self.cortex_for(src).local_backend if self.same_cortex(src, dst) else None  # type: ignore[union-attr]

    def tile_mask(self, src: str, dst: str) -> Any:
        """``MaskSpec(kind="tile", tile_shape=zone.tile)`` when ``src`` and ``dst`` share a cortex,
        else None."""
        if not self.same_cortex(src, dst):
            return None
        from canvas_core.schema.masks import MaskSpec
        return MaskSpec(kind="tile", tile_shape=self.cortex_for(src).tile)  # type: ignore[union-attr]

    def resolve_fn(self, conn: Any, default: Optional[str] = None) -> Optional[str]:
        """Attention type for ``conn``: its explicit ``fn``; else the zone's ``local_backend``
        when src and dst share a cortex; else ``default``."""
        fn = getattr(conn, "fn", None)
        if fn is not None:
            return fn
        if self.same_cortex(conn.src, conn.dst):
            return self.cortex_for(conn.src).local_backend  # type: ignore[union-attr]
        return default

    def mask_for(self, conn: Any) -> Any:
        """``MaskSpec(kind="tile", tile_shape=zone.tile)`` for an intra-zone connection without
        its own mask; the connection's mask (possibly None) otherwise."""
        own = getattr(conn, "mask", None)
        if own is not None or not self.same_cortex(conn.src, conn.dst):
            return own
        from canvas_core.schema.masks import MaskSpec
        return MaskSpec(kind="tile", tile_shape=self.cortex_for(conn.src).tile)  # type: ignore[union-attr]

    @property
    def cortex_names(self) -> List[str]:
        """All registered cortex names, sorted."""
        return sorted(self._cortices)

    @property
    def n_cortices(self) -> int:
        return len(self._cortices)

    @property
    def n_assigned(self) -> int:
        """Number of regions with a cortex assignment."""
        return len(self._assign)

    def summary(self) -> str:
        """Human-readable summary."""
        lines = [f"CortexRegistry ({self.n_cortices} cortices, {self.n_assigned} regions assigned)"]
        for name in self.cortex_names:
            s = self._cortices[name]
            lines.append(f"  {name}: bounds={s.bounds} tile={s.tile} backend={s.local_backend} "
                         f"shared_cache={s.shared_cache} regions={self.regions_in(name)}")
        return "\n".join(lines)

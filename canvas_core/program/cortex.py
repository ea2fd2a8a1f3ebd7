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

Example (two sensor regions in one zone of a 2-d canvas)::

    zones = CortexRegistry()
    zones.register(CortexSpec("retina", bounds=(0, 2, 0, 16, 0, 16), tile=(8, 8)))
    for region in ("rgb", "flow"):
        zones.assign(region, "retina")
    assert zones.same_cortex("flow", "rgb") and zones.cortex_for("rgb").tile == (8, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import (CanvasTypeError, ProgramError, SchemaError, ShapeError, UnknownRegionError,
                                 closest)

__all__ = ["CortexSpec", "CortexRegistry", "UnknownCortexError", "UnassignedRegionError", "check_cortex_layout"]


class UnknownCortexError(UnknownRegionError, KeyError):
    """A cortex name that is not registered (also a ``KeyError``, as in canvas-engineering)."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return Exception.__str__(self)


class UnassignedRegionError(UnknownRegionError, KeyError):
    """A region with no cortex assignment was unassigned (also a ``KeyError``)."""

    def __str__(self) -> str:
        return Exception.__str__(self)


def _region_name(region: Any, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(region, str) or not (region or allow_empty):
        raise CanvasTypeError(f"{where}: region must be a non-empty region name (str), got "
                              f"{type(region).__name__} {region!r}")
    return region


def _connection(conn: Any, where: str) -> Any:
    if not (hasattr(conn, "src") and hasattr(conn, "dst")):
        raise CanvasTypeError(f"CortexRegistry.{where} needs a Connection (with src and dst), got "
                              f"{type(conn).__name__} {conn!r:.60}")
    return conn


@dataclass(frozen=True)
class CortexSpec:
    """A zone of the canvas, by name, with how attention inside it should be tiled and run.

    Args:
        name: the zone's name; a registry holds one zone per name.
        bounds: half-open ranges, time first: ``(t0, t1, s0_lo, s0_hi, s1_lo, s1_hi, ...)``,
            so ``2 + 2 * (number of spatial axes)`` ints.
        tile: the tile size along each spatial axis, e.g. ``(4, 4)`` on a 2-d canvas.
        local_backend: the attention type given to connections that stay inside the zone
            and name none themselves (``"local_attention"`` unless set).
        shared_cache: whether the zone's regions use one key/value cache when generating.
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
    """Zones by name and which zone each region is in (at most one per region)."""

    def __init__(self) -> None:
        self._cortices: Dict[str, CortexSpec] = {}
        self._assign: Dict[str, str] = {}

    def register(self, spec: CortexSpec) -> None:
        """Add the zone ``spec``; a name already taken is a ``SchemaError`` (a ValueError)."""
        if not isinstance(spec, CortexSpec):
            raise CanvasTypeError(f"CortexRegistry.register needs a CortexSpec, got {type(spec).__name__}")
        if spec.name in self._cortices:
            raise SchemaError(f"cortex {spec.name!r} is already registered; unregister it first or pick another name")
        self._cortices[spec.name] = spec

    def unregister(self, name: str) -> None:
        """Drop the zone ``name``; the regions that were in it are left without a zone."""
        self._need(name)
        del self._cortices[name]
        self._assign = {r: c for r, c in self._assign.items() if c != name}

    def _need(self, name: str) -> CortexSpec:
        if not isinstance(name, str):
            raise CanvasTypeError(f"a cortex is named by a string, got {type(name).__name__} {name!r:.60}")
        if name not in self._cortices:
            raise UnknownCortexError(f"cortex {name!r} is not registered (known: {sorted(self._cortices)}); "
                                     "register a CortexSpec with that name first")
        return self._cortices[name]

    def assign(self, region: str, cortex_name: str) -> None:
        """Put ``region`` in the zone ``cortex_name`` (again in the same zone is a no-op).

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
        """Take ``region`` out of its zone.

        Raises :class:`UnassignedRegionError` (a ``CanvasError`` and a ``KeyError``, as
        canvas-engineering raised ``KeyError``) when the region has no assignment.
        """
        if _region_name(region, "CortexRegistry.unassign") not in self._assign:
            raise UnassignedRegionError(
                f"region {region!r} has no cortex assignment (assigned regions: {sorted(self._assign)}); "
                "check the name, or skip unassign for regions that were never assigned")
        del self._assign[region]

    def cortex_for(self, region: str) -> Optional[CortexSpec]:
        """The zone ``region`` is in, or None when it is in none."""
        name = self._assign.get(_region_name(region, "CortexRegistry.cortex_for", allow_empty=True))
        return None if name is None else self._cortices[name]

    def regions_in(self, cortex_name: str) -> List[str]:
        """Names of the regions in zone ``cortex_name``, in alphabetical order."""
        self._need(cortex_name)
        return sorted(r for r, c in self._assign.items() if c == cortex_name)

    def same_cortex(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are both in one zone (a region in no zone shares none)."""
        ca = self._assign.get(_region_name(a, "CortexRegistry.same_cortex", allow_empty=True))
        return ca is not None and ca == self._assign.get(_region_name(b, "CortexRegistry.same_cortex", allow_empty=True))

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
        fn = getattr(_connection(conn, "resolve_fn"), "fn", None)
        if fn is not None:
            return fn
        if self.same_cortex(conn.src, conn.dst):
            return self.cortex_for(conn.src).local_backend  # type: ignore[union-attr]
        return default

    def mask_for(self, conn: Any) -> Any:
        """``MaskSpec(kind="tile", tile_shape=zone.tile)`` for an intra-zone connection without
        its own mask; the connection's mask (possibly None) otherwise."""
        own = getattr(_connection(conn, "mask_for"), "mask", None)
        if own is not None or not self.same_cortex(conn.src, conn.dst):
            return own
        from canvas_core.schema.masks import MaskSpec
        return MaskSpec(kind="tile", tile_shape=self.cortex_for(conn.src).tile)  # type: ignore[union-attr]

    @property
    def cortex_names(self) -> List[str]:
        """The zone names, in alphabetical order."""
        return sorted(self._cortices)

    @property
    def n_cortices(self) -> int:
        """How many zones are registered."""
        return len(self._cortices)

    @property
    def n_assigned(self) -> int:
        """How many regions are in some zone."""
        return len(self._assign)

    def summary(self) -> str:
        """canvas-engineering's text: the counts, then each zone with its tiling, backend, cache
        and regions."""
        from canvas_core._reprs import cortex_summary

        return cortex_summary(self)

    def __repr__(self) -> str:
        return f"CortexRegistry(cortices={self.n_cortices}, assigned={self.n_assigned})"


def check_cortex_layout(registry: Any, layout: Any, connections: List[Any]) -> None:
    """Refuse a registry that does not fit the compiled layout, before its tiling is applied.

    * ``ProgramError``: a region assigned to a zone is no region of ``layout`` (a misspelt
      ``assign`` would otherwise do nothing), listing the unknown and the known names (closest
      match first);
    * ``ShapeError``: a zone whose tiling some of ``connections`` (intra-zone, no mask of their
      own) would take has a ``tile`` of another rank than the canvas, naming the zone, its regions
      and a tile of the right rank.
    """
    if not isinstance(registry, CortexRegistry):
        raise CanvasTypeError(f"ProgramCompiler.compile: cortex must be a CortexRegistry, got {type(registry).__name__}")
    known = list(layout.regions)
    unknown = sorted(r for r in registry._assign if r not in layout.regions)
    if unknown:
        first = closest(unknown[0], known, cutoff=0.6)
        order = ([first] if first else []) + [r for r in known if r != first]
        raise ProgramError(
            f"CortexRegistry: region(s) {unknown} are assigned to a cortex but are no region of the compiled "
            f"layout (regions: {order[:20]}{' ...' if len(order) > 20 else ''}); fix the name in assign() "
            "or unassign it")
    ndim = len(layout.spatial_shape)
    used = {registry._assign[c.src] for c in connections
            if getattr(c, "mask", None) is None and registry.same_cortex(c.src, c.dst)}
    for name in sorted(used):
        zone = registry._cortices[name]
        if len(zone.tile) != ndim:
            raise ShapeError(
                f"cortex {name!r} (regions {registry.regions_in(name)}): tile {zone.tile} has {len(zone.tile)} "
                f"dims but the canvas has {ndim} spatial dims (spatial_shape={tuple(layout.spatial_shape)}); "
                f"register the zone with one tile size per spatial dim, e.g. tile={(4,) * ndim}")

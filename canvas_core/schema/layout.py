"""`CanvasLayout`: the ``(T, *spatial_shape)`` grid and its named regions (pure Python)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from canvas_core.errors import CanvasTypeError, RegionError, SchemaError, UnknownRegionError, did_you_mean
from canvas_core.schema._region_dict import RegionDict, box_runs, change_counts
from canvas_core.schema._validate import (as_bool, as_int, check_distinct_after_normalization, check_name,
                                          check_ordered, normalization_hint)
from canvas_core.schema.limits import check_size
from canvas_core.schema.region import RegionSpec

__all__ = ["CanvasLayout"]

RegionLike = Union[RegionSpec, Tuple[int, ...]]


# CanvasLayout._validated, what _seal last checked (compared per query, O(1)): (regions dict, its
# RegionDict.version, its length, T, spatial_shape, allow_overlap, d_model, H, W). A plain tuple read
# by these indices, so a pickle names no class an older canvas-core lacks (and loads older ones).
_REGIONS, _VERSION, _N_REGIONS, _GEOMETRY, _H = 0, 1, 2, 3, 7


@dataclass(eq=True)
class CanvasLayout:
    """Declarative canvas geometry: a ``(T, *spatial_shape)`` grid of ``d_model`` vectors.

    Positions are numbered row-major: position ``(t, s0, s1, ...)`` has flat index
    ``t * prod(spatial_shape) + ravel(s0, s1, ...)``.

    Examples::

        CanvasLayout(T=5, H=8, W=8, d_model=256, regions={"visual": (0, 5, 0, 6, 0, 6)})
        CanvasLayout(T=4, spatial_shape=(32,), d_model=64, regions={"tokens": (0, 4, 0, 32)})
        CanvasLayout(T=2, spatial_shape=(4, 4, 4), d_model=128, regions={...})

    Args:
        T: Number of canvas frames.
        d_model: Width of every position's vector.
        spatial_shape: Spatial grid, any number of dimensions. ``H``/``W`` is the 2-d shorthand.
        regions: Name -> ``RegionSpec`` or raw bounds tuple (wrapped as ``RegionSpec(bounds)``).
        t_current: Frames ``t >= t_current`` are outputs (future); earlier ones are context.
        allow_overlap: Regions may share positions. Without it an overlap is still accepted
            (as in canvas-engineering) but warned about, since it is usually a typo in the
            bounds.

    ``regions`` may be changed after construction (``layout.regions["a"] = RegionSpec(...)``,
    ``update``, ``del``; as in canvas-engineering), and so may ``T`` and ``spatial_shape``. The next
    region query (``region_spec``, ``region_indices``, ``region_at``, a mask, a plan, a canvas) checks
    the changed layout as the constructor does (a raw bounds tuple put in is refused: only the
    constructor wraps tuples); the sizes (``num_positions``, ...) check only the types of ``T`` and
    ``spatial_shape``. A dict assigned to ``regions`` is copied; ``d_model`` is checked when assigned;
    ``H`` / ``W`` may not disagree with ``spatial_shape``. ``revision`` grows with every checked
    change (:mod:`canvas_core.schema.staleness`: when a ``dict.__setitem__`` replacement is seen).
    """

    T: int
    d_model: int
    spatial_shape: Tuple[int, ...] = ()
    regions: Dict[str, RegionSpec] = field(default_factory=dict)
    t_current: int = 0
    H: Optional[int] = None
    W: Optional[int] = None
    allow_overlap: bool = False
    _revision, _traced = 0, None  # not fields; class defaults read by schema/staleness.py's traced check

    def __post_init__(self) -> None:
        self.T = as_int(self.T, "CanvasLayout T")
        if self.T < 1:
            raise SchemaError(f"CanvasLayout T must be >= 1 frame, got {self.T}")
        self.d_model = as_int(self.d_model, "CanvasLayout d_model")
        if self.d_model < 1:
            raise SchemaError(f"CanvasLayout d_model must be >= 1, got {self.d_model}")
        self.spatial_shape = self._resolve_spatial_shape()
        check_size("width", self.d_model, "CanvasLayout d_model")
        check_size("positions", self.T * math.prod(self.spatial_shape),
                   f"CanvasLayout positions T*prod(spatial_shape) = {self.T}*{'*'.join(map(str, self.spatial_shape)) or 1}")
        self.t_current = as_int(self.t_current, "CanvasLayout t_current")
        if not 0 <= self.t_current <= self.T:
            raise SchemaError(f"CanvasLayout t_current={self.t_current} must lie in [0, T={self.T}]")
        self.allow_overlap = as_bool(self.allow_overlap, "CanvasLayout allow_overlap")
        if not isinstance(self.regions, Mapping):
            raise CanvasTypeError(
                f"CanvasLayout regions must be a dict of name -> RegionSpec or bounds tuple, got "
                f"{type(self.regions).__name__}"
            )
        check_size("regions", len(self.regions), "CanvasLayout number of regions",
                   "Declare fewer, larger regions (a region may cover many positions)")
        self.regions = RegionDict((name, self._wrap_region(name, spec)) for name, spec in self.regions.items())
        check_distinct_after_normalization(self.regions, "CanvasLayout")
        if not self.allow_overlap:
            self._check_no_overlap()
        self._seal()

    # --- changes after construction ----------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        # After construction: d_model is checked at once, a dict put in as regions is copied into a
        # counting one; H / W are compared at the next query (CE code sets them before spatial_shape).
        if "_validated" in self.__dict__:
            if name == "d_model":
                value = as_int(value, "CanvasLayout d_model")
                if value < 1:
                    raise SchemaError(f"CanvasLayout d_model was set to {value}; it must be >= 1")
                check_size("width", value, "CanvasLayout d_model")
            elif name == "regions" and isinstance(value, Mapping) and value is not self.__dict__.get("regions"):
                value = RegionDict(value)  # a copy (never another layout's dict), checked at the next query
                object.__setattr__(self, "_traced", None)
        object.__setattr__(self, name, value)

    def _seal(self) -> None:
        """Record the state just validated; a new, empty runs cache (a shallow copy keeps the old)."""
        self._runs_cache: Dict[Tuple[str, int], List[Tuple[int, int]]] = {}
        regions = self.regions
        # what a module built from it copies (t_current moves no index); staleness stamps it
        content = (self.T, self.spatial_shape, tuple(regions.items()), self.d_model)
        if content != self.__dict__.get("_content", content):
            self._revision = self.__dict__.get("_revision", 0) + 1
        self._content = content
        self._specs = dict(regions)  # name -> the checked RegionSpec object (see region_spec)
        self._validated = (regions, regions.version, len(regions), self.T, self.spatial_shape, self.allow_overlap,
                           self.d_model, self.H, self.W)
        self._t_checked = self.t_current
        self._traced = change_counts(regions)

    def __getstate__(self) -> Dict[str, Any]:  # a copy or a pickle does not share the regions' __dict__
        return {k: v for k, v in self.__dict__.items() if k != "_traced"}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # link the copy's own regions' change count, as _seal does, so the traced check stays O(1)
        self.__dict__.update(state)
        seen = state.get("_validated")
        if isinstance(seen, tuple) and seen and seen[_REGIONS] is state.get("regions"):
            object.__setattr__(self, "_traced", change_counts(seen[_REGIONS]))

    def _checked_regions(self) -> Dict[str, RegionSpec]:
        """The regions, re-validated first when they or the geometry changed (O(1) when not)."""
        regions = self.regions
        seen = self.__dict__.get("_validated")
        if (seen is None or seen[_REGIONS] is not regions or seen[_VERSION] != getattr(regions, "version", None)
                or seen[_N_REGIONS] != len(regions)  # an entry added or removed by dict.__setitem__ / __delitem__
                or seen[_GEOMETRY:] != (self.T, self.spatial_shape, self.allow_overlap, self.d_model, self.H, self.W)):
            self._revalidate()
        elif self.t_current != self.__dict__.get("_t_checked"):  # moves no region: its range only
            self._check_t_current()
            self._t_checked = self.t_current
        return self.regions

    def _stamp(self) -> Tuple[int, Tuple[Any, ...]]:
        """``(revision, content)`` for a module build: every region compared (``dict.__setitem__``)."""
        self._checked_regions()
        specs = self.__dict__.get("_specs", {})
        if any(specs.get(name) is not spec for name, spec in self.regions.items()):
            self._revalidate()
        return self.revision, self._content

    @property
    def revision(self) -> int:
        """Grows whenever the checked ``T``, ``spatial_shape``, ``d_model`` or a region changes (not
        ``t_current``, nor a change undone before the next query); modules record it with the
        geometry (:mod:`canvas_core.schema.staleness`). O(1) when nothing changed."""
        self._checked_regions()
        return self.__dict__.get("_revision", 0)

    def _check_t_current(self) -> None:
        self.t_current = as_int(self.t_current, "CanvasLayout t_current")
        if not 0 <= self.t_current <= self.T:
            raise SchemaError(f"CanvasLayout t_current={self.t_current} must lie in [0, T={self.T}]")

    def _revalidate(self) -> None:
        """Check a layout changed after construction, with the constructor's rules."""
        self.T = as_int(self.T, "CanvasLayout T")
        if self.T < 1:
            raise SchemaError(f"CanvasLayout T was changed to {self.T}; it must be >= 1 frame")
        shape, seen = self.spatial_shape, (*self.__dict__.get("_validated", ()), None, None, None)  # older: shorter
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
            raise CanvasTypeError(f"CanvasLayout spatial_shape was changed to {shape!r}; it must be a tuple of ints")
        check_ordered(shape, "CanvasLayout spatial_shape", "(8, 8)")
        shape = tuple(as_int(v, "CanvasLayout spatial_shape entry") for v in shape)
        if any(v < 1 for v in shape):
            raise SchemaError(f"CanvasLayout spatial_shape was changed to {shape}; every size must be >= 1")
        self.spatial_shape = shape
        for k, name in enumerate(("H", "W")):  # read back as in the constructor: set alone, they disagree
            want = shape[k] if len(shape) > k else None
            if getattr(self, name) not in (want, seen[_H + k]):
                raise SchemaError(
                    f"CanvasLayout {name}={getattr(self, name)!r} disagrees with spatial_shape={shape!r} (its "
                    f"entry {k}): {name} is read back from spatial_shape; assign layout.spatial_shape too (or "
                    "instead), or build a new CanvasLayout")
            object.__setattr__(self, name, want)
        check_size("positions", self.T * math.prod(shape),
                   f"CanvasLayout positions T*prod(spatial_shape) = {self.T}*{'*'.join(map(str, shape)) or 1}")
        self._check_t_current()
        self.allow_overlap = as_bool(self.allow_overlap, "CanvasLayout allow_overlap")
        regions = self.regions
        if not isinstance(regions, Mapping):
            raise CanvasTypeError(
                f"CanvasLayout regions was replaced by a {type(regions).__name__}; it must be a dict of "
                "name -> RegionSpec (or build a new CanvasLayout)")
        # the checks (and the wording) of the compiler's lowering, which re-checks a layout too
        check_size("regions", len(regions), "CanvasLayout number of regions", "Use fewer regions")
        checked = RegionDict()
        for name, spec in regions.items():
            if not isinstance(spec, RegionSpec):
                raise CanvasTypeError(
                    f"CanvasLayout region {name!r} is a {type(spec).__name__} ({spec!r:.80}), not a RegionSpec: it "
                    "was put into layout.regions after the layout was built, so its bounds were never checked; "
                    "build a new CanvasLayout(..., regions={...}) that declares it")
            try:
                checked[name] = self._wrap_region(name, spec)
            except (RegionError, CanvasTypeError) as exc:
                raise type(exc)(f"{exc} (layout.regions was changed after the CanvasLayout was built; "
                                "fix that entry or build a new CanvasLayout)") from None
        check_distinct_after_normalization(checked, "CanvasLayout (changed after it was built)")
        if type(regions) is not RegionDict:  # a replaced dict: hold a counting one from now on
            object.__setattr__(self, "regions", checked)
        if not self.allow_overlap:
            self._check_no_overlap()
        self._seal()

    # --- construction helpers ---------------------------------------------------------------
    def _resolve_spatial_shape(self) -> Tuple[int, ...]:
        shape = self.spatial_shape
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
            raise CanvasTypeError(f"CanvasLayout spatial_shape must be a tuple of ints, got {shape!r}")
        check_ordered(shape, "CanvasLayout spatial_shape", "(8, 8)")
        shape = tuple(as_int(s, "CanvasLayout spatial_shape entry") for s in shape)
        if self.H is not None or self.W is not None:
            H = None if self.H is None else as_int(self.H, "CanvasLayout H")
            W = None if self.W is None else as_int(self.W, "CanvasLayout W")
            if shape:
                # both given (dataclasses.replace passes both): they must say the same thing
                for axis, got, want in (("H", H, shape[0]), ("W", W, shape[1] if len(shape) > 1 else None)):
                    if got is not None and got != want:
                        raise SchemaError(
                            f"CanvasLayout: {axis}={got} disagrees with spatial_shape={shape} (Cannot "
                            "specify both spatial_shape and H/W unless they agree) "
                            f"({axis} is spatial_shape[{'0' if axis == 'H' else '1'}]); give one of them"
                        )
            else:  # the 2-d shorthand; a missing one is 1, as in canvas-engineering
                shape = (1 if H is None else H, 1 if W is None else W)
        for i, s in enumerate(shape):
            if s < 1:
                raise SchemaError(f"CanvasLayout spatial dimension {i} must be >= 1, got {s}")
        # H / W read back as the first two spatial sizes, whatever the rank (canvas-engineering's rule)
        self.H = shape[0] if len(shape) >= 1 else None
        self.W = shape[1] if len(shape) >= 2 else None
        return shape

    def _wrap_region(self, name: Any, spec: Any) -> RegionSpec:
        check_name(name, "CanvasLayout region name")  # refuses a name that prints like another
        try:
            if isinstance(spec, RegionSpec):
                region = spec
            elif isinstance(spec, (tuple, list)):
                region = RegionSpec(bounds=tuple(spec))
            else:
                raise CanvasTypeError(
                    f"must be a RegionSpec or a bounds tuple, got {type(spec).__name__}"
                )
        except (SchemaError, CanvasTypeError) as exc:
            raise type(exc)(f"region {name!r}: {exc}") from None
        n_sp = len(self.spatial_shape)
        if region.n_spatial_dims != n_sp:
            raise RegionError(
                f"region {name!r}: Bounds length {len(region.bounds)} != expected {2 + 2 * n_sp}: "
                f"bounds {region.bounds} have {region.n_spatial_dims} spatial "
                f"dimension(s) but the canvas has {n_sp} (spatial_shape={self.spatial_shape}); "
                f"give {2 + 2 * n_sp} numbers: (t0, t1" + "".join(f", s{i}_lo, s{i}_hi" for i in range(n_sp)) + ")"
                + ("" if n_sp else "; or, if the canvas should have a spatial grid, give the CanvasLayout "
                   "spatial_shape=(...) or H= and W= (without them it has no spatial axis)")
            )
        dims = (self.T, *self.spatial_shape)
        axes = ["t", "h", "w"] if n_sp == 2 else ["t"] + [f"s{i}" for i in range(n_sp)]
        for k, size in enumerate(dims):
            lo, hi = region.bounds[2 * k], region.bounds[2 * k + 1]
            if hi > size:
                raise RegionError(
                    f"region {name!r}: bounds {region.bounds} leave the canvas on axis {axes[k]} "
                    f"({lo}, {hi}) but the canvas has {size} there; shrink the region or grow the canvas"
                )
        return region

    def _check_no_overlap(self) -> None:
        """Warn (once per layout) when two regions share positions: canvas-engineering accepts
        it and so does canvas-core (a shared position is packed with the first region that
        declares it), but it is usually a typo in the bounds.  O(n log n) in the regions
        (:func:`canvas_core.schema.overlap.first_overlap`)."""
        from canvas_core.schema.overlap import first_overlap

        items = list(self.regions.items())
        pair = first_overlap([spec.bounds for _, spec in items])
        if pair is None:
            return
        import warnings

        (na, a), (nb, b) = items[pair[0]], items[pair[1]]
        warnings.warn(
            f"regions {na!r} {a.bounds} and {nb!r} {b.bounds} overlap: their shared positions "
            "belong to both (as in canvas-engineering). If that is a typo, move one of them; if "
            "sharing positions is intended, pass allow_overlap=True to say so (and silence this)",
            UserWarning, stacklevel=4)

    # --- sizes -----------------------------------------------------------------------------------
    def _sizes(self) -> Tuple[int, Tuple[int, ...]]:
        """``(T, spatial_shape)``, only their types checked: no region or ``t_current`` is read, so a
        layout mid-edit has sizes (as in canvas-engineering) and torch.compile guards on no t_current."""
        T, shape = self.T, self.spatial_shape
        if type(T) is not int:
            T = as_int(T, "CanvasLayout T")
        if type(shape) is not tuple or not all(type(v) is int for v in shape):
            if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
                raise CanvasTypeError(f"CanvasLayout spatial_shape was changed to {shape!r}; it must be a tuple of ints")
            shape = tuple(as_int(v, "CanvasLayout spatial_shape entry") for v in shape)
        return T, shape

    @property
    def n_spatial_dims(self) -> int:
        return len(self._sizes()[1])

    @property
    def spatial_volume(self) -> int:
        return math.prod(self._sizes()[1])

    @property
    def num_positions(self) -> int:
        """``T * prod(spatial_shape)`` (their types checked; the regions are not: see ``_sizes``)."""
        T, shape = self._sizes()
        return T * math.prod(shape)

    @property
    def region_names(self) -> Tuple[str, ...]:
        """Region names in declaration order."""
        return tuple(self._checked_regions())

    def flat_index(self, t: int, *spatial_coords: int) -> int:
        """Flat index of position ``(t, s0, s1, ...)``."""
        if len(spatial_coords) != self.n_spatial_dims:
            raise SchemaError(
                f"flat_index needs {self.n_spatial_dims} spatial coordinate(s) after t, got {len(spatial_coords)}"
            )
        idx = 0
        for k, (c, size) in enumerate(zip((t, *spatial_coords), (self.T, *self.spatial_shape))):
            c = as_int(c, "flat_index coordinate")
            if not 0 <= c < size:
                raise SchemaError(f"flat_index: coordinate {k} = {c} outside [0, {size})")
            idx = idx * size + c
        return idx

    # --- regions ---------------------------------------------------------------------------------
    def region_spec(self, name: str) -> RegionSpec:
        """The ``RegionSpec`` of a named region."""
        regions = self._checked_regions()
        try:
            spec = regions[name]
        except (KeyError, TypeError):
            raise UnknownRegionError(
                f"unknown region {name!r}; the layout declares {sorted(self.regions)}."
                + (normalization_hint(name, self.regions) or did_you_mean(name, self.regions))
            ) from None
        if spec is not self.__dict__.get("_specs", {}).get(name):  # replaced by dict.__setitem__
            self._revalidate()
            spec = self.regions[name]
        return spec

    def region_size(self, name: str) -> Tuple[int, ...]:
        """``(t_extent, s0_extent, s1_extent, ...)``."""
        return self.region_spec(name).extent

    def region_numel(self, name: str) -> int:
        return self.region_spec(name).numel

    def region_timesteps(self, name: str) -> List[int]:
        """Absolute canvas frames the region occupies."""
        spec = self.region_spec(name)
        return list(range(spec.t0, spec.t1))

    def region_runs(self, name: str, t_abs: int) -> List[Tuple[int, int]]:
        """Half-open ``(start, stop)`` runs of flat indices of the region at frame ``t_abs``.

        Runs are ascending and maximal (adjacent rows that are contiguous merge); empty when
        the region has no position at that frame.
        """
        t_abs = as_int(t_abs, f"region {name!r}: frame t_abs")
        spec = self.region_spec(name)  # first: a changed layout (or region) starts a new cache
        key = (name, t_abs)
        cached = self._runs_cache.get(key)
        if cached is not None:
            return list(cached)
        if not spec.t0 <= t_abs < spec.t1:
            runs: List[Tuple[int, int]] = []
        else:
            runs = box_runs(spec.spatial_bounds, self.spatial_shape, t_abs * self.spatial_volume)
        self._runs_cache[key] = runs
        return list(runs)

    def region_indices_at_t(self, name: str, t_abs: int) -> List[int]:
        """Flat indices of the region at absolute frame ``t_abs`` (empty outside its frames)."""
        return [i for a, b in self.region_runs(name, t_abs) for i in range(a, b)]

    def region_indices(self, name: str) -> List[int]:
        """Flat indices of the region, ascending (t-major)."""
        spec = self.region_spec(name)
        return [i for t in range(spec.t0, spec.t1) for a, b in self.region_runs(name, t) for i in range(a, b)]

    def region_slice_info(self, name: str) -> Dict[str, Any]:
        """Geometry summary of a region: frames, spatial bounds, size, period."""
        spec = self.region_spec(name)
        return {
            "t0": spec.t0, "t1": spec.t1, "spatial_bounds": spec.spatial_bounds,
            "extent": spec.extent, "numel": spec.numel, "period": spec.period,
        }

    def region_at(self, flat_index: int) -> List[str]:
        """Names of the regions containing a flat position (empty when uncovered)."""
        idx = as_int(flat_index, "region_at index")
        regions = self._checked_regions()
        if not 0 <= idx < self.num_positions:
            raise SchemaError(f"region_at: flat index {idx} outside the canvas [0, {self.num_positions})")
        t, rem = divmod(idx, self.spatial_volume)
        coords = []
        for size in reversed(self.spatial_shape):
            rem, c = divmod(rem, size)
            coords.append(c)
        coords = [t, *reversed(coords)]
        return [
            n for n, s in regions.items()
            if all(s.bounds[2 * k] <= c < s.bounds[2 * k + 1] for k, c in enumerate(coords))
        ]

    def output_mask(self) -> List[int]:
        """Flat indices of output frames (``t >= t_current``) over the whole canvas."""
        return list(range(self.t_current * self.spatial_volume, self.num_positions))

    def loss_weight_mask(self, device: Any = "cpu"):
        """Per-position loss weights, a ``(N,)`` float tensor (imports torch).

        Positions of ``is_output`` regions get the region's ``loss_weight``; other and uncovered
        positions get 0; overlapping regions add up.
        """
        from canvas_core.runtime.delegates import layout_loss_weight_mask  # torch lives in the runtime

        self._checked_regions()
        return layout_loss_weight_mask(self, device)

    # --- time ----------------------------------------------------------------------------------
    def real_frame(self, name: str, canvas_t: int) -> int:
        """Real-world frame of canvas frame ``canvas_t`` of a region: ``canvas_t * period``."""
        return as_int(canvas_t, "real_frame canvas_t") * self.region_spec(name).period

    def canvas_frame(self, name: str, real_t: int) -> Optional[int]:
        """Canvas frame of a region holding real frame ``real_t``; None when not aligned to its
        period or outside the frames the region occupies."""
        spec = self.region_spec(name)
        real_t = as_int(real_t, "canvas_frame real_t")
        if real_t % spec.period:
            return None
        t = real_t // spec.period
        return t if spec.t0 <= t < spec.t1 else None

    # --- conveniences ----------------------------------------------------------------------------
    def summary(self) -> str:
        """Human-readable table of the regions."""
        regions = self._checked_regions()
        dims = "x".join(str(d) for d in (self.T, *self.spatial_shape))
        lines = [f"CanvasLayout {dims} (N={self.num_positions}, d_model={self.d_model}, t_current={self.t_current})"]
        covered = 0
        for name, s in regions.items():
            covered += s.numel
            flags = [f"period={s.period}"] if s.period != 1 else []
            if not s.is_output:
                flags.append("input")
            if s.loss_weight != 1.0:
                flags.append(f"loss_weight={s.loss_weight:g}")
            if s.family:
                flags.append(f"family={s.family}")
            lines.append(f"  {name:<20} {str(s.bounds):<28} {s.numel:>7} positions  {' '.join(flags)}")
        lines.append(f"  {'(uncovered)':<20} {'':<28} {max(0, self.num_positions - covered):>7} positions")
        return "\n".join(lines)


"""`RegionSpec`: what one named box of the canvas carries, and `transfer_distance`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from canvas_core.errors import CanvasTypeError, RegionError, SchemaError, did_you_mean
from canvas_core.schema._validate import (as_bool, as_float, as_int, as_str, caller_dict_key, check_family_name,
                                          check_ordered, is_int)

__all__ = ["RegionSpec", "transfer_distance", "DEFAULT_EMBEDDING_MODEL", "CARRIERS"]

DEFAULT_EMBEDDING_MODEL = "openai/text-embedding-3-small"
#: What dynamics govern a region (``RegionSpec.carrier``; shared with the program layer).
CARRIERS = frozenset({"deterministic", "diffusive", "filter", "memory", "residual"})


@dataclass(frozen=True)
class RegionSpec:
    """Declarative specification of one canvas region.

    Args:
        bounds: Half-open extent ``(t0, t1, s0_lo, s0_hi, s1_lo, s1_hi, ...)``: length
            ``2 + 2 * n_spatial_dims``. ``(t0, t1, h0, h1, w0, w1)`` for a ``(T, H, W)`` canvas.
        period: Real-world frames per canvas frame. Absolute canvas frame ``t`` of this region is
            real frame ``t * period`` (a region with ``period=4`` on frames 0..3 covers real
            frames 0, 4, 8, 12).
        is_output: Whether the region's positions take part in the loss.
        loss_weight: Relative loss weight of the region's positions (>= 0).
        semantic_type: Human-readable modality description (source of truth for the embedding).
        semantic_embedding: Frozen embedding ``(D,)`` of ``semantic_type`` by ``embedding_model``;
            finite. An all-zero one is kept (files and checkpoints written with one still load),
            but has no direction: :func:`transfer_distance` refuses it.
        embedding_model: Name of the embedder whose output ``semantic_embedding`` is.
        default_attn: Attention function type of connections leaving this region that set no ``fn``.
        carrier: Dynamics carrier (set by the program layer; ``"deterministic"`` by default).
        family: Region family (observation, state, memory, residual, action), set by the program layer.
    """

    bounds: Tuple[int, ...]
    period: int = 1
    is_output: bool = True
    loss_weight: float = 1.0
    semantic_type: Optional[str] = None
    semantic_embedding: Optional[Tuple[float, ...]] = None
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    default_attn: str = "cross_attention"
    carrier: str = "deterministic"
    family: Optional[str] = field(default=None)

    def __post_init__(self) -> None:
        try:
            self._check()
        except (SchemaError, CanvasTypeError) as exc:
            # written as {"slow": RegionSpec(...)} (or slow=RegionSpec(...)): name the region
            name = caller_dict_key()
            if name is None or f"region {name!r}" in str(exc):
                raise
            raise type(exc)(f"region {name!r}: {exc}") from None

    def _check(self) -> None:
        b = self.bounds
        if isinstance(b, (str, bytes)) or not hasattr(b, "__iter__"):
            raise CanvasTypeError(
                f"RegionSpec bounds must be a tuple (t0, t1, s0_lo, s0_hi, ...), got {b!r}"
            )
        check_ordered(b, "RegionSpec bounds", "(t0, t1, s0_lo, s0_hi, ...)")
        b = tuple(b)
        if not all(is_int(v) for v in b):
            raise CanvasTypeError(f"RegionSpec bounds must all be integers, got {b!r}")
        b = tuple(int(v) for v in b)
        if len(b) < 2 or len(b) % 2:
            raise RegionError(
                f"RegionSpec bounds {b!r} must have an even length >= 2: "
                "(t0, t1) followed by one (lo, hi) pair per spatial dimension"
            )
        axes = _axis_names(len(b) // 2 - 1)
        for k in range(0, len(b), 2):
            lo, hi = b[k], b[k + 1]
            if lo < 0:
                raise RegionError(f"RegionSpec bounds {b!r}: {axes[k // 2]} starts at {lo} < 0")
            if hi < lo:
                raise RegionError(
                    f"RegionSpec bounds {b!r} are inverted on {axes[k // 2]}: ({lo}, {hi}); "
                    f"write them as (lo, hi) with lo < hi"
                )
            if hi == lo:
                raise RegionError(
                    f"RegionSpec bounds {b!r} are empty on {axes[k // 2]}: ({lo}, {hi}) holds no "
                    f"position; bounds are half-open, use ({lo}, {lo + 1}) for one position"
                )
        object.__setattr__(self, "bounds", b)
        period = as_int(self.period, "RegionSpec period")
        if period < 1:
            raise RegionError(f"RegionSpec period must be >= 1 (canvas frames per update), got {period}")
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "is_output", as_bool(self.is_output, "RegionSpec is_output"))
        object.__setattr__(
            self, "loss_weight", as_float(self.loss_weight, "RegionSpec loss_weight", nonneg=True)
        )
        if self.semantic_type is not None:
            as_str(self.semantic_type, "RegionSpec semantic_type", allow_empty=True)
        emb = self.semantic_embedding
        if emb is not None:
            if isinstance(emb, (str, bytes)) or not hasattr(emb, "__iter__"):
                raise CanvasTypeError(
                    f"RegionSpec semantic_embedding must be a sequence of floats, got {emb!r}"
                )
            check_ordered(emb, "RegionSpec semantic_embedding", "(0.12, -0.5, ...)")
            emb = tuple(as_float(x, "RegionSpec semantic_embedding entry") for x in emb)
            object.__setattr__(self, "semantic_embedding", emb)
        as_str(self.embedding_model, "RegionSpec embedding_model")
        as_str(self.default_attn, "RegionSpec default_attn")
        as_str(self.carrier, "RegionSpec carrier")
        if self.carrier not in CARRIERS:
            raise RegionError(
                f"RegionSpec carrier {self.carrier!r} is unknown; use one of {sorted(CARRIERS)}."
                + did_you_mean(self.carrier, CARRIERS)
            )
        if self.family is not None:
            as_str(self.family, "RegionSpec family")
            check_family_name(self.family, "RegionSpec", RegionError)

    # --- geometry -------------------------------------------------------------------------
    @property
    def t0(self) -> int:
        return self.bounds[0]

    @property
    def t1(self) -> int:
        return self.bounds[1]

    @property
    def n_spatial_dims(self) -> int:
        return len(self.bounds) // 2 - 1

    @property
    def spatial_bounds(self) -> Tuple[Tuple[int, int], ...]:
        """``((s0_lo, s0_hi), (s1_lo, s1_hi), ...)``."""
        b = self.bounds
        return tuple((b[k], b[k + 1]) for k in range(2, len(b), 2))

    @property
    def extent(self) -> Tuple[int, ...]:
        """Size along each axis: ``(t1 - t0, s0_hi - s0_lo, ...)``."""
        b = self.bounds
        return tuple(b[k + 1] - b[k] for k in range(0, len(b), 2))

    @property
    def numel(self) -> int:
        return math.prod(self.extent)

    def with_(self, **changes: Any) -> "RegionSpec":
        """A copy with some fields changed (validated like a new spec)."""
        from dataclasses import replace

        return replace(self, **changes)


def _axis_names(n_spatial: int) -> list[str]:
    if n_spatial == 2:
        return ["t", "h", "w"]
    return ["t"] + [f"s{i}" for i in range(n_spatial)]


def transfer_distance(a: RegionSpec, b: RegionSpec) -> float:
    """Cosine distance between the semantic embeddings of two regions, in ``[0, 2]``.

    0 for the same direction, 1 for perpendicular embeddings, 2 for opposite ones. Both specs need a
    ``semantic_embedding`` of the same length from the same ``embedding_model``.
    """
    for name, spec in (("first", a), ("second", b)):
        if not isinstance(spec, RegionSpec):
            raise CanvasTypeError(f"transfer_distance: the {name} argument must be a RegionSpec, got {type(spec).__name__}")
        if spec.semantic_embedding is None:
            label = f" ({spec.semantic_type!r})" if spec.semantic_type else ""
            raise SchemaError(
                f"transfer_distance: the {name} region{label} has no semantic_embedding (Both RegionSpecs "
                "must have semantic_embedding set); fill it first (e.g. `canvas embed schema.json` or compute_semantic_embeddings)"
            )
    if a.embedding_model != b.embedding_model:
        raise SchemaError(
            f"transfer_distance: Embedding model mismatch: embeddings come from different models "
            f"({a.embedding_model!r} vs {b.embedding_model!r}); distances are only comparable within one embedding model"
        )
    ea, eb = a.semantic_embedding, b.semantic_embedding
    if len(ea) != len(eb):
        raise SchemaError(
            f"transfer_distance: Embedding dimension mismatch: embedding lengths differ ({len(ea)} vs "
            f"{len(eb)}) for model "
            f"{a.embedding_model!r}"
        )
    for name, spec in (("first argument (a)", a), ("second argument (b)", b)):
        _check_direction(name, spec)
    # scale each vector by its largest entry first: squares of huge entries would overflow
    sa, sb = max(abs(x) for x in ea), max(abs(x) for x in eb)
    ea = [x / sa for x in ea]
    eb = [x / sb for x in eb]
    na = math.sqrt(sum(x * x for x in ea))
    nb = math.sqrt(sum(x * x for x in eb))
    cos = sum(x * y for x, y in zip(ea, eb)) / (na * nb)
    return float(min(2.0, max(0.0, 1.0 - cos)))


def _check_direction(name: str, spec: RegionSpec) -> None:
    """Refuse an empty or all-zero ``semantic_embedding`` of the ``name`` argument:
    it has no direction to measure a cosine against."""
    emb = spec.semantic_embedding
    if emb and any(x != 0 for x in emb):
        return
    what = "is empty" if not emb else "is the zero vector"
    label = f"semantic_type {spec.semantic_type!r}" if spec.semantic_type else f"bounds {tuple(spec.bounds)}"
    raise SchemaError(
        f"transfer_distance: the semantic_embedding of the {name}, the region with {label}, {what}; "
        "it has no direction to compare. Run `canvas embed` on the schema to fill it, "
        "or leave semantic_embedding unset (None) for a region without one"
    )

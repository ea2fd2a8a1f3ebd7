"""`Field` (a latent region declared as a class attribute), `LayoutStrategy`, `ConnectivityPolicy`."""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from enum import Enum
from typing import Optional, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError
from canvas_core.program._check import flag, number, opt_text, pos_int, str_tuple, text
from canvas_core.program.constants import CARRIERS, COMPILE_MODES, check_choice, check_family
from canvas_core.program.identity import IdentitySpec
from canvas_core.program.specs import ClockSpec, ConstraintSpec, LearningSpec

__all__ = ["Field", "LayoutStrategy", "ConnectivityPolicy", "INTRA_POLICIES", "ARRAY_POLICIES", "TEMPORAL_POLICIES"]


@dataclass(frozen=True)
class Field:
    """A latent region declaration (a class attribute of a dataclass / pydantic model / object).

    ``Field(h, w)`` declares ``h x w`` positions per frame on a 2-d canvas;
    ``Field(spatial_shape=(8,))`` or ``Field(spatial_shape=(4, 4, 4))`` any other number of
    dimensions (then ``h``/``w`` mirror its first two sizes). Every position carries the
    canvas's ``d_model`` vector.

    Args:
        h, w: Height and width on the canvas grid (>= 1).
        period: Real-world frames per canvas frame (1 = every frame).
        is_output: Whether the field takes part in the loss.
        loss_weight: Relative loss weight of the field's positions (>= 0).
        attn: Default attention function type of the field's outgoing connections.
        semantic_type: Human-readable modality description (default: derived from the path).
        temporal_extent: Frames the field spans from frame 0 (None = all T).
        family: Region family (observation, state, memory, residual, action or custom).
            None = ``"state"`` without operator auto-wiring (see docs/programs.md).
        tags: Semantic sub-tags within the family, e.g. ``("belief",)``.
        carrier: Dynamics carrier; None = ``"deterministic"``.
        spatial_shape: Arbitrary spatial shape; exclusive with ``h``/``w``.
        clock, learning, compile_mode, constraints, identity: Copied into the field's
            ``RegionProgram`` by ``compile_program`` (None = the ``RegionProgram`` default).
    """

    h: int = 1
    w: int = 1
    period: int = 1
    is_output: bool = True
    loss_weight: float = 1.0
    attn: str = "cross_attention"
    semantic_type: Optional[str] = None
    temporal_extent: Optional[int] = None
    family: Optional[str] = None
    tags: Tuple[str, ...] = ()
    carrier: Optional[str] = None
    spatial_shape: Optional[Tuple[int, ...]] = None
    _: KW_ONLY  # canvas-core's program specs: keyword-only after canvas-engineering's 12 fields
    clock: Optional[ClockSpec] = None
    learning: Optional[LearningSpec] = None
    compile_mode: Optional[str] = None
    constraints: Optional[ConstraintSpec] = None
    identity: Optional[IdentitySpec] = None

    def __post_init__(self) -> None:
        where = f"Field(h={self.h!r}, w={self.w!r}{'' if self.spatial_shape is None else f', spatial_shape={self.spatial_shape!r}'})"
        from canvas_core.schema._validate import check_ordered  # sets / dicts: no order to take

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.spatial_shape is not None:
            shape = self.spatial_shape
            if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
                raise CanvasTypeError(f"Field spatial_shape must be a tuple of ints, got {shape!r}")
            check_ordered(shape, f"{where}: spatial_shape", "(4, 4)")
            shape = tuple(shape)
            if not shape:
                raise ProgramError("Field(spatial_shape=()) has no dimension; use Field(1, 1) for one position")
            shape = tuple(pos_int(s, f"Field(spatial_shape={shape})", "every size") for s in shape)
            derived = (shape[0], shape[1] if len(shape) > 1 else 1)
            if (self.h, self.w) not in ((1, 1), derived):
                raise ProgramError(
                    f"Field(h={self.h}, w={self.w}, spatial_shape={shape}): give either h/w or "
                    "spatial_shape, not both"
                )
            set_("spatial_shape", shape)
            set_("h", derived[0])
            set_("w", derived[1])
        else:
            set_("h", pos_int(self.h, f"Field(h={self.h!r}, w={self.w!r})", "h", "A field has h x w positions per frame."))
            set_("w", pos_int(self.w, f"Field(h={self.h!r}, w={self.w!r})", "w", "A field has h x w positions per frame."))
        set_("period", pos_int(self.period, where, "period", "period = real frames per canvas frame, 1 = every frame."))
        flag(self.is_output, where, "is_output")
        set_("loss_weight", number(self.loss_weight, where, "loss_weight", nonneg=True))
        text(self.attn, where, "attn")
        opt_text(self.semantic_type, where, "semantic_type")
        if self.temporal_extent is not None:
            set_("temporal_extent", pos_int(self.temporal_extent, where, "temporal_extent", "Use None to span all T frames."))
        if self.family is not None:
            check_family(self.family, where)
        check_ordered(self.tags, f"{where}: tags", "('belief', 'object')")
        set_("tags", str_tuple(self.tags, where, "tags"))
        if self.carrier is not None:
            check_choice(self.carrier, CARRIERS, "carrier", where)
        if self.compile_mode is not None:
            check_choice(self.compile_mode, COMPILE_MODES, "compile_mode", where)
        for key, cls in (("clock", ClockSpec), ("learning", LearningSpec), ("constraints", ConstraintSpec),
                         ("identity", IdentitySpec)):
            v = getattr(self, key)
            if v is not None and not isinstance(v, cls):
                raise CanvasTypeError(f"Field {key} must be a {cls.__name__} or None, got {v!r}")

    @property
    def shape(self) -> Tuple[int, ...]:
        """The field's spatial shape: ``spatial_shape`` or ``(h, w)``."""
        return self.spatial_shape if self.spatial_shape is not None else (self.h, self.w)

    @property
    def num_positions(self) -> int:
        """Spatial positions per frame: ``prod(shape)``."""
        return math.prod(self.shape)


class LayoutStrategy(str, Enum):
    """How ``compile_schema`` places fields on the grid.

    ``PACKED``: shelf-packed in declaration (traversal) order. ``INTERLEAVED``: the same packing,
    but the same field of every list element is placed side by side (``agents[0].thought``,
    ``agents[1].thought``, ... then ``agents[0].act``, ...), so matched fields are contiguous.
    """

    PACKED = "packed"
    INTERLEAVED = "interleaved"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> "LayoutStrategy":
        if isinstance(value, str):
            for s in cls:
                if s.value == value.lower():
                    return s
        raise ProgramError(
            f"unknown layout_strategy {value!r}; use one of {[s.value for s in cls]}"
        )


INTRA_POLICIES = ("dense", "isolated", "causal_chain", "star")
ARRAY_POLICIES = ("isolated", "dense", "matched_fields", "ring")
TEMPORAL_POLICIES = ("dense", "causal", "same_frame")


@dataclass
class ConnectivityPolicy:
    """Default connectivity rules of compiled schemas.

    Every nested object and list element gets a coarse-grained region at its own path (size:
    ``metadata={"coarse": Field(...)}`` on the dataclass field, else ``__coarse__`` on the class,
    else ``Field(1, 1)``). The fields of the parent connect both ways to that coarse region, and
    the coarse region connects both ways to the element's own fields.

    Args:
        intra: How the fields of one object connect: ``"dense"`` (all pairs), ``"isolated"``
            (self only), ``"causal_chain"`` (self, and each field reads the previous one),
            ``"star"`` (the first field is a hub connected both ways to every other).
        array_element: How the elements of one list connect (through their coarse regions):
            ``"isolated"``, ``"dense"``, ``"matched_fields"`` (dense, plus every field to the
            same-named field of the other elements), ``"ring"`` (each to its neighbours, cyclic).
        temporal: Frame offsets put on every connection: ``"dense"`` (none), ``"causal"``
            (self connections same frame and previous frame, others previous frame:
            ``t_src=0, t_dst=-1``), ``"same_frame"`` (``t_src=t_dst=0``).
    """

    intra: str = "dense"
    array_element: str = "isolated"
    temporal: str = "dense"

    def __post_init__(self) -> None:
        for key, allowed in (("intra", INTRA_POLICIES), ("array_element", ARRAY_POLICIES),
                             ("temporal", TEMPORAL_POLICIES)):
            check_choice(getattr(self, key), frozenset(allowed), f"{key} policy", "ConnectivityPolicy")


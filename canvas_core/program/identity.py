"""`IdentitySpec`: how a region keeps persistent object identity (declaration only, pure Python).

The torch module that binds observations to slots is ``canvas_core.identity.SlotBindingModule``.
"""

from __future__ import annotations

from dataclasses import dataclass

from canvas_core.errors import ProgramError
from canvas_core.program._check import flag, pos_int, text
from canvas_core.program.constants import IDENTITY_MODES, check_choice
from canvas_core.schema.limits import check_size

__all__ = ["IdentitySpec"]


@dataclass(frozen=True)
class IdentitySpec:
    """How one region keeps track of the objects it holds from frame to frame.

    Args:
        mode: ``"persistent"`` = slots persist across timesteps, observations bind to them;
            ``"ephemeral"`` = slots are re-created every step; ``"tracklet"`` = persistent slots
            that can be born and killed.
        slot_capacity: Maximum number of identity slots (>= 1).
        binding_fn: How observations bind to slots (an identity binder name, default
            ``"cross_attention"``); resolved by the plugin registry at build time.
        birth_death: Learned birth/death gates; only meaningful with ``mode="tracklet"``.
    """

    mode: str = "persistent"
    slot_capacity: int = 64
    binding_fn: str = "cross_attention"
    birth_death: bool = False

    def __post_init__(self) -> None:
        w = "IdentitySpec"
        check_choice(self.mode, IDENTITY_MODES, "identity mode", w)
        object.__setattr__(self, "slot_capacity", pos_int(self.slot_capacity, w, "slot_capacity"))
        check_size("slots", self.slot_capacity, "IdentitySpec slot_capacity")
        text(self.binding_fn, w, "binding_fn")
        flag(self.birth_death, w, "birth_death")
        if self.birth_death and self.mode != "tracklet":
            raise ProgramError(
                f"IdentitySpec(mode={self.mode!r}, birth_death=True): birth/death gating only exists "
                "for tracklet slots; use mode='tracklet' or birth_death=False"
            )

"""Slot binders: a learned bank of identity slots queries the observations by cross-attention.

Binder contract (what ``canvas_core.identity.SlotTracker`` relies on and checks; third-party
binders registered through ``canvas_register_identity`` follow it too; the result type,
``BindingResult``, is the core's: ``from canvas_core.extend import BindingResult``)::

    binder = Factory(d_model, n_slots, n_heads=4, birth_death=False)
    binder.initial_slots(B)                  -> (B, n_slots, D)  the learned slot bank
    binder.bind(obs, slots=None, obs_mask=None) -> BindingResult
    binder(obs, slots=None, obs_mask=None)   -> (B, n_slots, D)  (dead slots zeroed)
    binder.alive_mask(obs, slots=None)       -> (B, n_slots) bool

``obs`` is ``(B, N_obs, D)``; ``slots`` the slot state to update (``None`` = the learned bank);
``obs_mask`` an optional ``(B, N_obs)`` bool (True = a real observation).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.extend import BindingResult, check_bytes, check_elements, check_size

__all__ = ["BindingResult", "SlotBindingModule", "CompetitiveSlotBinding"]

_NEG = -1e4  # logit of a masked observation (finite: keeps every softmax NaN-free)


_MEANING = {"d_model": "the width of the observation tokens",
            "n_slots": "the number of identity slots, IdentitySpec.slot_capacity",
            "n_heads": "the heads of the binding cross-attention, a divisor of d_model"}


def _pos_int(owner: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise CanvasTypeError(f"{owner}: {name} must be a positive int ({_MEANING.get(name, name)}), got {v!r}; "
                              f"pass {name}=1 or more")
    return v


def _param_count(d_model: int, n_slots: int, n_heads: int, birth_death: object) -> int:
    """Parameters :class:`SlotBindingModule` allocates (counted before any is built)."""
    d = d_model
    # bank + q/k/v/out + MLP (d->2d->d) + three LayerNorms + out/MLP biases
    n = n_slots * d + 8 * d * d + 6 * d + 4 * d
    if birth_death is True:
        n += 2 * d + d + n_heads + 1  # gate LayerNorm and gate Linear
    return n


class SlotBindingModule(nn.Module):
    """A bank of ``n_slots`` learned vectors that read the observations, so that each slot can
    follow one object over time.

    On every call the slots ask the observations (slots are the queries, observations the keys
    and values) and then pass through a residual MLP. With
    ``birth_death=True`` a gate per slot (from the updated slot and how well its query matched
    any observation) says whether the slot is alive; dead slots are zeroed in the output.

    Args:
        d_model: model width ``D`` (divisible by ``n_heads``).
        n_slots: number of identity slots ``S``.
        n_heads: attention heads of the binding cross-attention.
        birth_death: learn birth / death gates (``alive_mask``).
        dropout: dropout on the attention weights (training only).

    Shapes: ``forward((B, N_obs, D)) -> (B, S, D)``; ``alive_mask -> (B, S)`` bool.
    """

    #: softmax over slots (competition between slots) instead of over observations
    competitive: bool = False

    def __init__(self, d_model: int, n_slots: int, n_heads: int = 4, birth_death: bool = False,
                 *, dropout: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        _pos_int(name, "d_model", d_model)
        _pos_int(name, "n_slots", n_slots)
        _pos_int(name, "n_heads", n_heads)
        check_size("width", d_model, f"{name} d_model")
        check_size("slots", n_slots, f"{name} n_slots")
        check_elements((n_slots, d_model), f"{name} slots")
        check_bytes(4 * _param_count(d_model, n_slots, n_heads, birth_death),
                    f"{name}(d_model={d_model:,}, n_slots={n_slots:,}): its float32 parameters (the slot bank "
                    "and about 8 * d_model**2 of projections and MLP)",
                    "Use a narrower d_model or fewer slots (n_slots)")
        if d_model % n_heads:
            raise ShapeError(f"{name}: d_model={d_model} is not divisible by n_heads={n_heads}; "
                             f"choose n_heads among the divisors of {d_model}")
        if not isinstance(birth_death, bool):
            raise CanvasTypeError(f"{name}: birth_death must be a bool, got {birth_death!r}")
        self.d_model, self.n_slots, self.n_heads = d_model, n_slots, n_heads
        self.head_dim = d_model // n_heads
        self.birth_death = birth_death
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not math.isfinite(dropout) or not 0.0 <= dropout <= 1.0):
            raise CanvasTypeError(f"{name}: dropout must be a finite real number in [0, 1] (dropout on the "
                                  f"binding attention weights), got {dropout!r}; pass e.g. dropout=0.0 or 0.1")
        self.dropout = float(dropout)
        self.slots = nn.Parameter(torch.randn(n_slots, d_model) / math.sqrt(d_model))
        self.norm_slots = nn.LayerNorm(d_model)
        self.norm_obs = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_k = nn.Linear(d_model, d_model, bias=False)
        self.to_v = nn.Linear(d_model, d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                 nn.Linear(2 * d_model, d_model))
        if birth_death:
            # gate input: normed slot and, per head, the best match logit of its query
            self.gate_norm = nn.LayerNorm(d_model)
            self.gate = nn.Linear(d_model + n_heads, 1)
        else:
            self.gate_norm = None
            self.gate = None

    # ---------------------------------------------------------------------------------------
    def initial_slots(self, batch_size: int) -> torch.Tensor:
        """The learned slot bank broadcast to ``(B, S, D)``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise CanvasTypeError(f"{type(self).__name__}: batch_size must be an int >= 0, got {batch_size!r}")
        return self.slots.unsqueeze(0).expand(batch_size, -1, -1)

    def _check(self, observations, slots, obs_mask) -> None:
        name = type(self).__name__
        if not isinstance(observations, torch.Tensor):
            raise CanvasTypeError(f"{name}: observations must be a torch.Tensor, "
                                  f"got {type(observations).__name__}")
        if observations.dim() != 3 or observations.shape[-1] != self.d_model:
            raise ShapeError(f"{name}: observations must have shape (B, N_obs, {self.d_model}), "
                             f"got {tuple(observations.shape)}")
        B = observations.shape[0]
        if slots is not None and (not isinstance(slots, torch.Tensor)
                                  or tuple(slots.shape) != (B, self.n_slots, self.d_model)):
            got = tuple(slots.shape) if isinstance(slots, torch.Tensor) else type(slots).__name__
            raise ShapeError(f"{name}: slots must have shape (B, n_slots, D) = "
                             f"{(B, self.n_slots, self.d_model)}, got {got}")
        if obs_mask is not None and (not isinstance(obs_mask, torch.Tensor)
                                     or tuple(obs_mask.shape) != tuple(observations.shape[:2])):
            got = tuple(obs_mask.shape) if isinstance(obs_mask, torch.Tensor) else type(obs_mask).__name__
            raise ShapeError(f"{name}: obs_mask must be a bool tensor of shape (B, N_obs) = "
                             f"{tuple(observations.shape[:2])}, got {got}")
        if obs_mask is not None and (obs_mask.is_floating_point() or obs_mask.is_complex()):
            # an additive mask marks padding with -inf, which .bool() would read as "observed"
            raise CanvasTypeError(f"{name}: obs_mask must be a bool tensor (True = a real observation), got "
                                  f"{obs_mask.dtype}; for an additive mask (-inf = padding) pass "
                                  "obs_mask.isfinite(), for 0 / 1 weights obs_mask > 0")
        from canvas_core.extend import check_dtypes_devices

        # each against the parameters, not against each other: under autocast the carried slot
        # state stays float32 while the observations come in bfloat16 / float16
        check_dtypes_devices(name, self, observations=observations)
        if slots is not None:
            check_dtypes_devices(f"{name}: slots", self, slots=slots)
        if obs_mask is not None and obs_mask.device != observations.device:
            raise ShapeError(f"{name}: obs_mask is on {obs_mask.device} but the observations are on "
                             f"{observations.device}; move it with obs_mask.to({str(observations.device)!r})")

    def _weights(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, H, S, N)`` logits -> attention weights; masked / missing observations get 0."""
        logits = logits.masked_fill(~valid, _NEG)
        # a row with no valid observation sums to 0: divide it by 1, not by an epsilon (1e-8 is 0
        # in float16, and 0 / 0 would make the slots NaN)
        if self.competitive:  # slots compete for each observation, then a weighted mean per slot
            w = torch.softmax(logits, dim=2) * valid
            s = w.sum(dim=-1, keepdim=True)
            return w / torch.where(s == 0, torch.ones_like(s), s + 1e-8)
        w = torch.softmax(logits, dim=-1) * valid
        s = w.sum(dim=-1, keepdim=True)
        return w / torch.where(s == 0, torch.ones_like(s), s.clamp_min(1e-8))

    def bind(self, observations: torch.Tensor, slots: Optional[torch.Tensor] = None,
             obs_mask: Optional[torch.Tensor] = None) -> BindingResult:
        """One binding step; see :class:`BindingResult`. ``slots=None`` starts from the bank."""
        self._check(observations, slots, obs_mask)
        B, N, D = observations.shape
        H, dh, S = self.n_heads, self.head_dim, self.n_slots
        if slots is None:
            slots = self.initial_slots(B)
        if obs_mask is not None:
            # padding rows are left out by value too: a NaN / inf in a masked-out row must not reach
            # the norm and projections (0 * NaN in ``w @ v`` would poison every slot)
            observations = observations.masked_fill(~obs_mask.to(torch.bool)[..., None], 0)
        obs = self.norm_obs(observations)
        q = self.to_q(self.norm_slots(slots)).view(B, S, H, dh).transpose(1, 2)   # (B,H,S,dh)
        k = self.to_k(obs).view(B, N, H, dh).transpose(1, 2)                      # (B,H,N,dh)
        v = self.to_v(obs).view(B, N, H, dh).transpose(1, 2)
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)              # (B,H,S,N)
        if obs_mask is None:
            valid = torch.ones(B, 1, 1, N, dtype=torch.bool, device=observations.device)
        else:
            valid = obs_mask.to(torch.bool)[:, None, None, :]
        w = self._weights(logits, valid)
        if self.dropout > 0 and self.training:
            w = F.dropout(w, p=self.dropout)
        upd = torch.matmul(w, v).transpose(1, 2).reshape(B, S, D)
        new = slots + self.to_out(upd)
        new = new + self.mlp(new)
        alive_logits = None
        out = new
        if self.gate is not None:
            if N == 0:  # nothing observed: the weakest possible match
                match = logits.new_full((B, S, H), -30.0)
            else:
                match = logits.masked_fill(~valid, _NEG).amax(dim=-1).transpose(1, 2)  # (B,S,H)
                match = match.clamp_min(-30.0)
            feat = torch.cat([self.gate_norm(new), match], dim=-1)
            alive_logits = self.gate(feat).squeeze(-1)
            out = new * (alive_logits > 0).unsqueeze(-1).to(new.dtype)
        return BindingResult(out, new, w.mean(dim=1), alive_logits)

    def forward(self, observations: torch.Tensor, slots: Optional[torch.Tensor] = None,
                obs_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, N_obs, D) -> (B, n_slots, D)`` updated slots (dead slots zeroed with gates)."""
        return self.bind(observations, slots, obs_mask).slots

    def alive_mask(self, observations: torch.Tensor, slots: Optional[torch.Tensor] = None,
                   obs_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, n_slots)`` bool, True = alive (always all True without ``birth_death``)."""
        res = self.bind(observations, slots, obs_mask)
        if res.alive_logits is None:
            return torch.ones(res.slots.shape[:2], dtype=torch.bool, device=res.slots.device)
        return res.alive_logits > 0

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_slots={self.n_slots}, n_heads={self.n_heads}, "
                f"birth_death={self.birth_death}, competitive={self.competitive}")


class CompetitiveSlotBinding(SlotBindingModule):
    """Slot-attention style binder: the softmax runs over the slots, so slots compete for each
    observation (then each slot takes the weighted mean of what it won). Same contract and
    arguments as :class:`SlotBindingModule`; registered as binding_fn ``"slot_attention"``."""

    competitive = True

"""Persistent object identity for canvas regions (facade over the identity-binder registry).

* :class:`IdentitySpec` (declaration, from ``canvas_core.program``) says how a region keeps
  object identity: ``mode`` (``persistent`` / ``ephemeral`` / ``tracklet``), ``slot_capacity``,
  ``binding_fn`` (a registered identity binder) and ``birth_death``.
* ``SlotBindingModule`` (the default ``cross_attention`` binder) comes from the
  ``canvas-plugin-identity`` distribution; ``canvas_core.identity.SlotBindingModule`` and
  ``canvas_core.SlotBindingModule`` load it lazily through the identity-binder registry, never
  by importing the plugin (a clear install hint when it is not installed).
* :class:`BindingResult` is what a binder's ``bind`` returns (the binder contract, below);
  :class:`SlotTracker` wraps any binder, checks what it returns and carries slot state across
  timesteps according to the mode; :func:`build_identity_binders` builds one tracker per region of a program that declares
  an ``IdentitySpec`` (the runtime calls it).

Usage::

    from canvas_core.identity import SlotBindingModule
    binder = SlotBindingModule(d_model=64, n_slots=8, n_heads=4)
    obs = torch.randn(3, 20, 64)                     # 3 samples, 20 observations each
    slots = binder(obs)                              # (3, 8, 64): one vector per slot
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from canvas_core._lazy import lazy_exports
from canvas_core.attention._base import autocast_on
from canvas_core.compiler.passes import check_slot_bank
from canvas_core.errors import (CanvasTypeError, PluginLoadError, ProgramError, RegionError, SizeLimitError,
                                 UnknownNameError)
from canvas_core.plugins import create_identity_binder, get_registry, get_spec, list_identity_binders
from canvas_core.program.identity import IdentitySpec

__all__ = [
    "IdentitySpec", "SlotBindingModule", "BindingResult", "SlotTracker", "SlotStep", "IdentityBinders",
    "create_binder", "build_identity_binders",
]

_INSTALL_HINT = ("install the canvas-plugin-identity distribution "
                 "(pip install canvas-plugin-identity, or pip install -e plugins/canvas-plugin-identity "
                 "in a checkout of canvas-core)")


def _slot_binding_class() -> type:
    """The default binder class, found through the identity registry (never by importing the
    plugin): the registration of ``cross_attention`` whose factory is a ``SlotBindingModule``."""
    reg = get_registry("identity")
    found = [s for s in reg.all_registrations()
             if s.name == "cross_attention" and str(s.factory_path).replace(":", ".").rpartition(".")[2] == "SlotBindingModule"]
    if found:
        return found[-1].load()  # PluginLoadError (naming the plugin) when its module fails to import
    try:
        get_spec("identity", "cross_attention")  # a plugin that failed to load raises its PluginLoadError here
    except UnknownNameError as exc:
        if getattr(exc, "plugin", None) is not None:  # its provider is installed, not loaded: say why
            raise PluginLoadError(f"SlotBindingModule comes from the identity plugin: {exc}") from None
    raise PluginLoadError(
        f"SlotBindingModule is provided by the identity plugin, which is not registered; {_INSTALL_HINT}")


__getattr__, __dir__ = lazy_exports(__name__, {"SlotBindingModule": _slot_binding_class}, globals())


def create_binder(binding_fn: str, d_model: int, n_slots: int, n_heads: int = 4,
                  birth_death: bool = False) -> nn.Module:
    """Build the identity binder registered as ``binding_fn``.

    Resolution goes through the plugin registry (``create_identity_binder``). An unknown name
    raises :class:`~canvas_core.errors.UnknownNameError` listing the known binders (and the
    install hint of ``canvas-plugin-identity`` when no binder is registered at all).
    """
    if not isinstance(binding_fn, str) or not binding_fn:
        raise CanvasTypeError(f"identity binding_fn must be a non-empty str, got {binding_fn!r}")
    if binding_fn in list_identity_binders():  # an unknown name is named first (with its suggestions)
        check_slot_bank(n_slots, d_model, f"create_binder({binding_fn!r}, d_model={d_model!r}, n_slots={n_slots!r})")
    try:
        return create_identity_binder(binding_fn, d_model=d_model, n_slots=n_slots, n_heads=n_heads,
                                      birth_death=birth_death)
    except UnknownNameError as exc:
        if list_identity_binders():
            raise
        raise type(exc)(f"{exc}; no identity plugin is installed: {_INSTALL_HINT}") from None


class BindingResult(NamedTuple):
    """What one ``binder.bind(obs, slots=None, obs_mask=None)`` call returns: the binder contract
    every identity binder follows (``SlotBindingModule`` and any binder a plugin registers through
    ``canvas_register_identity``; plugins import it from ``canvas_core.extend``).

    Binder contract::

        binder = Factory(d_model=D, n_slots=S, n_heads=4, birth_death=False)
        binder.initial_slots(B)                     -> (B, S, D)  the learned slot bank
        binder.bind(obs, slots=None, obs_mask=None) -> BindingResult
        binder(obs, slots=None, obs_mask=None)      -> (B, S, D)  (dead slots zeroed)
        binder.alive_mask(obs, slots=None)          -> (B, S) bool

    Attributes:
        slots: ``(B, S, D)`` updated slots; with birth/death, dead slots are zeroed.
        raw_slots: ``(B, S, D)`` updated slots before the alive mask is applied (the state
            carried to the next step).
        attn: ``(B, S, N_obs)`` attention of each slot over the observations (mean over heads),
            or None when the binder has none to report.
        alive_logits: ``(B, S)`` birth/death gate logits (alive iff > 0), or None without gates.

    :class:`SlotTracker` refuses (``ShapeError`` / ``CanvasTypeError`` naming the binder) a result
    with another number of slots than ``S``, another width than the observations' or another batch.
    """

    slots: torch.Tensor
    raw_slots: torch.Tensor
    attn: Optional[torch.Tensor]
    alive_logits: Optional[torch.Tensor]


class SlotStep(NamedTuple):
    """Result of one :class:`SlotTracker` step.

    Attributes:
        slots: ``(B, S, D)`` slot outputs of this step (dead slots zeroed in tracklet mode).
        state: ``(B, S, D)`` slot state to pass to the next step (None in ephemeral mode).
        alive: ``(B, S)`` bool alive mask (all True without birth/death gates).
        alive_logits: ``(B, S)`` gate logits, or None without gates.
        attn: ``(B, S, N_obs)`` binding attention (mean over heads).
    """

    slots: torch.Tensor
    state: Optional[torch.Tensor]
    alive: torch.Tensor
    alive_logits: Optional[torch.Tensor]
    attn: torch.Tensor


class SlotTracker(nn.Module):
    """Carries a binder's slot state across timesteps according to an identity ``mode``.

    * ``persistent``: the updated slots of step t are the slots that bind at step t + 1;
    * ``ephemeral``: every step starts again from the learned slot bank (no state);
    * ``tracklet``: persistent, and with birth/death gates a dead slot's state is reset to its
      learned bank vector (ready to be born again) while its output is zeroed.

    Two ways to use it: functional ``forward(obs, state) -> SlotStep`` (pass ``step.state`` back
    in; good for BPTT), or stateful ``step(obs)`` which keeps the state on the module until
    :meth:`reset` (call ``detach_state()`` between truncated-BPTT windows).

    Args:
        binder: an identity binder (the contract: :class:`BindingResult`).
        mode: ``"persistent"``, ``"ephemeral"`` or ``"tracklet"``.
        n_slots: the number of slots every ``bind`` must return (``IdentitySpec.slot_capacity``);
            None: the binder's ``n_slots`` attribute when it has one.
        name: the binder's registered name, for error messages.
    """

    MODES = ("persistent", "ephemeral", "tracklet")

    def __init__(self, binder: nn.Module, mode: str = "persistent", n_slots: Optional[int] = None,
                 name: Optional[str] = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ProgramError(f"SlotTracker: unknown identity mode {mode!r}; use one of {list(self.MODES)}")
        for attr in ("bind", "initial_slots"):
            if not callable(getattr(binder, attr, None)):
                who = f"binder {name!r} ({type(binder).__name__})" if name else f"binder {type(binder).__name__}"
                raise CanvasTypeError(f"SlotTracker: {who} has no {attr}(); identity binders must follow the "
                                      "binder contract (canvas_core.extend.BindingResult, docs/identity.md)")
        if n_slots is None:
            n_slots = getattr(binder, "n_slots", None)
            n_slots = n_slots if isinstance(n_slots, int) and not isinstance(n_slots, bool) else None
        elif isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
            raise CanvasTypeError(f"SlotTracker: n_slots must be a positive int or None, got {n_slots!r}")
        self.binder = binder
        self.mode = mode
        self.n_slots = n_slots
        self.binder_name = name
        self._state: Optional[torch.Tensor] = None

    def _who(self) -> str:
        cls = type(self.binder).__name__
        return f"identity binder {self.binder_name!r} ({cls})" if self.binder_name else f"identity binder {cls}"

    def _check(self, res: Any, observations: torch.Tensor) -> None:
        """Refuse a ``bind`` result that breaks the contract, naming the binder."""
        from canvas_core.errors import ShapeError

        who = self._who()
        if not all(hasattr(res, a) for a in BindingResult._fields):
            raise CanvasTypeError(f"{who}: bind() returned {type(res).__name__}, not a BindingResult(slots, raw_slots, "
                                  "attn, alive_logits); return canvas_core.extend.BindingResult")
        if not isinstance(observations, torch.Tensor) or observations.dim() != 3:
            return  # the binder accepted something else: nothing to measure against
        B, n_obs, D = observations.shape
        S = self.n_slots
        if S is None:  # no declared count: the slots' own, the same in every field
            S = res.slots.shape[1] if isinstance(res.slots, torch.Tensor) and res.slots.dim() == 3 else -1
        hint = (f" (n_slots = {self.n_slots}, the region's IdentitySpec.slot_capacity)"
                if self.n_slots is not None else "")
        want = {"slots": (B, S, D), "raw_slots": (B, S, D), "attn": (B, S, n_obs), "alive_logits": (B, S)}
        for field, shape in want.items():
            t = getattr(res, field)
            if t is None and field in ("attn", "alive_logits"):
                continue
            if not isinstance(t, torch.Tensor):
                raise CanvasTypeError(f"{who}: bind() returned {field} of type {type(t).__name__}; expected a "
                                      f"tensor of shape {shape}")
            if tuple(t.shape) != shape:
                raise ShapeError(f"{who}: bind() returned {field} of shape {tuple(t.shape)} for observations of "
                                 f"shape {tuple(observations.shape)}; expected {shape}{hint}. A binder must "
                                 "return exactly n_slots slots of the observations' width, one set per sample")
            if t.device != observations.device:
                raise ShapeError(f"{who}: bind() returned {field} on {t.device} for observations on "
                                 f"{observations.device}; a binder must return its results on the observations' device")

    def init_state(self, batch_size: int) -> torch.Tensor:
        """The learned slot bank ``(B, S, D)``."""
        bank = self.binder.initial_slots(batch_size)
        if self.n_slots is not None and isinstance(bank, torch.Tensor) and tuple(bank.shape[:2]) != (batch_size, self.n_slots):
            from canvas_core.errors import ShapeError

            raise ShapeError(f"{self._who()}: initial_slots({batch_size}) returned shape {tuple(bank.shape)}; expected "
                             f"({batch_size}, {self.n_slots}, D) (n_slots = {self.n_slots}, the region's "
                             "IdentitySpec.slot_capacity)")
        return bank

    def forward(self, observations: torch.Tensor, state: Optional[torch.Tensor] = None,
                obs_mask: Optional[torch.Tensor] = None) -> SlotStep:
        """Bind ``observations (B, N_obs, D)`` starting from ``state`` (None = the slot bank)."""
        if self.mode == "ephemeral":
            state = None
        res = self.binder.bind(observations, state, obs_mask)
        self._check(res, observations)
        B = observations.shape[0]
        if res.alive_logits is None:
            alive = torch.ones(res.slots.shape[:2], dtype=torch.bool, device=res.slots.device)
        else:
            alive = res.alive_logits > 0
        if self.mode == "ephemeral":
            new_state = None
        elif self.mode == "tracklet" and res.alive_logits is not None:
            # a NaN logit is not a death: resetting to the bank would hide a NaN input, so keep it
            keep = alive | torch.isnan(res.alive_logits)
            new_state = torch.where(keep.unsqueeze(-1), res.raw_slots,
                                    self.init_state(B).to(res.raw_slots.dtype))
        else:
            new_state = res.raw_slots
        return SlotStep(res.slots, new_state, alive, res.alive_logits, res.attn)

    # stateful convenience ------------------------------------------------------------------
    def step(self, observations: torch.Tensor, obs_mask: Optional[torch.Tensor] = None) -> SlotStep:
        """Like ``forward`` with the state kept on the module (reset when the batch size or the
        device changes; converted when the observations' dtype changes outside autocast, as after
        ``tracker.double()``)."""
        st = self._state
        if st is not None and isinstance(observations, torch.Tensor):
            if st.shape[0] != observations.shape[0] or st.device != observations.device:
                st = None
            elif st.dtype != observations.dtype and observations.is_floating_point() \
                    and not autocast_on(observations.device.type):
                st = st.to(observations.dtype)  # under autocast a float32 state meets bfloat16 inputs
        if st is not None and st.is_inference() and not torch.is_inference_mode_enabled():
            st = st.clone()  # a state kept under inference_mode: the same values, usable by autograd
        out = self.forward(observations, st, obs_mask)
        self._state = out.state
        return out

    def __deepcopy__(self, memo: Dict[int, Any]) -> "SlotTracker":
        """Copy the module; the carried state is copied detached (a state inside an autograd graph
        cannot be deep-copied, and the copy would not share that graph anyway)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k == "_state" and isinstance(v, torch.Tensor):
                v = v.detach()
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def reset(self) -> None:
        """Forget the carried state (next ``step`` starts from the slot bank)."""
        self._state = None

    def detach_state(self) -> None:
        """Cut the autograd graph of the carried state (truncated BPTT)."""
        if self._state is not None:
            self._state = self._state.detach()

    @property
    def state(self) -> Optional[torch.Tensor]:
        return self._state

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def _key(name: str) -> str:
    return name.replace(".", "__dot__")


class IdentityBinders(nn.ModuleDict):
    """One :class:`SlotTracker` per region (an ``nn.ModuleDict`` indexed by region name).

    ``binders[region]`` works for any region name (dots are escaped in the module keys);
    ``specs[region]`` is the region's :class:`IdentitySpec`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.specs: Dict[str, IdentitySpec] = {}

    def add(self, region: str, tracker: SlotTracker, spec: IdentitySpec) -> None:
        if not isinstance(region, str) or not region:
            raise CanvasTypeError(f"IdentityBinders.add: region must be a non-empty str, got {region!r}")
        if not isinstance(tracker, SlotTracker):
            raise CanvasTypeError(f"IdentityBinders.add({region!r}): tracker must be a SlotTracker, "
                                  f"got {type(tracker).__name__}")
        if not isinstance(spec, IdentitySpec):
            raise CanvasTypeError(f"IdentityBinders.add({region!r}): spec must be an IdentitySpec, "
                                  f"got {type(spec).__name__}")
        key = _key(region)
        holder = next((r for r in self.specs if r != region and _key(r) == key), None)
        if holder is not None:
            # "a.b" and "a__dot__b" share a module key: the second would replace the first's tracker
            raise RegionError(f"IdentityBinders.add({region!r}): regions {holder!r} and {region!r} would share "
                              f"the binder key {key!r} (a '.' is stored as '__dot__'), so one region would "
                              "silently get the other's tracker; rename one of them")
        super().__setitem__(key, tracker)
        self.specs[region] = spec

    def __getitem__(self, region: str) -> SlotTracker:  # type: ignore[override]
        if region not in self.specs:
            from canvas_core.errors import UnknownRegionError

            raise UnknownRegionError(f"no identity binder for region {region!r}; regions with an "
                                     f"IdentitySpec: {sorted(self.specs)}")
        return super().__getitem__(_key(region))

    def __contains__(self, region: object) -> bool:  # type: ignore[override]
        return region in self.specs

    @property
    def regions(self) -> Tuple[str, ...]:
        return tuple(self.specs)

    def reset(self) -> None:
        """Reset the carried state of every tracker."""
        for r in self.specs:
            self[r].reset()

    def forward(self, observations: Mapping[str, torch.Tensor],
                states: Optional[Mapping[str, Optional[torch.Tensor]]] = None) -> Dict[str, SlotStep]:
        """Bind each region's ``(B, N_obs, D)`` observations; ``states`` from the previous step."""
        if not isinstance(observations, Mapping):
            raise CanvasTypeError("IdentityBinders: observations must be a mapping region -> (B, N_obs, D) "
                                  f"tensor, got {type(observations).__name__}")
        if states is not None and not isinstance(states, Mapping):
            raise CanvasTypeError("IdentityBinders: states must be None or a mapping region -> state, "
                                  f"got {type(states).__name__}")
        self._refuse_unknown_states("IdentityBinders", states)
        states = states or {}
        return {r: self[r](obs, states.get(r)) for r, obs in observations.items()}

    def _refuse_unknown_states(self, who: str, states: Optional[Mapping[str, Any]]) -> None:
        """A state under a region without a binder would be ignored: refuse it (a typo)."""
        unknown = sorted(set(states or {}) - set(self.specs), key=str)
        if unknown:
            from canvas_core.errors import UnknownRegionError, did_you_mean

            hint = did_you_mean(unknown[0], self.specs) if isinstance(unknown[0], str) else ""
            raise UnknownRegionError(f"{who}: states name region(s) {unknown} that have no identity binder "
                                     f"(binders: {sorted(self.specs)}).{hint} The state given there would be "
                                     "ignored; fix the name")

    def bind_canvas(self, x: torch.Tensor, layout: Any,
                    states: Optional[Mapping[str, Optional[torch.Tensor]]] = None
                    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Optional[torch.Tensor]]]:
        """Run every region's tracker over its frames of a canvas, in time order.

        At each frame ``t`` the region's tokens at ``t`` are the observations; the slot state is
        carried from frame to frame as the region's mode says.

        Args:
            x: ``(B, N, D)`` canvas in canonical position order.
            layout: the ``CanvasLayout`` of ``x``.
            states: per region, the state to start from (None / missing = the slot bank).

        Returns:
            ``(slots, states)``: ``slots[region]`` is ``(B, T_r, S, D)`` (one slot set per frame
            of the region), ``states[region]`` the state after its last frame.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            from canvas_core.errors import ShapeError

            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"IdentityBinders.bind_canvas: x must be (B, N, D), got {got}")
        if not all(hasattr(layout, a) for a in ("region_timesteps", "region_indices_at_t", "num_positions")):
            raise CanvasTypeError("IdentityBinders.bind_canvas: layout must be the CanvasLayout of the canvas, "
                                  f"got {type(layout).__name__}")
        if x.shape[1] != layout.num_positions or x.shape[2] != getattr(layout, "d_model", x.shape[2]):
            from canvas_core.errors import ShapeError

            raise ShapeError(f"IdentityBinders.bind_canvas: x must be (B, {layout.num_positions}, "
                             f"{layout.d_model}) for this layout, got {tuple(x.shape)}")
        if states is not None and not isinstance(states, Mapping):
            raise CanvasTypeError("IdentityBinders.bind_canvas: states must be None or a mapping region -> "
                                  f"state, got {type(states).__name__}")
        missing = [r for r in self.specs if r not in layout.regions]
        if missing:
            from canvas_core.errors import UnknownRegionError

            raise UnknownRegionError(f"IdentityBinders.bind_canvas: identity region(s) {missing} are not in "
                                     f"the layout ({list(layout.regions)}); pass the canvas's own layout")
        self._refuse_unknown_states("IdentityBinders.bind_canvas", states)
        states = dict(states or {})
        slots: Dict[str, torch.Tensor] = {}
        for region in self.specs:
            tracker, st, per_frame = self[region], states.get(region), []
            for t in layout.region_timesteps(region):
                idx = torch.as_tensor(layout.region_indices_at_t(region, t), dtype=torch.long, device=x.device)
                step = tracker(x.index_select(1, idx), st)
                st = step.state
                per_frame.append(step.slots)
            if per_frame:
                slots[region] = torch.stack(per_frame, dim=1)
            states[region] = st
        return slots, states


def _heads_for(d_model: int, wanted: Any) -> int:
    """``wanted`` when it divides ``d_model``, else the largest divisor of ``d_model`` below it."""
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise CanvasTypeError(f"build_identity_binders: n_heads must be an integer >= 1, got {wanted!r}")
    return next(h for h in range(min(wanted, d_model), 0, -1) if d_model % h == 0)


def build_identity_binders(program: Any, d_model: int, n_heads: int = 4) -> IdentityBinders:
    """Instantiate a binder for every region whose ``RegionProgram.identity`` is set.

    Args:
        program: a ``CanvasProgram`` (or a mapping ``region -> RegionProgram``).
        d_model: model width of the region tokens.
        n_heads: binding heads (an integer >= 1; reduced to the largest divisor of ``d_model``
            below it when it does not divide ``d_model``).

    Returns:
        :class:`IdentityBinders` (``nn.ModuleDict``) ``region -> SlotTracker`` with
        ``n_slots = slot_capacity``, the binder resolved from ``binding_fn`` through the registry
        (unknown names raise :class:`~canvas_core.errors.UnknownNameError`), ``mode`` and
        ``birth_death`` honoured. Regions without identity get nothing.
    """
    regions = getattr(program, "regions", program)
    if not isinstance(regions, Mapping):
        raise CanvasTypeError("build_identity_binders(program, d_model): program must be a CanvasProgram "
                              f"or a mapping of region programs, got {type(program).__name__}")
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
        raise CanvasTypeError(f"build_identity_binders: d_model must be a positive int, got {d_model!r}")
    out = IdentityBinders()
    for region, rp in regions.items():
        spec = getattr(rp, "identity", None)
        if spec is None:
            continue
        if not isinstance(spec, IdentitySpec):
            raise CanvasTypeError(f"region {region!r}: identity must be an IdentitySpec, got {type(spec).__name__}")
        try:
            binder = create_binder(spec.binding_fn, d_model=d_model, n_slots=spec.slot_capacity,
                                   n_heads=_heads_for(d_model, n_heads), birth_death=spec.birth_death)
        except UnknownNameError as exc:
            raise UnknownNameError(f"region {region!r}: IdentitySpec(binding_fn={spec.binding_fn!r}): {exc}") from exc
        except SizeLimitError as exc:
            raise SizeLimitError(f"region {region!r}: IdentitySpec(binding_fn={spec.binding_fn!r}): {exc}") from None
        out.add(region, SlotTracker(binder, spec.mode, n_slots=spec.slot_capacity, name=spec.binding_fn), spec)
    return out

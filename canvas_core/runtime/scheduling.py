"""Region scheduling: which regions fire at a step (the ``active_regions`` of a dispatcher).

:class:`RegionScheduler` evaluates each region's clock:

* no clock: the region fires every step;
* a :class:`~canvas_core.program.ClockSpec`:
  ``periodic`` fires when ``external_t % period == 0``; ``on_event`` fires when the residual
  summary ``event_source = "region.kind"`` (split at the last dot) exceeds ``event_threshold``;
  ``boundary`` fires when the step's ``boundary`` equals ``event_source``.
  ``cooldown = c`` lets a region fire again only ``c`` steps after its last firing
  (``t - last_fired >= c``); ``max_silence = m`` forces a firing when the region has been
  silent for ``m`` steps (``t - last_fired >= m``, or it never fired), regardless of the rule
  and of the cooldown;
* a clock expression: any object with ``evaluate(ctx) -> bool`` (the protocol of
  :mod:`canvas_core.program.clock_ir`), evaluated with a ``ClockContext(external_t, summaries,
  boundary, last_fired, cooldown_until)``; its own decorators handle cooldown and silence
  (after a firing, ``cooldown_until = t + steps`` of its ``Cooldown`` nodes, see
  :func:`expr_cooldown`).

:class:`LearnedScheduler` scores regions from residual summaries with a small MLP and picks the
top ``max_active`` (Gumbel top-k while training).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from canvas_core.schema.limits import check_size
from canvas_core.errors import CanvasTypeError, ProgramError, UnknownRegionError, did_you_mean
from canvas_core.program.clock_ir import summary_number

__all__ = ["RegionScheduler", "LearnedScheduler", "is_clock_expr", "expr_cooldown"]

Summaries = Optional[Mapping[str, Mapping[str, float]]]


def is_clock_expr(obj: Any) -> bool:
    """Duck-typed test for a clock expression (has a callable ``evaluate``)."""
    return callable(getattr(obj, "evaluate", None))


def expr_cooldown(expr: Any) -> int:
    """Cooldown steps of a clock expression: the largest ``steps`` of its ``Cooldown`` nodes.

    After the region fires at ``t`` the scheduler sets ``cooldown_until = t + steps`` (the
    clock-IR ``Cooldown`` node suppresses firing while ``external_t < cooldown_until``).
    Children are found through the attributes ``child``, ``left`` and ``right``.
    """
    best, stack, seen = 0, [expr], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if "Cooldown" in type(node).__name__:
            best = max(best, int(getattr(node, "steps", 0) or 0))
        stack.extend(getattr(node, a, None) for a in ("child", "left", "right"))
    return best


def _make_context(**fields: Any) -> Any:
    try:
        from canvas_core.program.clock_ir import ClockContext
    except ImportError:  # clock IR not available: a plain namespace with the same fields
        return SimpleNamespace(**fields)
    return ClockContext(**fields)


def lookup_summary(summaries: Summaries, source: str) -> Optional[float]:
    """Value of ``"region.kind"`` in ``{region: {kind: value}}`` (region names may contain dots)."""
    if not summaries or "." not in source:
        return None
    region, kind = source.rsplit(".", 1)
    per_region = summaries.get(region, {})
    if not isinstance(per_region, Mapping):
        raise CanvasTypeError(
            f"summaries[{region!r}] must be a mapping kind -> number (as from "
            f"ResidualAccumulator.summaries()), got {type(per_region).__name__} {per_region!r}"
        )
    value = per_region.get(kind)
    if value is None:
        return None
    return summary_number(value, region, kind)  # a finite number, else an error naming the key


def _check_summaries(summaries: Any, where: str) -> None:
    if summaries is not None and not isinstance(summaries, Mapping):
        raise CanvasTypeError(
            f"{where}: summaries must be None or a mapping region -> {{kind: value}} (as from "
            f"ResidualAccumulator.summaries()), got {type(summaries).__name__} {summaries!r:.80}"
        )


def _check_step_args(where: str, external_t: Any, summaries: Any, boundary: Any) -> None:
    if isinstance(external_t, bool) or not isinstance(external_t, int):
        raise CanvasTypeError(f"{where}: external_t must be an int, got {external_t!r}")
    if external_t < 0:
        raise CanvasTypeError(f"{where}: external_t must be >= 0 (steps count from 0), got {external_t}")
    _check_summaries(summaries, where)
    if boundary is not None and not isinstance(boundary, str):
        raise CanvasTypeError(
            f"{where}: boundary must be an event name (str) or None, got {type(boundary).__name__} {boundary!r}"
        )


class RegionScheduler:
    """Decides, step by step, which regions update, from their clocks and the residual summaries.

    Args:
        program: a ``CanvasProgram``; each ``program.regions[name].clock`` is a ``ClockSpec``
            or None.  Layout regions without a ``RegionProgram`` behave as clock-less (always fire).
        clocks: optional ``{region: ClockSpec | clock expression}`` overriding / adding clocks
            (how clock expressions are attached to regions).

    Usage::

        scheduler = RegionScheduler(program)
        for t in range(100):
            active = scheduler.step(t, summaries=accumulator.summaries())
            x = dispatcher(x, active_regions=active)
    """

    def __init__(self, program: Any, clocks: Optional[Mapping[str, Any]] = None) -> None:
        raw_regions = getattr(program, "regions", None)
        if not isinstance(raw_regions, Mapping):
            raise CanvasTypeError(
                "RegionScheduler: program must be a CanvasProgram (with a regions mapping), got "
                f"{type(program).__name__} {program!r:.80}; compile one with compile_program(...)"
            )
        if clocks is not None and not isinstance(clocks, Mapping):
            raise CanvasTypeError(
                "RegionScheduler: clocks must be a mapping region -> ClockSpec / clock expression, "
                f"got {type(clocks).__name__} {clocks!r:.80}"
            )
        for name, rp in raw_regions.items():
            if not hasattr(rp, "clock"):
                raise CanvasTypeError(
                    f"RegionScheduler: program.regions[{name!r}] must be a RegionProgram, got "
                    f"{type(rp).__name__} {rp!r:.80}"
                )
        regions = dict(raw_regions)
        self._n_programmed = len(regions)
        names: List[str] = []
        schema = getattr(program, "schema", None)
        layout = getattr(schema, "layout", None)
        if layout is not None:
            names.extend(layout.regions)
        names.extend(n for n in regions if n not in names)
        self.region_names: Tuple[str, ...] = tuple(names)
        self._warned_sources: Set[Tuple[str, str]] = set()  # on_event clocks warned about (_warn_missing)
        self.clocks: Dict[str, Any] = {n: getattr(regions.get(n), "clock", None) for n in names}
        for name, clock in dict(clocks or {}).items():
            if name not in self.clocks:
                raise UnknownRegionError(
                    f"RegionScheduler: clock given for unknown region {name!r}; the program has "
                    f"{sorted(self.clocks)}." + did_you_mean(name, self.clocks)
                )
            self.clocks[name] = clock
        for name, clock in self.clocks.items():
            if clock is not None and not is_clock_expr(clock) and not hasattr(clock, "mode"):
                raise CanvasTypeError(
                    f"RegionScheduler: the clock of region {name!r} is a {type(clock).__name__}; "
                    "give a ClockSpec, a clock expression (with .evaluate(ctx)) or None"
                )
        self.reset()

    def __repr__(self) -> str:
        clocked = sum(1 for c in self.clocks.values() if c is not None)
        return f"RegionScheduler(regions={self._n_programmed}, clocked={clocked})"

    def reset(self) -> None:
        """Forget firing history (e.g. between episodes)."""
        self.last_fired: Dict[str, int] = {n: -1 for n in self.region_names}
        self.cooldown_until: Dict[str, int] = {n: 0 for n in self.region_names}

    # ------------------------------------------------------------------ rules
    def _spec_fires(
        self, name: str, spec: Any, t: int, summaries: Summaries, boundary: Optional[str]
    ) -> bool:
        last = self.last_fired[name]
        silence = getattr(spec, "max_silence", None)
        if silence is not None and (last < 0 or t - last >= silence):
            return True
        if last >= 0 and t - last < getattr(spec, "cooldown", 0):
            return False
        mode = spec.mode
        if mode == "periodic":
            return t % spec.period == 0
        if mode == "on_event":
            value = lookup_summary(summaries, spec.event_source)
            if value is None and summaries:
                self._warn_missing(name, spec.event_source, summaries)
            return value is not None and value > spec.event_threshold
        if mode == "boundary":
            return boundary is not None and boundary == spec.event_source
        raise ProgramError(f"RegionScheduler: region {name!r} has an unknown clock mode {mode!r}")

    def _warn_missing(self, name: str, source: str, summaries: Summaries) -> None:
        """Once per clock: summaries were given but hold nothing at its ``event_source``, so it
        cannot fire on them (a misspelt source, or summaries of other names)."""
        if (name, source) in self._warned_sources:
            return
        self._warned_sources.add((name, source))
        held = {k: sorted(v) if isinstance(v, Mapping) else v for k, v in summaries.items()}
        warnings.warn(f"RegionScheduler: region {name!r}'s clock fires on summary {source!r} ('source.kind'), "
                      f"which the summaries given do not hold (they hold {held!r:.200}); it does not fire "
                      "on them. A misspelt event_source?", UserWarning, stacklevel=4)

    def fires(
        self,
        name: str,
        external_t: int,
        summaries: Summaries = None,
        boundary: Optional[str] = None,
    ) -> bool:
        """Whether ``name`` fires at ``external_t`` (does not record the firing)."""
        if name not in self.clocks:
            raise UnknownRegionError(
                f"RegionScheduler: unknown region {name!r}; the program has "
                f"{list(self.region_names)}." + did_you_mean(name, self.region_names)
            )
        _check_step_args("RegionScheduler.fires", external_t, summaries, boundary)
        clock = self.clocks[name]
        if clock is None:
            return True
        if is_clock_expr(clock):
            ctx = _make_context(
                external_t=external_t,
                summaries=dict(summaries or {}),
                boundary=boundary,
                last_fired=self.last_fired[name],
                cooldown_until=self.cooldown_until[name],
            )
            return bool(clock.evaluate(ctx))
        return self._spec_fires(name, clock, external_t, summaries, boundary)

    def step(
        self, external_t: int, summaries: Summaries = None, boundary: Optional[str] = None
    ) -> Set[str]:
        """Regions that fire at ``external_t`` (records the firings).

        Args:
            external_t: the outside world's step number being scheduled now.
            summaries: ``{region: {kind: value}}`` from ``ResidualAccumulator.summaries()``.
            boundary: optional named boundary event of this step (e.g. ``"episode_end"``).
        """
        _check_step_args("RegionScheduler.step", external_t, summaries, boundary)
        active = {n for n in self.region_names if self.fires(n, external_t, summaries, boundary)}
        for n in active:
            self.last_fired[n] = external_t
            clock = self.clocks[n]
            cd = expr_cooldown(clock) if is_clock_expr(clock) else getattr(clock, "cooldown", 0)
            self.cooldown_until[n] = external_t + (cd or 0)
        return active

    def step_plan(
        self, external_t: int, summaries: Summaries = None, boundary: Optional[str] = None
    ) -> List[Set[str]]:
        """Active sets for the external step followed by internal microsteps.

        The first set is :meth:`step`'s.  Each region that fired with a ``ClockSpec`` of domain
        ``"internal"`` and ``max_inner_steps = k`` is also active in the next ``k`` microsteps.
        """
        first = self.step(external_t, summaries, boundary)
        inner = {}
        for n in first:
            c = self.clocks[n]
            if not is_clock_expr(c) and c is not None and getattr(c, "domain", None) == "internal":
                k = getattr(c, "max_inner_steps", None)
                if k:
                    # ClockSpec checks it too; a duck-typed clock given through clocks= may not
                    check_size("loops", k, f"RegionScheduler.step_plan: region {n!r}'s clock max_inner_steps",
                               "Use fewer inner steps per external step")
                    inner[n] = k
        plan = [first]
        for s in range(max(inner.values(), default=0)):
            plan.append({n for n, k in inner.items() if s < k})
        return plan


class LearnedScheduler(nn.Module):
    """Learns which regions to activate from residual summaries.

    An MLP scores the regions; the top ``max_active`` are chosen (with Gumbel noise of
    temperature ``temperature`` while training, deterministically in eval mode).

    Args:
        n_regions: number of regions scored.
        summary_dim: size of the flattened summary input.
        max_active: regions activated per step.
        temperature: Gumbel temperature (lower = closer to the deterministic top-k).
    """

    def __init__(
        self, n_regions: int, summary_dim: int, max_active: int, temperature: float = 1.0
    ) -> None:
        super().__init__()
        for label, v in (
            ("n_regions", n_regions),
            ("summary_dim", summary_dim),
            ("max_active", max_active),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CanvasTypeError(f"LearnedScheduler: {label} must be an int >= 1, got {v!r}")
            check_size("width", v, f"LearnedScheduler {label}")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not 0 < temperature < float("inf")):
            raise CanvasTypeError(f"LearnedScheduler: temperature must be a finite number > 0, got {temperature!r}")
        self.n_regions, self.summary_dim = n_regions, summary_dim
        self.max_active = min(max_active, n_regions)
        self.temperature = float(temperature)
        hidden = 2 * n_regions  # canvas-engineering's MLP shape, so its state_dicts load
        self.scorer = nn.Sequential(
            nn.Linear(summary_dim, hidden), nn.GELU(), nn.Linear(hidden, n_regions)
        )

    def __repr__(self) -> str:
        from canvas_core._reprs import learned_scheduler_repr  # canvas-engineering's text

        return learned_scheduler_repr(self)

    def forward(self, summaries: torch.Tensor) -> Tuple[Set[int], torch.Tensor]:
        """``(summary_dim,)`` or ``(B, summary_dim)`` (first row used) ->
        ``(active region indices, log_probs (n_regions,))`` (log-softmax of the scores)."""
        if not isinstance(summaries, torch.Tensor) or not summaries.is_floating_point():
            got = summaries.dtype if isinstance(summaries, torch.Tensor) else type(summaries).__name__
            raise CanvasTypeError(
                f"LearnedScheduler: summaries must be a floating torch.Tensor, got {got} "
                "(use ResidualAccumulator.summary_tensor())"
            )
        if summaries.dim() == 2:
            summaries = summaries[0]
        if summaries.dim() != 1 or summaries.shape[0] != self.summary_dim:
            from canvas_core.errors import ShapeError

            raise ShapeError(
                f"LearnedScheduler: summaries must be ({self.summary_dim},) or "
                f"(B, {self.summary_dim}), got {tuple(summaries.shape)}"
            )
        weight = self.scorer[0].weight
        if summaries.device != weight.device:
            from canvas_core.errors import ShapeError

            raise ShapeError(f"LearnedScheduler: summaries are on {summaries.device} but the scheduler is on "
                             f"{weight.device}; move one of them (scheduler.to(summaries.device))")
        scores = self.scorer(summaries.to(weight.dtype))
        log_probs = torch.log_softmax(scores / self.temperature, dim=-1)
        pick = scores.detach()
        if self.training:
            u = torch.rand_like(pick).clamp(1e-9, 1 - 1e-9)
            pick = pick / self.temperature - torch.log(-torch.log(u))
        idx = pick.topk(self.max_active).indices
        # one host read for the picks and the finiteness check together
        *picked, finite = torch.cat([idx, torch.isfinite(summaries).all().to(idx.dtype)[None]]).tolist()
        if not finite:
            from canvas_core.errors import ProgramError

            bad = torch.nonzero(~torch.isfinite(summaries)).flatten()[:3].tolist()
            raise ProgramError(
                f"LearnedScheduler: summaries hold NaN or infinity (at index {bad}); the regions it would pick "
                "from NaN scores are arbitrary. Replace the non-finite values before the call (e.g. "
                "torch.nan_to_num(summaries)), as RegionScheduler requires finite summaries too")
        return set(picked), log_probs

    def select(self, summaries: torch.Tensor, region_names: Sequence[str]) -> Set[str]:
        """Names of the chosen regions (``region_names[i]`` for each chosen index)."""
        if isinstance(region_names, str) or not all(isinstance(n, str) for n in region_names):
            raise CanvasTypeError(
                f"LearnedScheduler.select: region_names must be a sequence of strings, got {region_names!r}"
            )
        if len(region_names) != self.n_regions:
            raise CanvasTypeError(
                f"LearnedScheduler.select: {len(region_names)} names for {self.n_regions} regions"
            )
        active, _ = self(summaries)
        return {region_names[i] for i in active}

"""The iteration shared by the span and model loop scopes: update rule, test-time depth,
per-sample adaptive exit on the active rows only, and per-iteration diagnostics.

A loop part holds a state ``h`` (a tuple of tensors, each ``(B, ...)``; one per looped stream)
and a step ``run(t, h_rows, rows) -> y_rows``. One forward runs::

    h = x0
    for t in range(n):
        y = run(t, h)
        h = y                      if t == 0
        h = h + a_t * (y - h)      otherwise

``a_t`` depends on ``update``: ``"gated"`` (a learned scalar per iteration, ``loop_gate``, started
at ``gate_init_bias``: 0 keeps the model identical to its backbone at every loop count; the
gated residual of Relaxed Recursive / retrofitted-recurrence grafts, arXiv 2410.20672 and
2511.07384), ``"damped"`` (a fixed ``damping`` in (0, 1], no parameter: the damped sub-steps of
training-free looping, arXiv 2605.23872) or ``"replace"`` (``a_t = 1``: the plain recurrence
``h <- core(h)`` of Huginn and Ouro, arXiv 2502.05171 and 2510.25741; not identical to the
backbone beyond one loop).

Adaptive exit (``exit_tol > 0``): after iteration ``t >= 1`` a sample whose relative change
``||h_t - h_{t-1}|| / ||h_{t-1}||`` (norm over all its streams) is below ``exit_tol`` stops; later
iterations run the step on the remaining rows only (``index_select``), so finished samples cost
nothing. ``exit_tol = 0`` never stops early and runs the very same code path as fixed depth.

The other arguments of the step (a block's timestep embedding, a mask, rotary tables) go with
those rows by declaration, never by a guess from their shape: an argument named in ``batched``
(the adapter's ``batched_args`` plus ``graft_looped_blocks(batched_args=)``) has its tensors of
first dim ``B`` indexed (inside tuples, lists, dicts and dataclass instances too), one named in
``unbatched`` (``unbatched_args``) is passed whole, an ``nn.Parameter`` is always passed whole,
and so is an undeclared argument holding no tensor of first dim ``B``. An undeclared argument
that holds one, or a declared one holding one where it cannot be cut (inside an object that is
not a dataclass), is refused (:func:`row_plan`) at the first forward with ``exit_tol > 0``; see
:mod:`canvas_core.looping.exit_rows`.

At a gate ``a_t`` of exactly zero the update returns ``h`` itself even when the step overflowed
(``inf`` in float16): a non-finite ``y - h`` is taken as 0 there, instead of ``h + 0 * (inf - h)
= NaN`` (:func:`gated_update`).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError
from canvas_core.looping.exit_rows import index_rows, row_plan
from canvas_core.schema._validate import is_int

__all__ = ["LoopCore", "UPDATES", "index_rows", "row_plan", "gated_update", "check_loops", "check_exit_tol",
           "real_number", "ReplicaNote", "note_replica_record", "refuse_replica_record",
           "REPLICA_NOTE"]

UPDATES = ("gated", "damped", "replace")


def check_loops(n: Any, where: str) -> int:
    if not is_int(n) or n < 1:  # numpy integers too, as the schema takes them
        raise BackboneError(
            f"{where}: n (the loop count) must be an int >= 1, got {n!r}; one loop runs the "
            "backbone once, so pass n=1 for the plain model"
        )
    n = int(n)
    from canvas_core.schema.limits import check_size

    check_size("loops", n, f"{where} n")  # a span runs every one of them: refuse a runaway count
    return n


def real_number(value: Any) -> Optional[float]:
    """``value`` as a float when it is a real number (Python or numpy), else None (``bool``
    included). A number that ``float()`` cannot convert (an int past 1.8e308, a huge ``Fraction``)
    gives ``inf`` and NaN stays NaN: the callers' "finite" checks (``gate_init_bias``, ``exit_tol``,
    the schedules' numbers) refuse both, each with its own message."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return float("inf")


def check_exit_tol(exit_tol: Any, where: str) -> float:
    value = real_number(exit_tol)
    if value is None or not (value >= 0 and value != float("inf")):
        raise BackboneError(
            f"{where}: exit_tol must be a finite number >= 0 (0 = fixed depth; e.g. 1e-3 stops a "
            f"sample once its state changes by less than 0.1% per iteration), got {exit_tol!r}"
        )
    return value


#: where a looped part keeps its :class:`ReplicaNote`
REPLICA_NOTE = "_canvas_replica_note"


class ReplicaNote:
    """Shared by a looped part and its ``DataParallel`` replicas (``replicate`` gives each replica
    a shallow copy of the part's ``__dict__``, so this object is the same in all of them). A
    replica's forward leaves here the record the part held when it was copied; while the part
    still holds that very record, its last forward ran in replicas, whose records went with them."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: Optional[Tuple[Any]] = None


def note_replica_record(part: nn.Module, attr: str) -> None:
    """Called by a part's forward before it replaces its record ``attr``: in a replica, tell the
    part (through its :class:`ReplicaNote`) that this forward's record will not reach it."""
    if getattr(part, "_is_replica", False):
        note = getattr(part, REPLICA_NOTE, None)
        if isinstance(note, ReplicaNote):
            note.seen = (part.__dict__.get(attr),)


def replica_ran_last(part: nn.Module, attr: str) -> bool:
    """Whether the last forward of ``part`` ran in ``DataParallel`` replicas (see
    :class:`ReplicaNote`), so its own record ``attr`` is not that forward's."""
    note = part.__dict__.get(REPLICA_NOTE)
    return isinstance(note, ReplicaNote) and note.seen is not None and note.seen[0] is part.__dict__.get(attr)


class LoopCore(nn.Module):
    """Base of the span and model loop parts: loop count, gates, adaptive exit, diagnostics.

    Subclasses call :meth:`iterate` from their forward with a step function.
    """

    loop_scope: str = ""

    def __init__(self, max_loops: int, gate_init_bias: float = 0.0, update: str = "gated",
                 damping: float = 0.5, use_gradient_checkpointing: bool = True) -> None:
        super().__init__()
        if update not in UPDATES:
            raise BackboneError(f"update must be one of {list(UPDATES)}, got {update!r}")
        self.max_loops = int(max_loops)
        self.current_loops = int(max_loops)
        self.exit_tol = 0.0
        self.update = update
        self.damping = float(damping)
        self.use_gradient_checkpointing = use_gradient_checkpointing
        self.schema_hash = ""
        if update == "gated":
            # one gate per iteration >= 1; iterations past the trained count reuse the last one
            self.loop_gate = nn.Parameter(
                torch.full((max(self.max_loops - 1, 1),), float(gate_init_bias)))
        self._counts: Optional[torch.Tensor] = None
        self._stats: Optional[Dict[str, Any]] = None
        setattr(self, REPLICA_NOTE, ReplicaNote())

    # --- configuration ---------------------------------------------------------------------------
    def set_loops(self, n: int, exit_tol: Optional[float] = None) -> None:
        """Iterations per forward (any ``n >= 1``, also beyond ``max_loops``: the last trained
        embedding and gate are reused) and the adaptive-exit tolerance (None keeps it)."""
        n = check_loops(n, f"{type(self).__name__}.set_loops")
        if exit_tol is not None:
            self.exit_tol = check_exit_tol(exit_tol, f"{type(self).__name__}.set_loops")
        self.current_loops = n

    def gate(self, t: int, dtype: torch.dtype) -> Any:
        """``a_t`` of iteration ``t >= 1``."""
        if self.update == "replace":
            return 1.0
        if self.update == "damped":
            return self.damping
        g = self.loop_gate
        return g[min(t - 1, g.numel() - 1)].to(dtype)

    def named_loop_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        own = [(n, p) for n, p in self.named_parameters() if not n.startswith(self._skip_prefixes())]
        return own + self._extra_loop_parameters()

    def _skip_prefixes(self) -> Tuple[str, ...]:
        return ("original.", "canvas_fn.")

    def _extra_loop_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        return []

    def loop_parameters(self) -> List[nn.Parameter]:
        return [p for _, p in self.named_loop_parameters()]

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.loop_parameters() if p.requires_grad)

    # --- the iteration -----------------------------------------------------------------------------
    def iterate(self, x0: Tuple[torch.Tensor, ...],
                run: Callable[[int, Tuple[torch.Tensor, ...], Optional[torch.Tensor]], Tuple[torch.Tensor, ...]]
                ) -> Tuple[torch.Tensor, ...]:
        """Run ``current_loops`` iterations from ``x0`` (see the module docstring); ``run(t, h,
        rows)`` gets the state of the rows ``rows`` (None: the whole batch) and returns the
        step's output for them. Records :meth:`counts` and :meth:`stats`."""
        B = x0[0].shape[0]
        dev = x0[0].device
        n, tol = self.current_loops, self.exit_tol
        counts = torch.zeros(B, dtype=torch.long, device=dev)
        rel_hist: List[torch.Tensor] = []  # device tensors: no host sync per iteration at fixed depth
        norm_hist: List[torch.Tensor] = []
        act_hist: List[int] = []
        h = x0
        active: Optional[torch.Tensor] = None  # None: every row
        for t in range(n):
            if active is None:
                y = run(t, h, None)
                new = y if t == 0 else self._combine(t, h, y)
                prev, cur = h, new
            else:
                sub = tuple(s.index_select(0, active) for s in h)
                y = run(t, sub, active)
                new_sub = self._combine(t, sub, y)
                new = tuple(s.index_copy(0, active, ns.to(s.dtype)) for s, ns in zip(h, new_sub))
                prev, cur = sub, new_sub
            with torch.no_grad():
                rel = _rel_change(prev, cur)
                if active is None:
                    counts += 1
                else:
                    counts.index_add_(0, active, torch.ones_like(active))
                rel_hist.append(rel.mean())
                norm_hist.append(_token_rms(cur).mean())
                act_hist.append(B if active is None else int(active.numel()))
            h = new
            if tol > 0 and t >= 1:  # the only host sync: which samples go on
                with torch.no_grad():
                    rows = torch.arange(B, device=dev) if active is None else active
                    keep = rows[~(rel.to(dev) < tol)]
                if keep.numel() == 0:
                    break
                if keep.numel() < rows.numel():
                    active = keep
        note_replica_record(self, "_stats")
        self._counts = counts
        self._stats = {"scope": self.loop_scope, "iterations": len(act_hist), "rel_change": rel_hist,
                       "state_norm": norm_hist, "active": act_hist, "core_rows": sum(act_hist),
                       "exit_tol": tol, "loops": n}
        return h

    def _combine(self, t: int, h: Tuple[torch.Tensor, ...], y: Tuple[torch.Tensor, ...]):
        if len(y) != len(h):
            raise BackboneError(
                f"{type(self).__name__}: the step returned {len(y)} streams, expected {len(h)}")
        a = self.gate(t, h[0].dtype)
        return tuple(gated_update(s, n_, a) for s, n_ in zip(h, y))

    def counts(self) -> torch.Tensor:
        refuse_replica_record(self, "_stats", "loop_counts")
        if self._counts is None:
            raise CanvasTypeError(
                f"{type(self).__name__}: no forward has run yet; call the model first, then "
                "loop_counts(model)")
        return self._counts.detach().cpu().clone()

    def stats(self) -> Dict[str, Any]:
        refuse_replica_record(self, "_stats", "loop_stats")
        if self._stats is None:
            raise CanvasTypeError(
                f"{type(self).__name__}: no forward has run yet; call the model first, then "
                "loop_stats(model)")
        out = dict(self._stats)
        for k in ("rel_change", "state_norm"):
            out[k] = [float(v) for v in out[k]]
        out["active"] = list(out["active"])
        return out

    def extra_repr(self) -> str:
        return (f"scope={self.loop_scope}, max_loops={self.max_loops}, current_loops={self.current_loops}, "
                f"update={self.update!r}, exit_tol={self.exit_tol}, trainable_params={self.trainable_params()}")


def refuse_replica_record(part: nn.Module, attr: str, where: str, owner: str = "") -> None:
    """``CanvasTypeError`` when the last forward of ``part`` ran in ``DataParallel`` replicas:
    ``where`` (``loop_counts`` / ``loop_stats``) would otherwise read an older forward's record."""
    if replica_ran_last(part, attr):
        raise CanvasTypeError(
            f"{where}: the last forward of {owner or type(part).__name__} ran in DataParallel replicas (one "
            f"copy per device), and their records went with them; {where} reads the record the "
            "model itself keeps, so it would report an older forward. Run the forward you want to "
            "inspect on the model itself (dp.module(...)) or DataParallel over one device, or train "
            "with DistributedDataParallel (each process's model keeps its own record)")


def gated_update(h: torch.Tensor, y: torch.Tensor, a: Any) -> torch.Tensor:
    """``h + a * (y - h)``. Where ``a`` (a tensor gate) is exactly 0 and ``y - h`` is not finite (an
    extra pass that overflowed), the difference counts as 0, so the result is ``h`` itself rather
    than ``h + 0 * inf = NaN``; everywhere else the formula's values and gradients are unchanged
    (the gate still learns from every finite difference), with no host sync."""
    d = y - h
    if isinstance(a, torch.Tensor):
        d = torch.where((a != 0) | torch.isfinite(d), d, 0.0)
    return h + a * d


def _rel_change(prev: Tuple[torch.Tensor, ...], cur: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per sample ``||cur - prev|| / ||prev||`` over every stream, ``(B,)`` float32; 0 when both are
    0, ``inf`` when only ``prev`` is, NaN when a state is not finite (never "converged"). The norms
    are one fused reduction each, accumulated in float64: the squares of any float32 value neither
    overflow (states past ~1e19 gave NaN in float32: the sample never stopped) nor underflow
    (states below ~1e-19 gave 0: the sample stopped however much it still changed)."""
    pairs = []
    for p, c in zip(prev, cur):
        if p.shape != c.shape:  # a model-scope step map whose output is not its input's shape
            return torch.full((p.shape[0],), float("nan"), device=p.device)
        pairs.append((p.detach().float().flatten(1), c.detach().float().flatten(1)))
    if pairs[0][0].device.type == "mps":  # no float64 there
        return _rel_change_scaled(pairs)
    num = den = None
    for p32, c32 in pairs:
        d, q = _norm64(c32 - p32).square(), _norm64(p32).square()
        num = d if num is None else num + d
        den = q if den is None else den + q
    return _ratio(num, den)


def _norm64(x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64: each row's 2-norm, accumulated in float64 (no float64 copy of ``x``)."""
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``sqrt(num / den)`` as float32, with the rules of :func:`_rel_change` for 0 and non-finite."""
    zero = torch.where(num == 0, 0.0, float("inf"))
    rel = torch.where(den == 0, zero, num.sqrt() / den.sqrt())
    # an inf state (or a change that overflowed float32) reads as NaN: never converged
    return torch.where(torch.isfinite(num) & torch.isfinite(den), rel, float("nan")).float()


def _rel_change_scaled(pairs: List[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """:func:`_rel_change` in float32 (a device without float64): the values are divided by each
    sample's largest magnitude first, so the squares neither overflow nor underflow."""
    scale = _sample_scale([t for pair in pairs for t in pair])
    num = den = None
    for p32, c32 in pairs:
        ps, cs = p32 / scale, c32 / scale
        d, q = (cs - ps).pow(2).sum(1), ps.pow(2).sum(1)
        num = d if num is None else num + d
        den = q if den is None else den + q
    return _ratio(num, den)


def _sample_scale(states: List[torch.Tensor]) -> torch.Tensor:
    """``(B, 1)``: each sample's largest magnitude over ``states`` (each ``(B, n)`` float32), 1
    where it is 0 (a NaN stays NaN, so it propagates)."""
    m = None
    for t in states:
        if t.shape[1]:
            a = t.abs().amax(1)
            m = a if m is None else torch.maximum(m, a)
    if m is None:
        return torch.ones(states[0].shape[0], 1, device=states[0].device)
    return torch.where(m == 0, 1.0, m).unsqueeze(1)


def _token_rms(cur: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per sample RMS of the first stream's values (the hidden-state norm per feature), float32,
    accumulated in float64 (see :func:`_rel_change`) so it neither overflows nor underflows."""
    c = cur[0].detach().float().flatten(1)
    if c.device.type == "mps":
        scale = _sample_scale([c])
        return (c / scale).pow(2).mean(1).sqrt() * scale.squeeze(1)
    return (_norm64(c).square() / c.shape[1]).sqrt().float()

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
``||h_t - h_{t-1}|| / ||h_{t-1}||`` (norm over all its streams; :func:`_exit_stats`: NaN for a
state that is not finite, never "converged") is below ``exit_tol`` stops; later
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
from canvas_core.looping.exit_stats import (_Kept, _batch_mean, _exit_stats, _hypot, _keep_rows, _norm64,  # noqa: F401
                                           _peak, _ratio, _rel_change, _rel_change_scaled, _scale_exp,
                                           _scaled_stats, _token_rms)
from canvas_core.schema._validate import is_int

__all__ = ["LoopCore", "UPDATES", "index_rows", "row_plan", "gated_update", "check_loops", "check_exit_tol",
           "real_number", "check_core_options", "merge_extra_rows", "ReplicaNote", "note_replica_record", "refuse_replica_record",
           "REPLICA_NOTE", "LoopsClampedWarning", "warn_clamped"]

UPDATES = ("gated", "damped", "replace")


class LoopsClampedWarning(UserWarning):
    """``set_loops(model, n)`` left block-scope blocks below ``n`` loops (clamped to their ``max_loops``)."""


def warn_clamped(n: int, caps: List[int]) -> None:
    """One warning when block-scope blocks run fewer than ``n`` loops (``caps``: their ``max_loops``):
    a depth sweep past them would otherwise measure the same depth again without a word."""
    if not caps:
        return
    import warnings

    from canvas_core.errors import user_stacklevel

    caps = sorted(set(caps))
    warnings.warn(
        f"set_loops: {n} loops asked, but block-scope blocks run at most max_loops="
        f"{caps[0] if len(caps) == 1 else caps} (they clamp; loop_counts shows it). To run more, graft "
        f"with a larger max_loops (graft_looped_blocks(..., max_loops={n})) or a span / model scope "
        "(scope='stack', (i, j) or 'model'), which runs any count", LoopsClampedWarning,
        stacklevel=user_stacklevel())


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


def check_core_options(where: str, max_loops: Any, update: Any, damping: Any, gate_init_bias: Any
                       ) -> Tuple[int, float, float]:
    """The loop options a span or model loop is built with, checked as ``graft_looped_blocks``
    checks them (the classes are exported, so they may be built directly): ``max_loops`` an int
    ``>= 1`` within the size limit, ``update`` a rule of ``UPDATES``, ``damping`` a number in
    ``(0, 1]``, ``gate_init_bias`` a finite number, and 0 unless ``update="gated"``."""
    if not is_int(max_loops) or max_loops < 1:
        raise BackboneError(f"{where}: max_loops must be an int >= 1 (the trained iteration count), "
                            f"got {max_loops!r}")
    from canvas_core.schema.limits import check_size

    check_size("loops", int(max_loops), f"{where} max_loops")
    if update not in UPDATES:
        raise BackboneError(f"{where}: update must be one of {list(UPDATES)}, got {update!r}")
    d = real_number(damping)
    if d is None or not 0 < d <= 1:
        raise BackboneError(f"{where}: damping must be a number in (0, 1] (the fixed step of "
                            f"update='damped'), got {damping!r}")
    g = real_number(gate_init_bias)
    if getattr(gate_init_bias, "ndim", None) == 0 and hasattr(gate_init_bias, "item"):
        g = real_number(gate_init_bias.item())
    if g is None or g != g or g in (float("inf"), float("-inf")):
        raise BackboneError(f"{where}: gate_init_bias must be a finite number (0.0 keeps the model "
                            f"identical to its backbone at every loop count), got {gate_init_bias!r}")
    if update != "gated" and g != 0:
        raise BackboneError(f"{where}: gate_init_bias={gate_init_bias!r} starts the learned gates of "
                            f"update='gated', and update={update!r} has none, so it would be ignored; "
                            "pass update='gated' or drop gate_init_bias")
    return int(max_loops), d, g


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
        max_loops, damping, gate_init_bias = check_core_options(
            type(self).__name__, max_loops, update, damping, gate_init_bias)
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
        prev_sq: Any = None  # ||h|| of the rows computed next, as _exit_stats keeps it
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
                rel, cur_sq, rms = _exit_stats(prev, cur, prev_sq)
                if any(c.dtype != s.dtype for c, s in zip(cur, new)):
                    cur_sq = None  # the state keeps other values than the ones measured
                if active is None:
                    counts += 1
                else:
                    counts.index_add_(0, active, torch.ones_like(active))
                rel_hist.append(_batch_mean(rel))
                norm_hist.append(_batch_mean(rms if rms is not None else _token_rms(cur)))
                act_hist.append(B if active is None else int(active.numel()))
            h, prev_sq = new, cur_sq
            if tol > 0 and t >= 1:  # the only host sync: which samples go on
                with torch.no_grad():
                    rows = torch.arange(B, device=dev) if active is None else active
                    go = (~(rel.to(dev) < tol)).nonzero().squeeze(1)
                    keep = rows[go]
                if keep.numel() == 0:
                    break
                if keep.numel() < rows.numel():
                    active = keep
                    prev_sq = _keep_rows(prev_sq, go)
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
        if self.update == "replace":  # y itself: h + (y - h) is not y once rounded (in bfloat16
            # a state of 100 replaced by 0.3 gave 0.5) and overflows where y - h does
            return tuple(n_.to(torch.promote_types(s.dtype, n_.dtype)) for s, n_ in zip(h, y))
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


def merge_extra_rows(full: Any, sub: Any, rows: torch.Tensor, batch: int, n_main: int) -> Any:
    """With adaptive exit: the output ``full`` of the last iteration that ran the whole batch, with
    the rows ``rows`` of its extra entries (a tuple's or list's entries after the ``n_main`` looped
    ones) taken from ``sub``, an iteration of those rows only, so that each sample's extras come
    from its own last iteration. Only an extra that is a tensor with one row per sample (first dim
    ``batch`` in ``full``, ``len(rows)`` in ``sub``, same trailing shape) can be split so; any other
    extra stays ``full``'s (see docs/looping.md, "Adaptive exit")."""
    if type(full) not in (tuple, list) or type(sub) is not type(full) or len(sub) != len(full):
        return full
    items = list(full)
    for k in range(n_main, len(items)):
        f, r = items[k], sub[k]
        if (isinstance(f, torch.Tensor) and isinstance(r, torch.Tensor) and f.dim() >= 1
                and f.shape[0] == batch and r.shape == (rows.numel(),) + tuple(f.shape[1:])):
            items[k] = f.index_copy(0, rows, r.to(f.dtype))
    return items if isinstance(full, list) else tuple(items)


def gated_update(h: torch.Tensor, y: torch.Tensor, a: Any) -> torch.Tensor:
    """``h + a * (y - h)``. Where ``a`` (a tensor gate) is exactly 0 and ``y - h`` is not finite (an
    extra pass that overflowed), the difference counts as 0, so the result is ``h`` itself rather
    than ``h + 0 * inf = NaN``; everywhere else the formula's values and gradients are unchanged
    (the gate still learns from every finite difference), with no host sync."""
    d = y - h
    if isinstance(a, torch.Tensor):
        d = torch.where((a != 0) | torch.isfinite(d), d, 0.0)
    return h + a * d
